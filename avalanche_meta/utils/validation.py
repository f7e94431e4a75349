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
