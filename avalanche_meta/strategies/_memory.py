"""A reservoir memory updated after every example (Vitter's Algorithm R).

Used by :class:`~avalanche_meta.strategies.MER` and :class:`~avalanche_meta.strategies.ER`
(and by any strategy that needs "a uniform sample of everything seen so far").
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from avalanche_meta.utils.validation import check_positive


class ReservoirMemory(nn.Module):
    """Fixed-size reservoir sample of a stream of ``(x, y, t)`` examples.

    Invariants (after ``n_seen`` calls of :meth:`add` with one example each):

    - ``len(self) == min(n_seen, mem_size)``; slots ``0 .. len(self) - 1`` hold examples.
    - Every example seen so far is in memory with probability
      ``min(1, mem_size / n_seen)`` (reservoir sampling): example number ``n`` (1-based)
      goes into a free slot while there is one, otherwise it replaces the slot ``j``
      drawn uniformly from ``0 .. n - 1`` if ``j < mem_size``, else it is dropped.
      With ``original_draw=True``, ``j`` is drawn from ``0 .. n`` instead, as the
      original MER code does (``random.randint(0, age)``, both ends included): the
      new example is then kept with probability ``mem_size / (n + 1)``, slightly
      less than reservoir sampling's ``mem_size / n``.

    All state is in ``state_dict``: the example tensors ``x``, ``y``, ``t`` are buffers
    (preallocated at the first :meth:`add`, when the input shape becomes known), and
    the counter ``n_seen`` and the state of the random generator used for both the
    reservoir draws and :meth:`sample` are the module's extra state. A memory loaded
    from a ``state_dict`` therefore continues bit-identically.

    Relation to Avalanche's storage policies: Avalanche's
    ``ReservoirSamplingBuffer.update_from_dataset`` keeps the top ``max_size`` of random
    weights over a whole experience at once, i.e. the memory changes only between
    experiences. MER's Algorithm 1 needs the update after *every* example, inside an
    experience, and memory batches drawn from preallocated tensors in the hot loop, so
    this class does not subclass ``ExemplarsBuffer``. It offers the same reading
    interface where it fits: :attr:`max_size`, :attr:`buffer` (an Avalanche dataset
    view of the stored examples) and ``post_adapt(agent, experience)`` (adds an
    experience's examples one by one).

    :param mem_size: capacity (the paper's ``mem_size``).
    :param seed: seed of the memory's own random generator; ``None`` draws one from
        torch's global generator (so ``torch.manual_seed`` makes runs reproducible).
    :param original_draw: draw the replaced slot as the original MER code
        (``meralg1.py``, ``eralg4.py``) does, from ``0 .. n`` inclusive (see above);
        ``False`` (default): exact reservoir sampling.

    Example::

        memory = ReservoirMemory(mem_size=200, seed=0)
        for x, y, t in stream:              # one example at a time
            memory.add(x, y, t)
        xb, yb, tb = memory.sample(1, 10)   # one batch of 10 uniform draws
    """

    def __init__(
        self, mem_size: int, *, seed: Optional[int] = None, original_draw: bool = False
    ):
        super().__init__()
        check_positive("mem_size", mem_size, integer=True)
        self.mem_size = mem_size
        self.original_draw = bool(original_draw)
        self.n_seen = 0
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self.generator = torch.Generator()
        self.generator.manual_seed(int(seed))
        self.register_buffer("x", torch.zeros(0))
        self.register_buffer("y", torch.zeros(0, dtype=torch.long))
        self.register_buffer("t", torch.zeros(0, dtype=torch.long))

    # -- size --------------------------------------------------------------------
    def __len__(self) -> int:
        return min(self.n_seen, self.mem_size)

    @property
    def max_size(self) -> int:
        """Capacity, under the name Avalanche's storage policies use."""
        return self.mem_size

    def _allocate(self, x: Tensor) -> None:
        self.x = torch.zeros(
            (self.mem_size,) + tuple(x.shape), dtype=x.dtype, device=self.y.device
        )
        self.y = torch.zeros(self.mem_size, dtype=torch.long, device=self.y.device)
        self.t = torch.zeros(self.mem_size, dtype=torch.long, device=self.y.device)

    # -- the paper's operations --------------------------------------------------
    def reservoir_slot(self) -> int:
        """Count one more example and return the slot it goes to, or -1 (dropped)."""
        self.n_seen += 1
        if self.n_seen <= self.mem_size:
            return self.n_seen - 1
        high = self.n_seen + 1 if self.original_draw else self.n_seen
        j = int(torch.randint(0, high, (1,), generator=self.generator))
        return j if j < self.mem_size else -1

    @torch.no_grad()
    def add(self, x: Tensor, y, t=0) -> int:
        """Reservoir update with one example ``(x, y, t)``; return its slot or -1.

        :param x: one input (no batch dimension).
        :param y: its class label (int or 0-d tensor).
        :param t: its task label (int or 0-d tensor).
        """
        if self.x.dim() == 1 and self.x.numel() == 0:
            self._allocate(x)
        elif tuple(x.shape) != tuple(self.x.shape[1:]):
            raise ValueError(
                f"the memory stores inputs of shape {tuple(self.x.shape[1:])}, got "
                f"{tuple(x.shape)}: all examples of a stream must have one shape."
            )
        slot = self.reservoir_slot()
        if slot >= 0:
            self.x[slot].copy_(x)
            self.y[slot] = y
            self.t[slot] = t
        return slot

    @torch.no_grad()
    def add_batch(self, x: Tensor, y: Tensor, t: Optional[Tensor] = None) -> None:
        """:meth:`add` each example of a batch, in order."""
        for i in range(x.shape[0]):
            self.add(x[i], y[i], 0 if t is None else t[i])

    def sample_indices(self, n_batches: int, n_per_batch: int) -> Tensor:
        """``(n_batches, n_per_batch)`` slot indices drawn uniformly, with replacement.

        With replacement, as the original MER code (it reshuffles the memory before
        each draw). One call of the generator for all batches of an example.
        """
        if len(self) == 0:
            raise ValueError("cannot sample from an empty memory.")
        return torch.randint(
            0, len(self), (n_batches, n_per_batch), generator=self.generator
        )

    def sample(self, n_batches: int, n_per_batch: int) -> Tuple[Tensor, Tensor, Tensor]:
        """Memory batches ``(x, y, t)`` of shape ``(n_batches, n_per_batch, ...)``."""
        idx = self.sample_indices(n_batches, n_per_batch).to(self.y.device)
        return self.x[idx], self.y[idx], self.t[idx]

    # -- Avalanche storage-policy reading interface ------------------------------
    @property
    def buffer(self):
        """The stored examples as an Avalanche classification dataset (a copy)."""
        from avalanche.benchmarks.utils import (
            _make_taskaware_tensor_classification_dataset,
        )

        n = len(self)
        return _make_taskaware_tensor_classification_dataset(
            self.x[:n].cpu(),
            self.y[:n].cpu(),
            task_labels=self.t[:n].cpu().tolist(),
        )

    def post_adapt(self, agent: Any, exp: Any) -> None:
        """Add every example of ``exp.dataset`` in order (storage-policy interface)."""
        for i in range(len(exp.dataset)):
            item = exp.dataset[i]
            x, y = item[0], item[1]
            t = item[2] if len(item) > 2 else 0
            self.add(torch.as_tensor(x).to(self.y.device), int(y), int(t))

    # -- state ---------------------------------------------------------------------
    def get_extra_state(self) -> Dict[str, Any]:
        return {
            "n_seen": self.n_seen,
            "mem_size": self.mem_size,
            "rng_state": self.generator.get_state(),
        }

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        if state["mem_size"] != self.mem_size:
            raise ValueError(
                f"the checkpoint's memory has mem_size={state['mem_size']}, this one "
                f"{self.mem_size}: build the strategy with the same `mem_size`."
            )
        self.n_seen = int(state["n_seen"])
        self.generator.set_state(state["rng_state"])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The buffers are allocated lazily: take the checkpoint's shapes first.
        for name in ("x", "y", "t"):
            key = prefix + name
            if key in state_dict:
                setattr(
                    self,
                    name,
                    torch.zeros_like(state_dict[key], device=self.y.device),
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def __getstate__(self):
        # torch.Generator is not picklable everywhere: pickle its state instead.
        state = self.__dict__.copy()
        state["generator"] = self.generator.get_state()
        return state

    def __setstate__(self, state):
        rng_state = state.pop("generator")
        state.setdefault("original_draw", False)
        self.__dict__.update(state)
        self.generator = torch.Generator()
        self.generator.set_state(rng_state)

    def extra_repr(self) -> str:
        return (
            f"mem_size={self.mem_size}, n_seen={self.n_seen}, "
            f"original_draw={self.original_draw}"
        )


__all__ = ["ReservoirMemory"]
