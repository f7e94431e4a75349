"""Data roots, the offline MNIST reader, the missing-data error and PixelDataset.

``mnist_root`` / ``mnist_facts`` come from tests/conftest.py: the full MNIST where
the data folder has it, else the real MNIST subset from PyPI (``make test-data``).
"""

from __future__ import annotations

import gzip
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from avalanche_meta.benchmarks import datasets as D
from avalanche_meta.benchmarks import DatasetNotFoundError, load_mnist
from conftest import mnist_facts

torch.set_num_threads(1)


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _fake_mnist(folder: Path, compress: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (7, 28, 28)),
        "train_labels": rng.integers(0, 10, 7),
        "test_images": rng.integers(0, 256, (3, 28, 28)),
        "test_labels": rng.integers(0, 10, 3),
    }
    folder.mkdir(parents=True)
    for key, name in D.MNIST_FILES.items():
        _write_idx(folder / name, arrays[key], compress)
    return arrays


@pytest.fixture
def no_network(monkeypatch):
    """Any download or socket use fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    import torchvision

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", refuse)
    monkeypatch.setattr(torchvision.datasets, "MNIST", refuse)


# -- data roots -------------------------------------------------------------------
def test_default_data_root_env_and_avalanche_default(monkeypatch, tmp_path):
    monkeypatch.setenv("AVALANCHE_META_DATA", str(tmp_path))
    assert D.default_data_root() == tmp_path
    monkeypatch.delenv("AVALANCHE_META_DATA")
    from avalanche.benchmarks.datasets import default_dataset_location

    assert D.default_data_root() == Path(default_dataset_location("x")).parent


def test_resolve_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("AVALANCHE_META_DATA", str(tmp_path / "env"))
    assert D.resolve_data_root(None) == tmp_path / "env"
    assert D.resolve_data_root(str(tmp_path)) == tmp_path
    assert D.resolve_data_root(tmp_path) == tmp_path
    assert D.resolve_data_root("~/x") == Path.home() / "x"
    with pytest.raises(TypeError, match="data_root"):
        D.resolve_data_root(3)


# -- MNIST reader -----------------------------------------------------------------
def test_load_mnist_real_files(mnist_root):
    facts = mnist_facts(mnist_root)
    x_tr, y_tr, x_te, y_te = load_mnist(mnist_root)
    assert x_tr.shape == (facts.n_train, 28, 28)
    assert x_te.shape == (facts.n_test, 28, 28)
    assert x_tr.dtype == torch.uint8 and y_tr.dtype == torch.int64
    assert y_tr.shape == (facts.n_train,) and y_te.shape == (facts.n_test,)
    assert set(y_tr.unique().tolist()) == set(range(10))
    # Known facts: the first training labels, and class counts.
    assert y_tr[:5].tolist() == facts.first_train_labels
    for c, n in facts.train_counts.items():
        assert int((y_tr == c).sum()) == n
    for c, n in facts.test_counts.items():
        assert int((y_te == c).sum()) == n
    assert int(x_tr.max()) == 255 and int(x_tr.min()) == 0
    # Real handwriting, not noise: MNIST's mean intensity is 0.1307 and about 81%
    # of its pixels are exactly 0 (background).
    assert 0.125 < float(x_tr.float().mean()) / 255 < 0.137
    assert 0.79 < float((x_tr == 0).float().mean()) < 0.83
    # Cached: a second call returns the same tensors without reading again.
    assert load_mnist(mnist_root)[0] is x_tr


@pytest.mark.parametrize("compress", [False, True])
def test_load_mnist_parses_idx_plain_and_gz(tmp_path, compress, no_network):
    arrays = _fake_mnist(tmp_path / "MNIST" / "raw", compress)
    x_tr, y_tr, x_te, y_te = load_mnist(tmp_path)
    assert torch.equal(x_tr, torch.from_numpy(arrays["train_images"].astype(np.uint8)))
    assert torch.equal(y_tr, torch.from_numpy(arrays["train_labels"].astype(np.int64)))
    assert torch.equal(x_te, torch.from_numpy(arrays["test_images"].astype(np.uint8)))
    assert y_te.tolist() == arrays["test_labels"].tolist()


def test_load_mnist_finds_avalanche_layout(tmp_path, no_network):
    arrays = _fake_mnist(tmp_path / "mnist" / "MNIST" / "raw", compress=False, seed=3)
    x_tr = load_mnist(tmp_path)[0]
    assert torch.equal(x_tr, torch.from_numpy(arrays["train_images"].astype(np.uint8)))


def test_corrupt_idx_file_is_a_clear_error(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    _fake_mnist(folder, compress=False)
    data = (folder / D.MNIST_FILES["test_images"]).read_bytes()
    (folder / D.MNIST_FILES["test_images"]).write_bytes(data[:-10])
    with pytest.raises(ValueError, match="truncated"):
        load_mnist(tmp_path)


def test_missing_mnist_raises_offline_error(tmp_path, no_network):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError) as err:
        load_mnist(empty)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert str(empty / "MNIST" / "raw") in msg
    assert "train-images-idx3-ubyte" in msg
    assert "download=True" in msg and "AVALANCHE_META_DATA" in msg
    assert "data_root" in msg
    assert list(empty.iterdir()) == []  # nothing was created


def test_missing_mnist_error_from_every_mnist_builder(tmp_path, no_network):
    from avalanche_meta.benchmarks import (
        many_permutations,
        mnist_permutations,
        mnist_rotations,
        permuted_mnist,
        split_mnist,
    )

    for build in (
        split_mnist,
        permuted_mnist,
        mnist_rotations,
        mnist_permutations,
        many_permutations,
    ):
        with pytest.raises(DatasetNotFoundError, match=str(tmp_path)):
            build(data_root=tmp_path)


def test_download_true_uses_torchvision(tmp_path, monkeypatch):
    calls = []

    class FakeMNIST:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            folder = Path(root) / "MNIST" / "raw"
            if not folder.exists():
                _fake_mnist(folder, compress=False, seed=5)

    import torchvision

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    x_tr = load_mnist(tmp_path / "new", download=True)[0]
    assert x_tr.shape == (7, 28, 28)
    assert calls == [
        (str(tmp_path / "new"), True, True),
        (str(tmp_path / "new"), False, True),
    ]


# -- PixelDataset -----------------------------------------------------------------
def test_pixel_dataset_values_permutation_and_indices():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 4, 5), dtype=torch.uint8, generator=g)
    targets = torch.arange(6) % 3
    perm = torch.randperm(20, generator=g)
    ds = D.PixelDataset(images, targets, indices=[4, 1], permutation=perm)
    assert len(ds) == 2 and ds.targets.tolist() == [1, 1]
    x, y = ds[0]
    assert x.shape == (1, 4, 5) and x.dtype == torch.float32 and y == 1
    # Reference: flatten, permute, divide by 255.
    expected = (images[4].flatten()[perm].float() / 255).view(1, 4, 5)
    assert torch.allclose(x, expected)
    assert torch.allclose(ds.materialize(), torch.stack([ds[0][0], ds[1][0]]))
    # Without a permutation the image is unchanged (up to scaling).
    plain = D.PixelDataset(images, targets)
    assert torch.allclose(plain[2][0], images[2].float().unsqueeze(0) / 255)
    assert plain.targets.tolist() == targets.tolist()


def test_pixel_dataset_rejects_bad_input():
    images = torch.zeros(3, 2, 2, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        D.PixelDataset(images.float(), torch.zeros(3))
    with pytest.raises(ValueError, match="targets"):
        D.PixelDataset(images, torch.zeros(2))
    with pytest.raises(ValueError, match="permutation"):
        D.PixelDataset(images, torch.zeros(3), permutation=torch.tensor([0, 0, 1, 2]))
    with pytest.raises(IndexError, match="indices"):
        D.PixelDataset(images, torch.zeros(3), indices=[3])


def test_random_permutations_first_identity():
    rng = np.random.default_rng(0)
    perms = D.random_permutations(3, 10, rng, first_identity=True)
    assert perms.shape == (3, 10) and perms.dtype == torch.int64
    assert perms[0].tolist() == list(range(10))
    for p in perms:
        assert sorted(p.tolist()) == list(range(10))
    assert not torch.equal(perms[1], perms[2])
