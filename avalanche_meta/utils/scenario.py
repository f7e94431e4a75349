"""Which output units are active in each continual-learning scenario.

- Task-IL (``"task"``): the task label is known; only the classes of the sample's
  own task are active (one head masked per task, or a multi-head model).
- Class-IL (``"class"``): no task label at test time; every class seen so far is
  active in one head.
- Domain-IL (``"domain"``): every task shares the label space; all units active.

Also the checks ER, MER and NeuronCalibration share so that they behave alike:
:func:`check_distinct_task_labels` (Task-IL needs a task label per task, checked once
per experience, identified by :func:`experience_identity`), :func:`complete_minibatch`
(``(x, y)`` batches) and :func:`cast_inputs` (inputs in the model's dtype).
:meth:`ActiveUnits.active` builds its masks without reading values back to the host
(no GPU synchronisation); :meth:`ActiveUnits.loss_logits` gives the logits of a
bounded evaluation loss.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor, nn

SCENARIOS = ("task", "class", "domain")

#: Value written into inactive logits: finite, so a fully masked row cannot make NaN.
MASK_VALUE = -1e9


def check_scenario(scenario: str) -> str:
    """Return ``scenario`` if it names a scenario, else raise a clear ``ValueError``."""
    if scenario not in SCENARIOS:
        raise ValueError(
            f"`scenario` must be one of 'task' (Task-IL), 'class' (Class-IL) or "
            f"'domain' (Domain-IL); got {scenario!r}."
        )
    return scenario


def declared_task_classes(experience: Any) -> Dict[int, List[int]]:
    """The classes an Avalanche experience declares, per task label.

    Source: the experience's ``origin_experience`` when it has one (an online
    sub-experience of ``split_online_stream`` / :func:`~avalanche_meta.benchmarks.
    online.online_stream`: its task is the whole origin experience), else the
    experience itself. Attribute masking (Avalanche hides some attributes in train
    mode) is lifted to read it. From its dataset's ``targets`` and
    ``targets_task_labels`` when both exist: every (task label, class) pair of the
    dataset; else its ``classes_in_this_experience`` under each of its
    ``task_labels`` (task 0 if it has none).

    :return: ``{task label: sorted list of classes}``; empty if nothing is known.
    """
    if experience is None:
        return {}
    masking = getattr(experience, "no_attribute_masking", None)
    with masking() if callable(masking) else nullcontext():
        try:
            origin = getattr(experience, "origin_experience", None)
        except Exception:  # an attribute Avalanche refuses to show
            origin = None
        source = origin if origin is not None else experience
        inner = getattr(source, "no_attribute_masking", None)
        with inner() if callable(inner) and source is not experience else nullcontext():
            dataset = getattr(source, "dataset", None)
            targets = getattr(dataset, "targets", None)
            task_labels = getattr(dataset, "targets_task_labels", None)
            out: Dict[int, set] = {}
            if targets is not None and task_labels is not None:
                tasks = getattr(task_labels, "uniques", None)  # cached by Avalanche
                if tasks is not None and len(tasks) == 1:
                    values = getattr(targets, "uniques", None)
                    if values is None:
                        values = set(targets)
                    out[int(next(iter(tasks)))] = {int(c) for c in values}
                else:
                    for t, c in zip(task_labels, targets):
                        out.setdefault(int(t), set()).add(int(c))
            else:
                classes = getattr(source, "classes_in_this_experience", None)
                if classes is None:
                    return {}
                tasks = getattr(source, "task_labels", None) or [0]
                for t in tasks:
                    out[int(t)] = {int(c) for c in classes}
    return {t: sorted(c) for t, c in sorted(out.items())}


class ActiveUnits(nn.Module):
    """Records the classes of each task and masks logits for a scenario.

    Invariants: ``seen[c]`` is True iff class ``c`` was observed in training;
    ``task_classes[t, c]`` is True iff class ``c`` was observed with task label
    ``t``. Both are buffers, so they travel with ``state_dict`` and ``.to()``.
    A task never observed has every unit active (nothing is known of it).

    :param num_classes: the number of output units.
    :param scenario: ``"task"``, ``"class"`` or ``"domain"``.
    """

    def __init__(self, num_classes: int, scenario: str = "class"):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int):
            raise ValueError(f"`num_classes` must be an int, got {num_classes!r}.")
        if num_classes < 1:
            raise ValueError(f"`num_classes` must be >= 1, got {num_classes}.")
        self.num_classes = num_classes
        self.scenario = check_scenario(scenario)
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))
        self.register_buffer(
            "task_classes", torch.zeros(0, num_classes, dtype=torch.bool)
        )

    # -- recording ---------------------------------------------------------------
    def _grow(self, n_tasks: int) -> None:
        if n_tasks > self.task_classes.shape[0]:
            extra = torch.zeros(
                n_tasks - self.task_classes.shape[0],
                self.num_classes,
                dtype=torch.bool,
                device=self.task_classes.device,
            )
            self.task_classes = torch.cat([self.task_classes, extra])

    def _check_labels(self, y: Tensor) -> None:
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(
                f"class label {int(y.max())} is outside the model's "
                f"{self.num_classes} output units: give the model (and "
                f"`num_classes`) at least {int(y.max()) + 1} outputs."
            )

    @torch.no_grad()
    def check_batch(self, y: Tensor, t: Optional[Tensor] = None) -> None:
        """Check labels ``y`` and make room for task labels ``t`` (one host sync):
        afterwards ``observe(..., check=False)`` of any part of the batch is safe."""
        y = y.to(self.seen.device).long().flatten()
        self._check_labels(y)
        if t is not None and t.numel():
            self._grow(int(t.max()) + 1)

    @torch.no_grad()
    def observe(
        self, y: Tensor, t: Optional[Tensor] = None, *, check: bool = True
    ) -> None:
        """Record labels ``y`` (and their task labels ``t``) seen in training.

        :param check: check the labels and grow the task table (reads values back
            to the host); ``False`` after :meth:`check_batch` of the batch, so that
            per-example calls on a GPU do not synchronise.
        """
        y = y.to(self.seen.device).long().flatten()
        if check:
            self._check_labels(y)
        self.seen[y] = True
        if t is not None:
            t = t.to(self.seen.device).long().flatten()
            if t.numel():
                if check:
                    self._grow(int(t.max()) + 1)
                self.task_classes[t, y] = True

    @torch.no_grad()
    def observe_classes(self, classes: Iterable[int], task: int) -> None:
        """Record that ``task`` has ``classes`` (e.g. an experience's class list)."""
        y = torch.as_tensor(sorted(int(c) for c in classes), dtype=torch.long)
        self.observe(y, torch.full_like(y, int(task)))

    @torch.no_grad()
    def observe_experience(self, experience: Any) -> Dict[int, List[int]]:
        """Record the classes an experience declares, per task label.

        Uses :func:`declared_task_classes` (the origin experience of an online
        sub-experience, else the experience itself) and calls
        :meth:`observe_classes` for each task label. Call it at the start of each
        training experience: a task's classes are then active from its first
        example on (Task-IL, Class-IL), not only once each label has been seen.

        :return: what was recorded, ``{task label: sorted classes}`` (empty when
            the experience declares nothing; labels are then only learned from
            :meth:`observe`).
        """
        declared = declared_task_classes(experience)
        for task, classes in declared.items():
            self.observe_classes(classes, task)
        return declared

    # -- masking -----------------------------------------------------------------
    def active(self, t: Optional[Tensor], batch_size: int) -> Tensor:
        """Boolean ``(batch_size, num_classes)`` mask of the active units."""
        device = self.seen.device
        if self.scenario == "domain":
            return torch.ones(
                batch_size, self.num_classes, dtype=torch.bool, device=device
            )
        if self.scenario == "class":  # nothing seen yet: every unit (no host sync)
            row = self.seen | ~self.seen.any()
            return row.unsqueeze(0).expand(batch_size, -1)
        if t is None:
            raise ValueError(
                "Task-IL (scenario='task') needs the task label of every sample; the "
                "batch has none. Use a benchmark with task labels (e.g. "
                "return_task_id=True) or another scenario."
            )
        t = t.to(device).long().flatten()
        n_tasks = self.task_classes.shape[0]
        if n_tasks == 0:
            return torch.ones(
                batch_size, self.num_classes, dtype=torch.bool, device=device
            )
        # without boolean indexing (no host sync): unknown tasks get every unit
        known = (t >= 0) & (t < n_tasks)
        sel = self.task_classes[t.clamp(0, n_tasks - 1)] & known.unsqueeze(1)
        return sel | ~sel.any(dim=1, keepdim=True)

    def mask(self, logits: Tensor, t: Optional[Tensor] = None) -> Tensor:
        """Return ``logits`` with inactive units set to :data:`MASK_VALUE`."""
        if logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"the model gives {logits.shape[-1]} outputs but `num_classes` is "
                f"{self.num_classes}."
            )
        if self.scenario == "domain":
            return logits
        active = self.active(t, logits.shape[0])
        return logits.masked_fill(~active, MASK_VALUE)

    def loss_logits(self, logits: Tensor, t: Optional[Tensor], y: Tensor) -> Tensor:
        """Logits for a bounded evaluation loss: :meth:`mask` with each sample's own
        class unit left unmasked.

        The cross-entropy of these logits is the loss over the units active in the
        scenario plus the true class. It equals the cross-entropy of :meth:`mask`
        whenever the label is active (every training batch, and the classes seen so
        far in evaluation); for a class not seen yet (Class-IL evaluation on
        experiences not trained on) it stays finite and says how far the true
        class's logit lies below the active ones, instead of being dominated by
        :data:`MASK_VALUE` (about ``1e9``). Predictions are not affected: they keep
        using :meth:`mask`.
        """
        if self.scenario == "domain":
            return logits
        if logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"the model gives {logits.shape[-1]} outputs but `num_classes` is "
                f"{self.num_classes}."
            )
        active = self.active(t, logits.shape[0])
        y = y.to(active.device).long().flatten()
        own = torch.zeros_like(active).scatter_(  # one-hot without a host read
            1, y.clamp(0, self.num_classes - 1).unsqueeze(1), True
        ) & ((y >= 0) & (y < self.num_classes)).unsqueeze(1)
        return logits.masked_fill(~(active | own), MASK_VALUE)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "task_classes"
        if key in state_dict:
            self.task_classes = torch.zeros_like(
                state_dict[key], device=self.task_classes.device
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, scenario={self.scenario!r}"


# -- shared checks of the per-example and bi-level strategies (ER, MER, NCCL) -----------
def _read(obj: Any, name: str) -> Any:
    """``getattr`` that returns None for attributes Avalanche masks or lacks."""
    try:
        return getattr(obj, name, None)
    except Exception:  # MaskedAttributeError and friends
        return None


def experience_identity(experience: Any, train_calls: int) -> Tuple[Tuple, List[int]]:
    """Which (origin) experience ``experience`` is, and its task labels.

    An online sub-experience is identified by its origin experience (attribute
    masking is lifted to read it, as :func:`declared_task_classes` does); an
    ordinary experience by its ``current_experience``; an experience without
    either by the call to ``train()`` (``train_calls``). Task labels: the
    experience's ``task_labels``, else the distinct task labels of its dataset,
    else ``[0]``.

    :return: ``(key, task labels)`` with ``key`` ``("exp", index)`` or
        ``("call", train_calls)``.
    """
    masking = _read(experience, "no_attribute_masking")
    with masking() if callable(masking) else nullcontext():
        origin = _read(experience, "origin_experience")
        source = origin if origin is not None else experience
        index = _read(source, "current_experience")
        labels = _read(source, "task_labels")
        if labels is None:
            labels = _read(experience, "task_labels")
        if labels is None:  # generic experiences: the dataset's task labels
            per_sample = _read(_read(source, "dataset"), "targets_task_labels")
            labels = _read(per_sample, "uniques")
            if labels is None and per_sample is not None:
                labels = set(int(v) for v in per_sample)
    key = ("call", int(train_calls)) if index is None else ("exp", int(index))
    return key, sorted({int(t) for t in (labels or [0])})


def check_distinct_task_labels(
    owners: Dict[int, Tuple], key: Tuple, labels: Iterable[int], name: str
) -> None:
    """Task-IL: raise unless the task labels of a new experience are new.

    ``owners`` maps each task label to the key of the experience that used it first
    (see :func:`experience_identity`); it is updated in place. A label used before
    by *another* experience means the benchmark has no task labels (Avalanche's
    Class-IL and Domain-IL benchmarks give every experience task 0): Task-IL would
    silently behave as Class-IL, so this is an error that names the fix.

    :param name: the strategy's name, for the message.
    :raises ValueError: a label of this experience was used by an earlier one.
    """
    labels = sorted(int(t) for t in labels)
    for lab in labels:
        prev = owners.get(lab)
        if prev is not None and prev != key:
            raise ValueError(
                f"{name}: scenario='task' (Task-IL) needs a distinct task label per "
                f"task, but experience {key[1]} has task label(s) {labels}, already "
                f"used by experience {prev[1]}: the benchmark gives no task labels "
                "(every experience is task 0). Build it with task labels (e.g. "
                "SplitMNIST(..., return_task_id=True)) or use scenario='class' "
                "(or scenario='domain' when every task shares its labels)."
            )
    for lab in labels:
        owners.setdefault(lab, key)


def complete_minibatch(mbatch: List[Any], scenario: str, name: str) -> List[Any]:
    """Give ``(x, y)`` mini-batches a task label 0 (Class-IL, Domain-IL); Task-IL
    refuses them. Avalanche reads the task labels as the last element of the batch.

    :raises ValueError: Task-IL and no task labels, or fewer than two elements.
    """
    if len(mbatch) >= 3:
        return mbatch
    if len(mbatch) < 2:
        raise ValueError(
            f"{name} needs (x, y[, task label]) mini-batches; got {len(mbatch)} "
            "element(s)."
        )
    if scenario == "task":
        raise ValueError(
            f"{name}: scenario='task' (Task-IL) needs the task label of every "
            "sample, but the mini-batches are (x, y) without one. Use a benchmark "
            "with task labels (e.g. SplitMNIST(..., return_task_id=True)), or "
            "scenario='class' / 'domain'."
        )
    x, y = mbatch[0], mbatch[1]
    return [x, y, torch.zeros(len(y), dtype=torch.long, device=y.device)]


def cast_inputs(x: Tensor, model: nn.Module) -> Tensor:
    """Floating-point inputs in the dtype of the model's first floating parameter.

    ER, MER and NeuronCalibration (and their memories) take inputs of any floating
    dtype (e.g. float64 from NumPy) and compute in the model's dtype, on every code
    path; non-floating inputs are returned unchanged.
    """
    if not x.is_floating_point():
        return x
    for p in model.parameters():
        if p.is_floating_point():
            return x if x.dtype == p.dtype else x.to(p.dtype)
    return x
