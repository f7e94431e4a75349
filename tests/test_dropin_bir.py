"""BI-R, RtF, DGR, DGR + distillation, BI-R + SI and ReferenceSIPlugin used as Avalanche
users use Avalanche's own strategies (in the manner of Avalanche's
tests/training/test_strategies.py).

Avalanche's classic ``SplitMNIST(n_experiences=5)`` with and without task labels,
built with ``train_transform=None, eval_transform=None`` (BI-R's binary
cross-entropy needs pixels in [0, 1]; the classic benchmark's images are already
tensors in [0, 1]), subsetted to a few dozen examples per experience; ``SimpleMLP``
/ ``MTSimpleMLP``; an ``EvaluationPlugin`` with accuracy, loss, forgetting and BWT
metrics and all four loggers. Each test asserts behaviour that fails when the code
is wrong.
"""

import csv
import math

import pytest
import sys
from pathlib import Path

import torch
from avalanche.benchmarks.classic import SplitMNIST
from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario, make_stream
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.benchmarks.utils import (
    _make_taskaware_tensor_classification_dataset as make_dataset,
)
from avalanche.logging import TextLogger
from avalanche.models import MTSimpleMLP, SimpleMLP
from avalanche.training.plugins import EWCPlugin, LwFPlugin, ReplayPlugin
from avalanche.training.supervised import Naive
from torch import nn

from avalanche_meta.plugins.samples import GeneratedSamplesPlot
from avalanche_meta.plugins.si_reference import ReferenceSIPlugin
from avalanche_meta.strategies._keywords import StrategyArgumentError
from avalanche_meta.strategies.bir import BrainInspiredReplay, replay_vae

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dropin_common import evaluator, small_split_mnist  # noqa: E402

torch.set_num_threads(1)

N_TRAIN, N_TEST, HIDDEN, ITERS = 60, 40, 32, 4
METHODS = ["bir", "rtf", "dgr", "dgr-distill", "bir-si"]


# -- the benchmarks ------------------------------------------------------------------
@pytest.fixture(scope="module")
def split_mnist(mnist_root):
    """``{return_task_id: small SplitMNIST}`` (5 experiences of 2 digits), no transforms."""
    return small_split_mnist(mnist_root, N_TRAIN, N_TEST, transforms=False)


_evaluator = evaluator


def _vae(scenario="class", feedback=True, conditional=True, gating=0.8, seed=0):
    torch.manual_seed(seed)
    return replay_vae(
        input_size=784,
        num_classes=10,
        scenario=scenario,
        feedback=feedback,
        conditional=conditional,
        gating=gating,
        n_tasks=5,
        hidden_sizes=(HIDDEN,),
        z_dim=4,
        output_shape=(1, 28, 28),
    )


def _mlp(seed=0):
    torch.manual_seed(seed)
    return SimpleMLP(num_classes=10, hidden_size=HIDDEN, drop_rate=0.0)


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def build(method, scenario="class", model=None, **kw):
    """One of the five BI-R methods with small settings; ``model`` replaces the
    classifier (DGR) or the VAE (the others)."""
    kw.setdefault("evaluator", _evaluator())
    kw.setdefault("iterations", ITERS)
    kw.setdefault("train_mb_size", 16)
    kw.setdefault("scenario", scenario)
    if method in ("dgr", "dgr-distill"):
        clf = model if model is not None else _mlp()
        gen = _vae(scenario, feedback=False, conditional=False, gating=0.0)
        return BrainInspiredReplay.DGR(
            model=clf,
            optimizer=torch.optim.Adam(clf.parameters(), lr=1e-3),
            generator=gen,
            generator_optimizer=torch.optim.Adam(gen.parameters(), lr=1e-3),
            distillation=2.0 if method == "dgr-distill" else None,
            **kw,
        )
    if method == "rtf":
        vae = (
            model if model is not None else _vae(scenario, conditional=False, gating=0)
        )
        return BrainInspiredReplay.RtF(
            model=vae, optimizer=torch.optim.Adam(vae.parameters(), lr=1e-3), **kw
        )
    vae = model if model is not None else _vae(scenario)
    if method == "bir-si":
        parts = [vae.encoder, vae.classifier] if hasattr(vae, "encoder") else None
        si = ReferenceSIPlugin(c=1.0, modules=parts)
        kw["plugins"] = [si] + list(kw.get("plugins") or [])
    return BrainInspiredReplay.BIR(
        model=vae, optimizer=torch.optim.Adam(vae.parameters(), lr=1e-3), **kw
    )


def _train(strategy, stream, n=2):
    torch.manual_seed(1)
    for exp in stream[:n]:
        strategy.train(exp)
    return strategy


# -- (1) keyword-only construction --------------------------------------------------------
@pytest.mark.parametrize("preset", ["BIR", "RtF", "DGR"])
def test_positional_arguments_and_typos_are_clear_errors(preset):
    vae = _vae()
    opt = torch.optim.Adam(vae.parameters())
    ctor = getattr(BrainInspiredReplay, preset)
    with pytest.raises(TypeError, match="keyword arguments only"):
        ctor(vae, opt)
    with pytest.raises(StrategyArgumentError, match="keyword arguments only"):
        BrainInspiredReplay(vae, opt)
    with pytest.raises(StrategyArgumentError, match="'iteratons'.*'iterations'"):
        build({"BIR": "bir", "RtF": "rtf", "DGR": "dgr"}[preset], iteratons=5)
    with pytest.raises(StrategyArgumentError, match="fixes feedback"):
        ctor(model=vae, optimizer=opt, feedback=False)


def test_plugins_are_keyword_only_with_close_matches(tmp_path):
    with pytest.raises(StrategyArgumentError, match="'epsilom'.*'epsilon'"):
        ReferenceSIPlugin(1.0, epsilom=0.1)
    with pytest.raises(StrategyArgumentError, match="keyword arguments only"):
        ReferenceSIPlugin(1.0, 0.1)
    with pytest.raises(StrategyArgumentError, match="'per_clas'.*'per_class'"):
        GeneratedSamplesPlot(tmp_path, per_clas=3)


# -- (2) criterion ------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_cross_entropy_criterion_accepted_others_refused(method, split_mnist):
    s = build(method, criterion=nn.CrossEntropyLoss())
    s.train(split_mnist[False].train_stream[0])
    assert math.isfinite(s.loss_terms["total"])
    with pytest.raises(StrategyArgumentError, match="label_smoothing"):
        build(method, criterion=nn.CrossEntropyLoss(label_smoothing=0.1))
    with pytest.raises(StrategyArgumentError, match="nn.CrossEntropyLoss"):
        build(method, criterion=nn.MSELoss())


# -- (3) Avalanche's plugins ----------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_ewc_and_lwf_compose_replay_plugin_is_refused(method, split_mnist):
    stream = split_mnist[False].train_stream
    plain = _params(_train(build(method), stream).model)
    ewc = _train(build(method, plugins=[EWCPlugin(ewc_lambda=1e4)]), stream)
    assert not torch.equal(plain, _params(ewc.model))  # its penalty moved the weights
    lwf = _train(build(method, plugins=[LwFPlugin(alpha=10.0)]), stream)
    assert not torch.equal(plain, _params(lwf.model))
    assert torch.isfinite(_params(lwf.model)).all()
    with pytest.raises(StrategyArgumentError, match="ReplayPlugin.*never reads"):
        build(method, plugins=[ReplayPlugin(mem_size=20)])
    with pytest.raises(StrategyArgumentError, match="LwFPlugin.*Task-IL"):
        build(method, scenario="task", plugins=[LwFPlugin()])


def test_reference_si_plugin_composes_with_avalanche_naive(split_mnist):
    """The reference's SI as an Avalanche plugin: on Naive its penalty changes the
    weights of the second experience and its importances are non-negative sums."""
    stream = split_mnist[False].train_stream
    runs = []
    for plugins in ([], [ReferenceSIPlugin(c=100.0)]):
        net = _mlp()
        s = Naive(
            model=net,
            optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
            train_mb_size=16,
            evaluator=_evaluator(),
            plugins=plugins,
        )
        _train(s, stream)
        runs.append((s, _params(net)))
    assert not torch.equal(runs[0][1], runs[1][1])
    si = runs[1][0].plugins[0]
    assert si.omega and all(torch.isfinite(v).all() for v in si.omega.values())


# -- (4) task labels on and off ---------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_task_labels_on_and_off(method, split_mnist):
    task = _train(build(method, scenario="task"), split_mnist[True].train_stream)
    assert task.active.task_classes[:2].nonzero().tolist() == [
        [0, 0],
        [0, 1],
        [1, 2],
        [1, 3],
    ]
    res = task.eval(split_mnist[True].test_stream[:2])
    assert res["Top1_Acc_Stream/eval_phase/test_stream/Task001"] > 0.5  # chance 0.5
    cls = _train(build(method), split_mnist[False].train_stream)
    assert cls.active.seen.nonzero().flatten().tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="return_task_id=True"):
        _train(build(method, scenario="task"), split_mnist[False].train_stream)


def _multi_task_experience():
    """One experience with two task labels: task 0 has classes 1 and 4, task 1 has
    classes 5 and 7."""
    torch.manual_seed(0)
    y = torch.tensor([1, 4, 5, 7] * 8)
    t = torch.tensor([0, 0, 1, 1] * 8)
    ds = make_dataset(torch.rand(32, 1, 28, 28), y, task_labels=t.tolist())
    return CLScenario(
        streams=[
            with_task_labels(
                with_classes_timeline(
                    make_stream(name="train", exps=[DatasetExperience(dataset=ds)])
                )
            )
        ]
    ).train_stream[0]


@pytest.mark.parametrize("method", ["bir", "dgr"])
def test_several_task_labels_in_one_experience_get_their_own_classes(method):
    s = build(method, scenario="task")
    s.train(_multi_task_experience())
    rows = {t: s.active.task_classes[t].nonzero().flatten().tolist() for t in range(2)}
    assert rows == {0: [1, 4], 1: [5, 7]}


def test_x_y_evaluation_batches_and_task_il_without_labels():
    s = build("bir")
    s.mbatch = [torch.rand(2, 1, 28, 28), torch.tensor([0, 1])]
    s._unpack_minibatch()
    assert s.mb_task_id.tolist() == [0, 0]
    t = build("bir", scenario="task")
    t.mbatch = [torch.rand(2, 1, 28, 28), torch.tensor([0, 1])]
    with pytest.raises(ValueError, match="return_task_id=True"):
        t._unpack_minibatch()


# -- (5) multi-head models --------------------------------------------------------------------
@pytest.mark.parametrize("method", ["dgr", "dgr-distill"])
def test_multi_head_model_is_refused_with_the_reason(method):
    with pytest.raises(StrategyArgumentError, match="single-head.*MTSimpleMLP"):
        build(method, scenario="task", model=MTSimpleMLP(hidden_size=HIDDEN))


@pytest.mark.parametrize("method", ["bir", "rtf", "bir-si"])
def test_feedback_methods_need_their_vae(method):
    with pytest.raises(StrategyArgumentError, match="single-head"):
        build(method, scenario="task", model=MTSimpleMLP(hidden_size=HIDDEN))
    with pytest.raises(ValueError, match="ReplayVAE with a classifier"):
        build(method, model=_mlp())


# -- (6) periodic evaluation, (7) loggers, (9) streams never trained on -------------------------
@pytest.mark.parametrize("method", METHODS)
def test_periodic_eval_all_loggers_finite_and_untrained_stream_loss(
    method, split_mnist, tmp_path
):
    bm = split_mnist[False]
    s = build(
        method,
        evaluator=_evaluator(tmp_path),
        eval_every=1,
        peval_mode="iteration",
        iterations=3,
    )
    s.train(bm.train_stream[0], eval_streams=[bm.test_stream])
    metrics = s.evaluator.get_all_metrics()
    _, values = metrics["Top1_Acc_Stream/eval_phase/test_stream/Task000"]
    assert len(values) >= 2, values  # evaluated during training
    res = s.eval(bm.test_stream)
    for i in range(1, 5):  # (9) never trained on: a finite, Naive-like loss
        loss = res[f"Loss_Exp/eval_phase/test_stream/Task000/Exp00{i}"]
        assert math.isfinite(loss) and 0 < loss < 50, (i, loss)
        assert res[f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp00{i}"] == 0.0
    for name, (_, vals) in s.evaluator.get_all_metrics().items():
        assert all(math.isfinite(float(v)) for v in vals), name
    assert res["Loss_Stream/eval_phase/test_stream/Task000"] > 0.1
    assert res["Top1_Acc_Stream/eval_phase/test_stream/Task000"] > 0.05
    for f in s.evaluator.loggers:
        if isinstance(f, TextLogger):
            f.file.flush()
    rows = list(csv.DictReader(open(tmp_path / "csv" / "eval_results.csv")))
    assert rows and max(float(r["eval_loss"]) for r in rows) < 50
    train_rows = list(csv.DictReader(open(tmp_path / "csv" / "training_results.csv")))
    assert train_rows and all(
        math.isfinite(float(r["training_loss"])) and float(r["training_loss"]) > 0
        for r in train_rows
    )
    text = (tmp_path / "log.txt").read_text()
    assert "Loss_Stream" in text and "nan" not in text.lower()
    assert list((tmp_path / "tb").rglob("events.out.tfevents*"))


# -- (8) epochs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_train_epochs_is_refused_with_the_reason(method):
    with pytest.raises(StrategyArgumentError, match="train_epochs=2.*iterations"):
        build(method, train_epochs=2)
    assert build(method, train_epochs=1).train_epochs == 1


# -- Avalanche's classic MNIST transforms, float64 -------------------------------------------------
def test_normalized_classic_mnist_message_gives_the_fix_that_works(mnist_root):
    bm = SplitMNIST(
        n_experiences=5, seed=0, dataset_root=str(mnist_root)
    )  # ToTensor + Normalize
    with pytest.raises(ValueError, match="train_transform=None, eval_transform=None"):
        build("bir", iterations=1).train(bm.train_stream[0])
    fixed = SplitMNIST(
        n_experiences=5,
        seed=0,
        fixed_class_order=list(range(10)),
        dataset_root=str(mnist_root),
        train_transform=None,
        eval_transform=None,
    )
    s = build("bir", iterations=2)
    s.train(fixed.train_stream[0])  # what the message says works
    assert 0.0 <= float(s._x.min()) and float(s._x.max()) <= 1.0


@pytest.mark.parametrize("method", ["bir", "dgr"])
def test_float64_inputs_are_cast_on_every_path(method):
    torch.manual_seed(0)
    x = torch.rand(32, 1, 28, 28, dtype=torch.float64)
    y = torch.arange(32) % 2
    ds = make_dataset(x, y, task_labels=[0] * 32)
    exp = CLScenario(
        streams=[
            with_task_labels(
                with_classes_timeline(
                    make_stream(name="train", exps=[DatasetExperience(dataset=ds)])
                )
            )
        ]
    ).train_stream[0]
    s = build(method)
    before = _params(s.model).clone()
    s.train(exp)
    assert s._x.dtype == torch.float32
    after = _params(s.model)
    assert after.dtype == torch.float32 and not torch.equal(after, before)
    s.mbatch = [x[:4], y[:4], torch.zeros(4, dtype=torch.long)]
    s._unpack_minibatch()  # evaluation path
    assert s.mb_x.dtype == torch.float32
    res = s.eval([exp])
    assert math.isfinite(res["Loss_Stream/eval_phase/train_stream/Task000"])


def test_samples_plot_refuses_a_strategy_without_generator(tmp_path, split_mnist):
    net = _mlp()
    s = Naive(
        model=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        evaluator=_evaluator(),
        plugins=[GeneratedSamplesPlot(tmp_path)],
    )
    with pytest.raises(ValueError, match="replay_generator"):
        s.train(split_mnist[False].train_stream[0])


# -- (10) checkpoints with a multi-task (Task-IL) set-up ---------------------------------------------
@pytest.mark.parametrize("method", ["bir", "dgr-distill"])
def test_task_il_state_dict_resumes_exactly(method, split_mnist, tmp_path):
    stream = split_mnist[True].train_stream
    a = _train(build(method, scenario="task"), stream, n=2)
    torch.save(a.state_dict(), tmp_path / "s.pt")
    b = build(method, scenario="task", model=None)
    b.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=False))
    assert b._task_owners == a._task_owners
    torch.manual_seed(5)
    a.train(stream[2])
    torch.manual_seed(5)
    b.train(stream[2])
    assert torch.equal(_params(a.model), _params(b.model))
    with pytest.raises(ValueError, match="task label"):
        b.train(split_mnist[False].train_stream[3])  # task 0 again: no task labels
