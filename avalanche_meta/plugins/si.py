"""Synaptic intelligence that also works on the CPU (Avalanche 0.6's plugin is inert there).

Avalanche 0.6.0's ``SynapticIntelligencePlugin`` snapshots parameters with
``param.detach().cpu().flatten()``. On a CPU tensor ``.cpu()`` is a no-op and
``.flatten()`` of a contiguous tensor is a view, so the "old" weights it stores
*are* the live weights: the path integral ``grad * (new - old)`` is always 0, and
so are the importances and the anchor distance. On the CPU the plugin (and the
``SynapticIntelligence`` strategy) trains exactly like fine-tuning. On a GPU the
``.cpu()`` copy hides the bug.

:class:`SynapticIntelligencePlugin` here is a drop-in subclass that takes real copies
in the three callbacks that snapshot weights; everything else (importance update,
penalty, ``si_lambda`` per experience, ``excluded_parameters``) is Avalanche's.
"""

from __future__ import annotations

import torch
from avalanche.training.plugins import (
    SynapticIntelligencePlugin as _AvalancheSIPlugin,
)


def _copy_weights(model, target, excluded) -> None:
    for name, p in _AvalancheSIPlugin.allowed_parameters(model, excluded):
        target[name].data = p.detach().flatten().clone().cpu()


class SynapticIntelligencePlugin(_AvalancheSIPlugin):
    """Avalanche's SI plugin with the weight snapshots copied (see the module docstring).

    Same arguments as ``avalanche.training.plugins.SynapticIntelligencePlugin``:
    ``si_lambda``, ``eps``, ``excluded_parameters``, ``device``.
    """

    def before_training_exp(self, strategy, **kwargs):
        self.create_syn_data(
            strategy.model, self.ewc_data, self.syn_data, self.excluded_parameters
        )
        with torch.no_grad():
            _copy_weights(strategy.model, self.ewc_data[0], self.excluded_parameters)
            for trajectory in self.syn_data["trajectory"].values():
                trajectory.data.fill_(0.0)

    @torch.no_grad()
    def before_training_iteration(self, strategy, **kwargs):
        _copy_weights(
            strategy.model, self.syn_data["old_theta"], self.excluded_parameters
        )

    @torch.no_grad()
    def after_training_iteration(self, strategy, **kwargs):
        s = self.syn_data
        _copy_weights(strategy.model, s["new_theta"], self.excluded_parameters)
        for name, p in self.allowed_parameters(
            strategy.model, self.excluded_parameters
        ):
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            s["grad"][name].data = grad.detach().flatten().clone().cpu()
        for name in s["trajectory"]:
            s["trajectory"][name].data += s["grad"][name].data * (
                s["new_theta"][name].data - s["old_theta"][name].data
            )


__all__ = ["SynapticIntelligencePlugin"]
