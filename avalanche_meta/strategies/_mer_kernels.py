"""MER's inner loop for ReLU MLPs: a C kernel, a TorchScript loop and their loader.

MER (:mod:`avalanche_meta.strategies.mer`) does ``s * (k + 1)`` sequential
single-sample SGD steps per incoming example. For Linear/ReLU stacks (such as
:class:`~avalanche_meta.models.mlp.MLP`, float32) this module runs those steps
without autograd: per sample the forward pass, the cross-entropy gradient
``scale * (softmax(z) - onehot(y))`` and the backward pass written out per layer,
each weight updated in place by a rank-one step while the gradient for the layer
below is read from the pre-update weights (one pass over each weight matrix).

- :class:`NativeMLPSteps`: the loop as a small C kernel, compiled once per machine
  with the system C compiler into ``~/.cache/avalanche_meta`` (or
  ``$AVALANCHE_META_CACHE``) and called through ``ctypes``. The kernel checks its
  inputs (layer count in 1..63, positive widths, labels in ``[0, C)``, batch size)
  before it writes anything and returns an error code that :class:`NativeMLPSteps`
  turns into a ``ValueError``. A cached library that fails to load is rebuilt once.
  ``AVALANCHE_META_NO_NATIVE=1`` (or ``true``/``yes``) turns it off; ``0``, ``false``,
  ``no`` or an empty value leave it on.
- :func:`mlp_sgd_steps` / :func:`compiled_mlp_sgd_steps`: the same loop in
  TorchScript (GPU, or no C compiler: a ``RuntimeWarning`` says so).

The decision native / TorchScript is taken once per process, under a lock
(:func:`native_library`): every strategy of a process gets the same inner loop.
The arithmetic is the autograd path's; only the order of floating-point summations
differs, so results agree to rounding (``tests/test_mer.py`` checks it).
"""

from __future__ import annotations

import threading
import warnings
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from avalanche_meta.models.mlp import MLP

#: Most layers the C kernel supports (its per-sample pointer table has 64 slots).
MAX_LAYERS = 63


def mlp_linear_layers(model: nn.Module) -> Optional[List[nn.Linear]]:
    """The Linear layers of a plain ``[Flatten] Linear (ReLU Linear)*`` network, else None.

    Recognises :class:`~avalanche_meta.models.mlp.MLP` and ``nn.Sequential`` stacks
    whose trainable parameters are exactly the layers' float32 weights and biases,
    and that no forward hook changes (a model with forward or forward-pre hooks,
    e.g. XdG's gates, is not recognised: the compiled loops would bypass them).
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
    glob = nn.modules.module
    if (
        any(m._forward_hooks or m._forward_pre_hooks for m in [model, *modules])
        or getattr(glob, "_global_forward_hooks", None)
        or getattr(glob, "_global_forward_pre_hooks", None)
    ):
        return None  # hooks (e.g. XdG's gates) change the forward: autograd path
    params = [p for lin in layers for p in (lin.weight, lin.bias)]
    trainable = [p for p in model.parameters() if p.requires_grad]
    if len(trainable) != len(params) or any(
        a is not b for a, b in zip(trainable, params)
    ):
        return None
    if any(p.dtype != torch.float32 or not p.requires_grad for p in params):
        return None
    return layers


# ----------------------------------------------------------------------------------
# TorchScript loop
# ----------------------------------------------------------------------------------
def mlp_sgd_steps(
    weights: List[Tensor],
    biases: List[Tensor],
    X: Tensor,
    Y: Tensor,
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
    ``Y`` holds the one-hot labels (``(m, C)``, the weights' dtype and device), so
    nothing here reads a tensor back to the host: on a GPU the loop is one stream
    of kernels. The losses themselves are not computed: a non-finite loss means
    non-finite logits, hence non-finite parameters, which the caller checks (once
    per incoming example). Labels must be in ``[0, C)`` (the caller checks).
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
        g = z.softmax(0) - Y[j]
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


def check_labels(y: Tensor, n_outputs: int) -> None:
    """Raise a ``ValueError`` unless every label of ``y`` is in ``[0, n_outputs)``."""
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_outputs):
        bad = int(y.max()) if int(y.max()) >= n_outputs else int(y.min())
        raise ValueError(
            f"class label {bad} is outside the model's {n_outputs} output units: "
            f"labels must be in [0, {n_outputs}); build the model with more outputs."
        )


# ----------------------------------------------------------------------------------
# Native kernel
# ----------------------------------------------------------------------------------
#: Error codes of the C kernel (besides -1: done, >= 0: index of a non-finite loss).
ERR_LAYERS, ERR_DIMS, ERR_LABEL, ERR_NULL, ERR_COUNT = -2, -3, -4, -5, -6

_C_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>

/* One plain SGD step per row of X on a ReLU MLP, in order, in place.
   W[l]: dims[l+1] x dims[l] row-major, b[l]: dims[l+1]. work: scratch of
   sum(dims) + 2 * max(dims) floats. inactive: m x dims[L] bytes or NULL.
   Inputs are checked before anything is written: returns -2 (layer count not in
   1..63), -3 (a width < 1), -4 (a label outside [0, C); *bad_index = its row),
   -5 (a NULL pointer), -6 (m < 0). Otherwise returns -1, or the index of the first
   sample whose loss is not finite (nothing of that sample or after it is applied). */
int64_t mer_mlp_sgd_steps(int n_layers, const int64_t *dims, float **W, float **b,
                       const float *X, int64_t m, const int64_t *y,
                       const uint8_t *inactive, const float *scales, float lr,
                       float mask_value, float *work, int64_t *bad_index) {
  if (n_layers < 1 || n_layers > 63) return -2;
  if (!dims || !W || !b || !X || !y || !scales || !work || !bad_index) return -5;
  if (m < 0) return -6;
  int64_t total = 0, widest = 0;
  for (int l = 0; l <= n_layers; ++l) {
    if (dims[l] < 1) return -3;
    total += dims[l];
    widest = dims[l] > widest ? dims[l] : widest;
  }
  for (int l = 0; l < n_layers; ++l)
    if (!W[l] || !b[l]) return -5;
  const int64_t C = dims[n_layers];
  for (int64_t j = 0; j < m; ++j)
    if (y[j] < 0 || y[j] >= C) {
      *bad_index = j;
      return -4;
    }
  float *acts = work;          /* inputs of layers 1..L-1, then logits */
  float *grad = work + total;  /* two gradient vectors of `widest` floats */
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

_FLAGS = [
    "-O3",
    "-march=native",
    "-fno-math-errno",
    "-fassociative-math",
    "-fno-signed-zeros",
    "-fno-trapping-math",
    "-shared",
    "-fPIC",
]

_native: Optional[Callable] = None
_native_decided = False
_native_lock = threading.Lock()


def native_disabled() -> bool:
    """True when ``AVALANCHE_META_NO_NATIVE`` is ``1``, ``true`` or ``yes`` (any case)."""
    import os

    value = os.environ.get("AVALANCHE_META_NO_NATIVE", "").strip().lower()
    return value in ("1", "true", "yes")


def kernel_path() -> "os.PathLike":
    """Where the compiled kernel for this source, flags and CPU is cached."""
    import hashlib
    import os
    import platform
    from pathlib import Path

    cpu = platform.machine() + platform.node()
    try:
        with open("/proc/cpuinfo") as f:
            cpu += "".join(
                line for line in f if line.startswith(("model name", "flags"))
            )
    except OSError:
        pass
    key = hashlib.sha256((_C_SOURCE + " ".join(_FLAGS) + cpu).encode()).hexdigest()
    cache = Path(
        os.environ.get("AVALANCHE_META_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "avalanche_meta"
    )
    return cache / f"mer_kernel_{key[:16]}.so"


def _compile(compiler: str, lib_path) -> None:
    """Compile the kernel into ``lib_path`` (atomic rename: safe for concurrent builds)."""
    import os
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    lib_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "mer_kernel.c"
        src.write_text(_C_SOURCE)
        tmp_lib = Path(tmp) / lib_path.name
        subprocess.run(
            [compiler, *_FLAGS, str(src), "-o", str(tmp_lib), "-lm"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        staged = lib_path.parent / f".{lib_path.name}.{os.getpid()}"
        shutil.copyfile(tmp_lib, staged)
        os.replace(staged, lib_path)


def _load(lib_path) -> Callable:
    import ctypes

    lib = ctypes.CDLL(str(lib_path))
    fn = lib.mer_mlp_sgd_steps
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 4
    fn.argtypes += [ctypes.c_int64] + [ctypes.c_void_p] * 3
    fn.argtypes += [ctypes.c_float, ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p]
    return fn


def _build_native() -> Optional[Callable]:
    import os
    import shutil
    import subprocess

    if native_disabled():
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        warnings.warn(
            "MER: no C compiler found; the MLP fast path runs with TorchScript "
            "(same results, slower). Install gcc/clang for the native kernel.",
            RuntimeWarning,
        )
        return None
    lib_path = kernel_path()
    try:
        if lib_path.exists():
            try:
                return _load(lib_path)
            except (OSError, AttributeError):
                # a corrupt or truncated cached library: rebuild it below
                lib_path.unlink(missing_ok=True)
        _compile(compiler, lib_path)
        return _load(lib_path)
    except (OSError, AttributeError, subprocess.SubprocessError) as err:
        warnings.warn(
            f"MER: the native kernel could not be built ({err}); the MLP fast path "
            "runs with TorchScript (same results, slower).",
            RuntimeWarning,
        )
        return None


def native_library() -> Optional[Callable]:
    """The compiled C kernel (ctypes function), or None (disabled or no compiler).

    Decided once per process, under a lock: concurrent first calls wait for the
    build, so every strategy of the process gets the same answer.
    """
    global _native, _native_decided
    with _native_lock:
        if not _native_decided:
            _native = _build_native()
            _native_decided = True
        return _native


def reset_native_library() -> None:
    """Forget the decision of :func:`native_library` (tests; after changing the env)."""
    global _native, _native_decided
    with _native_lock:
        _native, _native_decided = None, False


class NativeMLPSteps:
    """Calls the C kernel on a fixed list of float32 CPU layers (pointers cached).

    :param layers: ``(weight, bias)`` pairs of the Linear layers, input first.
    :param fn: the kernel (default :func:`native_library`).
    :raises ValueError: if the layers cannot be run natively (see :meth:`supports`).
    """

    def __init__(
        self, layers: List[Tuple[Tensor, Tensor]], fn: Optional[Callable] = None
    ):
        import ctypes

        if not self.supports(layers):
            raise ValueError(
                f"the native MER kernel needs 1..{MAX_LAYERS} contiguous float32 CPU "
                "Linear layers."
            )
        self.fn = fn if fn is not None else native_library()
        if self.fn is None:
            raise ValueError("the native MER kernel is not available.")
        self.layers = layers  # keeps the tensors alive
        n = len(layers)
        dims = [layers[0][0].shape[1]] + [w.shape[0] for w, _ in layers]
        self.n_layers = n
        self.dims = torch.tensor(dims, dtype=torch.int64)
        self.n_outputs = int(dims[-1])
        self.W = (ctypes.c_void_p * n)(*[w.data_ptr() for w, _ in layers])
        self.b = (ctypes.c_void_p * n)(*[b.data_ptr() for _, b in layers])
        self.work = torch.empty(sum(dims) + 2 * max(dims), dtype=torch.float32)
        self.bad_index = torch.zeros(1, dtype=torch.int64)

    @staticmethod
    def supports(layers: List[Tuple[Tensor, Tensor]]) -> bool:
        return 0 < len(layers) <= MAX_LAYERS and all(
            t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()
            for pair in layers
            for t in pair
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
        """Run the steps; return -1 or the index of the first non-finite loss.

        :raises ValueError: on inputs of the wrong shape or type, or a label outside
            ``[0, C)`` (checked by the kernel before it writes anything).
        """
        m = X.shape[0] if X.dim() == 2 else -1
        d_in = int(self.dims[0])
        if X.dim() != 2 or X.shape[1] != d_in or X.dtype != torch.float32:
            raise ValueError(
                f"the native MER kernel needs float32 inputs of shape (m, {d_in}), got "
                f"{X.dtype} {tuple(X.shape)}."
            )
        if y.dtype != torch.int64 or y.numel() != m:
            raise ValueError(f"need {m} int64 labels, got {y.dtype} {tuple(y.shape)}.")
        if scales.dtype != torch.float32 or scales.numel() < m:
            raise ValueError(f"need {m} float32 loss scales, got {scales.numel()}.")
        if inactive is not None and (
            inactive.dtype != torch.bool or tuple(inactive.shape) != (m, self.n_outputs)
        ):
            raise ValueError(
                f"the inactive-unit mask must be bool of shape ({m}, "
                f"{self.n_outputs}), got {inactive.dtype} {tuple(inactive.shape)}."
            )
        X = X.contiguous()
        y = y.contiguous()
        if inactive is not None:
            inactive = inactive.contiguous()
        code = self.fn(
            self.n_layers,
            self.dims.data_ptr(),
            self.W,
            self.b,
            X.data_ptr(),
            m,
            y.data_ptr(),
            None if inactive is None else inactive.data_ptr(),
            scales.data_ptr(),
            lr,
            mask_value,
            self.work.data_ptr(),
            self.bad_index.data_ptr(),
        )
        if code >= -1:
            return int(code)
        if code == ERR_LABEL:
            j = int(self.bad_index)
            raise ValueError(
                f"class label {int(y[j])} (sample {j} of the batch) is outside the "
                f"model's {self.n_outputs} output units: labels must be in "
                f"[0, {self.n_outputs}); nothing was updated."
            )
        reason = {
            ERR_LAYERS: f"layer count {self.n_layers} not in 1..{MAX_LAYERS}",
            ERR_DIMS: "a layer width < 1",
            ERR_NULL: "a NULL pointer",
            ERR_COUNT: "a negative batch size",
        }.get(int(code), f"error code {code}")
        raise ValueError(f"the native MER kernel rejected its inputs: {reason}.")


__all__ = [
    "MAX_LAYERS",
    "NativeMLPSteps",
    "check_labels",
    "compiled_mlp_sgd_steps",
    "kernel_path",
    "mlp_linear_layers",
    "mlp_sgd_steps",
    "native_disabled",
    "native_library",
    "reset_native_library",
]
