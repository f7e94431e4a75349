"""The MNIST protocols of brain-inspired replay (van de Ven et al., Nat. Commun. 2020).

Split MNIST (5 tasks x 2 digits; Task-IL, Class-IL, and Domain-IL) and permuted
MNIST (Domain-IL, 10 or 100 permutations), built from :func:`load_mnist` tensors
offline. Avalanche's classic ``SplitMNIST`` / ``PermutedMNIST`` are not used:
they go through torchvision's ``MNIST`` class, which tries to download when the
files are not where it expects them, and ``PermutedMNIST`` materialises a permuted
copy per task through PIL transforms; building from the shared uint8 tensors is
offline by construction and faster.

Inputs are unnormalised pixels in [0, 1] (the paper's VAE reconstructs them with a
binary cross-entropy), float tensors of shape ``(1, H, W)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from avalanche_meta.benchmarks.base import BenchmarkInfo
from avalanche_meta.benchmarks.datasets import (
    PixelDataset,
    build_benchmark,
    load_mnist,
    random_permutations,
)
from avalanche_meta.utils.scenario import check_scenario
from avalanche_meta.utils.validation import check_choice, check_positive


def _class_order(
    fixed_class_order: Optional[Sequence[int]], shuffle_classes: bool, seed: int
) -> List[int]:
    if fixed_class_order is not None:
        order = [int(c) for c in fixed_class_order]
        if sorted(order) != list(range(10)):
            raise ValueError(
                "`fixed_class_order` must list each digit 0-9 exactly once, got "
                f"{list(fixed_class_order)}."
            )
        return order
    if shuffle_classes:
        return [int(c) for c in np.random.default_rng(seed).permutation(10)]
    return list(range(10))


def split_mnist(
    *,
    scenario: str = "class",
    seed: int = 0,
    data_root: Union[str, Path, None] = None,
    fixed_class_order: Optional[Sequence[int]] = None,
    shuffle_classes: bool = False,
    download: bool = False,
) -> BenchmarkInfo:
    """Split MNIST: five experiences of two digits each, full train and test sets.

    Scenarios:

    - ``"class"`` (Class-IL): task label 0 everywhere, global labels 0-9, one head
      of 10 units.
    - ``"task"`` (Task-IL): experience ``i`` has task label ``i``; labels stay the
      global digits, so a single head masked per task (``ActiveUnits``) and an
      Avalanche multi-head model both work.
    - ``"domain"`` (Domain-IL): task label 0, each experience's two digits
      relabelled 0/1 in class order (2 output units), as in the paper's code.

    :param scenario: ``"class"`` (default), ``"task"`` or ``"domain"``.
    :param seed: draws the digit order when ``shuffle_classes`` is True.
    :param data_root: the folder holding ``MNIST/raw`` (None: the default root).
    :param fixed_class_order: the ten digits in experience order (e.g.
        ``[0, 1, 2, ..., 9]`` gives ``(0, 1), (2, 3), ...``); overrides the rest.
    :param shuffle_classes: draw the digit order from ``seed``. Default False:
        the natural order ``(0, 1), (2, 3), ...``, which the paper's code uses for
        its reported runs (seeds below 10 keep the natural order there).
    :param download: download MNIST with torchvision if it is missing.
    :return: the benchmark; ``extras["class_order"]`` is the digit order.

    Example::

        info = split_mnist(scenario="task")
        model = MultiHeadMLP(input_size=info.input_size, hidden_sizes=(400, 400))
    """
    check_scenario(scenario)
    order = _class_order(fixed_class_order, shuffle_classes, seed)
    pairs = [order[2 * i : 2 * i + 2] for i in range(5)]
    x_tr, y_tr, x_te, y_te = load_mnist(data_root, download=download)

    relabel = torch.arange(10)
    if scenario == "domain":
        for pair in pairs:
            relabel[pair[0]], relabel[pair[1]] = 0, 1
    t_tr, t_te = relabel[y_tr], relabel[y_te]

    train, test = [], []
    for pair in pairs:
        in_tr = (y_tr == pair[0]) | (y_tr == pair[1])
        in_te = (y_te == pair[0]) | (y_te == pair[1])
        train.append(PixelDataset(x_tr, t_tr, indices=in_tr.nonzero().flatten()))
        test.append(PixelDataset(x_te, t_te, indices=in_te.nonzero().flatten()))
    task_labels = list(range(5)) if scenario == "task" else [0] * 5
    bm = build_benchmark(train, test, task_labels)
    classes = (
        [[0, 1] for _ in pairs] if scenario == "domain" else [sorted(p) for p in pairs]
    )
    return BenchmarkInfo(
        benchmark=bm,
        name="split-mnist",
        scenario=scenario,
        input_shape=(1, 28, 28),
        num_classes=2 if scenario == "domain" else 10,
        classes_per_experience=classes,
        task_labels=scenario == "task",
        extras={"class_order": order, "digits_per_experience": pairs},
    )


def permuted_mnist(
    *,
    n_tasks: int = 10,
    scenario: str = "domain",
    seed: int = 0,
    data_root: Union[str, Path, None] = None,
    image_size: int = 32,
    first_unpermuted: bool = True,
    download: bool = False,
) -> BenchmarkInfo:
    """Permuted MNIST as in the BI-R paper: full train/test sets, one permutation per task.

    As in the paper's code, images are zero-padded to 32x32 before being permuted
    (``image_size=32``: 1,024 inputs), and the first task is the unpermuted MNIST
    (``first_unpermuted=True``; the code does this for seeds below 10, i.e. every
    reported run). Permutations are applied when an item is read, so 100 tasks
    share one copy of the images.

    Scenarios: ``"domain"`` (default, the paper's: 10 shared labels, task label 0),
    ``"task"`` (task label ``t``, the same 10 labels), ``"class"`` (task ``t`` uses
    labels ``10 t .. 10 t + 9``: ``10 * n_tasks`` output units, as the three-scenario
    paper's Class-IL permuted MNIST).

    :param n_tasks: number of permutations (10 or 100 in the paper).
    :param scenario: ``"domain"``, ``"task"`` or ``"class"``.
    :param seed: seeds the permutations.
    :param data_root: the folder holding ``MNIST/raw`` (None: the default root).
    :param image_size: 32 (padded, the paper) or 28 (no padding).
    :param first_unpermuted: the first task keeps the original pixel order.
    :param download: download MNIST with torchvision if it is missing.
    :return: the benchmark; ``extras["permutations"]`` is int64
        ``(n_tasks, image_size ** 2)``.
    """
    check_positive("n_tasks", n_tasks, integer=True)
    check_scenario(scenario)
    check_choice("image_size", image_size, (28, 32))
    x_tr, y_tr, x_te, y_te = load_mnist(data_root, download=download)
    pad = (image_size - 28) // 2
    if pad:
        x_tr = F.pad(x_tr, (pad, pad, pad, pad))
        x_te = F.pad(x_te, (pad, pad, pad, pad))
    rng = np.random.default_rng(seed)
    perms = random_permutations(
        n_tasks, image_size**2, rng, first_identity=first_unpermuted
    )
    train, test = [], []
    for t, p in enumerate(perms):
        offset = 10 * t if scenario == "class" else 0
        train.append(
            PixelDataset(x_tr, y_tr + offset if offset else y_tr, permutation=p)
        )
        test.append(
            PixelDataset(x_te, y_te + offset if offset else y_te, permutation=p)
        )
    task_labels = list(range(n_tasks)) if scenario == "task" else [0] * n_tasks
    bm = build_benchmark(train, test, task_labels)
    if scenario == "class":
        classes = [list(range(10 * t, 10 * t + 10)) for t in range(n_tasks)]
    else:
        classes = [list(range(10)) for _ in range(n_tasks)]
    return BenchmarkInfo(
        benchmark=bm,
        name="permuted-mnist",
        scenario=scenario,
        input_shape=(1, image_size, image_size),
        num_classes=10 * n_tasks if scenario == "class" else 10,
        classes_per_experience=classes,
        task_labels=scenario == "task",
        extras={"permutations": perms, "first_unpermuted": first_unpermuted},
    )
