"""The VAE family of brain-inspired replay (van de Ven, Siegelmann & Tolias, Nat. Commun. 2020).

One fully connected variational auto-encoder, :class:`ReplayVAE`, whose parts are the
paper's switches:

- a softmax classifier on top of the encoder's last hidden layer
  (``num_classes=...``): *replay through feedback*, one model that classifies and
  generates; without it the VAE is the separate generator of deep generative replay;
- a prior that is standard normal (``prior="standard"``) or a Gaussian mixture with one
  learned mode per class (``prior="gmm"``): *conditional replay*, classes can be
  generated on demand;
- fixed random binary gates on the decoder's hidden layers, one mask per class or per
  task (``gate_prop=0.8, gate_contexts=..., gate_by="class" | "task"``): *gating based
  on internal context*; ``gate_prop`` is the proportion of units switched **off** per
  context (the paper's ``dg_prop``); the masks are buffers, saved in ``state_dict``;
- a reconstruction loss that is binary cross-entropy on pixels in [0, 1]
  (``recon="bce"``) or squared error (``recon="mse"``), the latter for *internal replay*
  where the VAE models the hidden activations of a frozen feature extractor (the
  strategy puts the extractor in front, see
  :class:`avalanche_meta.strategies.BrainInspiredReplay`; small and CIFAR-style conv
  front-ends are in :mod:`avalanche_meta.models.conv`).

Loss scaling, as in the paper's code: the generative loss of a sample is
``(reconstruction + KL) / D`` with ``D`` the number of input features (the
reconstruction term is averaged over features and the KL term divided by ``D``), so it
is on the scale of the classification loss.

The squared-error reconstruction is the negative log-likelihood of a unit-variance
Gaussian without its constant, ``0.5 * ||x - x_hat||^2``.

As in the paper's code, the layer that gives ``logvar`` has no bias
(``logvar_bias=False``; ``True`` adds one), and the Gaussian-mixture prior's
log-variances start as N(0, 1) draws (see :class:`GaussianMixturePrior`).

:class:`ReplayVAE` implements Avalanche's
:class:`avalanche.models.generator.Generator` interface,
``generate(batch_size, condition)``, so Avalanche code can draw samples from it.
"""

from __future__ import annotations

import math
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from avalanche.models.generator import Generator
from torch import Tensor, nn

from avalanche_meta.models.gates import ContextGates
from avalanche_meta.utils.validation import (
    check_choice,
    check_in_interval,
    check_positive,
)

_LOG_2PI = math.log(2.0 * math.pi)
#: How a gated decoder is computed for integer contexts (see :class:`ReplayVAE`).
GATE_COMPUTE = ("auto", "dense", "open")


# -- the maths, as plain functions ------------------------------------------------------
def log_normal_diag(z: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """``log N(z; mean, diag(exp(logvar)))``, summed over the last dimension."""
    return -0.5 * (_LOG_2PI + logvar + (z - mean).pow(2) / logvar.exp()).sum(-1)


def kl_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """Closed-form ``KL(N(mu, exp(logvar)) || N(0, I))`` per sample (Kingma & Welling)."""
    return -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(-1)


def kl_diag_gaussians(
    mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor
) -> Tensor:
    """Closed-form ``KL(N(mu_q, var_q) || N(mu_p, var_p))`` for diagonal Gaussians, per sample."""
    return 0.5 * (
        logvar_p
        - logvar_q
        + (logvar_q.exp() + (mu_q - mu_p).pow(2)) / logvar_p.exp()
        - 1.0
    ).sum(-1)


class _BCEWithLogitsRows(torch.autograd.Function):
    """Row sums of binary cross-entropy on logits, with its gradient in closed form.

    Per element ``max(a, 0) - a * t - log(sigmoid(|a|))``, which equals
    ``max(a, 0) - a * t + log(1 + exp(-|a|))`` (the stable form of BCE on
    ``sigmoid(a)``); the backward pass is ``(sigmoid(a) - t) * grad``, the same
    expression autograd uses for ``F.binary_cross_entropy_with_logits``.

    Why by hand: on CPU, torch's ``binary_cross_entropy_with_logits`` goes through
    ``log_sigmoid``, whose kernel (like ``log1p`` and ``softplus``) is not vectorised
    in current torch builds: 1.1-1.2 ms for a 128 x 784 batch on this machine's
    AVX-512 CPU, against about 0.3 ms here with the vectorised ``sigmoid`` and
    ``log``. The value differs from ``log1p`` only where ``exp(-|a|)`` is below
    float32 resolution (then ``log(sigmoid(|a|))`` rounds to 0 instead of about
    ``exp(-|a|)``, an absolute error below 1.2e-7 per element); the gradient is
    the same expression.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor) -> Tensor:  # type: ignore[override]
        s = torch.sigmoid(logits)
        soft = torch.sigmoid(logits.abs()).log_()  # log(sigmoid(|a|)) <= 0
        loss = logits.clamp_min(0.0).sub_(logits * target).sub_(soft).sum(1)
        ctx.save_for_backward(s, target)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        s, target = ctx.saved_tensors
        return (s - target).mul_(grad.unsqueeze(1)), None


def bce_with_logits_rows(logits: Tensor, target: Tensor) -> Tensor:
    """``F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(1)``
    for 2-D inputs, computed with vectorised kernels (:class:`_BCEWithLogitsRows`).

    Falls back to torch's function when ``target`` needs a gradient (the closed-form
    backward gives none for it) or the inputs are not two matching 2-D tensors. The
    backward pass is not differentiable again (``create_graph`` through it raises).
    """
    if target.requires_grad or logits.dim() != 2 or target.shape != logits.shape:
        return (
            F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            .flatten(1)
            .sum(1)
        )
    return _BCEWithLogitsRows.apply(logits, target)


class StandardNormalPrior(nn.Module):
    """The standard normal prior ``p(z) = N(0, I)`` (unconditional replay).

    :param z_dim: size of the latent space.
    """

    n_modes = 0

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim
        self.register_buffer("_anchor", torch.zeros(0))  # gives the prior a device

    def kl(
        self,
        mu: Tensor,
        logvar: Tensor,
        z: Tensor,
        y: Optional[Tensor] = None,
        probs: Optional[Tensor] = None,
        check: bool = True,
    ) -> Tensor:
        """Closed-form KL term per sample (``z``, ``y``, ``probs`` and ``check`` are
        not used; the paper's code computes it in closed form too)."""
        return kl_standard_normal(mu, logvar)

    def sample(
        self, n: int, modes: Optional[Tensor] = None, check: bool = True
    ) -> Tensor:
        """``n`` latent vectors from ``N(0, I)``."""
        return torch.randn(n, self.z_dim, device=self._anchor.device)


class GaussianMixturePrior(nn.Module):
    """A Gaussian mixture prior with one learned diagonal mode per class (conditional replay).

    ``p(z | y) = N(means[y], diag(exp(logvars[y])))`` and ``p(z)`` is the uniform
    mixture of the modes. Means start as standard normal draws; log-variances too
    (``logvar_init="normal"``, as in the paper's code) or at 0 (``"zero"``).

    The KL term of a sample is ``log q(z|x) - log p(z | class)``:

    - with a known class ``y`` (real data; replayed data with
      ``replay_identity="generated"`` or hard labels), against that class's mode:
      ``kl="sample"`` (default, the paper's code) uses the single-sample Monte-Carlo
      estimate with the reparameterised ``z``; ``kl="closed"`` the closed form
      ``KL(q(z|x) || p(z|y))`` (same expectation, no sampling noise);
    - with class probabilities ``probs`` (replayed data with distillation, as in the
      paper's code), against the mixture of modes weighted by ``probs``:
      ``log q(z|x) - log sum_c probs_c N(z; mode c)``, always Monte-Carlo (a mixture
      has no closed-form KL). Modes with probability 0 are left out exactly (the
      paper's code adds ``1e-40`` inside the log instead; the same value unless
      every weighted density underflows);
    - with neither, against the uniform mixture of all modes (Monte-Carlo).

    :param z_dim: size of the latent space.
    :param n_modes: number of modes (classes).
    :param logvar_init: ``"normal"`` (log-variances drawn from N(0, 1), the paper's
        code) or ``"zero"`` (unit variances).
    :param kl: ``"sample"`` (Monte-Carlo, the paper's code) or ``"closed"`` (closed
        form for a known class).
    """

    def __init__(
        self,
        z_dim: int,
        n_modes: int,
        logvar_init: str = "normal",
        kl: str = "sample",
    ):
        super().__init__()
        check_positive("n_modes", n_modes, integer=True)
        check_choice("logvar_init", logvar_init, ("normal", "zero"))
        check_choice("kl", kl, ("sample", "closed"))
        self.z_dim = z_dim
        self.n_modes = n_modes
        self.kl_estimator = kl
        self.means = nn.Parameter(torch.randn(n_modes, z_dim))
        self.logvars = nn.Parameter(
            torch.randn(n_modes, z_dim)
            if logvar_init == "normal"
            else torch.zeros(n_modes, z_dim)
        )

    def _check_modes(self, y: Tensor) -> Tensor:
        y = y.to(self.means.device).long().flatten()
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.n_modes):
            raise ValueError(
                f"class {int(y.max())} has no mode in a prior of {self.n_modes} "
                f"modes: build the prior with n_modes >= {int(y.max()) + 1}."
            )
        return y

    def _log_prob_modes(self, z: Tensor) -> Tensor:
        """``log N(z; mode c)`` for every sample and mode, ``(batch, n_modes)``."""
        return log_normal_diag(
            z.unsqueeze(1), self.means.unsqueeze(0), self.logvars.unsqueeze(0)
        )

    def log_prob(self, z: Tensor, probs: Optional[Tensor] = None) -> Tensor:
        """``log p(z)`` per sample: the uniform mixture, or the mixture weighted by
        ``probs`` (``(batch, n_modes)``, rows summing to 1).

        On the CPU, modes that no sample weighs are left out of the computation
        (their weight is exactly 0: they add nothing to the mixture, nor to its
        gradient); elsewhere every mode is computed (choosing the modes would read
        ``probs`` on the host).
        """
        if probs is None:
            per_mode = self._log_prob_modes(z)
            return torch.logsumexp(per_mode, dim=1) - math.log(self.n_modes)
        if probs.shape != (z.shape[0], self.n_modes):
            raise ValueError(
                f"`probs` must have shape (batch, n_modes) = "
                f"{(z.shape[0], self.n_modes)}, got {tuple(probs.shape)}."
            )
        if z.device.type == "cpu" and not probs.requires_grad:
            used = torch.nonzero((probs > 0).any(0)).flatten()
            if used.numel() < self.n_modes:
                per_mode = log_normal_diag(
                    z.unsqueeze(1),
                    self.means.index_select(0, used).unsqueeze(0),
                    self.logvars.index_select(0, used).unsqueeze(0),
                )
                probs = probs.index_select(1, used)
            else:
                per_mode = self._log_prob_modes(z)
        else:
            per_mode = self._log_prob_modes(z)
        probs = probs.to(per_mode.dtype)
        log_w = torch.where(
            probs > 0, probs.clamp_min(1e-45).log(), torch.full_like(probs, -math.inf)
        )
        return torch.logsumexp(per_mode + log_w, dim=1)

    def kl(
        self,
        mu: Tensor,
        logvar: Tensor,
        z: Tensor,
        y: Optional[Tensor] = None,
        probs: Optional[Tensor] = None,
        check: bool = True,
    ) -> Tensor:
        """KL term per sample (see the class docstring for the cases).

        :param check: check that the classes ``y`` have modes (reads them on the
            host); callers that validated them pass False.
        """
        if y is not None and probs is not None:
            raise ValueError("give the class `y` or the class `probs`, not both.")
        if y is None:
            return log_normal_diag(z, mu, logvar) - self.log_prob(z, probs)
        y = self._check_modes(y) if check else y.long().flatten()
        if self.kl_estimator == "closed":
            return kl_diag_gaussians(mu, logvar, self.means[y], self.logvars[y])
        return log_normal_diag(z, mu, logvar) - log_normal_diag(
            z, self.means[y], self.logvars[y]
        )

    def sample(
        self, n: int, modes: Optional[Tensor] = None, check: bool = True
    ) -> Tensor:
        """``n`` latent vectors from the given modes (default: uniformly drawn modes)."""
        if modes is None:
            modes = torch.randint(self.n_modes, (n,), device=self.means.device)
        else:
            modes = self._check_modes(modes) if check else modes.long().flatten()
        std = (0.5 * self.logvars[modes]).exp()
        return self.means[modes] + std * torch.randn_like(std)


class VAEOutput(NamedTuple):
    """Everything one pass of :meth:`ReplayVAE.evaluate` computes, per sample."""

    hidden: Tensor  #: the encoder's last hidden layer
    logits: Optional[Tensor]  #: classifier scores (None without a classifier)
    mu: Tensor
    logvar: Tensor
    z: Tensor
    x_recon: Optional[Tensor]  #: flat reconstruction (None if not asked for)
    recon: Tensor  #: reconstruction loss per sample (summed over features)
    kl: Tensor  #: KL term per sample
    generation: Tensor  #: ``(recon + kl) / D`` per sample


class VAEPart(NamedTuple):
    """One row block of a batch given to :meth:`ReplayVAE.evaluate_parts`, with what
    selects its prior modes and gates (the arguments of :meth:`ReplayVAE.evaluate`)."""

    n: int  #: rows
    y: Optional[Tensor] = None
    context: Optional[Tensor] = None
    class_probs: Optional[Tensor] = None
    gate_classes: Optional[Tensor] = None


def _mlp(sizes: Sequence[int]) -> nn.ModuleList:
    return nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))


def _long_tensor(values: Union[Sequence[int], Tensor], device) -> Tensor:
    if isinstance(values, Tensor):
        return values.to(device=device, dtype=torch.long).flatten()
    return torch.as_tensor(list(values), device=device, dtype=torch.long)


def _open_blocks(params: Sequence[Tensor], units: Sequence[Tensor]) -> list:
    """The sub-blocks ``(weight, bias)`` of each hidden layer on ``units`` (rows) and
    the previous layer's units (columns), then the output layer's columns."""
    blocks, prev = [], None
    for i, idx in enumerate(units):
        w = params[2 * i].index_select(0, idx)
        if prev is not None:
            w = w.index_select(1, prev)
        blocks.append((w, params[2 * i + 1].index_select(0, idx)))
        prev = idx
    blocks.append((params[-2].index_select(1, prev), None))
    return blocks


class _OpenDecoder(torch.autograd.Function):
    """The gated decoder on open units, groups of rows at a time, with its own
    backward pass.

    ``spec`` lists ``(start, end, units, gates)`` per group of consecutive rows of
    ``z``: ``units[i]`` are the indices of the units of hidden layer ``i`` that the
    group computes, ``gates[i]`` their gate values per row (None: all 1, hard
    masks). Parameters: ``W_0, b_0, ..., W_L, b_L`` of the hidden layers, then the
    output layer's ``W, b``. The backward pass writes every group's gradient into
    one buffer per parameter (autograd through per-group ``index_select`` would
    allocate a full-size gradient per group and add them up). Gates are constants
    (no gradient).
    """

    @staticmethod
    def forward(ctx, z, spec, *params):
        n_hidden = len(params) // 2 - 1
        w_out, b_out = params[-2], params[-1]
        out = z.new_empty(z.shape[0], w_out.shape[0])
        saved = []
        for start, end, units, gates, blocks in spec:
            if blocks is None:
                blocks = _open_blocks(params, units)
            h = z[start:end]
            acts, relus = [h], []
            for i in range(n_hidden):
                w, b = blocks[i]
                r = torch.addmm(b, h, w.t()).clamp_min_(0.0)
                h = r if gates is None else r * gates[i]
                relus.append(r)
                acts.append(h)
            out[start:end] = torch.addmm(b_out, h, blocks[-1][0].t())
            saved.append((acts, relus, [w for w, _ in blocks]))
        ctx.spec, ctx.saved, ctx.n_hidden = spec, saved, n_hidden
        ctx.param_shapes = [p.shape for p in params]
        ctx.z_shape = z.shape
        return out

    @staticmethod
    def backward(ctx, g_out):
        n_hidden, needs = ctx.n_hidden, ctx.needs_input_grad
        g_params = [
            (g_out.new_zeros(shape) if needs[2 + k] else None)
            for k, shape in enumerate(ctx.param_shapes)
        ]
        g_z = g_out.new_zeros(ctx.z_shape) if needs[0] else None
        if needs[-1]:
            g_params[-1] = g_out.sum(0)
        for (start, end, units, gates, _), (acts, relus, subs) in zip(
            ctx.spec, ctx.saved
        ):
            g = g_out[start:end]
            if g_params[-2] is not None:
                g_params[-2].index_add_(1, units[-1], g.t() @ acts[-1])
            g_h = g @ subs[-1]
            for i in reversed(range(n_hidden)):
                g_a = g_h if gates is None else g_h * gates[i]
                # the ReLU's derivative: where the unit was positive
                g_a = torch.ops.aten.threshold_backward(g_a, relus[i], 0.0)
                g_w, g_b = g_params[2 * i], g_params[2 * i + 1]
                if g_w is not None:
                    block = g_a.t() @ acts[i]
                    if i > 0:  # the block's columns: the previous layer's units
                        rows = block.new_zeros(block.shape[0], g_w.shape[1])
                        block = rows.index_copy_(1, units[i - 1], block)
                    g_w.index_add_(0, units[i], block)
                if g_b is not None:
                    g_b.index_add_(0, units[i], g_a.sum(0))
                if i > 0 or g_z is not None:
                    g_h = g_a @ subs[i]
            if g_z is not None:
                g_z[start:end] = g_h
        ctx.saved = None
        return (g_z, None, *g_params)


class ReplayVAE(Generator, nn.Module):
    """Fully connected VAE with optional classifier, mixture prior and decoder gates.

    Encoder: ``input_size -> hidden_sizes`` (ReLU) ``-> (mu, logvar)`` of size
    ``z_dim``; the classifier (if ``num_classes``) is linear on the encoder's last
    hidden layer. Decoder: the mirror image, ``z_dim -> reversed(hidden_sizes)``
    (ReLU, each gated if gates are on) ``-> input_size`` (sigmoid for ``"bce"``).

    :param input_size: features per input (inputs are flattened).
    :param hidden_sizes: widths of the encoder's hidden layers (paper: 2 x 400 for
        split MNIST, 2 x 2000 for permuted MNIST and CIFAR-100).
    :param z_dim: latent size (paper: 100).
    :param num_classes: size of the classifier on the encoder (None: a generator
        only, as in deep generative replay).
    :param prior: ``"standard"`` or ``"gmm"`` (one learned mode per class).
    :param n_modes: modes of the ``"gmm"`` prior (default ``num_classes``).
    :param gate_prop: proportion of decoder hidden units each context switches
        **off**, in [0, 1); 0 turns gating off (paper's ``dg_prop``: 0.8 on MNIST,
        so about 20% of the units are active for a class).
    :param gate_contexts: number of gate contexts (classes, or tasks).
    :param gate_masks: ``"bernoulli"`` (each unit gated independently with
        probability ``gate_prop``, the paper's code) or ``"exact"`` (exactly
        ``int(gate_prop * width)`` units gated per context); see
        :class:`~avalanche_meta.models.gates.ContextGates`.
    :param gate_by: ``"class"`` (Task-IL, Class-IL) or ``"task"`` (Domain-IL).
    :param recon: ``"bce"`` (pixels in [0, 1]) or ``"mse"`` (hidden activations).
    :param output_shape: the shape of one sample (default ``(input_size,)``);
        :meth:`generate` reshapes to it.
    :param logvar_bias: give the ``logvar`` layer a bias (the paper's code has none).
    :param prior_logvar_init: ``"normal"`` (paper's code) or ``"zero"``: initial
        log-variances of the ``"gmm"`` prior's modes.
    :param kl: ``"sample"`` (Monte-Carlo, paper's code) or ``"closed"``: the
        ``"gmm"`` prior's KL estimate for a known class (the standard prior's KL is
        always in closed form, as in the paper's code).
    :param gate_compute: how the gated decoder is computed: ``"dense"`` computes
        every unit and multiplies by the gates; ``"open"`` computes only the units
        that are not gated off: with integer contexts (one mask per sample) the
        samples are grouped by context and each group computes its context's open
        units (with 80% gated off most decoder products go away); with blended
        gates (class probabilities) the units that some sample's blend leaves open.
        The same result up to float summation order (tested to 1e-6). ``"auto"``
        (default): ``"open"`` on the CPU, ``"dense"`` on other devices (the open
        computation reads group sizes and unit indices on the host).

    Example::

        vae = ReplayVAE(input_size=784, num_classes=10, prior="gmm",
                        gate_prop=0.8, gate_contexts=10, output_shape=(1, 28, 28))
        images = vae.generate(16, condition=3)   # sixteen 3s
    """

    def __init__(
        self,
        *,
        input_size: int,
        hidden_sizes: Sequence[int] = (400, 400),
        z_dim: int = 100,
        num_classes: Optional[int] = None,
        prior: str = "standard",
        n_modes: Optional[int] = None,
        gate_prop: float = 0.0,
        gate_contexts: int = 0,
        gate_by: str = "class",
        recon: str = "bce",
        output_shape: Optional[Sequence[int]] = None,
        gate_masks: str = "bernoulli",
        logvar_bias: bool = False,
        prior_logvar_init: str = "normal",
        kl: str = "sample",
        gate_compute: str = "auto",
    ):
        nn.Module.__init__(self)
        check_positive("input_size", input_size, integer=True)
        check_positive("z_dim", z_dim, integer=True)
        if not hidden_sizes:
            raise ValueError("`hidden_sizes` must name at least one hidden layer.")
        for i, h in enumerate(hidden_sizes):
            check_positive(f"hidden_sizes[{i}]", h, integer=True)
        if num_classes is not None:
            check_positive("num_classes", num_classes, integer=True)
        check_choice("prior", prior, ("standard", "gmm"))
        check_choice("recon", recon, ("bce", "mse"))
        check_choice("gate_by", gate_by, ("class", "task"))
        check_choice("gate_compute", gate_compute, GATE_COMPUTE)
        check_in_interval(
            "gate_prop",
            gate_prop,
            0.0,
            1.0,
            high_open=True,
            hint="It is the proportion of decoder units gated OFF per context "
            "(paper: 0.8); use 0 to turn the decoder gates off.",
        )
        if gate_prop and not gate_contexts:
            raise ValueError(
                "`gate_contexts` must be > 0 when the decoder gates are on "
                "(`gate_prop` > 0): the number of classes (gate_by='class') or "
                "tasks (gate_by='task')."
            )
        self.input_size = int(input_size)
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        self.z_dim = int(z_dim)
        self.num_classes = num_classes
        self.recon_type = recon
        self.gate_by = gate_by
        self.gate_compute = gate_compute
        self.output_shape = tuple(output_shape or (self.input_size,))
        if math.prod(self.output_shape) != self.input_size:
            raise ValueError(
                f"`output_shape` {self.output_shape} has "
                f"{math.prod(self.output_shape)} features but `input_size` is "
                f"{self.input_size}."
            )

        self.encoder = _mlp((self.input_size,) + self.hidden_sizes)
        width = self.hidden_sizes[-1]
        self.to_mu = nn.Linear(width, self.z_dim)
        self.to_logvar = nn.Linear(width, self.z_dim, bias=bool(logvar_bias))
        self.classifier = (
            nn.Linear(width, num_classes) if num_classes is not None else None
        )
        dec_sizes = (self.z_dim,) + tuple(reversed(self.hidden_sizes))
        self.decoder = _mlp(dec_sizes)
        self.to_x = nn.Linear(dec_sizes[-1], self.input_size)

        if prior == "gmm":
            n_modes = n_modes if n_modes is not None else num_classes
            if n_modes is None:
                raise ValueError(
                    "prior='gmm' needs one mode per class: give `num_classes` or "
                    "`n_modes`."
                )
            self.prior = GaussianMixturePrior(
                self.z_dim, n_modes, logvar_init=prior_logvar_init, kl=kl
            )
        else:
            self.prior = StandardNormalPrior(self.z_dim)
        self.gates = (
            ContextGates(gate_contexts, dec_sizes[1:], gate_prop, masks=gate_masks)
            if gate_prop
            else None
        )

    # -- properties ---------------------------------------------------------------------
    @property
    def conditional(self) -> bool:
        """True if the prior has one mode per class (classes can be generated)."""
        return isinstance(self.prior, GaussianMixturePrior)

    @property
    def gated(self) -> bool:
        """True if the decoder's hidden layers are gated."""
        return self.gates is not None

    def check_input(self, x: Tensor) -> None:
        """Raise a clear error if ``x`` does not have ``input_size`` features per sample."""
        if x.dim() == 0 or x[0].numel() != self.input_size:
            got = tuple(x.shape[1:]) if x.dim() else ()
            raise ValueError(
                f"the VAE was built for inputs of {self.input_size} features, got "
                f"inputs of shape {got} ({x[0].numel() if x.dim() else 0} features): "
                f"build it with input_size={x[0].numel() if x.dim() else 0}, or "
                "check that internal replay's feature extractor is in front."
            )

    # -- encoder and classifier ---------------------------------------------------------
    def encode(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Return the encoder's last hidden layer, ``mu`` and ``logvar``."""
        h = self.hidden(x)
        return h, self.to_mu(h), self.to_logvar(h)

    def hidden(self, x: Tensor) -> Tensor:
        """The encoder's last hidden layer only (no latent heads)."""
        self.check_input(x)
        h = x.flatten(1)
        for layer in self.encoder:
            h = F.relu(layer(h))
        return h

    def _heads(self, hidden: Tensor) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """``mu``, ``logvar`` and the classifier's logits (None without classifier)
        of the encoder's last hidden layer, as one matrix product (the three layers'
        weights stacked; the same values as three products)."""
        heads = [self.to_mu, self.to_logvar]
        if self.classifier is not None:
            heads.append(self.classifier)
        weight = torch.cat([h.weight for h in heads])
        bias = torch.cat(
            [
                h.bias if h.bias is not None else hidden.new_zeros(h.out_features)
                for h in heads
            ]
        )
        out = F.linear(hidden, weight, bias).split([h.out_features for h in heads], 1)
        return out[0], out[1], (out[2] if len(out) > 2 else None)

    def classify_hidden(self, hidden: Tensor) -> Tensor:
        """Classifier scores from the encoder's last hidden layer."""
        if self.classifier is None:
            raise ValueError(
                "this VAE has no classifier: build it with `num_classes` to use it "
                "as a classifier (replay through feedback)."
            )
        return self.classifier(hidden)

    def forward(self, x: Tensor) -> Tensor:
        """Classifier scores (logits) of ``x``: what Avalanche's metrics see (the
        latent heads ``mu`` / ``logvar`` are not computed)."""
        return self.classify_hidden(self.hidden(x))

    def get_features(self, x: Tensor) -> Tensor:
        """The encoder's last hidden layer (Avalanche ``BaseModel`` interface)."""
        return self.hidden(x)

    # -- decoder ------------------------------------------------------------------------
    def decode(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """Flat reconstruction of ``z``; ``context`` (class or task ids, or
        ``(batch, gate_contexts)`` weights that blend the masks) selects the gates."""
        out = self._decode_raw(z, context)
        return torch.sigmoid(out) if self.recon_type == "bce" else out

    def _open_units_apply(self, z: Tensor) -> bool:
        """Whether integer gate contexts are decoded by computing open units only."""
        mode = self.gate_compute
        if mode == "auto":
            return z.device.type == "cpu"
        return mode == "open"

    def _decode_raw(
        self, z: Tensor, context: Optional[Tensor], check: bool = True
    ) -> Tensor:
        """The decoder's output before the sigmoid of ``"bce"``.

        :param check: check integer contexts against the gates (a host read); the
            strategy validates its contexts once per experience and passes False.
        """
        if self.gates is not None and context is None:
            raise ValueError(
                "the decoder is gated: give the context (class ids for "
                "gate_by='class', task ids for gate_by='task') of every sample."
            )
        if self.gates is not None:
            context = torch.as_tensor(context, device=z.device)
            hard = not (context.dim() == 2 and context.is_floating_point())
            if not hard and not context.requires_grad and self._open_units_apply(z):
                if context.shape != (z.shape[0], self.gates.n_contexts):
                    self.gates(z[:, :0], 0, context)  # raises the shape error
                return self._decode_open_blend(z, context)
            if hard and self._open_units_apply(z):
                context = context.long().flatten()
                if context.numel() != z.shape[0]:
                    raise ValueError(
                        f"`context` has {context.numel()} entries for a batch of "
                        f"{z.shape[0]}."
                    )
                if check:
                    self.gates.check_context(context)
                return self._decode_open(z, context)
        h = z
        for i, layer in enumerate(self.decoder):
            h = F.relu(layer(h))
            if self.gates is not None:
                h = self.gates(h, i, context, check=check)
        return self.to_x(h)

    def _decode_open(self, z: Tensor, context: Tensor) -> Tensor:
        """The gated decoder computed on each context's open units only.

        Samples are grouped by context; for a group, layer ``i`` computes only the
        rows of its weight that the context's mask leaves open, from the columns
        that the previous layer left open, and the output layer reads only those.
        A unit gated off is an exact zero in the dense computation (``relu * 0``),
        and zeros add nothing to the next layer's sums, so the result is the dense
        one up to float summation order (tested to 1e-6). Reads the group sizes on
        the host (one small copy per call): used on the CPU, where that is free.
        """
        return self._decode_open_parts(z, [context], [False], [z.shape[0]])

    def _decode_open_blend(self, z: Tensor, weights: Tensor) -> Tensor:
        """The gated decoder with blended gates, on the units some sample needs.

        A unit whose blended gate ``weights @ mask`` is zero for every sample of the
        batch (no context with a non-zero weight leaves it open) is an exact zero
        in the dense computation; only the other units are computed, each
        multiplied by its blended gate. Same result as the dense decoder up to
        float summation order (tested to 1e-6). Weights that need a gradient are
        decoded densely (a closed unit still has a derivative with respect to the
        weight of a context that would open it).
        """
        return self._decode_open_parts(z, [weights], [True], [z.shape[0]])

    def _decode_open_parts(
        self,
        z: Tensor,
        ctxs: List[Tensor],
        soft: List[bool],
        sizes: List[int],
    ) -> Tensor:
        """Consecutive row blocks of ``z``, each with integer contexts (grouped by
        context, :meth:`_decode_open`) or blend weights (one group on the units the
        blends need, :meth:`_decode_open_blend`), decoded in one
        :class:`_OpenDecoder` call."""
        gates = self.gates
        n_layers = len(self.decoder)
        opens = [gates.open_units(i) for i in range(n_layers)]
        params = self._decoder_params()
        frozen = None
        if not any(p.requires_grad for p in params):
            # a frozen decoder (e.g. the previous generator): each context's
            # sub-blocks are gathered once, until a parameter changes
            key = tuple((p.data_ptr(), p._version) for p in params)
            cache = getattr(self, "_frozen_blocks", None)
            if cache is None or cache[0] != key:
                cache = (key, {})
                self._frozen_blocks = cache

            def frozen(c, units, _store=cache[1]):
                if c not in _store:
                    _store[c] = _open_blocks(params, units)
                return _store[c]

        spec, perm, pos = [], [], 0
        for ctx, is_soft, n in zip(ctxs, soft, sizes):
            if is_soft:
                weights = ctx.to(z.dtype)
                used = (weights != 0).any(0)  # contexts some sample blends in
                units, values = [], []
                for i in range(n_layers):
                    m = gates.mask(i)
                    idx = torch.nonzero(m[used].any(0)).flatten()
                    units.append(idx)
                    values.append(weights @ m.index_select(1, idx))
                spec.append((pos, pos + n, units, values, None))
                perm.append(None)
            else:
                # group sizes and order, read on the host (this path is used on
                # the CPU, where that costs no synchronisation)
                labels = ctx.tolist()
                counts: Dict[int, int] = {}
                for c in labels:
                    counts[c] = counts.get(c, 0) + 1
                present = sorted(counts.items())
                row = pos
                for c, k in present:
                    units = [o[c] for o in opens]
                    blocks = None if frozen is None else frozen(c, units)
                    spec.append((row, row + k, units, None, blocks))
                    row += k
                if len(present) == 1:
                    perm.append(None)
                else:
                    order = sorted(range(len(labels)), key=labels.__getitem__)
                    perm.append(torch.tensor(order, device=z.device))
            pos += n
        if all(p is None for p in perm):
            return _OpenDecoder.apply(z, spec, *params)
        order = torch.cat(
            [
                (torch.arange(n, device=z.device) if p is None else p) + offset
                for p, n, offset in zip(
                    perm, sizes, [sum(sizes[:j]) for j in range(len(sizes))]
                )
            ]
        )
        out = _OpenDecoder.apply(z.index_select(0, order), spec, *params)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return out.index_select(0, inverse)

    def _decoder_params(self) -> List[Tensor]:
        params: List[Tensor] = []
        for layer in self.decoder:
            params += [layer.weight, layer.bias]
        return params + [self.to_x.weight, self.to_x.bias]

    @staticmethod
    def reparameterize(mu: Tensor, logvar: Tensor) -> Tensor:
        """``z = mu + exp(logvar / 2) * eps`` (during training and evaluation alike)."""
        return mu + (0.5 * logvar).exp() * torch.randn_like(mu)

    def reconstruction_loss(self, x: Tensor, x_recon: Tensor) -> Tensor:
        """Reconstruction loss per sample, summed over features."""
        x = x.flatten(1)
        if self.recon_type == "bce":
            return F.binary_cross_entropy(x_recon, x, reduction="none").sum(1)
        return 0.5 * (x_recon - x).pow(2).sum(1)

    def evaluate(
        self,
        x: Tensor,
        y: Optional[Tensor] = None,
        context: Optional[Tensor] = None,
        class_probs: Optional[Tensor] = None,
        gate_classes: Optional[Tensor] = None,
        *,
        reconstruction: bool = True,
        check: bool = True,
    ) -> VAEOutput:
        """One pass through encoder, classifier and decoder, with per-sample losses.

        :param x: inputs (any shape with ``input_size`` features per sample).
        :param y: class ids; select the prior's mode (conditional prior) and, with
            ``gate_by="class"``, the gates.
        :param context: task ids for ``gate_by="task"`` gates.
        :param class_probs: instead of ``y``, ``(batch, num_classes)`` class
            probabilities (the paper's code uses the previous model's soft
            predictions for replayed samples): ``"class"`` gates are the blend of
            the class masks weighted by them, and the conditional prior's KL term
            is against the mixture of modes weighted by them.
        :param gate_classes: class ids that select the ``"class"`` gates instead of
            ``y`` (the prior's mode still follows ``y``); used to reproduce the paper
            code's Task-IL gating of real data by task-relative labels.
        :param reconstruction: also return the reconstruction ``x_recon`` (False:
            ``x_recon`` is None; the losses are computed from the decoder's logits
            either way).
        :param check: check class and context ids (host reads; see
            :meth:`evaluate_parts`).
        """
        part = VAEPart(x.shape[0], y, context, class_probs, gate_classes)
        return self.evaluate_parts(
            x, [part], reconstruction=reconstruction, check=check
        )[0]

    def evaluate_parts(
        self,
        x: Tensor,
        parts: Sequence["VAEPart"],
        *,
        reconstruction: bool = True,
        check: bool = True,
    ) -> List[VAEOutput]:
        """:meth:`evaluate` of several consecutive parts of a batch in one pass.

        The encoder, classifier and decoder run once over the whole batch ``x``
        (the parts are consecutive row blocks, in order); the losses of each part
        use its own class ids, contexts or class probabilities. Mathematically the
        same as one :meth:`evaluate` per part (gradients agree to float rounding),
        with fewer, larger matrix products. When some parts select the gates by
        integer ids and others by class probabilities, the integer ids become
        one-hot weights (``one_hot @ masks`` is exactly the mask).

        :param x: the concatenated inputs of every part.
        :param parts: :class:`VAEPart` per row block; their sizes sum to ``len(x)``.
        :param reconstruction: also return each part's ``x_recon``.
        :param check: check class and context ids against the prior's modes and
            the gates (host reads); callers that validated them once pass False
            so that nothing is copied to the host in their training loop.
        """
        sizes = [int(p.n) for p in parts]
        if sum(sizes) != x.shape[0]:
            raise ValueError(
                f"the parts have {sum(sizes)} rows in all but `x` has {x.shape[0]}."
            )
        for p in parts:
            if p.y is not None and p.class_probs is not None:
                raise ValueError("give the class ids `y` or `class_probs`, not both.")
        hidden = self.hidden(x)
        mu, logvar, logits = self._heads(hidden)
        z = self.reparameterize(mu, logvar)
        if self.gates is None:
            raw = self._decode_raw(z, None, check=check)
        else:
            ctxs = [self._gate_context(p) for p in parts]
            raw = self._decode_parts(z, ctxs, sizes, check)
        xf = x.flatten(1)
        outs = []
        start = 0
        for p, n in zip(parts, sizes):
            sl = slice(start, start + n)
            start += n
            raw_p, x_p, mu_p, lv_p, z_p = raw[sl], xf[sl], mu[sl], logvar[sl], z[sl]
            if self.recon_type == "bce":
                # from the logits: same value as BCE on the sigmoid, stable when
                # saturated
                recon = bce_with_logits_rows(raw_p, x_p)
                x_recon = torch.sigmoid(raw_p) if reconstruction else None
            else:
                recon = 0.5 * (raw_p - x_p).pow(2).sum(1)
                x_recon = raw_p if reconstruction else None
            if self.conditional:
                kl = self.prior.kl(mu_p, lv_p, z_p, p.y, p.class_probs, check=check)
            else:
                kl = self.prior.kl(mu_p, lv_p, z_p)
            generation = (recon + kl) / self.input_size
            outs.append(
                VAEOutput(
                    hidden[sl],
                    None if logits is None else logits[sl],
                    mu_p,
                    lv_p,
                    z_p,
                    x_recon,
                    recon,
                    kl,
                    generation,
                )
            )
        return outs

    def _gate_context(self, part: "VAEPart") -> Optional[Tensor]:
        """What selects the gates of a part (see :meth:`evaluate`)."""
        if self.gate_by == "class":
            if part.gate_classes is not None:
                return part.gate_classes
            return part.class_probs if part.class_probs is not None else part.y
        return part.context

    def _decode_parts(
        self, z: Tensor, ctxs: List[Optional[Tensor]], sizes: List[int], check: bool
    ) -> Tensor:
        """Decode consecutive parts, each with its own gate context."""
        if any(c is None for c in ctxs):
            return self._decode_raw(z, None, check=check)  # raises the usual error
        ctxs = [torch.as_tensor(c, device=z.device) for c in ctxs]
        soft = [c.dim() == 2 and c.is_floating_point() for c in ctxs]
        if len(ctxs) == 1:
            return self._decode_raw(z, ctxs[0], check=check)
        if not any(soft):
            return self._decode_raw(
                z, torch.cat([c.long().flatten() for c in ctxs]), check=check
            )
        if all(soft):
            return self._decode_raw(z, torch.cat(ctxs), check=check)
        if not self._open_units_apply(z):
            n_ctx = self.gates.n_contexts
            weights = [
                c.to(z.dtype) if s else F.one_hot(c.long().flatten(), n_ctx).to(z.dtype)
                for c, s in zip(ctxs, soft)
            ]
            return self._decode_raw(z, torch.cat(weights), check=check)
        if not any(c.requires_grad for c, s in zip(ctxs, soft) if s):
            # integer parts on each context's open units, blended parts on the units
            # some of their samples need, in one pass
            return self._decode_open_parts(
                z,
                [c if s else c.long().flatten() for c, s in zip(ctxs, soft)],
                soft,
                sizes,
            )
        return torch.cat(
            [
                self._decode_raw(zp, c, check=check)
                for zp, c in zip(z.split(sizes), ctxs)
            ]
        )

    # -- generation ---------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        n: int,
        classes: Union[None, Sequence[int], Tensor] = None,
        contexts: Union[None, Sequence[int], Tensor] = None,
        *,
        check: bool = True,
    ) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """Generate ``n`` flat samples.

        :param n: number of samples.
        :param classes: classes to draw uniformly from (conditional prior or class
            gates); None: every mode / gate context.
        :param contexts: tasks to draw uniformly from for ``gate_by="task"`` gates;
            None: every context.
        :param check: check the classes / contexts against the prior's modes and
            the gates (host reads); a caller that validated them passes False.
        :return: ``(x, y, t)``: the samples, the class each was generated from (None
            if the generation was not class-conditional) and the task context of the
            gates (None unless ``gate_by="task"``).
        """
        device = self.to_x.weight.device
        y = t = None
        class_gates = self.gates is not None and self.gate_by == "class"
        if self.conditional or class_gates:
            pool = (
                _long_tensor(classes, device)
                if classes is not None
                else torch.arange(
                    self.prior.n_modes if self.conditional else self.gates.n_contexts,
                    device=device,
                )
            )
            if pool.numel() == 0:
                raise ValueError("`classes` is empty: there is no class to generate.")
            if check and classes is not None:
                if self.conditional:
                    self.prior._check_modes(pool)
                if class_gates:
                    self.gates.check_context(pool)
            y = pool[torch.randint(pool.numel(), (n,), device=device)]
        if self.gates is not None and self.gate_by == "task":
            pool = (
                _long_tensor(contexts, device)
                if contexts is not None
                else torch.arange(self.gates.n_contexts, device=device)
            )
            if pool.numel() == 0:
                raise ValueError("`contexts` is empty: there is no task to generate.")
            if check and contexts is not None:
                self.gates.check_context(pool)
            t = pool[torch.randint(pool.numel(), (n,), device=device)]
        z = self.prior.sample(n, y if self.conditional else None, check=False)
        raw = self._decode_raw(z, y if class_gates else t, check=False)
        x = torch.sigmoid(raw) if self.recon_type == "bce" else raw
        return x, y, t

    @torch.no_grad()
    def generate(
        self,
        batch_size: Optional[int] = None,
        condition: Union[None, int, Sequence[int], Tensor] = None,
    ) -> Tensor:
        """Avalanche's ``Generator`` interface: samples shaped as ``output_shape``.

        :param batch_size: number of samples (default 1).
        :param condition: a class id, or one class id per sample (needs a
            conditional prior or class gates); None draws classes uniformly.
        """
        n = batch_size or 1
        if condition is None:
            x, _, _ = self.sample(n)
        else:
            if not (self.conditional or (self.gated and self.gate_by == "class")):
                raise ValueError(
                    "this VAE cannot generate chosen classes: build it with "
                    "prior='gmm' (conditional replay) or class gates."
                )
            cond = torch.as_tensor(condition, dtype=torch.long).flatten()
            if cond.numel() == 1:
                cond = cond.expand(n)
            if cond.numel() != n:
                raise ValueError(
                    f"`condition` has {cond.numel()} class ids for {n} samples."
                )
            device = self.to_x.weight.device
            cond = cond.to(device)
            z = self.prior.sample(n, cond if self.conditional else None)
            t = None
            if self.gated and self.gate_by == "task":
                t = torch.randint(self.gates.n_contexts, (n,), device=device)
            x = self.decode(z, cond if self.gate_by == "class" else t)
        return x.view(n, *self.output_shape)
