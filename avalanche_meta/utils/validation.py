"""Argument checks that fail early with a message naming the argument and the fix."""

from __future__ import annotations

import math
from typing import Iterable, List, Optional

import torch


class NonFiniteLossError(FloatingPointError):
    """Raised instead of training on a NaN or infinite loss."""


def cross_entropy_departures(criterion: torch.nn.CrossEntropyLoss) -> List[str]:
    """The settings of an ``nn.CrossEntropyLoss`` that differ from its defaults
    (``reduction='mean'``, ``label_smoothing=0``, no ``weight``,
    ``ignore_index=-100``), each as ``"setting (needs default)"``; empty when it is
    the plain mean cross-entropy the strategies compute themselves."""
    problems = []
    if criterion.reduction != "mean":
        problems.append(f"reduction={criterion.reduction!r} (needs 'mean')")
    if float(criterion.label_smoothing) != 0.0:
        problems.append(f"label_smoothing={criterion.label_smoothing} (needs 0)")
    if criterion.weight is not None:
        problems.append("class weights (needs weight=None)")
    if criterion.ignore_index != -100:
        problems.append(f"ignore_index={criterion.ignore_index} (needs the default)")
    return problems


def check_positive(name: str, value, *, integer: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a (finite) number > 0.

    :param name: the argument's name, used in the message.
    :param value: the value to check.
    :param integer: also require an ``int``.
    """
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be > 0, got {value!r}.")


def check_non_negative(name: str, value, *, integer: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a (finite) number >= 0."""
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"`{name}` must be a non-negative integer, got {value!r}.")
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be >= 0, got {value!r}.")


def check_in_interval(
    name: str,
    value,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
    hint: Optional[str] = None,
) -> None:
    """Raise ``ValueError`` unless ``value`` lies in the interval.

    ``check_in_interval("beta", beta, 0, 1, low_open=True)`` checks ``0 < beta <= 1``.
    """
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high
        )
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        msg = f"`{name}` must lie in {lo}{low}, {high}{hi}, got {value!r}."
        if hint:
            msg += " " + hint
        raise ValueError(msg)


def check_choice(name: str, value, choices: Iterable) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(
            f"`{name}` must be one of {', '.join(map(repr, choices))}; got {value!r}."
        )


class LossGuard:
    """Looks for non-finite losses without a device synchronisation per step.

    On the CPU, or with ``every=1``, every loss is checked at once
    (:func:`check_finite_loss`: reading a CPU scalar synchronises nothing), so a
    non-finite loss is never stepped on. On other devices, by default, a flag
    tensor collects ``~isfinite(loss)`` on the device and is read every ``every``
    checks and by :meth:`flush` (the strategies call it at the end of every
    experience): the error then comes at most ``every`` steps late, says so, and
    the model must be restored from a checkpoint.

    :param every: how often the flag is read on a non-CPU device (None: 100).
    :raises ValueError: ``every`` not a positive integer.
    """

    #: steps between reads of the flag on a non-CPU device when ``every`` is None
    DEFAULT_EVERY = 100

    def __init__(self, every: Optional[int] = None) -> None:
        if every is not None:
            check_positive("nan_check_every", every, integer=True)
        self.every = every
        self._flag: Optional[torch.Tensor] = None
        self._count = 0
        self._where = ""

    def __call__(self, loss: torch.Tensor, where: str) -> torch.Tensor:
        """``loss``, checked now or flagged (see the class); raises
        :class:`NonFiniteLossError` when a check finds a non-finite value."""
        every = self.every
        if every is None:
            every = 1 if loss.device.type == "cpu" else self.DEFAULT_EVERY
        if every == 1:
            return check_finite_loss(loss, where)
        bad = ~torch.isfinite(loss.detach()).all()
        self._flag = bad if self._flag is None else self._flag | bad
        self._where = where
        self._count += 1
        if self._count >= every:
            self.flush()
        return loss

    def flush(self) -> None:
        """Read the flag (one synchronisation) and raise if a flagged loss was not
        finite; nothing to do when every loss was checked at once."""
        flag, n = self._flag, self._count
        self._flag, self._count = None, 0
        if flag is not None and bool(flag):
            raise NonFiniteLossError(
                f"{self._where}: a loss of the last {n} steps was not finite (checked "
                "every `nan_check_every` steps on this device, so the model may have "
                "been updated with it since): restore the model from a checkpoint; "
                "lower the learning rate, check the inputs for NaN/inf, or clip "
                "gradients; nan_check_every=1 checks every step."
            )


def check_finite_loss(loss: torch.Tensor, where: str) -> torch.Tensor:
    """Return ``loss`` if it is finite, else raise :class:`NonFiniteLossError`.

    :param loss: a scalar tensor.
    :param where: what produced the loss (strategy and step), for the message.
    """
    if not torch.isfinite(loss).all():
        raise NonFiniteLossError(
            f"{where}: the loss is {loss.detach().flatten()[:4].tolist()} (not finite); "
            "training stopped instead of stepping on it. Lower the learning rate, "
            "check the inputs for NaN/inf, or clip gradients."
        )
    return loss
