"""SI on the CPU: the `si` baseline's plugin and the reference's SI of BI-R + SI."""

import pytest
import torch

from avalanche_meta.cli import registry
from avalanche_meta.cli.context import RunContext
from avalanche_meta.benchmarks import split_digits
from avalanche_meta.evaluation.metrics import continual_metrics
from avalanche_meta.plugins.si import SynapticIntelligencePlugin
from avalanche.training.plugins import EvaluationPlugin


def test_si_baseline_uses_a_working_si_plugin():
    registry.load_all()
    torch.manual_seed(0)
    info = split_digits(scenario="class", n_experiences=5)
    ctx = RunContext(
        info=info,
        scenario="class",
        device=torch.device("cpu"),
        seed=0,
        evaluator=EvaluationPlugin(*continual_metrics(), loggers=[]),
    )
    spec = registry.STRATEGIES["si"]
    hp = {name: default for name, (_, default, _) in spec.params.items()}
    hp.update(epochs=1, si_lambda=1.0)
    strategy = spec.build(ctx, **hp)
    plugin = next(
        p for p in strategy.plugins if isinstance(p, SynapticIntelligencePlugin)
    )
    stream = info.benchmark.train_stream
    strategy.train(stream[0])
    importances = plugin.ewc_data[1]
    # Avalanche 0.6's own plugin leaves every importance at 0 on the CPU.
    assert sum(float(v.data.abs().sum()) for v in importances.values()) > 0


# -- the reference code's SI (BI-R + SI) --------------------------------------------------------
def test_reference_si_formula_path_integral_omega_and_penalty():
    """Reference (train.py, continual_learner.py): after every step
    W += -grad * (theta_new - theta_old); after the task
    omega += W / ((theta_end - theta_start)^2 + epsilon), unclipped; penalty
    c * sum(omega * (theta - theta_end)^2)."""
    from types import SimpleNamespace

    from avalanche_meta.plugins.si_reference import ReferenceSIPlugin

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    plugin = ReferenceSIPlugin(c=0.5, epsilon=0.1)
    st = SimpleNamespace(model=model)
    plugin.before_training_exp(st)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    W = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    x, target = torch.randn(8, 3), torch.randn(8, 2)
    for _ in range(4):
        st.loss = ((model(x) - target) ** 2).mean()
        plugin.before_backward(st)  # nothing to protect yet
        opt.zero_grad()
        st.loss.backward()
        old = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.step()
        for n, p in model.named_parameters():
            W[n] += -p.grad * (p.detach() - old[n])
        plugin.after_update(st)
    plugin.after_training_exp(st)
    end = {n: p.detach().clone() for n, p in model.named_parameters()}
    for n in W:
        omega = W[n] / ((end[n] - start[n]) ** 2 + 0.1)
        assert torch.allclose(plugin.omega[n], omega, atol=1e-7)
    # next task: the penalty is c * sum(omega * (theta - theta_end)^2)
    plugin.before_training_exp(st)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3)
    st.loss = torch.zeros(())
    plugin.before_backward(st)
    hand = sum(
        (plugin.omega[n] * (p.detach() - end[n]) ** 2).sum()
        for n, p in model.named_parameters()
    )
    assert float(st.loss) == pytest.approx(0.5 * float(hand), rel=1e-6)
    assert float(hand) != 0.0


def test_bir_si_uses_the_reference_si_on_encoder_and_classifier_only():
    """BI-R + SI in the reference: importance for convE, fcE and classifier only (not
    decoder, prior, mu/logvar heads); c = dg_c and gates dg_si_prop (MNIST: 1, 0.8)."""
    from avalanche_meta.plugins.si_reference import ReferenceSIPlugin

    registry.load_all()
    torch.manual_seed(0)
    info = split_digits(scenario="class", n_experiences=5)
    ctx = RunContext(
        info=info,
        scenario="class",
        device=torch.device("cpu"),
        seed=0,
        evaluator=EvaluationPlugin(*continual_metrics(), loggers=[]),
    )
    spec = registry.STRATEGIES["bir-si"]
    hp = {name: default for name, (_, default, _) in spec.params.items()}
    assert hp["si_c"] == 1.0 and hp["gating"] == 0.8
    hp.update(iterations=3, hidden="16", z_dim=4, batch_size=16, samples=False)
    strategy = spec.build(ctx, **hp)
    plugin = next(p for p in strategy.plugins if isinstance(p, ReferenceSIPlugin))
    assert plugin.c == 1.0 and plugin.epsilon == 0.1
    strategy.train(info.benchmark.train_stream[0])
    names = set(plugin.omega)
    assert names and all(n.startswith(("encoder.", "classifier.")) for n in names)
    assert {"encoder.0.weight", "classifier.weight"} <= names
