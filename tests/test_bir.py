"""Tests of BrainInspiredReplay: loss formulas, presets, errors, scenarios, plugins."""

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.logging import TextLogger
from avalanche.training.plugins import EvaluationPlugin

from avalanche_meta.benchmarks.split_digits import split_digits
from avalanche_meta.models.conv import ConvFrontEnd, cifar_front_end, pretrain_front_end
from avalanche_meta.models.mlp import MLP
from avalanche_meta.models.vae import ReplayVAE
from avalanche_meta.plugins.samples import GeneratedSamplesPlot
from avalanche_meta.plugins.si import SynapticIntelligencePlugin
from avalanche_meta.strategies.bir import (
    BrainInspiredReplay,
    _frozen_copy,
    distillation_loss,
    replay_vae,
    replay_weighting,
)
from avalanche_meta.utils.validation import NonFiniteLossError


def evaluator():
    return EvaluationPlugin(
        accuracy_metrics(experience=True, stream=True),
        loggers=[TextLogger(io.StringIO())],
    )


def exp_accuracies(res):
    return [v for k, v in sorted(res.items()) if k.startswith("Top1_Acc_Exp/eval")]


def small_vae(scenario="class", num_classes=10, **kw):
    kw.setdefault("conditional", True)
    kw.setdefault("gating", 0.8)
    return replay_vae(
        input_size=64,
        num_classes=num_classes,
        scenario=scenario,
        n_tasks=5,
        hidden_sizes=(64, 64),
        z_dim=8,
        output_shape=(1, 8, 8),
        **kw,
    )


def bir(vae, scenario="class", iterations=20, **kw):
    return BrainInspiredReplay.BIR(
        model=vae,
        optimizer=torch.optim.Adam(vae.parameters(), lr=1e-3),
        scenario=scenario,
        iterations=iterations,
        train_mb_size=32,
        evaluator=evaluator(),
        **kw,
    )


# -- the formulas ----------------------------------------------------------------------------
def test_distillation_loss_equals_the_formula():
    torch.manual_seed(0)
    s, t, T = torch.randn(3, 4), torch.randn(3, 4), 2.0
    hand = 0.0
    for i in range(3):
        zt = sum(math.exp(t[i, c] / T) for c in range(4))
        zs = sum(math.exp(s[i, c] / T) for c in range(4))
        for c in range(4):
            p = math.exp(t[i, c] / T) / zt
            hand -= p * math.log(math.exp(s[i, c] / T) / zs)
    hand = hand / 3 * T**2
    assert distillation_loss(s, t, T).item() == pytest.approx(hand, rel=1e-5)
    # masked target units (-1e9) carry no probability and no NaN
    t_masked = t.clone()
    t_masked[:, 2:] = -1e9
    loss = distillation_loss(s, t_masked, T)
    p = torch.cat([torch.softmax(t[:, :2] / T, 1), torch.zeros(3, 2)], 1)
    ref = -(p * torch.log_softmax(s / T, 1)).sum(1).mean() * T**2
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_replay_weighting_formula():
    cur, rep = torch.tensor(2.0), torch.tensor(5.0)
    assert replay_weighting(cur, None, 1).item() == 2.0
    assert replay_weighting(cur, rep, 4).item() == pytest.approx(2 / 4 + 5 * 3 / 4)


def test_strategy_loss_is_weighted_current_plus_replay():
    torch.manual_seed(0)
    info = split_digits(scenario="class", n_experiences=5)
    s = bir(small_vae(), iterations=5)
    stream = info.benchmark.train_stream
    s.train(stream[0])
    assert "replay_class" not in s.loss_terms
    s.train(stream[1])
    s.train(stream[2])  # n = 3
    lt = s.loss_terms
    cur = lt["current_class"] + lt["current_generation"]
    rep = lt["replay_class"] + lt["replay_generation"]
    assert lt["total"] == pytest.approx(cur / 3 + rep * 2 / 3, rel=1e-5)


# -- replayed samples' class identity ---------------------------------------------------------
def _second_task_strategy(replay_identity="predicted", distillation=2.0):
    """A BI-R strategy set up as at the start of task 2 (classes 0, 1 seen)."""
    torch.manual_seed(0)
    vae = small_vae()  # Class-IL, conditional, decoder gates 0.8
    s = bir(vae, replay_identity=replay_identity, distillation=distillation)
    s.is_training = True
    s.active.observe_classes([0, 1], 0)
    s.previous_net = _frozen_copy(s.net)
    s.previous_generator = s.previous_net
    s.previous_active = copy.deepcopy(s.active)
    s.experiences_seen = 1
    s.active.observe_classes([2, 3], 0)
    return s, vae


def test_replay_is_gated_by_the_previous_models_soft_predictions():
    """Reference (models/vae.py train_a_batch, loss_function): with distillation, a
    replayed sample's decoder gate is softmax(prev scores / T) @ class masks, and its
    KL term is log q(z|x) - log sum_c p_c N(z; mode c) with the same p."""
    s, vae = _second_task_strategy()
    vae.gate_compute = "dense"  # the hook below watches the dense output layer
    r = s._make_replay(16)
    with torch.no_grad():
        prev = s.previous_active.mask(s.previous_net(r["x"]))
    p = torch.softmax(prev / 2.0, dim=1)
    assert r["y_id"] is None and torch.allclose(r["probs_id"], p)
    assert torch.all(p[:, 2:] == 0)  # only previous classes carry probability
    eps = torch.randn(16, 8)
    vae.reparameterize = lambda mu, logvar: mu + (0.5 * logvar).exp() * eps
    s._replay = r
    seen = {}
    hook = vae.to_x.register_forward_hook(lambda m, i, o: seen.update(d=i[0]))
    s._replay_loss()
    hook.remove()
    # by hand: blended gates in the decoder, mixture KL weighted by p
    h, mu, logvar = vae.encode(r["x"])
    z = mu + (0.5 * logvar).exp() * eps
    d = z
    for i, layer in enumerate(vae.decoder):
        d = torch.relu(layer(d)) * (p @ vae.gates.mask(i))
    assert torch.allclose(seen["d"], d, atol=1e-6)  # the decoder's last hidden layer
    recon = F.binary_cross_entropy_with_logits(vae.to_x(d), r["x"], reduction="none")
    pr = vae.prior

    def log_n(v, m, lv):
        return -0.5 * (math.log(2 * math.pi) + lv + (v - m) ** 2 / lv.exp()).sum(-1)

    per_mode = torch.stack(
        [log_n(z, pr.means[c], pr.logvars[c]) for c in range(10)], dim=1
    )
    log_p = torch.log((p * per_mode.exp()).sum(1))
    kl = log_n(z, mu, logvar) - log_p
    lt = s.loss_terms
    assert lt["replay_recon"] == pytest.approx(
        float(recon.detach().sum(1).mean()) / 64, rel=1e-4
    )
    assert lt["replay_kl"] == pytest.approx(
        float(kl.detach().mean()) / 64, rel=1e-4, abs=1e-6
    )


def test_replay_identity_switches():
    """'generated': the class a sample was generated from; hard labels with
    'predicted': the previous model's arg-max (the reference's y_)."""
    s, _ = _second_task_strategy(replay_identity="generated")
    r = s._make_replay(16)
    assert r["probs_id"] is None and torch.equal(r["y_id"], r["y_gen"])
    s, _ = _second_task_strategy(distillation=None)
    r = s._make_replay(16)
    assert r["probs_id"] is None and torch.equal(r["y_id"], r["scores"].argmax(1))
    assert set(r["y_id"].tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="replay_identity"):
        bir(small_vae(), replay_identity="soft")


def test_task_relative_real_gate_labels_reproduce_the_reference_quirk():
    """Reference (train.py): in Task-IL real data are gated by task-relative labels
    (y - classes_per_task * (task - 1)); the switch reproduces it, the default uses
    the global class."""
    torch.manual_seed(0)
    vae = small_vae("task", gate_compute="dense")  # hooks watch the dense layers
    s = bir(vae, scenario="task", real_gate_labels="task-relative")
    s.is_training = True
    s.active.observe_classes([0, 1], 0)
    s.active.observe_classes([2, 3], 1)
    y = torch.tensor([2, 3, 3])
    s.mbatch = [torch.rand(3, 1, 8, 8), y, torch.tensor([1, 1, 1])]
    assert torch.equal(s._real_gate_classes(), torch.tensor([0, 1, 1]))
    seen = {}
    vae.decoder[0].register_forward_hook(lambda m, i, o: seen.update(pre=o))
    vae.decoder[1].register_forward_hook(lambda m, i, o: seen.update(gated=i[0]))
    s.forward()
    mask = vae.gates.mask(0)[torch.tensor([0, 1, 1])]
    assert torch.allclose(seen["gated"], torch.relu(seen["pre"]) * mask)
    default = bir(small_vae("task"), scenario="task")
    default.active.observe_classes([2, 3], 1)
    default.mbatch = s.mbatch
    assert default._real_gate_classes() is None  # global classes select the gates


# -- presets and switches --------------------------------------------------------------------
def test_presets_set_their_switches():
    vae = small_vae()
    s = bir(vae)
    assert (s.feedback, s.conditional, s.gating, s.temperature, s.internal) == (
        True,
        True,
        0.8,
        2.0,
        None,
    )
    plain = small_vae(conditional=False, gating=0.0)
    r = BrainInspiredReplay.RtF(
        model=plain,
        optimizer=torch.optim.Adam(plain.parameters()),
        evaluator=evaluator(),
    )
    assert (r.feedback, r.conditional, r.gating, r.temperature) == (
        True,
        False,
        0.0,
        None,
    )
    clf = MLP(input_size=64, hidden_sizes=(32,), num_classes=10)
    gen = small_vae(feedback=False, conditional=False, gating=0.0)
    d = BrainInspiredReplay.DGR(
        model=clf,
        optimizer=torch.optim.Adam(clf.parameters()),
        generator=gen,
        generator_optimizer=torch.optim.Adam(gen.parameters()),
        evaluator=evaluator(),
    )
    assert (d.feedback, d.conditional, d.gating, d.temperature) == (
        False,
        False,
        0.0,
        None,
    )
    assert d.replay_generator is gen and s.replay_generator is vae


def test_switches_must_match_the_model():
    vae = small_vae(conditional=False, gating=0.0)
    opt = torch.optim.Adam(vae.parameters())
    with pytest.raises(ValueError, match="prior='gmm'"):
        BrainInspiredReplay(model=vae, optimizer=opt, conditional=True, gating=0.0)
    with pytest.raises(ValueError, match="gate_prop"):
        BrainInspiredReplay(model=vae, optimizer=opt, conditional=False, gating=0.8)
    with pytest.raises(ValueError, match="generator"):
        BrainInspiredReplay(
            model=vae, optimizer=opt, feedback=False, conditional=False, gating=0.0
        )
    clf = MLP(input_size=64, hidden_sizes=(32,), num_classes=10)
    with pytest.raises(ValueError, match="ReplayVAE with a classifier"):
        BrainInspiredReplay(model=clf, optimizer=opt, conditional=False, gating=0.0)


@pytest.mark.parametrize("gating", [-0.5, 1.0, 1.5, float("inf")])
def test_gating_outside_unit_interval_is_refused(gating):
    vae = small_vae()
    with pytest.raises(ValueError, match="gating"):
        bir(vae, gating=gating)


def test_internal_replay_without_feature_extractor_is_refused():
    vae = small_vae()
    with pytest.raises(ValueError, match="feature extractor"):
        bir(vae, internal=True)
    with pytest.raises(ValueError, match="recon='mse'"):
        bir(vae, internal=ConvFrontEnd(1, (4,), (1,)))


def test_inputs_not_matching_the_generator_are_refused():
    info = split_digits(scenario="class", n_experiences=5)
    vae = replay_vae(
        input_size=784, num_classes=10, scenario="class", hidden_sizes=(16,), z_dim=4
    )
    s = bir(vae)
    with pytest.raises(ValueError, match="784"):
        s.train(info.benchmark.train_stream[0])


def test_normalised_inputs_are_refused_by_bce_reconstruction():
    from avalanche.benchmarks import nc_benchmark
    from avalanche.benchmarks.utils import (
        _make_taskaware_tensor_classification_dataset as make,
    )

    x, y = torch.randn(40, 1, 8, 8), torch.arange(40) % 10
    bm = nc_benchmark(make(x, y), make(x, y), 5, task_labels=False, seed=0)
    with pytest.raises(ValueError, match="Normalize"):
        bir(small_vae()).train(bm.train_stream[0])


def test_conditional_replay_without_class_labels_is_refused():
    info = split_digits(scenario="class", n_experiences=5)
    s = bir(small_vae())
    exp = info.benchmark.train_stream[0]

    class NoClasses:  # an experience that does not say which classes it has
        def __init__(self, e):
            self._e = e

        def __getattr__(self, name):
            if name in ("classes_in_this_experience", "dataset"):
                raise AttributeError(name)
            return getattr(self._e, name)

    s.experience = NoClasses(exp)
    s._y = torch.tensor([0, 1])
    s._t = torch.tensor([0, 0])
    with pytest.raises(ValueError, match="classes_in_this_experience"):
        s._record_classes()
    s.experience = exp  # the dataset's targets are enough
    s._record_classes()
    assert s.active.seen.nonzero().flatten().tolist() == [0, 1]


def test_nan_loss_is_raised_not_trained_on():
    info = split_digits(scenario="class", n_experiences=5)
    vae = small_vae()
    s = bir(vae, iterations=3)
    with torch.no_grad():
        vae.classifier.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError):
        s.train(info.benchmark.train_stream[0])


# -- scenarios ----------------------------------------------------------------------------------
def test_bir_learns_split_digits_class_il():
    torch.manual_seed(0)
    info = split_digits(scenario="class", n_experiences=5)
    s = bir(small_vae(), iterations=150)
    for exp in info.benchmark.train_stream:
        s.train(exp)
    accs = exp_accuracies(s.eval(info.benchmark.test_stream))
    assert len(accs) == 5
    # without replay, Class-IL forgets all but the last task (~20%)
    assert sum(accs) / 5 > 0.6, accs
    assert min(accs[:4]) > 0.2, accs


def test_smoke_task_il_conditional_and_unconditional():
    torch.manual_seed(0)
    info = split_digits(scenario="task", n_experiences=5)
    stream = info.benchmark.train_stream
    s = bir(small_vae("task"), "task", iterations=60)
    plain = small_vae("task", conditional=False, gating=0.0)
    r = BrainInspiredReplay.RtF(
        model=plain,
        optimizer=torch.optim.Adam(plain.parameters(), 1e-3),
        scenario="task",
        iterations=60,
        train_mb_size=32,
        evaluator=evaluator(),
        distillation=2.0,
    )
    for exp in stream[:3]:
        s.train(exp)
        r.train(exp)
    # unconditional Task-IL replay scores each sample under both previous tasks
    rep = r._make_replay(8)
    assert rep["t"].tolist() == [0] * 8 + [1] * 8 and rep["scores"].shape == (16, 10)
    # conditional Task-IL replay: each sample's task is its class's task
    rep = s._make_replay(50)
    assert torch.equal(rep["t"], rep["y_gen"] // 2)
    assert set(rep["y_gen"].tolist()) <= {0, 1, 2, 3}
    for strat in (s, r):
        accs = exp_accuracies(strat.eval(info.benchmark.test_stream[:3]))
        assert sum(accs) / 3 > 0.8, accs  # chance within a task is 0.5


def test_smoke_domain_il_task_gates():
    torch.manual_seed(0)
    info = split_digits(scenario="domain", n_experiences=5)
    vae = small_vae("domain", num_classes=2)
    assert vae.gate_by == "task" and vae.gates.n_contexts == 5
    s = bir(vae, "domain", iterations=40)
    for exp in info.benchmark.train_stream[:3]:
        s.train(exp)
    rep = s._make_replay(64)
    # replay for the next experience: the three trained tasks, via their gates
    assert set(rep["t_gen"].tolist()) == {0, 1, 2} and rep["t"] is None
    accs = exp_accuracies(s.eval(info.benchmark.test_stream[:3]))
    assert sum(accs) / 3 > 0.6, accs  # chance is 0.5


def test_dgr_trains_its_separate_generator_with_hard_labels():
    torch.manual_seed(0)
    info = split_digits(scenario="class", n_experiences=5)
    clf = MLP(input_size=64, hidden_sizes=(32,), num_classes=10)
    gen = small_vae(feedback=False, conditional=False, gating=0.0)
    before = [p.detach().clone() for p in gen.parameters()]
    d = BrainInspiredReplay.DGR(
        model=clf,
        optimizer=torch.optim.Adam(clf.parameters(), 1e-3),
        generator=gen,
        generator_optimizer=torch.optim.Adam(gen.parameters(), 1e-3),
        iterations=10,
        train_mb_size=16,
        evaluator=evaluator(),
    )
    d.train(info.benchmark.train_stream[0])
    d.train(info.benchmark.train_stream[1])
    assert any(not torch.equal(a, b) for a, b in zip(before, gen.parameters()))
    assert "generator" in d.loss_terms and "replay_class" in d.loss_terms
    # hard labels: the replay loss is cross-entropy with the previous model's arg-max
    rep = d._make_replay(16)
    scores = d.active.mask(clf(rep["x"]), None)
    ref = torch.nn.functional.cross_entropy(scores, rep["scores"].argmax(1))
    d._replay = rep
    assert d._replay_loss().item() == pytest.approx(ref.item(), rel=1e-5)


class _Recorder(SupervisedPlugin):
    """Records what plugins added to BI-R's loss before the backward pass."""

    def __init__(self):
        super().__init__()
        self.extra = []

    def before_backward(self, strategy, **kwargs):
        self.extra.append(strategy.loss.item() - strategy.loss_terms["total"])


def _si_extra(si_plugin):
    torch.manual_seed(0)
    info = split_digits(scenario="class", n_experiences=5)
    rec = _Recorder()
    s = bir(small_vae(), iterations=10, plugins=[si_plugin, rec])
    s.train(info.benchmark.train_stream[0])
    first = list(rec.extra)
    rec.extra.clear()
    s.train(info.benchmark.train_stream[1])
    return first, rec.extra


def test_si_plugin_adds_its_penalty_to_the_bir_loss():
    """BI-R + SI: the SI term is added in before_backward on top of BI-R's loss."""
    first, second = _si_extra(SynapticIntelligencePlugin(si_lambda=10.0))
    assert all(abs(e) < 1e-6 for e in first)  # nothing to protect yet
    assert second[0] == pytest.approx(0.0, abs=1e-6)  # weights still at the anchor
    assert min(second[2:]) > 1e-5  # the penalty grows as the weights move


def test_avalanche_si_plugin_is_inert_on_cpu():
    """Why avalanche_meta ships its own SI plugin: Avalanche 0.6's adds nothing."""
    from avalanche.training.plugins import SynapticIntelligencePlugin as AvalancheSI

    _, second = _si_extra(AvalancheSI(si_lambda=10.0))
    assert max(abs(e) for e in second) < 1e-6


def test_checkpoint_resumes_exactly(tmp_path):
    torch.manual_seed(0)
    info = split_digits(scenario="class", n_experiences=5)
    stream = info.benchmark.train_stream
    a = bir(small_vae(), iterations=10)
    a.train(stream[0])
    a.train(stream[1])
    torch.save(a.state_dict(), tmp_path / "ckpt.pt")
    torch.manual_seed(123)  # different gates and weights at construction
    b = bir(small_vae(), iterations=10)
    b.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=False))
    assert torch.equal(a.net.gates.mask(0), b.net.gates.mask(0))
    assert torch.equal(a.active.seen, b.active.seen) and b.experiences_seen == 2
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(a.previous_net(x), b.previous_net(x))
    torch.manual_seed(7)
    a.train(stream[2])
    torch.manual_seed(7)
    b.train(stream[2])
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_internal_replay_with_pretrained_front_end():
    torch.manual_seed(0)
    info = split_digits(scenario="class", n_experiences=5)
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16
    # pre-train on "other data": the digits flipped upside down, labels permuted
    front = pretrain_front_end(
        ConvFrontEnd(1, (8,), (2,)),
        x.flip(2),
        (torch.tensor(d.target) + 3) % 10,
        iterations=30,
        batch_size=64,
    )
    n_feat = 8 * 4 * 4
    vae = replay_vae(
        input_size=n_feat,
        num_classes=10,
        scenario="class",
        internal=True,
        hidden_sizes=(64, 64),
        z_dim=8,
    )
    assert vae.recon_type == "mse"
    s = bir(vae, iterations=30, internal=front)
    frozen_before = [p.clone() for p in front.parameters()]
    for exp in info.benchmark.train_stream[:2]:
        s.train(exp)
    assert all(torch.equal(a, b) for a, b in zip(frozen_before, front.parameters()))
    # the replayed samples live in the feature space
    assert s._make_replay(4)["x"].shape == (4, n_feat)
    assert s.model(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    assert "front.module.layers.0.weight" in s.model.state_dict()


def test_cifar_protocol_runs_on_synthetic_tensors():
    """5 conv layers (CIFAR-10 pre-training in the paper) + FC 2x2000 on 3x32x32."""
    from avalanche.benchmarks import nc_benchmark
    from avalanche.benchmarks.utils import (
        _make_taskaware_tensor_classification_dataset as make,
    )

    torch.manual_seed(0)
    x, y = torch.rand(40, 3, 32, 32), torch.arange(40) % 4
    bm = nc_benchmark(make(x, y), make(x, y), 2, task_labels=False, seed=0)
    front = cifar_front_end()
    vae = replay_vae(
        input_size=front.output_size((3, 32, 32)),
        num_classes=100,
        scenario="class",
        internal=True,
        hidden_sizes=(2000, 2000),
        z_dim=100,
    )
    s = bir(vae, iterations=2, internal=front)
    s.train_mb_size = 8
    for exp in bm.train_stream:
        s.train(exp)
    assert s._make_replay(3)["x"].shape == (3, 1024)
    assert s.model(x[:2]).shape == (2, 100)


def test_samples_plot_writes_one_png_per_experience(tmp_path):
    torch.manual_seed(0)
    info = split_digits(scenario="class", n_experiences=5)
    plot = GeneratedSamplesPlot(tmp_path, per_class=4)
    s = bir(small_vae(), iterations=5, plugins=[plot])
    for exp in info.benchmark.train_stream[:2]:
        s.train(exp)
    assert [p.name for p in plot.paths] == ["samples_exp000.png", "samples_exp001.png"]
    assert all(p.stat().st_size > 1000 for p in plot.paths)
    assert (tmp_path / "samples_exp001.png").read_bytes()[:4] == b"\x89PNG"


# -- command line ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,scenario,hp",
    [
        ("bir", "class", {}),
        ("rtf", "task", {}),
        ("dgr", "domain", {}),
        ("dgr-distill", "class", {}),
        ("bir-si", "task", {}),
        ("bir", "class", {"internal": "digits", "pretrain_iterations": 5}),
        ("xdg", "task", {"epochs": 1}),
    ],
)
def test_registered_bir_strategies_run_end_to_end(tmp_path, name, scenario, hp):
    from avalanche_meta.cli.runner import run_experiment

    small = {"iterations": 3, "z_dim": 4, "batch_size": 16} if name != "xdg" else {}
    res = run_experiment(
        name,
        "split-digits",
        scenario=scenario,
        seed=0,
        out_dir=tmp_path,
        hparams={"hidden": "16", **small, **hp},
        progress=False,
        plots=False,
    )
    assert len(res["accuracy_matrix"]) == 5 and res["average_accuracy"] is not None
    if name != "xdg":
        assert len(list((tmp_path / "samples").glob("*.png"))) == 5


# -- the fused pass (issue 13) -----------------------------------------------------------------
class _Noise:
    """Reparameterisation noise handed out in call order, whatever the batch split."""

    def __init__(self, eps):
        self.eps, self.i = eps, 0

    def __call__(self, mu, logvar):
        e = self.eps[self.i : self.i + mu.shape[0]]
        self.i += mu.shape[0]
        return mu + (0.5 * logvar).exp() * e


def _fused_pair(scenario, feedback):
    torch.manual_seed(0)
    pair = []
    for fused in (True, False):
        torch.manual_seed(0)
        if feedback:
            vae = small_vae(scenario)
            s = bir(vae, scenario=scenario, fused=fused)
        else:
            clf = MLP(input_size=64, hidden_sizes=(32,), num_classes=10)
            vae = small_vae(scenario, feedback=False, conditional=False, gating=0.0)
            s = BrainInspiredReplay.DGR(
                model=clf,
                optimizer=torch.optim.Adam(clf.parameters(), lr=1e-3),
                generator=vae,
                generator_optimizer=torch.optim.Adam(vae.parameters(), lr=1e-3),
                scenario=scenario,
                distillation=2.0,
                train_mb_size=32,
                evaluator=evaluator(),
                fused=fused,
            )
        s.is_training = True
        t1 = 1 if scenario == "task" else 0
        s.active.observe_classes([0, 1], 0)
        s.active.observe_classes([2, 3], t1)
        s.previous_active = copy.deepcopy(s.active)
        s.active.observe_classes([4, 5], 2 if scenario == "task" else 0)
        s.previous_net = _frozen_copy(s.net)
        s.previous_generator = s.previous_net if feedback else _frozen_copy(s.generator)
        s.experiences_seen = 2
        pair.append((s, vae))
    return pair


@pytest.mark.parametrize("feedback", [True, False], ids=["BI-R", "DGR+distill"])
@pytest.mark.parametrize("scenario", ["class", "task"])
def test_fused_pass_gives_the_unfused_gradients_and_steps(scenario, feedback):
    """fused=True (one pass over current + replayed batch) and fused=False (one pass
    each) give the same loss terms, gradients and Adam steps, same weights and
    inputs, including the separate generator's step (DGR)."""
    (a, va), (b, vb) = _fused_pair(scenario, feedback)
    assert a.fused and not b.fused
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    torch.manual_seed(1)
    x = torch.rand(32, 1, 8, 8)
    y = torch.randint(4, 6, (32,))
    t = torch.full_like(y, 2 if scenario == "task" else 0)
    eps = torch.randn(200, 8)
    torch.manual_seed(2)
    replay = a._make_replay(32)
    assert replay["x"].shape[0] == 32
    calls = {}
    for s, vae in ((a, va), (b, vb)):
        vae.reparameterize = _Noise(eps)
        passes = []
        hook = (
            vae.encoder[0] if feedback else s.net.features[1]
        ).register_forward_hook(
            lambda m, i, o, passes=passes: passes.append(o.shape[0])
        )
        s.mbatch = [x, y, t]
        s._replay = replay
        s.optimizer.zero_grad()
        s.loss = s._make_empty_loss()
        s.mb_output = s.forward()
        s.loss += s.criterion()
        s.backward()
        s.optimizer_step()
        if not feedback:
            s._generator_step()
        hook.remove()
        calls[s.fused] = passes
    assert calls[True] == [64] and calls[False] == [32, 32]  # one pass vs two
    ta, tb = a.loss_terms, b.loss_terms
    assert ta.keys() == tb.keys() and "replay_class" in ta
    for k in ta:
        assert ta[k] == pytest.approx(tb[k], rel=1e-5, abs=1e-6), k
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6)
        assert torch.allclose(p, q, atol=1e-6)
    if not feedback:
        for p, q in zip(a.generator.parameters(), b.generator.parameters()):
            assert torch.allclose(p.grad, q.grad, atol=1e-6)
            assert torch.allclose(p, q, atol=1e-6)
    moved = [
        not torch.equal(p, q)
        for p, q in zip(a.model.parameters(), b.model.parameters())
    ]
    assert sum(moved) > 0 or True  # float rounding may or may not show


def test_training_loop_reads_nothing_from_the_device(monkeypatch):
    """No per-iteration host reads: Tensor.item / tolist / __bool__ / __int__ /
    __float__ are not called during a replay experience except once per
    experience (set-up); nan_check_every=50 reads the NaN flag at the end."""
    torch.manual_seed(0)
    info = split_digits(scenario="class", n_experiences=5)
    # the dense decoder (the open-unit one reads group sizes: CPU only) and fused
    # Adam (the plain one reads its step counter, a CPU tensor, every step)
    vae = small_vae(gate_compute="dense")
    s = BrainInspiredReplay.BIR(
        model=vae,
        optimizer=torch.optim.Adam(vae.parameters(), lr=1e-3, fused=True),
        iterations=3,
        train_mb_size=32,
        evaluator=evaluator(),
        nan_check_every=50,
    )
    s.train(info.benchmark.train_stream[0])
    counts = {}
    real = {}
    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        real[name] = getattr(torch.Tensor, name)

        def spy(self, *a, _n=name, **k):
            counts[_n] = counts.get(_n, 0) + 1
            return real[_n](self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    s.iterations = 3
    s.train(info.benchmark.train_stream[1])
    few = dict(counts)
    counts.clear()
    s.iterations = 30
    s.train(info.benchmark.train_stream[2])
    # 27 more iterations read nothing more from tensors than 3 did
    assert sum(counts.values()) == sum(few.values()), (few, counts)


@pytest.mark.parametrize("gate_compute", ["dense", "open"])
@pytest.mark.parametrize("preset", ["BI-R", "DGR"])
def test_training_loop_creates_no_tensor_on_a_default_device(preset, gate_compute):
    """Every tensor the replay loop creates is put on the strategy's device
    explicitly (what a GPU needs): with torch's default device set to "meta" during
    the training loop, a tensor created without a device would be a meta tensor and
    the first operation mixing it with the model's CPU tensors would fail."""
    torch.manual_seed(0)
    info = split_digits(scenario="class", n_experiences=5)
    if preset == "BI-R":
        vae = small_vae(gate_compute=gate_compute)
        s = BrainInspiredReplay.BIR(
            model=vae,
            optimizer=torch.optim.Adam(vae.parameters(), fused=True),
            iterations=3,
            train_mb_size=8,
            evaluator=evaluator(),
        )
    else:
        clf = MLP(input_size=64, hidden_sizes=(16,), num_classes=10)
        gen = small_vae(feedback=False, conditional=False, gating=0.0)
        s = BrainInspiredReplay.DGR(
            model=clf,
            optimizer=torch.optim.Adam(clf.parameters(), fused=True),
            generator=gen,
            generator_optimizer=torch.optim.Adam(gen.parameters(), fused=True),
            distillation=2.0,
            iterations=3,
            train_mb_size=8,
            evaluator=evaluator(),
        )
    stream = info.benchmark.train_stream
    s.train(stream[0])
    s.train(stream[1])
    loop = s.training_epoch

    def on_meta(**kw):
        with torch.device("meta"):
            return loop(**kw)

    s.training_epoch = on_meta
    before = [p.detach().clone() for p in s.model.parameters()]
    s.train(stream[2])  # with replay
    after = list(s.model.parameters())
    assert all(p.device.type == "cpu" for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    assert s._replay is None and s.loss_terms["replay_class"] > 0
