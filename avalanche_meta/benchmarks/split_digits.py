"""Split digits: scikit-learn's bundled 8x8 digits as a tiny split benchmark.

1,797 images of 10 digits ship inside scikit-learn (``sklearn.datasets.load_digits``),
so this benchmark needs no data folder and no network: it is the quick benchmark
for smoke runs, tests and examples. Pixels (0-16) are scaled to [0, 1]; inputs are
float tensors ``(1, 8, 8)``. The train/test split is stratified by class.
"""

from __future__ import annotations

import numpy as np
import torch

from avalanche_meta.benchmarks.base import BenchmarkInfo
from avalanche_meta.utils.scenario import check_scenario
from avalanche_meta.utils.validation import check_choice, check_in_interval


def split_digits(
    *,
    scenario: str = "class",
    n_experiences: int = 5,
    seed: int = 0,
    test_fraction: float = 0.3,
) -> BenchmarkInfo:
    """The 8x8 digits split into ``n_experiences`` groups of consecutive digits.

    Experience ``t`` holds digits ``c t .. c t + c - 1`` with ``c = 10 / n_experiences``
    (with 5 experiences: ``{2t, 2t+1}``).

    - ``"class"`` (Class-IL): task label 0, global labels 0-9, one head of 10.
    - ``"task"`` (Task-IL): task label ``t``, global labels 0-9 (a masked single head
      or an Avalanche multi-head model).
    - ``"domain"`` (Domain-IL, the usual "split" Domain-IL): task label 0, and the
      digits of experience ``t`` relabelled ``0 .. c - 1`` (``c`` output units; with 5
      experiences, even digit -> 0, odd digit -> 1).

    :param scenario: ``"class"`` (default), ``"task"`` or ``"domain"``.
    :param n_experiences: 1, 2, 5 or 10.
    :param seed: seeds the stratified train/test split.
    :param test_fraction: fraction of each class held out for testing.
    :return: the benchmark (``extras["digits_per_experience"]``).

    Example::

        info = split_digits(scenario="task")
        for exp in info.benchmark.train_stream:
            strategy.train(exp)
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from avalanche_meta.benchmarks.datasets import build_benchmark

    check_scenario(scenario)
    check_choice("n_experiences", n_experiences, (1, 2, 5, 10))
    check_in_interval(
        "test_fraction", test_fraction, 0, 1, low_open=True, high_open=True
    )

    digits = load_digits()
    x = torch.from_numpy((digits.images / 16.0).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(digits.target.astype(np.int64))
    idx_tr, idx_te = train_test_split(
        np.arange(len(y)),
        test_size=test_fraction,
        stratify=digits.target,
        random_state=seed,
    )
    idx_tr, idx_te = np.sort(idx_tr), np.sort(idx_te)

    c = 10 // n_experiences
    groups = [list(range(c * t, c * t + c)) for t in range(n_experiences)]
    targets = y % c if scenario == "domain" else y

    def part(indices: np.ndarray, group: list):
        keep = torch.from_numpy(indices[np.isin(digits.target[indices], group)])
        ds = torch.utils.data.TensorDataset(x[keep], targets[keep])
        ds.targets = targets[keep]
        return ds

    train = [part(idx_tr, g) for g in groups]
    test = [part(idx_te, g) for g in groups]
    task_labels = (
        list(range(n_experiences)) if scenario == "task" else [0] * n_experiences
    )
    bm = build_benchmark(train, test, task_labels)
    classes = [list(range(c)) for _ in groups] if scenario == "domain" else groups
    return BenchmarkInfo(
        benchmark=bm,
        name="split-digits",
        scenario=scenario,
        input_shape=(1, 8, 8),
        num_classes=c if scenario == "domain" else 10,
        classes_per_experience=classes,
        task_labels=scenario == "task",
        extras={"digits_per_experience": groups, "test_fraction": test_fraction},
    )
