"""Benchmarks of avalanche-meta: the papers' protocols as Avalanche benchmarks.

Every builder is keyword-only and returns a :class:`BenchmarkInfo` (an Avalanche
benchmark with ``train_stream`` / ``test_stream``, plus the facts a strategy needs).
Nothing downloads unless asked: a missing dataset raises
:class:`DatasetNotFoundError` naming the path and the fix.
"""

from avalanche_meta.benchmarks.base import BenchmarkInfo
from avalanche_meta.benchmarks.bir_protocol import permuted_mnist, split_mnist
from avalanche_meta.benchmarks.datasets import (
    DatasetNotFoundError,
    PixelDataset,
    default_data_root,
    load_mnist,
    resolve_data_root,
)
from avalanche_meta.benchmarks.mer_protocol import (
    many_permutations,
    mnist_permutations,
    mnist_rotations,
)
from avalanche_meta.benchmarks.omniglot import (
    load_omniglot,
    omniglot_continual,
    omniglot_fewshot,
)
from avalanche_meta.benchmarks.online import online_stream
from avalanche_meta.benchmarks.split_digits import split_digits

__all__ = [
    "BenchmarkInfo",
    "DatasetNotFoundError",
    "PixelDataset",
    "default_data_root",
    "load_mnist",
    "resolve_data_root",
    "online_stream",
    "mnist_rotations",
    "mnist_permutations",
    "many_permutations",
    "split_mnist",
    "permuted_mnist",
    "split_digits",
    "load_omniglot",
    "omniglot_continual",
    "omniglot_fewshot",
]
