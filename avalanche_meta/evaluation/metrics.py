"""The accuracy matrix of a continual-learning run and the summaries computed from it.

``R[i][j]`` is the accuracy on test experience ``j`` after training experience ``i``
(row ``i`` is written by ``strategy.eval(test_stream)`` called after experience ``i``).
From it come the numbers the papers report:

- average accuracy (RA in MER, ACC in GEM): the mean over tasks of the last row. It is
  *not* weighted by test-set size, unlike Avalanche's ``Top1_Acc_Stream``;
- learning accuracy LA (Riemer et al. 2019): the mean of the diagonal ``R[i][i]``;
- backward transfer BWT (Lopez-Paz & Ranzato 2017): the mean over ``j < T-1`` of
  ``R[T-1][j] - R[j][j]``;
- backward transfer and interference BTI (Riemer et al. 2019): ``RA - LA``;
- forgetting (Chaudhry et al. 2018): the mean over ``j < T-1`` of
  ``max_{l < T-1} R[l][j] - R[T-1][j]``;
- forward transfer FWT (Lopez-Paz & Ranzato 2017): the mean over ``j > 0`` of
  ``R[j-1][j] - b_j``, with ``b_j`` the accuracy on experience ``j`` before any
  training (an eval called before the first ``train``).

The pure functions take the matrix as a list of rows (any unit: fractions or
percent, the result has the same unit). A matrix with ``k`` rows and ``T >= k``
columns is a run stopped after ``k`` experiences: the summaries are then computed on
the ``k`` tasks trained so far (``average_accuracy(R, over="all")`` averages every
column, e.g. for Joint training's single row).

The plugin metrics record the matrix in **fractions in [0, 1]** (as Avalanche's
accuracy metrics do) and emit it after each eval as a tensor
(``AccuracyMatrix/eval_phase/test_stream``) together with the summaries
(``AverageAccuracy/eval_phase/test_stream``, ``LearningAccuracy/...``, ``BWT/...``,
``BTI/...``, ``Forgetting/...``, ``FWT/...``). The command line converts to percent.

Example::

    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.logging import InteractiveLogger
    from avalanche_meta.evaluation import continual_metrics

    evaluator = EvaluationPlugin(*continual_metrics(), loggers=[InteractiveLogger()])
    strategy = Naive(model=model, optimizer=opt, evaluator=evaluator)
    strategy.eval(benchmark.test_stream)          # initial accuracies (for FWT)
    for exp in benchmark.train_stream:
        strategy.train(exp)
        strategy.eval(benchmark.test_stream)      # row exp.current_experience
    R = evaluator.metrics[0].matrix               # list of lists, fractions

Why not Avalanche's ``AccuracyMatrixPluginMetric``: it counts training phases to
pick the row (so online sub-experiences each get a row), has no initial row for
FWT and emits no summaries.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional, Sequence

import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metric_utils import get_metric_name, stream_type

Matrix = Sequence[Sequence[Optional[float]]]

__all__ = [
    "AccuracyMatrix",
    "AverageAccuracy",
    "LearningAccuracy",
    "BWT",
    "BTI",
    "Forgetting",
    "FWT",
    "continual_metrics",
    "average_accuracy",
    "learning_accuracy",
    "bwt",
    "bti",
    "forgetting",
    "fwt",
]


# --------------------------------------------------------------------------------
# Pure functions on a matrix
# --------------------------------------------------------------------------------
def _checked(R: Matrix) -> List[List[float]]:
    """Return ``R`` as a list of float rows; raise if it is empty, ragged or has holes."""
    rows = [list(r) for r in R]
    if not rows or not rows[0]:
        raise ValueError("the accuracy matrix is empty: train and evaluate first.")
    T = len(rows[0])
    for i, r in enumerate(rows):
        if len(r) != T:
            raise ValueError(
                f"the accuracy matrix is ragged: row 0 has {T} columns, row {i} "
                f"has {len(r)}."
            )
    if len(rows) > T:
        raise ValueError(
            f"the accuracy matrix has {len(rows)} rows (trained experiences) but only "
            f"{T} columns (test experiences); evaluate on the whole test stream."
        )
    return rows


def _entry(R: List[List[Optional[float]]], i: int, j: int) -> float:
    v = R[i][j]
    if v is None:
        raise ValueError(
            f"the accuracy matrix has no entry R[{i}][{j}]: call "
            f"eval(test_stream) after training experience {i}, on every test "
            "experience."
        )
    return float(v)


def _mean(values: List[float]) -> float:
    return sum(values) / len(values)


def average_accuracy(R: Matrix, over: str = "seen") -> float:
    """Mean over tasks of the last row of ``R`` (RA / ACC), not test-size weighted.

    :param R: the accuracy matrix, ``k`` rows (trained experiences) by ``T`` columns.
    :param over: ``"seen"``: the ``k`` tasks trained so far (all ``T`` at the end);
        ``"all"``: every column (e.g. Joint training's single row).
    :return: the average accuracy, in the unit of ``R``.
    """
    R = _checked(R)
    if over not in ("seen", "all"):
        raise ValueError(f"`over` must be 'seen' or 'all', got {over!r}.")
    k = len(R)
    cols = range(k) if over == "seen" else range(len(R[0]))
    return _mean([_entry(R, k - 1, j) for j in cols])


def learning_accuracy(R: Matrix) -> float:
    """Mean of the diagonal: accuracy on each task right after learning it (LA).

    :param R: the accuracy matrix (``k`` rows).
    :return: LA, in the unit of ``R``.
    """
    R = _checked(R)
    return _mean([_entry(R, i, i) for i in range(len(R))])


def bwt(R: Matrix) -> Optional[float]:
    """Backward transfer (Lopez-Paz & Ranzato): mean over ``j < k-1`` of
    ``R[k-1][j] - R[j][j]``; negative means forgetting.

    :param R: the accuracy matrix (``k`` rows).
    :return: BWT, or None with a single trained task (it is undefined).
    """
    R = _checked(R)
    k = len(R)
    if k < 2:
        return None
    return _mean([_entry(R, k - 1, j) - _entry(R, j, j) for j in range(k - 1)])


def bti(R: Matrix) -> float:
    """Backward transfer and interference (MER): ``RA - LA``.

    Over the same ``k`` tasks, ``BTI = BWT * (k - 1) / k``: MER's BTI averages the
    last task's zero difference in.

    :param R: the accuracy matrix (``k`` rows).
    """
    return average_accuracy(R) - learning_accuracy(R)


def forgetting(R: Matrix) -> Optional[float]:
    """Average forgetting (Chaudhry et al.): mean over ``j < k-1`` of
    ``max_{l < k-1} R[l][j] - R[k-1][j]``.

    :param R: the accuracy matrix (``k`` rows).
    :return: forgetting (positive means forgotten), or None with one trained task.
    """
    R = _checked(R)
    k = len(R)
    if k < 2:
        return None
    return _mean(
        [
            max(_entry(R, l, j) for l in range(k - 1)) - _entry(R, k - 1, j)
            for j in range(k - 1)
        ]
    )


def fwt(R: Matrix, b: Optional[Sequence[Optional[float]]]) -> Optional[float]:
    """Forward transfer (Lopez-Paz & Ranzato): mean over ``0 < j < k`` of
    ``R[j-1][j] - b[j]``.

    :param R: the accuracy matrix (``k`` rows).
    :param b: the accuracy on each test experience before any training (random
        initialisation), or None when no initial eval was run.
    :return: FWT, or None without ``b`` or with a single trained task.
    """
    R = _checked(R)
    k = len(R)
    if b is None or k < 2:
        return None
    if len(b) != len(R[0]):
        raise ValueError(
            f"the initial accuracies `b` have {len(b)} entries but the matrix has "
            f"{len(R[0])} columns."
        )
    out = []
    for j in range(1, k):
        if b[j] is None:
            raise ValueError(
                f"no initial accuracy for test experience {j}: run the initial eval "
                "on the whole test stream."
            )
        out.append(_entry(R, j - 1, j) - float(b[j]))
    return _mean(out)


# --------------------------------------------------------------------------------
# Plugin metrics
# --------------------------------------------------------------------------------
def _origin_index(experience) -> int:
    """Index of the experience in its original stream.

    An online sub-experience (``split_online_stream``) counts as its origin
    experience; its ``origin_experience`` is masked in train/eval mode unless
    ``access_task_boundaries=True``, so the mask is lifted to read it (the metric
    logs, it does not train on the boundary).
    """
    if hasattr(experience, "no_attribute_masking"):
        with experience.no_attribute_masking():
            origin = getattr(experience, "origin_experience", None)
            if origin is not None:
                return int(origin.current_experience)
            return int(experience.current_experience)
    return int(experience.current_experience)


def _stream_name(experience) -> str:
    name = stream_type(experience)
    return name[: -len("_online")] if name.endswith("_online") else name


class AccuracyMatrix(PluginMetric[torch.Tensor]):
    """Records ``R[i][j]``, the accuracy on eval experience ``j`` after training
    experience ``i``, and emits it after each eval as a tensor.

    The row is the index of the last training experience in its original stream
    (an online sub-experience counts as its origin experience), the column the
    index of the evaluated experience. An eval before any training fills
    :attr:`initial` (the ``b`` of FWT). Evaluating twice after the same experience
    overwrites the row. Accuracy is the argmax of ``strategy.mb_output`` against
    ``strategy.mb_y``, counted over every sample of the experience.

    :param stream_name: the eval stream recorded (``"test"``; an online version of it
        counts too); evals of other streams are ignored by this metric. None records
        every stream (into the same matrix).
    """

    def __init__(self, stream_name: Optional[str] = "test"):
        super().__init__()
        self.stream_name = stream_name
        self.reset()

    # -- state ---------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every recorded accuracy (a new run)."""
        self._rows: Dict[int, Dict[int, float]] = {}
        self._initial: Dict[int, float] = {}
        self._trained: Optional[int] = None
        self._counts: Dict[int, List[int]] = {}
        self._recording = False
        self._warned = False

    def state_dict(self) -> Dict[str, Any]:
        """The recorded accuracies, for checkpoints."""
        return {
            "rows": {i: dict(r) for i, r in self._rows.items()},
            "initial": dict(self._initial),
            "trained": self._trained,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.reset()
        self._rows = {
            int(i): {int(j): float(v) for j, v in r.items()}
            for i, r in state["rows"].items()
        }
        self._initial = {int(j): float(v) for j, v in state["initial"].items()}
        self._trained = state["trained"]

    @property
    def n_columns(self) -> int:
        cols = [j for r in self._rows.values() for j in r] + list(self._initial)
        return max(cols) + 1 if cols else 0

    @property
    def matrix(self) -> List[List[Optional[float]]]:
        """Rows ``0..k-1`` (``k`` = last trained experience + 1, or the last
        evaluated row) as a list of lists of fractions; None where nothing was
        evaluated."""
        if not self._rows:
            return []
        k = max(max(self._rows), self._trained if self._trained is not None else -1) + 1
        T = self.n_columns
        return [[self._rows.get(i, {}).get(j) for j in range(T)] for i in range(k)]

    @property
    def initial(self) -> Optional[List[Optional[float]]]:
        """Accuracies before any training (``b``), or None without an initial eval."""
        if not self._initial:
            return None
        return [self._initial.get(j) for j in range(self.n_columns)]

    def result(self) -> torch.Tensor:
        """The matrix as a ``k x T`` float tensor (NaN where not evaluated)."""
        R = self.matrix
        if not R:
            return torch.zeros(0, 0)
        return torch.tensor([[float("nan") if v is None else v for v in r] for r in R])

    # -- callbacks -----------------------------------------------------------------
    def before_training_exp(self, strategy) -> None:
        self._trained = _origin_index(strategy.experience)

    def before_eval(self, strategy) -> None:
        self._counts = {}

    def _records(self, strategy) -> bool:
        return self.stream_name is None or (
            _stream_name(strategy.experience) == self.stream_name
        )

    def after_eval_iteration(self, strategy) -> None:
        super().after_eval_iteration(strategy)
        if not self._records(strategy):
            return
        out, y = strategy.mb_output, strategy.mb_y
        if y.dim() > 1:  # one-hot or soft targets
            y = y.argmax(dim=-1)
        pred = out.argmax(dim=-1)
        j = _origin_index(strategy.experience)
        c = self._counts.setdefault(j, [0, 0])
        c[0] += int((pred == y).sum())
        c[1] += int(y.numel())

    def after_eval_exp(self, strategy) -> None:
        if not self._records(strategy):
            return
        j = _origin_index(strategy.experience)
        correct, total = self._counts.get(j, (0, 0))
        if total == 0:
            return
        target = (
            self._initial
            if self._trained is None
            else self._rows.setdefault(self._trained, {})
        )
        target[j] = correct / total
        self._recording = True

    def after_eval(self, strategy):
        if not self._recording:
            return None
        self._recording = False
        if self._trained is None or not self._rows:
            return None
        return [
            MetricValue(
                self,
                get_metric_name(self, strategy, add_experience=False, add_task=False),
                self.result(),
                strategy.clock.train_iterations,
            )
        ]

    # -- summaries -----------------------------------------------------------------
    def complete(self) -> Optional[List[List[float]]]:
        """The matrix restricted to the tasks trained so far, if every entry needed
        is there; else None (with a warning, once)."""
        R = self.matrix
        if not R:
            return None
        k = len(R)
        if any(R[i][j] is None for i in range(k) for j in range(k)):
            if not self._warned:
                warnings.warn(
                    "AccuracyMatrix: some rows are missing, so the continual "
                    "metrics (average accuracy, BWT, ...) are not emitted; call "
                    "strategy.eval(test_stream) after every training experience."
                )
                self._warned = True
            return None
        return R

    def __str__(self) -> str:
        return "AccuracyMatrix"


class _MatrixSummary(PluginMetric[Optional[float]]):
    """A number computed from an :class:`AccuracyMatrix`, emitted after each eval.

    :param matrix: the :class:`AccuracyMatrix` to read; it must be in the same
        ``EvaluationPlugin``. None makes a private one that this metric drives.
    """

    name = ""

    def __init__(self, matrix: Optional[AccuracyMatrix] = None):
        super().__init__()
        self._owns = matrix is None
        self.source = AccuracyMatrix() if matrix is None else matrix
        self._value: Optional[float] = None

    def compute(self, R: List[List[float]]) -> Optional[float]:
        raise NotImplementedError

    def result(self) -> Optional[float]:
        """The last emitted value (None before the first complete eval)."""
        return self._value

    def reset(self) -> None:
        self._value = None
        if self._owns:
            self.source.reset()

    # A private matrix is driven from here; a shared one gets its own callbacks.
    def before_training_exp(self, strategy) -> None:
        if self._owns:
            self.source.before_training_exp(strategy)

    def before_eval(self, strategy) -> None:
        if self._owns:
            self.source.before_eval(strategy)

    def after_eval_iteration(self, strategy) -> None:
        super().after_eval_iteration(strategy)
        if self._owns:
            self.source.after_eval_iteration(strategy)

    def after_eval_exp(self, strategy) -> None:
        if self._owns:
            self.source.after_eval_exp(strategy)

    def after_eval(self, strategy):
        if self._owns:
            self.source.after_eval(strategy)
        if self.source._trained is None or not self.source._records(strategy):
            return None
        R = self.source.complete()
        if R is None:
            return None
        self._value = self.compute(R)
        if self._value is None:
            return None
        return [
            MetricValue(
                self,
                get_metric_name(self, strategy, add_experience=False, add_task=False),
                float(self._value),
                strategy.clock.train_iterations,
            )
        ]

    def __str__(self) -> str:
        return self.name


class AverageAccuracy(_MatrixSummary):
    """Mean over the tasks trained so far of their current accuracy (RA / ACC)."""

    name = "AverageAccuracy"

    def compute(self, R):
        return average_accuracy(R)


class LearningAccuracy(_MatrixSummary):
    """Mean accuracy of each task right after learning it (LA)."""

    name = "LearningAccuracy"

    def compute(self, R):
        return learning_accuracy(R)


class BWT(_MatrixSummary):
    """Backward transfer (Lopez-Paz & Ranzato); emitted from the second task on."""

    name = "BWT"

    def compute(self, R):
        return bwt(R)


class BTI(_MatrixSummary):
    """Backward transfer and interference, ``RA - LA`` (MER)."""

    name = "BTI"

    def compute(self, R):
        return bti(R)


class Forgetting(_MatrixSummary):
    """Average forgetting (Chaudhry et al.); emitted from the second task on."""

    name = "Forgetting"

    def compute(self, R):
        return forgetting(R)


class FWT(_MatrixSummary):
    """Forward transfer against the initial accuracies; emitted only when an eval
    ran before any training, from the second task on."""

    name = "FWT"

    def compute(self, R):
        return fwt(R, self.source.initial)


def continual_metrics(stream_name: Optional[str] = "test") -> List[PluginMetric]:
    """The accuracy matrix and every summary of it, sharing one matrix.

    :param stream_name: the eval stream to record (see :class:`AccuracyMatrix`).
    :return: ``[AccuracyMatrix, AverageAccuracy, LearningAccuracy, BWT, BTI,
        Forgetting, FWT]``, to unpack into ``EvaluationPlugin``.
    """
    R = AccuracyMatrix(stream_name)
    return [
        R,
        AverageAccuracy(R),
        LearningAccuracy(R),
        BWT(R),
        BTI(R),
        Forgetting(R),
        FWT(R),
    ]
