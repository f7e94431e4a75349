"""Fixed random binary gates on hidden units, one mask per context (class or task).

Two methods of the brain-inspired replay paper (van de Ven, Siegelmann & Tolias,
Nat. Commun. 2020) switch hidden units on or off depending on a context:

- *gating based on internal context* (BI-R): each hidden layer of the VAE's decoder
  has, per class (or per task), a fixed random mask that keeps a proportion of its
  units; generating a class uses that class's mask;
- *XdG* (Masse et al., PNAS 2018), the Task-IL baseline: each hidden layer of the
  classifier has, per task, a fixed random mask.

Both are :class:`ContextGates`: the masks are drawn once, at construction, and kept
as buffers, so ``state_dict`` and checkpoints carry them (the reference code of the
paper draws them at construction too but does not save them, so a reloaded model got
new gates).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from avalanche_meta.utils.validation import check_in_interval, check_positive


class ContextGates(nn.Module):
    """One fixed random binary mask per context for each of several hidden layers.

    Invariant: for every context ``c`` and layer ``i``, ``mask(i)[c]`` has exactly
    ``round(keep * widths[i])`` ones (at least one), chosen uniformly at random when
    the gates are built, and never changes afterwards.

    :param n_contexts: number of contexts (classes or tasks).
    :param widths: the width of each gated hidden layer.
    :param keep: proportion of units kept open per context, in (0, 1].
    :param generator: optional ``torch.Generator`` to draw the masks from (default:
        torch's global generator, so seeding torch fixes the gates).

    Example::

        gates = ContextGates(n_contexts=10, widths=(400, 400), keep=0.8)
        h = gates(h, layer=0, context=y)  # h * mask of each sample's class
    """

    def __init__(
        self,
        n_contexts: int,
        widths: Sequence[int],
        keep: float,
        generator: Optional[torch.Generator] = None,
    ):
        super().__init__()
        check_positive("n_contexts", n_contexts, integer=True)
        check_in_interval(
            "keep",
            keep,
            0.0,
            1.0,
            low_open=True,
            hint="It is the proportion of hidden units each context keeps open.",
        )
        self.n_contexts = n_contexts
        self.widths = tuple(int(w) for w in widths)
        self.keep = float(keep)
        for i, width in enumerate(self.widths):
            check_positive(f"widths[{i}]", width, integer=True)
            n_open = max(1, int(round(self.keep * width)))
            masks = torch.zeros(n_contexts, width)
            for c in range(n_contexts):
                idx = torch.randperm(width, generator=generator)[:n_open]
                masks[c, idx] = 1.0
            self.register_buffer(f"mask_{i}", masks)

    def mask(self, layer: int) -> Tensor:
        """The ``(n_contexts, width)`` masks of hidden layer ``layer``."""
        return getattr(self, f"mask_{layer}")

    def forward(self, h: Tensor, layer: int, context: Tensor) -> Tensor:
        """Multiply each row of ``h`` by the mask of its context.

        :param h: ``(batch, width)`` activations of hidden layer ``layer``.
        :param layer: which gated layer.
        :param context: ``(batch,)`` integer contexts (class or task ids).
        """
        context = torch.as_tensor(context, device=h.device).long().flatten()
        if context.numel() != h.shape[0]:
            raise ValueError(
                f"`context` has {context.numel()} entries for a batch of {h.shape[0]}."
            )
        if context.numel() and (
            int(context.min()) < 0 or int(context.max()) >= self.n_contexts
        ):
            raise ValueError(
                f"gate context {int(context.max())} is outside the "
                f"{self.n_contexts} contexts the gates were built for: build them "
                f"with n_contexts >= {int(context.max()) + 1}."
            )
        return h * self.mask(layer)[context]

    def extra_repr(self) -> str:
        return f"n_contexts={self.n_contexts}, widths={self.widths}, keep={self.keep}"
