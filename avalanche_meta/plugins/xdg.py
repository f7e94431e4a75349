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

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from avalanche.core import SupervisedPlugin
from avalanche.models import (
    IncrementalClassifier,
    MultiHeadClassifier,
    MultiTaskModule,
)
from torch import Tensor, nn

from avalanche_meta.models.gates import ContextGates
from avalanche_meta.strategies._keywords import KeywordOnlyConstruction
from avalanche_meta.utils.scenario import experience_identity
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


class XdG(KeywordOnlyConstruction, SupervisedPlugin):
    """Gates the hidden units of ``model`` with a fixed random mask per task (Task-IL).

    Where the task labels come from. Each gated layer's forward hook multiplies its
    output by the mask of each sample's task, so the plugin must know the task
    labels of every forward pass:

    - Avalanche's strategies (``Naive``, ...): ``before_forward`` /
      ``before_eval_forward`` set them to the mini-batch's (:meth:`set_tasks`);
    - this package's ER, MER and NeuronCalibration, which call the model on replay
      and memory batches outside those callbacks, give the task labels of every
      forward pass themselves (they call :meth:`set_tasks`); MER then runs its
      autograd inner loop (its compiled MLP loops do not see forward hooks);
    - passes made by other plugins after training on an experience (e.g.
      ``EWCPlugin``'s importance pass in ``after_training_exp``, over the
      experience's own data) use the experience's task label: XdG requires one task
      label per experience, so every sample of such a pass has it;
    - a forward pass on a batch of another size than the labels given (e.g. a
      plugin replaying buffer samples before the strategy's forward) is an error
      that says so. An Avalanche multi-head model (``MultiTaskModule``) receives
      the task labels of every forward pass, and XdG reads them there (a forward
      pre-hook), so any plugin's pass on such a model is gated right; a model that
      splits a mixed-task batch per task is matched sub-batch by sub-batch.

    The hooks follow the layers by name: when a strategy replaces the gated layers
    (``NeuronCalibration`` calibrates the model it is given, which swaps every
    ``nn.Linear`` for a ``CalibratedLinear``), the hooks move to the new layers at
    the next ``before_training`` / ``before_eval`` (:meth:`attach`).

    :param model: the network (an MLP, single- or multi-head).
    :param n_tasks: number of tasks (one mask per task is drawn now).
    :param gating_prop: proportion of each hidden layer's units switched off per
        task, in [0, 1) (paper: 0.9 on split MNIST).
    :param layers: names of the ``nn.Linear`` layers to gate (default:
        :func:`hidden_linear_layers`).
    :param scenario: the benchmark's scenario, if known; anything but ``"task"`` is
        refused.

    Construction: ``model`` may be positional, the rest are keywords; an unknown
    keyword is an error naming its close matches.
    """

    MAX_POSITIONAL = 1

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
        self.model = model
        self._tasks: Optional[Tensor] = None
        self._experience_task: Optional[int] = None
        self._use_experience_task = False
        self._queues: Dict[int, List[Tuple[int, int]]] = {}
        self._split = False
        self._trained_tasks: set = set()
        self._owners: Dict[int, Tuple] = {}
        self._train_calls = 0
        self._handles: List = []
        self._hooked: List[nn.Module] = []
        self.attach(model)

    # -- hooks ----------------------------------------------------------------------------
    def attach(self, model: Optional[nn.Module] = None) -> None:
        """(Re-)register the hooks on the layers called :attr:`layers` in ``model``.

        Nothing changes when the hooks are on those layers already. Called at
        ``before_training`` and ``before_eval`` with the strategy's model, so that a
        strategy that replaced the layers (e.g. calibrated them) keeps its gates.

        :raises ValueError: ``model`` is not the model XdG was built for, or lost a
            gated layer.
        """
        model = self.model if model is None else model
        if model is not self.model:
            raise ValueError(
                "XdG was built for another model than the strategy's: build it with "
                "the strategy's model (XdG(strategy_model, ...))."
            )
        modules = dict(model.named_modules())
        current = [modules.get(name) for name in self.layers]
        for name, m in zip(self.layers, current):
            if not isinstance(m, nn.Linear):
                raise ValueError(
                    f"XdG gates the layer {name!r}, which the model no longer has as "
                    "an nn.Linear: build XdG after any change of the model's layers."
                )
        self.gates.to(next(model.parameters()).device)  # no copy per forward
        if len(self._hooked) == len(current) and all(
            a is b for a, b in zip(self._hooked, current)
        ):
            return
        self.remove()
        self._hooked = current
        self._split = isinstance(model, MultiTaskModule)
        self._handles = [
            m.register_forward_hook(self._hook(i)) for i, m in enumerate(current)
        ]
        if isinstance(model, MultiTaskModule):
            self._handles.append(
                model.register_forward_pre_hook(self._root_hook(), with_kwargs=True)
            )

    def _root_hook(self):
        # A closure, not a bound method: deep copies of the model (LwF's previous
        # model) then share this plugin instead of copying it.
        def hook(module, args, kwargs):
            t = kwargs.get("task_labels", args[1] if len(args) > 1 else None)
            self._queues = {}
            if isinstance(t, int):
                t = torch.full((args[0].shape[0],), t, dtype=torch.long)
            if isinstance(t, Tensor) and t.dim() > 0:
                # a multi-head model is given the task labels: use them directly
                self._tasks = t.long().flatten()
                self._use_experience_task = False

        return hook

    def _split_queue(self, i: int) -> List[Tuple[int, int]]:
        """The (task, count) sub-batches a multi-head model that splits its batch
        per task (Avalanche's ``MultiTaskModule.forward``: sorted task labels) will
        pass through layer ``i``; computed when first needed (it reads the counts
        back to the host, as that forward itself does)."""
        if i not in self._queues:
            t = self._tasks
            if t is None or t.numel() < 2:
                self._queues[i] = []
            else:
                uniq, counts = torch.unique(t, return_counts=True)
                self._queues[i] = list(zip(uniq.tolist(), counts.tolist()))
        return self._queues[i]

    def _hook(self, i: int):
        def hook(module, inputs, output):
            n = output.shape[0]
            if self._tasks is not None and self._tasks.numel() == n:
                t = self._tasks  # the whole batch (a split one has smaller parts)
            elif self._split and self._split_queue(i):
                queue = self._split_queue(i)
                task, count = queue.pop(0)
                if count != n:
                    raise ValueError(
                        "XdG: a multi-head model split its mixed-task batch in an "
                        f"unexpected way (a part of {n} samples, expected {count} of "
                        f"task {task}); give it batches of one task."
                    )
                t = torch.full((n,), task, dtype=torch.long, device=output.device)
            elif self._use_experience_task and self._experience_task is not None:
                t = torch.full(
                    (n,), self._experience_task, dtype=torch.long, device=output.device
                )
            elif self._tasks is None:
                raise ValueError(
                    "XdG needs the task label of every sample of the batch: run the "
                    "model through the strategy, or call `set_tasks(task_labels)` "
                    "before calling it directly."
                )
            else:
                raise ValueError(
                    f"XdG: the model was called on a batch of {n} samples but the task "
                    f"labels given are for {self._tasks.numel()}: some code (another "
                    "plugin, e.g. one that replays buffer samples outside the "
                    "strategy's forward) runs the model without telling XdG the task "
                    "labels; XdG cannot gate it. Call `set_tasks(task_labels)` before "
                    "such a forward pass, or leave that plugin out."
                )
            mask = self.gates.mask(i).to(output.device)[t.to(output.device)]
            return output * mask

        return hook

    def set_tasks(self, task_labels: Tensor, *, check: bool = True) -> None:
        """Set the task labels that select the masks of the next forward passes.

        :param task_labels: one task label per sample.
        :param check: check that every label has a mask (one host sync; callers
            that checked the labels already pass ``False``).
        """
        self._tasks = torch.as_tensor(task_labels).long().flatten()
        self._use_experience_task = False
        if (
            check
            and self._tasks.numel()
            and int(self._tasks.max()) >= self.gates.n_contexts
        ):
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
        self._hooked = []

    # -- Avalanche callbacks ------------------------------------------------------------
    def before_training(self, strategy, **kwargs):
        self._train_calls += 1
        self.attach(strategy.model)

    def before_eval(self, strategy, **kwargs):
        self.attach(strategy.model)

    def before_training_exp(self, strategy, **kwargs):
        key, labels = experience_identity(strategy.experience, self._train_calls)
        if len(labels) != 1:
            raise ValueError(
                "XdG needs exactly one task label per experience (Task-IL); this "
                f"experience has {labels!r}."
            )
        t = int(labels[0])
        if t >= self.gates.n_contexts:
            raise ValueError(
                f"task label {t} but XdG was built for n_tasks="
                f"{self.gates.n_contexts}: give n_tasks >= {t + 1}."
            )
        owner = self._owners.get(t)
        if t in self._trained_tasks and owner != key:
            raise ValueError(
                f"XdG: task label {t} was already trained in an earlier experience, "
                "so the benchmark is not Task-IL (Class-IL and Domain-IL benchmarks "
                "give every experience task 0). XdG needs one task label per task."
            )
        self._trained_tasks.add(t)
        self._owners.setdefault(t, key)
        self._experience_task = t

    def before_training_epoch(self, strategy, **kwargs):
        self._use_experience_task = False

    def after_training_epoch(self, strategy, **kwargs):
        # Until the next epoch or evaluation, passes without labels (e.g. EWC's
        # importance pass over this experience's data) use the experience's task.
        self._tasks = None
        self._use_experience_task = True

    def before_forward(self, strategy, **kwargs):
        self.set_tasks(strategy.mb_task_id)

    def before_eval_forward(self, strategy, **kwargs):
        self.set_tasks(strategy.mb_task_id)

    def before_eval_exp(self, strategy, **kwargs):
        self._tasks = None
        self._use_experience_task = False

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> Dict:
        """The masks and the tasks trained so far."""
        return {
            "gates": self.gates.state_dict(),
            "trained_tasks": sorted(self._trained_tasks),
            "owners": dict(self._owners),
            "train_calls": self._train_calls,
        }

    def load_state_dict(self, state: Dict) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.gates.load_state_dict(state["gates"])
        self._trained_tasks = set(state["trained_tasks"])
        self._owners = dict(state.get("owners", {}))
        self._train_calls = int(state.get("train_calls", 0))


#: The name Avalanche users look for (``XdG`` is the same class).
XdGPlugin = XdG


__all__ = ["XdG", "XdGPlugin", "hidden_linear_layers"]
