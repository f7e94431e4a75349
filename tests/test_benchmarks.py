"""The protocol builders, online streams and command-line registration.

The MNIST tests read ``mnist_root`` (tests/conftest.py): the full MNIST where the
data folder has it, else the real 5,000-digit MNIST subset from PyPI that
``make test`` lays out; sizes are read from the data.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from avalanche_meta.benchmarks import (
    BenchmarkInfo,
    many_permutations,
    mnist_permutations,
    mnist_rotations,
    online_stream,
    permuted_mnist,
    split_digits,
    split_mnist,
)
from avalanche_meta.benchmarks.mer_protocol import rotate_images
from avalanche_meta.models.mlp import MLP, MultiHeadMLP

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def mnist(mnist_root):
    from avalanche_meta.benchmarks import load_mnist

    return load_mnist(mnist_root)


def stream_facts(stream):
    """(len(dataset), task_labels, classes, label set, task-label set) per experience."""
    out = []
    for exp in stream:
        ds = exp.dataset
        out.append(
            (
                len(ds),
                list(exp.task_labels),
                list(exp.classes_in_this_experience),
                set(int(v) for v in ds.targets),
                set(int(v) for v in ds.targets_task_labels),
            )
        )
    return out


def first_batch(exp, n=64):
    ds = exp.dataset.eval()
    loader = torch.utils.data.DataLoader(ds, batch_size=n, collate_fn=ds.collate_fn)
    return next(iter(loader))


def quiet_naive(model, lr=0.05, mb=32, epochs=1):
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.supervised import Naive

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluator = EvaluationPlugin(accuracy_metrics(experience=True), loggers=[])
    return Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=lr),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=mb,
        train_epochs=epochs,
        eval_mb_size=256,
        evaluator=evaluator,
    )


# -- split digits (no data folder) ------------------------------------------------
@pytest.mark.parametrize("scenario", ["class", "task", "domain"])
def test_split_digits_scenarios(scenario):
    info = split_digits(scenario=scenario, seed=1)
    assert isinstance(info, BenchmarkInfo)
    assert info.input_shape == (1, 8, 8) and info.n_experiences == 5
    train, test = info.benchmark.train_stream, info.benchmark.test_stream
    facts_tr, facts_te = stream_facts(train), stream_facts(test)
    assert sum(f[0] for f in facts_tr) + sum(f[0] for f in facts_te) == 1797
    assert sum(f[0] for f in facts_te) == pytest.approx(0.3 * 1797, abs=10)
    for t, (ftr, fte) in enumerate(zip(facts_tr, facts_te)):
        if scenario == "domain":
            assert ftr[3] == fte[3] == {0, 1} and ftr[2] == [0, 1]
        else:
            assert ftr[3] == fte[3] == {2 * t, 2 * t + 1}
            assert ftr[2] == [2 * t, 2 * t + 1]
        expected_t = t if scenario == "task" else 0
        assert ftr[1] == fte[1] == [expected_t] and ftr[4] == {expected_t}
    assert info.num_classes == (2 if scenario == "domain" else 10)
    assert info.task_labels == (scenario == "task")
    assert info.classes_per_experience == [f[2] for f in facts_tr]
    x, y, t = first_batch(train[0])
    assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and t.dtype == torch.int64
    assert float(x.min()) >= 0.0 and float(x.max()) == pytest.approx(1.0)


def test_split_digits_domain_relabels_even_odd():
    info = split_digits(scenario="domain", seed=0)
    from sklearn.datasets import load_digits

    digits = load_digits()
    exp = info.benchmark.train_stream[3]  # digits 6 and 7
    x, y, _ = first_batch(exp, n=len(exp.dataset))
    flat = torch.from_numpy((digits.images / 16.0).astype(np.float32)).flatten(1)
    # Match each image back to its original digit; label = digit % 2.
    dist = torch.cdist(x.flatten(1), flat)
    orig = torch.from_numpy(digits.target)[dist.argmin(1)]
    assert set(orig.tolist()) == {6, 7}
    assert torch.equal(y, orig % 2)


def test_split_digits_is_stratified_and_seeded():
    a = split_digits(seed=3)
    b = split_digits(seed=3)
    c = split_digits(seed=4)
    xa = first_batch(a.benchmark.test_stream[0], n=1000)[0]
    xb = first_batch(b.benchmark.test_stream[0], n=1000)[0]
    xc = first_batch(c.benchmark.test_stream[0], n=1000)[0]
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)
    # Stratified: each digit has about 30% of its images in the test set.
    from sklearn.datasets import load_digits

    counts = np.bincount(load_digits().target)
    for exp in a.benchmark.test_stream:
        for c_, n in exp.dataset.targets.count.items():
            assert abs(n - 0.3 * counts[c_]) <= 1


def test_split_digits_options_and_errors():
    info = split_digits(n_experiences=2, scenario="task")
    assert info.classes_per_experience == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    with pytest.raises(ValueError, match="scenario"):
        split_digits(scenario="instance")
    with pytest.raises(ValueError, match="n_experiences"):
        split_digits(n_experiences=3)
    with pytest.raises(ValueError, match="test_fraction"):
        split_digits(test_fraction=1.0)


# -- training through Avalanche ---------------------------------------------------
def test_task_il_multihead_and_single_head_train_with_naive():
    info = split_digits(scenario="task", seed=0)
    bm = info.benchmark
    # Multi-head: one Avalanche head per task label, created on the fly.
    torch.manual_seed(0)
    mh = MultiHeadMLP(input_size=64, hidden_sizes=(32,))
    s = quiet_naive(mh, lr=0.1, epochs=15)
    for exp in bm.train_stream[:2]:
        s.train(exp)
    assert set(mh.classifier.classifiers.keys()) == {"0", "1"}
    res = s.eval(bm.test_stream[:2])
    for t in (0, 1):
        acc = res[f"Top1_Acc_Exp/eval_phase/test_stream/Task00{t}/Exp00{t}"]
        assert acc > 0.9  # chance is 0.5
    # Single head over 10 units: one step changes the parameters.
    sh = MLP(input_size=64, hidden_sizes=(16,), num_classes=10)
    before = [p.detach().clone() for p in sh.parameters()]
    quiet_naive(sh, epochs=1).train(bm.train_stream[0])
    assert any(not torch.equal(a, b) for a, b in zip(before, sh.parameters()))


def test_online_stream_keeps_task_labels_and_trains_multihead():
    info = split_digits(scenario="task", seed=0)
    exps = list(info.benchmark.train_stream[:2])
    online = list(online_stream(exps, batch_size=10, seed=0))
    n0, n1 = len(exps[0].dataset), len(exps[1].dataset)
    assert len(online) == -(-n0 // 10) + -(-n1 // 10)
    assert sum(len(e.dataset) for e in online) == n0 + n1
    first = online[0]
    assert first.task_labels == [0] and first.task_label == 0
    assert first.classes_in_this_experience == [0, 1]
    last = online[-1]
    assert last.task_labels == [1] and last.classes_in_this_experience == [2, 3]
    # Boundaries are visible in train mode.
    train_view = first.train()
    assert train_view.is_first_subexp and not train_view.is_last_subexp
    assert set(int(v) for v in first.dataset.targets_task_labels) == {0}
    # Seeded: the same order again, a different one with another seed.
    again = [e.dataset.targets[0] for e in online_stream(exps[:1], 10, seed=0)]
    other = [e.dataset.targets[0] for e in online_stream(exps[:1], 10, seed=1)]
    assert again == [e.dataset.targets[0] for e in online[: len(again)]]
    assert again != other

    # A multi-head model trains on the online stream through Avalanche's Naive.
    torch.manual_seed(0)
    model = MultiHeadMLP(input_size=64, hidden_sizes=(32,))
    s = quiet_naive(model, lr=0.1, mb=10)
    for exp in exps:
        s.train(online_stream([exp], batch_size=10, seed=0))
    assert set(model.classifier.classifiers.keys()) == {"0", "1"}
    res = s.eval(info.benchmark.test_stream[:2])
    accs = [v for k, v in res.items() if k.startswith("Top1_Acc_Exp/eval_phase")]
    assert len(accs) == 2 and min(accs) > 0.7  # one pass; chance is 0.5


def test_online_stream_rejects_bad_batch_size():
    info = split_digits()
    with pytest.raises(ValueError, match="batch_size"):
        online_stream(info.benchmark.train_stream, batch_size=0)


# -- BI-R split MNIST -------------------------------------------------------------
@pytest.mark.parametrize("scenario", ["class", "task", "domain"])
def test_split_mnist_scenarios(mnist_root, mnist, scenario):
    _, y_tr, _, y_te = mnist
    info = split_mnist(scenario=scenario, data_root=mnist_root)
    bm = info.benchmark
    assert info.input_shape == (1, 28, 28) and info.n_experiences == 5
    facts_tr, facts_te = stream_facts(bm.train_stream), stream_facts(bm.test_stream)
    assert sum(f[0] for f in facts_tr) == len(y_tr)
    assert sum(f[0] for f in facts_te) == len(y_te)
    for t in range(5):
        pair = {2 * t, 2 * t + 1}
        assert facts_tr[t][0] == int(sum((y_tr == c).sum() for c in pair))
        assert facts_te[t][0] == int(sum((y_te == c).sum() for c in pair))
        labels = {0, 1} if scenario == "domain" else pair
        assert facts_tr[t][3] == facts_te[t][3] == labels
        tl = t if scenario == "task" else 0
        assert facts_tr[t][1] == facts_te[t][1] == [tl]
        assert facts_te[t][4] == {tl}
    assert info.num_classes == (2 if scenario == "domain" else 10)
    x, y, _ = first_batch(bm.train_stream[2])
    assert x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
    assert float(x.max()) == 1.0


def test_split_mnist_pixels_are_mnist(mnist_root, mnist):
    x_tr, y_tr, _, _ = mnist
    info = split_mnist(scenario="class", data_root=mnist_root)
    exp = info.benchmark.train_stream[0]
    x, y = exp.dataset[0][0], exp.dataset[0][1]
    first = int(((y_tr == 0) | (y_tr == 1)).nonzero()[0])
    assert torch.allclose(x, x_tr[first].float().unsqueeze(0) / 255)
    assert y == int(y_tr[first])


def test_split_mnist_class_order(mnist_root):
    order = [3, 8, 0, 1, 2, 4, 5, 6, 7, 9]
    info = split_mnist(scenario="class", fixed_class_order=order, data_root=mnist_root)
    assert info.classes_per_experience[0] == [3, 8]
    assert sorted(info.benchmark.train_stream[0].classes_in_this_experience) == [3, 8]
    a = split_mnist(shuffle_classes=True, seed=5, data_root=mnist_root)
    b = split_mnist(shuffle_classes=True, seed=5, data_root=mnist_root)
    assert a.extras["class_order"] == b.extras["class_order"]
    assert a.extras["class_order"] != list(range(10))
    assert split_mnist(data_root=mnist_root).extras["class_order"] == list(range(10))
    with pytest.raises(ValueError, match="fixed_class_order"):
        split_mnist(fixed_class_order=[0, 0, 1, 2, 3, 4, 5, 6, 7, 8])


def test_split_mnist_task_il_trains_multihead_and_masked_single_head(mnist_root):
    info = split_mnist(scenario="task", data_root=mnist_root)
    exp = info.benchmark.train_stream[1]
    small = exp.dataset.subset(range(256))
    exp_small = exp.__class__.__new__(exp.__class__)
    exp_small.__dict__.update(exp.__dict__)
    exp_small.dataset = small
    mh = MultiHeadMLP(input_size=784, hidden_sizes=(16,))
    quiet_naive(mh, epochs=1, mb=64).train(exp_small)
    head = mh.classifier.classifiers["1"]
    assert head.classifier.out_features >= 4  # global labels 2, 3
    sh = MLP(input_size=784, hidden_sizes=(16,), num_classes=10)
    w = sh.classifier.weight.detach().clone()
    quiet_naive(sh, epochs=1, mb=64).train(exp_small)
    assert not torch.equal(w, sh.classifier.weight)


# -- BI-R permuted MNIST ----------------------------------------------------------
def test_permuted_mnist_padding_permutations_and_labels(mnist_root, mnist):
    x_tr, y_tr, x_te, y_te = mnist
    info = permuted_mnist(n_tasks=3, data_root=mnist_root, seed=2)
    bm = info.benchmark
    assert info.input_shape == (1, 32, 32) and info.num_classes == 10
    perms = info.extras["permutations"]
    assert perms.shape == (3, 1024) and perms[0].tolist() == list(range(1024))
    assert not torch.equal(perms[1], perms[2])
    padded = torch.nn.functional.pad(x_te[5].float() / 255, (2, 2, 2, 2)).flatten()
    for t in range(3):
        exp = bm.test_stream[t]
        assert len(exp.dataset) == len(x_te)
        assert len(bm.train_stream[t].dataset) == len(x_tr)
        x, y, tl = exp.dataset[5]
        assert torch.allclose(x.flatten(), padded[perms[t]])
        assert y == int(y_te[5]) and tl == 0
        assert exp.classes_in_this_experience == list(range(10))
    again = permuted_mnist(n_tasks=3, data_root=mnist_root, seed=2)
    assert torch.equal(again.extras["permutations"], perms)


def test_permuted_mnist_scenarios_and_options(mnist_root, mnist):
    _, y_tr, _, _ = mnist
    cls = permuted_mnist(n_tasks=2, scenario="class", data_root=mnist_root)
    assert cls.num_classes == 20
    assert cls.benchmark.train_stream[1].classes_in_this_experience == list(
        range(10, 20)
    )
    assert cls.benchmark.train_stream[1].dataset[0][1] == int(y_tr[0]) + 10
    task = permuted_mnist(n_tasks=2, scenario="task", data_root=mnist_root)
    assert task.benchmark.test_stream[1].task_labels == [1] and task.task_labels
    small = permuted_mnist(
        n_tasks=2, image_size=28, first_unpermuted=False, data_root=mnist_root
    )
    assert small.input_shape == (1, 28, 28)
    assert small.extras["permutations"][0].tolist() != list(range(784))
    with pytest.raises(ValueError, match="image_size"):
        permuted_mnist(image_size=30, data_root=mnist_root)


# -- MER protocols ----------------------------------------------------------------
def _pil_rotate(img: torch.Tensor, angle: float) -> torch.Tensor:
    """Reference: what the original data scripts did, one PIL image at a time."""
    from PIL import Image

    return torch.from_numpy(
        np.array(Image.fromarray(img.numpy(), mode="L").rotate(angle))
    )


def test_rotate_images_matches_pil():
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8, generator=g)
    for angle in (13.7, 90.0, 171.2):
        out = rotate_images(imgs, angle)
        assert out.dtype == torch.uint8 and out.shape == imgs.shape
        for i in range(4):
            assert torch.equal(out[i], _pil_rotate(imgs[i], angle))


def test_mnist_rotations_structure(mnist_root, mnist):
    x_tr, y_tr, x_te, y_te = mnist
    info = mnist_rotations(n_tasks=3, samples_per_task=20, seed=0, data_root=mnist_root)
    assert info.online and info.online_batch == 1 and not info.task_labels
    assert info.name == "rotated-mnist" and info.scenario == "domain"
    angles = info.extras["angles"]
    assert len(angles) == 3
    for t, a in enumerate(angles):  # one angle per 60-degree stratum
        assert 60 * t <= a < 60 * (t + 1)
    bm = info.benchmark
    subsets = info.extras["train_indices"]
    assert len(set(subsets[0].tolist()) & set(subsets[1].tolist())) < 5
    for t in range(3):
        tr, te = bm.train_stream[t], bm.test_stream[t]
        assert len(tr.dataset) == 20 and len(te.dataset) == len(x_te)
        assert tr.task_labels == te.task_labels == [0]
        x, y, tl = te.dataset[11]
        ref = _pil_rotate(x_te[11], angles[t]).float() / 255
        assert torch.allclose(x[0], ref) and y == int(y_te[11]) and tl == 0
        j = int(subsets[t][4])
        x, y, _ = tr.dataset[4]
        assert torch.allclose(x[0], _pil_rotate(x_tr[j], angles[t]).float() / 255)
        assert y == int(y_tr[j])
    again = mnist_rotations(
        n_tasks=3, samples_per_task=20, seed=0, data_root=mnist_root
    )
    assert again.extras["angles"] == angles
    assert all(
        torch.equal(a, b) for a, b in zip(again.extras["train_indices"], subsets)
    )
    other = mnist_rotations(
        n_tasks=3, samples_per_task=20, seed=1, data_root=mnist_root
    )
    assert other.extras["angles"] != angles


def test_mnist_rotations_options_and_errors(mnist_root, mnist):
    info = mnist_rotations(
        n_tasks=2,
        samples_per_task=5,
        angles=[0, 90],
        scenario="task",
        data_root=mnist_root,
    )
    assert info.extras["angles"] == [0.0, 90.0]
    assert info.benchmark.train_stream[1].task_labels == [1]
    assert info.task_labels and info.classes_per_experience == [list(range(10))] * 2
    x0 = info.benchmark.test_stream[0].dataset[0][0]
    x1 = info.benchmark.test_stream[1].dataset[0][0]
    assert torch.allclose(torch.rot90(x0[0], 1), x1[0])  # 90 degrees counter-clockwise
    with pytest.raises(ValueError, match="class"):
        mnist_rotations(scenario="class", data_root=mnist_root)
    with pytest.raises(ValueError, match="angles"):
        mnist_rotations(n_tasks=3, angles=[0, 1], data_root=mnist_root)
    with pytest.raises(ValueError, match="samples_per_task"):
        mnist_rotations(samples_per_task=0, data_root=mnist_root)
    with pytest.raises(ValueError, match="samples_per_task"):
        mnist_rotations(samples_per_task=60001, data_root=mnist_root)
    with pytest.raises(ValueError, match="samples_per_task"):  # more than the data
        mnist_rotations(samples_per_task=len(mnist[0]) + 1, data_root=mnist_root)
    with pytest.raises(ValueError, match="n_tasks"):
        mnist_permutations(n_tasks=2.5, data_root=mnist_root)


def test_mnist_permutations_structure(mnist_root, mnist):
    x_tr, y_tr, x_te, y_te = mnist
    info = mnist_permutations(
        n_tasks=4, samples_per_task=30, seed=7, scenario="task", data_root=mnist_root
    )
    perms = info.extras["permutations"]
    assert perms.shape == (4, 784)
    assert perms[0].tolist() != list(range(784))  # every task is permuted
    bm = info.benchmark
    for t in range(4):
        tr, te = bm.train_stream[t], bm.test_stream[t]
        assert len(tr.dataset) == 30 and len(te.dataset) == len(x_te)
        assert tr.task_labels == [t] and set(
            int(v) for v in te.dataset.targets_task_labels
        ) == {t}
        x, y, tl = te.dataset[3]
        ref = (x_te[3].flatten()[perms[t]].float() / 255).view(1, 28, 28)
        assert torch.allclose(x, ref) and y == int(y_te[3]) and tl == t
    x, y, tl = first_batch(bm.test_stream[2], n=8)
    assert (
        x.shape == (8, 1, 28, 28) and y.dtype == torch.int64 and tl.tolist() == [2] * 8
    )
    again = mnist_permutations(
        n_tasks=4, samples_per_task=30, seed=7, scenario="task", data_root=mnist_root
    )
    assert torch.equal(again.extras["permutations"], perms)
    # Task-IL with an Avalanche multi-head model: one 10-unit head per task.
    torch.manual_seed(0)
    mh = MultiHeadMLP(input_size=784, hidden_sizes=(8,))
    s = quiet_naive(mh, mb=10)
    for exp in bm.train_stream[:2]:
        s.train(online_stream([exp], batch_size=10, seed=0))
    heads = mh.classifier.classifiers
    assert set(heads.keys()) == {"0", "1"}
    assert heads["1"].classifier.out_features == 10


def test_many_permutations_defaults_and_memory(mnist_root, mnist):
    info = many_permutations(data_root=mnist_root)
    assert info.n_experiences == 100 and info.name == "many-permutations"
    bm = info.benchmark
    assert len(bm.train_stream[99].dataset) == 200
    assert len(bm.test_stream[99].dataset) == len(mnist[2])
    # Lazy permutations: every task's dataset shares MNIST's memory.
    x_te = mnist[2]
    base = bm.test_stream[50].dataset
    inner = base._datasets[0]
    while hasattr(inner, "_datasets"):
        inner = inner._datasets[0]
    assert np.shares_memory(inner._x, x_te.numpy())


def test_mer_online_stream_has_one_example_per_step(mnist_root):
    info = mnist_permutations(n_tasks=2, samples_per_task=5, data_root=mnist_root)
    subs = list(online_stream(info.benchmark.train_stream, info.online_batch, seed=0))
    assert len(subs) == 10 and all(len(s.dataset) == 1 for s in subs)
    assert all(s.task_labels == [0] for s in subs)


# -- command-line registration ----------------------------------------------------
def test_registered_benchmarks(mnist_root):
    import avalanche_meta.cli.methods.benchmarks  # noqa: F401  (registers)
    from avalanche_meta.cli.registry import BENCHMARKS

    expected = {
        "split-digits": "class",
        "split-mnist": "class",
        "permuted-mnist": "domain",
        "rotated-mnist": "domain",
        "mnist-permutations": "domain",
        "many-permutations": "domain",
    }
    for name, default in expected.items():
        assert BENCHMARKS[name].default_scenario == default
        assert default in BENCHMARKS[name].scenarios
    assert "class" not in BENCHMARKS["rotated-mnist"].scenarios
    info = BENCHMARKS["split-digits"].build(
        scenario="task", seed=0, data_root=None, n_experiences=2
    )
    assert info.n_experiences == 2 and info.scenario == "task"
    info = BENCHMARKS["rotated-mnist"].build(
        scenario="domain", seed=0, data_root=mnist_root, n_tasks=2, samples_per_task=3
    )
    assert info.name == "rotated-mnist" and info.n_experiences == 2
    info = BENCHMARKS["many-permutations"].build(
        scenario="task",
        seed=0,
        data_root=str(mnist_root),
        n_tasks=2,
        samples_per_task=3,
    )
    assert info.benchmark.train_stream[1].task_labels == [1]
    with pytest.raises(TypeError):
        BENCHMARKS["split-mnist"].build(
            scenario="class", seed=0, data_root=mnist_root, n_taks=3
        )
