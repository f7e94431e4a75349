"""Which output units are active in each continual-learning scenario.

- Task-IL (``"task"``): the task label is known; only the classes of the sample's
  own task are active (one head masked per task, or a multi-head model).
- Class-IL (``"class"``): no task label at test time; every class seen so far is
  active in one head.
- Domain-IL (``"domain"``): every task shares the label space; all units active.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Dict, Iterable, List, Optional

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
    def observe(self, y: Tensor, t: Optional[Tensor] = None) -> None:
        """Record labels ``y`` (and their task labels ``t``) seen in training."""
        y = y.to(self.seen.device).long().flatten()
        self._check_labels(y)
        self.seen[y] = True
        if t is not None:
            t = t.to(self.seen.device).long().flatten()
            if t.numel():
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
        if self.scenario == "class":
            row = self.seen if bool(self.seen.any()) else torch.ones_like(self.seen)
            return row.unsqueeze(0).expand(batch_size, -1)
        if t is None:
            raise ValueError(
                "Task-IL (scenario='task') needs the task label of every sample; the "
                "batch has none. Use a benchmark with task labels (e.g. "
                "return_task_id=True) or another scenario."
            )
        t = t.to(device).long().flatten()
        known = t < self.task_classes.shape[0]
        rows = torch.ones(batch_size, self.num_classes, dtype=torch.bool, device=device)
        if bool(known.any()):
            sel = self.task_classes[t[known]]
            empty = ~sel.any(dim=1, keepdim=True)
            rows[known] = sel | empty
        return rows

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

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "task_classes"
        if key in state_dict:
            self.task_classes = torch.zeros_like(
                state_dict[key], device=self.task_classes.device
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, scenario={self.scenario!r}"
