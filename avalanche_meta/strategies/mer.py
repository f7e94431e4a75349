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
- fast path (Linear/ReLU stacks such as :class:`~avalanche_meta.models.mlp.MLP`, float32
  on the CPU): the forward pass, the cross-entropy gradient ``softmax(z) - onehot(y)``
  and the backward pass written out per layer, each weight updated in place by a
  rank-one step while the gradient for the layer below is read from the pre-update
  weights (one pass over each weight matrix). It runs as a small C kernel, compiled
  once per machine with the system C compiler into ``~/.cache/avalanche_meta`` and
  called through ``ctypes`` (``AVALANCHE_META_NO_NATIVE=1`` turns it off); on a GPU,
  or without a C compiler (a ``RuntimeWarning`` says so), the same loop runs as
  TorchScript. The arithmetic is Algorithm 1's; only the order of floating-point
  summations differs from autograd's, so results agree to rounding (about 1e-7
  relative; ``tests/test_mer.py`` checks both kernels against the autograd path and
  against a deepcopy-style reference of Algorithm 1).

Where this departs from the paper's code (``meralg1.py``): a batch holds the current
example (first) plus ``k - 1`` memories drawn uniformly with replacement, as the
algorithm box reads; the original code drew ``k`` memories, i.e. batches of ``k + 1``
samples (1,010 steps per example at k=100, s=10): pass ``replay_batch_size=k + 1``
to match it. The reservoir draw is exact (the code's ``randint(0, age)`` gave the
new example a chance of ``mem_size / (age + 1)`` instead of ``mem_size / age``).
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
from torch.optim import Optimizer

from avalanche_meta.models.mlp import MLP
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
    mask_value: float = -1e9,
) -> None:
    """One plain SGD step per row of ``X``, in order, on a ReLU MLP (in place).

    Per sample: logits ``z`` (inactive units set to ``mask_value``), loss
    ``scale * CE(z, y)`` whose gradient ``scale * (softmax(z) - onehot(y))`` is
    back-propagated with the pre-update weights (ReLU derivative from the layer's
    output, as autograd), then ``W -= lr * g h^T`` and ``b -= lr * g`` per layer.
    The losses themselves are not computed (it saves time in TorchScript): a
    non-finite loss means non-finite logits, hence non-finite parameters, which the
    caller checks after the batch.
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
            z = z.masked_fill(inactive[j], mask_value)
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
        except Exception as err:  # TorchScript missing or unsupported
            warnings.warn(
                f"MER: TorchScript could not compile the MLP fast path ({err}); it "
                "runs as plain Python (same results, slower).",
                RuntimeWarning,
            )
            _compiled_steps = mlp_sgd_steps
    return _compiled_steps


# ----------------------------------------------------------------------------------
# Native fast path: the same loop in C, compiled once per machine with the system C
# compiler and called through ctypes (no build step at install time; without a
# compiler the TorchScript version above runs).
# ----------------------------------------------------------------------------------
_C_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>

/* One plain SGD step per row of X on a ReLU MLP, in order, in place.
   W[l]: dims[l+1] x dims[l] row-major, b[l]: dims[l+1]. work: scratch of
   sum(dims) + 2 * max(dims) floats. inactive: m x dims[L] bytes or NULL.
   Returns -1, or the index of the first sample whose loss is not finite (nothing
   of that sample or after it is applied). */
int64_t mer_mlp_sgd_steps(int n_layers, const int64_t *dims, float **W, float **b,
                       const float *X, int64_t m, const int64_t *y,
                       const uint8_t *inactive, const float *scales, float lr,
                       float mask_value, float *work) {
  int64_t total = 0, widest = 0;
  for (int l = 0; l <= n_layers; ++l) {
    total += dims[l];
    widest = dims[l] > widest ? dims[l] : widest;
  }
  float *acts = work;          /* inputs of layers 1..L-1, then logits */
  float *grad = work + total;  /* two gradient vectors of `widest` floats */
  const int64_t C = dims[n_layers];
  for (int64_t j = 0; j < m; ++j) {
    const float *h = X + j * dims[0];
    const float *inputs[64];
    float *out = acts;
    inputs[0] = h;
    for (int l = 0; l < n_layers; ++l) {
      const int64_t n_out = dims[l + 1], n_in = dims[l];
      const float *Wl = W[l];
      for (int64_t o = 0; o < n_out; ++o) {
        const float *row = Wl + o * n_in;
        float s = 0.0f;
        for (int64_t i = 0; i < n_in; ++i) s += row[i] * h[i];
        s += b[l][o];
        out[o] = (l < n_layers - 1 && s < 0.0f) ? 0.0f : s; /* ReLU; NaN stays NaN */
      }
      h = out;
      inputs[l + 1] = out;
      out += n_out;
    }
    float *z = (float *)h;
    if (inactive) {
      const uint8_t *row = inactive + j * C;
      for (int64_t c = 0; c < C; ++c)
        if (row[c]) z[c] = mask_value;
    }
    float zmax = z[0];
    for (int64_t c = 1; c < C; ++c) zmax = z[c] > zmax ? z[c] : zmax;
    float sum = 0.0f;
    float *g = grad, *g_in = grad + widest;
    for (int64_t c = 0; c < C; ++c) {
      g[c] = expf(z[c] - zmax);
      sum += g[c];
    }
    const float scale = scales[j];
    const float loss = scale * (logf(sum) + zmax - z[y[j]]);
    if (!isfinite(loss)) return j;
    for (int64_t c = 0; c < C; ++c) g[c] = g[c] / sum;
    g[y[j]] -= 1.0f;
    if (scale != 1.0f)
      for (int64_t c = 0; c < C; ++c) g[c] *= scale;
    for (int l = n_layers - 1; l >= 0; --l) {
      const int64_t n_out = dims[l + 1], n_in = dims[l];
      float *Wl = W[l];
      const float *hin = inputs[l];
      if (l > 0) memset(g_in, 0, sizeof(float) * n_in);
      for (int64_t o = 0; o < n_out; ++o) {
        float *row = Wl + o * n_in;
        const float go = g[o];
        const float step = -lr * go;
        if (l > 0)
          for (int64_t i = 0; i < n_in; ++i) {
            g_in[i] += row[i] * go; /* with the pre-update weight */
            row[i] += step * hin[i];
          }
        else
          for (int64_t i = 0; i < n_in; ++i) row[i] += step * hin[i];
        b[l][o] += step;
      }
      if (l > 0) {
        for (int64_t i = 0; i < n_in; ++i)
          if (hin[i] <= 0.0f) g_in[i] = 0.0f; /* ReLU derivative, as autograd */
        float *tmp = g;
        g = g_in;
        g_in = tmp;
      }
    }
  }
  return -1;
}
"""

_native: Optional[object] = None
_native_tried = False


def _native_library():
    """The compiled C kernel (ctypes), or None when no C compiler is available."""
    global _native, _native_tried
    if _native_tried:
        return _native
    _native_tried = True
    import ctypes
    import hashlib
    import os
    import platform
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    if os.environ.get("AVALANCHE_META_NO_NATIVE"):
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        warnings.warn(
            "MER: no C compiler found; the MLP fast path runs with TorchScript "
            "(same results, slower). Install gcc/clang for the native kernel.",
            RuntimeWarning,
        )
        return None
    flags = [
        "-O3",
        "-march=native",
        "-fno-math-errno",
        "-fassociative-math",
        "-fno-signed-zeros",
        "-fno-trapping-math",
        "-shared",
        "-fPIC",
    ]
    cpu = platform.machine() + platform.node()
    try:
        with open("/proc/cpuinfo") as f:
            cpu += "".join(
                line for line in f if line.startswith(("model name", "flags"))
            )
    except OSError:
        pass
    key = hashlib.sha256((_C_SOURCE + " ".join(flags) + cpu).encode()).hexdigest()[:16]
    cache = Path(
        os.environ.get("AVALANCHE_META_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "avalanche_meta"
    )
    lib_path = cache / f"mer_kernel_{key}.so"
    try:
        if not lib_path.exists():
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory() as tmp:
                src = Path(tmp) / "mer_kernel.c"
                src.write_text(_C_SOURCE)
                tmp_lib = Path(tmp) / lib_path.name
                subprocess.run(
                    [compiler, *flags, str(src), "-o", str(tmp_lib), "-lm"],
                    check=True,
                    capture_output=True,
                    timeout=120,
                )
                # copy next to the target, then rename: atomic for concurrent
                # processes (e.g. pytest-xdist workers) building the same kernel
                staged = cache / f".{lib_path.name}.{os.getpid()}"
                shutil.copyfile(tmp_lib, staged)
                os.replace(staged, lib_path)
        lib = ctypes.CDLL(str(lib_path))
        fn = lib.mer_mlp_sgd_steps
        fn.restype = ctypes.c_int64
        fn.argtypes = [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_float,
            ctypes.c_float,
            ctypes.c_void_p,
        ]
        _native = fn
    except (OSError, subprocess.SubprocessError) as err:
        warnings.warn(
            f"MER: the native kernel could not be built ({err}); the MLP fast path "
            "runs with TorchScript (same results, slower).",
            RuntimeWarning,
        )
        _native = None
    return _native


class NativeMLPSteps:
    """Calls the C kernel on a fixed list of float32 CPU layers (pointers cached)."""

    def __init__(self, layers: List[Tuple[Tensor, Tensor]]):
        import ctypes

        self.fn = _native_library()
        self.layers = layers  # keeps the tensors alive
        n = len(layers)
        dims = [layers[0][0].shape[1]] + [w.shape[0] for w, _ in layers]
        self.n_layers = n
        self.dims = torch.tensor(dims, dtype=torch.int64)
        self.W = (ctypes.c_void_p * n)(*[w.data_ptr() for w, _ in layers])
        self.b = (ctypes.c_void_p * n)(*[b.data_ptr() for _, b in layers])
        self.work = torch.empty(sum(dims) + 2 * max(dims), dtype=torch.float32)
        if n >= 64:
            raise ValueError("the native MER kernel supports at most 63 layers.")

    @staticmethod
    def supports(layers: List[Tuple[Tensor, Tensor]]) -> bool:
        return (
            all(
                t.device.type == "cpu"
                and t.dtype == torch.float32
                and t.is_contiguous()
                for pair in layers
                for t in pair
            )
            and len(layers) < 64
        )

    def __call__(
        self,
        X: Tensor,
        y: Tensor,
        inactive: Optional[Tensor],
        scales: Tensor,
        lr: float,
        mask_value: float,
    ) -> int:
        """Run the steps; return -1 or the index of the first non-finite loss."""
        X = X.contiguous()
        y = y.contiguous()
        if inactive is not None:
            inactive = inactive.contiguous()
        return self.fn(
            self.n_layers,
            self.dims.data_ptr(),
            self.W,
            self.b,
            X.data_ptr(),
            X.shape[0],
            y.data_ptr(),
            None if inactive is None else inactive.data_ptr(),
            scales.data_ptr(),
            lr,
            mask_value,
            self.work.data_ptr(),
        )


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
    Linear/ReLU) take a compiled fast path (:attr:`inner_loop` tells which); any
    other model (and Avalanche multi-head models) the autograd path; all do the same
    arithmetic (see the module docstring). Single-sample steps use the model in train mode: BatchNorm cannot
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
    :param fast_path: use the MLP fast path (native C kernel, else TorchScript) when
        the model allows it.

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
            self._native = None
            if (
                self._layers is not None
                and NativeMLPSteps.supports(self._layers)
                and _native_library() is not None
            ):
                self._native = NativeMLPSteps(self._layers)
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
        self._scales_t = torch.tensor(scales, dtype=torch.float32)

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
        and leaves the parameters as they were before the current example
        (``theta_A0``): the autograd path and the native kernel check every loss
        before its update; the TorchScript loop checks the parameters after the
        batch (a non-finite loss has non-finite logits, hence a non-finite
        gradient).
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
                j = self._native(
                    X.to(torch.float32),
                    y.to(torch.int64),
                    inactive,
                    self._scales_t,
                    self.lr,
                    MASK_VALUE,
                )
                finite = j < 0
            else:
                compiled_mlp_sgd_steps()(
                    [w for w, _ in self._layers],
                    [b for _, b in self._layers],
                    X.contiguous(),
                    y.tolist(),
                    inactive,
                    scales,
                    self.lr,
                    MASK_VALUE,
                )
                finite = bool(torch.isfinite(flat.flat).all())
            if not finite:
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
