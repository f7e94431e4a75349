"""XdG: context-dependent gating of hidden units per task (Masse, Grant & Freedman, PNAS 2018).

The Task-IL baseline of the brain-inspired replay paper: each hidden layer of the
network gets, for every task, a fixed random binary mask that switches off a
proportion ``gating_prop`` of its units (the paper uses 0.9 on split MNIST: 90% of
the units of each hidden layer are gated off for a task, 10% stay on). As in van de
Ven's code (``define_XdGmask``: ``xdg_prop`` is the proportion of units *gated*,
exactly ``int(xdg_prop * units)`` of them, drawn without replacement), the masks
have an exact count (:class:`ContextGates` with ``masks="exact"``). The mask is
chosen with the task label, so XdG needs task labels at test time: it is a Task-IL
method only and refuses other scenarios.

It works on any MLP: forward hooks multiply the outputs of the hidden ``nn.Linear``
layers (by default every ``nn.Linear`` except the output layer, or those outside an
Avalanche multi-head classifier) by the mask of each sample's task; a zero before a
ReLU is a zero after it. Masks are :class:`avalanche_meta.models.gates.ContextGates`
buffers; :meth:`XdG.state_dict` / :meth:`XdG.load_state_dict` save and restore them.

Example::

    model = MLP(input_size=784, hidden_sizes=(400, 400), num_classes=10)
    strategy = Naive(model=model, optimizer=Adam(model.parameters(), 1e-3),
                     plugins=[XdG(model, n_tasks=5, gating_prop=0.9)])
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from avalanche.core import SupervisedPlugin
from avalanche.models import IncrementalClassifier, MultiHeadClassifier
from torch import Tensor, nn

from avalanche_meta.models.gates import ContextGates
from avalanche_meta.utils.validation import check_in_interval, check_positive


def hidden_linear_layers(model: nn.Module) -> List[str]:
    """Names of the hidden ``nn.Linear`` layers of ``model`` (not its output layer(s))."""
    heads = [
        name
        for name, m in model.named_modules()
        if isinstance(m, (MultiHeadClassifier, IncrementalClassifier))
    ]
    linears = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
        and not any(name == h or name.startswith(h + ".") for h in heads)
    ]
    if not heads and linears:
        linears = linears[:-1]  # the last Linear is the output layer
    return linears


class XdG(SupervisedPlugin):
    """Gates the hidden units of ``model`` with a fixed random mask per task (Task-IL).

    :param model: the network (an MLP, single- or multi-head).
    :param n_tasks: number of tasks (one mask per task is drawn now).
    :param gating_prop: proportion of each hidden layer's units switched off per
        task, in [0, 1) (paper: 0.9 on split MNIST).
    :param layers: names of the ``nn.Linear`` layers to gate (default:
        :func:`hidden_linear_layers`).
    :param scenario: the benchmark's scenario, if known; anything but ``"task"`` is
        refused.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        n_tasks: int,
        gating_prop: float = 0.9,
        layers: Optional[Sequence[str]] = None,
        scenario: str = "task",
    ):
        super().__init__()
        if scenario != "task":
            raise ValueError(
                f"XdG selects hidden units with the task label, so it needs Task-IL "
                f"(scenario='task'); got scenario={scenario!r}."
            )
        check_positive("n_tasks", n_tasks, integer=True)
        check_in_interval(
            "gating_prop",
            gating_prop,
            0.0,
            1.0,
            high_open=True,
            hint="It is the proportion of hidden units switched off for each task.",
        )
        modules = dict(model.named_modules())
        names = list(layers) if layers is not None else hidden_linear_layers(model)
        if not names:
            raise ValueError("`model` has no hidden nn.Linear layer for XdG to gate.")
        for name in names:
            if not isinstance(modules.get(name), nn.Linear):
                raise ValueError(f"`layers`: {name!r} is not an nn.Linear of `model`.")
        self.layers = names
        self.gating_prop = float(gating_prop)
        device = next(model.parameters()).device
        self.gates = ContextGates(
            n_tasks,
            [modules[n].out_features for n in names],
            gate_prop=self.gating_prop,
            masks="exact",
        ).to(device)
        self._tasks: Optional[Tensor] = None
        self._trained_tasks: set = set()
        self._handles = [
            modules[name].register_forward_hook(self._hook(i))
            for i, name in enumerate(names)
        ]

    # -- the gate -------------------------------------------------------------------------
    def _hook(self, i: int):
        def hook(module, inputs, output):
            t = self._tasks
            if t is None or t.numel() != output.shape[0]:
                raise ValueError(
                    "XdG needs the task label of every sample of the batch: run the "
                    "model through the strategy, or call `set_tasks(task_labels)` "
                    "before calling it directly."
                )
            mask = self.gates.mask(i).to(output.device)[t.to(output.device).long()]
            return output * mask

        return hook

    def set_tasks(self, task_labels: Tensor) -> None:
        """Set the task labels that select the masks of the next forward pass."""
        self._tasks = torch.as_tensor(task_labels).long().flatten()
        if self._tasks.numel() and int(self._tasks.max()) >= self.gates.n_contexts:
            raise ValueError(
                f"task label {int(self._tasks.max())} but XdG was built for "
                f"n_tasks={self.gates.n_contexts}: give n_tasks >= "
                f"{int(self._tasks.max()) + 1}."
            )

    def remove(self) -> None:
        """Remove the hooks (the model is ungated afterwards)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    # -- Avalanche callbacks ------------------------------------------------------------
    def before_training_exp(self, strategy, **kwargs):
        labels = list(getattr(strategy.experience, "task_labels", []) or [])
        if len(labels) != 1:
            raise ValueError(
                "XdG needs exactly one task label per experience (Task-IL); this "
                f"experience has {labels!r}."
            )
        t = int(labels[0])
        if t in self._trained_tasks:
            raise ValueError(
                f"XdG: task label {t} was already trained in an earlier experience, "
                "so the benchmark is not Task-IL (Class-IL and Domain-IL benchmarks "
                "give every experience task 0). XdG needs one task label per task."
            )
        self._trained_tasks.add(t)

    def before_forward(self, strategy, **kwargs):
        self.set_tasks(strategy.mb_task_id)

    def before_eval_forward(self, strategy, **kwargs):
        self.set_tasks(strategy.mb_task_id)

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> Dict:
        """The masks and the tasks trained so far."""
        return {
            "gates": self.gates.state_dict(),
            "trained_tasks": sorted(self._trained_tasks),
        }

    def load_state_dict(self, state: Dict) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.gates.load_state_dict(state["gates"])
        self._trained_tasks = set(state["trained_tasks"])


__all__ = ["XdG", "hidden_linear_layers"]
