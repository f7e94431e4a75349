"""NeuronCalibration (NCCL) strategy, CalibrationPlugin and the ``nccl`` command line."""

from __future__ import annotations

import io

import pytest
import torch
from avalanche.benchmarks import nc_benchmark, split_online_stream
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.logging import TextLogger
from avalanche.models import MTSimpleMLP
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive
from torch import nn
from torch.nn import functional as F

from avalanche_meta.models import MLP
from avalanche_meta.models.calibration import (
    base_parameters,
    calibrate,
    calibrated_weights,
    calibration_parameters,
)
from avalanche_meta.plugins import CalibrationPlugin
from avalanche_meta.strategies import NeuronCalibration
from avalanche_meta.utils.validation import NonFiniteLossError

D, C = 10, 4


def _evaluator():
    return EvaluationPlugin(
        accuracy_metrics(experience=True, stream=True),
        loggers=[TextLogger(io.StringIO())],
    )


def _benchmark(task_labels: bool, n_per_class: int = 60, seed: int = 0):
    """Two experiences of two Gaussian classes each."""
    g = torch.Generator().manual_seed(seed)
    means = 3.0 * torch.randn(C, D, generator=g)

    def data(n):
        y = torch.arange(C).repeat_interleave(n)
        return means[y] + torch.randn(len(y), D, generator=g), y

    (xtr, ytr), (xte, yte) = data(n_per_class), data(30)
    return nc_benchmark(
        _make_taskaware_tensor_classification_dataset(xtr, ytr),
        _make_taskaware_tensor_classification_dataset(xte, yte),
        2,
        task_labels=task_labels,
        shuffle=False,
        fixed_class_order=list(range(C)),
    )


def _strategy(model=None, **kw):
    model = (
        model
        if model is not None
        else MLP(input_size=D, hidden_sizes=(16,), num_classes=C)
    )
    kw.setdefault("scenario", "class")
    kw.setdefault("mem_size", 40)
    return NeuronCalibration(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        evaluator=_evaluator(),
        **kw,
    )


def _train(strategy, bm, task_boundaries=True):
    for exp in bm.train_stream:
        strategy.train(
            split_online_stream(
                [exp], experience_size=10, access_task_boundaries=task_boundaries
            )
        )


def _accuracies(strategy, bm):
    res = strategy.eval(bm.test_stream)
    return [v for k, v in sorted(res.items()) if k.startswith("Top1_Acc_Exp")]


# -- smoke runs and accuracy ----------------------------------------------------------
@pytest.mark.parametrize("scenario", ["task", "class"])
@pytest.mark.parametrize("second_order", [False, True])
def test_learns_both_tasks(scenario, second_order):
    torch.manual_seed(0)
    bm = _benchmark(task_labels=scenario == "task")
    strategy = _strategy(scenario=scenario, second_order=second_order)
    _train(strategy, bm, task_boundaries=scenario == "class")
    assert strategy.task_index == 1 and strategy.memory.n_tasks == 2
    accs = _accuracies(strategy, bm)
    chance = 0.5 if scenario == "task" else 0.25
    assert len(accs) == 2 and min(accs) > chance + 0.3, accs
    # the outer loop ran: calibration parameters moved away from identity
    moved = [
        float((p.detach() - (1.0 if n.endswith(("psi", "lam")) else 0.0)).abs().max())
        for n, p in strategy.model.named_parameters()
        if n.endswith(("psi", "psi_bias", "lam"))
    ]
    assert max(moved) > 0


def test_ablations_and_add_mode_run():
    torch.manual_seed(0)
    bm = _benchmark(task_labels=False, n_per_class=20)
    for kw in (
        {"wcm": False},
        {"fcm": False},
        {"consolidation": 0.0},
        {"combine": "add"},
    ):
        strategy = _strategy(**kw)
        _train(strategy, bm)
        names = [n for n, _ in strategy.model.named_parameters()]
        wcm, fcm = kw.get("wcm", True), kw.get("fcm", True)
        assert any(n.endswith("psi") for n in names) == wcm
        # an MLP: with WCM on, FCM's per-output scale is merged into psi
        assert any(n.endswith("lam") for n in names) == (fcm and not wcm)


# -- the optimizer never steps the calibration parameters -----------------------------
def test_main_optimizer_never_steps_calibration_parameters():
    model = calibrate(MLP(input_size=D, hidden_sizes=(8,), num_classes=C))
    # an optimizer built over *all* parameters, as users (and Avalanche) do
    strategy = _strategy(model=model)
    strategy.make_optimizer()  # what Avalanche calls at the first experience
    in_opt = {id(p) for g in strategy.optimizer.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in base_parameters(model)}
    cal = calibration_parameters(model)
    before = [p.detach().clone() for p in cal]
    base_before = [p.detach().clone() for p in base_parameters(model)]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    strategy.optimizer.step()
    assert all(torch.equal(a, p) for a, p in zip(before, cal))
    assert not any(
        torch.equal(a, p) for a, p in zip(base_before, base_parameters(model))
    )
    # and the calibration optimizer holds exactly the calibration parameters
    in_cal = {
        id(p) for g in strategy.calibration_optimizer.param_groups for p in g["params"]
    }
    assert in_cal == {id(p) for p in cal}


def test_inner_loop_moves_theta_only_and_outer_loop_psi_only():
    torch.manual_seed(0)
    strategy = _strategy(mem_size=20, mem_batch_size=4, beta=1.0)
    model = strategy.model
    strategy.active_units.observe(torch.arange(C))
    x, y = torch.randn(6, D), torch.randint(0, C, (6,))
    t = torch.zeros(6, dtype=torch.long)
    strategy.memory.start_task(0)
    strategy._store(x, y, t, 0)
    strategy.task_index = 1
    strategy.memory.start_task(1)
    strategy._replay = strategy.memory.sample(4)
    past = strategy.memory.sample(4, exclude_task=1)
    theta = [p.detach().clone() for p in base_parameters(model)]
    psi = [p.detach().clone() for p in calibration_parameters(model)]
    strategy.mbatch = [x, y, t]
    strategy.is_training = True
    strategy._inner_loop_first_order()
    assert all(torch.equal(a, p) for a, p in zip(psi, calibration_parameters(model)))
    assert any(not torch.equal(a, p) for a, p in zip(theta, base_parameters(model)))
    theta = [p.detach().clone() for p in base_parameters(model)]
    old = [w.detach().clone() for w in calibrated_weights(model)]
    strategy._outer_step(model, past, None, old)
    assert all(torch.equal(a, p) for a, p in zip(theta, base_parameters(model)))
    assert any(
        not torch.equal(a, p) for a, p in zip(psi, calibration_parameters(model))
    )


# -- second order: against a hand-written bi-level gradient ---------------------------
def _ref_forward(P, x):
    W1, b1, p1, pb1, l1, W2, b2, p2, pb2, l2 = P
    h = torch.tanh(F.linear(x, W1 * p1[:, None], b1 + pb1) * l1)
    return F.linear(h, W2 * p2[:, None], b2 + pb2) * l2


def _ref_kl(z, zs, T):
    p = torch.softmax(z / T, 1)
    return (
        (p * (torch.log_softmax(z / T, 1) - torch.log_softmax(zs / T, 1))).sum(1).mean()
    )


@pytest.mark.parametrize("consolidation", [0.0, 1.0])
def test_second_order_outer_gradient_matches_hand_written(consolidation):
    torch.manual_seed(0)
    lr, clr, gamma, reg, beta, T, steps = 0.3, 0.2, 0.7, 0.5, 1.3, 2.0, 2
    # the paper's literal psi / lambda pair on linear layers (every parameter kind)
    model = calibrate(
        nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)),
        merge_linear_fcm=False,
    )
    with torch.no_grad():
        for p in calibration_parameters(model):
            p.add_(0.2 * torch.randn(p.shape))
    strategy = NeuronCalibration(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=lr),
        scenario="class",
        mem_size=2,
        mem_batch_size=1,
        inner_steps=steps,
        gamma=gamma,
        reg=reg,
        temperature=T,
        beta=beta,
        consolidation=consolidation,
        calibration_lr=clr,
        second_order=True,
        evaluator=_evaluator(),
    )
    strategy.active_units.observe(torch.arange(3))
    xm, ym, zm = torch.randn(1, 3), torch.tensor([2]), torch.randn(1, 3)
    strategy.memory.start_task(0)
    strategy.memory.add(xm, ym, torch.zeros(1, dtype=torch.long), zm, 0)
    strategy.task_index = 1
    strategy.memory.start_task(1)
    x, y = torch.randn(2, 3), torch.tensor([0, 1])
    strategy.mbatch = [x, y, torch.zeros(2, dtype=torch.long)]

    # Hand-written reference, with plain tensors and torch.autograd.
    names = [
        "0.weight",
        "0.bias",
        "0.psi",
        "0.psi_bias",
        "0.lam",
        "2.weight",
        "2.bias",
        "2.psi",
        "2.psi_bias",
        "2.lam",
    ]
    params = dict(model.named_parameters())
    P = [params[n].detach().clone().requires_grad_() for n in names]
    base_i, cal_i = [0, 1, 5, 6], [2, 3, 4, 7, 8, 9]
    # Lambda at the parameters before the inner loop, normalised to max 1
    kl0 = _ref_kl(_ref_forward(P, xm), zm, T)
    gW = torch.autograd.grad(kl0, [P[0], P[5]])
    Lam = [
        (g / P[i + 2].detach().abs()[:, None]).pow(2) / P[i + 2].detach().abs()[:, None]
        for g, i in zip(gW, (0, 5))
    ]
    peak = max(L.max() for L in Lam)
    Lam = [L / peak for L in Lam]
    old = [(P[2][:, None] * P[0]).detach(), (P[7][:, None] * P[5]).detach()]
    Q = list(P)
    for _ in range(steps):
        L_b = F.cross_entropy(_ref_forward(Q, x), y) + gamma * (
            F.cross_entropy(_ref_forward(Q, xm), ym)
            + reg * _ref_kl(_ref_forward(Q, xm), zm, T)
        )
        grads = torch.autograd.grad(L_b, [Q[i] for i in base_i], create_graph=True)
        for i, g in zip(base_i, grads):
            Q[i] = Q[i] - lr * g
    L_c = beta * _ref_kl(_ref_forward(Q, xm), zm, T)
    if consolidation:
        new = [Q[2][:, None] * Q[0], Q[7][:, None] * Q[5]]
        L_c = L_c + consolidation * 0.5 * sum(
            (L * (w - w0).pow(2)).sum() for L, w, w0 in zip(Lam, new, old)
        )
    g_cal = torch.autograd.grad(L_c, [P[i] for i in cal_i])
    expected_cal = [P[i].detach() - clr * g for i, g in zip(cal_i, g_cal)]
    expected_base = [Q[i].detach() for i in base_i]

    strategy._calibrated_step()
    got = dict(strategy.model.named_parameters())
    for i, e in zip(cal_i, expected_cal):
        assert torch.allclose(got[names[i]], e, atol=1e-6), names[i]
    for i, e in zip(base_i, expected_base):
        assert torch.allclose(got[names[i]], e, atol=1e-6), names[i]
    # the second-order term matters: first order gives another update of psi
    first = [
        P[i].detach() - clr * g
        for i, g in zip(
            cal_i,
            torch.autograd.grad(
                beta
                * _ref_kl(
                    _ref_forward(
                        [q.detach() if k in base_i else P[k] for k, q in enumerate(Q)],
                        xm,
                    ),
                    zm,
                    T,
                ),
                [P[i] for i in cal_i],
            ),
        )
    ]
    assert not all(torch.allclose(a, b, atol=1e-7) for a, b in zip(first, expected_cal))


# -- memory, checkpoints --------------------------------------------------------------
def test_memory_stores_the_logits_of_storage_time():
    torch.manual_seed(0)
    strategy = _strategy(mem_size=40)
    strategy.memory.start_task(0)
    strategy.is_training = True
    x1, y1 = torch.randn(10, D), torch.tensor([0, 1] * 5)
    t = torch.zeros(10, dtype=torch.long)
    strategy.mbatch = [x1, y1, t]
    strategy._calibrated_step()
    strategy.model.eval()
    with torch.no_grad():
        z1 = strategy.active_units.mask(strategy.model(x1), t)
    stored = strategy.memory.logits[:10].clone()
    assert torch.allclose(stored, z1)
    # more training changes the model but not what was stored
    strategy.model.train()
    strategy.mbatch = [torch.randn(10, D), torch.tensor([2, 3] * 5), t]
    strategy._calibrated_step()
    assert torch.equal(strategy.memory.logits[:10], stored)
    with torch.no_grad():
        strategy.model.eval()
        assert not torch.allclose(strategy.model(x1)[:, :2], stored[:, :2])


def test_state_dict_round_trip_resumes_exactly():
    torch.manual_seed(0)
    bm = _benchmark(task_labels=False, n_per_class=20)
    exps = list(bm.train_stream)
    a = _strategy(second_order=True)
    a.train(split_online_stream([exps[0]], 10, access_task_boundaries=True))
    state = a.state_dict()
    b = _strategy(second_order=True)
    torch.manual_seed(7)
    b.load_state_dict(state)
    # torch's global random state (the memory's draws use it) is restored too
    assert torch.equal(torch.get_rng_state(), state["torch_rng"]["cpu"])
    for key in ("model", "memory", "active_units"):
        sa, sb = state[key], b.state_dict()[key]
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), key
    assert b.task_index == a.task_index and b._boundary_key == a._boundary_key
    for s in (a, b):
        torch.manual_seed(123)
        s.train(split_online_stream([exps[1]], 10, access_task_boundaries=True, seed=1))
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(p, q), n
    assert a.task_index == b.task_index == 1


# -- bad input ------------------------------------------------------------------------
def test_bad_input_errors():
    with pytest.raises(ValueError, match="nothing to calibrate"):
        _strategy(model=nn.Sequential(nn.Flatten(), nn.BatchNorm1d(D)), num_classes=D)
    with pytest.raises(ValueError, match="multi-head"):
        _strategy(model=MTSimpleMLP(input_size=D, hidden_size=8))
    model = MLP(input_size=D, hidden_sizes=(8,), num_classes=C)
    with pytest.raises(ValueError, match="second_order"):
        NeuronCalibration(
            model=model,
            optimizer=torch.optim.Adam(model.parameters()),
            second_order=True,
            evaluator=_evaluator(),
        )
    with pytest.raises(ValueError, match="mem_size"):
        _strategy(mem_size=0)
    # memory smaller than the number of tasks
    strategy = _strategy(mem_size=1)
    with pytest.raises(ValueError, match="mem_size"):
        _train(strategy, _benchmark(task_labels=False, n_per_class=5))
    # Task-IL with every task labelled 0
    strategy = _strategy(scenario="task")
    with pytest.raises(ValueError, match="distinct task label"):
        _train(strategy, _benchmark(task_labels=False, n_per_class=5))
    # NaN inputs: a non-finite loss is raised, not trained on
    strategy = _strategy()
    strategy.memory.start_task(0)
    strategy.is_training = True
    strategy.mbatch = [
        torch.full((2, D), float("nan")),
        torch.tensor([0, 1]),
        torch.zeros(2, dtype=torch.long),
    ]
    with pytest.raises(NonFiniteLossError):
        strategy._calibrated_step()


# -- plugin ---------------------------------------------------------------------------
def test_calibration_plugin_on_naive():
    torch.manual_seed(0)
    model = calibrate(MLP(input_size=D, hidden_sizes=(16,), num_classes=C))
    plugin = CalibrationPlugin(mem_size=40)
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        train_mb_size=10,
        plugins=[plugin],
        evaluator=_evaluator(),
    )
    bm = _benchmark(task_labels=False, n_per_class=20)
    exps = list(bm.train_stream)
    strategy.train(split_online_stream([exps[0]], 10, access_task_boundaries=True))
    cal = [p.detach().clone() for p in calibration_parameters(model)]
    assert all(
        torch.equal(p, torch.ones_like(p)) or torch.equal(p, torch.zeros_like(p))
        for p in cal
    )  # no outer step during the first task
    strategy.train(split_online_stream([exps[1]], 10, access_task_boundaries=True))
    assert plugin.task_index == 1 and plugin.memory.n_tasks == 2
    assert any(
        not torch.equal(a, p) for a, p in zip(cal, calibration_parameters(model))
    )
    in_opt = {id(p) for g in strategy.optimizer.param_groups for p in g["params"]}
    assert in_opt.isdisjoint({id(p) for p in calibration_parameters(model)})


def test_plugin_requires_a_calibrated_model():
    model = MLP(input_size=D, hidden_sizes=(8,), num_classes=C)
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        plugins=[CalibrationPlugin()],
        evaluator=_evaluator(),
    )
    with pytest.raises(ValueError, match="calibrated model"):
        strategy.train(_benchmark(task_labels=False, n_per_class=5).train_stream[0])


# -- command line ---------------------------------------------------------------------
def test_command_line_run_on_split_digits(tmp_path):
    from avalanche_meta.cli import registry
    from avalanche_meta.cli.runner import run_experiment

    registry.load_all()
    for name in ("nccl", "nccl-wcm", "nccl-fcm", "nccl-noreg"):
        assert registry.STRATEGIES[name].online
    assert registry.STRATEGIES["nccl-fcm"].params["wcm"][1] is False
    assert "nccl" in registry.REPRODUCTIONS and "nccl" in registry.BENCHES
    torch.manual_seed(0)
    res = run_experiment(
        "nccl",
        "split-digits",
        scenario="task",
        seed=0,
        out_dir=tmp_path,
        hparams={"mem_size": 50, "hidden": "32"},
        progress=False,
        plots=False,
        initial_eval=False,
    )
    assert res["average_accuracy"] > 75.0  # Task-IL chance is 50%


def test_reproduce_nccl_only_rejects_unknown_method_labels(tmp_path):
    from avalanche_meta.cli.context import ReproContext
    from avalanche_meta.cli.methods.nccl import reproduce_nccl

    ctx = ReproContext(
        quick=True, out_dir=tmp_path, write_results=False, extra={"methods": ["nope"]}
    )
    with pytest.raises(ValueError, match="unknown label 'nope'"):
        reproduce_nccl(ctx)


@pytest.mark.parametrize("second_order", [False, True])
@pytest.mark.parametrize("resample", [False, True])
def test_memory_batches_per_incoming_batch(resample, second_order):
    """``resample_memory``: one B_M per inner step, else one per incoming batch (B_P,
    the outer loop's batch of past tasks, is drawn once per batch either way)."""
    torch.manual_seed(0)
    strategy = _strategy(
        inner_steps=3, resample_memory=resample, second_order=second_order
    )
    calls = []
    sample = strategy.memory.sample

    def counting(n, exclude_task=None):
        calls.append(exclude_task)
        return sample(n, exclude_task=exclude_task)

    strategy.memory.sample = counting
    _train(strategy, _benchmark(task_labels=False))
    whole = sum(c is None for c in calls)
    batches = sum(c is not None for c in calls)  # one B_P draw per incoming batch
    # the first batch finds the memory empty: no B_M, and nothing to resample
    assert whole == (3 if resample else 1) * (batches - 1)


def test_reproduce_nccl_reuse_only_collects_finished_runs(tmp_path, capsys):
    """``reuse_only``: finished runs enter the table, the others are listed as not
    run, and nothing is trained."""
    import json

    from avalanche_meta.cli import registry
    from avalanche_meta.cli.context import ReproContext
    from avalanche_meta.cli.methods.nccl import _baseline_settings, reproduce_nccl

    registry.load_all()
    spec = registry.STRATEGIES["naive"]
    hp = {k: v for k, v in _baseline_settings(100, 5, 0.1).items() if k in spec.params}
    run = tmp_path / "nccl" / "naive-online-permuted-mnist-domain-s0-quick"
    run.mkdir(parents=True)
    (run / "results.json").write_text(
        json.dumps(
            {
                "strategy": "naive",
                "benchmark": "online-permuted-mnist",
                "scenario": "domain",
                "seed": 0,
                "config": {
                    "benchmark_options": {"n_tasks": 5, "samples_per_task": 500},
                    "hparams": hp,
                },
                "average_accuracy": 12.34,
                "forgetting": 5.67,
                "train_seconds": 1.0,
            }
        )
    )
    ctx = ReproContext(
        quick=True,
        out_dir=tmp_path,
        write_results=False,
        extra={"scenarios": ["domain"], "methods": ["Naive", "ER (same memory)"]},
    )
    ctx.extra["reuse_only"] = True
    reproduce_nccl(ctx)
    out = capsys.readouterr().out
    assert "| Naive | 12.34 ± 0.00 | 5.67 ± 0.00 |" in out
    assert (
        "ER (same memory) on online-permuted-mnist (domain-IL) seed 0: not run" in out
    )
    assert not (tmp_path / "nccl" / "er-online-permuted-mnist-domain-s0-quick").exists()


# -- controls that separate calibration from the inner loop ---------------------------
def test_outer_loop_off_leaves_calibration_at_init():
    torch.manual_seed(0)
    bm = _benchmark(task_labels=False, n_per_class=20)
    strategy = _strategy(outer_loop=False)
    init = {n: p.detach().clone() for n, p in strategy.model.named_parameters()}
    _train(strategy, bm)
    assert strategy.task_index == 1  # the outer loop would have run on task 1
    for n, p in strategy.model.named_parameters():
        if n.endswith(("psi", "psi_bias", "lam")):
            assert torch.equal(p, init[n]), n
    assert any(
        not torch.equal(p, init[n])
        for n, p in strategy.model.named_parameters()
        if not n.endswith(("psi", "psi_bias", "lam"))
    )


def test_temperature_only_has_one_scalar_on_the_output_layer():
    torch.manual_seed(0)
    bm = _benchmark(task_labels=False, n_per_class=20)
    strategy = _strategy(calibration="temperature")
    named = [(n, p) for n, p in strategy.model.named_parameters()]
    cal = [(n, p) for n, p in named if n.endswith(("psi", "psi_bias", "lam"))]
    assert len(cal) == 1 and cal[0][1].numel() == 1
    assert cal[0][0] == "classifier.lam"  # the MLP's output layer
    hidden = [m for m in strategy.model.features.modules() if isinstance(m, nn.Linear)]
    assert hidden and all(type(m) is nn.Linear for m in hidden)  # plain
    _train(strategy, bm)
    assert float(cal[0][1].detach()) != 1.0  # trained by the outer loop
    # it is a logit scale: the output equals the plain output times lam
    x = torch.randn(3, D)
    with torch.no_grad():
        z = strategy.model(x)
        lam = cal[0][1]
        strategy.model.classifier.lam.data.fill_(1.0)
        assert torch.allclose(z, strategy.model(x) * lam, atol=1e-5)


def test_hidden_only_leaves_the_output_layer_plain():
    torch.manual_seed(0)
    bm = _benchmark(task_labels=False, n_per_class=20)
    strategy = _strategy(calibration="hidden")
    assert type(strategy.model.classifier) is nn.Linear
    assert strategy.active_units.num_classes == C  # inferred from the plain head
    names = [n for n, _ in strategy.model.named_parameters()]
    cal = [n for n in names if n.endswith(("psi", "psi_bias", "lam"))]
    assert cal and not any(n.startswith("classifier.") for n in cal)
    head = [p.detach().clone() for p in strategy.model.classifier.parameters()]
    psi0 = [p.detach().clone() for p in calibration_parameters(strategy.model)]
    _train(strategy, bm)
    assert any(
        not torch.equal(a, p)
        for a, p in zip(psi0, calibration_parameters(strategy.model))
    )
    assert any(
        not torch.equal(a, p)
        for a, p in zip(head, strategy.model.classifier.parameters())
    )  # the head is a base parameter, trained by the inner loop


def test_bad_calibration_options():
    with pytest.raises(ValueError, match="calibration"):
        _strategy(calibration="head")
    with pytest.raises(ValueError, match="fcm_position"):
        _strategy(fcm_position="middle")


# -- Task-IL masks come from the task's declared classes ------------------------------
def test_task_il_first_minibatch_of_a_task_learns():
    """A 2-class task whose first mini-batch holds a single class: with masks from
    the observed labels only one unit is active, the loss is 0 and nothing moves."""
    torch.manual_seed(0)
    bm = _benchmark(task_labels=True, n_per_class=5)
    strategy = _strategy(scenario="task", train_mb_size=1)
    exp = bm.train_stream[0]
    first = next(
        iter(split_online_stream([exp], experience_size=1, access_task_boundaries=True))
    )
    before = [p.detach().clone() for p in base_parameters(strategy.model)]
    strategy.train([first])
    change = max(
        float((a - p.detach()).abs().max())
        for a, p in zip(before, base_parameters(strategy.model))
    )
    assert change > 1e-4, change
    assert strategy.active_units.task_classes[0, :2].all()
    assert not strategy.active_units.task_classes[0, 2:].any()


def test_experience_task_classes_reads_declared_classes():
    from avalanche_meta.benchmarks.online import online_stream
    from avalanche_meta.strategies.neuron_calibration import experience_task_classes

    bm = _benchmark(task_labels=True, n_per_class=5)
    exp = bm.train_stream[1]
    assert experience_task_classes(exp) == {1: [2, 3]}
    sub = next(iter(online_stream([exp], batch_size=1, seed=0)))
    assert experience_task_classes(sub) == {1: [2, 3]}
    # no class list: the dataset's targets per task label
    exp.classes_in_this_experience = None
    assert experience_task_classes(exp) == {1: [2, 3]}


def test_reproduction_lists_the_controls():
    from avalanche_meta.cli import registry
    from avalanche_meta.cli.methods.nccl import METHODS

    registry.load_all()
    rows = {label: (name, extra) for label, name, extra in METHODS}
    p = registry.STRATEGIES
    assert p["nccl-no-outer"].params["outer_loop"][1] is False
    assert p["nccl-temperature"].params["calibration"][1] == "temperature"
    assert p["nccl-hidden"].params["calibration"][1] == "hidden"
    er = p["nccl-er-budget"].params
    assert er["outer_loop"][1] is False and er["reg"][1] == 0.0
    # same inner loop and replay budget as the NCCL row
    for key in ("inner_steps", "mem_batch_size", "resample_memory", "gamma", "lr"):
        assert er[key][1] == p["nccl"].params[key][1], key
    for label in (
        "NCCL, outer loop off",
        "NCCL, output temperature only",
        "NCCL, hidden layers only",
        "ER, NCCL's replay budget",
    ):
        assert label in rows
    # on the MLP, WCM only and FCM only are not separate experiments
    assert not any("WCM only" in label or "FCM only" in label for label in rows)


def test_output_only_calibrates_the_output_layer_alone():
    strategy = _strategy(calibration="output")
    cal = [
        n
        for n, _ in strategy.model.named_parameters()
        if n.endswith(("psi", "lam", "psi_bias"))
    ]
    assert sorted(cal) == ["classifier.psi", "classifier.psi_bias"]


def test_everything_lives_on_the_strategys_device():
    """Built with device="meta" (a device where nothing can be read back), every
    tensor of the strategy is there: model (calibration parameters included),
    memory, masks, the calibration optimizer's parameters."""
    strategy = _strategy(device="meta")
    tensors = list(strategy.model.parameters()) + list(strategy.model.buffers())
    tensors += list(strategy.memory.buffers()) + list(strategy.active_units.buffers())
    # (the base optimizer is the user's: moving to "meta" replaces parameter
    # objects, moving to "cuda" keeps them, and Avalanche's make_optimizer re-reads
    # the model at every experience)
    opt = strategy.calibration_optimizer
    tensors += [p for g in opt.param_groups for p in g["params"]]
    assert tensors and all(t.device.type == "meta" for t in tensors)


def test_outer_loss_is_kept_on_the_device_and_task_il_check_is_per_experience():
    torch.manual_seed(0)
    strategy = _strategy(scenario="task")
    bm = _benchmark(task_labels=True, n_per_class=10)
    _train(strategy, bm)  # sub-experiences of one experience share a task label
    assert isinstance(strategy.calibration_loss, torch.Tensor)  # no float(): no sync
    assert torch.isfinite(strategy.calibration_loss)
    # the same stream with boundaries hidden: identified by the origin experience
    other = _strategy(scenario="task")
    _train(other, bm, task_boundaries=False)
    assert other._task_label_owners == {0: ("exp", 0), 1: ("exp", 1)}
