"""Experience Replay (ER) with a per-example reservoir memory: MER's baseline.

Riemer et al. (ICLR 2019) compare MER with "ER" (their Algorithm 4, ``eralg4.py`` in
the original code): each incoming example is learned together with a batch of random
memories (one SGD step on the batch's mean loss), and the reservoir memory is updated
after every example. This module also holds the template both strategies share,
:class:`PerExampleReplayTemplate`, and its two batch conventions
(``convention=``):

- ``"original"``: as the original code (``meralg1.py``, ``eralg4.py``, ...): a batch
  is the current example plus ``min(k, |M|)`` memories (``k = replay_batch_size``),
  i.e. ``k + 1`` samples; the reservoir replaces slot ``randint(0, age)`` (both ends
  included). The published numbers come from this code; the CLI presets use it.
- ``"paper"``: as the paper's algorithm boxes read: ``k`` samples in all (the current
  example plus ``k - 1`` memories); exact reservoir sampling.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from avalanche.models import MultiTaskModule
from avalanche.models.utils import avalanche_forward
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.templates import SupervisedTemplate
from torch import Tensor, nn
from torch.optim import SGD, Optimizer

from avalanche_meta.strategies._keywords import KeywordOnlyConstruction
from avalanche_meta.strategies._memory import ReservoirMemory
from avalanche_meta.utils.scenario import (
    MASK_VALUE,
    ActiveUnits,
    cast_inputs,
    check_distinct_task_labels,
    check_scenario,
    complete_minibatch,
    experience_identity,
)
from avalanche_meta.utils.validation import (
    check_choice,
    cross_entropy_departures,
    LossGuard,
    check_positive,
)

#: Batch conventions (see the module docstring).
CONVENTIONS = ("paper", "original")

#: The step callbacks: MER never fires them (its update is many single-sample steps
#: with Reptile interpolations, not one loss/backward/step); ER fires them around
#: each example's step when a plugin implements one of them.
UNFIRED_CALLBACKS = (
    "before_forward",
    "after_forward",
    "before_backward",
    "after_backward",
    "before_update",
    "after_update",
)


def _plain_sgd_lr(optimizer: Optimizer, lr: Optional[float], name: str) -> float:
    """Return the learning rate of a plain SGD optimizer, or raise a clear error."""
    if type(optimizer) is not SGD:
        raise ValueError(
            f"{name} performs plain SGD steps itself; `optimizer` must be a "
            f"torch.optim.SGD without momentum or weight decay (or None), got "
            f"{type(optimizer).__name__}."
        )
    for group in optimizer.param_groups:
        if (
            group.get("momentum", 0)
            or group.get("weight_decay", 0)
            or group.get("nesterov", False)
            or group.get("dampening", 0)
        ):
            raise ValueError(
                f"{name} performs plain SGD steps (the paper's); build `optimizer` "
                "without momentum, dampening, nesterov or weight decay."
            )
    group_lrs = {float(g["lr"]) for g in optimizer.param_groups}
    if len(group_lrs) != 1:
        raise ValueError(f"{name}: every param group of `optimizer` needs one lr.")
    opt_lr = group_lrs.pop()
    if lr is not None and float(lr) != opt_lr:
        raise ValueError(
            f"{name}: `lr`={lr} differs from the optimizer's lr={opt_lr}; give one."
        )
    return opt_lr


def check_criterion(criterion: Any, name: str) -> None:
    """Accept only a plain mean cross-entropy (the paper's loss), else raise why not.

    The per-example strategies compute the cross-entropy themselves (the MLP fast
    path writes out its gradient), so only ``nn.CrossEntropyLoss()`` with its
    defaults (``reduction='mean'``, ``label_smoothing=0``, no ``weight``,
    ``ignore_index=-100``) is equivalent.
    """
    if type(criterion) is not nn.CrossEntropyLoss:
        raise ValueError(
            f"{name} trains with the cross-entropy of the paper and computes it "
            f"itself; `criterion` must be nn.CrossEntropyLoss() (or left out), got "
            f"{type(criterion).__name__}."
        )
    problems = cross_entropy_departures(criterion)
    if problems:
        raise ValueError(
            f"{name} computes a plain mean cross-entropy itself; this "
            f"nn.CrossEntropyLoss has {', '.join(problems)}: it would be ignored. "
            "Pass nn.CrossEntropyLoss() or leave `criterion` out."
        )


def _default_sgd(model: nn.Module, lr: Optional[float]) -> Tuple[SGD, float]:
    """The plain SGD both strategies build when no optimizer is given (paper: lr .03)."""
    lr = 0.03 if lr is None else lr
    check_positive("lr", lr)
    return SGD(model.parameters(), lr=lr), float(lr)


def step_callback_plugins(plugins: Optional[Sequence[Any]]) -> Dict[str, List[str]]:
    """``{plugin class name: step callbacks it implements}`` for the plugins that
    implement any of :data:`UNFIRED_CALLBACKS` (gating plugins, which are told the
    task labels of every forward pass instead, are left out)."""
    out: Dict[str, List[str]] = {}
    for plugin in plugins or ():
        if callable(getattr(plugin, "set_tasks", None)):
            continue
        overridden = [
            name
            for name in UNFIRED_CALLBACKS
            if getattr(type(plugin), name, None)
            is not getattr(SupervisedPlugin, name, None)
        ]
        if overridden:
            out[type(plugin).__name__] = overridden
    return out


class PerExampleReplayTemplate(KeywordOnlyConstruction, SupervisedTemplate):
    """A ``SupervisedTemplate`` that learns each mini-batch example by example.

    For every example of a mini-batch, in order: record its class (and task) in
    :attr:`active_units`, :meth:`learn_example` (the method's update), then add it to
    the reservoir :attr:`memory`. Subclasses implement :meth:`learn_example`.

    Active units: at the start of each training experience the classes it declares
    are recorded per task label
    (:meth:`~avalanche_meta.utils.scenario.ActiveUnits.observe_experience`: the
    origin experience of an online sub-experience, else the experience), so in
    Task-IL and Class-IL a task's classes are all active from its first example on
    (as the task's class split defines them); labels observed later are added too.

    Scenarios (:class:`~avalanche_meta.utils.scenario.ActiveUnits`): every sample,
    memories included, carries its task label; its loss and prediction use the
    classes of its own task (Task-IL), all classes seen so far (Class-IL) or every
    unit (Domain-IL). Avalanche multi-head models (``MultiTaskModule``) are called
    through ``avalanche_forward`` with each sample's task label; their outputs are
    padded to ``num_classes`` units.

    Callbacks: ``before/after_training_iteration`` fire once per mini-batch (with
    ``mb_output`` the masked logits of the mini-batch after its update and ``loss``
    their cross-entropy, computed without gradient, as Avalanche's MER does), as do
    the experience/epoch/eval callbacks. The step callbacks
    (``before/after_forward``, ``backward``, ``update``) are the subclass's choice
    (:attr:`FIRES_STEP_CALLBACKS`): ER fires them around each example's step (so
    EWC, SI, LwF compose with it); MER cannot (its update is many single-sample
    steps with Reptile interpolations), so a plugin that implements them is refused
    at construction with the reason. Gating plugins (XdG) are told the task labels
    of every forward pass instead (:meth:`_raw_logits`). Avalanche's
    ``ReplayPlugin`` composes: its replayed samples arrive in the mini-batches and
    are learned (and enter the reservoir) like incoming ones.

    Construction is keyword-only: positional arguments and unknown keywords raise
    :class:`~avalanche_meta.strategies._keywords.StrategyArgumentError` naming them
    (and the close matches).

    Task-IL (``scenario="task"``) needs a distinct task label per task: an
    experience whose task label an earlier experience used (a benchmark without task
    labels, where every experience is task 0) raises a ``ValueError`` naming the fix
    (:func:`~avalanche_meta.utils.scenario.check_distinct_task_labels`). Mini-batches
    of only ``(x, y)`` get task label 0 in Class-IL and Domain-IL and are refused in
    Task-IL. Inputs of any floating dtype (e.g. float64) are cast to the model's
    dtype on every path (:func:`~avalanche_meta.utils.scenario.cast_inputs`).

    ``train_epochs > 1`` is allowed: every epoch passes the experience's examples
    again (each is learned again and offered to the reservoir again); the papers'
    protocols are one pass (``train_epochs=1``, the default).

    Devices: every tensor (memory, masks, flat parameters, replay batches) lives on
    ``device``; the reservoir's random draws use a CPU generator (bit-identical
    across devices) and only their indices are copied to the device.

    :param model: any classifier ``model(x) -> logits`` (or an Avalanche
        ``MultiTaskModule``).
    :param optimizer: see the subclass.
    :param mem_size: memory capacity.
    :param replay_batch_size: ``k``: with ``convention="original"`` the number of
        memories in a batch (``k + 1`` samples with the current example); with
        ``"paper"`` the batch size including the current example (``k - 1``
        memories). Memories per batch must not exceed ``mem_size``.
    :param scenario: ``"task"``, ``"class"`` or ``"domain"``.
    :param num_classes: number of output units; ``None``: the width of the model's
        output (required for multi-head models).
    :param seed: seed of the memory's random generator (reservoir and replay draws);
        ``None``: drawn from torch's global generator.
    :param convention: ``"paper"`` (default) or ``"original"`` (see the module
        docstring): batch composition and reservoir draw.
    :param criterion: only ``nn.CrossEntropyLoss()`` with default settings is
        accepted (the loss is computed by the strategy).
    """

    #: fire the step callbacks around each example's update (see the class docstring)
    FIRES_STEP_CALLBACKS = False

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: Optimizer,
        mem_size: int,
        replay_batch_size: int,
        scenario: str = "domain",
        num_classes: Optional[int] = None,
        seed: Optional[int] = None,
        convention: str = "paper",
        train_mb_size: int = 1,
        train_epochs: int = 1,
        eval_mb_size: Optional[int] = 256,
        device: Union[str, torch.device] = "cpu",
        plugins: Optional[Sequence[SupervisedPlugin]] = None,
        evaluator: Union[
            EvaluationPlugin, Callable[[], EvaluationPlugin]
        ] = default_evaluator,
        eval_every: int = -1,
        peval_mode: str = "epoch",
        **kwargs,
    ):
        if "criterion" in kwargs:
            check_criterion(kwargs["criterion"], type(self).__name__)
        check_choice("convention", convention, CONVENTIONS)
        check_positive("mem_size", mem_size, integer=True)
        check_positive("replay_batch_size", replay_batch_size, integer=True)
        n_mem = replay_batch_size if convention == "original" else replay_batch_size - 1
        if n_mem > mem_size:
            raise ValueError(
                f"`replay_batch_size`={replay_batch_size} asks for {n_mem} memories per "
                f"batch (convention={convention!r}) but `mem_size` is {mem_size}: a "
                "batch would never be that large. Use a replay_batch_size of at most "
                f"{mem_size + (0 if convention == 'original' else 1)} or a larger "
                "mem_size."
            )
        check_positive("train_mb_size", train_mb_size, integer=True)
        check_scenario(scenario)
        if num_classes is not None:
            check_positive("num_classes", num_classes, integer=True)
        elif isinstance(model, MultiTaskModule):
            raise ValueError(
                "`num_classes` is required with a multi-head (MultiTaskModule) model: "
                "give the total number of classes of the benchmark."
            )
        step_plugins = step_callback_plugins(plugins)
        if step_plugins and not self.FIRES_STEP_CALLBACKS:
            name, hooks = next(iter(step_plugins.items()))
            raise ValueError(
                f"{type(self).__name__} cannot compose with {name}: it hooks "
                f"{', '.join(hooks)}, but {type(self).__name__}'s update is "
                "many single-sample SGD steps with Reptile interpolations, not one "
                "loss, backward and optimizer step, so those callbacks never fire "
                f"and {name} would have no effect. Use ER (which fires them around "
                "each example's step) or leave the plugin out."
            )
        super().__init__(
            model=model,
            optimizer=optimizer,
            train_mb_size=train_mb_size,
            train_epochs=train_epochs,
            eval_mb_size=eval_mb_size,
            device=device,
            plugins=plugins,
            evaluator=evaluator,
            eval_every=eval_every,
            peval_mode=peval_mode,
            **kwargs,
        )
        self.mem_size = mem_size
        self.replay_batch_size = replay_batch_size
        self.convention = convention
        self.scenario = scenario
        self.num_classes = num_classes
        self.memory = ReservoirMemory(
            mem_size, seed=seed, original_draw=convention == "original"
        ).to(self.device)
        self.active_units: Optional[ActiveUnits] = None
        self._declare_pending = False
        self._train_calls = 0
        self._task_label_owners: Dict[int, Tuple] = {}
        self._mb_raw_output: Optional[Tensor] = None
        #: plugins that gate the model per task (XdG): told every forward's labels
        self._gating_plugins = [
            p for p in self.plugins if callable(getattr(p, "set_tasks", None))
        ]
        #: fire the step callbacks (a plugin implements one; FIRES_STEP_CALLBACKS)
        self._fire_step_callbacks = bool(step_plugins) and self.FIRES_STEP_CALLBACKS
        if num_classes is not None:
            self._make_active_units(num_classes)

    @property
    def memories_per_batch(self) -> int:
        """Memories drawn per batch once the memory holds enough (``k`` or ``k - 1``)."""
        if self.convention == "original":
            return self.replay_batch_size
        return self.replay_batch_size - 1

    # -- scenario and outputs -----------------------------------------------------
    def _make_active_units(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.active_units = ActiveUnits(num_classes, self.scenario).to(self.device)

    def _declare_experience_classes(self) -> None:
        """Record the current experience's declared classes per task label."""
        self._declare_pending = False
        if self.scenario == "domain" or self.experience is None:
            return
        self.active_units.observe_experience(self.experience)

    def _before_training(self, **kwargs):
        self._train_calls += 1
        super()._before_training(**kwargs)

    def _before_training_exp(self, **kwargs):
        if self.scenario == "task":
            key, labels = experience_identity(self.experience, self._train_calls)
            check_distinct_task_labels(
                self._task_label_owners, key, labels, type(self).__name__
            )
        super()._before_training_exp(**kwargs)
        if self.active_units is None:
            self._declare_pending = True  # once the model's width is known
        else:
            self._declare_experience_classes()

    def _raw_logits(self, x: Tensor, t: Tensor) -> Tensor:
        """The model's logits, padded to ``num_classes`` units for multi-head models.

        Gating plugins (XdG) are given ``t`` first: every forward pass here (replay
        batches, single-sample steps) is gated with its own samples' task labels.
        """
        for plugin in self._gating_plugins:
            plugin.set_tasks(t, check=False)
        out = avalanche_forward(self.model, x, t)
        if self.num_classes is not None and out.shape[-1] != self.num_classes:
            if out.shape[-1] > self.num_classes or not isinstance(
                self.model, MultiTaskModule
            ):
                raise ValueError(
                    f"the model gives {out.shape[-1]} outputs but `num_classes` is "
                    f"{self.num_classes}: build the model with {self.num_classes} "
                    "outputs or pass the matching `num_classes`."
                )
            out = F.pad(out, (0, self.num_classes - out.shape[-1]), value=MASK_VALUE)
        return out

    def logits(self, x: Tensor, t: Tensor) -> Tensor:
        """Logits with the units inactive in the scenario masked (per-sample task)."""
        return self.active_units.mask(self._raw_logits(x, t), t)

    def inactive_units(self, t: Tensor) -> Optional[Tensor]:
        """Boolean ``(n, num_classes)`` mask of inactive units, or None if all active."""
        if self.scenario == "domain":
            return None
        return ~self.active_units.active(t, t.shape[0])

    def forward(self):
        """Masked logits of the mini-batch (predictions); the raw ones are kept for
        the loss (:meth:`criterion`)."""
        if self.active_units is None:
            self._infer_num_classes()
        self._mb_raw_output = self._raw_logits(self.mb_x, self.mb_task_id)
        return self.active_units.mask(self._mb_raw_output, self.mb_task_id)

    def criterion(self):
        """Cross-entropy of the mini-batch over the scenario's active units plus each
        sample's own class (:meth:`~avalanche_meta.utils.scenario.ActiveUnits.loss_logits`).

        In training every label is active, so this is the cross-entropy of the
        masked logits (``mb_output``). In evaluation on classes not trained yet
        (Class-IL) the true class's unit is let in, so the loss is finite and
        comparable with Avalanche's ``Naive`` instead of about ``1e9`` per sample
        (the mask value); the predictions (``mb_output``, accuracy) still use the
        masked logits. A class a multi-head model has no output unit for keeps the
        mask value.
        """
        raw = self._mb_raw_output
        if raw is None or raw.shape[0] != self.mb_y.shape[0]:
            return F.cross_entropy(self.mb_output, self.mb_y)
        return F.cross_entropy(
            self.active_units.loss_logits(raw, self.mb_task_id, self.mb_y), self.mb_y
        )

    def _infer_num_classes(self) -> None:
        with torch.no_grad():
            for plugin in self._gating_plugins:
                plugin.set_tasks(self.mb_task_id[:1], check=False)
            out = avalanche_forward(self.model, self.mb_x[:1], self.mb_task_id[:1])
        self._make_active_units(int(out.shape[-1]))

    def _unpack_minibatch(self):
        """Avalanche's, plus: ``(x, y)`` batches get task label 0 (Task-IL refuses
        them, naming the fix); floating inputs are cast to the model's dtype (e.g.
        float64 NumPy data), on every code path and in the memory."""
        self.mbatch = complete_minibatch(
            list(self.mbatch), self.scenario, type(self).__name__
        )
        super()._unpack_minibatch()
        self.mbatch[0] = cast_inputs(self.mbatch[0], self.model)
        self.mbatch[-1] = self.mbatch[-1].long()

    # -- the per-example loop -------------------------------------------------------
    def learn_example(self, x: Tensor, y: Tensor, t: Tensor) -> None:
        """Update the model with one incoming example (batch dimension 1)."""
        raise NotImplementedError

    def replay_batch(
        self, x: Tensor, y: Tensor, t: Tensor, n_batches: int, position: str = "first"
    ):
        """``n_batches`` batches of the current example plus :attr:`memories_per_batch`.

        :param position: where the current example goes in each batch: ``"first"``,
            ``"last"``, or ``"random"`` (one uniform position in ``0 .. m - 1`` per
            batch, drawn from the memory's generator after the memories; the
            memories keep their drawn order).
        :return: ``(xb, yb, tb, pos)``: batches of shape ``(n_batches, m, ...)``
            with ``m = 1 + min(memories_per_batch, len(memory))``, memories drawn
            uniformly with replacement (all batches in one draw), and ``pos`` the
            list of the current example's position in each batch.
        """
        n_mem = min(self.memories_per_batch, len(self.memory))
        if n_mem == 0:
            shape = (n_batches, 1) + tuple(x.shape)
            return (
                x.expand(shape),
                y.expand(n_batches, 1),
                t.expand(n_batches, 1),
                [0] * n_batches,
            )
        mx, my, mt = self.memory.sample(n_batches, n_mem)
        cur = (
            x.expand((n_batches, 1) + tuple(x.shape)),
            y.expand(n_batches, 1),
            t.expand(n_batches, 1),
        )
        if position == "first":
            pos = [0] * n_batches
        elif position == "last":
            pos = [n_mem] * n_batches
        elif position == "random":
            pos = torch.randint(
                0, n_mem + 1, (n_batches,), generator=self.memory.generator
            ).tolist()
        else:
            raise ValueError(f"`position` must be first, last or random: {position!r}")
        if all(p == 0 for p in pos):
            parts = [(c, m) for c, m in zip(cur, (mx, my, mt))]
            return tuple(torch.cat(p, 1) for p in parts) + (pos,)
        if all(p == n_mem for p in pos):
            parts = [(m, c) for c, m in zip(cur, (mx, my, mt))]
            return tuple(torch.cat(p, 1) for p in parts) + (pos,)
        out = []
        for c, m in zip(cur, (mx, my, mt)):
            rows = [
                torch.cat([m[i : i + 1, :p], c[i : i + 1], m[i : i + 1, p:]], 1)
                for i, p in enumerate(pos)
            ]
            out.append(torch.cat(rows, 0))
        return tuple(out) + (pos,)

    def _before_training_epoch(self, **kwargs):
        super()._before_training_epoch(**kwargs)
        self.model.train()

    def training_epoch(self, **kwargs):
        """One pass over the experience, each mini-batch example by example."""
        for self.mbatch in self.dataloader:
            if self._stop_training:
                break
            self._unpack_minibatch()
            self._before_training_iteration(**kwargs)
            if self.active_units is None:
                self._infer_num_classes()
            if self._declare_pending:
                self._declare_experience_classes()
            x, y, t = self.mb_x, self.mb_y, self.mb_task_id
            self.active_units.check_batch(y, t)  # one host sync per mini-batch
            for i in range(x.shape[0]):
                xi, yi, ti = x[i : i + 1], y[i : i + 1], t[i : i + 1]
                self.active_units.observe(yi, ti, check=False)
                self.learn_example(xi, yi, ti)
                self.memory.add(x[i], y[i], t[i])
            with torch.no_grad():
                self.mb_output = self.forward()
                self.loss = self.criterion()
            self._after_training_iteration(**kwargs)

    # -- state -----------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Everything to resume exactly: model, memory (with its RNG), active units,
        optimizer, Task-IL bookkeeping and torch's global random state (CPU, and
        CUDA when it is in use: dropout and Avalanche's shuffling draw from it).

        A multi-head model's heads (and their sizes) are in the model's state; see
        :meth:`load_state_dict`."""
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "torch_rng": rng,
            "model": self.model.state_dict(),
            "memory": self.memory.state_dict(),
            "num_classes": self.num_classes,
            "active_units": (
                None if self.active_units is None else self.active_units.state_dict()
            ),
            "optimizer": self.optimizer.state_dict(),
            "task_label_owners": dict(self._task_label_owners),
            "train_calls": self._train_calls,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (parameters are copied in place).

        Avalanche multi-head models (``MultiHeadClassifier`` inside the model) get
        the heads the saved model had, with its widths and unit masks, before the
        weights are loaded (a fresh model has only head 0, and heads grow during
        training); the optimizer is then re-pointed at all the model's parameters.
        """
        if _grow_heads_like(self.model, state["model"]):
            from avalanche.models.dynamic_optimizers import reset_optimizer

            reset_optimizer(self.optimizer, self.model)
            self.optimized_param_id = None
        self.model.load_state_dict(state["model"])
        self.memory.load_state_dict(state["memory"])
        if state["num_classes"] is not None:
            if self.active_units is None:
                self._make_active_units(state["num_classes"])
            self.active_units.load_state_dict(state["active_units"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._task_label_owners = dict(state.get("task_label_owners", {}))
        self._train_calls = int(state.get("train_calls", 0))
        rng = state.get("torch_rng")
        if rng is not None:
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])


def _grow_heads_like(model: nn.Module, saved: Dict[str, Tensor]) -> bool:
    """Give every ``MultiHeadClassifier`` of ``model`` the heads, head widths and
    unit-mask buffers of the saved state ``saved``; return True if anything changed."""
    from avalanche.models import IncrementalClassifier, MultiHeadClassifier

    changed = False
    for name, mh in model.named_modules():
        if not isinstance(mh, MultiHeadClassifier):
            continue
        prefix = f"{name}." if name else ""
        device = next(mh.parameters()).device
        for key, weight in saved.items():
            head_prefix = prefix + "classifiers."
            if not (key.startswith(head_prefix) and key.endswith(".classifier.weight")):
                continue
            tid = key[len(head_prefix) : -len(".classifier.weight")]
            if "." in tid:
                continue
            out_f, in_f = weight.shape
            head = mh.classifiers[tid] if tid in mh.classifiers else None
            if head is None or head.classifier.weight.shape != weight.shape:
                new = IncrementalClassifier(
                    in_f, out_f, masking=False, auto_adapt=False
                ).to(device)
                mh.classifiers[tid] = new
                changed = True
            head_au = saved.get(f"{head_prefix}{tid}.active_units")
            if head_au is not None:
                mh.classifiers[tid].register_buffer(
                    "active_units", torch.zeros_like(head_au, device=device)
                )
            au = saved.get(f"{prefix}active_units_T{tid}")
            if au is not None:
                mh.register_buffer(
                    f"active_units_T{tid}", torch.zeros_like(au, device=device)
                )
            mh.max_class_label = max(mh.max_class_label, out_f)
            if au is not None and bool(au.any()):  # units set in training only
                for m in (model, mh):
                    if isinstance(m, MultiTaskModule):
                        m.known_train_tasks_labels.add(int(tid))
    return changed


class ER(PerExampleReplayTemplate):
    """Experience Replay with a reservoir memory updated after every example.

    For each incoming example ``(x, y, t)``: one optimizer step on the mean
    cross-entropy of a batch made of ``(x, y, t)`` and memories drawn uniformly (with
    replacement), then the reservoir update with ``(x, y, t)``. This is the "ER"
    baseline of Riemer et al. (ICLR 2019), Algorithm 4, with the memory and scenario
    handling of :class:`~avalanche_meta.strategies.MER`. It differs from Avalanche's
    ``Replay`` (memory filled at the end of each experience, current mini-batch and
    memory batch concatenated) in updating the memory per example.

    ``convention="original"`` is ``eralg4.py``: ``min(k, |M|)`` memories then the
    current example (last), one plain SGD step on the batch's mean loss (the
    original runs it with lr 0.1 and its own ``k``: see the CLI presets);
    ``"paper"``: the current example first and ``k - 1`` memories.

    :param model: any classifier, or an Avalanche multi-head model.
    :param optimizer: any optimizer; ``None`` builds ``SGD(model.parameters(), lr)``.
    :param lr: learning rate of the default SGD, 0.03 if ``None`` (giving both
        ``lr`` and ``optimizer`` is an error).
    :param mem_size: memory capacity.
    :param replay_batch_size: ``k``: memories per batch (``"original"``) or batch
        size including the current example (``"paper"``).
    :param scenario: ``"task"``, ``"class"`` or ``"domain"``.
    :param num_classes: output units (``None``: inferred from the model).
    :param seed: seed of the memory's random generator.
    :param convention: ``"paper"`` (default) or ``"original"`` (``eralg4.py``; see
        :mod:`avalanche_meta.strategies.er`).

    Other keyword arguments are Avalanche's (``train_mb_size``, ``eval_mb_size``,
    ``device``, ``plugins``, ``evaluator``, ``eval_every``, ...).

    Plugins: ER fires Avalanche's forward, backward and update callbacks around
    each example's step when a plugin implements one of them, with ``mbatch`` set
    to the replay batch, so ``EWCPlugin``, ``SynapticIntelligencePlugin`` or
    ``LwFPlugin`` add their terms to every step; ``ReplayPlugin`` and XdG compose
    too (see :class:`PerExampleReplayTemplate`).

    :param nan_check_every: how often a non-finite loss is looked for
        (:class:`~avalanche_meta.utils.validation.LossGuard`). None: every step on
        the CPU (before its backward pass, so a NaN is never stepped on); on other
        devices an on-device flag read every 100 steps and at the end of every
        experience, so the steps need no host synchronisation. 1: every step on
        every device.

    Example::

        from avalanche_meta.models.mlp import MLP
        from avalanche_meta.strategies import ER

        strategy = ER(model=MLP(784, (100, 100), 10), lr=0.03, mem_size=200,
                      replay_batch_size=10, scenario="domain")
        for experience in benchmark.train_stream:
            strategy.train(experience)
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: Optional[Optimizer] = None,
        lr: Optional[float] = None,
        mem_size: int = 5120,
        replay_batch_size: int = 10,
        scenario: str = "domain",
        num_classes: Optional[int] = None,
        seed: Optional[int] = None,
        convention: str = "paper",
        train_mb_size: int = 1,
        train_epochs: int = 1,
        eval_mb_size: Optional[int] = 256,
        device: Union[str, torch.device] = "cpu",
        plugins: Optional[Sequence[SupervisedPlugin]] = None,
        evaluator: Union[
            EvaluationPlugin, Callable[[], EvaluationPlugin]
        ] = default_evaluator,
        eval_every: int = -1,
        peval_mode: str = "epoch",
        nan_check_every: Optional[int] = None,
        **kwargs,
    ):
        guard = LossGuard(nan_check_every)
        if optimizer is None:
            optimizer, lr = _default_sgd(model, lr)
        elif lr is not None:
            raise ValueError(
                "ER: give either `optimizer` or `lr` (the lr of the default SGD)."
            )
        super().__init__(
            model=model,
            optimizer=optimizer,
            mem_size=mem_size,
            replay_batch_size=replay_batch_size,
            scenario=scenario,
            num_classes=num_classes,
            seed=seed,
            convention=convention,
            train_mb_size=train_mb_size,
            train_epochs=train_epochs,
            eval_mb_size=eval_mb_size,
            device=device,
            plugins=plugins,
            evaluator=evaluator,
            eval_every=eval_every,
            peval_mode=peval_mode,
            **kwargs,
        )

        self._loss_guard = guard

    FIRES_STEP_CALLBACKS = True

    @property
    def nan_check_every(self) -> Optional[int]:
        """How often a non-finite loss is looked for (see the class)."""
        return self._loss_guard.every

    def training_epoch(self, **kwargs):
        """The template's pass, then the pending non-finite check is read."""
        super().training_epoch(**kwargs)
        self._loss_guard.flush()

    def learn_example(self, x: Tensor, y: Tensor, t: Tensor) -> None:
        """One optimizer step on the replay batch of ``(x, y, t)``.

        With a plugin that implements a step callback (EWC, SI, LwF, ...), the
        step runs as Avalanche's ``training_epoch`` runs one: ``mbatch`` is the
        replay batch while ``before/after_forward``, ``before/after_backward``
        (where plugins add their penalties to ``loss``) and
        ``before/after_update`` fire; then the mini-batch is restored. The loss
        is checked before the backward pass (``nan_check_every``).
        """
        position = "last" if self.convention == "original" else "first"
        xb, yb, tb, _ = self.replay_batch(x[0], y[0], t[0], 1, position)
        xb, yb, tb = xb[0], yb[0], tb[0]
        if not self._fire_step_callbacks:
            self.optimizer.zero_grad()
            loss = F.cross_entropy(self.logits(xb, tb), yb)
            self._loss_guard(loss, "ER (replay batch)")
            loss.backward()
            self.optimizer.step()
            return
        saved, saved_output = self.mbatch, self.mb_output
        self.mbatch = [xb, yb, tb]
        try:
            self.optimizer.zero_grad()
            self.loss = self._make_empty_loss()
            self._before_forward()
            self.mb_output = self.logits(xb, tb)
            self._after_forward()
            self.loss += F.cross_entropy(self.mb_output, yb)
            self._before_backward()
            self._loss_guard(self.loss, "ER (replay batch, with the plugins' terms)")
            self.backward()
            self._after_backward()
            self._before_update()
            self.optimizer_step()
            self._after_update()
        finally:
            self.mbatch, self.mb_output = saved, saved_output


__all__ = ["ER", "PerExampleReplayTemplate"]
