"""Omniglot loader and benchmarks: a tiny synthetic zip in Omniglot's layout, the
two small subsets (``data_root``: the real zips in the data folder where available,
else the synthetic stand-in of tests/conftest.py with the same alphabets and
counts), and a MAML smoke run on them. Real Omniglot pixels are checked in
tests/test_real_data.py."""

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from avalanche_meta.benchmarks.datasets import DatasetNotFoundError
from avalanche_meta.benchmarks.omniglot import (
    find_omniglot,
    load_omniglot,
    omniglot_continual,
    omniglot_fewshot,
    split_by_alphabet,
    split_by_character,
)

ALPHABETS = {"Alpha": 3, "Beta": 4}  # characters per alphabet
DRAWINGS = 4


def drawing(char_index: int, k: int) -> bytes:
    """A 105x105 Omniglot-like PNG: black strokes on white, mode "1"."""
    img = Image.new("1", (105, 105), 1)
    d = ImageDraw.Draw(img)
    x0 = 10 + 12 * char_index + k
    d.rectangle([x0, 20, x0 + 10, 80], fill=0)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_tiny_omniglot(root: Path, as_zip: bool, name="images_background") -> Path:
    files = {}
    i = 0
    for alphabet, n_chars in ALPHABETS.items():
        for c in range(n_chars):
            for k in range(DRAWINGS):
                key = f"{name}/{alphabet}/character{c + 1:02d}/{i:04d}_{k + 1:02d}.png"
                files[key] = drawing(i, k)
            i += 1
    if as_zip:
        path = root / f"{name}.zip"
        with zipfile.ZipFile(path, "w") as zf:
            for key, data in files.items():
                zf.writestr(key, data)
        return path
    for key, data in files.items():
        p = root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root / name


def test_loader_reads_zip_and_folder_inverts_resizes_and_caches(tmp_path):
    zip_path = write_tiny_omniglot(tmp_path, as_zip=True)
    cache = tmp_path / "cache"
    data = load_omniglot(zip_path, cache_dir=cache)
    n_chars = sum(ALPHABETS.values())
    assert data.images.shape == (n_chars * DRAWINGS, 1, 28, 28)
    assert data.images.dtype == torch.float32
    assert torch.equal(torch.bincount(data.targets), torch.full((n_chars,), DRAWINGS))
    assert data.alphabets == ["Alpha", "Beta"]
    assert data.characters[0] == "Alpha/character01"
    assert data.alphabet_of.tolist() == [0, 0, 0, 1, 1, 1, 1]
    # strokes are 1, background 0 (inverted), and the stroke moves with the class
    assert data.images[:, :, 0, 0].max() == 0.0
    assert data.images.amax(dim=(1, 2, 3)).min() > 0.9
    col = data.images[data.targets == 0].mean(0)[0, 14]
    col6 = data.images[data.targets == 6].mean(0)[0, 14]
    assert col.argmax() < col6.argmax()
    # cached: one .pt file, the second load is identical
    files = list(cache.glob("*.pt"))
    assert len(files) == 1
    again = load_omniglot(zip_path, cache_dir=cache)
    assert (
        torch.equal(again.images, data.images) and again.characters == data.characters
    )
    # the folder layout gives the same tensors
    folder = write_tiny_omniglot(tmp_path / "unzipped", as_zip=False)
    same = load_omniglot(folder, use_cache=False)
    assert torch.allclose(same.images, data.images) and torch.equal(
        same.targets, data.targets
    )


def test_missing_data_raises_dataset_not_found_with_paths(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="images_evaluation"):
        find_omniglot("evaluation", tmp_path)
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "omniglot")):
        omniglot_fewshot(train="background", test="evaluation", data_root=tmp_path)
    # a named set is found in <root>/omniglot
    (tmp_path / "omniglot").mkdir()
    path = write_tiny_omniglot(tmp_path / "omniglot", as_zip=True)
    assert find_omniglot("background", tmp_path) == path


def test_splits_by_character_and_by_alphabet(tmp_path):
    data = load_omniglot(write_tiny_omniglot(tmp_path, True), use_cache=False)
    train, test = split_by_character(data, test_fraction=0.3, seed=0)
    assert sorted(train + test) == list(range(data.num_classes))
    assert {int(data.alphabet_of[c]) for c in test} == {0, 1}  # every alphabet
    train, test = split_by_alphabet(data, ["Beta"])
    assert test == [3, 4, 5, 6] and train == [0, 1, 2]
    with pytest.raises(ValueError, match="test_alphabets"):
        split_by_alphabet(data, 2)


def test_fewshot_benchmark_by_character_split(tmp_path):
    (tmp_path / "omniglot").mkdir()
    write_tiny_omniglot(tmp_path / "omniglot", as_zip=True)
    info = omniglot_fewshot(
        train="background", test=None, test_classes=2, data_root=tmp_path
    )
    assert info.extras["train_classes"] == 5 and info.extras["test_classes"] == 2
    tr = info.benchmark.train_stream[0].dataset
    te = info.benchmark.test_stream[0].dataset
    assert set(tr.targets) == set(range(5)) and set(te.targets) == {5, 6}
    assert info.input_shape == (1, 28, 28)


def test_fewshot_benchmark_can_train_on_every_character(tmp_path):
    """test=None without test_classes (or 0): every character is a training
    character and there is no test experience (a model meant to be adapted to
    the user's own tasks); MAML meta-trains on it."""
    from avalanche.logging import TextLogger
    from avalanche.training.plugins import EvaluationPlugin

    from avalanche_meta.strategies.maml import MAML

    (tmp_path / "omniglot").mkdir()
    write_tiny_omniglot(tmp_path / "omniglot", as_zip=True)
    for test_classes in (None, 0):
        info = omniglot_fewshot(
            train="background", test=None, test_classes=test_classes, data_root=tmp_path
        )
        assert info.extras["train_classes"] == 7 and info.extras["test_classes"] == 0
        assert len(info.benchmark.test_stream) == 0
        assert set(info.benchmark.train_stream[0].dataset.targets) == set(range(7))
        assert info.num_classes == 7
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 3))
    strategy = MAML(
        model=model,
        ways=3,
        meta_batch_size=2,
        meta_iterations=2,
        evaluator=EvaluationPlugin(loggers=[TextLogger(io.StringIO())]),
    )
    strategy.train(info.benchmark.train_stream[0])
    assert strategy.total_meta_iterations == 2
    with pytest.raises(ValueError, match="needs test=None"):
        omniglot_fewshot(
            train="background", test="background", test_classes=2, data_root=tmp_path
        )


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One decoded-Omniglot cache for the tests of this module (not in the repo)."""
    return tmp_path_factory.mktemp("omniglot-cache")


def test_offline_subsets_test_alphabets_never_seen(data_root, cache):
    info = omniglot_fewshot(data_root=data_root, cache_dir=cache)
    ex = info.extras
    assert ex["train_classes"] == 136
    assert not set(ex["train_alphabets"]) & set(ex["test_alphabets"])
    assert set(ex["dropped_test_alphabets"]) == {"Greek", "Latin"}
    assert ex["test_classes"] == 156 - 24 - 26
    te = info.benchmark.test_stream[0].dataset
    assert len(te) == 20 * ex["test_classes"]
    cont = omniglot_continual(data_root=data_root, cache_dir=cache, n_experiences=4)
    groups = cont.extras["alphabet_groups"]
    assert len(groups) == 4 and len({a for g in groups for a in g}) == 8
    for tr_exp, te_exp in zip(cont.benchmark.train_stream, cont.benchmark.test_stream):
        assert not set(tr_exp.dataset.targets) & set(te_exp.dataset.targets)


def test_maml_on_real_omniglot_smoke(data_root, cache):
    from avalanche.logging import TextLogger
    from avalanche.training.plugins import EvaluationPlugin

    from avalanche_meta.evaluation.fewshot import FewShotAccuracy
    from avalanche_meta.strategies.maml import MAML
    from avalanche_meta.utils.quiet_import import import_learn2learn

    l2l = import_learn2learn()
    torch.manual_seed(0)
    info = omniglot_fewshot(data_root=data_root, cache_dir=cache)
    metric = FewShotAccuracy(ways=5, shots=1, num_tasks=4, inner_steps=3)
    strategy = MAML(
        model=l2l.vision.models.OmniglotCNN(output_size=5),
        meta_iterations=2,
        meta_batch_size=2,
        class_rotations=True,
        task_rotation_prob=0.4,
        evaluator=EvaluationPlugin(metric, loggers=[TextLogger(io.StringIO())]),
    )
    strategy.train(info.benchmark.train_stream[0])
    assert strategy.sampler.num_classes == 4 * 136
    res = strategy.eval(info.benchmark.test_stream)
    acc = res["FewShotAcc_Exp/eval_phase/test_stream/Exp000"]
    assert 0.0 <= acc <= 1.0 and len(metric.results[0].accuracies) == 4


def test_cli_continual_fewshot_fills_accuracy_matrix(
    data_root, cache, tmp_path, monkeypatch
):
    from avalanche_meta.cli.runner import run_experiment

    monkeypatch.setenv("AVALANCHE_META_CACHE", str(cache))
    res = run_experiment(
        "fomaml",
        "omniglot-continual",
        seed=0,
        data_root=str(data_root),
        out_dir=tmp_path / "run",
        hparams=dict(
            meta_iterations=1, meta_batch_size=1, eval_tasks=2, eval_inner_steps=1
        ),
        benchmark_options={"n_experiences": 2},
        progress=False,
        plots=False,
        initial_eval=False,
    )
    R = res["accuracy_matrix"]
    assert len(R) == 2 and all(len(r) == 2 for r in R)
    assert all(0.0 <= v <= 100.0 for r in R for v in r)
    assert res["average_accuracy"] == pytest.approx((R[1][0] + R[1][1]) / 2)
    extra = json.loads((tmp_path / "run" / "fewshot.json").read_text())
    assert len(extra["ci95_matrix"]) == 2
