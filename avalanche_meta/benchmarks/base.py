"""What a built benchmark is: an Avalanche benchmark plus the facts a strategy needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Tuple


@dataclass
class BenchmarkInfo:
    """An Avalanche benchmark and its description.

    :param benchmark: the Avalanche benchmark (``train_stream``, ``test_stream``).
    :param name: the benchmark's name (e.g. ``"split-mnist"``).
    :param scenario: ``"task"``, ``"class"`` or ``"domain"``.
    :param input_shape: the shape of one input, without the batch dimension.
    :param num_classes: the number of output units a single-head model needs.
    :param classes_per_experience: the (global) class ids of each experience.
    :param task_labels: True when experiences carry distinct task labels.
    :param online: True when the protocol is single-pass (one example or a small
        batch per step); the runner then splits each experience into an online stream.
    :param online_batch: examples per online step.
    :param extras: anything else a protocol wants to pass on (e.g. rotation angles).
    """

    benchmark: Any
    name: str
    scenario: str
    input_shape: Tuple[int, ...]
    num_classes: int
    classes_per_experience: List[List[int]]
    task_labels: bool
    online: bool = False
    online_batch: int = 1
    extras: dict = field(default_factory=dict)

    @property
    def n_experiences(self) -> int:
        """Number of training experiences."""
        return len(self.classes_per_experience)

    @property
    def input_size(self) -> int:
        """Number of input features once flattened."""
        n = 1
        for d in self.input_shape:
            n *= d
        return n
