"""What the Avalanche-style drop-in tests share: a small classic SplitMNIST and an
evaluator with Avalanche's standard metrics and all four loggers."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Dict, Optional

import torch
from avalanche.benchmarks.classic import SplitMNIST
from avalanche.evaluation.metrics import (
    accuracy_metrics,
    bwt_metrics,
    forgetting_metrics,
    loss_metrics,
)
from avalanche.logging import (
    CSVLogger,
    InteractiveLogger,
    TensorboardLogger,
    TextLogger,
)
from avalanche.training.plugins import EvaluationPlugin


def small_split_mnist(
    mnist_root: Path, n_train: int, n_test: int, transforms: bool = True
) -> Dict[bool, object]:
    """``{return_task_id: SplitMNIST}`` on ``n_train`` / ``n_test`` examples per
    experience (5 experiences of 2 digits, classes in order).

    Avalanche's ``nc_benchmark`` (which ``SplitMNIST`` is built with) on
    class-balanced subsets of the classic benchmark's own datasets, so experiences keep
    every classic attribute. ``transforms``: SplitMNIST's default transforms
    (ToTensor + Normalize), else none (pixels in [0, 1], as BI-R needs).
    """
    from avalanche.benchmarks import nc_benchmark
    from avalanche.benchmarks.classic.cmnist import (
        _default_mnist_eval_transform,
        _default_mnist_train_transform,
    )

    def subset(ds, per_class):
        y = torch.as_tensor(list(ds.targets))
        idx = torch.cat(
            [torch.nonzero(y == c).flatten()[:per_class] for c in range(10)]
        )
        return ds.subset(idx.tolist())

    extra = {} if transforms else dict(train_transform=None, eval_transform=None)
    out = {}
    for task_labels in (False, True):
        bm = SplitMNIST(
            n_experiences=5,
            return_task_id=task_labels,
            seed=0,
            fixed_class_order=list(range(10)),
            dataset_root=str(mnist_root),
            **extra,
        )
        out[task_labels] = nc_benchmark(
            train_dataset=subset(bm.original_train_dataset, n_train // 2),
            test_dataset=subset(bm.original_test_dataset, n_test // 2),
            n_experiences=5,
            task_labels=task_labels,
            fixed_class_order=list(range(10)),
            train_transform=_default_mnist_train_transform if transforms else None,
            eval_transform=_default_mnist_eval_transform if transforms else None,
        )
    return out


def evaluator(tmp_path: Optional[Path] = None, *extra) -> EvaluationPlugin:
    """Accuracy, loss, forgetting, BWT (+ ``extra`` metrics); all four loggers
    (interactive, text, CSV, TensorBoard) into ``tmp_path`` when it is given."""
    loggers = [TextLogger(io.StringIO())]
    if tmp_path is not None:
        loggers = [
            InteractiveLogger(),
            TextLogger(open(tmp_path / "log.txt", "w")),
            CSVLogger(str(tmp_path / "csv")),
            TensorboardLogger(str(tmp_path / "tb")),
        ]
    return EvaluationPlugin(
        accuracy_metrics(epoch=True, experience=True, stream=True),
        loss_metrics(epoch=True, experience=True, stream=True),
        forgetting_metrics(experience=True, stream=True),
        bwt_metrics(experience=True, stream=True),
        *extra,
        loggers=loggers,
    )
