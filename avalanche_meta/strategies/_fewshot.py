"""What the episodic (few-shot) strategies share: task sampling per experience, the
meta-iteration loop with Avalanche's callbacks, and the few-shot evaluation rule.

:class:`EpisodicTemplate` is a ``SupervisedTemplate`` whose training on an experience is
``meta_iterations`` meta-updates, each over ``meta_batch_size`` N-way tasks sampled
from the experience's data by :class:`~avalanche_meta.evaluation.fewshot.FewShotTaskSampler`.
Subclasses (:class:`~avalanche_meta.strategies.maml.MAML`,
:class:`~avalanche_meta.strategies.reptile.Reptile`) write only ``meta_update``.

Evaluation (:class:`FewShotStrategyMixin`, shared with
:class:`~avalanche_meta.strategies.transfer.TransferLearning`): labels are remapped per
task, so a per-sample classification pass is meaningless for these models (a 5-unit
head cannot score 156 character classes). Evaluating an experience therefore runs
few-shot tasks as Avalanche's evaluation iterations: each iteration samples an N-way
K-shot task from the experience, adapts a copy of the model on its support set and
exposes the query set as ``strategy.mbatch`` and the query logits as
``strategy.mb_output`` (``strategy.loss`` is the query cross-entropy), so Avalanche's
standard metrics (``accuracy_metrics``, ``loss_metrics``, ``forgetting_metrics``,
``bwt_metrics``, ...) measure few-shot query accuracy and loss. The tasks and the
adaptation rule are those of the
:class:`~avalanche_meta.evaluation.fewshot.FewShotAccuracy` in the evaluator when there
is one (it then reports the same tasks, without running them again), else the
strategy's ``fewshot_eval``.

The same rule adapts a model to a user's own task: ``strategy.adapt(support_x,
support_y)`` / ``strategy.predict(support_x, support_y, query_x)``, and
:mod:`avalanche_meta.fewshot` saves and loads a meta-trained model for that use.

Construction: the strategies take keyword arguments only; positional arguments, an
unknown (e.g. misspelt) keyword, an Avalanche argument that has no meaning for them
(``train_mb_size``, ``train_epochs``, ``eval_mb_size`` for the episodic ones) and
plugins they cannot compose with raise :class:`StrategyArgumentError` naming the
argument and what to use instead.

Threads: on a CPU, torch's default thread count can be much slower than one thread for
these small models on a loaded machine (5x measured on a loaded 2-core machine); the
library never changes torch's global settings itself. Call
:func:`avalanche_meta.fewshot.set_threads` (or set ``OMP_NUM_THREADS``) to choose;
until a choice is made, the first ``train()`` on a CPU with more than one torch thread
emits one :class:`ThreadCountWarning`.
"""

from __future__ import annotations

import difflib
import inspect
import os
import warnings
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import CrossEntropyLoss

from avalanche.models.utils import avalanche_forward
from avalanche.training.templates import SupervisedTemplate
from avalanche.training.plugins.evaluation import default_evaluator

from avalanche_meta.evaluation.fewshot import (
    AdaptedModel,
    FewShotAccuracy,
    FewShotEval,
    FewShotResult,
    FewShotRule,
    FewShotTask,
    FewShotTaskSampler,
    StrategyArgumentError,
    adapt,
    check_losses,
    dataset_tensors,
    is_multihead,
    iter_task_predictions,
    strategy_adam_state,
)
from avalanche_meta.utils.validation import (
    check_in_interval,
    check_non_negative,
    check_positive,
    cross_entropy_departures,
)


def task_logits(model: nn.Module, x: Tensor) -> Tensor:
    """``model``'s logits on ``x``, task label 0 for multi-task modules."""
    t = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    return avalanche_forward(model, x, t)


class ThreadCountWarning(UserWarning):
    """torch runs with more than one thread and no choice was made (see
    :func:`set_threads`)."""


_THREADS = {"chosen": False, "warned": False}


def set_threads(n: int) -> None:
    """Set torch's intra-op thread count (``torch.set_num_threads(n)``) and record
    the choice, which silences :class:`ThreadCountWarning`.

    The small models of the few-shot strategies (and the package's MLPs) run faster
    with 1 thread than with torch's default (one per core) on a loaded machine
    (5x measured on a loaded 2-core machine); on an idle many-core machine more
    threads can help a convolutional model. The command line uses 1.

    :param n: threads, >= 1.
    """
    check_positive("n", n, integer=True)
    torch.set_num_threads(n)
    _THREADS["chosen"] = True


def warn_threads_once(device) -> None:
    """One :class:`ThreadCountWarning` per process when training on a CPU with more
    than one torch thread, unless :func:`set_threads` was called or
    ``OMP_NUM_THREADS`` is set. Never changes torch's settings."""
    if _THREADS["chosen"] or _THREADS["warned"]:
        return
    if torch.device(device).type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return
    n = torch.get_num_threads()
    if n <= 1:
        return
    _THREADS["warned"] = True
    warnings.warn(
        f"torch uses {n} threads (its default). These models are small: on a "
        "loaded or shared machine 1 thread was 5x faster (2-core machine). Call "
        "avalanche_meta.fewshot.set_threads(1) (or any n, which also silences "
        "this warning) or set OMP_NUM_THREADS; the library never changes torch's "
        "thread count itself.",
        ThreadCountWarning,
        stacklevel=3,
    )


def _signature_params(cls) -> List[str]:
    """Named keyword parameters of ``cls.__init__`` along the MRO, up to and
    including Avalanche's ``SupervisedTemplate``."""
    names: List[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            for p in inspect.signature(init).parameters.values():
                if p.name != "self" and p.kind in (
                    p.KEYWORD_ONLY,
                    p.POSITIONAL_OR_KEYWORD,
                ):
                    if p.name not in names:
                        names.append(p.name)
        if klass is SupervisedTemplate:
            break
    return names


#: plugin class name -> why an episodic strategy cannot compose with it
_REFUSED_PLUGINS: Dict[str, str] = {
    "EWCPlugin": (
        "EWC computes its importances with a pass over the experience scored with "
        "the experience's original class labels, but {name}'s model has `ways` "
        "outputs for labels remapped per task (labels >= ways are out of range); a "
        "penalty that needs no labels (e.g. avalanche_meta's ReferenceSIPlugin) composes"
    ),
    "LwFPlugin": (
        "LwF distils the previous model's outputs on the current mini-batch into "
        "`strategy.mb_output`, which for {name} is the output of per-task adapted "
        "copies (detached; labels remapped per task), so the distillation term has "
        "no meaning and no gradient"
    ),
    "ReplayPlugin": (
        "replay plugins change the training data loader, which {name} never reads: "
        "it samples few-shot tasks from the experience's data; replaying old "
        "classes would need tasks sampled across experiences, which {name} does not "
        "do"
    ),
    "GEMPlugin": (
        "GEM projects the gradient with gradients of memory samples scored with "
        "their original class labels, out of range of {name}'s `ways`-unit head"
    ),
    "AGEMPlugin": (
        "A-GEM projects the gradient with gradients of memory samples scored with "
        "their original class labels, out of range of {name}'s `ways`-unit head"
    ),
}


class FewShotStrategyMixin:
    """Keyword-only construction with clear errors, the few-shot evaluation loop and
    the ``adapt`` / ``predict`` calls, shared by the few-shot strategies.

    Subclasses set ``self.fewshot_eval`` (a
    :class:`~avalanche_meta.evaluation.fewshot.FewShotEval`) in ``__init__``.
    """

    #: Avalanche arguments this strategy refuses: name -> what to use instead
    REFUSED_ARGUMENTS: Dict[str, str] = {
        "scenario": (
            "few-shot evaluation has no Task-/Class-/Domain-IL scenario: every "
            "evaluation task's labels are remapped to 0..ways-1 and its identity "
            "is its support set (the benchmark's task labels only name the "
            "metrics); leave `scenario` out."
        ),
    }
    #: ``(metric, experience id, FewShotResult)`` of the last evaluated experience
    fewshot_eval_outcome = None
    #: the task of the current evaluation iteration (None outside them)
    eval_task: Optional[FewShotTask] = None

    def __new__(cls, *args, **kwargs):
        name = cls.__name__
        if args:
            raise StrategyArgumentError(
                f"{name} takes keyword arguments only (as Avalanche strategies are "
                f"called): got {len(args)} positional argument(s) "
                f"({', '.join(type(a).__name__ for a in args)}); write e.g. "
                f"{name}(model=model, ...)."
            )
        if kwargs:
            accepted = _signature_params(cls)
            for key in kwargs:
                if key in cls.REFUSED_ARGUMENTS:
                    raise StrategyArgumentError(
                        f"{name} does not take `{key}`: "
                        + cls.REFUSED_ARGUMENTS[key].format(name=name)
                    )
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
        return super().__new__(cls)

    # ------------------------------------------------------------ evaluation
    def find_fewshot_metric(self) -> Optional[FewShotAccuracy]:
        """The first :class:`FewShotAccuracy` of the evaluator (None if none)."""
        for metric in getattr(self.evaluator, "metrics", None) or []:
            if isinstance(metric, FewShotAccuracy):
                return metric
        return None

    def evaluation_settings(self) -> FewShotEval:
        """The few-shot evaluation this strategy runs: the evaluator's
        :class:`FewShotAccuracy` settings when it has one, else ``fewshot_eval``."""
        metric = self.find_fewshot_metric()
        return metric.settings() if metric is not None else self.fewshot_eval

    def _eval_task_label(self) -> int:
        labels = list(getattr(self.experience, "task_labels", [0]) or [0])
        return int(labels[0]) if len(labels) == 1 else 0

    def eval_epoch(self, **kwargs):
        """``num_tasks`` few-shot tasks of the experience, one per evaluation
        iteration (see the module docstring): Avalanche's metrics see the query
        set (labels ``0..ways-1``), its logits and its cross-entropy."""
        metric = self.find_fewshot_metric()
        settings = metric.settings() if metric is not None else self.fewshot_eval
        exp_id = self.experience.current_experience
        adam_state = strategy_adam_state(self, settings.continue_adam)
        x, y = dataset_tensors(self.adapted_dataset)
        t = self._eval_task_label()
        self.fewshot_eval_outcome = None
        hits = []
        for task, logits in iter_task_predictions(
            self.model,
            x,
            y,
            settings,
            exp_id=exp_id,
            device=self.device,
            adam_state=adam_state,
        ):
            self._before_eval_iteration(**kwargs)
            self.eval_task = task
            self.mbatch = [
                task.query_x,
                task.query_y,
                torch.full_like(task.query_y, t),
            ]
            self._before_eval_forward(**kwargs)
            self.mb_output = logits
            self._after_eval_forward(**kwargs)
            self.loss = F.cross_entropy(logits, task.query_y)
            hits.append((logits.argmax(dim=1) == task.query_y).float().mean())
            self._after_eval_iteration(**kwargs)
        self.eval_task = None
        # one host synchronisation per experience
        result = FewShotResult(torch.stack(hits).tolist())
        self.fewshot_eval_outcome = (metric, exp_id, result)

    # ------------------------------------------------------- adapt / predict
    def adapt(
        self,
        support_x: Tensor,
        support_y: Tensor,
        *,
        rule: Optional[FewShotRule] = None,
    ) -> AdaptedModel:
        """A copy of the model adapted on a user's support set (N-way K-shot, any
        integer labels), by the rule of the strategy's own evaluation
        (:meth:`evaluation_settings`) unless ``rule`` is given; the model is not
        modified. Works before, during and after training.

        ``strategy.adapt(sx, sy).predict(qx)`` gives the same predictions as the
        strategy's evaluation on a task with that support set (when the rule has no
        random mini-batches, ``inner_batch_size`` None or >= the support size)."""
        settings = self.evaluation_settings()
        return adapt(
            self.model,
            support_x,
            support_y,
            rule=rule or settings.rule,
            device=self.device,
            adam_state=strategy_adam_state(self, settings.continue_adam),
        )

    def predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        """The labels (in ``support_y``'s values) predicted for ``query_x`` after
        adapting on the support set (:meth:`adapt`)."""
        return self.adapt(support_x, support_y).predict(query_x)

    def train(self, experiences, eval_streams=None, **kwargs):
        warn_threads_once(self.device)
        return super().train(experiences, eval_streams=eval_streams, **kwargs)


def check_cross_entropy(name: str, criterion) -> None:
    """Refuse any criterion but plain cross-entropy (the inner loops and the
    evaluation's fine-tuning are cross-entropy on labels remapped per task)."""
    if criterion is F.cross_entropy:
        return
    if isinstance(criterion, CrossEntropyLoss):
        problems = cross_entropy_departures(criterion)
        if not problems:
            return
        what = "CrossEntropyLoss with " + ", ".join(problems)
    else:
        what = type(criterion).__name__
    raise StrategyArgumentError(
        f"{name}: `criterion` {what} is not supported: its inner loop and the "
        "few-shot evaluation's fine-tuning use the plain cross-entropy of labels "
        "remapped to 0..ways-1 per task; pass criterion=nn.CrossEntropyLoss() (the "
        "default) or leave it out."
    )


def check_episodic_plugins(name: str, plugins: Optional[Sequence]) -> None:
    """Refuse the Avalanche plugins an episodic strategy cannot compose with."""
    for plugin in plugins or []:
        for klass in type(plugin).__mro__:
            reason = _REFUSED_PLUGINS.get(klass.__name__)
            if reason is not None:
                raise StrategyArgumentError(
                    f"{name} cannot compose with {type(plugin).__name__}: "
                    + reason.format(name=name)
                    + "."
                )
        if hasattr(plugin, "storage_policy"):
            raise StrategyArgumentError(
                f"{name} cannot compose with {type(plugin).__name__}: "
                + _REFUSED_PLUGINS["ReplayPlugin"].format(name=name)
                + "."
            )


def check_single_head(name: str, model: nn.Module, ways: int) -> None:
    """Refuse Avalanche multi-head / incremental-head models."""
    if is_multihead(model):
        raise StrategyArgumentError(
            f"{name} cannot train a multi-head (or incremental-head) model such as "
            f"{type(model).__name__}: its tasks remap labels to 0..{ways - 1} and carry "
            "no task identity, so per-task-label heads (which Avalanche also grows "
            "with the experience's classes) would not match; give a single-head "
            f"model with `ways`={ways} outputs (e.g. SimpleMLP(num_classes={ways}) "
            "or OmniglotCNN(output_size=ways))."
        )


class EpisodicTemplate(FewShotStrategyMixin, SupervisedTemplate):
    """Base of the few-shot strategies: ``meta_iterations`` meta-updates per experience.

    :param ways: N, classes per task.
    :param shots: K, support (training) samples per class.
    :param query_shots: Q, query samples per class (0: tasks have no query set).
    :param meta_batch_size: tasks per meta-update.
    :param meta_iterations: meta-updates per training experience.
    :param class_rotations: add the 90/180/270-degree rotations of every class of the
        experience as new classes (the standard Omniglot augmentation).
    :param task_rotation_prob: probability of rotating a whole task by 90 or 270
        degrees (task augmentation).
    :param fewshot_eval: the evaluation (tasks and adaptation rule) when the
        evaluator has no ``FewShotAccuracy`` (see the module docstring).

    Task labels of the experiences are ignored in training (a few-shot task's
    identity is its support set); Avalanche multi-head models are refused.
    ``criterion`` must be plain cross-entropy. Plugins that add a term to
    ``strategy.loss`` in ``before_backward`` without needing the experience's labels
    (e.g. ``avalanche_meta.plugins.si_reference.ReferenceSIPlugin``; Avalanche 0.6's ``SynapticIntelligencePlugin`` adds its term too, but on a CPU its importances stay 0: it keeps views of the parameters as the old weights) compose; ``EWCPlugin``, ``LwFPlugin``,
    replay plugins, ``GEMPlugin`` and ``AGEMPlugin`` are refused with the reason.
    """

    REFUSED_ARGUMENTS = {
        **FewShotStrategyMixin.REFUSED_ARGUMENTS,
        "train_mb_size": (
            "{name} trains on few-shot tasks, not on mini-batches of the experience: "
            "a meta-update uses `meta_batch_size` tasks of `ways` x `shots` samples "
            "(Reptile: inner steps on `inner_batch_size` of them); set those instead."
        ),
        "train_epochs": (
            "training on an experience is `meta_iterations` meta-updates over tasks "
            "sampled from it (no epochs over the data); raise `meta_iterations` to "
            "train longer."
        ),
        "eval_mb_size": (
            "the evaluation runs few-shot tasks, one per iteration (no per-sample "
            "mini-batches); set their number and size with "
            "fewshot_eval=FewShotEval(num_tasks=..., query_shots=...) or a "
            "FewShotAccuracy in the evaluator."
        ),
    }

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion=CrossEntropyLoss(),
        ways: int,
        shots: int,
        query_shots: int,
        meta_batch_size: int,
        meta_iterations: int,
        class_rotations: bool = False,
        task_rotation_prob: float = 0.0,
        fewshot_eval: Optional[FewShotEval] = None,
        device="cpu",
        plugins: Optional[Sequence] = None,
        evaluator=default_evaluator,
        eval_every: int = -1,
        **base_kwargs,
    ):
        name = type(self).__name__
        check_cross_entropy(name, criterion)
        check_episodic_plugins(name, plugins)
        check_single_head(name, model, ways)
        if fewshot_eval is not None and not isinstance(fewshot_eval, FewShotEval):
            raise StrategyArgumentError(
                f"`fewshot_eval` must be a FewShotEval (from "
                f"avalanche_meta.evaluation.fewshot), got {fewshot_eval!r}."
            )
        check_positive("ways", ways, integer=True)
        check_positive("shots", shots, integer=True)
        check_non_negative("query_shots", query_shots, integer=True)
        check_positive("meta_batch_size", meta_batch_size, integer=True)
        check_positive("meta_iterations", meta_iterations, integer=True)
        check_in_interval("task_rotation_prob", task_rotation_prob, 0.0, 1.0)
        if not isinstance(class_rotations, bool):
            raise ValueError(
                f"`class_rotations` must be True or False, got {class_rotations!r}."
            )
        super().__init__(
            model=model,
            optimizer=optimizer,
            criterion=criterion,
            train_mb_size=1,
            train_epochs=1,
            eval_mb_size=256,
            device=device,
            plugins=plugins,
            evaluator=evaluator,
            eval_every=eval_every,
            **base_kwargs,
        )
        self.ways = ways
        self.shots = shots
        self.query_shots = query_shots
        self.meta_batch_size = meta_batch_size
        self.meta_iterations = meta_iterations
        self.class_rotations = class_rotations
        self.task_rotation_prob = task_rotation_prob
        #: meta-updates done on the current experience (drives Reptile's annealing).
        self.meta_iteration = 0
        #: meta-updates done since the strategy was built.
        self.total_meta_iterations = 0
        self.sampler: Optional[FewShotTaskSampler] = None
        self.fewshot_eval = fewshot_eval
        # non-finite losses of the current meta-update, checked once per update
        self._pending_losses: List[Tensor] = []
        self._pending_where: List[str] = []

    # ----------------------------------------------------------------- tasks
    def make_sampler(self, dataset, name: str) -> FewShotTaskSampler:
        """The task sampler over ``dataset`` (seeded from torch's generator)."""
        x, y = dataset_tensors(dataset)
        return FewShotTaskSampler(
            x,
            y,
            ways=self.ways,
            shots=self.shots,
            query_shots=self.query_shots,
            class_rotations=self.class_rotations,
            task_rotation_prob=self.task_rotation_prob,
            seed=int(torch.randint(0, 2**31 - 1, ()).item()),
            name=name,
        )

    def sample_tasks(self) -> List[FewShotTask]:
        """``meta_batch_size`` tasks of the current experience, on the device."""
        assert self.sampler is not None
        return [
            self.sampler.sample().to(self.device) for _ in range(self.meta_batch_size)
        ]

    def check_head(self, logits: Tensor) -> None:
        """Raise unless the model has ``ways`` outputs (labels are ``0..ways-1``)."""
        if logits.shape[-1] != self.ways:
            raise ValueError(
                f"the model outputs {logits.shape[-1]} units but `ways`={self.ways}: "
                f"{type(self).__name__} remaps each task's labels to 0..{self.ways - 1}, "
                f"so build the model with {self.ways} outputs (e.g. "
                f"OmniglotCNN(output_size={self.ways}))."
            )

    # ------------------------------------------------------------------ loop
    def _before_training_exp(self, **kwargs):
        super()._before_training_exp(**kwargs)
        exp_id = self.experience.current_experience
        self.sampler = self.make_sampler(
            self.adapted_dataset, f"training experience {exp_id}"
        )
        self.meta_iteration = 0

    def training_epoch(self, **kwargs):
        """``meta_iterations`` meta-updates, each firing Avalanche's iteration,
        forward, backward and update callbacks (plugins that add to
        ``strategy.loss`` in ``before_backward`` add to MAML's meta-loss, and to
        every inner-step loss of Reptile, which has no meta-loss)."""
        while self.meta_iteration < self.meta_iterations:
            if self._stop_training:
                break
            tasks = self.sample_tasks()
            self._before_training_iteration(**kwargs)
            self.loss = self._make_empty_loss()
            self.meta_update(tasks, **kwargs)
            self.meta_iteration += 1
            self.total_meta_iterations += 1
            self._after_training_iteration(**kwargs)

    def meta_update(self, tasks: List[FewShotTask], **kwargs) -> None:
        """One meta-update on ``tasks``; sets ``self.mbatch``, ``self.mb_output`` and
        ``self.loss`` (for the metrics) and fires the forward/backward/update
        callbacks."""
        raise NotImplementedError

    def set_query_batch(self, tasks: List[FewShotTask], logits: List[Tensor]) -> None:
        """Expose the tasks' query sets and logits as the current mini-batch."""
        x = torch.cat([t.query_x for t in tasks])
        y = torch.cat([t.query_y for t in tasks])
        self.mbatch = [x, y, torch.zeros_like(y)]
        self.mb_output = torch.cat(logits)

    def defer_finite_check(self, loss: Tensor, where: str) -> None:
        """Record ``loss`` for :meth:`check_pending_losses` (no host sync now)."""
        self._pending_losses.append(loss.detach().reshape(-1)[:1])
        self._pending_where.append(where)

    def check_pending_losses(self) -> None:
        """One host synchronisation per meta-update: raise
        :class:`~avalanche_meta.utils.validation.NonFiniteLossError` naming the
        first recorded loss that is not finite (skipped on the ``meta`` device,
        whose tensors have no values)."""
        losses, where = self._pending_losses, self._pending_where
        self._pending_losses, self._pending_where = [], []
        check_losses(losses, lambda i: where[i])

    # ----------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Model, optimizer and meta-iteration counters (to resume a run)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "meta_iteration": self.meta_iteration,
            "total_meta_iterations": self.total_meta_iterations,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.meta_iteration = state["meta_iteration"]
        self.total_meta_iterations = state["total_meta_iterations"]
