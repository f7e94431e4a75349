"""Calibrated layers, ``calibrate``, the calibration maths and the memory (NCCL)."""

from __future__ import annotations

import pytest
import torch
from avalanche.models import SimpleMLP
from torch import nn
from torch.nn import functional as F

from avalanche_meta.models import MLP, ReducedResNet18
from avalanche_meta.models.calibration import (
    BatchNormFeatureScale,
    CalibratedBasicBlock,
    CalibratedConv2d,
    CalibratedLinear,
    CalibrationMemory,
    base_parameters,
    calibrate,
    calibrated_layers,
    calibration_parameters,
    consolidation_loss,
    distillation_kl,
    fisher_importance,
    named_calibration_parameters,
)
from avalanche_meta.models.resnet import BasicBlock
from avalanche_meta.utils.scenario import MASK_VALUE


def _conv_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 4, 3, stride=2, groups=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 5),
    )


def _perturb(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in calibration_parameters(model):
            p.add_(0.3 * torch.randn(p.shape, generator=g))


MODELS = [
    ("mlp", lambda: MLP(input_size=12, hidden_sizes=(8, 7), num_classes=3), (4, 12)),
    ("avalanche SimpleMLP", lambda: SimpleMLP(3, 12, 9, drop_rate=0), (4, 12)),
    ("conv net", _conv_net, (4, 3, 8, 8)),
    ("reduced resnet18", lambda: ReducedResNet18(num_classes=5, nf=4), (3, 3, 8, 8)),
]


@pytest.mark.parametrize("combine", ["multiply", "add"])
@pytest.mark.parametrize("name,make,shape", MODELS, ids=[m[0] for m in MODELS])
def test_calibrate_is_identity_at_init(name, make, shape, combine):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(shape)
    before = model(x)
    calibrate(model, combine=combine)
    assert calibrated_layers(model)
    assert torch.equal(model(x), before)  # with autograd
    with torch.no_grad():
        assert torch.equal(model(x), before)  # folded (inference) path


@pytest.mark.parametrize("wcm,fcm", [(True, True), (True, False), (False, True)])
def test_layers_identity_at_init(wcm, fcm):
    torch.manual_seed(0)
    lin, conv = nn.Linear(5, 3), nn.Conv2d(4, 6, 3, padding=1, groups=2)
    x, xc = torch.randn(2, 5), torch.randn(2, 4, 6, 6)
    cl = CalibratedLinear.from_layer(lin, wcm=wcm, fcm=fcm)
    cc = CalibratedConv2d.from_layer(conv, wcm=wcm, fcm=fcm)
    assert cl.weight is lin.weight and cc.bias is conv.bias  # shared base parameters
    assert torch.equal(cl(x), lin(x)) and torch.equal(cc(xc), conv(xc))
    assert (cc.psi is not None) == wcm and (cc.lam is not None) == fcm
    if wcm:
        assert cc.psi.shape == (6, 2, 1, 1) and cl.psi.shape == (3,)
    # built directly, too
    direct = CalibratedConv2d(4, 6, 3, padding=1, wcm=wcm, fcm=fcm)
    plain = nn.Conv2d(4, 6, 3, padding=1)
    plain.load_state_dict({"weight": direct.weight, "bias": direct.bias})
    assert torch.equal(direct(xc), plain(xc))


def test_calibrated_basic_block_identity():
    torch.manual_seed(0)
    plain = BasicBlock(4, 8, stride=2).eval()
    cal = CalibratedBasicBlock(4, 8, stride=2).eval()
    cal.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(cal(x), plain(x))
    assert len(calibrated_layers(cal)) == 3  # two 3x3 and the 1x1 shortcut


@pytest.mark.parametrize("combine", ["multiply", "add"])
def test_layers_compute_the_papers_formula(combine):
    """WCM tiles psi over the inputs / the kernel; FCM scales each output channel."""
    torch.manual_seed(1)
    conv = CalibratedConv2d(4, 6, 3, padding=1, groups=2, combine=combine)
    lin = CalibratedLinear(5, 3, combine=combine)
    _perturb(conv), _perturb(lin, 1)
    x = torch.randn(2, 4, 6, 6)
    w = conv.weight * conv.psi.expand_as(conv.weight)  # tile over the kernel
    lam = conv.lam if combine == "multiply" else 1 + conv.lam
    ref_conv = F.conv2d(x, w, conv.bias + conv.psi_bias, padding=1, groups=2)
    ref_conv = ref_conv * lam.view(1, -1, 1, 1)
    assert torch.allclose(conv(x), ref_conv, atol=1e-6)
    xl = torch.randn(2, 5)
    lam = lin.lam if combine == "multiply" else 1 + lin.lam
    ref = (xl @ (lin.psi[:, None] * lin.weight).T + lin.bias + lin.psi_bias) * lam
    assert torch.allclose(lin(xl), ref, atol=1e-6)
    # The layer scales W x by psi instead of forming psi * W: same gradients.
    params = [lin.weight, lin.bias, lin.psi, lin.psi_bias, lin.lam]
    got = torch.autograd.grad(lin(xl).square().sum(), params)
    want = torch.autograd.grad(ref.square().sum(), params)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-5)
    with torch.no_grad():  # folded path agrees
        assert torch.allclose(lin(xl), ref, atol=1e-6)
        assert torch.allclose(conv(x), ref_conv, atol=1e-5)


def test_folded_cache_follows_parameter_updates():
    torch.manual_seed(0)
    model = calibrate(MLP(input_size=6, hidden_sizes=(5,), num_classes=3))
    x = torch.randn(4, 6)
    with torch.no_grad():
        model(x)  # fill the cache
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(x).sum().backward()
    opt.step()
    with torch.no_grad():
        folded = model(x)
    assert torch.allclose(folded, model(x), atol=1e-5)


def test_calibrate_errors():
    model = calibrate(MLP(input_size=4, hidden_sizes=(3,), num_classes=2))
    with pytest.raises(ValueError, match="already calibrated"):
        calibrate(model)
    with pytest.raises(ValueError, match="no nn.Linear or nn.Conv2d"):
        calibrate(nn.Sequential(nn.Flatten(), nn.ReLU()))
    with pytest.raises(ValueError, match="wcm=True"):
        calibrate(
            MLP(input_size=4, hidden_sizes=(3,), num_classes=2), wcm=False, fcm=False
        )
    with pytest.raises(ValueError, match="combine"):
        calibrate(MLP(input_size=4, hidden_sizes=(3,), num_classes=2), combine="sum")


def test_parameter_groups_and_gradients():
    model = calibrate(_conv_net())
    base, cal = base_parameters(model), calibration_parameters(model)
    names = [n for n, _ in named_calibration_parameters(model)]
    assert all(n.rsplit(".", 1)[-1] in ("psi", "psi_bias", "lam") for n in names)
    assert {id(p) for p in base}.isdisjoint({id(p) for p in cal})
    assert len(base) + len(cal) == len(list(model.parameters()))
    # the BatchNorm affine parameters are base parameters
    assert any(p is model[1].weight for p in base)
    # gradients reach both groups through the calibrated forward
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cal)
    # an optimizer over the base parameters never moves psi / lambda
    before = [p.detach().clone() for p in cal]
    torch.optim.SGD(base, lr=1.0).step()
    assert all(torch.equal(a, p) for a, p in zip(before, cal))


def test_fisher_importance_matches_chain_rule_reference():
    """Lambda = (dL/dtheta~)^2 / |psi| with theta~ = psi * theta as an explicit leaf."""
    torch.manual_seed(0)
    layer = CalibratedLinear(4, 3)
    _perturb(layer)
    x = torch.randn(5, 4)
    loss = layer(x).pow(2).mean()
    (Lambda,) = fisher_importance(loss, nn.Sequential(layer), normalize=False)
    theta_tilde = (layer.psi[:, None] * layer.weight).detach().requires_grad_()
    out = F.linear(x, theta_tilde, layer.bias + layer.psi_bias) * layer.lam
    (g,) = torch.autograd.grad(out.pow(2).mean(), theta_tilde)
    ref = g.pow(2) / layer.psi.detach().abs()[:, None]
    assert torch.allclose(Lambda, ref, rtol=1e-4, atol=1e-10)
    (norm,) = fisher_importance(layer(x).pow(2).mean(), nn.Sequential(layer))
    assert torch.allclose(norm.max(), torch.tensor(1.0))
    assert torch.allclose(norm, Lambda / Lambda.max(), rtol=1e-4)


def test_consolidation_and_distillation_references():
    torch.manual_seed(0)
    w, w_old, L = torch.randn(3, 2), torch.randn(3, 2), torch.rand(3, 2)
    assert torch.allclose(
        consolidation_loss([w], [w_old], [L]),
        0.5 * ((w - w_old) * L * (w - w_old)).sum(),
    )
    z, zs = torch.randn(4, 5), torch.randn(4, 5)
    zs[:, 3:] = MASK_VALUE  # units inactive at storage time take no part
    T = 2.0
    p = torch.softmax(z[:, :3] / T, 1)
    q = torch.softmax(zs[:, :3] / T, 1)
    ref = (p * (p.log() - q.log())).sum(1).mean()
    assert torch.allclose(distillation_kl(z, zs, T), ref, atol=1e-6)
    assert distillation_kl(zs, zs, T).abs() < 1e-6


def test_memory_balanced_reservoir_and_errors():
    torch.manual_seed(0)
    mem = CalibrationMemory(12)
    x = torch.arange(40.0).view(40, 1)
    y = torch.zeros(40, dtype=torch.long)
    z = torch.zeros(40, 2)
    mem.start_task(0)
    mem.add(x, y, y, z, 0)
    assert len(mem) == 12 and int(mem.seen[0]) == 40
    mem.start_task(1)
    assert int((mem.task == 0).sum()) == 6  # quota shrinks to 12 // 2
    mem.add(x + 100, y, y + 1, z, 1)
    assert int((mem.task == 1).sum()) == 6 and len(mem) == 12
    past = mem.sample(50, exclude_task=1)
    assert past[0].shape[0] == 6 and bool((past[0] < 100).all())
    assert bool((past[2] == 0).all())
    # round trip into a fresh memory
    fresh = CalibrationMemory(12)
    fresh.load_state_dict(mem.state_dict())
    for key, value in mem.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key
    with pytest.raises(ValueError, match="mem_size"):
        CalibrationMemory(2).start_task(2)
    with pytest.raises(ValueError, match="start_task"):
        CalibrationMemory(4).add(x[:1], y[:1], y[:1], z[:1], 0)


def test_memory_reservoir_is_uniform_within_a_task():
    torch.manual_seed(0)
    counts = torch.zeros(20)
    for _ in range(300):
        mem = CalibrationMemory(5)
        mem.start_task(0)
        x = torch.arange(20.0).view(20, 1)
        mem.add(
            x,
            torch.zeros(20, dtype=torch.long),
            torch.zeros(20, dtype=torch.long),
            torch.zeros(20, 1),
            0,
        )
        counts[mem.x[:, 0].long()] += 1
    freq = counts / 300  # expected 5 / 20 = 0.25 for every sample
    assert float((freq - 0.25).abs().max()) < 0.1


# -- FCM position, linear merge, layer subsets --------------------------------------
def _conv_bn_grads(fcm_position: str):
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
    head = nn.Linear(8, 4)
    calibrate(block, fcm_position=fcm_position)
    x, y = torch.randn(16, 3, 6, 6), torch.randint(0, 4, (16,))
    z = head(F.relu(block(x)).mean(dim=(2, 3)))
    loss = F.cross_entropy(z, y)
    named = dict(block.named_parameters())
    lam = next(p for n, p in named.items() if n.endswith("lam"))
    g_lam, g_psi = torch.autograd.grad(loss, [lam, named["0.psi"]])
    return float(g_lam.abs().max()), float(g_psi.abs().max()), block


def test_fcm_before_batch_norm_is_cancelled_after_is_not():
    g_lam, g_psi, block = _conv_bn_grads("before_bn")
    assert isinstance(block[0], CalibratedConv2d) and block[0].lam is not None
    assert g_lam < 1e-3 * g_psi  # training-mode BN undoes a per-channel scale
    g_lam, g_psi, block = _conv_bn_grads("after_bn")
    assert block[0].lam is None and isinstance(block[1], BatchNormFeatureScale)
    assert g_lam > 0.05 * g_psi, (g_lam, g_psi)


@pytest.mark.parametrize("combine", ["multiply", "add"])
def test_fcm_after_bn_resnet_identity_and_formula(combine):
    torch.manual_seed(0)
    model = ReducedResNet18(num_classes=5, nf=4).eval()
    x = torch.randn(3, 3, 8, 8)
    before = model(x)
    calibrate(model, fcm_position="after_bn", combine=combine)
    assert torch.equal(model(x), before)
    scales = [m for m in model.modules() if isinstance(m, BatchNormFeatureScale)]
    convs = [m for m in model.modules() if isinstance(m, CalibratedConv2d)]
    assert len(scales) == len(convs) and all(c.lam is None for c in convs)
    _perturb(model)
    s = scales[0]
    h = torch.randn(2, s.bn.num_features, 4, 4)
    want = s.bn(h) * s.feature_scale().view(1, -1, 1, 1)
    assert torch.allclose(s(h), want)
    block = CalibratedBasicBlock(4, 6, stride=2, fcm_position="after_bn")
    assert isinstance(block.bn1, BatchNormFeatureScale)
    assert isinstance(block.shortcut[1], BatchNormFeatureScale)


def test_linear_layers_keep_one_per_output_scale():
    mlp = calibrate(MLP(input_size=6, hidden_sizes=(5,), num_classes=3))
    names = [n for n, _ in named_calibration_parameters(mlp)]
    assert names and not any(n.endswith("lam") for n in names)
    literal = calibrate(
        MLP(input_size=6, hidden_sizes=(5,), num_classes=3), merge_linear_fcm=False
    )
    assert any(n.endswith("lam") for n, _ in named_calibration_parameters(literal))
    fcm_only = calibrate(MLP(input_size=6, hidden_sizes=(5,), num_classes=3), wcm=False)
    assert all(n.endswith("lam") for n, _ in named_calibration_parameters(fcm_only))
    # convolutions keep both (psi per channel pair, lam per output channel)
    conv = calibrate(_conv_net())
    assert conv[0].psi is not None and conv[0].lam is not None


def test_add_and_multiply_give_identical_sgd_trajectories():
    def run(combine):
        torch.manual_seed(0)
        model = calibrate(_conv_net(), combine=combine).train()
        opt = torch.optim.SGD(calibration_parameters(model), lr=0.5)
        g = torch.Generator().manual_seed(1)
        for _ in range(5):
            x = torch.randn(4, 3, 8, 8, generator=g)
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        return model(torch.randn(2, 3, 8, 8, generator=g))

    assert torch.allclose(run("multiply"), run("add"), atol=1e-6)


def test_layer_subsets_and_scalar_temperature():
    torch.manual_seed(0)
    x = torch.randn(4, 6)
    hidden = calibrate(
        MLP(input_size=6, hidden_sizes=(5, 5), num_classes=3), layers="hidden"
    )
    assert type(hidden.classifier) is nn.Linear
    assert len(calibrated_layers(hidden)) == 2
    model = MLP(input_size=6, hidden_sizes=(5,), num_classes=3)
    plain = model(x)
    calibrate(model, layers="output", wcm=False, scalar_fcm=True)
    assert calibrated_layers(model) == [model.classifier]
    (cal,) = calibration_parameters(model)
    assert cal.shape == (1,) and torch.equal(model(x), plain)
    with torch.no_grad():
        cal.fill_(2.5)
        assert torch.allclose(model(x), 2.5 * plain, atol=1e-6)  # folded path
    assert torch.allclose(model(x), 2.5 * plain, atol=1e-6)  # autograd path
    with pytest.raises(ValueError, match="layers"):
        calibrate(MLP(input_size=6, hidden_sizes=(5,), num_classes=3), layers="head")
    with pytest.raises(ValueError, match="fcm_position"):
        calibrate(MLP(input_size=6, hidden_sizes=(5,), num_classes=3), fcm_position="x")
