"""Omniglot, read offline, and the few-shot benchmarks built on it.

Omniglot (Lake et al., 2015): 1,623 handwritten characters of 50 alphabets, 20
drawings each, 105x105 binary PNG files laid out ``alphabet/character/*.png`` (the
"background" set has 30 alphabets, the "evaluation" set 20; ``images_background_small1``
and ``images_background_small2`` are two 5-alphabet subsets of the background set).

- :func:`load_omniglot` reads any folder or zip in that layout, resizes every image
  to ``image_size`` x ``image_size`` (28 by default) with PIL's Lanczos filter and
  inverts it so that strokes are 1 and the background 0 (what learn2learn's and
  MAML's Omniglot pipelines do), and caches the decoded tensor as a ``.pt`` file in
  a cache folder (``$AVALANCHE_META_CACHE``, else ``~/.cache/avalanche_meta``).
- :func:`find_omniglot` locates a named set under the data root; a missing set raises
  :class:`~avalanche_meta.benchmarks.datasets.DatasetNotFoundError` with the paths
  searched and how to get Omniglot.
- :func:`split_by_character` / :func:`split_by_alphabet`: train/test splits of the
  classes (characters never seen in training, or whole alphabets never seen).
- :func:`omniglot_fewshot`: one training experience (the training characters) and
  one test experience (the test characters), for MAML / Reptile / transfer with
  :class:`~avalanche_meta.evaluation.fewshot.FewShotAccuracy`.
- :func:`omniglot_continual`: continual few-shot learning; experience ``i`` holds the
  training characters of the ``i``-th group of alphabets and test experience ``i``
  the held-out characters of the same group.

Labels are global character ids (0..C-1 in the order alphabets/characters sort by
name); few-shot tasks remap them to 0..N-1.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from avalanche_meta.benchmarks.base import BenchmarkInfo
from avalanche_meta.benchmarks.datasets import DatasetNotFoundError, resolve_data_root
from avalanche_meta.utils.validation import check_in_interval, check_positive

__all__ = [
    "OmniglotData",
    "find_omniglot",
    "load_omniglot",
    "omniglot_cache_dir",
    "split_by_character",
    "split_by_alphabet",
    "omniglot_fewshot",
    "omniglot_continual",
]

#: Named sets and the file/folder names they go by.
OMNIGLOT_SETS = {
    "small1": "images_background_small1",
    "small2": "images_background_small2",
    "background": "images_background",
    "evaluation": "images_evaluation",
}

#: Bumped when the decoding changes, so that old caches are not reused.
_CACHE_VERSION = 1


@dataclass
class OmniglotData:
    """Decoded Omniglot images.

    :param images: float tensor ``(N, 1, S, S)`` in [0, 1], strokes 1.
    :param targets: int64 ``(N,)`` character ids in ``0..len(characters)-1``.
    :param characters: ``"alphabet/character"`` name of each id.
    :param alphabets: alphabet names, sorted.
    :param alphabet_of: int64 ``(len(characters),)``: the alphabet index of each id.
    """

    images: Tensor
    targets: Tensor
    characters: List[str]
    alphabets: List[str]
    alphabet_of: Tensor

    @property
    def num_classes(self) -> int:
        return len(self.characters)

    def subset(self, classes: Sequence[int]) -> "OmniglotData":
        """The images of ``classes`` only, relabelled ``0..len(classes)-1`` in the
        given order."""
        classes = [int(c) for c in classes]
        remap = torch.full((self.num_classes,), -1, dtype=torch.long)
        remap[torch.tensor(classes, dtype=torch.long)] = torch.arange(len(classes))
        keep = remap[self.targets] >= 0
        alph_idx = sorted({int(self.alphabet_of[c]) for c in classes})
        alph_remap = {a: i for i, a in enumerate(alph_idx)}
        return OmniglotData(
            images=self.images[keep],
            targets=remap[self.targets[keep]],
            characters=[self.characters[c] for c in classes],
            alphabets=[self.alphabets[a] for a in alph_idx],
            alphabet_of=torch.tensor(
                [alph_remap[int(self.alphabet_of[c])] for c in classes],
                dtype=torch.long,
            ),
        )

    def without_alphabets(self, names: Sequence[str]) -> "OmniglotData":
        """The set minus the alphabets called ``names``."""
        drop = {self.alphabets.index(n) for n in names if n in self.alphabets}
        return self.subset(
            [c for c in range(self.num_classes) if int(self.alphabet_of[c]) not in drop]
        )

    @staticmethod
    def concat(parts: Sequence["OmniglotData"]) -> "OmniglotData":
        """Several sets as one (ids and alphabets offset, in order).

        An alphabet already present in an earlier part (same name) is skipped: the
        offline subsets ``small1`` and ``small2`` both contain the very same Greek and
        Latin characters, which must not count twice.
        """
        images, targets, chars, alphs, alph_of = [], [], [], [], []
        for part in parts:
            part = part.without_alphabets(alphs)
            if not part.num_classes:
                continue
            images.append(part.images)
            targets.append(part.targets + len(chars))
            alph_of.append(part.alphabet_of + len(alphs))
            chars += part.characters
            alphs += part.alphabets
        return OmniglotData(
            torch.cat(images), torch.cat(targets), chars, alphs, torch.cat(alph_of)
        )


def omniglot_cache_dir() -> Path:
    """Where decoded Omniglot tensors are cached (``$AVALANCHE_META_CACHE`` or
    ``~/.cache/avalanche_meta``)."""
    env = os.environ.get("AVALANCHE_META_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "avalanche_meta"


def _missing_message(name: str, root: Path, searched: Sequence[Path]) -> str:
    return (
        f"Omniglot set {name!r} was not found under the data root {root}. Looked for: "
        + ", ".join(str(p) for p in searched)
        + ". Nothing is downloaded: get Omniglot from "
        "https://github.com/brendenlake/omniglot (python/images_background.zip and "
        "images_evaluation.zip, or the small1/small2 subsets) or with "
        f"torchvision.datasets.Omniglot(root={str(root)!r}, download=True) on a machine "
        "with internet, and put the zips (or unzipped folders) in "
        f"{root / 'omniglot'}; or point to another data folder with "
        "AVALANCHE_META_DATA / data_root=..., or pass a path to the zip or folder."
    )


def find_omniglot(name: str, data_root: Union[str, Path, None] = None) -> Path:
    """The zip or folder of an Omniglot set.

    :param name: ``"small1"``, ``"small2"``, ``"background"``, ``"evaluation"``, or a
        path to a zip/folder in the ``alphabet/character/*.png`` layout.
    :param data_root: the data folder (None: ``$AVALANCHE_META_DATA`` or the default).
    :return: the path found.
    :raises DatasetNotFoundError: naming the paths searched and how to get the data.
    """
    root = resolve_data_root(data_root)
    if name not in OMNIGLOT_SETS:
        path = Path(name).expanduser()
        if path.exists():
            return path
        raise DatasetNotFoundError(
            f"Omniglot source {name!r} is neither one of {sorted(OMNIGLOT_SETS)} nor an "
            "existing zip or folder."
        )
    stem = OMNIGLOT_SETS[name]
    searched = []
    for folder in (root / "omniglot", root / "omniglot-py", root):
        for candidate in (folder / f"{stem}.zip", folder / stem):
            searched.append(candidate)
            if candidate.exists():
                return candidate
    raise DatasetNotFoundError(_missing_message(name, root, searched))


def _png_entries(source: Path) -> List[Tuple[str, str, str]]:
    """``(alphabet, character, key)`` of every PNG, sorted; ``key`` opens the file."""
    if source.is_dir():
        keys = [str(p.relative_to(source)) for p in source.rglob("*.png")]
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as zf:
            keys = [n for n in zf.namelist() if n.lower().endswith(".png")]
    else:
        raise ValueError(
            f"{source} is neither a folder nor a zip file; Omniglot must be laid out "
            "alphabet/character/*.png in one of them."
        )
    entries = []
    for key in keys:
        parts = PurePosixPath(key.replace(os.sep, "/")).parts
        if len(parts) < 3:
            raise ValueError(
                f"{source}: {key} is not inside alphabet/character/; Omniglot must be "
                "laid out alphabet/character/*.png."
            )
        entries.append((parts[-3], parts[-2], key))
    if not entries:
        raise DatasetNotFoundError(
            f"{source} holds no PNG images; expected alphabet/character/*.png."
        )
    return sorted(entries)


def _decode(data: bytes, image_size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("L")
        if img.size != (image_size, image_size):
            img = img.resize((image_size, image_size), Image.LANCZOS)
        arr = np.asarray(img, dtype=np.float32) / 255.0
    return 1.0 - arr


def _cache_file(source: Path, image_size: int, cache_dir: Path) -> Path:
    stat = source.stat()
    if source.is_dir():
        stamp = max((p.stat().st_mtime_ns for p in source.rglob("*.png")), default=0)
        size = sum(1 for _ in source.rglob("*.png"))
    else:
        stamp, size = stat.st_mtime_ns, stat.st_size
    key = f"{source.resolve()}|{size}|{stamp}|{image_size}|{_CACHE_VERSION}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return cache_dir / f"omniglot-{source.stem}-{image_size}px-{digest}.pt"


def load_omniglot(
    source: Union[str, Path],
    *,
    data_root: Union[str, Path, None] = None,
    image_size: int = 28,
    cache_dir: Union[str, Path, None] = None,
    use_cache: bool = True,
) -> OmniglotData:
    """Decode an Omniglot set (folder or zip, ``alphabet/character/*.png``).

    Each image is converted to grey levels, resized to ``image_size`` x
    ``image_size`` with Lanczos interpolation (learn2learn's choice) and inverted
    (``1 - x``: strokes 1, background 0). The result is cached in ``cache_dir``
    (default :func:`omniglot_cache_dir`), keyed by the source's path, size and
    modification time, so a second call costs a ``torch.load``.

    :param source: a named set (see :func:`find_omniglot`) or a path.
    :param data_root: the data folder for named sets.
    :param image_size: the side of the resized images.
    :param cache_dir: where to cache (None: the default folder).
    :param use_cache: read and write the cache.
    """
    check_positive("image_size", image_size, integer=True)
    path = find_omniglot(str(source), data_root)
    cache = None
    if use_cache:
        cache = _cache_file(path, image_size, Path(cache_dir or omniglot_cache_dir()))
        if cache.is_file():
            try:
                state = torch.load(cache, weights_only=True)
                return OmniglotData(**state)
            except Exception:  # a corrupt or old cache is rebuilt below
                pass
    entries = _png_entries(path)
    alphabets = sorted({a for a, _, _ in entries})
    characters = sorted({f"{a}/{c}" for a, c, _ in entries})
    char_id = {name: i for i, name in enumerate(characters)}
    alph_id = {name: i for i, name in enumerate(alphabets)}
    images = np.empty((len(entries), 1, image_size, image_size), dtype=np.float32)
    targets = np.empty(len(entries), dtype=np.int64)
    zf = zipfile.ZipFile(path) if path.is_file() else None
    try:
        for i, (a, c, key) in enumerate(entries):
            data = zf.read(key) if zf is not None else (path / key).read_bytes()
            images[i, 0] = _decode(data, image_size)
            targets[i] = char_id[f"{a}/{c}"]
    finally:
        if zf is not None:
            zf.close()
    state = dict(
        images=torch.from_numpy(images),
        targets=torch.from_numpy(targets),
        characters=characters,
        alphabets=alphabets,
        alphabet_of=torch.tensor(
            [alph_id[name.split("/")[0]] for name in characters], dtype=torch.long
        ),
    )
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        torch.save(state, tmp)
        tmp.replace(cache)
    return OmniglotData(**state)


def split_by_character(
    data: OmniglotData, *, test_fraction: float = 0.25, seed: int = 0
) -> Tuple[List[int], List[int]]:
    """Train and test character ids: ``test_fraction`` of the characters of *every*
    alphabet (at least one) held out, chosen with ``seed``."""
    check_in_interval(
        "test_fraction", test_fraction, 0.0, 1.0, low_open=True, high_open=True
    )
    rng = random.Random(seed)
    train, test = [], []
    for a in range(len(data.alphabets)):
        chars = [c for c in range(data.num_classes) if int(data.alphabet_of[c]) == a]
        rng.shuffle(chars)
        n_test = max(1, round(test_fraction * len(chars)))
        if n_test >= len(chars):
            raise ValueError(
                f"alphabet {data.alphabets[a]!r} has {len(chars)} characters: too few "
                f"to hold out test_fraction={test_fraction} of them and train on the rest."
            )
        test += chars[:n_test]
        train += chars[n_test:]
    return sorted(train), sorted(test)


def split_by_alphabet(
    data: OmniglotData, test_alphabets: Union[int, Sequence[str]], *, seed: int = 0
) -> Tuple[List[int], List[int]]:
    """Train and test character ids, the test alphabets never seen in training.

    :param test_alphabets: how many alphabets to hold out (chosen with ``seed``), or
        their names.
    """
    if isinstance(test_alphabets, int):
        if not 0 < test_alphabets < len(data.alphabets):
            raise ValueError(
                f"`test_alphabets` must lie in [1, {len(data.alphabets) - 1}], got "
                f"{test_alphabets}."
            )
        order = list(range(len(data.alphabets)))
        random.Random(seed).shuffle(order)
        held = set(order[:test_alphabets])
    else:
        unknown = set(test_alphabets) - set(data.alphabets)
        if unknown:
            raise ValueError(
                f"unknown alphabets in `test_alphabets`: {sorted(unknown)}."
            )
        held = {data.alphabets.index(a) for a in test_alphabets}
    train = [c for c in range(data.num_classes) if int(data.alphabet_of[c]) not in held]
    test = [c for c in range(data.num_classes) if int(data.alphabet_of[c]) in held]
    return train, test


def _avalanche_dataset(x: Tensor, y: Tensor):
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset

    return _make_taskaware_tensor_classification_dataset(x, y, targets=y.tolist())


def _load_sources(
    sources: Union[str, Sequence[str]], data_root, cache_dir
) -> OmniglotData:
    if isinstance(sources, str):
        sources = [s for s in sources.split(",") if s]
    if not sources:
        raise ValueError("no Omniglot source given.")
    return OmniglotData.concat(
        [load_omniglot(s, data_root=data_root, cache_dir=cache_dir) for s in sources]
    )


def omniglot_fewshot(
    *,
    train: Union[str, Sequence[str]] = "small1",
    test: Union[str, Sequence[str], None] = "small2",
    test_classes: Optional[int] = None,
    data_root: Union[str, Path, None] = None,
    cache_dir: Union[str, Path, None] = None,
    seed: int = 0,
) -> BenchmarkInfo:
    """Few-shot Omniglot: one training experience, one test experience.

    With the offline subsets (the default), meta-training sees the 136 characters of
    ``small1``'s 5 alphabets and testing uses the characters of ``small2``'s
    alphabets that are not in ``small1``: the two subsets share their Greek and Latin
    alphabets (identical images), so the test set is Japanese (katakana), Sanskrit
    and Tagalog, 106 characters never seen in training (test alphabets whose names
    appear in the training set are always removed; ``extras["dropped_test_alphabets"]``
    lists them). With ``test=None`` the characters
    of ``train`` are split at random: ``test_classes`` of them are held out (the MAML
    protocol on the full Omniglot: ``train="background,evaluation"``,
    ``test_classes=423``, i.e. 1,200 training characters); ``test=None`` with
    ``test_classes`` None or 0 meta-trains on every character of ``train`` and the
    benchmark has an empty test stream (for a model meant to be adapted to the
    user's own tasks, :mod:`avalanche_meta.fewshot`).

    Training labels are ``0..C_train-1`` and test labels ``C_train..``; the
    description's ``num_classes`` counts both, ``extras["train_classes"]`` the former.

    :param train: named set(s) or paths (comma-separated or a list), concatenated.
    :param test: the test set(s), or None to split ``train``'s characters.
    :param test_classes: characters held out when ``test`` is None (None or 0: none,
        no test experience).
    :param seed: the split's seed (``test=None`` only).
    """
    from avalanche.benchmarks import benchmark_from_datasets

    data = _load_sources(train, data_root, cache_dir)
    dropped: List[str] = []
    test_data: Optional[OmniglotData] = None
    if test is None and test_classes in (None, 0):
        train_data = data
    elif test is None:
        check_positive("test_classes", test_classes, integer=True)
        if test_classes >= data.num_classes:
            raise ValueError(
                f"`test_classes`={test_classes} leaves no training characters out of "
                f"{data.num_classes}."
            )
        order = list(range(data.num_classes))
        random.Random(seed).shuffle(order)
        train_data = data.subset(sorted(order[test_classes:]))
        test_data = data.subset(sorted(order[:test_classes]))
    else:
        if test_classes is not None:
            raise ValueError(
                "`test_classes` splits the characters of `train` and needs "
                f"test=None; got test={test!r}: drop one of them."
            )
        train_data = data
        test_data = _load_sources(test, data_root, cache_dir)
        dropped = [a for a in test_data.alphabets if a in train_data.alphabets]
        test_data = test_data.without_alphabets(dropped)
        if test_data.num_classes == 0:
            raise ValueError(
                f"every test alphabet ({', '.join(dropped)}) is also in the training "
                "set: choose a `test` set with other alphabets, or test=None to split "
                "the characters."
            )
    n_train = train_data.num_classes
    n_test = 0 if test_data is None else test_data.num_classes
    bm = benchmark_from_datasets(
        train=[_avalanche_dataset(train_data.images, train_data.targets)],
        test=(
            []
            if test_data is None
            else [_avalanche_dataset(test_data.images, test_data.targets + n_train)]
        ),
    )
    return BenchmarkInfo(
        benchmark=bm,
        name="omniglot",
        scenario="class",
        input_shape=tuple(train_data.images.shape[1:]),
        num_classes=n_train + n_test,
        classes_per_experience=[list(range(n_train))],
        task_labels=False,
        extras={
            "train_classes": n_train,
            "test_classes": n_test,
            "train_alphabets": train_data.alphabets,
            "test_alphabets": [] if test_data is None else test_data.alphabets,
            "dropped_test_alphabets": dropped,
            "fewshot": True,
        },
    )


def omniglot_continual(
    *,
    sources: Union[str, Sequence[str]] = ("small1", "small2"),
    n_experiences: int = 4,
    test_fraction: float = 0.25,
    data_root: Union[str, Path, None] = None,
    cache_dir: Union[str, Path, None] = None,
    seed: int = 0,
) -> BenchmarkInfo:
    """Continual few-shot Omniglot: experiences are groups of alphabets.

    The distinct alphabets of ``sources`` (8 for the two offline subsets, which share
    Greek and Latin) are shuffled with ``seed`` and dealt into
    ``n_experiences`` groups of (nearly) equal size. In every alphabet,
    ``test_fraction`` of the characters are held out (:func:`split_by_character`).
    Training experience ``i`` holds the other characters of group ``i``; test
    experience ``i`` the held-out characters of group ``i``. Evaluating the whole
    test stream after each training experience with
    :class:`~avalanche_meta.evaluation.fewshot.FewShotAccuracy` gives the accuracy
    matrix ``R[i][j]`` (few-shot accuracy on group ``j`` after experience ``i``).
    """
    from avalanche.benchmarks import benchmark_from_datasets

    check_positive("n_experiences", n_experiences, integer=True)
    data = _load_sources(sources, data_root, cache_dir)
    if n_experiences > len(data.alphabets):
        raise ValueError(
            f"`n_experiences`={n_experiences} is more than the {len(data.alphabets)} "
            "alphabets to share out."
        )
    train_ids, test_ids = split_by_character(
        data, test_fraction=test_fraction, seed=seed
    )
    order = list(range(len(data.alphabets)))
    random.Random(seed).shuffle(order)
    groups = [order[i::n_experiences] for i in range(n_experiences)]
    train_sets, test_sets, classes, group_names = [], [], [], []
    for group in groups:
        members = set(group)
        tr = [c for c in train_ids if int(data.alphabet_of[c]) in members]
        te = [c for c in test_ids if int(data.alphabet_of[c]) in members]
        for ids, sets in ((tr, train_sets), (te, test_sets)):
            keep = torch.isin(data.targets, torch.tensor(ids))
            sets.append(_avalanche_dataset(data.images[keep], data.targets[keep]))
        classes.append(tr)
        group_names.append(sorted(data.alphabets[a] for a in group))
    bm = benchmark_from_datasets(train=train_sets, test=test_sets)
    return BenchmarkInfo(
        benchmark=bm,
        name="omniglot-continual",
        scenario="class",
        input_shape=tuple(data.images.shape[1:]),
        num_classes=data.num_classes,
        classes_per_experience=classes,
        task_labels=False,
        extras={
            "alphabet_groups": group_names,
            "test_classes": [
                len([c for c in test_ids if int(data.alphabet_of[c]) in set(g)])
                for g in groups
            ],
            "fewshot": True,
        },
    )
