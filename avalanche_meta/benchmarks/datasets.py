"""Where the data live, how MNIST is read offline, and the dataset every MNIST protocol shares.

Nothing in this module downloads unless the caller passes ``download=True``: a
missing dataset raises :class:`DatasetNotFoundError`, which names the paths that
were searched and how to obtain the files.

- :func:`default_data_root` / :func:`resolve_data_root`: the data folder
  (``$AVALANCHE_META_DATA``, else Avalanche's data folder).
- :func:`load_mnist`: the four MNIST IDX files in torchvision's layout
  (``<root>/MNIST/raw``), read with ``numpy.frombuffer`` and cached in-process.
- :class:`PixelDataset`: uint8 images shared between tasks (not copied), an
  optional per-task pixel permutation applied when an item is read, float
  output in [0, 1]. The permuted and rotated MNIST protocols build on it.
"""

from __future__ import annotations

import gzip
import os
import threading
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

#: Environment variable naming the data folder.
DATA_ROOT_ENV = "AVALANCHE_META_DATA"

#: The four MNIST files (torchvision's names), without the optional ``.gz``.
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

#: Byte value -> float in [0, 1]; indexing it converts a uint8 image in one step.
_TO_UNIT = np.arange(256, dtype=np.float32) / 255.0

MnistArrays = Tuple[Tensor, Tensor, Tensor, Tensor]
_MNIST_CACHE: Dict[Path, MnistArrays] = {}
_MNIST_LOCK = threading.Lock()


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not on disk and downloading was not asked for.

    The message names every path that was searched and how to get the data.
    """


def default_data_root() -> Path:
    """The data folder used when none is given.

    :return: ``$AVALANCHE_META_DATA`` if set, else the parent of Avalanche's
        ``default_dataset_location(...)`` (``~/.avalanche/data`` unless changed in
        ``~/.avalanche/config.json``).
    """
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser()
    from avalanche.benchmarks.datasets import default_dataset_location

    return Path(default_dataset_location("mnist")).parent


def resolve_data_root(data_root: Union[str, Path, None]) -> Path:
    """Return ``data_root`` as a ``Path`` (``~`` expanded), or :func:`default_data_root`.

    :param data_root: a folder, or None for the default.
    :return: the data folder.
    """
    if data_root is None:
        return default_data_root()
    if not isinstance(data_root, (str, os.PathLike)):
        raise TypeError(
            f"`data_root` must be a path (str or pathlib.Path) or None, got "
            f"{type(data_root).__name__}."
        )
    return Path(data_root).expanduser()


def _mnist_candidates(root: Path) -> Tuple[Path, ...]:
    # torchvision's layout under the root, then the layout Avalanche's classic
    # benchmarks produce (they download into <root>/mnist/MNIST/raw).
    return (root / "MNIST" / "raw", root / "mnist" / "MNIST" / "raw")


def _find(folder: Path, name: str) -> Optional[Path]:
    for candidate in (folder / name, folder / (name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (uint8 payload) into a writable numpy array, copying once."""
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as f:
            raw = bytearray(f.read())
    else:
        raw = bytearray(path.stat().st_size)
        with open(path, "rb") as f:
            f.readinto(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(
            f"{path} is not an IDX file of unsigned bytes (bad magic number); "
            "delete it and obtain MNIST again."
        )
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise ValueError(
            f"{path} is truncated or corrupt: header says {dims} "
            f"({expected} bytes) but it holds {len(raw) - offset}; delete it and "
            "obtain MNIST again."
        )
    # A view of the bytearray: writable, so torch.from_numpy does not warn.
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _missing_mnist_message(root: Path) -> str:
    folders = _mnist_candidates(root)
    names = ", ".join(MNIST_FILES.values())
    return (
        f"MNIST was not found under the data root {root}. Looked for {names} "
        f"(each optionally .gz) in: {', '.join(str(f) for f in folders)}. "
        "Nothing is downloaded unless you ask: either download MNIST with "
        f"torchvision.datasets.MNIST(root={str(root)!r}, download=True) on a "
        "machine with internet (or call load_mnist(download=True)), or point to a "
        f"folder holding MNIST/raw with the {DATA_ROOT_ENV} environment variable "
        "or data_root=..."
    )


def _download_mnist(root: Path) -> None:
    import torchvision

    root.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        torchvision.datasets.MNIST(root=str(root), train=train, download=True)


def load_mnist(
    data_root: Union[str, Path, None] = None, download: bool = False
) -> MnistArrays:
    """Read MNIST (torchvision's ``<root>/MNIST/raw`` layout) without torchvision.

    The four IDX files may be uncompressed or ``.gz``. Results are cached
    in-process per folder: repeated calls return the *same* tensors, so do not
    modify them in place.

    :param data_root: the data folder (None: :func:`default_data_root`).
    :param download: if the files are missing, download them with
        ``torchvision.datasets.MNIST(..., download=True)`` (needs internet). When
        False (the default) a missing file raises :class:`DatasetNotFoundError`.
    :return: ``(x_train, y_train, x_test, y_test)``: uint8 images of shape
        ``(60000, 28, 28)`` and ``(10000, 28, 28)``, int64 labels.

    Example::

        x_tr, y_tr, x_te, y_te = load_mnist("/path/to/data")
    """
    root = resolve_data_root(data_root)
    folder = next(
        (
            f
            for f in _mnist_candidates(root)
            if all(_find(f, n) is not None for n in MNIST_FILES.values())
        ),
        None,
    )
    if folder is None:
        if not download:
            raise DatasetNotFoundError(_missing_mnist_message(root))
        _download_mnist(root)
        folder = _mnist_candidates(root)[0]
        if any(_find(folder, n) is None for n in MNIST_FILES.values()):
            raise DatasetNotFoundError(_missing_mnist_message(root))
    folder = folder.resolve()
    with _MNIST_LOCK:
        if folder not in _MNIST_CACHE:
            arrays = {k: _read_idx(_find(folder, n)) for k, n in MNIST_FILES.items()}
            for split in ("train", "test"):
                x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
                if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
                    raise ValueError(
                        f"MNIST {split} files in {folder} disagree: images "
                        f"{x.shape}, labels {y.shape}."
                    )
            _MNIST_CACHE[folder] = (
                torch.from_numpy(arrays["train_images"]),
                torch.from_numpy(arrays["train_labels"].astype(np.int64)),
                torch.from_numpy(arrays["test_images"]),
                torch.from_numpy(arrays["test_labels"].astype(np.int64)),
            )
        return _MNIST_CACHE[folder]


class PixelDataset(Dataset):
    """Grey-level uint8 images returned as float ``(1, H, W)`` tensors in [0, 1].

    The image tensor is shared, not copied, so twenty or a hundred tasks built on
    the same MNIST images cost one copy of the images plus their indices and
    permutations. Items are produced with two numpy fancy-indexing operations
    (optional permutation, then a byte -> float lookup table), which keeps a
    full evaluation pass over many tasks cheap.

    :param images: uint8 tensor ``(N, H, W)``.
    :param targets: int64 tensor ``(N,)`` of class labels (already relabelled).
    :param indices: which of the ``N`` images this dataset holds (None: all).
    :param permutation: a permutation of the ``H * W`` pixels applied to every
        image: output pixel ``i`` is input pixel ``permutation[i]`` (None: none).
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        *,
        indices: Optional[Union[Tensor, Sequence[int]]] = None,
        permutation: Optional[Tensor] = None,
    ):
        if images.dtype != torch.uint8 or images.dim() != 3:
            raise ValueError(
                f"`images` must be a uint8 tensor (N, H, W), got {images.dtype} of "
                f"shape {tuple(images.shape)}."
            )
        if targets.shape != (images.shape[0],):
            raise ValueError(
                f"`targets` must have shape ({images.shape[0]},), got "
                f"{tuple(targets.shape)}."
            )
        n, h, w = images.shape
        self.image_shape = (1, h, w)
        self._x = images.reshape(n, h * w).numpy()
        self._y = targets.long().numpy()
        self._idx = (
            np.arange(n) if indices is None else torch.as_tensor(indices).numpy()
        )
        if self._idx.size and (self._idx.min() < 0 or self._idx.max() >= n):
            raise IndexError(f"`indices` must lie in [0, {n}).")
        self._perm = None
        if permutation is not None:
            perm = torch.as_tensor(permutation).long()
            if perm.shape != (h * w,) or not torch.equal(
                perm.sort().values, torch.arange(h * w)
            ):
                raise ValueError(
                    f"`permutation` must be a permutation of the {h * w} pixels."
                )
            self._perm = perm.numpy()
        #: The labels of the held images, in order (what Avalanche reads as targets).
        self.targets = torch.from_numpy(
            self._y if indices is None else self._y[self._idx]
        )

    def __len__(self) -> int:
        return len(self._idx)

    def __getitem__(self, i: int) -> Tuple[Tensor, int]:
        j = self._idx[i]
        row = self._x[j]
        if self._perm is not None:
            row = row[self._perm]
        return torch.from_numpy(_TO_UNIT[row].reshape(self.image_shape)), int(
            self._y[j]
        )

    def materialize(self) -> Tensor:
        """All held images as one float tensor ``(len, 1, H, W)`` (vectorised)."""
        x = self._x[self._idx]
        if self._perm is not None:
            x = x[:, self._perm]
        return torch.from_numpy(_TO_UNIT[x].reshape(len(self), *self.image_shape))


def random_permutations(
    n_tasks: int, n_pixels: int, rng: np.random.Generator, *, first_identity: bool
) -> Tensor:
    """``n_tasks`` pixel permutations, one per row (int64 ``(n_tasks, n_pixels)``).

    :param n_tasks: number of permutations.
    :param n_pixels: number of pixels of one image.
    :param rng: the random generator (seeded by the caller).
    :param first_identity: make the first task's permutation the identity.
    """
    perms = [
        (
            np.arange(n_pixels)
            if (t == 0 and first_identity)
            else rng.permutation(n_pixels)
        )
        for t in range(n_tasks)
    ]
    return torch.from_numpy(np.stack(perms).astype(np.int64))


def build_benchmark(
    train_datasets: Sequence[Dataset],
    test_datasets: Sequence[Dataset],
    task_labels: Sequence[int],
):
    """An Avalanche benchmark with one experience per (train, test) dataset pair.

    Each dataset must return ``(x, y)`` and expose ``targets``. Every sample of
    experience ``i`` gets task label ``task_labels[i]`` (a third batch element),
    and experiences carry ``task_label(s)`` and a *list* of
    ``classes_in_this_experience``, which Avalanche's multi-head models need.

    This is what ``avalanche.benchmarks.dataset_benchmark`` builds (a
    ``GenericCLScenario`` of ``ClassificationExperience``: the construction
    AVALANCHE_NOTES section 3.4 lists as working with ``MultiHeadClassifier``,
    iCaRL and the class-timeline attributes), built directly so that each dataset
    is wrapped once (not twice) and the task labels are given rather than read
    back sample by sample, which made a 100-task benchmark slow to build.

    :param train_datasets: one training dataset per experience.
    :param test_datasets: one test dataset per experience.
    :param task_labels: the task label of each experience.
    :return: an Avalanche ``GenericCLScenario`` (``train_stream``, ``test_stream``).
    """
    from avalanche.benchmarks.scenarios.deprecated.classification_scenario import (
        GenericCLScenario,
    )
    from avalanche.benchmarks.utils import _make_taskaware_classification_dataset

    if not (len(train_datasets) == len(test_datasets) == len(task_labels)):
        raise ValueError(
            f"got {len(train_datasets)} train datasets, {len(test_datasets)} test "
            f"datasets and {len(task_labels)} task labels; they must match."
        )
    # No transforms: the datasets already return model-ready tensors. Both groups
    # exist so that strategies can switch with .train() / .eval().
    groups = {"train": (None, None), "eval": (None, None)}

    def wrap(ds: Dataset, t: int):
        return _make_taskaware_classification_dataset(
            ds,
            task_labels=int(t),
            targets=ds.targets,
            transform_groups=groups,
            initial_transform_group="train",
        )

    labels = [int(t) for t in task_labels]
    return GenericCLScenario(
        stream_definitions={
            "train": ([wrap(d, t) for d, t in zip(train_datasets, labels)], labels),
            "test": ([wrap(d, t) for d, t in zip(test_datasets, labels)], labels),
        }
    )
