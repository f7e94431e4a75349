"""Test-wide settings: one torch thread per worker, offline data, no writes to docs/."""

import os
import tempfile
from pathlib import Path

import pytest
import torch

#: ``shared/data`` beside the checkout (where CI and the developers' machines have it).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

if "AVALANCHE_META_DATA" not in os.environ and SHARED_DATA.is_dir():
    os.environ["AVALANCHE_META_DATA"] = str(SHARED_DATA)

# Reproductions and benches called from tests must never rewrite docs/RESULTS.md.
os.environ.setdefault(
    "AVALANCHE_META_RESULTS",
    str(Path(tempfile.mkdtemp(prefix="avalanche-meta-results-")) / "RESULTS.md"),
)
os.environ.setdefault("MPLBACKEND", "Agg")

torch.set_num_threads(int(os.environ.get("AVALANCHE_META_TEST_THREADS", "1")))


@pytest.fixture
def data_root() -> Path:
    """The offline data folder; fails loudly (never skips) when it is missing."""
    root = (
        Path(os.environ["AVALANCHE_META_DATA"])
        if "AVALANCHE_META_DATA" in os.environ
        else SHARED_DATA
    )
    assert root.is_dir(), (
        f"test data not found at {root}: set AVALANCHE_META_DATA to the folder holding "
        "MNIST/raw and omniglot/"
    )
    return root
