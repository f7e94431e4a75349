"""Registered benchmark names (``avalanche-meta run STRATEGY --benchmark NAME``).

Each ``build(*, scenario, seed, data_root, **options)`` returns a
:class:`~avalanche_meta.benchmarks.base.BenchmarkInfo`; ``options`` (e.g.
``n_tasks``, ``samples_per_task``) go to the builder unchanged, so a misspelled
option raises the builder's ``TypeError``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union
from avalanche_meta.benchmarks import (
    BenchmarkInfo,
    many_permutations,
    mnist_permutations,
    mnist_rotations,
    permuted_mnist,
    split_digits,
    split_mnist,
)
from avalanche_meta.experiments.registry import register_benchmark

PathLike = Union[str, Path, None]


@register_benchmark(
    "split-digits",
    help="scikit-learn's 8x8 digits, 5 x 2 digits (no data folder needed)",
    scenarios=("task", "class", "domain"),
    default_scenario="class",
)
def build_split_digits(
    *, scenario: str, seed: int, data_root: PathLike = None, **options
) -> BenchmarkInfo:
    """Split digits; ``data_root`` is not used (the data ship with scikit-learn)."""
    return split_digits(scenario=scenario, seed=seed, **options)


@register_benchmark(
    "split-mnist",
    help="MNIST, 5 x 2 digits, full sets (BI-R protocol)",
    scenarios=("task", "class", "domain"),
    default_scenario="class",
)
def build_split_mnist(
    *, scenario: str, seed: int, data_root: PathLike = None, **options
) -> BenchmarkInfo:
    return split_mnist(scenario=scenario, seed=seed, data_root=data_root, **options)


@register_benchmark(
    "permuted-mnist",
    help="MNIST padded to 32x32, 10 permutations, full sets (BI-R protocol)",
    scenarios=("task", "class", "domain"),
    default_scenario="domain",
)
def build_permuted_mnist(
    *, scenario: str, seed: int, data_root: PathLike = None, **options
) -> BenchmarkInfo:
    return permuted_mnist(scenario=scenario, seed=seed, data_root=data_root, **options)


@register_benchmark(
    "rotated-mnist",
    help="MER's MNIST Rotations: 20 tasks x 1000 examples, angles in 0-180, online",
    scenarios=("task", "domain"),
    default_scenario="domain",
)
def build_rotated_mnist(
    *, scenario: str, seed: int, data_root: PathLike = None, **options
) -> BenchmarkInfo:
    return mnist_rotations(scenario=scenario, seed=seed, data_root=data_root, **options)


@register_benchmark(
    "mnist-permutations",
    help="MER's MNIST Permutations: 20 tasks x 1000 examples, online",
    scenarios=("task", "domain"),
    default_scenario="domain",
)
def build_mnist_permutations(
    *, scenario: str, seed: int, data_root: PathLike = None, **options
) -> BenchmarkInfo:
    return mnist_permutations(
        scenario=scenario, seed=seed, data_root=data_root, **options
    )


@register_benchmark(
    "many-permutations",
    help="MER's Many Permutations: 100 tasks x 200 examples, online",
    scenarios=("task", "domain"),
    default_scenario="domain",
)
def build_many_permutations(
    *, scenario: str, seed: int, data_root: PathLike = None, **options
) -> BenchmarkInfo:
    return many_permutations(
        scenario=scenario, seed=seed, data_root=data_root, **options
    )
