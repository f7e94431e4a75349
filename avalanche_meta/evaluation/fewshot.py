"""Few-shot evaluation: N-way K-shot task sampling, fine-tuning on the support set, and
an Avalanche metric reporting query accuracy with a 95% confidence interval.

The protocol is the one of Finn et al. (2017) and Nichol et al. (2018): sample ``M``
test tasks (600 by default) from the classes of an evaluation experience, adapt a copy
of the model on each task's support set, measure the accuracy on its query set, report
the mean and the 95% confidence interval ``1.96 * std / sqrt(M)``.

Pieces, from the core outwards:

- :class:`FewShotTaskSampler`: N-way (K + Q)-shot tasks drawn through learn2learn
  (``MetaDataset``, ``Taskset`` (formerly ``TaskDataset``) with ``NWays``, ``KShots``, ``LoadData``,
  ``RemapLabels``, ``ConsecutiveLabels``), labels remapped to ``0..N-1``, with the two
  Omniglot task augmentations (90-degree rotations of classes as new classes; random
  rotation of a whole task).
- :func:`fine_tune` and :func:`few_shot_accuracy`: adapt a scratch copy of any model
  and score it; the model passed in is never modified.
- :class:`FewShotAccuracy`: a ``PluginMetric`` for ``EvaluationPlugin``; it runs
  :func:`few_shot_accuracy` on every evaluation experience and emits
  ``FewShotAcc_Exp`` / ``FewShotAcc95CI_Exp`` (and ``FewShotAcc_Stream``) through
  the loggers.

Models whose output layer has a size other than ``ways`` (a Naive or transfer model
with one unit per training class) are handled by giving the scratch copy a new,
zero-initialised ``ways``-unit linear layer in place of the model's *last*
``nn.Linear`` (the "simple" transfer baseline's new head); the other parameters start
from the trained values and every parameter is fine-tuned. Models whose last linear
layer already has ``ways`` outputs (MAML, Reptile) are fine-tuned from their
meta-learned initialisation, head included.

Batch normalisation never uses running statistics, as in Nichol et al.'s code (their
batch-norm layers always normalise with the statistics of the batch they are given):
the copy adapts in training mode (statistics of each support mini-batch), and it
predicts with its batch-norm layers in training mode (every other module in evaluation
mode). Two prediction rules (``transductive``):

- ``True`` (default; MAML, learn2learn, Nichol et al.'s ``--transductive``): the
  query set is one batch, so each query's prediction uses the statistics of all the
  task's queries;
- ``False`` (Nichol et al.'s default, non-transductive): the copy is adapted once on
  the support set, then each query is predicted alone, from a batch of the support set
  plus that one query (:func:`query_logits`), so no query's prediction depends on the
  other queries.

The model passed in is never modified (its running statistics included): every task
starts from a fresh copy.

This module imports learn2learn's data utilities for the sampling (through
:func:`avalanche_meta.utils.quiet_import.import_learn2learn`), nothing else.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import math
import random
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metric_utils import get_metric_name
from avalanche.models.utils import avalanche_forward

from avalanche_meta.utils.quiet_import import import_learn2learn
from avalanche_meta.utils.validation import (
    check_choice,
    check_finite_loss,
    check_in_interval,
    check_non_negative,
    check_positive,
)

__all__ = [
    "FewShotTask",
    "FewShotTaskSampler",
    "FewShotResult",
    "rotate_images",
    "split_support_query",
    "dataset_tensors",
    "mini_batches",
    "fine_tune",
    "query_logits",
    "few_shot_accuracy",
    "FewShotAccuracy",
    "fewshot_metrics",
    "FewShotRule",
    "FewShotEval",
    "AdaptedModel",
    "adapt",
    "iter_task_predictions",
    "TaskFreeHead",
    "is_multihead",
    "strategy_adam_state",
    "StrategyArgumentError",
    "check_keywords",
]


class StrategyArgumentError(TypeError, ValueError):
    """A constructor argument a strategy (or metric) does not take or cannot use:
    both a ``TypeError``, as Python raises for a wrong call, and a ``ValueError``,
    as the package raises for bad values. (Re-exported by
    :mod:`avalanche_meta.strategies._fewshot`.)"""


def check_keywords(cls, args: tuple, kwargs: dict, accepted: List[str]) -> None:
    """Raise :class:`StrategyArgumentError` for positional arguments or a keyword
    not in ``accepted`` (naming its close matches)."""
    name = cls.__name__
    if args:
        raise StrategyArgumentError(
            f"{name} takes keyword arguments only: got {len(args)} positional "
            f"argument(s) ({', '.join(type(a).__name__ for a in args)}); write e.g. "
            f"{name}({accepted[0]}=...)."
        )
    for key in kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=3, cutoff=0.6)
            hint = (
                f"; did you mean {' or '.join(repr(c) for c in close)}?"
                if close
                else f"; it takes: {', '.join(accepted)}."
            )
            raise StrategyArgumentError(
                f"{name} got an unexpected keyword argument {key!r}{hint}"
            )


@dataclass
class FewShotTask:
    """One N-way task: support and query sets, labels in ``0..N-1``.

    ``support_y`` holds ``shots`` examples of each class, ``query_y`` ``query_shots``.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    def to(self, device) -> "FewShotTask":
        """The task on ``device``."""
        return FewShotTask(
            self.support_x.to(device),
            self.support_y.to(device),
            self.query_x.to(device),
            self.query_y.to(device),
        )


def rotate_images(x: Tensor, k: int) -> Tensor:
    """Rotate a batch of images ``(B, C, H, W)`` by ``k * 90`` degrees (counter-clockwise)."""
    return torch.rot90(x, k, dims=(-2, -1))


def _check_images(x: Tensor, what: str) -> None:
    if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(
            f"`{what}` rotates images by 90 degrees, which needs square image inputs of "
            f"shape (N, C, H, H); the data have shape {tuple(x.shape)}. Turn `{what}` off "
            "for non-image data (or reshape the inputs to images)."
        )


def split_support_query(x: Tensor, y: Tensor, ways: int, shots: int) -> FewShotTask:
    """Split the ``ways * (shots + Q)`` samples of a task into support and query.

    The first ``shots`` samples of each label (in the order given) form the support
    set, the rest the query set.

    :param x: the task's inputs.
    :param y: its labels, in ``0..ways-1``, the same number of samples per label.
    """
    order = torch.sort(y, stable=True).indices
    x, y = x[order], y[order]
    per_class = y.numel() // ways
    if per_class * ways != y.numel() or per_class <= shots:
        raise ValueError(
            f"a task with {y.numel()} samples cannot give {ways} classes x ({shots} "
            "support + at least 1 query) samples."
        )
    xs = x.reshape(ways, per_class, *x.shape[1:])
    ys = y.reshape(ways, per_class)
    return FewShotTask(
        xs[:, :shots].reshape(ways * shots, *x.shape[1:]),
        ys[:, :shots].reshape(-1),
        xs[:, shots:].reshape(ways * (per_class - shots), *x.shape[1:]),
        ys[:, shots:].reshape(-1),
    )


class FewShotTaskSampler:
    """N-way K-shot tasks (plus Q query samples per class) from labelled tensors.

    Sampling goes through learn2learn: a ``MetaDataset`` over the tensors and a
    ``Taskset`` (``TaskDataset``) with ``NWays(ways)``, ``KShots(shots + query_shots)``,
    ``LoadData``, ``RemapLabels`` and ``ConsecutiveLabels``.

    :param x: inputs, one row per sample (images ``(N, C, H, W)`` for the rotations).
    :param y: integer class labels.
    :param ways: N, classes per task.
    :param shots: K, support samples per class.
    :param query_shots: Q, query samples per class (0 for Reptile-style tasks that
        have only a training set, returned as the support set).
    :param class_rotations: add the 90, 180 and 270-degree rotations of every class
        as new classes (the standard Omniglot protocol, 4x the classes).
    :param task_rotation_prob: probability of rotating a whole task (support and
        query) by 90 or 270 degrees (chosen uniformly).
    :param seed: seed of the sampler's own random generator (None: unseeded). The
        global ``random`` state is left as it was.
    :param name: how errors call the data (e.g. ``"experience 2"``).

    Example::

        sampler = FewShotTaskSampler(x, y, ways=5, shots=1, query_shots=15, seed=0)
        task = sampler.sample()  # task.support_x: (5, 1, 28, 28), task.query_y: (75,)
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        *,
        ways: int,
        shots: int,
        query_shots: int,
        class_rotations: bool = False,
        task_rotation_prob: float = 0.0,
        seed: Optional[int] = None,
        name: str = "the data",
    ):
        check_positive("ways", ways, integer=True)
        check_positive("shots", shots, integer=True)
        check_non_negative("query_shots", query_shots, integer=True)
        check_in_interval("task_rotation_prob", task_rotation_prob, 0.0, 1.0)
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{name}: {x.shape[0]} inputs but {y.shape[0]} labels; they must match."
            )
        y = torch.as_tensor(y).long().reshape(-1)
        if class_rotations:
            _check_images(x, "class_rotations")
        if task_rotation_prob > 0:
            _check_images(x, "task_rotation_prob")
        # Consecutive class ids, then (optionally) the rotated copies as new classes.
        _, y = torch.unique(y, return_inverse=True)
        if class_rotations:
            n_base = int(y.max()) + 1
            x = torch.cat([rotate_images(x, k) for k in range(4)])
            y = torch.cat([y + k * n_base for k in range(4)])
        self.x, self.y = x.contiguous(), y
        self.ways, self.shots, self.query_shots = ways, shots, query_shots
        self.task_rotation_prob = float(task_rotation_prob)
        counts = torch.bincount(y)
        self.num_classes = int(counts.numel())
        if self.num_classes < ways:
            raise ValueError(
                f"{name} has {self.num_classes} classes, fewer than `ways`={ways}: lower "
                "`ways` or give the experience more classes."
            )
        need = shots + query_shots
        if int(counts.min()) < need:
            raise ValueError(
                f"`shots` + `query_shots` = {shots} + {query_shots} = {need} samples per "
                f"class are needed, but a class of {name} has only {int(counts.min())}: "
                "lower `shots` or `query_shots`."
            )
        self._rng = random.Random(seed)
        l2l = import_learn2learn()
        labels_to_indices: Dict[int, List[int]] = {}
        for i, label in enumerate(y.tolist()):
            labels_to_indices.setdefault(label, []).append(i)
        dataset = torch.utils.data.TensorDataset(self.x, self.y)
        meta = l2l.data.MetaDataset(dataset, labels_to_indices=labels_to_indices)
        tr = l2l.data.transforms
        self.taskset = l2l.data.Taskset(
            meta,
            task_transforms=[
                tr.NWays(meta, n=ways),
                tr.KShots(meta, k=need),
                tr.LoadData(meta),
                tr.RemapLabels(meta),
                tr.ConsecutiveLabels(meta),
            ],
            num_tasks=-1,
        )

    @contextmanager
    def _own_random(self) -> Iterator[None]:
        # learn2learn samples with the global `random` module: swap in our state.
        saved = random.getstate()
        random.setstate(self._rng.getstate())
        try:
            yield
        finally:
            self._rng.setstate(random.getstate())
            random.setstate(saved)

    def sample(self) -> FewShotTask:
        """Draw one task (support and query), labels in ``0..ways-1``."""
        with self._own_random():
            x, y = self.taskset.sample()
            rotate = (
                self.task_rotation_prob > 0
                and random.random() < self.task_rotation_prob
            )
            k = random.choice((1, 3)) if rotate else 0
        if k:
            x = rotate_images(x, k)
        if self.query_shots == 0:
            order = torch.sort(y, stable=True).indices
            return FewShotTask(x[order], y[order], x[:0], y[:0])
        return split_support_query(x, y, self.ways, self.shots)

    def state_dict(self) -> dict:
        """The sampler's random state (to resume the same task sequence)."""
        return {"rng": self._rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self._rng.setstate(state["rng"])


def dataset_tensors(dataset, batch_size: int = 1024) -> Tuple[Tensor, Tensor]:
    """All inputs and labels of a (map-style) dataset, as two tensors.

    Works for Avalanche datasets (``[x, y, t]`` items) and plain ``(x, y)`` ones; the
    dataset's current transforms are applied.
    """
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    xs, ys = [], []
    for batch in loader:
        xs.append(batch[0])
        ys.append(torch.as_tensor(batch[1]))
    if not xs:
        raise ValueError("the evaluation dataset is empty.")
    return torch.cat(xs), torch.cat(ys).long()


def _last_linear(model: nn.Module) -> Tuple[nn.Module, str, nn.Linear]:
    """The parent, attribute name and module of ``model``'s last ``nn.Linear``."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    if found is None:
        raise ValueError(
            "few-shot evaluation needs a model whose output layer is an nn.Linear "
            "(to give it `ways` outputs); this model has no nn.Linear."
        )
    name, module = found
    parent = model
    *path, attr = name.split(".")
    for part in path:
        parent = getattr(parent, part)
    return parent, attr, module


def _dynamic_head(model: nn.Module) -> Optional[Tuple[nn.Module, str, nn.Module]]:
    """The parent, attribute name and module of ``model``'s outermost Avalanche
    ``MultiHeadClassifier`` / ``IncrementalClassifier`` (None if it has none)."""
    from avalanche.models import IncrementalClassifier, MultiHeadClassifier

    for name, module in model.named_modules():
        if name and isinstance(module, (MultiHeadClassifier, IncrementalClassifier)):
            parent = model
            *path, attr = name.split(".")
            for part in path:
                parent = getattr(parent, part)
            return parent, attr, module
    return None


def is_multihead(model: nn.Module) -> bool:
    """True for Avalanche multi-head / dynamic-head models (``MultiTaskModule``,
    ``MultiHeadClassifier``, ``IncrementalClassifier``, e.g. ``MTSimpleMLP``)."""
    from avalanche.models import MultiTaskModule

    return isinstance(model, MultiTaskModule) or _dynamic_head(model) is not None


class TaskFreeHead(nn.Module):
    """A plain ``ways``-unit linear head that stands in for an Avalanche
    multi-head (or incremental) classifier in a few-shot copy of the model: it
    accepts and ignores the task label the multi-task model passes to its
    classifier, since a few-shot task's identity is its support set."""

    def __init__(self, in_features: int, ways: int, *, device=None, dtype=None):
        super().__init__()
        self.classifier = nn.Linear(in_features, ways, device=device, dtype=dtype)
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        return self.classifier(x)


def _with_ways_head(
    model: nn.Module, ways: int, reset_head: Optional[bool]
) -> nn.Module:
    """A deep copy of ``model`` whose last linear layer has ``ways`` outputs.

    An Avalanche multi-head (or incremental) classifier is replaced by a
    :class:`TaskFreeHead` (zero-initialised, ``ways`` units): its heads are per task
    label, and a few-shot task has none.
    """
    scratch = copy.deepcopy(model)
    dynamic = _dynamic_head(scratch)
    if dynamic is not None:
        if reset_head is False:
            raise ValueError(
                "the model's output layer is an Avalanche multi-head (or "
                "incremental) classifier, whose heads belong to task labels: a "
                "few-shot task needs a new `ways`-unit head; use reset_head=None or "
                "True."
            )
        parent, attr, head = dynamic
        _, _, linear = _last_linear(head)
        setattr(
            parent,
            attr,
            TaskFreeHead(
                linear.in_features,
                ways,
                device=linear.weight.device,
                dtype=linear.weight.dtype,
            ),
        )
        return scratch
    parent, attr, head = _last_linear(scratch)
    if reset_head is None:
        reset_head = head.out_features != ways
    if reset_head:
        new = nn.Linear(
            head.in_features,
            ways,
            bias=head.bias is not None,
            device=head.weight.device,
            dtype=head.weight.dtype,
        )
        nn.init.zeros_(new.weight)
        if new.bias is not None:
            nn.init.zeros_(new.bias)
        setattr(parent, attr, new)
    elif head.out_features != ways:
        raise ValueError(
            f"the model's last linear layer has {head.out_features} outputs, not "
            f"`ways`={ways}; use reset_head=None or True to give it a new head."
        )
    return scratch


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    t = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    return avalanche_forward(model, x, t)


def mini_batches(
    n: int,
    batch_size: Optional[int],
    num_batches: int,
    generator: Optional[torch.Generator] = None,
) -> Iterator[Optional[Tensor]]:
    """Indices of ``num_batches`` mini-batches of ``batch_size`` samples out of ``n``.

    Consecutive slices of a random order, drawn again when fewer than a batch remain
    (no sample twice in a batch; a batch larger than ``n`` is the whole set).
    Nichol et al.'s code fills a batch across two orders instead; both rules give
    the same batches when ``batch_size`` divides ``n``, as in all their Omniglot
    settings. ``batch_size`` None (or ``>= n``) yields None: the whole set, in order.

    :param generator: the random generator (None: torch's global one).
    """
    if batch_size is None or batch_size >= n:
        for _ in range(num_batches):
            yield None
        return
    order, pos = torch.randperm(n, generator=generator), 0
    for _ in range(num_batches):
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=generator), 0
        yield order[pos : pos + batch_size]
        pos += batch_size


def fine_tune(
    model: nn.Module,
    support_x: Tensor,
    support_y: Tensor,
    *,
    inner_lr: float,
    inner_steps: int,
    optimizer: str = "sgd",
    batch_size: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    adam_state: Optional[dict] = None,
    losses: Optional[List[Tensor]] = None,
) -> nn.Module:
    """Adapt ``model`` in place: ``inner_steps`` steps on the support loss, in
    training mode (batch norm normalises with each mini-batch's statistics).

    Non-finite losses raise :class:`~avalanche_meta.utils.validation.NonFiniteLossError`
    after the last step (one host synchronisation per call, none per step), or are
    appended to ``losses`` for the caller to check (:func:`check_losses`).

    :param optimizer: ``"sgd"`` (MAML's inner loop) or ``"adam"`` (Reptile's,
        ``betas=(0, 0.999)`` as in Nichol et al.).
    :param batch_size: samples per step (Nichol et al.'s ``--eval-batch``), see
        :func:`mini_batches`; None: the whole support set at every step.
    :param generator: draws the mini-batches (None: torch's global generator).
    :param adam_state: the ``state_dict()`` of an Adam over the same parameters (in
        ``model.parameters()`` order), whose moments and step counts the fine-tuning
        Adam starts from (a copy: the dict is not modified), as Nichol et al.'s
        evaluation continues their meta-training Adam; the learning rate and betas
        stay ``inner_lr`` and ``(0, 0.999)``. None: a fresh Adam.
    :param losses: where to append the (detached) step losses instead of checking
        them here.
    :return: ``model``.
    """
    model.train()
    own = losses is None
    losses = [] if own else losses
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        if adam_state is not None:
            raise ValueError("`adam_state` needs optimizer='adam'.")
        opt = torch.optim.SGD(params, lr=inner_lr)
    else:
        opt = torch.optim.Adam(params, lr=inner_lr, betas=(0.0, 0.999))
        if adam_state is not None:
            _load_adam_state(opt, params, adam_state)
    batches = mini_batches(len(support_y), batch_size, inner_steps, generator)
    with torch.enable_grad():
        for step, idx in enumerate(batches):
            x, y = support_x, support_y
            if idx is not None:
                idx = idx.to(support_y.device)
                x, y = x[idx], y[idx]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(_logits(model, x), y)
            losses.append(loss.detach().reshape(1))
            loss.backward()
            opt.step()
    if own:
        check_losses(losses, lambda i: f"few-shot fine-tuning, step {i}")
    return model


def check_losses(losses: List[Tensor], where) -> None:
    """Raise :class:`~avalanche_meta.utils.validation.NonFiniteLossError` naming
    ``where(i)`` for the first non-finite loss of ``losses`` (one host
    synchronisation; nothing on the ``meta`` device, whose tensors have no values)."""
    if not losses or losses[0].device.type == "meta":
        return
    stacked = torch.cat([loss.reshape(-1)[:1] for loss in losses])
    if bool(torch.isfinite(stacked).all()):
        return
    first = int((~torch.isfinite(stacked)).nonzero()[0, 0])
    check_finite_loss(stacked[first], where(first))


def _load_adam_state(opt: torch.optim.Adam, params: List[Tensor], state: dict):
    """Load the moments and step counts of ``state`` into ``opt`` (one group over
    ``params``), keeping ``opt``'s hyper-parameters."""
    saved = [i for g in state["param_groups"] for i in g["params"]]
    moments = state["state"]
    if not moments:  # an Adam that never stepped: a fresh one
        return
    if len(saved) != len(params) or any(
        i not in moments or tuple(moments[i]["exp_avg"].shape) != tuple(p.shape)
        for i, p in zip(saved, params)
    ):
        raise ValueError(
            "`adam_state` must be the state of an Adam that stepped all the model's "
            f"trainable parameters (same order and shapes); it has {len(saved)} "
            f"parameters, the model {len(params)}. A new head (reset_head) has no "
            "Adam state: use a fresh Adam there."
        )
    group = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    opt.load_state_dict(
        {
            "state": copy.deepcopy(moments),
            "param_groups": [{**group, "params": saved}],
        }
    )


def _batch_norm_layers(model: nn.Module) -> List[nn.Module]:
    return [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]


def query_logits(
    model: nn.Module, support_x: Tensor, query_x: Tensor, *, transductive: bool
) -> Tensor:
    """The logits of an adapted ``model`` on a task's queries, batch norm on batch
    statistics (never running statistics).

    ``model`` is put in evaluation mode with its batch-norm layers in training mode.

    :param transductive: True: one batch of all the queries. False: for each query,
        a batch of the support set plus that query, of which the query's row is kept
        (Nichol et al.'s non-transductive rule), so a query's logits do not depend on
        the other queries.
    """
    model.eval()
    for layer in _batch_norm_layers(model):
        layer.train()
    with torch.no_grad():
        if transductive:
            return _logits(model, query_x)
        return torch.cat(
            [_logits(model, torch.cat([support_x, q]))[-1:] for q in query_x.split(1)]
        )


@dataclass
class FewShotResult:
    """Query accuracies of ``M`` tasks: mean and 95% confidence interval (in [0, 1])."""

    accuracies: List[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        """Mean query accuracy over the tasks."""
        return sum(self.accuracies) / len(self.accuracies)

    @property
    def ci95(self) -> float:
        """Half-width of the 95% confidence interval of the mean, ``1.96 s / sqrt(M)``."""
        m = len(self.accuracies)
        if m < 2:
            return float("nan")
        mu = self.mean
        var = sum((a - mu) ** 2 for a in self.accuracies) / (m - 1)
        return 1.96 * math.sqrt(var / m)

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} +- {100 * self.ci95:.2f}% ({len(self.accuracies)} tasks)"


@dataclass(frozen=True)
class FewShotRule:
    """How a model adapts to a task's support set and predicts its queries.

    The rule of :func:`fine_tune` and :func:`query_logits`, shared by
    :class:`FewShotAccuracy`, the few-shot strategies' evaluation and their
    ``adapt`` / ``predict`` calls (so a saved model adapts as the strategy's own
    evaluation does).

    :param inner_lr: the fine-tuning step size.
    :param inner_steps: fine-tuning steps on the support set.
    :param optimizer: ``"sgd"`` (MAML's inner loop) or ``"adam"`` (Reptile's,
        ``betas=(0, 0.999)``).
    :param inner_batch_size: support samples per step (None: all).
    :param transductive: the prediction rule of :func:`query_logits`.
    :param reset_head: give the copy a new zero-initialised ``ways``-unit head
        (None: when the last linear layer's width is not ``ways``).
    """

    inner_lr: float = 0.4
    inner_steps: int = 10
    optimizer: str = "sgd"
    inner_batch_size: Optional[int] = None
    transductive: bool = True
    reset_head: Optional[bool] = None

    def __post_init__(self):
        check_positive("inner_lr", self.inner_lr)
        check_non_negative("inner_steps", self.inner_steps, integer=True)
        check_choice("optimizer", self.optimizer, ("sgd", "adam"))
        if self.inner_batch_size is not None:
            check_positive("inner_batch_size", self.inner_batch_size, integer=True)
        for name in ("transductive",):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"`{name}` must be True or False, got {getattr(self, name)!r}."
                )
        if self.reset_head not in (None, True, False):
            raise ValueError(
                f"`reset_head` must be None, True or False, got {self.reset_head!r}."
            )

    def to_dict(self) -> dict:
        """The rule as a JSON-serialisable dict (:meth:`from_dict` reads it)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FewShotRule":
        """The rule of :meth:`to_dict`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown few-shot rule field(s) {unknown}; known: {sorted(known)}."
            )
        return cls(**data)


@dataclass(frozen=True)
class FewShotEval:
    """The few-shot evaluation of an experience: ``num_tasks`` N-way K-shot tasks
    (``query_shots`` queries per class) sampled with ``seed`` (plus ``1000003`` times
    the experience id), each adapted and predicted by ``rule``.

    :param continue_adam: start every task's fine-tuning Adam from the strategy's
        optimizer state (Nichol et al.'s evaluation; ``rule.optimizer="adam"``).
    """

    ways: int = 5
    shots: int = 1
    query_shots: int = 15
    num_tasks: int = 600
    rule: FewShotRule = field(default_factory=FewShotRule)
    seed: int = 0
    continue_adam: bool = False

    def __post_init__(self):
        check_positive("ways", self.ways, integer=True)
        check_positive("shots", self.shots, integer=True)
        check_positive("query_shots", self.query_shots, integer=True)
        check_positive("num_tasks", self.num_tasks, integer=True)
        if not isinstance(self.rule, FewShotRule):
            raise ValueError(f"`rule` must be a FewShotRule, got {self.rule!r}.")
        if not isinstance(self.continue_adam, bool):
            raise ValueError(
                f"`continue_adam` must be True or False, got {self.continue_adam!r}."
            )
        if self.continue_adam and self.rule.optimizer != "adam":
            raise ValueError("`continue_adam=True` needs optimizer='adam'.")


def strategy_adam_state(strategy, continue_adam: bool) -> Optional[dict]:
    """The strategy's Adam state when ``continue_adam`` (else None)."""
    if not continue_adam:
        return None
    if not isinstance(strategy.optimizer, torch.optim.Adam):
        raise ValueError(
            "FewShotAccuracy(continue_adam=True) continues the strategy's "
            f"Adam, but its optimizer is a {type(strategy.optimizer).__name__}"
            "; use continue_adam=False."
        )
    return strategy.optimizer.state_dict()


class AdaptedModel:
    """A copy of a model adapted on a support set (:func:`adapt`).

    :attr:`module` is the adapted copy (``ways`` outputs, unit ``i`` for
    ``classes[i]``); :meth:`predict` returns labels in the support set's own label
    values (any integers).
    """

    def __init__(
        self,
        module: nn.Module,
        classes: Tensor,
        support_x: Tensor,
        transductive: bool,
    ):
        self.module = module
        self.classes = classes
        self.support_x = support_x
        self.transductive = transductive

    @property
    def device(self) -> torch.device:
        return self.support_x.device

    def logits(self, query_x: Tensor) -> Tensor:
        """Logits of the queries (unit ``i`` scores ``classes[i]``), by the rule's
        prediction rule (:func:`query_logits`)."""
        return query_logits(
            self.module,
            self.support_x,
            torch.as_tensor(query_x).to(self.device),
            transductive=self.transductive,
        )

    def predict(self, query_x: Tensor) -> Tensor:
        """The predicted label of every query, in the support set's label values."""
        return self.classes[self.logits(query_x).argmax(dim=1)]


def adapt(
    model: nn.Module,
    support_x: Tensor,
    support_y: Tensor,
    *,
    rule: FewShotRule = FewShotRule(),
    device: Optional[torch.device] = None,
    generator: Optional[torch.Generator] = None,
    adam_state: Optional[dict] = None,
) -> AdaptedModel:
    """Adapt a copy of ``model`` on a user's support set (N-way K-shot, any labels).

    The labels of ``support_y`` (any integers, e.g. ``[7, 7, 42, 42, 3, 3]``) are
    mapped to output units in sorted order (the smallest label to unit 0, as the
    strategies' evaluation tasks map their classes 0..N-1); ``model`` is never
    modified. When the number of classes differs from the width of the model's
    last linear layer (e.g. a 3-way task for a 5-way MAML model, or a transfer
    model), the copy gets a new zero-initialised head (``rule.reset_head`` None).

    :param support_x: the support inputs (the model's input shape).
    :param support_y: their labels, at least 2 distinct values.
    :param rule: the adaptation and prediction rule.
    :param device: where to adapt (None: the model's device).
    """
    support_x = torch.as_tensor(support_x)
    support_y = torch.as_tensor(support_y).reshape(-1)
    if support_x.shape[0] != support_y.shape[0] or support_y.numel() == 0:
        raise ValueError(
            f"`support_x` has {support_x.shape[0]} samples and `support_y` "
            f"{support_y.numel()} labels: give one label per support sample."
        )
    if support_y.dtype.is_floating_point or support_y.dtype == torch.bool:
        raise ValueError(
            f"`support_y` must hold integer labels, got dtype {support_y.dtype}."
        )
    classes, remapped = torch.unique(support_y, sorted=True, return_inverse=True)
    if classes.numel() < 2:
        raise ValueError(
            "`support_y` has a single label: a few-shot task needs at least 2 classes."
        )
    device = device or next(model.parameters()).device
    scratch = _with_ways_head(model, int(classes.numel()), rule.reset_head).to(device)
    support_x = support_x.to(device)
    fine_tune(
        scratch,
        support_x,
        remapped.to(device),
        inner_lr=rule.inner_lr,
        inner_steps=rule.inner_steps,
        optimizer=rule.optimizer,
        batch_size=rule.inner_batch_size,
        generator=generator,
        adam_state=adam_state,
    )
    return AdaptedModel(scratch, classes.to(device), support_x, rule.transductive)


def iter_task_predictions(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    evaluation: FewShotEval,
    *,
    exp_id: int = 0,
    device: Optional[torch.device] = None,
    adam_state: Optional[dict] = None,
) -> Iterator[Tuple[FewShotTask, Tensor]]:
    """``(task, query logits)`` of ``evaluation.num_tasks`` tasks drawn from
    ``(x, y)`` with the seed ``evaluation.seed + 1000003 * exp_id``, each predicted
    by a fresh copy of ``model`` adapted with ``evaluation.rule`` (``model`` is
    never modified). No host synchronisation happens per task."""
    device = device or next(model.parameters()).device
    seed = evaluation.seed + 1000003 * exp_id
    sampler = FewShotTaskSampler(
        x,
        y,
        ways=evaluation.ways,
        shots=evaluation.shots,
        query_shots=evaluation.query_shots,
        seed=seed,
        name=f"evaluation experience {exp_id} (few-shot evaluation settings: "
        "fewshot_eval or the FewShotAccuracy metric)",
    )
    rule = evaluation.rule
    generator = torch.Generator().manual_seed(seed)
    scratch = _with_ways_head(model, evaluation.ways, rule.reset_head).to(device)
    start = {k: v.detach().clone() for k, v in scratch.state_dict().items()}
    losses: List[Tensor] = []
    for _ in range(evaluation.num_tasks):
        task = sampler.sample().to(device)
        scratch.load_state_dict(start)
        fine_tune(
            scratch,
            task.support_x,
            task.support_y,
            inner_lr=rule.inner_lr,
            inner_steps=rule.inner_steps,
            optimizer=rule.optimizer,
            batch_size=rule.inner_batch_size,
            generator=generator,
            adam_state=adam_state,
            losses=losses,
        )
        logits = query_logits(
            scratch, task.support_x, task.query_x, transductive=rule.transductive
        )
        yield task, logits
    # one host synchronisation for all the tasks' fine-tuning losses
    steps = max(1, rule.inner_steps)
    check_losses(
        losses,
        lambda i: f"few-shot fine-tuning, task {i // steps}, step {i % steps}",
    )


def few_shot_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    ways: int = 5,
    shots: int = 1,
    query_shots: int = 15,
    num_tasks: int = 600,
    inner_lr: float = 0.4,
    inner_steps: int = 10,
    optimizer: str = "sgd",
    inner_batch_size: Optional[int] = None,
    transductive: bool = True,
    reset_head: Optional[bool] = None,
    seed: Optional[int] = 0,
    device: Optional[torch.device] = None,
    adam_state: Optional[dict] = None,
) -> FewShotResult:
    """Few-shot query accuracy of ``model`` on ``num_tasks`` tasks drawn from ``(x, y)``.

    Each task starts from a fresh copy of ``model`` (see the module docstring for the
    head and batch-norm handling), fine-tuned once on the support set by
    :func:`fine_tune`, then scored on the query set by :func:`query_logits`;
    ``model`` itself is left unchanged (parameters, buffers such as batch-norm running
    statistics, and train/eval mode).

    :param inner_batch_size: support samples per fine-tuning step (None: all).
    :param transductive: the prediction rule of :func:`query_logits`.
    :param seed: seeds the task sampler and the fine-tuning mini-batches, so that
        every model is scored on the same tasks (paired comparisons); None draws new
        tasks each call.
    :param adam_state: with ``optimizer="adam"``, the Adam state every task's
        fine-tuning starts from (see :func:`fine_tune`); None: a fresh Adam.
    """
    rule = FewShotRule(
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        optimizer=optimizer,
        inner_batch_size=inner_batch_size,
        transductive=transductive,
        reset_head=reset_head,
    )
    check_positive("num_tasks", num_tasks, integer=True)
    if seed is None:
        seed = random.randrange(2**31 - 1)
    evaluation = FewShotEval(
        ways=ways,
        shots=shots,
        query_shots=query_shots,
        num_tasks=num_tasks,
        rule=rule,
        seed=seed,
    )
    hits = [
        (logits.argmax(dim=1) == task.query_y).float().mean()
        for task, logits in iter_task_predictions(
            model, x, y, evaluation, device=device, adam_state=adam_state
        )
    ]
    # one host synchronisation for all the tasks
    return FewShotResult(torch.stack(hits).tolist())


class FewShotAccuracy(PluginMetric[float]):
    """Few-shot accuracy of the strategy's model on every evaluation experience.

    After each evaluation experience it samples ``num_tasks`` N-way K-shot tasks from
    the experience's classes (the same tasks at every evaluation, through ``seed``
    plus the experience id), fine-tunes a copy of the model on each support set and
    emits, through ``EvaluationPlugin`` and its loggers (values in [0, 1]):

    - ``FewShotAcc_Exp/eval_phase/<stream>_stream[/TaskXXX]/ExpYYY``: mean accuracy;
    - ``FewShotAcc95CI_Exp/...``: half-width of the 95% confidence interval;
    - ``FewShotAcc_Stream/eval_phase/<stream>_stream``: mean over the evaluated
      experiences (after the whole stream).

    Works for any strategy's model; the keyword arguments are those of
    :func:`few_shot_accuracy` (``inner_batch_size``, ``transductive``, ...), and
    ``continue_adam=True`` starts every task's fine-tuning Adam from the strategy's
    optimizer state (its moments and step counts, which stay unchanged), as Nichol
    et al.'s evaluation continues their meta-training Adam (Reptile, whose optimizer
    is that Adam; needs ``optimizer="adam"`` and the model's own head). The
    per-experience
    results of the last evaluation are in :attr:`results` (``{exp_id: FewShotResult}``)
    and the accuracy matrix of the run in :attr:`matrix` (``R[i][j]``: mean few-shot
    accuracy on eval experience ``j`` after training experience ``i``, fractions; the
    shape :mod:`avalanche_meta.evaluation.metrics`'s ``average_accuracy``, ``bwt`` and
    ``forgetting`` take), with the confidence intervals in :attr:`ci_matrix`.

    In the evaluator of a few-shot strategy (MAML, FOMAML, Reptile,
    TransferLearning), the first ``FewShotAccuracy`` sets that strategy's evaluation:
    the strategy runs this metric's tasks as its evaluation iterations (so
    Avalanche's ``Top1_Acc_Exp`` / ``Loss_Exp`` / forgetting / BWT are computed on
    them) and the metric reports their accuracies without running them again. With
    any other strategy (e.g. Avalanche's ``Naive``) it runs the tasks itself after
    each evaluation experience. Multi-head models (``MTSimpleMLP``) are scored
    through a task-free ``ways``-unit head (:class:`TaskFreeHead`).

    Example::

        evaluator = EvaluationPlugin(
            FewShotAccuracy(ways=5, shots=1, inner_lr=0.4, inner_steps=10),
            loggers=[InteractiveLogger()],
        )
    """

    def __new__(cls, *args, **kwargs):
        accepted = [
            p
            for p in inspect.signature(cls.__init__).parameters
            if p not in ("self", "args", "kwargs")
        ]
        check_keywords(cls, args, kwargs, accepted)
        return super().__new__(cls)

    def __init__(
        self,
        *,
        ways: int = 5,
        shots: int = 1,
        query_shots: int = 15,
        num_tasks: int = 600,
        inner_lr: float = 0.4,
        inner_steps: int = 10,
        optimizer: str = "sgd",
        inner_batch_size: Optional[int] = None,
        transductive: bool = True,
        reset_head: Optional[bool] = None,
        seed: int = 0,
        continue_adam: bool = False,
    ):
        super().__init__()
        check_positive("ways", ways, integer=True)
        check_positive("shots", shots, integer=True)
        check_positive("query_shots", query_shots, integer=True)
        check_positive("num_tasks", num_tasks, integer=True)
        check_positive("inner_lr", inner_lr)
        check_non_negative("inner_steps", inner_steps, integer=True)
        check_choice("optimizer", optimizer, ("sgd", "adam"))
        if inner_batch_size is not None:
            check_positive("inner_batch_size", inner_batch_size, integer=True)
        if not isinstance(transductive, bool):
            raise ValueError(
                f"`transductive` must be True or False, got {transductive!r}."
            )
        self.kwargs = dict(
            ways=ways,
            shots=shots,
            query_shots=query_shots,
            num_tasks=num_tasks,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            optimizer=optimizer,
            inner_batch_size=inner_batch_size,
            transductive=transductive,
            reset_head=reset_head,
        )
        if not isinstance(continue_adam, bool):
            raise ValueError(
                f"`continue_adam` must be True or False, got {continue_adam!r}."
            )
        if continue_adam and optimizer != "adam":
            raise ValueError("`continue_adam=True` needs optimizer='adam'.")
        self.seed = seed
        self.continue_adam = continue_adam
        self.results: Dict[int, FewShotResult] = {}
        self._rows: Dict[int, Dict[int, FewShotResult]] = {}
        self._trained: Optional[int] = None
        #: results of evaluations before any training (``{exp_id: FewShotResult}``).
        self.initial: Dict[int, FewShotResult] = {}

    @property
    def matrix(self) -> List[List[Optional[float]]]:
        """``R[i][j]`` (mean accuracy, fraction), None where not evaluated."""
        return self._table(lambda r: r.mean)

    @property
    def ci_matrix(self) -> List[List[Optional[float]]]:
        """The 95% confidence half-widths of :attr:`matrix`."""
        return self._table(lambda r: r.ci95)

    def _table(self, value) -> List[List[Optional[float]]]:
        if not self._rows:
            return []
        k = max(self._rows) + 1
        T = max(j for r in self._rows.values() for j in r) + 1
        return [
            [
                value(self._rows[i][j]) if j in self._rows.get(i, {}) else None
                for j in range(T)
            ]
            for i in range(k)
        ]

    def before_training_exp(self, strategy) -> None:
        self._trained = strategy.experience.current_experience

    def state_dict(self) -> dict:
        """The recorded per-task accuracies (matrix rows and initial row)."""
        return {
            "rows": {
                i: {j: list(r.accuracies) for j, r in row.items()}
                for i, row in self._rows.items()
            },
            "initial": {j: list(r.accuracies) for j, r in self.initial.items()},
            "trained": self._trained,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self._rows = {
            int(i): {int(j): FewShotResult(list(a)) for j, a in row.items()}
            for i, row in state["rows"].items()
        }
        self.initial = {
            int(j): FewShotResult(list(a)) for j, a in state["initial"].items()
        }
        self._trained = state["trained"]

    def result(self) -> Optional[float]:
        """Mean few-shot accuracy over the experiences of the last evaluation."""
        if not self.results:
            return None
        return sum(r.mean for r in self.results.values()) / len(self.results)

    def reset(self) -> None:
        """Forget the results."""
        self.results = {}

    def before_eval(self, strategy) -> None:
        self.reset()

    def settings(self) -> FewShotEval:
        """The evaluation this metric runs (from :attr:`kwargs`, seed and
        ``continue_adam``)."""
        kw = dict(self.kwargs)
        rule = FewShotRule(
            **{k: kw.pop(k) for k in [f.name for f in fields(FewShotRule)] if k in kw}
        )
        return FewShotEval(
            rule=rule, seed=self.seed, continue_adam=self.continue_adam, **kw
        )

    def after_eval_exp(self, strategy) -> List[MetricValue]:
        exp_id = strategy.experience.current_experience
        driven = getattr(strategy, "fewshot_eval_outcome", None)
        if driven is not None and driven[0] is self and driven[1] == exp_id:
            # the strategy's evaluation ran this metric's tasks as its iterations
            res = driven[2]
        else:
            settings = self.settings()
            adam_state = strategy_adam_state(strategy, settings.continue_adam)
            x, y = dataset_tensors(strategy.adapted_dataset)
            hits = [
                (logits.argmax(dim=1) == task.query_y).float().mean()
                for task, logits in iter_task_predictions(
                    strategy.model,
                    x,
                    y,
                    settings,
                    exp_id=exp_id,
                    device=strategy.device,
                    adam_state=adam_state,
                )
            ]
            res = FewShotResult(torch.stack(hits).tolist())
        self.results[exp_id] = res
        if self._trained is None:
            self.initial[exp_id] = res
        else:
            self._rows.setdefault(self._trained, {})[exp_id] = res
        step = strategy.clock.train_iterations
        return [
            MetricValue(
                self,
                get_metric_name(self, strategy, add_experience=True),
                res.mean,
                step,
            ),
            MetricValue(
                self,
                get_metric_name("FewShotAcc95CI_Exp", strategy, add_experience=True),
                res.ci95,
                step,
            ),
        ]

    def after_eval(self, strategy) -> List[MetricValue]:
        if not self.results:
            return []
        name = get_metric_name("FewShotAcc_Stream", strategy, add_task=False)
        return [MetricValue(self, name, self.result(), strategy.clock.train_iterations)]

    def __str__(self) -> str:
        return "FewShotAcc_Exp"


def fewshot_metrics(**kwargs) -> List[PluginMetric]:
    """``[FewShotAccuracy(**kwargs)]``, to unpack into ``EvaluationPlugin(...)``."""
    return [FewShotAccuracy(**kwargs)]
