"""Neuron calibration (NCCL's outer loop) added to another strategy, e.g. ER or Naive.

The host strategy's own update plays the inner loop (it updates the base parameters
``theta``); after each of its training iterations the plugin makes NCCL's outer step
on the calibration parameters ``psi``/``lambda``: Fisher-weighted consolidation of
the calibrated weights (term (a)) plus ``beta`` times the distillation KL on a memory
batch of past tasks (term (b)); then it stores the batch with its current logits in
its own :class:`~avalanche_meta.models.calibration.CalibrationMemory`.

What the plugin cannot do, and why: it is first-order only. Differentiating through
the inner update needs the update written functionally (as
:class:`~avalanche_meta.strategies.NeuronCalibration` does with learn2learn); a host
strategy's optimizer step is opaque to autograd. It also does not add NCCL's inner
replay/distillation to the host's loss: the host's own replay (e.g. ER's) plays that
part. The model must be calibrated (:func:`~avalanche_meta.models.calibrate`) before
the host strategy is built; the plugin removes the calibration parameters from the
host's optimizer at every experience (Avalanche's ``make_optimizer`` adds them).

Logits are masked as the host sees them: the raw model output (``strategy.mb_output``
semantics) unless an :class:`~avalanche_meta.utils.scenario.ActiveUnits` is given;
that mask gets each experience's declared classes when training on it starts (see
:func:`~avalanche_meta.strategies.neuron_calibration.experience_task_classes`) and
the labels of every batch.

Example::

    model = calibrate(MLP(input_size=784, hidden_sizes=(100, 100), num_classes=10))
    strategy = Naive(model=model, optimizer=SGD(base_parameters(model), lr=0.1),
                     plugins=[CalibrationPlugin(mem_size=500)], train_mb_size=10)
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from avalanche.benchmarks import OnlineCLExperience
from avalanche.benchmarks.scenarios.generic_scenario import MaskedAttributeError
from avalanche.core import SupervisedPlugin
from avalanche.models import MultiTaskModule
from avalanche.models.utils import avalanche_forward
from torch import Tensor, nn

from avalanche_meta.models.calibration import (
    CalibrationMemory,
    calibrated_weights,
    calibration_parameters,
    consolidation_loss,
    distillation_kl,
    fisher_importance,
    is_calibrated,
    remove_from_optimizer,
)
from avalanche_meta.strategies._keywords import KeywordOnlyConstruction
from avalanche_meta.utils.scenario import ActiveUnits
from avalanche_meta.utils.validation import (
    check_finite_loss,
    check_non_negative,
    check_positive,
)


class CalibrationPlugin(KeywordOnlyConstruction, SupervisedPlugin):
    """NCCL's calibration update (first order) for any ``SupervisedTemplate``.

    :param mem_size: slots of the plugin's memory (shared equally by tasks).
    :param mem_batch_size: memory samples per outer step.
    :param beta: weight of the distillation term (b).
    :param consolidation: weight of the Fisher-weighted term (a) (0: off).
    :param temperature: distillation temperature.
    :param calibration_lr: SGD learning rate of ``psi``/``lambda``.
    :param active_units: optional output masks (Task-IL / Class-IL); the plugin
        records the classes it sees in it. Without it, logits are used unmasked.

    Construction is keyword-only (unknown keywords are an error naming the close
    matches). Avalanche multi-head models (``MultiTaskModule``) are refused at the
    first ``train``: the heads they create for new tasks would not be calibrated.
    Host plugins compose (``EWCPlugin``, ``ReplayPlugin``, ...): the plugin only
    adds the outer step after each host iteration.
    """

    def __init__(
        self,
        *,
        mem_size: int = 500,
        mem_batch_size: int = 10,
        beta: float = 1.0,
        consolidation: float = 1.0,
        temperature: float = 2.0,
        calibration_lr: float = 0.01,
        active_units: Optional[ActiveUnits] = None,
    ):
        super().__init__()
        check_positive("mem_batch_size", mem_batch_size, integer=True)
        check_positive("temperature", temperature)
        check_positive("calibration_lr", calibration_lr)
        check_non_negative("beta", beta)
        check_non_negative("consolidation", consolidation)
        self.memory = CalibrationMemory(mem_size)
        self.mem_batch_size = mem_batch_size
        self.beta, self.consolidation, self.T = beta, consolidation, temperature
        self.calibration_lr = calibration_lr
        self.active_units = active_units
        self.calibration_optimizer: Optional[torch.optim.Optimizer] = None
        self.task_index = 0
        self._last_exp: Any = None
        self._train_calls = 0
        self._past = None
        self._Lambda = None
        self._theta_tilde_old = None

    def _logits(self, model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
        z = avalanche_forward(model, x, t)
        return z if self.active_units is None else self.active_units.mask(z, t)

    def _experience_key(self, exp) -> Any:
        try:
            exp = exp.origin_experience if isinstance(exp, OnlineCLExperience) else exp
            return ("exp", exp.current_experience)
        except (MaskedAttributeError, AttributeError):
            return ("call", self._train_calls)

    def before_training(self, strategy, **kwargs):
        self._train_calls += 1
        if isinstance(strategy.model, MultiTaskModule):
            raise ValueError(
                "CalibrationPlugin cannot calibrate an Avalanche multi-head model "
                "(MultiTaskModule): the heads it creates for new tasks would not be "
                "calibrated. Use a single-head model with all the classes "
                "(Task-IL through an ActiveUnits mask)."
            )
        if not is_calibrated(strategy.model):
            raise ValueError(
                "CalibrationPlugin needs a calibrated model: build the strategy with "
                "`model=calibrate(model)` (avalanche_meta.models.calibrate)."
            )
        if self.calibration_optimizer is None:
            self.calibration_optimizer = torch.optim.SGD(
                calibration_parameters(strategy.model), lr=self.calibration_lr
            )
        self.memory.to(strategy.device)

    def before_training_exp(self, strategy, **kwargs):
        # Runs after the host's make_optimizer, which adds every model parameter.
        remove_from_optimizer(
            strategy.optimizer, calibration_parameters(strategy.model)
        )
        key = self._experience_key(strategy.experience)
        if self._last_exp is not None and key != self._last_exp:
            self.task_index += 1
        if self.active_units is not None and (
            key != self._last_exp or key[0] == "call"
        ):
            from avalanche_meta.strategies.neuron_calibration import (
                experience_task_classes,
            )

            for task, classes in experience_task_classes(strategy.experience).items():
                if classes:
                    self.active_units.observe_classes(classes, task)
        self._last_exp = key
        self.memory.start_task(self.task_index)

    def before_training_iteration(self, strategy, **kwargs):
        model = strategy.model
        if self.active_units is not None:
            self.active_units.observe(strategy.mb_y, strategy.mb_task_id)
        self._past = self.memory.sample(
            self.mem_batch_size, exclude_task=self.task_index
        )
        self._Lambda = self._theta_tilde_old = None
        if self._past is None:
            return
        if self.consolidation > 0:
            xm, _, tm, zm = self._past
            with torch.enable_grad():
                kl = distillation_kl(self._logits(model, xm, tm), zm, self.T)
                self._Lambda = fisher_importance(kl, model)
        self._theta_tilde_old = [w.detach().clone() for w in calibrated_weights(model)]

    def after_training_iteration(self, strategy, **kwargs):
        model = strategy.model
        if self._past is not None and (self.beta > 0 or self._Lambda is not None):
            xm, _, tm, zm = self._past
            L_c = self.beta * distillation_kl(self._logits(model, xm, tm), zm, self.T)
            if self._Lambda is not None:
                L_c = L_c + self.consolidation * consolidation_loss(
                    calibrated_weights(model), self._theta_tilde_old, self._Lambda
                )
            check_finite_loss(L_c, "CalibrationPlugin outer (calibration) loss")
            psi = calibration_parameters(model)
            grads = torch.autograd.grad(L_c, psi, allow_unused=True)
            self.calibration_optimizer.zero_grad()
            for p, g in zip(psi, grads):
                p.grad = g
            self.calibration_optimizer.step()
        with torch.no_grad():
            was_training = model.training
            model.eval()
            # The host's batch may include its own replay samples: store only the
            # current experience's samples (the first len(experience batch)).
            n = min(strategy.train_mb_size, strategy.mb_x.shape[0])
            x, y, t = strategy.mb_x[:n], strategy.mb_y[:n], strategy.mb_task_id[:n]
            z = self._logits(model, x, t)
            model.train(was_training)
            self.memory.add(x, y, t, z, self.task_index)

    def state_dict(self) -> Dict[str, Any]:
        """The plugin's memory, masks, optimizer and task counter."""
        return {
            "memory": self.memory.state_dict(),
            "active_units": (
                None if self.active_units is None else self.active_units.state_dict()
            ),
            "calibration_optimizer": (
                None
                if self.calibration_optimizer is None
                else self.calibration_optimizer.state_dict()
            ),
            "task_index": self.task_index,
            "last_exp": self._last_exp,
            "train_calls": self._train_calls,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the optimizer once training began)."""
        self.memory.load_state_dict(state["memory"])
        if self.active_units is not None and state["active_units"] is not None:
            self.active_units.load_state_dict(state["active_units"])
        if self.calibration_optimizer is not None and state["calibration_optimizer"]:
            self.calibration_optimizer.load_state_dict(state["calibration_optimizer"])
        self.task_index = int(state["task_index"])
        self._last_exp = state["last_exp"]
        self._train_calls = int(state["train_calls"])
