"""The experiment runner on tiny synthetic benchmarks, and every Avalanche built-in
strategy run end to end once."""

import json

import pytest
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.core import SupervisedPlugin
from avalanche.training.supervised import Naive

from avalanche_meta.benchmarks.base import BenchmarkInfo
from avalanche_meta.cli import registry
from avalanche_meta.cli.runner import UsageError, resolve_hparams, run_experiment
from avalanche_meta.evaluation import (
    average_accuracy,
    bti,
    bwt,
    forgetting,
    fwt,
    learning_accuracy,
)
from avalanche_meta.utils.validation import NonFiniteLossError, check_finite_loss

torch.set_num_threads(1)

SYNTH = "synthetic-runner-test"
SYNTH_MNIST = "synthetic-mnist-shaped-test"
N_EXP = 3


def synthetic_info(scenario, seed, shape=(12,), per_class=24, n_exp=N_EXP):
    """Gaussian blobs, classes 2e and 2e+1 in experience e (Class-IL or Task-IL)."""
    g = torch.Generator().manual_seed(seed)
    n_cls = 2 * n_exp
    dim = 1
    for d in shape:
        dim *= d
    centers = torch.randn(n_cls, dim, generator=g) * 2.0

    def draw(n):
        y = torch.arange(n_cls).repeat_interleave(n)
        x = centers[y] + torch.randn(len(y), dim, generator=g)
        return x.view(len(y), *shape), y

    (xtr, ytr), (xte, yte) = draw(per_class), draw(per_class // 2)
    bm = nc_benchmark(
        _make_taskaware_tensor_classification_dataset(xtr, ytr),
        _make_taskaware_tensor_classification_dataset(xte, yte),
        n_exp,
        task_labels=scenario == "task",
        shuffle=False,
        fixed_class_order=list(range(n_cls)),
    )
    return BenchmarkInfo(
        benchmark=bm,
        name=SYNTH,
        scenario=scenario,
        input_shape=tuple(shape),
        num_classes=n_cls,
        classes_per_experience=[[2 * e, 2 * e + 1] for e in range(n_exp)],
        task_labels=scenario == "task",
    )


def _register_test_entries():
    registry.load_all()
    if SYNTH in registry.BENCHMARKS:
        return

    @registry.register_benchmark(SYNTH, help="test blobs", scenarios=("task", "class"))
    def build(*, scenario, seed, data_root=None, n_exp=N_EXP):
        return synthetic_info(scenario, seed, n_exp=n_exp)

    @registry.register_benchmark(
        SYNTH_MNIST, help="test blobs shaped 1x28x28", scenarios=("class",)
    )
    def build_mnist(*, scenario, seed, data_root=None):
        return synthetic_info(scenario, seed, shape=(1, 28, 28), per_class=8)

    class Counter(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.train_exps = 0

        def before_training_exp(self, strategy, **kw):
            self.train_exps += 1

    @registry.register_strategy(
        "test-online",
        help="Naive on an online stream",
        online=True,
        online_batch=8,
        params={"lr": (float, 0.05, "lr")},
    )
    def build_online(ctx, lr):
        model = ctx.default_model(hidden_sizes=(16,))
        counter = Counter()
        s = Naive(
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=lr),
            train_mb_size=8,
            eval_mb_size=64,
            plugins=[counter],
            evaluator=ctx.evaluator,
        )
        s.counter = counter
        BUILT["online"] = s
        return s

    class NaNLoss(SupervisedPlugin):
        def before_backward(self, strategy, **kw):
            check_finite_loss(strategy.loss * float("nan"), "test-nan step")

    @registry.register_strategy(
        "test-nan",
        help="raises NonFiniteLossError",
        params={"flag": (bool, False, "a bool"), "count": (int, 3, "an int")},
        presets={"fast": {"count": 5}},
    )
    def build_nan(ctx, flag, count):
        model = ctx.default_model(hidden_sizes=(4,))
        return Naive(
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            plugins=[NaNLoss()],
            evaluator=ctx.evaluator,
        )


BUILT = {}
_register_test_entries()


def run(strategy, tmp_path, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("out_dir", tmp_path / strategy)
    return run_experiment(strategy, kw.pop("benchmark", SYNTH), **kw)


# --------------------------------------------------------------------------------
def test_run_writes_results_matrix_and_plots(tmp_path):
    res = run(
        "naive",
        tmp_path,
        scenario="class",
        hparams={"epochs": 15, "hidden": "32", "lr": 0.01, "batch_size": 16},
    )
    out = tmp_path / "naive"
    saved = json.loads((out / "results.json").read_text())
    R = saved["accuracy_matrix"]
    assert len(R) == N_EXP and all(len(r) == N_EXP for r in R)
    assert all(0.0 <= v <= 100.0 for r in R for v in r)
    assert max(max(r) for r in R) > 1.0  # percent, not fractions
    assert saved["average_accuracy"] == pytest.approx(average_accuracy(R))
    assert saved["learning_accuracy"] == pytest.approx(learning_accuracy(R))
    assert saved["bwt"] == pytest.approx(bwt(R))
    assert saved["bti"] == pytest.approx(bti(R))
    assert saved["forgetting"] == pytest.approx(forgetting(R))
    assert saved["fwt"] == pytest.approx(fwt(R, saved["initial_accuracy"]))
    # Class-IL fine-tuning learns each task and then forgets it.
    assert saved["learning_accuracy"] > 80.0
    assert saved["forgetting"] > 30.0
    assert saved["average_accuracy"] < saved["learning_accuracy"] - 20.0
    assert saved["config"]["hparams"]["epochs"] == 15
    assert saved["config"]["versions"]["torch"] == torch.__version__
    for key in ("train_seconds", "eval_seconds", "peak_memory_mb"):
        assert saved[key] > 0
    assert (out / "accuracy_matrix.png").stat().st_size > 1000
    assert (out / "task_accuracy.png").stat().st_size > 1000
    assert res["accuracy_matrix"] == R


def test_seed_makes_runs_reproducible(tmp_path):
    hp = {"epochs": 1, "hidden": "16"}
    a = run("naive", tmp_path, seed=3, hparams=hp, plots=False, out_dir=tmp_path / "a")
    b = run("naive", tmp_path, seed=3, hparams=hp, plots=False, out_dir=tmp_path / "b")
    assert a["accuracy_matrix"] == b["accuracy_matrix"]


@pytest.mark.parametrize("scenario", ["class", "task"])
def test_joint_stores_a_single_honest_row(tmp_path, scenario):
    hp = {"epochs": 5, "hidden": "32", "batch_size": 16}
    res = run("joint", tmp_path, scenario=scenario, hparams=hp)
    R = res["accuracy_matrix"]
    assert len(R) == 1 and len(R[0]) == N_EXP
    assert res["average_accuracy"] == pytest.approx(sum(R[0]) / N_EXP)
    assert res["average_accuracy"] > 80.0  # trained on everything at once
    for key in ("learning_accuracy", "bwt", "bti", "forgetting", "fwt"):
        assert res[key] is None


def test_online_strategy_trains_on_sub_experiences(tmp_path):
    res = run("test-online", tmp_path, scenario="class", plots=False)
    # 48 training samples per experience, 8 per online step.
    assert BUILT["online"].counter.train_exps == N_EXP * 6
    assert len(res["accuracy_matrix"]) == N_EXP
    assert res["config"]["online"] is True and res["config"]["online_batch"] == 8


def test_task_il_uses_a_multi_head_model(tmp_path):
    res = run(
        "naive",
        tmp_path,
        scenario="task",
        hparams={"epochs": 5, "hidden": "16", "batch_size": 16, "lr": 0.01},
    )
    # Each head only knows its own task's two classes: no forgetting across heads
    # is possible through the output layer, and accuracy is far above chance (50%).
    assert res["average_accuracy"] > 75.0


def test_bad_input_gives_clear_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown strategy 'nope'.*naive"):
        run("nope", tmp_path)
    with pytest.raises(UsageError, match="unknown benchmark 'nope'.*split-digits"):
        run("naive", tmp_path, benchmark="nope")
    with pytest.raises(UsageError, match="does not support scenario 'domain'"):
        run("naive", tmp_path, scenario="domain")
    with pytest.raises(UsageError, match="unknown hyper-parameter 'lrr'.*lr"):
        run("naive", tmp_path, hparams={"lrr": 0.1})
    with pytest.raises(UsageError, match="'epochs'.*int"):
        run("naive", tmp_path, hparams={"epochs": "many"})
    with pytest.raises(UsageError, match="no preset 'fastest'.*fast"):
        run("test-nan", tmp_path, preset="fastest")
    with pytest.raises(UsageError, match="option"):
        run("naive", tmp_path, benchmark_options={"n_tasks": 2})
    with pytest.raises(ValueError, match="mem_size"):
        run("replay", tmp_path, hparams={"mem_size": 0})


def test_hparams_defaults_preset_then_overrides():
    spec = registry.STRATEGIES["test-nan"]
    assert resolve_hparams(spec) == {"flag": False, "count": 3}
    assert resolve_hparams(spec, "fast") == {"flag": False, "count": 5}
    assert resolve_hparams(spec, "fast", {"count": "7", "flag": "true"}) == {
        "flag": True,
        "count": 7,
    }


def test_non_finite_loss_propagates(tmp_path):
    with pytest.raises(NonFiniteLossError, match="test-nan step"):
        run("test-nan", tmp_path, plots=False)


BUILTIN_RUNS = [
    ("naive", "class", {}),
    ("replay", "class", {"mem_size": 20}),
    ("ewc", "class", {"ewc_lambda": 10.0}),
    ("ewc", "class", {"mode": "online", "decay_factor": 0.9}),
    ("si", "class", {}),
    ("lwf", "class", {}),
    ("gem", "class", {"patterns_per_exp": 8}),
    ("agem", "class", {"patterns_per_exp": 8, "sample_size": 8}),
    ("lamaml", "class", {"n_inner_updates": 2, "batch_size": 12}),
    ("lamaml", "task", {"n_inner_updates": 2, "batch_size": 12}),
    ("avalanche-mer", "class", {"n_inner_steps": 1, "batch_size": 12}),
]


@pytest.mark.parametrize("name,scenario,hp", BUILTIN_RUNS)
def test_each_builtin_runs_end_to_end(tmp_path, name, scenario, hp):
    hp = dict(hp)
    params = registry.STRATEGIES[name].params
    if "epochs" in params:
        hp.setdefault("epochs", 1)
    hp.setdefault("hidden", "16")
    res = run(name, tmp_path, scenario=scenario, hparams=hp, plots=False)
    R = res["accuracy_matrix"]
    assert len(R) == N_EXP and len(R[0]) == N_EXP
    assert res["average_accuracy"] is not None


def test_generative_replay_runs_on_mnist_shaped_inputs_only(tmp_path):
    res = run(
        "generative-replay",
        tmp_path,
        benchmark=SYNTH_MNIST,
        hparams={"epochs": 1, "hidden": "16", "batch_size": 16},
        plots=False,
    )
    assert len(res["accuracy_matrix"]) == N_EXP
    with pytest.raises(ValueError, match="1x28x28"):
        run("generative-replay", tmp_path, hparams={"epochs": 1})


def test_ewc_checks_its_mode():
    with pytest.raises(ValueError, match="decay_factor"):
        run_experiment(
            "ewc", SYNTH, hparams={"mode": "online"}, progress=False, plots=False
        )
