"""Neuron calibration for online continual learning (NCCL; Yin, Yang, Li, NeurIPS 2021).

Named ``NeuronCalibration`` (``nccl`` on the command line only) so that it is not
confused with torch's distributed backend, which is also called "nccl".

Algorithm, per incoming batch ``(x, y, t)`` of task ``k`` (one pass, batch 10):

1. ``B_M``: a replay batch from the episodic memory (samples of every task stored so
   far); ``B_P``: a batch of the memory restricted to past tasks (``!= k``).
2. If ``k >= 1`` (the outer loop runs from the second task on): the importance
   ``Lambda`` of every calibrated weight (:func:`fisher_importance` of the
   distillation loss on ``B_P``) and ``theta~_old``, the calibrated weights now.
3. Inner loop, base parameters ``theta`` only: ``inner_steps`` SGD steps on
   ``L_b = CE(x, y) + gamma * (CE(B_M) + reg * KL(softmax(z_M / T) || stored))``.
4. Outer loop, calibration parameters ``psi``, ``lambda`` only, once, if ``k >= 1``:
   ``L_c = consolidation * 1/2 (theta~ - theta~_old)^T Lambda (theta~ - theta~_old)
   + beta * KL`` on ``B_P``, evaluated at the parameters after the inner loop.
   ``second_order=True`` differentiates ``L_c`` through the inner updates (the
   inner loop runs on a learn2learn functional clone, ``clone_module`` /
   ``update_module``); ``False`` treats the updated ``theta`` as a constant.
5. The batch enters the memory with the (masked) logits the model now gives it.

Where this departs from, or fixes what the paper leaves open:

- the paper's term (a) has no weight; ``consolidation`` (default 1) weighs it and
  ``consolidation=0`` is the "no consolidation term" ablation;
- the Fisher-style importance: see :func:`~avalanche_meta.models.calibration.fisher_importance`
  (batch gradient, chain rule through ``psi``, normalised to max 1);
- the KL direction is SPEC's ``KL(current || stored)``, over the units active when
  each sample was stored; no ``T^2`` factor;
- the memory (:class:`~avalanche_meta.models.calibration.CalibrationMemory`) is
  shared equally by the tasks seen so far (reservoir within each task), so the
  number of tasks need not be known; the inner loop replays every stored sample
  (also of the current task, as ER does), the outer loop only past tasks; with
  ``resample_memory=True`` each inner step draws its own memory batch;
- the outer loss uses its own memory batch ``B_P``, not a held-out query set;
- Task-IL and Class-IL use one head masked by
  :class:`~avalanche_meta.utils.scenario.ActiveUnits` (Task-IL: each sample's task
  classes; Class-IL: every class seen so far); Avalanche multi-head models are
  refused, because heads created later would not be calibrated. The masks take a
  task's classes from the experience's declared classes when training on it starts
  (:func:`experience_task_classes`: the origin experience of an online
  sub-experience when readable, ``classes_in_this_experience`` and the task label,
  or the dataset's targets per task label), so that every class of the task is
  active from its first mini-batch; labels observed in the batches are added too
  (the only source when no class list is readable);
- with ``second_order=True`` the inner steps of outer iterations run on a clone,
  so plugins' forward/backward/update callbacks fire only in the first-order inner
  steps (the first task, or ``second_order=False``).

Controls (not in the paper; for the ablations of ``reproduce nccl``):

- ``outer_loop=False``: no outer step at all (no Fisher importance either); the
  calibration parameters stay at their initial values, so the model computes what
  the plain one does, with exactly the same inner loop and replay budget;
- ``calibration="temperature"``: the only calibration parameter is one scalar logit
  scale on the output layer (FCM, ``scalar_fcm``), trained by the same outer loop;
- ``calibration="hidden"``: every layer but the output layer is calibrated, the
  output layer stays plain; ``calibration="output"``: the reverse (the output
  layer only, with its per-unit scales and calibration bias);
- ``fcm_position="after_bn"``: FCM after the batch norm that follows a layer (see
  :mod:`avalanche_meta.models.calibration`; irrelevant for MLPs).

Use as an Avalanche strategy:

- construction is keyword-only (a positional argument or an unknown keyword is an
  error naming it and its close matches); ``criterion`` must be a mean
  ``nn.CrossEntropyLoss`` without label smoothing (the losses are cross-entropies
  of masked logits), anything else is refused with the reason;
- Task-IL (``scenario="task"``) needs a distinct task label per task: an
  experience reusing an earlier experience's task label (a benchmark without task
  labels) is an error naming the fix (``return_task_id=True`` or
  ``scenario="class"``); the check runs once per experience on the experience's
  own task labels, so replayed samples of a host ``ReplayPlugin`` (which keep
  their task labels) are fine; ``(x, y)`` mini-batches get task label 0 in
  Class-IL and are refused in Task-IL; floating inputs of any dtype are cast to
  the model's;
- plugins: the first-order inner steps fire Avalanche's forward, backward and
  update callbacks (``EWCPlugin``, ``LwFPlugin``, ... compose);
  ``second_order=True`` refuses such plugins (its inner steps run on a clone
  without callbacks); ``ReplayPlugin`` composes (its samples are in the batches,
  and enter the memory like incoming ones); XdG is given the task labels of every
  forward pass (memory batches included) and follows the calibrated layers;
- evaluation: predictions use the masked logits; the loss is the cross-entropy
  over the active units plus each sample's own class (finite on classes not
  trained yet, see :meth:`NeuronCalibration.criterion`);
- devices: everything lives on ``device``; the outer loss is kept as a device
  tensor (``calibration_loss``). The episodic memory's bookkeeping still reads a
  few values back per stored sample (a GPU runs it, with host syncs).

Task boundaries: the task index grows when the training experience changes: the
origin experience of an online sub-experience when it is readable
(``access_task_boundaries=True``), else the experience itself, else each call to
``train()`` (the pattern ``for exp in stream: strategy.train(split_online_stream([exp], 10))``).

Example::

    from avalanche_meta.models import MLP
    model = MLP(input_size=784, hidden_sizes=(100, 100), num_classes=10)
    strategy = NeuronCalibration(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        scenario="class", mem_size=500)
    for exp in benchmark.train_stream:
        strategy.train(split_online_stream([exp], experience_size=10))
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from avalanche.benchmarks import OnlineCLExperience
from avalanche.benchmarks.scenarios.generic_scenario import MaskedAttributeError
from avalanche.models import MultiTaskModule
from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.templates import SupervisedTemplate
from avalanche.models.dynamic_optimizers import update_optimizer
from torch import Tensor, nn
from torch.nn import CrossEntropyLoss

from avalanche_meta.models.calibration import (
    FCM_POSITIONS,
    CalibrationMemory,
    calibrate,
    calibrated_weights,
    calibration_parameters,
    consolidation_loss,
    distillation_kl,
    fisher_importance,
    is_calibrated,
    is_calibration_parameter,
    named_base_parameters,
    output_layer,
    remove_from_optimizer,
)
from avalanche_meta.strategies._keywords import KeywordOnlyConstruction
from avalanche_meta.strategies.er import step_callback_plugins
from avalanche_meta.utils.quiet_import import import_learn2learn
from avalanche_meta.utils.scenario import (
    ActiveUnits,
    cast_inputs,
    check_distinct_task_labels,
    check_scenario,
    complete_minibatch,
    experience_identity,
)
from avalanche_meta.utils.validation import (
    check_choice,
    LossGuard,
    check_non_negative,
    check_positive,
)

#: The ``calibration`` choices of :class:`NeuronCalibration`.
CALIBRATION_MODES = ("full", "hidden", "output", "temperature")


def experience_task_classes(exp) -> Dict[int, List[int]]:
    """The classes an experience declares, per task label: ``{task: [classes]}``.

    Reads the origin experience of an online sub-experience when it is readable
    (``access_task_boundaries=True``), else the experience itself. With one task
    label and a ``classes_in_this_experience`` list, that list; otherwise the
    dataset's ``targets`` grouped by ``targets_task_labels`` (task 0 when the
    dataset has no task labels). Empty if nothing is readable.
    """
    src = exp
    if isinstance(exp, OnlineCLExperience):
        try:
            origin = exp.origin_experience
            if origin is not None:
                src = origin
        except (MaskedAttributeError, AttributeError):
            pass

    def read(obj, name):
        try:
            return getattr(obj, name, None)
        except (MaskedAttributeError, AttributeError):
            return None

    tasks = read(src, "task_labels")
    classes = read(src, "classes_in_this_experience")
    if tasks is None:
        tasks = read(exp, "task_labels")
    if classes is None and src is not exp:
        classes = read(exp, "classes_in_this_experience")
    if classes is not None and tasks is not None and len(list(tasks)) == 1:
        return {int(list(tasks)[0]): sorted(int(c) for c in classes)}
    ds = read(src, "dataset")
    targets = None if ds is None else read(ds, "targets")
    if targets is None:
        return {}
    y = torch.as_tensor(list(targets)).long().flatten()
    t_labels = read(ds, "targets_task_labels")
    t = (
        torch.zeros_like(y)
        if t_labels is None
        else torch.as_tensor(list(t_labels)).long().flatten()
    )
    out: Dict[int, List[int]] = {}
    for task in sorted(set(t.tolist())):
        out[int(task)] = sorted(set(y[t == task].tolist()))
    return out


def _clip(
    grads: Sequence[Optional[Tensor]], max_norm: Optional[float]
) -> List[Optional[Tensor]]:
    """Scale ``grads`` to total norm ``<= max_norm`` (differentiable; None kept)."""
    grads = list(grads)
    if max_norm is None:
        return grads
    present = [g for g in grads if g is not None]
    if not present:
        return grads
    norm = torch.sqrt(sum((g * g).sum() for g in present))
    factor = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    return [None if g is None else g * factor for g in grads]


class NeuronCalibration(KeywordOnlyConstruction, SupervisedTemplate):
    """NCCL: bi-level online continual learning with calibrated neurons.

    :param model: a plain model (it is calibrated here with ``wcm``/``fcm``/
        ``combine``) or one already passed through
        :func:`~avalanche_meta.models.calibration.calibrate` (then used as is).
    :param optimizer: the optimizer of the base parameters (inner loop). Avalanche
        would add every model parameter to it; :meth:`make_optimizer` adds only the
        base parameters. With ``second_order=True`` it must be plain SGD.
    :param criterion: the classification loss (cross-entropy).
    The defaults of ``mem_batch_size``, ``inner_steps``, ``resample_memory`` and
    ``gamma`` were chosen on validation streams (permuted MNIST, seeds 100-102, never
    the reported seeds); see ``docs/RESULTS.md``, section "NCCL: choice of the
    defaults". The paper does not give them.

    :param scenario: ``"task"`` (Task-IL) or ``"class"`` (Class-IL; also right for
        Domain-IL streams whose classes are all seen from the first task).
    :param mem_size: episodic memory slots, shared equally by the tasks seen so far.
    :param mem_batch_size: memory samples per replay batch.
    :param inner_steps: SGD steps on the base parameters per incoming batch.
    :param resample_memory: draw a new memory batch ``B_M`` for every inner step
        (``False``: one ``B_M`` per incoming batch, reused by its inner steps).
    :param gamma: weight of the memory terms of ``L_b``.
    :param reg: weight of the distillation KL inside the memory term of ``L_b``.
    :param temperature: distillation temperature ``T``.
    :param beta: weight of the distillation term (b) of ``L_c``.
    :param consolidation: weight of the Fisher-weighted term (a) of ``L_c`` (0: off).
    :param calibration_lr: learning rate of the SGD step on ``psi``/``lambda``.
    :param second_order: differentiate ``L_c`` through the inner updates.
    :param grad_clip: clip the norm of every gradient (base and calibration) to this.
    :param wcm: weight calibration (when ``model`` is not calibrated yet).
    :param fcm: feature calibration (when ``model`` is not calibrated yet).
    :param combine: ``"multiply"`` or ``"add"`` (see :mod:`avalanche_meta.models.calibration`).
    :param fcm_position: ``"before_bn"`` (paper, default) or ``"after_bn"`` (when
        ``model`` is not calibrated yet; matters only for layers followed by a
        batch norm).
    :param calibration: which calibration a plain ``model`` gets: ``"full"`` (every
        layer, ``wcm``/``fcm`` as given), ``"hidden"`` (every layer but the output
        layer), ``"output"`` (the output layer only, ``wcm``/``fcm`` as given) or
        ``"temperature"`` (one scalar logit scale on the output layer, nothing
        else). An already calibrated ``model`` is used as is (then
        ``calibration``, ``wcm``, ``fcm``, ``combine``, ``fcm_position`` are ignored).
    :param outer_loop: run the outer (calibration) step; ``False`` is the control
        "same inner loop, no calibration update".
    :param num_classes: output units (default: the output layer's, the model's last
        ``nn.Linear``).
    :param nan_check_every: how often a non-finite loss (inner and outer) is looked
        for (:class:`~avalanche_meta.utils.validation.LossGuard`). None: every step
        on the CPU, before it is stepped on; on other devices an on-device flag
        read every 100 losses and at the end of every experience, so the steps
        need no host synchronisation. 1: every step on every device.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion=CrossEntropyLoss(),
        scenario: str = "class",
        mem_size: int = 500,
        mem_batch_size: int = 50,
        inner_steps: int = 5,
        resample_memory: bool = True,
        gamma: float = 2.0,
        reg: float = 1.0,
        temperature: float = 2.0,
        beta: float = 1.0,
        consolidation: float = 1.0,
        calibration_lr: float = 0.01,
        second_order: bool = False,
        grad_clip: Optional[float] = None,
        wcm: bool = True,
        fcm: bool = True,
        combine: str = "multiply",
        fcm_position: str = "before_bn",
        calibration: str = "full",
        outer_loop: bool = True,
        num_classes: Optional[int] = None,
        train_mb_size: int = 10,
        train_epochs: int = 1,
        eval_mb_size: Optional[int] = 256,
        device="cpu",
        plugins=None,
        evaluator=default_evaluator,
        eval_every: int = -1,
        nan_check_every: Optional[int] = None,
        **kwargs,
    ):
        scenario = check_scenario(scenario)
        guard = LossGuard(nan_check_every)
        if scenario == "domain":
            scenario = "class"  # all units active once every class was seen
        check_positive("mem_size", mem_size, integer=True)
        check_positive("mem_batch_size", mem_batch_size, integer=True)
        check_positive("inner_steps", inner_steps, integer=True)
        check_positive("temperature", temperature)
        check_positive("calibration_lr", calibration_lr)
        for name, value in (
            ("gamma", gamma),
            ("reg", reg),
            ("beta", beta),
            ("consolidation", consolidation),
        ):
            check_non_negative(name, value)
        if grad_clip is not None:
            check_positive("grad_clip", grad_clip)
        check_choice("calibration", calibration, CALIBRATION_MODES)
        check_choice("fcm_position", fcm_position, FCM_POSITIONS)
        self._check_criterion(criterion)
        if isinstance(model, MultiTaskModule):
            raise ValueError(
                "NeuronCalibration uses one output head masked per task (Task-IL) or "
                "over the classes seen (Class-IL); Avalanche multi-head models grow "
                "uncalibrated heads. Pass a single-head model with all the classes."
            )
        if second_order:
            self._check_plain_sgd(optimizer)
            step_plugins = step_callback_plugins(plugins)
            if step_plugins:
                name, hooks = next(iter(step_plugins.items()))
                raise ValueError(
                    f"NeuronCalibration(second_order=True) cannot compose with "
                    f"{name}: it hooks {', '.join(hooks)}, but from the second task "
                    "on the inner steps run functionally on a learn2learn clone, "
                    "where those callbacks do not fire, so the plugin would have no "
                    "effect there. Use second_order=False (every inner step fires "
                    "them) or leave the plugin out."
                )
        if not is_calibrated(model):
            if calibration == "temperature":
                calibrate(
                    model,
                    wcm=False,
                    fcm=True,
                    combine=combine,
                    layers="output",
                    scalar_fcm=True,
                )
            else:
                calibrate(
                    model,
                    wcm=wcm,
                    fcm=fcm,
                    combine=combine,
                    fcm_position=fcm_position,
                    layers="all" if calibration == "full" else calibration,
                )
        if num_classes is None:
            try:
                num_classes = output_layer(model).out_features
            except ValueError:
                raise ValueError(
                    "cannot infer the number of classes (no nn.Linear layer): "
                    "pass `num_classes`."
                ) from None
        super().__init__(
            model=model,
            optimizer=optimizer,
            criterion=criterion,
            train_mb_size=train_mb_size,
            train_epochs=train_epochs,
            eval_mb_size=eval_mb_size,
            device=device,
            plugins=plugins,
            evaluator=evaluator,
            eval_every=eval_every,
            **kwargs,
        )
        self.scenario = scenario
        self.mem_size, self.mem_batch_size = mem_size, mem_batch_size
        self.inner_steps = inner_steps
        self.resample_memory = bool(resample_memory)
        self.gamma, self.reg, self.T = gamma, reg, temperature
        self.beta, self.consolidation = beta, consolidation
        self.second_order, self.grad_clip = bool(second_order), grad_clip
        self.outer_loop = bool(outer_loop)
        self._loss_guard = guard
        self.model.to(self.device)
        self.memory = CalibrationMemory(mem_size).to(self.device)
        self.active_units = ActiveUnits(num_classes, scenario).to(self.device)
        # Only psi / lambda; never stepped by the base optimizer (see make_optimizer).
        self.calibration_optimizer = torch.optim.SGD(
            calibration_parameters(self.model), lr=calibration_lr
        )
        remove_from_optimizer(self.optimizer, calibration_parameters(self.model))
        self.task_index = 0
        self._boundary_key: Any = None
        self._train_calls = 0
        self._task_label_owners: Dict[int, Tuple] = {}
        self._replay = None
        self._mb_raw_output: Optional[Tensor] = None
        #: plugins that gate the model per task (XdG): told every forward's labels
        self._gating_plugins = [
            p for p in self.plugins if callable(getattr(p, "set_tasks", None))
        ]

    # -- set-up -------------------------------------------------------------------
    @staticmethod
    def _check_criterion(criterion) -> None:
        """Accept a mean ``nn.CrossEntropyLoss`` without label smoothing, else say why."""
        if not isinstance(criterion, CrossEntropyLoss):
            raise ValueError(
                "NeuronCalibration's losses are cross-entropies of masked logits (and "
                "a KL distillation on logits): `criterion` must be "
                f"nn.CrossEntropyLoss() (or left out), got {type(criterion).__name__}."
            )
        if criterion.reduction != "mean":
            raise ValueError(
                "NeuronCalibration adds its cross-entropies to batch-mean terms: "
                f"`criterion` needs reduction='mean', got {criterion.reduction!r}."
            )
        if float(criterion.label_smoothing) != 0.0:
            raise ValueError(
                "NeuronCalibration masks inactive output units with a large negative "
                "value; label smoothing would put weight on them and make the loss "
                "about 1e8: pass nn.CrossEntropyLoss() without `label_smoothing`."
            )

    @staticmethod
    def _check_plain_sgd(optimizer) -> None:
        ok = type(optimizer) is torch.optim.SGD and all(
            g.get("momentum", 0) == 0 and g.get("weight_decay", 0) == 0
            for g in optimizer.param_groups
        )
        if not ok:
            raise ValueError(
                "`second_order=True` writes the inner SGD steps functionally to "
                "differentiate through them: pass `optimizer=torch.optim.SGD(..., lr=...)` "
                "without momentum or weight decay, or use `second_order=False`."
            )

    def make_optimizer(
        self,
        reset_optimizer_state=False,
        remove_params=False,
        verbose_optimizer=False,
        **kwargs,
    ):
        """Avalanche's ``make_optimizer`` over the base parameters only: the
        calibration parameters are updated by the outer loop alone."""
        self.optimized_param_id = update_optimizer(
            self.optimizer,
            dict(named_base_parameters(self.model)),
            self.optimized_param_id,
            reset_state=reset_optimizer_state,
            remove_params=remove_params,
            verbose=verbose_optimizer,
        )
        remove_from_optimizer(self.optimizer, calibration_parameters(self.model))

    def _before_training(self, **kwargs):
        self._train_calls += 1
        super()._before_training(**kwargs)

    def _experience_key(self):
        exp = self.experience
        if isinstance(exp, OnlineCLExperience):
            try:
                return ("exp", exp.origin_experience.current_experience)
            except (MaskedAttributeError, AttributeError):
                return ("call", self._train_calls)
        try:
            return ("exp", exp.current_experience)
        except (MaskedAttributeError, AttributeError):
            return ("call", self._train_calls)

    def _before_training_exp(self, **kwargs):
        if self.scenario == "task":
            ident, labels = experience_identity(self.experience, self._train_calls)
            check_distinct_task_labels(
                self._task_label_owners, ident, labels, "NeuronCalibration"
            )
        key = self._experience_key()
        if self._boundary_key is not None and key != self._boundary_key:
            self.task_index += 1
        if key != self._boundary_key or key[0] == "call":
            # a new experience: make its declared classes active from its first batch
            for task, classes in experience_task_classes(self.experience).items():
                if classes:
                    self.active_units.observe_classes(classes, task)
        self._boundary_key = key
        self.memory.start_task(self.task_index)
        super()._before_training_exp(**kwargs)

    # -- forward and losses -------------------------------------------------------
    def _unpack_minibatch(self):
        """Avalanche's, plus: ``(x, y)`` batches get task label 0 (Task-IL refuses
        them, naming the fix); floating inputs are cast to the model's dtype."""
        self.mbatch = complete_minibatch(
            list(self.mbatch), self.scenario, "NeuronCalibration"
        )
        super()._unpack_minibatch()
        self.mbatch[0] = cast_inputs(self.mbatch[0], self.model)
        self.mbatch[-1] = self.mbatch[-1].long()

    def _raw(self, net: nn.Module, x: Tensor, t: Tensor) -> Tensor:
        for plugin in self._gating_plugins:  # XdG: gate this pass with its labels
            plugin.set_tasks(t, check=False)
        return net(x)

    def _logits(self, net: nn.Module, x: Tensor, t: Tensor) -> Tensor:
        return self.active_units.mask(self._raw(net, x, t), t)

    def forward(self):
        """Masked logits: Task-IL each sample's task classes, Class-IL seen classes
        (the raw ones are kept for the evaluation loss, see :meth:`criterion`)."""
        self._mb_raw_output = self._raw(self.model, self.mb_x, self.mb_task_id)
        return self.active_units.mask(self._mb_raw_output, self.mb_task_id)

    def _distillation(self, net: nn.Module, batch) -> Tensor:
        xm, _, tm, zm = batch
        return distillation_kl(self._logits(net, xm, tm), zm, self.T)

    def _replay_loss(self, net: nn.Module) -> Tensor:
        """``CE(B_M) + reg * KL(B_M)`` (zero without memory)."""
        if self._replay is None:
            return torch.zeros((), device=self.device)
        xm, ym, tm, zm = self._replay
        z = self._logits(net, xm, tm)
        loss = self._criterion(z, ym)
        if self.reg > 0:
            loss = loss + self.reg * distillation_kl(z, zm, self.T)
        return loss

    def criterion(self):
        """Training: ``L_b``; evaluation: the cross-entropy over the active units
        plus each sample's own class.

        Evaluation: :meth:`~avalanche_meta.utils.scenario.ActiveUnits.loss_logits`
        lets the true class's unit in, so that on classes not trained yet
        (Class-IL) the loss is finite and comparable with Avalanche's ``Naive``
        rather than about ``1e9`` (the mask value); when the label is active it is
        the cross-entropy of the masked logits. Predictions (``mb_output``) keep
        the masked logits.
        """
        if not self.is_training:
            raw = self._mb_raw_output
            if raw is not None and raw.shape[0] == self.mb_y.shape[0]:
                z = self.active_units.loss_logits(raw, self.mb_task_id, self.mb_y)
                return self._criterion(z, self.mb_y)
        loss = self._criterion(self.mb_output, self.mb_y)
        if self.is_training and self.gamma > 0:
            loss = loss + self.gamma * self._replay_loss(self.model)
        return loss

    # -- the bi-level step ----------------------------------------------------------
    def training_epoch(self, **kwargs):
        """One pass over the (online) experience: one bi-level step per batch."""
        for self.mbatch in self.dataloader:
            if self._stop_training:
                break
            self._unpack_minibatch()
            self._before_training_iteration(**kwargs)
            self._calibrated_step(**kwargs)
            self._after_training_iteration(**kwargs)
        self._loss_guard.flush()

    @property
    def nan_check_every(self) -> Optional[int]:
        """How often a non-finite loss is looked for (see the class)."""
        return self._loss_guard.every

    def _calibrated_step(self, **kwargs) -> None:
        x, y, t = self.mb_x, self.mb_y, self.mb_task_id
        k = self.task_index
        self.active_units.observe(y, t)
        self._sample_replay()
        past = self.memory.sample(self.mem_batch_size, exclude_task=k)
        outer = (
            self.outer_loop
            and past is not None
            and (self.beta > 0 or self.consolidation > 0)
        )

        Lambda, theta_tilde_old = None, None
        if outer:
            if self.consolidation > 0:
                Lambda = fisher_importance(
                    self._distillation(self.model, past), self.model
                )
            theta_tilde_old = [
                w.detach().clone() for w in calibrated_weights(self.model)
            ]

        if outer and self.second_order:
            net = self._inner_loop_second_order()
        else:
            self._inner_loop_first_order(**kwargs)
            net = self.model

        if outer:
            self._outer_step(net, past, Lambda, theta_tilde_old)
        if net is not self.model:
            self._copy_base(net)
        self._store(x, y, t, k)

    def _sample_replay(self) -> None:
        """``B_M``: a batch of the whole memory (None while it is empty)."""
        self._replay = (
            self.memory.sample(self.mem_batch_size) if len(self.memory) else None
        )

    def _inner_loop_first_order(self, **kwargs) -> None:
        """``inner_steps`` optimizer steps on ``L_b`` (callbacks fire as in Avalanche)."""
        for step in range(self.inner_steps):
            if step and self.resample_memory:
                self._sample_replay()
            self.optimizer.zero_grad()
            self.loss = self._make_empty_loss()
            self._before_forward(**kwargs)
            self.mb_output = self.forward()
            self._after_forward(**kwargs)
            self.loss += self.criterion()
            self._loss_guard(self.loss, "NeuronCalibration inner loop")
            self._before_backward(**kwargs)
            self.backward()
            self._after_backward(**kwargs)
            if self.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(
                    [p for _, p in named_base_parameters(self.model)], self.grad_clip
                )
            self._before_update(**kwargs)
            self.optimizer_step()
            self._after_update(**kwargs)

    def _inner_loop_second_order(self) -> nn.Module:
        """The inner loop on a learn2learn clone, keeping the graph to ``psi``/``lambda``."""
        l2l = import_learn2learn()
        learner = l2l.clone_module(self.model)
        names = [n for n, _ in learner.named_parameters()]
        base = [i for i, n in enumerate(names) if not is_calibration_parameter(n)]
        lr = self.optimizer.param_groups[0]["lr"]
        for step in range(self.inner_steps):
            if step and self.resample_memory:
                self._sample_replay()
            params = [p for _, p in learner.named_parameters()]
            self.mb_output = self._logits(learner, self.mb_x, self.mb_task_id)
            loss = self._criterion(self.mb_output, self.mb_y)
            if self.gamma > 0:
                loss = loss + self.gamma * self._replay_loss(learner)
            self.loss = self._loss_guard(loss, "NeuronCalibration inner loop")
            grads = torch.autograd.grad(
                loss, [params[i] for i in base], create_graph=True, allow_unused=True
            )
            grads = _clip(grads, self.grad_clip)
            updates: List[Optional[Tensor]] = [None] * len(params)
            for i, g in zip(base, grads):
                updates[i] = None if g is None else -lr * g
            l2l.update_module(learner, updates=updates)
        return learner

    def _outer_step(self, net: nn.Module, past, Lambda, theta_tilde_old) -> None:
        """One SGD step of ``psi``/``lambda`` on ``L_c`` (term (a) + beta * term (b))."""
        psi = calibration_parameters(self.model)
        L_c = self.beta * self._distillation(net, past)
        if Lambda is not None:
            L_c = L_c + self.consolidation * consolidation_loss(
                calibrated_weights(net), theta_tilde_old, Lambda
            )
        self._loss_guard(L_c, "NeuronCalibration outer (calibration) loss")
        grads = torch.autograd.grad(L_c, psi, allow_unused=True)
        grads = _clip(
            [None if g is None else g.detach() for g in grads], self.grad_clip
        )
        self.calibration_optimizer.zero_grad()
        for p, g in zip(psi, grads):
            p.grad = None if g is None else g
        self.calibration_optimizer.step()
        #: the last outer loss, a detached 0-d tensor (not read back: no host sync)
        self.calibration_loss = L_c.detach()

    @torch.no_grad()
    def _copy_base(self, learner: nn.Module) -> None:
        for (n, p), (_, q) in zip(
            self.model.named_parameters(), learner.named_parameters()
        ):
            if not is_calibration_parameter(n):
                p.copy_(q.detach())
        for b, c in zip(self.model.buffers(), learner.buffers()):
            b.copy_(c.detach())

    @torch.no_grad()
    def _store(self, x: Tensor, y: Tensor, t: Tensor, k: int) -> None:
        """Add the batch to the memory with the logits the model gives it now."""
        was_training = self.model.training
        self.model.eval()
        z = self._logits(self.model, x, t)
        self.model.train(was_training)
        self.memory.add(x, y, t, z, k)

    # -- checkpoints ----------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to resume exactly: model, optimizers, memory, masks,
        task bookkeeping and torch's global random state (the memory's draws and
        dropout use it; CUDA's too when it is in use)."""
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "torch_rng": rng,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "calibration_optimizer": self.calibration_optimizer.state_dict(),
            "memory": self.memory.state_dict(),
            "active_units": self.active_units.state_dict(),
            "task_index": self.task_index,
            "boundary_key": self._boundary_key,
            "train_calls": self._train_calls,
            "task_label_owners": dict(self._task_label_owners),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.calibration_optimizer.load_state_dict(state["calibration_optimizer"])
        self.memory.load_state_dict(state["memory"])
        self.active_units.load_state_dict(state["active_units"])
        self.task_index = int(state["task_index"])
        self._boundary_key = state["boundary_key"]
        self._train_calls = int(state["train_calls"])
        self._task_label_owners = dict(state.get("task_label_owners", {}))
        rng = state.get("torch_rng")
        if rng is not None:
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
