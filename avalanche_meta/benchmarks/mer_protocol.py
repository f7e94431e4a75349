"""The MNIST protocols of MER (Riemer et al., ICLR 2019), as Avalanche benchmarks.

MNIST Rotations (20 tasks x 1000 training examples), MNIST Permutations (20 x 1000)
and Many Permutations (100 x 200), single pass, one example at a time, every task
evaluated on the full 10,000-image MNIST test set transformed for that task. The
original code (GEM's data scripts, reused by MER) draws a fresh random subset of
``samples_per_task`` training images for every task; so does this module.

Inputs are float tensors of shape ``(1, 28, 28)`` in [0, 1] (pixels / 255, no
normalisation, as in the original code): the channel-first image shape of
Avalanche's own MNIST benchmarks, so the same benchmark feeds convolutional models
and MLPs (which flatten it; the original code feeds the flat 784 vector).

Memory: the images are shared between tasks. A permutation is applied when an item
is read (:class:`~avalanche_meta.benchmarks.datasets.PixelDataset`); rotations are
computed once, vectorised over the whole batch, and stored as uint8 (20 tasks x
10,000 test images = 157 MB).

Scenarios: ``"domain"`` (default; all tasks share the 10 labels and task label 0)
and ``"task"`` (task ``t`` gives task label ``t`` to every sample, same 10 classes;
for multi-head models such as :class:`~avalanche_meta.models.mlp.MultiHeadMLP`, or a
single head). Class-IL is not defined for these protocols.

Randomness: one ``numpy.random.default_rng(seed)`` draws (in this order) the
rotation angles or permutations and then the training subsets, so a seed gives the
same benchmark on every machine. It is not the original code's random stream (the
original data files were generated once and downloaded), so the exact angles and
permutations differ from the published runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from avalanche_meta.benchmarks.base import BenchmarkInfo
from avalanche_meta.benchmarks.datasets import (
    PixelDataset,
    build_benchmark,
    load_mnist,
    random_permutations,
)
from avalanche_meta.utils.scenario import check_scenario
from avalanche_meta.utils.validation import check_choice, check_positive

MNIST_SHAPE = (1, 28, 28)
_N_TRAIN = 60000


def _check_common(n_tasks: int, samples_per_task: int, scenario: str) -> None:
    check_positive("n_tasks", n_tasks, integer=True)
    check_positive("samples_per_task", samples_per_task, integer=True)
    if samples_per_task > _N_TRAIN:
        raise ValueError(
            f"`samples_per_task` must be <= {_N_TRAIN} (the MNIST training set), "
            f"got {samples_per_task}."
        )
    check_scenario(scenario)
    if scenario == "class":
        raise ValueError(
            "scenario='class' is not defined for the MER MNIST protocols: every task "
            "has the same 10 digits. Use scenario='domain' (the paper's setting) or "
            "'task' (task labels given)."
        )


def _train_subsets(
    rng: np.random.Generator, n_tasks: int, k: int, n_train: int = _N_TRAIN
) -> list:
    """``n_tasks`` random subsets of ``k`` of the ``n_train`` training images.

    ``n_train`` is the size of the MNIST that was read (60,000; smaller for a
    subset of MNIST, such as the tests' fallback data); the draws are the same as
    with the full MNIST when it is 60,000.
    """
    if k > n_train:
        raise ValueError(
            f"`samples_per_task` must be <= {n_train} (the training images in the "
            f"data folder), got {k}."
        )
    return [
        torch.from_numpy(rng.choice(n_train, size=k, replace=False).astype(np.int64))
        for _ in range(n_tasks)
    ]


def _info(
    benchmark, name: str, scenario: str, n_tasks: int, extras: dict
) -> BenchmarkInfo:
    return BenchmarkInfo(
        benchmark=benchmark,
        name=name,
        scenario=scenario,
        input_shape=MNIST_SHAPE,
        num_classes=10,
        classes_per_experience=[list(range(10)) for _ in range(n_tasks)],
        task_labels=scenario == "task",
        online=True,
        online_batch=1,
        extras=extras,
    )


def _task_labels(scenario: str, n_tasks: int) -> list:
    return list(range(n_tasks)) if scenario == "task" else [0] * n_tasks


def rotate_images(
    images: Tensor, angle: float, interpolation: str = "nearest"
) -> Tensor:
    """Rotate a batch of uint8 images ``(N, H, W)`` counter-clockwise by ``angle`` degrees.

    Uses torchvision's tensor ``rotate``, vectorised over chunks of 2048 images
    (zero fill, rotation about the image centre). With ``"nearest"`` the result equals
    ``PIL.Image.rotate`` pixel for pixel, the operation the original data scripts
    applied image by image.

    :param images: uint8 tensor ``(N, H, W)``.
    :param angle: degrees, counter-clockwise.
    :param interpolation: ``"nearest"`` (as the original) or ``"bilinear"``.
    :return: uint8 tensor ``(N, H, W)``.
    """
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    check_choice("interpolation", interpolation, ("nearest", "bilinear"))
    mode = (
        InterpolationMode.NEAREST
        if interpolation == "nearest"
        else InterpolationMode.BILINEAR
    )
    out = torch.empty_like(images)
    # In chunks: torchvision works in float with a sampling grid per image, which
    # for the whole test set at once would be a transient ~100 MB.
    for i in range(0, len(images), 2048):
        chunk = images[i : i + 2048].unsqueeze(1)
        out[i : i + 2048] = TF.rotate(chunk, float(angle), interpolation=mode)[:, 0]
    return out


def mer_angles(
    n_tasks: int, rng: np.random.Generator, max_angle: float = 180.0
) -> list:
    """One angle per task, as the original generator draws them.

    Task ``t`` gets an angle uniform in ``[max_angle * t / n, max_angle * (t+1) / n)``,
    so angles grow with the task index and cover 0-180 degrees.
    """
    return [float(max_angle * (t + rng.random()) / n_tasks) for t in range(n_tasks)]


def mnist_rotations(
    *,
    n_tasks: int = 20,
    samples_per_task: int = 1000,
    angles: Optional[Sequence[float]] = None,
    scenario: str = "domain",
    seed: int = 0,
    data_root: Union[str, Path, None] = None,
    interpolation: str = "nearest",
    download: bool = False,
) -> BenchmarkInfo:
    """MER's MNIST Rotations: each task is MNIST rotated by its own angle.

    :param n_tasks: number of tasks (experiences).
    :param samples_per_task: training examples per task (a new random subset of
        the 60,000 for every task); the test set of every task is the full
        10,000-image MNIST test set rotated by the task's angle.
    :param angles: the angle of each task, in degrees (counter-clockwise). None:
        drawn as the original generator does (:func:`mer_angles`: task ``t``
        uniform in ``[180 t / n, 180 (t+1) / n)``).
    :param scenario: ``"domain"`` (default) or ``"task"``.
    :param seed: seeds the angles and the training subsets.
    :param data_root: the folder holding ``MNIST/raw`` (None: the default root).
    :param interpolation: ``"nearest"`` (the original: PIL's default) or
        ``"bilinear"``.
    :param download: download MNIST with torchvision if it is missing.
    :return: the benchmark; ``extras["angles"]`` holds the angles.

    Example::

        info = mnist_rotations(n_tasks=20, samples_per_task=1000, seed=0)
        for exp in online_stream(info.benchmark.train_stream, batch_size=1):
            ...
    """
    _check_common(n_tasks, samples_per_task, scenario)
    check_choice("interpolation", interpolation, ("nearest", "bilinear"))
    rng = np.random.default_rng(seed)
    if angles is None:
        angles = mer_angles(n_tasks, rng)
    else:
        angles = [float(a) for a in angles]
        if len(angles) != n_tasks:
            raise ValueError(
                f"`angles` has {len(angles)} entries but `n_tasks` is {n_tasks}; "
                "give one angle per task."
            )
    x_tr, y_tr, x_te, y_te = load_mnist(data_root, download=download)
    subsets = _train_subsets(rng, n_tasks, samples_per_task, len(x_tr))
    train, test = [], []
    for angle, idx in zip(angles, subsets):
        train.append(
            PixelDataset(rotate_images(x_tr[idx], angle, interpolation), y_tr[idx])
        )
        test.append(PixelDataset(rotate_images(x_te, angle, interpolation), y_te))
    bm = build_benchmark(train, test, _task_labels(scenario, n_tasks))
    return _info(
        bm,
        "rotated-mnist",
        scenario,
        n_tasks,
        {
            "angles": angles,
            "samples_per_task": samples_per_task,
            "train_indices": subsets,
            "protocol": "MER MNIST Rotations (Riemer et al. 2019)",
        },
    )


def _permutations(
    name: str,
    n_tasks: int,
    samples_per_task: int,
    scenario: str,
    seed: int,
    data_root: Union[str, Path, None],
    download: bool,
) -> BenchmarkInfo:
    _check_common(n_tasks, samples_per_task, scenario)
    rng = np.random.default_rng(seed)
    perms = random_permutations(n_tasks, 28 * 28, rng, first_identity=False)
    x_tr, y_tr, x_te, y_te = load_mnist(data_root, download=download)
    subsets = _train_subsets(rng, n_tasks, samples_per_task, len(x_tr))
    train = [
        PixelDataset(x_tr, y_tr, indices=idx, permutation=p)
        for p, idx in zip(perms, subsets)
    ]
    test = [PixelDataset(x_te, y_te, permutation=p) for p in perms]
    bm = build_benchmark(train, test, _task_labels(scenario, n_tasks))
    return _info(
        bm,
        name,
        scenario,
        n_tasks,
        {
            "permutations": perms,
            "samples_per_task": samples_per_task,
            "train_indices": subsets,
            "protocol": f"MER {name} (Riemer et al. 2019)",
        },
    )


def mnist_permutations(
    *,
    n_tasks: int = 20,
    samples_per_task: int = 1000,
    scenario: str = "domain",
    seed: int = 0,
    data_root: Union[str, Path, None] = None,
    download: bool = False,
) -> BenchmarkInfo:
    """MER's MNIST Permutations: each task permutes the pixels with its own permutation.

    Every task, the first included, has a random permutation (as the original
    generator). Permutations are applied lazily: the tasks share one copy of MNIST.

    :param n_tasks: number of tasks (experiences).
    :param samples_per_task: training examples per task (a new random subset for
        every task); the test set of every task is the full permuted MNIST test set.
    :param scenario: ``"domain"`` (default) or ``"task"``.
    :param seed: seeds the permutations and the training subsets.
    :param data_root: the folder holding ``MNIST/raw`` (None: the default root).
    :param download: download MNIST with torchvision if it is missing.
    :return: the benchmark; ``extras["permutations"]`` is an int64 tensor
        ``(n_tasks, 784)`` (output pixel ``i`` = input pixel ``perm[i]``).
    """
    return _permutations(
        "mnist-permutations",
        n_tasks,
        samples_per_task,
        scenario,
        seed,
        data_root,
        download,
    )


def many_permutations(
    *,
    n_tasks: int = 100,
    samples_per_task: int = 200,
    scenario: str = "domain",
    seed: int = 0,
    data_root: Union[str, Path, None] = None,
    download: bool = False,
) -> BenchmarkInfo:
    """MER's Many Permutations: :func:`mnist_permutations` with 100 tasks x 200 examples.

    The parameters are those of :func:`mnist_permutations`.
    """
    return _permutations(
        "many-permutations",
        n_tasks,
        samples_per_task,
        scenario,
        seed,
        data_root,
        download,
    )
