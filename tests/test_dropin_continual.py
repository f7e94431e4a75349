"""ER, MER, NeuronCalibration, XdG and CalibrationPlugin used as Avalanche users use
Avalanche's own strategies (in the manner of Avalanche's tests/training/test_strategies.py).

Avalanche's classic ``SplitMNIST(n_experiences=5)`` with and without task labels,
subsetted to a few hundred examples per experience; ``SimpleMLP`` / ``MTSimpleMLP``;
an ``EvaluationPlugin`` with accuracy, loss, forgetting and BWT metrics and all four
loggers. Each test asserts behaviour that fails when the code is wrong.
"""

import copy
import csv
import math
from pathlib import Path

import pytest
import sys
from pathlib import Path

import torch
from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario, make_stream
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.benchmarks.utils import (
    _make_taskaware_tensor_classification_dataset as make_dataset,
)
from avalanche.core import SupervisedPlugin
from avalanche.logging import TextLogger
from avalanche.models import MTSimpleMLP, MultiTaskModule, SimpleMLP
from avalanche.training.plugins import EWCPlugin, LwFPlugin, ReplayPlugin
from avalanche.training.supervised import Naive
from torch import nn

from avalanche_meta.models.calibration import base_parameters, calibrate
from avalanche_meta.models.mlp import MLP
from avalanche_meta.plugins import CalibrationPlugin, XdG
from avalanche_meta.strategies import ER, MER, NeuronCalibration
from avalanche_meta.strategies._keywords import StrategyArgumentError
from avalanche_meta.utils.scenario import ActiveUnits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dropin_common import evaluator, small_split_mnist  # noqa: E402

torch.set_num_threads(1)

N_TRAIN, N_TEST, HIDDEN = 120, 60, 32


# -- the benchmarks ------------------------------------------------------------------
@pytest.fixture(scope="module")
def split_mnist(mnist_root):
    """``{return_task_id: small SplitMNIST}`` (5 experiences of 2 digits)."""
    return small_split_mnist(mnist_root, N_TRAIN, N_TEST, transforms=True)


_evaluator = evaluator


def _mlp(seed=0):
    torch.manual_seed(seed)
    return SimpleMLP(num_classes=10, hidden_size=HIDDEN, drop_rate=0.0)


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# -- the strategies, small settings --------------------------------------------------
def _er(model=None, **kw):
    settings = dict(lr=0.05, mem_size=40, replay_batch_size=4, scenario="class")
    return ER(
        model=model or _mlp(),
        train_mb_size=10,
        seed=0,
        **{"evaluator": _evaluator(), **settings, **kw},
    )


def _mer(model=None, **kw):
    settings = dict(
        lr=0.05,
        mem_size=40,
        replay_batch_size=3,
        batches_per_example=2,
        beta=0.5,
        scenario="class",
    )
    return MER(
        model=model or _mlp(),
        train_mb_size=10,
        seed=0,
        **{"evaluator": _evaluator(), **settings, **kw},
    )


def _nccl(model=None, **kw):
    model = model or _mlp()
    settings = dict(mem_size=40, mem_batch_size=10, inner_steps=1, scenario="class")
    return NeuronCalibration(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        train_mb_size=10,
        **{"evaluator": _evaluator(), **settings, **kw},
    )


BUILDERS = {"er": _er, "mer": _mer, "nccl": _nccl}


def _train(strategy, stream, n=2, **kw):
    torch.manual_seed(0)
    for exp in list(stream)[:n]:
        strategy.train(exp, **kw)
    return strategy


# -- (1) keyword-only construction --------------------------------------------------
@pytest.mark.parametrize(
    "cls, typo, fix",
    [
        (ER, "mem_sise", "mem_size"),
        (MER, "batches_per_exemple", "batches_per_example"),
        (NeuronCalibration, "inner_step", "inner_steps"),
    ],
)
def test_keyword_only_construction_names_the_argument(cls, typo, fix):
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(StrategyArgumentError, match="keyword arguments only"):
        cls(model, opt)
    with pytest.raises(TypeError, match=f"{typo!r}; did you mean {fix!r}"):
        cls(model=model, optimizer=opt, **{typo: 3})
    with pytest.raises(ValueError, match="did you mean"):  # also a ValueError
        cls(model=model, optimizer=opt, **{typo: 3})


def test_plugins_name_a_typod_keyword():
    model = _mlp()
    with pytest.raises(TypeError, match="'n_task'; did you mean 'n_tasks'"):
        XdG(model, n_task=5)
    with pytest.raises(TypeError, match="'mem_sise'; did you mean 'mem_size'"):
        CalibrationPlugin(mem_sise=5)
    with pytest.raises(TypeError, match="keyword arguments"):
        CalibrationPlugin(100)


# -- (2) criterion -----------------------------------------------------------------------
@pytest.mark.parametrize("method", ["er", "mer", "nccl"])
def test_cross_entropy_accepted_and_other_criteria_refused_with_reason(method):
    build = BUILDERS[method]
    build(criterion=nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="label_smoothing"):
        build(criterion=nn.CrossEntropyLoss(label_smoothing=0.1))
    with pytest.raises(ValueError, match="MSELoss"):
        build(criterion=nn.MSELoss())


# -- (3) Avalanche plugins ------------------------------------------------------------------
@pytest.mark.parametrize("method", ["er", "nccl"])
@pytest.mark.parametrize("plugin", ["ewc", "lwf"])
def test_regularisation_plugins_compose(split_mnist, method, plugin):
    stream = split_mnist[False].train_stream
    plain = _train(BUILDERS[method](), stream)
    make = {"ewc": lambda: EWCPlugin(ewc_lambda=0.01), "lwf": lambda: LwFPlugin(10.0)}
    p = make[plugin]()
    with_plugin = _train(BUILDERS[method](plugins=[p]), stream)
    if plugin == "ewc":
        assert 0 in p.importances  # its importance pass ran on experience 0
    # the penalty changed the second experience's updates (the first has none)
    assert not torch.equal(_params(plain.model), _params(with_plugin.model))


def test_mer_and_second_order_nccl_refuse_step_plugins_with_the_reason():
    for plugin in (EWCPlugin(ewc_lambda=1.0), LwFPlugin()):
        name = type(plugin).__name__
        with pytest.raises(ValueError, match=f"cannot compose with {name}.*Reptile"):
            _mer(plugins=[plugin])
        with pytest.raises(ValueError, match=f"cannot compose with {name}.*clone"):
            _nccl(plugins=[plugin], second_order=True)


@pytest.mark.parametrize("method", ["er", "mer"])
def test_replay_plugin_composes_with_per_example_replay(split_mnist, method):
    stream = split_mnist[False].train_stream
    strategy = _train(BUILDERS[method](plugins=[ReplayPlugin(mem_size=30)]), stream)
    # experience 1's mini-batches carried ReplayPlugin's samples: each was learned
    # and offered to the reservoir, so more than the two experiences were seen
    assert strategy.memory.n_seen > 2 * N_TRAIN


class _BatchTasks(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.tasks = set()

    def before_training_iteration(self, strategy, **kwargs):
        self.tasks |= set(strategy.mb_task_id.tolist())


def test_nccl_task_il_with_replay_plugin_on_labelled_split_mnist(split_mnist):
    """Issue 12: the replayed samples (old task labels) no longer trip the check."""
    seen = _BatchTasks()
    strategy = _nccl(scenario="task", plugins=[ReplayPlugin(mem_size=30), seen])
    _train(strategy, split_mnist[True].train_stream, n=3)
    assert seen.tasks == {0, 1, 2}  # replayed samples kept their task labels
    assert strategy.task_index == 2


# -- (4) task labels on and off --------------------------------------------------------------
@pytest.mark.parametrize("method", ["er", "mer", "nccl"])
def test_task_il_without_task_labels_is_an_error_naming_the_fix(split_mnist, method):
    strategy = BUILDERS[method](scenario="task")
    stream = split_mnist[False].train_stream
    strategy.train(stream[0])
    with pytest.raises(ValueError, match=r"return_task_id=True.*scenario='class'"):
        strategy.train(stream[1])


@pytest.mark.parametrize("method", ["er", "mer", "nccl"])
@pytest.mark.parametrize("task_labels", [False, True])
def test_trains_with_and_without_task_labels(split_mnist, method, task_labels):
    scenario = "task" if task_labels else "class"
    bm = split_mnist[task_labels]
    strategy = _train(BUILDERS[method](scenario=scenario), bm.train_stream)
    res = strategy.eval(bm.test_stream[:2])
    acc = [
        res[f"Top1_Acc_Exp/eval_phase/test_stream/Task00{i * task_labels}/Exp00{i}"]
        for i in (0, 1)
    ]
    if task_labels:  # two 2-way tasks (chance 0.5)
        assert sum(acc) / 2 > 0.65, acc
    else:  # the last experience, among 4 active classes (chance 0.25; 0.40 is
        # 2.6 standard deviations above it on these 60 test images)
        assert acc[1] >= 0.40, acc


# -- (5) multi-head ------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["er", "mer"])
def test_multi_head_mtsimplemlp_works(split_mnist, method):
    torch.manual_seed(0)
    model = MTSimpleMLP(hidden_size=HIDDEN)
    bm = split_mnist[True]
    strategy = _train(
        BUILDERS[method](model=model, scenario="task", num_classes=10), bm.train_stream
    )
    assert len(model.classifier.classifiers) == 2  # one head per task
    res = strategy.eval(bm.test_stream[:2])
    acc = [
        res[f"Top1_Acc_Exp/eval_phase/test_stream/Task00{i}/Exp00{i}"] for i in (0, 1)
    ]
    assert sum(acc) / 2 > 0.65, acc  # two 2-way tasks (chance 0.5)


def test_nccl_refuses_multi_head_models_with_the_reason():
    with pytest.raises(ValueError, match="multi-head.*uncalibrated heads"):
        _nccl(model=MTSimpleMLP(hidden_size=HIDDEN))
    model = calibrate(MTSimpleMLP(hidden_size=HIDDEN))
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(base_parameters(model), lr=0.1),
        plugins=[CalibrationPlugin()],
        evaluator=_evaluator(),
    )
    with pytest.raises(ValueError, match="multi-head.*not be calibrated"):
        strategy.train(_tiny_exp())


def _tiny_exp(task=0):
    ds = make_dataset(
        torch.rand(20, 1, 28, 28), torch.arange(20) % 2, task_labels=[task] * 20
    )
    bm = CLScenario(
        streams=[
            with_task_labels(
                with_classes_timeline(
                    make_stream(name="train", exps=[DatasetExperience(dataset=ds)])
                )
            )
        ]
    )
    return bm.train_stream[0]


# -- (6) periodic evaluation, (7) loggers, (9) streams never trained on --------------------
@pytest.mark.parametrize("method", ["er", "mer", "nccl"])
def test_periodic_eval_all_loggers_finite_and_untrained_stream_loss(
    split_mnist, method, tmp_path
):
    bm = split_mnist[False]
    strategy = BUILDERS[method](
        evaluator=_evaluator(tmp_path), eval_every=1, peval_mode="iteration"
    )
    strategy.train(bm.train_stream[0], eval_streams=[bm.test_stream])
    metrics = strategy.evaluator.get_all_metrics()
    # periodic evaluation ran during training (no eval() was called)
    xs, values = metrics["Top1_Acc_Stream/eval_phase/test_stream/Task000"]
    assert len(values) >= 2, values
    res = strategy.eval(bm.test_stream)
    # (9) experiences never trained on: a finite, Naive-like loss, not ~1e9
    for i in range(1, 5):
        loss = res[f"Loss_Exp/eval_phase/test_stream/Task000/Exp00{i}"]
        assert math.isfinite(loss) and 0 < loss < 50, (i, loss)
        assert res[f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp00{i}"] == 0.0
    assert res["Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000"] > 0.8
    # (7) every metric finite; stream loss / accuracy really computed (not a 0.0)
    for name, (_, vals) in strategy.evaluator.get_all_metrics().items():
        assert all(math.isfinite(float(v)) for v in vals), name
    assert res["Loss_Stream/eval_phase/test_stream/Task000"] > 0.1
    assert res["Top1_Acc_Stream/eval_phase/test_stream/Task000"] > 0.1
    for f in strategy.evaluator.loggers:
        if isinstance(f, TextLogger):
            f.file.flush()
    rows = list(csv.DictReader(open(tmp_path / "csv" / "eval_results.csv")))
    assert rows and all(math.isfinite(float(r["eval_loss"])) for r in rows)
    assert max(float(r["eval_loss"]) for r in rows) < 50
    train_rows = list(csv.DictReader(open(tmp_path / "csv" / "training_results.csv")))
    assert train_rows
    assert all(math.isfinite(float(r["training_loss"])) for r in train_rows)
    text = (tmp_path / "log.txt").read_text()
    assert "Loss_Stream" in text and "nan" not in text.lower()
    assert list((tmp_path / "tb").rglob("events.out.tfevents*"))


def test_untrained_class_loss_is_bounded_and_predictions_unchanged():
    """The masked -1e9 logits no longer enter the evaluation loss."""
    units = ActiveUnits(4, "class")
    units.observe(torch.tensor([0, 1]))
    z = torch.tensor([[2.0, 1.0, 0.5, -0.5], [0.1, 0.3, 0.2, 0.0]])
    y = torch.tensor([3, 1])
    masked = units.mask(z)
    old = nn.functional.cross_entropy(masked, y, reduction="none")
    new = nn.functional.cross_entropy(
        units.loss_logits(z, None, y), y, reduction="none"
    )
    assert old[0] > 1e8  # the mask value
    # sample 0 (unseen class 3): the loss over units {0, 1, 3}
    expected = torch.logsumexp(z[0, [0, 1, 3]], 0) - z[0, 3]
    torch.testing.assert_close(new[0], expected)
    torch.testing.assert_close(new[1], old[1])  # seen class: unchanged
    assert torch.equal(masked.argmax(1), torch.tensor([0, 1]))  # predictions


# -- (8) several epochs -------------------------------------------------------------------
@pytest.mark.parametrize("method", ["er", "mer", "nccl"])
def test_train_epochs_above_one(split_mnist, method):
    stream = split_mnist[False].train_stream
    one = _train(BUILDERS[method](), stream, n=1)
    two = _train(BUILDERS[method](train_epochs=2), stream, n=1)
    assert not torch.equal(_params(one.model), _params(two.model))
    if method != "nccl":  # every epoch passes each example again
        assert two.memory.n_seen == 2 * N_TRAIN == 2 * one.memory.n_seen


# -- bad input: (x, y) batches, float64 ---------------------------------------------------
@pytest.mark.parametrize("method", ["er", "mer", "nccl"])
def test_x_y_minibatches_get_task_zero_except_in_task_il(method):
    for scenario in ("class", "domain"):
        if method == "nccl" and scenario == "domain":
            continue
        strategy = BUILDERS[method](scenario=scenario)
        strategy.mbatch = [torch.rand(2, 784), torch.tensor([0, 1])]
        strategy._unpack_minibatch()
        assert strategy.mb_task_id.tolist() == [0, 0]
    strategy = BUILDERS[method](scenario="task")
    strategy.mbatch = [torch.rand(2, 784), torch.tensor([0, 1])]
    with pytest.raises(ValueError, match="task label.*return_task_id=True"):
        strategy._unpack_minibatch()


@pytest.mark.parametrize(
    "method, model",
    [
        ("er", "simple"),
        ("mer", "simple"),  # autograd inner loop
        ("mer", "mlp"),  # native kernel (or TorchScript)
        ("mer", "mlp-torchscript"),
        ("nccl", "simple"),
    ],
)
def test_float64_inputs_are_cast_on_every_path(method, model):
    torch.manual_seed(0)
    x = torch.rand(30, 784, dtype=torch.float64)
    y = torch.arange(30) % 2
    ds = make_dataset(x, y, task_labels=[0] * 30)
    exp = CLScenario(
        streams=[
            with_task_labels(
                with_classes_timeline(
                    make_stream(name="train", exps=[DatasetExperience(dataset=ds)])
                )
            )
        ]
    ).train_stream[0]
    net = MLP(784, (HIDDEN,), 10) if model.startswith("mlp") else _mlp()
    strategy = BUILDERS[method](model=net)
    if model == "mlp-torchscript":
        strategy._bind()
        strategy._native = None
        assert strategy.inner_loop == "torchscript"
    before = _params(net).clone()
    strategy.train(exp)
    after = _params(strategy.model)
    assert after.dtype == torch.float32 and torch.isfinite(after).all()
    assert not torch.equal(after, before)
    assert strategy.memory.x.dtype == torch.float32


# -- XdG ----------------------------------------------------------------------------------
def _xdg_naive(model, plugins=(), n_tasks=5, **kw):
    xdg = XdG(model, n_tasks=n_tasks, gating_prop=0.5)
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        train_mb_size=10,
        plugins=[xdg, *plugins],
        evaluator=_evaluator(),
        **kw,
    )
    return strategy, xdg


@pytest.mark.parametrize("plugin", ["ewc", "lwf", "replay"])
def test_xdg_composes_with_avalanche_plugins_on_multi_head(split_mnist, plugin):
    bm = split_mnist[True]
    torch.manual_seed(0)
    base = MTSimpleMLP(hidden_size=HIDDEN)
    plain, _ = _xdg_naive(copy.deepcopy(base))
    _train(plain, bm.train_stream)
    p = {
        "ewc": lambda: EWCPlugin(ewc_lambda=0.01),
        "lwf": lambda: LwFPlugin(10.0),
        "replay": lambda: ReplayPlugin(mem_size=30),
    }[plugin]()
    seen = _BatchTasks()
    strategy, xdg = _xdg_naive(copy.deepcopy(base), plugins=[p, seen])
    _train(strategy, bm.train_stream)
    assert not torch.equal(_params(plain.model), _params(strategy.model))
    if plugin == "ewc":
        assert 0 in p.importances
    if plugin == "replay":
        assert seen.tasks == {0, 1}  # mixed-task batches were gated per task
    res = strategy.eval(bm.test_stream[:2])
    assert res["Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000"] > 0.6


class _SplitMultiHead(MultiTaskModule):
    """A multi-head model that runs Avalanche's default forward: one sub-batch per
    task (unlike MTSimpleMLP, whose hidden layers see the whole batch)."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(6, 8)
        self.heads = nn.ModuleDict({"0": nn.Linear(8, 2), "1": nn.Linear(8, 2)})
        self.max_class_label = 2

    def forward_single_task(self, x, task_label):
        return self.heads[str(task_label)](torch.relu(self.hidden(x)))


@pytest.mark.parametrize("kind", ["mtsimplemlp", "split"])
def test_xdg_mixed_task_batch_on_multi_head_gates_each_sample_with_its_task(kind):
    torch.manual_seed(0)
    if kind == "split":
        model = _SplitMultiHead()
        xdg = XdG(model, n_tasks=2, gating_prop=0.5, layers=["hidden"])
    else:
        model = MTSimpleMLP(input_size=6, hidden_size=8)
        model.classifier.adaptation(_tiny_exp_with(6, task=0))
        model.classifier.adaptation(_tiny_exp_with(6, task=1))
        xdg = XdG(model, n_tasks=2, gating_prop=0.5)
    model.eval()
    x = torch.rand(4, 6)
    t = torch.tensor([1, 0, 1, 0])
    # no set_tasks: a multi-head model is given the labels, XdG reads them there
    mixed = model(x, task_labels=t)
    for task in (0, 1):
        sel = t == task
        alone = model(x[sel], task_labels=t[sel])
        torch.testing.assert_close(mixed[sel][:, :2], alone[:, :2])
        xdg.remove()
        ungated = model(x[sel], task_labels=t[sel])
        xdg.attach()
        assert not torch.allclose(alone, ungated)


def _tiny_exp_with(d, task):
    from avalanche.benchmarks import nc_benchmark

    x = torch.rand(8, d)
    ds = make_dataset(x, torch.arange(8) % 4, task_labels=[0] * 8)
    bm = nc_benchmark(
        ds, ds, n_experiences=2, task_labels=True, fixed_class_order=[0, 1, 2, 3]
    )
    return bm.train_stream[task]


@pytest.mark.parametrize("method", ["er", "mer", "nccl"])
def test_xdg_gates_er_mer_nccl(split_mnist, method):
    bm = split_mnist[True]
    model = _mlp()
    xdg = XdG(model, n_tasks=5, gating_prop=0.5)
    strategy = BUILDERS[method](model=model, scenario="task", plugins=[xdg])
    _train(strategy, bm.train_stream)
    # the gates survive NeuronCalibration's calibrate(): the hooks moved
    assert len(xdg._handles) == 1
    assert xdg._hooked[0] is dict(strategy.model.named_modules())[xdg.layers[0]]
    if method == "mer":
        assert strategy.inner_loop == "autograd"  # compiled loops skip hooks
    # gated: task 0's closed units have zero output for task-0 inputs
    seen = {}
    layer = xdg._hooked[0]
    h = layer.register_forward_hook(lambda m, i, o: seen.update(out=o))
    strategy.eval(bm.test_stream[:1])
    h.remove()
    closed = xdg.gates.mask(0)[0] == 0
    assert closed.any() and torch.all(seen["out"][:, closed] == 0)
    res = strategy.eval(bm.test_stream[:2])
    acc = [
        res[f"Top1_Acc_Exp/eval_phase/test_stream/Task00{i}/Exp00{i}"] for i in (0, 1)
    ]
    assert sum(acc) / 2 > 0.65, acc  # two 2-way tasks (chance 0.5)


def test_xdg_on_class_il_benchmark_is_an_error(split_mnist):
    model = _mlp()
    strategy, _ = _xdg_naive(model)
    strategy.train(split_mnist[False].train_stream[0])
    with pytest.raises(ValueError, match="not Task-IL"):
        strategy.train(split_mnist[False].train_stream[1])


# -- CalibrationPlugin --------------------------------------------------------------------
@pytest.mark.parametrize("plugin", ["ewc", "replay"])
def test_calibration_plugin_composes_with_avalanche_plugins(split_mnist, plugin):
    bm = split_mnist[False]

    def build(extra):
        model = calibrate(_mlp())
        return Naive(
            model=model,
            optimizer=torch.optim.SGD(base_parameters(model), lr=0.05),
            train_mb_size=10,
            plugins=[CalibrationPlugin(mem_size=40), *extra],
            evaluator=_evaluator(),
        )

    plain = _train(build([]), bm.train_stream)
    p = EWCPlugin(ewc_lambda=0.01) if plugin == "ewc" else ReplayPlugin(mem_size=30)
    strategy = _train(build([p]), bm.train_stream)
    assert not torch.equal(_params(plain.model), _params(strategy.model))
    cal = strategy.plugins[0]
    assert cal.task_index == 1 and len(cal.memory) > 0
    psi = [p for n, p in strategy.model.named_parameters() if n.endswith("psi")]
    assert any(not torch.equal(q, torch.ones_like(q)) for q in psi)  # outer steps ran


# -- (10) checkpoints with multi-head models ----------------------------------------------
@pytest.mark.parametrize("case", ["er", "xdg"])
def test_multi_head_checkpoint_resumes_bit_identically(split_mnist, tmp_path, case):
    from avalanche.checkpointing import maybe_load_checkpoint, save_checkpoint
    from avalanche.training.determinism.rng_manager import RNGManager

    bm = split_mnist[True]

    def build():
        torch.manual_seed(0)
        model = MTSimpleMLP(hidden_size=HIDDEN)
        if case == "er":
            return _er(model=model, scenario="task", num_classes=10)
        return _xdg_naive(model)[0]

    RNGManager.set_random_seeds(0)
    straight = build()
    for exp in bm.train_stream[:2]:
        straight.train(exp)
    RNGManager.set_random_seeds(0)
    first = build()
    first.train(bm.train_stream[0])
    path = str(tmp_path / "ckpt.pkl")
    save_checkpoint(first, path)
    RNGManager.set_random_seeds(123)  # what the resumed run does must not matter
    resumed, start = maybe_load_checkpoint(build(), path)
    assert start == 1
    resumed.train(bm.train_stream[1])
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- bad input, every strategy --------------------------------------------------------
def _exp_of(x, y):
    ds = make_dataset(x, y, task_labels=[0] * len(y))
    bm = CLScenario(
        streams=[
            with_task_labels(
                with_classes_timeline(
                    make_stream(name="train", exps=[DatasetExperience(dataset=ds)])
                )
            )
        ]
    )
    return bm.train_stream[0]


@pytest.mark.parametrize("method", ["er", "mer", "nccl"])
def test_bad_input_is_refused_and_never_trained_on(method):
    from avalanche_meta.utils.validation import NonFiniteLossError

    build = BUILDERS[method]
    # a label beyond the model's 10 outputs
    strategy = build()
    before = _params(strategy.model).clone()
    with pytest.raises(ValueError, match="outside the model's 10 output units"):
        strategy.train(_exp_of(torch.rand(10, 784), torch.tensor([0] * 9 + [12])))
    assert torch.equal(_params(strategy.model), before)
    # NaN inputs: a non-finite loss is caught, the parameters are not stepped on it
    strategy = build()
    x = torch.rand(10, 784)
    x[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError):
        strategy.train(_exp_of(x, torch.arange(10) % 2))
    assert torch.isfinite(_params(strategy.model)).all()
    if method != "nccl":  # memories per batch larger than the memory
        with pytest.raises(ValueError, match="replay_batch_size"):
            build(mem_size=1)


@pytest.mark.parametrize("method", ["er", "nccl"])
def test_deferred_nan_check_reads_the_flag_by_the_end_of_the_experience(method):
    """``nan_check_every`` (what a GPU uses by default): the losses are flagged on
    the device and the flag is read at the end of the experience at the latest, so
    a NaN still stops training with an error that says how late it may be."""
    from avalanche_meta.utils.validation import NonFiniteLossError

    strategy = BUILDERS[method](nan_check_every=1000)
    assert strategy.nan_check_every == 1000
    x = torch.rand(10, 784)
    x[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="a loss of the last"):
        strategy.train(_exp_of(x, torch.arange(10) % 2))
    with pytest.raises(ValueError, match="nan_check_every"):
        BUILDERS[method](nan_check_every=0)
