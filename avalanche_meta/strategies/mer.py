"""Meta-Experience Replay (MER), Riemer et al., ICLR 2019: Algorithm 1 (and 6, 7).

For each incoming example ``(x, y, t)`` (Algorithm 1)::

    theta_A0 = theta
    for i in 1..s:                                   # batches_per_example
        B_i = [(x, y, t)] + memories drawn uniformly # k of them (convention="original")
        theta_W0 = theta
        for (x_j, y_j, t_j) in B_i:                  # one plain SGD step per sample
            theta = theta - alpha * grad L(theta; x_j, y_j, t_j)
        theta = theta_W0 + beta * (theta - theta_W0)        # within-batch Reptile
    theta = theta_A0 + gamma * (theta - theta_A0)           # across-batch Reptile
    reservoir update of M with (x, y, t)

Conventions (``convention=``, see :mod:`avalanche_meta.strategies.er`):

- ``"original"``: as the code that produced the published numbers
  (``model/meralg1.py``, ``meralg6.py``, ``meralg7.py`` of mattriemer/MER): a batch
  is the current example plus ``min(k, |M|)`` memories (``k + 1`` samples: 1,010
  single-sample steps per example at k=100, s=10; the first example is learned
  alone); reservoir slot ``randint(0, age)`` inclusive. Algorithm 6: the current
  example last, Reptile with ``gamma`` after **every** batch (the code takes the
  snapshot inside the batch loop; its runs use the default ``s = 1``). Algorithm 7:
  one batch with the current example at a random position (its loss scaled by
  ``s``), Reptile with ``gamma``; nothing is learned from the very first example of
  the stream (it only enters the memory). The CLI presets use this convention.
- ``"paper"`` (the class default): as the algorithm boxes read: ``k`` samples per
  batch (the current example and ``k - 1`` memories), exact reservoir sampling;
  Algorithm 6: the current example last in each of the ``s`` batches, one Reptile
  step with ``gamma`` over them; Algorithm 7: the current example first.

Memories are drawn uniformly with replacement (the original reshuffles its memory
before each draw: the same distribution). The random position of Algorithm 7's
current example is drawn uniformly (the original shuffles the whole batch; the
memories being i.i.d. draws, only the current example's position matters).

Speed without changing the arithmetic: the parameters are views of one flat buffer
(:class:`~avalanche_meta.utils.flat.FlatParameters`), so the snapshots are one
``copy_`` and each Reptile step one ``lerp_``; an example's ``s`` memory batches are
drawn and gathered at once; for Linear/ReLU MLPs the single-sample steps run in a
compiled loop (:mod:`avalanche_meta.strategies._mer_kernels`: a C kernel, else
TorchScript), any other model with autograd. ``tests/test_mer.py`` checks all three
against a deepcopy-style Algorithm 1/6/7, and ``benchmarks/parity_mer.py`` against
the original code.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.plugins.evaluation import default_evaluator
from torch import Tensor, nn
from torch.optim import Optimizer

from avalanche_meta.strategies._mer_kernels import (
    NativeMLPSteps,
    check_labels,
    compiled_mlp_sgd_steps,
    mlp_linear_layers,
    mlp_sgd_steps,
    native_library,
)
from avalanche_meta.strategies.er import (
    PerExampleReplayTemplate,
    _default_sgd,
    _plain_sgd_lr,
)
from avalanche_meta.utils.flat import FlatParameters
from avalanche_meta.utils.scenario import MASK_VALUE
from avalanche_meta.utils.validation import (
    check_choice,
    check_finite_loss,
    check_in_interval,
    check_positive,
)

VARIANTS = ("alg1", "alg6", "alg7")


def reptile_interpolate(theta: Tensor, theta_0: Tensor, coef: float) -> None:
    """In place: ``theta = theta_0 + coef * (theta - theta_0)``; ``theta_0`` is clobbered."""
    if coef != 1.0:
        theta_0.lerp_(theta, coef)
        theta.copy_(theta_0)


# ----------------------------------------------------------------------------------
# The strategy
# ----------------------------------------------------------------------------------
class MER(PerExampleReplayTemplate):
    """Meta-Experience Replay (Riemer et al., ICLR 2019), Algorithm 1 (6, 7).

    Each incoming example is learned with ``s`` (``batches_per_example``) batches of
    itself plus memories drawn uniformly with replacement (``k`` =
    ``replay_batch_size`` of them with ``convention="original"``, ``k - 1`` with
    ``"paper"``); within each batch one plain SGD step (lr ``alpha``, here ``lr``) per
    sample, then within-batch Reptile with ``beta``; after the ``s`` batches,
    across-batch Reptile with ``gamma``; then the reservoir update
    (:class:`~avalanche_meta.strategies._memory.ReservoirMemory`) with the example,
    so the current task is replayed while it is learned. Mini-batches of any size
    are processed example by example; streams may be online or ordinary experiences.

    Variants (``variant=``): ``"alg1"`` (default, the above); ``"alg6"``: batches
    with the current example placed last, no within-batch Reptile, Reptile with
    ``gamma`` (after every batch with ``"original"``, once over the ``s`` batches
    with ``"paper"``); ``"alg7"``: one batch per example whose current-example loss
    is scaled by ``s``, then Reptile with ``gamma`` (``"original"``: the current
    example at a random position, nothing learned from the stream's first
    example). ``beta`` is only used by Algorithm 1. The module docstring lists what
    each convention follows.

    Differences from Avalanche's ``avalanche.training.supervised.MER`` (same name,
    other namespace): that one fills its memory only at the end of each experience
    (the current task is never replayed while it is learned), puts the whole current
    mini-batch in every inner batch, steps a user optimizer (momentum persists across
    the interpolations) and deep-copies the ``state_dict`` at every batch.

    Speed: MLPs (:class:`~avalanche_meta.models.mlp.MLP`, ``nn.Sequential`` of
    Linear/ReLU) take a compiled fast path (:attr:`inner_loop` tells which); any
    other model (and Avalanche multi-head models) the autograd path; all do the same
    arithmetic (see the module docstring). Single-sample steps use the model in train mode: BatchNorm cannot
    work on one sample (as in the paper, use models without it).

    Callbacks and plugins: see
    :class:`~avalanche_meta.strategies.er.PerExampleReplayTemplate`
    (``before/after_training_iteration`` per mini-batch; no forward/backward/update
    callbacks: a plugin that implements them, such as ``EWCPlugin`` or
    ``LwFPlugin``, is refused at construction with the reason; ``ReplayPlugin``
    composes; XdG is told the task labels of every forward pass, and then the
    autograd inner loop runs, since the compiled loops would bypass its hooks).

    GPU: the TorchScript and autograd inner loops read nothing back to the host
    per batch (labels enter as a one-hot matrix on the device, masks are built
    without boolean indexing); a non-finite loss is detected once per incoming
    example (see :meth:`sgd_steps`), the parameters restored to before the
    example and :class:`~avalanche_meta.utils.validation.NonFiniteLossError`
    raised. The native C kernel is CPU-only and checks every loss.

    :param model: any classifier, or an Avalanche ``MultiTaskModule``.
    :param optimizer: ``None`` (default): a plain ``SGD(model.parameters(), lr)`` is
        built for Avalanche's bookkeeping. MER does its own plain SGD steps, so a
        given optimizer must be a ``torch.optim.SGD`` without momentum or weight
        decay; its lr is then the inner ``alpha``.
    :param lr: the inner SGD learning rate ``alpha`` (default 0.03).
    :param mem_size: memory capacity (paper: 5120, 500 or 200).
    :param replay_batch_size: ``k``: memories per batch (``"original"``), or the
        batch size including the current example (``"paper"``).
    :param batches_per_example: ``s``.
    :param beta: within-batch Reptile coefficient in (0, 1] (Algorithm 1; default
        0.03).
    :param gamma: across-batch Reptile coefficient in (0, 1].
    :param variant: ``"alg1"``, ``"alg6"`` or ``"alg7"``.
    :param scenario: ``"task"``, ``"class"`` or ``"domain"`` (the MNIST protocols).
    :param num_classes: output units (``None``: inferred from the model's output).
    :param seed: seed of the memory's random generator (reservoir and replay draws).
    :param fast_path: use the MLP fast path (native C kernel, else TorchScript) when
        the model allows it.
    :param convention: ``"paper"`` (default) or ``"original"``: which of the paper's
        boxes or the original code to follow (module docstring). Reproductions of
        the published numbers use ``"original"``.

    Other keyword arguments are Avalanche's (``train_mb_size``, ``eval_mb_size``,
    ``device``, ``plugins``, ``evaluator``, ``eval_every``, ...).

    Example::

        from avalanche_meta.models.mlp import MLP
        from avalanche_meta.strategies import MER

        strategy = MER(model=MLP(784, (100, 100), 10), lr=0.1, mem_size=200,
                       replay_batch_size=10, batches_per_example=5, beta=0.01,
                       gamma=1.0, scenario="domain", convention="original")
        for experience in benchmark.train_stream:
            strategy.train(experience)
            strategy.eval(benchmark.test_stream)
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: Optional[Optimizer] = None,
        lr: Optional[float] = None,
        mem_size: int = 5120,
        replay_batch_size: int = 100,
        batches_per_example: int = 10,
        beta: Optional[float] = None,
        gamma: float = 1.0,
        variant: str = "alg1",
        scenario: str = "domain",
        num_classes: Optional[int] = None,
        seed: Optional[int] = None,
        fast_path: bool = True,
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
        check_choice("variant", variant, VARIANTS)
        if beta is not None and variant != "alg1":
            raise ValueError(
                f"`beta` is the within-batch Reptile rate of Algorithm 1; variant "
                f"{variant!r} has none. Leave `beta` unset or use variant='alg1'."
            )
        beta = 0.03 if beta is None else beta
        check_in_interval("beta", beta, 0, 1, low_open=True)
        check_in_interval("gamma", gamma, 0, 1, low_open=True)
        check_positive("batches_per_example", batches_per_example, integer=True)
        if optimizer is None:
            optimizer, lr = _default_sgd(model, lr)
        else:
            lr = _plain_sgd_lr(optimizer, lr, "MER")
            check_positive("lr", lr)
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
        self.lr = float(lr)
        self.alpha = self.lr
        self.batches_per_example = batches_per_example
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.variant = variant
        self.fast_path = fast_path
        self._flat: Optional[FlatParameters] = None
        self._layers: Optional[List[Tuple[Tensor, Tensor]]] = None
        self._scales_t = torch.ones(0)
        self._loss_flag: Optional[Tensor] = None

    # -- flat parameters -----------------------------------------------------------
    def _bind(self) -> FlatParameters:
        """Parameters as views of one flat buffer (re-made if the model changed)."""
        if self._flat is None or not self._flat.is_bound:
            if self._flat is None or self._flat.module is not self.model:
                self._flat = FlatParameters(self.model)
            else:
                self._flat.rebind()
            n = len(self._flat)
            ref = self._flat.flat
            self._theta_A0 = torch.empty(n, dtype=ref.dtype, device=ref.device)
            self._theta_W0 = torch.empty_like(self._theta_A0)
            layers = mlp_linear_layers(self.model) if self.fast_path else None
            if (
                layers is not None
                and self.num_classes is not None
                and layers[-1].out_features != self.num_classes
            ):
                raise ValueError(
                    f"the model gives {layers[-1].out_features} outputs but "
                    f"`num_classes` is {self.num_classes}: build the model with "
                    f"{self.num_classes} outputs or pass the matching `num_classes`."
                )
            self._layers = (
                None
                if layers is None
                else [(lin.weight.detach(), lin.bias.detach()) for lin in layers]
            )
            self._native = None
            if self._layers is not None and NativeMLPSteps.supports(self._layers):
                fn = native_library()  # decided once per process: same for all
                if fn is not None:
                    self._native = NativeMLPSteps(self._layers, fn)
        return self._flat

    @property
    def uses_fast_path(self) -> bool:
        """True when the MLP fast path (native or TorchScript) runs the inner loop."""
        self._bind()
        return self._layers is not None

    @property
    def inner_loop(self) -> str:
        """Which inner loop runs: ``"native"``, ``"torchscript"`` or ``"autograd"``."""
        self._bind()
        if self._layers is None:
            return "autograd"
        return "native" if self._native is not None else "torchscript"

    def __getstate__(self):
        # Avalanche's checkpoints pickle the whole strategy: drop the flat-buffer
        # bookkeeping and the native kernel's pointers; _bind() rebuilds them.
        state = self.__dict__.copy()
        for name in ("_flat", "_layers", "_native", "_theta_A0", "_theta_W0"):
            state[name] = None
        return state

    # -- Algorithm 1 / 6 / 7 ---------------------------------------------------------
    def learn_example(self, x: Tensor, y: Tensor, t: Tensor) -> None:
        flat = self._bind()
        variant, original = self.variant, self.convention == "original"
        s = self.batches_per_example
        if variant == "alg7" and original and self.memory.n_seen == 0:
            return  # meralg7.py learns nothing from the stream's first example
        n_batches = 1 if variant == "alg7" else s
        position = {"alg1": "first", "alg6": "last", "alg7": "first"}[variant]
        if variant == "alg7" and original:
            position = "random"
        xb, yb, tb, pos = self.replay_batch(x[0], y[0], t[0], n_batches, position)
        m = yb.shape[1]
        inactive = self.inactive_units(tb.reshape(-1))
        if inactive is not None:
            inactive = inactive.view(n_batches, m, -1)
        scales = [1.0] * m
        if variant == "alg7":  # one batch: the current example's loss times s
            scales[pos[0]] = float(s)
        self._scales_t = torch.tensor(scales, dtype=torch.float32)
        # Reptile after every batch: Algorithm 1 (beta), Algorithm 6 of the code (gamma)
        per_batch = {"alg1": self.beta}.get(variant)
        if variant == "alg6" and original:
            per_batch = self.gamma

        self._theta_A0.copy_(flat.flat)
        for i in range(n_batches):
            if per_batch is not None:
                self._theta_W0.copy_(flat.flat)
            self.sgd_steps(
                xb[i], yb[i], tb[i], None if inactive is None else inactive[i], scales
            )
            if per_batch is not None:
                reptile_interpolate(flat.flat, self._theta_W0, per_batch)
        if self._native is None:  # before the last Reptile step clobbers theta_A0
            self._check_example_finite()
        if not (variant == "alg6" and original):  # across-batch Reptile
            reptile_interpolate(flat.flat, self._theta_A0, self.gamma)

    def _check_example_finite(self) -> None:
        """Once per example (TorchScript and autograd loops): a non-finite loss in
        any inner step leaves non-finite parameters (or sets the loss flag); then
        restore ``theta_A0`` and raise. One host sync per example, none per batch."""
        flat = self._flat
        bad = ~torch.isfinite(flat.flat).all()
        if self._loss_flag is not None:
            bad = bad | self._loss_flag
            self._loss_flag = None
        if bool(bad):
            flat.flat.copy_(self._theta_A0)
            check_finite_loss(
                torch.tensor(float("nan")),
                "MER (an inner SGD step of this example; parameters restored to "
                "before the example)",
            )

    @torch.no_grad()
    def sgd_steps(
        self,
        x: Tensor,
        y: Tensor,
        t: Tensor,
        inactive: Optional[Tensor],
        scales: List[float],
    ) -> None:
        """One plain SGD step (lr ``alpha``) per sample of the batch, in order.

        Non-finite losses are caught and never trained on: the example's parameters
        go back to ``theta_A0`` (before the example) and
        :class:`~avalanche_meta.utils.validation.NonFiniteLossError` is raised. The
        native kernel checks every loss before its update (on the CPU: no cost).
        The TorchScript and autograd loops, which also run on GPUs, never read a
        value back to the host inside the loop: the autograd loop accumulates a
        non-finite-loss flag on the device, and :meth:`learn_example` checks it and
        the parameters once per incoming example (a non-finite loss has non-finite
        logits, hence a non-finite gradient and parameters), then restores
        ``theta_A0`` and raises.
        """
        flat = self._flat
        if self._layers is not None:
            X = x.reshape(x.shape[0], -1)
            d_in = self._layers[0][0].shape[1]
            if X.shape[1] != d_in:
                raise ValueError(
                    f"the MLP expects {d_in} input features per sample, got shape "
                    f"{tuple(x.shape[1:])}."
                )
            if self._native is not None:
                if len(scales) != self._scales_t.numel():
                    self._scales_t = torch.tensor(scales, dtype=torch.float32)
                try:
                    j = self._native(
                        X.to(torch.float32),
                        y.to(torch.int64),
                        inactive,
                        self._scales_t,
                        self.lr,
                        MASK_VALUE,
                    )
                except ValueError:  # bad inputs: nothing of this example is kept
                    flat.flat.copy_(self._theta_A0)
                    raise
                if j >= 0:
                    flat.flat.copy_(self._theta_A0)
                    check_finite_loss(
                        torch.tensor(float("nan")),
                        f"MER (inner SGD step on sample {j}; parameters restored to "
                        "before the example)",
                    )
                return
            w_last = self._layers[-1][0]
            n_out = w_last.shape[0]
            if y.device.type == "cpu":  # free on the CPU; labels are checked per
                try:  # mini-batch by the template on other devices
                    check_labels(y, n_out)
                except ValueError:
                    flat.flat.copy_(self._theta_A0)
                    raise
            Y = torch.zeros(
                (y.shape[0], n_out), dtype=w_last.dtype, device=w_last.device
            ).scatter_(1, y.reshape(-1, 1).to(w_last.device), 1.0)
            compiled_mlp_sgd_steps()(
                [w for w, _ in self._layers],
                [b for _, b in self._layers],
                X.to(w_last.dtype).contiguous(),
                Y,
                inactive,
                scales,
                self.lr,
                MASK_VALUE,
            )
            return
        for j in range(x.shape[0]):
            flat.flat_grad.zero_()
            with torch.enable_grad():
                z = self._raw_logits(x[j : j + 1], t[j : j + 1])
                if inactive is not None:
                    z = z.masked_fill(inactive[j : j + 1], MASK_VALUE)
                loss = F.cross_entropy(z, y[j : j + 1])
                if scales[j] != 1.0:
                    loss = loss * scales[j]
                bad = ~torch.isfinite(loss.detach())
                self._loss_flag = (
                    bad if self._loss_flag is None else self._loss_flag | bad
                )
                loss.backward()
            flat.flat.add_(flat.flat_grad, alpha=-self.lr)


__all__ = [
    "MER",
    "compiled_mlp_sgd_steps",
    "mlp_linear_layers",
    "mlp_sgd_steps",
    "reptile_interpolate",
]
