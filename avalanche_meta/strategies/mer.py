"""Meta-Experience Replay (MER), Riemer et al., ICLR 2019: Algorithm 1 (and 6, 7).

For each incoming example ``(x, y, t)``::

    theta_A0 = theta
    for i in 1..s:                                   # batches_per_example
        B_i = [(x, y, t)] + (k - 1) random memories  # replay_batch_size k
        theta_W0 = theta
        for (x_j, y_j, t_j) in B_i:                  # one plain SGD step per sample
            theta = theta - alpha * grad L(theta; x_j, y_j, t_j)
        theta = theta_W0 + beta * (theta - theta_W0)        # within-batch Reptile
    theta = theta_A0 + gamma * (theta - theta_A0)           # across-batch Reptile
    reservoir update of M with (x, y, t)

This is the product's hot path (``s * k`` sequential single-sample steps per example),
so it is written for speed without changing the arithmetic:

- the model's parameters are views of one flat buffer
  (:class:`~avalanche_meta.utils.flat.FlatParameters`): the snapshots ``theta_A0``,
  ``theta_W0`` are one ``copy_`` into preallocated buffers and each Reptile step one
  ``lerp_``; no ``deepcopy``, no ``state_dict``, no optimizer object in the loop;
- the ``s`` memory batches of an example are drawn in one call and gathered at once;
- general path (any model, Avalanche multi-head models included): autograd on one
  sample, gradients accumulated into the flat gradient buffer, ``flat -= alpha * grad``;
- fast path (Linear/ReLU stacks such as :class:`~avalanche_meta.models.mlp.MLP`): the
  forward pass, the cross-entropy gradient ``softmax(z) - onehot(y)`` and the
  backward pass written out as matrix-vector products, each layer updated in place
  with one rank-one ``addr_``, the whole batch's loop compiled with TorchScript (it
  runs as plain Python when TorchScript is unavailable). It computes the same
  gradients as autograd (``tests/test_mer.py`` checks it against the general path and
  against a deepcopy-style reference of Algorithm 1).

Where this departs from the paper's code (``meralg1.py``): the batch holds ``k - 1``
memories plus the current example (the paper's text; the code drew ``k`` memories),
and the reservoir draw is exact (the code's ``randint(0, age)`` was off by one).
"""

from __future__ import annotations

import warnings
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.plugins.evaluation import default_evaluator
from torch import Tensor, nn
from torch.optim import SGD, Optimizer

from avalanche_meta.models.mlp import MLP
from avalanche_meta.strategies.er import PerExampleReplayTemplate, _plain_sgd_lr
from avalanche_meta.utils.flat import FlatParameters
from avalanche_meta.utils.scenario import MASK_VALUE
from avalanche_meta.utils.validation import (
    check_choice,
    check_finite_loss,
    check_in_interval,
    check_positive,
)

VARIANTS = ("alg1", "alg6", "alg7")


# ----------------------------------------------------------------------------------
# The paper's operations on flat parameter buffers
# ----------------------------------------------------------------------------------
def reptile_interpolate(theta: Tensor, theta_0: Tensor, coef: float) -> None:
    """In place: ``theta = theta_0 + coef * (theta - theta_0)``; ``theta_0`` is clobbered."""
    if coef != 1.0:
        theta_0.lerp_(theta, coef)
        theta.copy_(theta_0)


def mlp_linear_layers(model: nn.Module) -> Optional[List[nn.Linear]]:
    """The Linear layers of a plain ``[Flatten] Linear (ReLU Linear)*`` network, else None.

    Recognises :class:`~avalanche_meta.models.mlp.MLP` and ``nn.Sequential`` stacks
    whose trainable parameters are exactly the layers' float32 weights and biases.
    """
    if isinstance(model, MLP):
        modules = list(model.features) + [model.classifier]
    elif type(model) is nn.Sequential:
        modules = list(model)
    else:
        return None
    if modules and isinstance(modules[0], nn.Flatten):
        if modules[0].start_dim != 1 or modules[0].end_dim != -1:
            return None
        modules = modules[1:]
    if not modules or len(modules) % 2 != 1:
        return None
    layers = []
    for i, m in enumerate(modules):
        if i % 2 == 0:
            if type(m) is not nn.Linear or m.bias is None:
                return None
            layers.append(m)
        elif type(m) is not nn.ReLU:
            return None
    params = [p for lin in layers for p in (lin.weight, lin.bias)]
    trainable = [p for p in model.parameters() if p.requires_grad]
    if len(trainable) != len(params) or any(
        a is not b for a, b in zip(trainable, params)
    ):
        return None
    if any(p.dtype != torch.float32 or not p.requires_grad for p in params):
        return None
    return layers


def mlp_sgd_steps(
    weights: List[Tensor],
    biases: List[Tensor],
    X: Tensor,
    y: List[int],
    inactive: Optional[Tensor],
    scales: List[float],
    lr: float,
) -> None:
    """One plain SGD step per row of ``X``, in order, on a ReLU MLP (in place).

    Per sample: logits ``z`` (inactive units set to ``MASK_VALUE``), loss
    ``scale * CE(z, y)`` whose gradient ``scale * (softmax(z) - onehot(y))`` is
    back-propagated with the pre-update weights (ReLU derivative from the layer's
    output, as autograd), then ``W -= lr * g h^T`` and ``b -= lr * g`` per layer.
    The losses themselves are not computed: a non-finite loss means non-finite
    logits, hence non-finite parameters, which the caller checks after the batch.
    """
    n_layers = len(weights)
    for j in range(X.shape[0]):
        h = X[j]
        inputs: List[Tensor] = [h]
        for layer in range(n_layers - 1):
            h = torch.addmv(biases[layer], weights[layer], h).relu()
            inputs.append(h)
        z = torch.addmv(biases[n_layers - 1], weights[n_layers - 1], h)
        if inactive is not None:
            z = z.masked_fill(inactive[j], MASK_VALUE)
        g = z.softmax(0)
        g[y[j]] -= 1.0
        if scales[j] != 1.0:
            g *= scales[j]
        for layer in range(n_layers - 1, 0, -1):
            h_in = inputs[layer]
            g_in = torch.ops.aten.threshold_backward(
                weights[layer].t().mv(g), h_in, 0.0
            )
            weights[layer].addr_(g, h_in, alpha=-lr)
            biases[layer].add_(g, alpha=-lr)
            g = g_in
        weights[0].addr_(g, inputs[0], alpha=-lr)
        biases[0].add_(g, alpha=-lr)


_compiled_steps: Optional[Callable] = None


def compiled_mlp_sgd_steps() -> Callable:
    """:func:`mlp_sgd_steps` compiled with TorchScript (once), or the Python function."""
    global _compiled_steps
    if _compiled_steps is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _compiled_steps = torch.jit.script(mlp_sgd_steps)
        except Exception:  # TorchScript missing or unsupported: same code, eagerly
            _compiled_steps = mlp_sgd_steps
    return _compiled_steps


# ----------------------------------------------------------------------------------
# The strategy
# ----------------------------------------------------------------------------------
class MER(PerExampleReplayTemplate):
    """Meta-Experience Replay (Riemer et al., ICLR 2019), Algorithm 1 exactly.

    Each incoming example is learned with ``s`` (``batches_per_example``) batches of
    itself plus ``k - 1`` (``replay_batch_size - 1``) memories drawn uniformly with
    replacement; within each batch one plain SGD step (lr ``alpha``, here ``lr``) per
    sample, then within-batch Reptile with ``beta``; after the ``s`` batches,
    across-batch Reptile with ``gamma``; then the reservoir update
    (:class:`~avalanche_meta.strategies._memory.ReservoirMemory`) with the example,
    so the current task is replayed while it is learned. Mini-batches of any size
    are processed example by example; streams may be online or ordinary experiences.

    Variants (``variant=``): ``"alg1"`` (default, the above); ``"alg6"``: the same
    ``s`` batches with the current example placed last in each, no within-batch
    Reptile, one Reptile step with ``gamma`` over the ``s`` batches; ``"alg7"``: one
    batch per example whose current-example loss is scaled by ``s``, then Reptile with
    ``gamma``. ``beta`` is only used by Algorithm 1.

    Differences from Avalanche's ``avalanche.training.supervised.MER`` (same name,
    other namespace): that one fills its memory only at the end of each experience
    (the current task is never replayed while it is learned), puts the whole current
    mini-batch in every inner batch, steps a user optimizer (momentum persists across
    the interpolations) and deep-copies the ``state_dict`` at every batch.

    Speed: MLPs (:class:`~avalanche_meta.models.mlp.MLP`, ``nn.Sequential`` of
    Linear/ReLU) take a compiled fast path; any other model (and Avalanche multi-head
    models) the autograd path; both do the same arithmetic (see the module
    docstring). Single-sample steps use the model in train mode: BatchNorm cannot
    work on one sample (as in the paper, use models without it).

    Callbacks: see :class:`~avalanche_meta.strategies.er.PerExampleReplayTemplate`
    (``before/after_training_iteration`` per mini-batch; no forward/backward/update
    callbacks, with a warning for plugins that implement them).

    :param model: any classifier, or an Avalanche ``MultiTaskModule``.
    :param optimizer: ``None`` (default): a plain ``SGD(model.parameters(), lr)`` is
        built for Avalanche's bookkeeping. MER does its own plain SGD steps, so a
        given optimizer must be a ``torch.optim.SGD`` without momentum or weight
        decay; its lr is then the inner ``alpha``.
    :param lr: the inner SGD learning rate ``alpha`` (default 0.03).
    :param mem_size: memory capacity (paper: 5120, 500 or 200).
    :param replay_batch_size: ``k``, the batch size including the current example.
    :param batches_per_example: ``s``.
    :param beta: within-batch Reptile coefficient in (0, 1] (Algorithm 1; default
        0.03).
    :param gamma: across-batch Reptile coefficient in (0, 1].
    :param variant: ``"alg1"``, ``"alg6"`` or ``"alg7"``.
    :param scenario: ``"task"``, ``"class"`` or ``"domain"`` (the MNIST protocols).
    :param num_classes: output units (``None``: inferred from the model's output).
    :param seed: seed of the memory's random generator (reservoir and replay draws).
    :param fast_path: use the MLP fast path when the model allows it.

    Other keyword arguments are Avalanche's (``train_mb_size``, ``eval_mb_size``,
    ``device``, ``plugins``, ``evaluator``, ``eval_every``, ...).

    Example::

        from avalanche_meta.models.mlp import MLP
        from avalanche_meta.strategies import MER

        strategy = MER(model=MLP(784, (100, 100), 10), lr=0.1, mem_size=200,
                       replay_batch_size=10, batches_per_example=5, beta=0.01,
                       gamma=1.0, scenario="domain")
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
            lr = 0.03 if lr is None else lr
            check_positive("lr", lr)
            optimizer = SGD(model.parameters(), lr=lr)
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
            self._layers = (
                None
                if layers is None
                else [(lin.weight.detach(), lin.bias.detach()) for lin in layers]
            )
        return self._flat

    @property
    def uses_fast_path(self) -> bool:
        """True when the compiled MLP fast path runs the inner loop."""
        self._bind()
        return self._layers is not None

    # -- Algorithm 1 / 6 / 7 ---------------------------------------------------------
    def learn_example(self, x: Tensor, y: Tensor, t: Tensor) -> None:
        flat = self._bind()
        s = self.batches_per_example
        n_batches = 1 if self.variant == "alg7" else s
        xb, yb, tb = self.replay_batch(x[0], y[0], t[0], n_batches)
        if self.variant == "alg6":  # the current example last in each batch
            xb, yb, tb = (torch.roll(v, -1, dims=1) for v in (xb, yb, tb))
        m = yb.shape[1]
        inactive = self.inactive_units(tb.reshape(-1))
        if inactive is not None:
            inactive = inactive.view(n_batches, m, -1)
        scales = [1.0] * m
        if self.variant == "alg7":
            scales[0] = float(s)

        theta_A0 = self._theta_A0
        theta_A0.copy_(flat.flat)
        for i in range(n_batches):
            if self.variant == "alg1":
                self._theta_W0.copy_(flat.flat)
            self.sgd_steps(
                xb[i], yb[i], tb[i], None if inactive is None else inactive[i], scales
            )
            if self.variant == "alg1":  # within-batch Reptile
                reptile_interpolate(flat.flat, self._theta_W0, self.beta)
        reptile_interpolate(flat.flat, theta_A0, self.gamma)  # across-batch Reptile

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

        A non-finite loss raises :class:`~avalanche_meta.utils.validation.NonFiniteLossError`
        and leaves the parameters as they were before the current example: the
        general path checks every loss before its backward pass; the fast path
        checks the parameters after the batch (a non-finite loss has non-finite
        logits, hence a non-finite gradient) and restores ``theta_A0``.
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
            compiled_mlp_sgd_steps()(
                [w for w, _ in self._layers],
                [b for _, b in self._layers],
                X.contiguous(),
                y.tolist(),
                inactive,
                scales,
                self.lr,
            )
            if not bool(torch.isfinite(flat.flat).all()):
                flat.flat.copy_(self._theta_A0)
                check_finite_loss(
                    torch.tensor(float("nan")),
                    "MER (an inner SGD step; parameters restored to before the example)",
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
                if not bool(torch.isfinite(loss)):
                    flat.flat.copy_(self._theta_A0)
                    check_finite_loss(
                        loss,
                        f"MER (inner SGD step on sample {j}; parameters restored to "
                        "before the example)",
                    )
                loss.backward()
            flat.flat.add_(flat.flat_grad, alpha=-self.lr)


__all__ = ["MER", "mlp_linear_layers", "mlp_sgd_steps", "reptile_interpolate"]
