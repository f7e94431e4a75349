"""Tests of the XdG plugin: masks, hooks, Task-IL only, checkpoints, learning."""

import io

import pytest
import torch
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.logging import TextLogger
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive

from avalanche_meta.benchmarks.split_digits import split_digits
from avalanche_meta.models.mlp import MLP, MultiHeadMLP
from avalanche_meta.plugins.xdg import XdG, hidden_linear_layers


def evaluator():
    return EvaluationPlugin(
        accuracy_metrics(experience=True), loggers=[TextLogger(io.StringIO())]
    )


def test_masks_switch_off_the_given_proportion_per_task():
    model = MLP(input_size=64, hidden_sizes=(100, 50), num_classes=10)
    xdg = XdG(model, n_tasks=5, gating_prop=0.9)
    assert xdg.layers == ["features.1", "features.3"]  # not the output layer
    m0, m1 = xdg.gates.mask(0), xdg.gates.mask(1)
    assert torch.all(m0.sum(1) == 10) and torch.all(m1.sum(1) == 5)  # 10% kept
    # the reference's define_XdGmask gates exactly int(0.9 * units) units per task
    assert xdg.gates.mask_mode == "exact" and xdg.gates.gate_prop == 0.9
    assert not torch.equal(m0[0], m0[1])


def test_gated_units_are_zero_and_open_units_untouched():
    torch.manual_seed(0)
    model = MLP(input_size=64, hidden_sizes=(30, 30), num_classes=10)
    ref = MLP(input_size=64, hidden_sizes=(30, 30), num_classes=10)
    ref.load_state_dict(model.state_dict())
    xdg = XdG(model, n_tasks=3, gating_prop=0.5)
    seen = {}
    model.features[2].register_forward_hook(lambda m, i, o: seen.update(h1=o))
    x = torch.rand(4, 64)
    t = torch.tensor([0, 1, 2, 1])
    xdg.set_tasks(t)
    out = model(x)
    # reference computed by hand with the masks
    h = torch.relu(ref.features[1](x.flatten(1))) * xdg.gates.mask(0)[t]
    assert torch.allclose(seen["h1"], h)
    h = torch.relu(ref.features[3](h)) * xdg.gates.mask(1)[t]
    assert torch.allclose(out, ref.classifier(h), atol=1e-6)
    xdg.remove()
    assert torch.allclose(model(x), ref(x))


def test_xdg_is_task_il_only():
    model = MLP(input_size=64, hidden_sizes=(16,), num_classes=10)
    with pytest.raises(ValueError, match="Task-IL"):
        XdG(model, n_tasks=5, scenario="class")
    with pytest.raises(ValueError, match="gating_prop"):
        XdG(model, n_tasks=5, gating_prop=1.0)
    info = split_digits(scenario="class", n_experiences=5)
    xdg = XdG(model, n_tasks=5)
    strategy = Naive(
        model=model,
        optimizer=torch.optim.Adam(model.parameters()),
        train_mb_size=32,
        plugins=[xdg],
        evaluator=evaluator(),
    )
    strategy.train(info.benchmark.train_stream[0])
    with pytest.raises(ValueError, match="not Task-IL"):
        strategy.train(info.benchmark.train_stream[1])  # task label 0 again


def test_missing_task_labels_in_direct_call_is_an_error():
    model = MLP(input_size=64, hidden_sizes=(16,), num_classes=10)
    XdG(model, n_tasks=2)
    with pytest.raises(ValueError, match="task label"):
        model(torch.rand(3, 64))


def test_masks_restored_from_state_dict():
    torch.manual_seed(0)
    a = XdG(MLP(input_size=64, hidden_sizes=(40,), num_classes=10), n_tasks=4)
    torch.manual_seed(1)
    b = XdG(MLP(input_size=64, hidden_sizes=(40,), num_classes=10), n_tasks=4)
    assert not torch.equal(a.gates.mask(0), b.gates.mask(0))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.gates.mask(0), b.gates.mask(0))


def test_xdg_learns_split_digits_task_il_with_multihead():
    torch.manual_seed(0)
    info = split_digits(scenario="task", n_experiences=5)
    model = MultiHeadMLP(input_size=64, hidden_sizes=(200, 200))
    assert hidden_linear_layers(model) == ["features.1", "features.3"]
    xdg = XdG(model, n_tasks=5, gating_prop=0.8)
    strategy = Naive(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
        train_mb_size=32,
        train_epochs=4,
        plugins=[xdg],
        evaluator=evaluator(),
    )
    for exp in info.benchmark.train_stream:
        strategy.train(exp)
    res = strategy.eval(info.benchmark.test_stream)
    accs = [v for k, v in res.items() if k.startswith("Top1_Acc_Exp/eval")]
    assert len(accs) == 5 and sum(accs) / 5 > 0.9, accs  # chance is 0.5


def test_gates_follow_layers_replaced_by_calibrate():
    """calibrate() swaps every nn.Linear for a CalibratedLinear: attach() (run at
    before_training / before_eval) moves the hooks, so the gates do not vanish."""
    from avalanche_meta.models.calibration import calibrate

    torch.manual_seed(0)
    model = MLP(input_size=64, hidden_sizes=(30,), num_classes=10)
    xdg = XdG(model, n_tasks=2, gating_prop=0.5)
    calibrate(model)
    x, t = torch.rand(3, 64), torch.tensor([0, 1, 0])
    xdg.set_tasks(t)
    seen = {}
    model.features[2].register_forward_hook(lambda m, i, o: seen.update(h=o))  # ReLU
    closed = xdg.gates.mask(0)[t] == 0
    model(x)
    assert seen["h"][closed].abs().sum() > 0  # old hooks sit on the replaced layers
    xdg.attach(model)
    model(x)
    assert closed.any() and torch.all(seen["h"][closed] == 0)
    with pytest.raises(ValueError, match="another model"):
        xdg.attach(MLP(input_size=64, hidden_sizes=(30,), num_classes=10))
