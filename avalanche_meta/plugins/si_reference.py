"""Synaptic intelligence as van de Ven's brain-inspired replay code computes it.

The paper's BI-R + SI (van de Ven, Siegelmann & Tolias, Nat. Commun. 2020; its code's
``train.py`` and ``models/cl/continual_learner.py``) uses its own SI, which differs
from Avalanche's ``SynapticIntelligencePlugin`` (which clips the importances and scales
the penalty by ``lambda / 2``), so its ``c`` values do not carry over:

- during a task, after every optimizer step, ``W += -grad * (theta_new - theta_old)``
  with the gradient of that step's total loss (the SI penalty included) and the
  parameters just before the step;
- after the task, ``omega += W / ((theta_end - theta_start)^2 + epsilon)`` (no
  clipping; ``epsilon`` 0.1) and the anchor ``theta_start`` moves to ``theta_end``;
- the penalty added to the loss is ``c * sum(omega * (theta - anchor)^2)``.

With BI-R the path integral ``W`` is accumulated only for the encoder and the
classifier (the reference's ``convE``, ``fcE`` and ``classifier``), not for the
decoder, the prior or the layers that give ``mu`` / ``logvar``, whose importances
therefore stay 0: pass those modules as ``modules``. Without ``modules`` every
trainable parameter of the strategy's model counts (the reference's SI baseline on a
classifier).

The reference's values (``options.py``): BI-R + SI uses ``c = dg_c`` (1 on permuted
MNIST, 1e8 on CIFAR-100) and decoder gates of proportion ``dg_si_prop`` (0.8 permuted
MNIST, 0.6 CIFAR-100); the SI baseline ``c`` is 10 (Task-IL) / 0.1 (Class-IL) on split
MNIST and 10 on permuted MNIST. The reference defines no BI-R + SI setting for split
MNIST.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor, nn

from avalanche_meta.strategies._keywords import KeywordOnlyConstruction
from avalanche_meta.utils.validation import check_non_negative, check_positive


class ReferenceSIPlugin(KeywordOnlyConstruction, SupervisedPlugin):
    """SI with the reference code's formula (see the module docstring).

    ``c`` may be given by position; the other arguments are keywords (an unknown
    keyword is an error naming its close matches). It composes with any
    strategy that fires Avalanche's ``before_backward`` / ``after_update`` per
    optimizer step (BI-R, Avalanche's ``Naive``, ...).

    :param c: regularisation strength (the reference's ``si_c`` / ``dg_c``).
    :param epsilon: damping of ``omega`` when a parameter barely moved (reference:
        0.1).
    :param modules: the modules whose parameters accumulate importance (BI-R: the
        VAE's ``encoder`` and ``classifier``); None: every trainable parameter of
        ``strategy.model``.

    Example::

        si = ReferenceSIPlugin(c=1.0, modules=[vae.encoder, vae.classifier])
        strategy = BrainInspiredReplay.BIR(model=vae, ..., plugins=[si])
    """

    MAX_POSITIONAL = 1

    def __init__(
        self,
        c: float,
        *,
        epsilon: float = 0.1,
        modules: Optional[Iterable[nn.Module]] = None,
    ):
        super().__init__()
        check_non_negative("c", c)
        check_positive("epsilon", epsilon)
        self.c = float(c)
        self.epsilon = float(epsilon)
        # The modules themselves are kept (not the ids of their parameters): a
        # checkpoint pickles them with the model, so they stay the model's own
        # modules after loading, whereas parameter ids change.
        self.modules: Optional[List[nn.Module]] = (
            None if modules is None else list(modules)
        )
        if self.modules is not None and not any(
            True for m in self.modules for _ in m.parameters()
        ):
            raise ValueError("`modules` have no parameters for SI to protect.")
        #: parameter values at the start of the current task (the anchor)
        self.prev: Dict[str, Tensor] = {}
        #: accumulated importances (0 before the first task ends)
        self.omega: Dict[str, Tensor] = {}
        #: running path integral of the current task
        self.W: Dict[str, Tensor] = {}
        self._p_old: Dict[str, Tensor] = {}

    def parameters_of(self, model: nn.Module) -> List[Tuple[str, nn.Parameter]]:
        """The ``(name, parameter)`` pairs of ``model`` that SI protects."""
        selected = (
            None
            if self.modules is None
            else {id(p) for m in self.modules for p in m.parameters()}
        )
        out = [
            (n, p)
            for n, p in model.named_parameters()
            if p.requires_grad and (selected is None or id(p) in selected)
        ]
        if not out:
            raise ValueError(
                "ReferenceSIPlugin: none of `modules`' parameters is a trainable "
                "parameter of the strategy's model: pass modules of that model."
            )
        return out

    # -- Avalanche callbacks ------------------------------------------------------------
    @torch.no_grad()
    def before_training_exp(self, strategy, **kwargs):
        for n, p in self.parameters_of(strategy.model):
            if n not in self.prev:  # first task: the anchor is the initial value
                self.prev[n] = p.detach().clone()
            self.W[n] = torch.zeros_like(p)
            self._p_old[n] = p.detach().clone()

    def penalty(self, model: nn.Module) -> Tensor:
        """``sum(omega * (theta - anchor)^2)`` (0 before the first task ends)."""
        total = None
        for n, p in self.parameters_of(model):
            if n in self.omega:
                term = (self.omega[n] * (p - self.prev[n]).pow(2)).sum()
                total = term if total is None else total + term
        if total is None:
            return torch.zeros((), device=next(model.parameters()).device)
        return total

    def before_backward(self, strategy, **kwargs):
        if self.c > 0 and self.omega:
            strategy.loss = strategy.loss + self.c * self.penalty(strategy.model)

    @torch.no_grad()
    def after_update(self, strategy, **kwargs):
        for n, p in self.parameters_of(strategy.model):
            if p.grad is not None:
                self.W[n].add_(-p.grad * (p.detach() - self._p_old[n]))
            self._p_old[n] = p.detach().clone()

    @torch.no_grad()
    def after_training_exp(self, strategy, **kwargs):
        for n, p in self.parameters_of(strategy.model):
            current = p.detach().clone()
            change = current - self.prev[n]
            add = self.W[n] / (change.pow(2) + self.epsilon)
            self.omega[n] = self.omega[n] + add if n in self.omega else add
            self.prev[n] = current

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> Dict:
        """Anchors, importances and the running path integral."""
        return {
            "c": self.c,
            "epsilon": self.epsilon,
            "prev": dict(self.prev),
            "omega": dict(self.omega),
            "W": dict(self.W),
            "p_old": dict(self._p_old),
        }

    def load_state_dict(self, state: Dict) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.c = float(state["c"])
        self.epsilon = float(state["epsilon"])
        self.prev = dict(state["prev"])
        self.omega = dict(state["omega"])
        self.W = dict(state["W"])
        self._p_old = dict(state["p_old"])


__all__ = ["ReferenceSIPlugin"]
