"""Fixed random binary gates on hidden units, one mask per context (class or task).

Two methods of the brain-inspired replay paper (van de Ven, Siegelmann & Tolias,
Nat. Commun. 2020) switch hidden units off depending on a context:

- *gating based on internal context* (BI-R): each hidden layer of the VAE's decoder
  has, per class (or per task), a fixed random mask that **switches off** a
  proportion ``gate_prop`` of its units (paper: 0.8 on MNIST, so about 20% of the
  units stay active for a class); generating a class uses that class's mask;
- *XdG* (Masse et al., PNAS 2018), the Task-IL baseline: each hidden layer of the
  classifier has, per task, a fixed random mask (proportion gated: 0.9 on split
  MNIST).

Both are :class:`ContextGates`. ``gate_prop`` is always the proportion of units
**gated off**, as the paper's ``dg_prop`` and ``xdg_prop`` are. How the masks are
drawn follows the paper's code:

- ``masks="bernoulli"`` (default; the reference's decoder gates): every unit of every
  context is gated off independently with probability ``gate_prop``, so the number of
  open units varies around ``(1 - gate_prop) * width``;
- ``masks="exact"`` (the reference's XdG): exactly ``int(gate_prop * width)`` units,
  chosen uniformly without replacement, are gated off per context.

The masks are drawn once, at construction, and kept as buffers, so ``state_dict`` and
checkpoints carry them (the paper's code draws them at construction too but does not
save them, so a reloaded model got new gates).

A context is either an integer id per sample (its mask is used) or, as the
reference does for replayed samples with distillation, a row of weights over the
contexts per sample: the gate is then the weighted blend ``weights @ masks``
(values in [0, 1]).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from avalanche_meta.utils.validation import (
    check_choice,
    check_in_interval,
    check_positive,
)

#: How the masks can be drawn (see the module docstring).
MASK_MODES = ("bernoulli", "exact")


class ContextGates(nn.Module):
    """One fixed random binary mask per context for each of several hidden layers.

    Invariant: the masks never change after construction. With
    ``masks="exact"``, ``mask(i)[c]`` has exactly ``width - int(gate_prop * width)``
    ones; with ``masks="bernoulli"`` each entry is 0 with probability ``gate_prop``.

    :param n_contexts: number of contexts (classes or tasks).
    :param widths: the width of each gated hidden layer.
    :param gate_prop: proportion of hidden units **switched off** per context, in
        [0, 1) (paper: 0.8 for BI-R's decoder on MNIST, 0.9 for XdG on split MNIST).
    :param masks: ``"bernoulli"`` (independent draws, the reference's decoder gates)
        or ``"exact"`` (an exact count, the reference's XdG).
    :param generator: optional ``torch.Generator`` to draw the masks from (default:
        torch's global generator, so seeding torch fixes the gates).

    Example::

        gates = ContextGates(n_contexts=10, widths=(400, 400), gate_prop=0.8)
        h = gates(h, layer=0, context=y)  # h * mask of each sample's class
    """

    def __init__(
        self,
        n_contexts: int,
        widths: Sequence[int],
        gate_prop: float,
        masks: str = "bernoulli",
        generator: Optional[torch.Generator] = None,
    ):
        super().__init__()
        check_positive("n_contexts", n_contexts, integer=True)
        check_in_interval(
            "gate_prop",
            gate_prop,
            0.0,
            1.0,
            high_open=True,
            hint="It is the proportion of hidden units each context switches OFF "
            "(paper: 0.8 for BI-R's decoder gates on MNIST).",
        )
        check_choice("masks", masks, MASK_MODES)
        self.n_contexts = n_contexts
        self.widths = tuple(int(w) for w in widths)
        self.gate_prop = float(gate_prop)
        self.mask_mode = masks
        for i, width in enumerate(self.widths):
            check_positive(f"widths[{i}]", width, integer=True)
            if masks == "bernoulli":
                draws = torch.rand(n_contexts, width, generator=generator)
                m = (draws >= self.gate_prop).float()
            else:
                n_off = int(self.gate_prop * width)
                m = torch.ones(n_contexts, width)
                for c in range(n_contexts):
                    idx = torch.randperm(width, generator=generator)[:n_off]
                    m[c, idx] = 0.0
            self.register_buffer(f"mask_{i}", m)
        self._open_cache: Dict[int, Tuple[tuple, List[Tensor]]] = {}

    def mask(self, layer: int) -> Tensor:
        """The ``(n_contexts, width)`` masks of hidden layer ``layer``."""
        return getattr(self, f"mask_{layer}")

    def open_units(self, layer: int) -> List[Tensor]:
        """For each context, the indices of the units of layer ``layer`` its mask
        leaves open (cached; recomputed if the mask buffer is replaced or written,
        e.g. by ``load_state_dict`` or ``.to()``)."""
        m = self.mask(layer)
        key = (m.data_ptr(), m._version, m.device)
        if not hasattr(self, "_open_cache"):  # modules pickled before the cache
            self._open_cache = {}
        cached = self._open_cache.get(layer)
        if cached is None or cached[0] != key:
            idx = [torch.nonzero(row).flatten() for row in m]
            cached = (key, idx)
            self._open_cache[layer] = cached
        return cached[1]

    def forward(
        self, h: Tensor, layer: int, context: Tensor, check: bool = True
    ) -> Tensor:
        """Multiply each row of ``h`` by the mask of its context.

        :param h: ``(batch, width)`` activations of hidden layer ``layer``.
        :param layer: which gated layer.
        :param context: ``(batch,)`` integer contexts (class or task ids), or
            ``(batch, n_contexts)`` weights: each row's gate is then the blend
            ``weights @ masks``.
        :param check: check that integer contexts are within ``n_contexts`` (reads
            them on the host); callers that validated them already pass False so
            that no device-to-host copy happens in their training loop.
        """
        context = torch.as_tensor(context, device=h.device)
        if context.dim() == 2 and context.is_floating_point():
            if context.shape != (h.shape[0], self.n_contexts):
                raise ValueError(
                    f"soft gate contexts must have shape (batch, n_contexts) = "
                    f"({h.shape[0]}, {self.n_contexts}), got {tuple(context.shape)}."
                )
            return h * (context.to(h.dtype) @ self.mask(layer))
        context = context.long().flatten()
        if context.numel() != h.shape[0]:
            raise ValueError(
                f"`context` has {context.numel()} entries for a batch of {h.shape[0]}."
            )
        if check:
            self.check_context(context)
        return h * self.mask(layer)[context]

    def check_context(self, context: Tensor) -> None:
        """Raise a clear error if an integer context is outside ``n_contexts``."""
        if not isinstance(context, Tensor):
            context = torch.as_tensor(context, device=self.mask(0).device)
        context = context.long().flatten()
        if context.numel() and (
            int(context.min()) < 0 or int(context.max()) >= self.n_contexts
        ):
            raise ValueError(
                f"gate context {int(context.max())} is outside the "
                f"{self.n_contexts} contexts the gates were built for: build them "
                f"with n_contexts >= {int(context.max()) + 1}."
            )

    def extra_repr(self) -> str:
        return (
            f"n_contexts={self.n_contexts}, widths={self.widths}, "
            f"gate_prop={self.gate_prop}, masks={self.mask_mode!r}"
        )
