"""A model's parameters viewed as one flat vector (Reptile-style interpolation is one ``lerp_``)."""

from __future__ import annotations

from typing import List

import torch
from torch import nn


class FlatParameters:
    """Moves the parameters of ``module`` into one contiguous buffer, in place.

    After construction every parameter of the module is a view of :attr:`flat`, so
    ``flat.lerp_(anchor, 1 - beta)`` interpolates every parameter at once and
    ``anchor.copy_(flat)`` snapshots them without Python loops.
    Gradients get the same treatment: :attr:`flat_grad` holds every ``.grad``.

    Modules that later replace their parameters (e.g. ``load_state_dict`` with
    ``assign=True``, dynamic heads that grow) break the views; call
    :meth:`rebind` after such a change (``is_bound`` tells).

    :param module: the module whose trainable parameters are flattened.
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self.rebind()

    def rebind(self) -> None:
        """(Re)create the flat buffers from the module's current parameters."""
        params: List[nn.Parameter] = [
            p for p in self.module.parameters() if p.requires_grad
        ]
        if not params:
            raise ValueError("`module` has no trainable parameters to flatten.")
        self.params = params
        device, dtype = params[0].device, params[0].dtype
        n = sum(p.numel() for p in params)
        self.flat = torch.empty(n, device=device, dtype=dtype)
        self.flat_grad = torch.zeros(n, device=device, dtype=dtype)
        offset = 0
        for p in params:
            k = p.numel()
            self.flat[offset : offset + k].copy_(p.data.flatten())
            p.data = self.flat[offset : offset + k].view_as(p)
            p.grad = self.flat_grad[offset : offset + k].view_as(p)
            offset += k

    @property
    def is_bound(self) -> bool:
        """True while every parameter (and its grad) is still a view of the flat buffers."""
        current = [p for p in self.module.parameters() if p.requires_grad]
        if len(current) != len(self.params) or any(
            a is not b for a, b in zip(current, self.params)
        ):
            return False
        return all(
            p.data.untyped_storage().data_ptr()
            == self.flat.untyped_storage().data_ptr()
            and p.grad is not None
            and p.grad.untyped_storage().data_ptr()
            == self.flat_grad.untyped_storage().data_ptr()
            for p in self.params
        )

    def __len__(self) -> int:
        return self.flat.numel()
