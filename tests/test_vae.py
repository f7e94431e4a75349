"""Tests of the BI-R VAE family: priors, KL terms, gates, generation, conv front-ends."""

import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from avalanche_meta.models.conv import (
    ConvFrontEnd,
    Frozen,
    cifar_front_end,
    pretrain_front_end,
    small_front_end,
)
from avalanche_meta.models.gates import ContextGates
from avalanche_meta.models.vae import (
    VAEPart,
    GaussianMixturePrior,
    ReplayVAE,
    bce_with_logits_rows,
    kl_diag_gaussians,
    kl_standard_normal,
)


def digits():
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    return x, torch.tensor(d.target)


# -- KL terms -------------------------------------------------------------------------------
def test_standard_kl_matches_hand_computation():
    mu = torch.tensor([[0.5, -1.0]])
    logvar = torch.tensor([[math.log(2.0), math.log(0.25)]])
    # KL(N(m, s^2) || N(0, 1)) = 0.5 * (s^2 + m^2 - 1 - log s^2), per dimension
    hand = 0.5 * (2.0 + 0.25 - 1 - math.log(2.0)) + 0.5 * (
        0.25 + 1.0 - 1 - math.log(0.25)
    )
    assert kl_standard_normal(mu, logvar).item() == pytest.approx(hand, rel=1e-6)


def test_gmm_kl_given_class_is_closed_form_against_its_mode():
    """kl="closed": the labelled KL is closed form: check it by hand and by MC."""
    torch.manual_seed(0)
    prior = GaussianMixturePrior(z_dim=2, n_modes=3, kl="closed")
    with torch.no_grad():
        prior.means.copy_(torch.tensor([[0.0, 0.0], [1.0, -2.0], [3.0, 3.0]]))
        prior.logvars.copy_(torch.log(torch.tensor([[1.0, 1.0], [0.5, 2.0], [1, 1]])))
    mu = torch.tensor([[0.3, -1.5]])
    logvar = torch.log(torch.tensor([[0.2, 1.0]]))
    y = torch.tensor([1])
    kl = prior.kl(mu, logvar, mu, y).item()
    # hand: sum_d 0.5 * (log vp/vq + (vq + (mq - mp)^2) / vp - 1)
    hand = 0.5 * (math.log(0.5 / 0.2) + (0.2 + 0.7**2) / 0.5 - 1) + 0.5 * (
        math.log(2.0 / 1.0) + (1.0 + 0.5**2) / 2.0 - 1
    )
    assert kl == pytest.approx(hand, rel=1e-5)
    # Monte-Carlo: E_q[log q(z) - log p(z | y)]
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(prior.means[1], (0.5 * prior.logvars[1]).exp())
    z = q.sample((200_000,))
    mc = (q.log_prob(z).sum(-1) - p.log_prob(z).sum(-1)).mean().item()
    assert kl == pytest.approx(mc, abs=0.02)
    # the generic closed form agrees with torch.distributions
    ref = torch.distributions.kl_divergence(q, p).sum().item()
    assert kl_diag_gaussians(
        mu, logvar, prior.means[1:2], prior.logvars[1:2]
    ).item() == (pytest.approx(ref, rel=1e-5))


def test_gmm_kl_given_class_is_single_sample_estimate_by_default():
    """The reference (models/vae.py calculate_variat_loss) estimates the labelled KL
    with the reparameterised z: log q(z|x) - log N(z; mode y)."""
    prior = GaussianMixturePrior(z_dim=1, n_modes=2)
    assert prior.kl_estimator == "sample"
    with torch.no_grad():
        prior.means.copy_(torch.tensor([[-1.0], [2.0]]))
        prior.logvars.copy_(torch.tensor([[0.0], [math.log(4.0)]]))
    mu, logvar, z = torch.tensor([[0.5]]), torch.tensor([[0.0]]), torch.tensor([[0.1]])
    log_q = -0.5 * (math.log(2 * math.pi) + 0.4**2)
    log_p = -0.5 * (math.log(2 * math.pi) + math.log(4.0) + 1.9**2 / 4.0)
    kl = prior.kl(mu, logvar, z, torch.tensor([1])).item()
    assert kl == pytest.approx(log_q - log_p, rel=1e-5)


def test_gmm_kl_with_class_probs_is_against_the_weighted_mixture():
    """Replayed samples with distillation (reference: y_prob = softmax(scores / T)):
    log q(z|x) - log sum_c p_c N(z; mode c); zero-probability modes drop out."""
    prior = GaussianMixturePrior(z_dim=1, n_modes=3)
    with torch.no_grad():
        prior.means.copy_(torch.tensor([[-1.0], [2.0], [0.2]]))
        prior.logvars.zero_()
    mu, logvar, z = torch.tensor([[0.5]]), torch.tensor([[0.0]]), torch.tensor([[0.1]])

    def npdf(v, m):
        return math.exp(-0.5 * (v - m) ** 2) / math.sqrt(2 * math.pi)

    probs = torch.tensor([[0.3, 0.7, 0.0]])
    log_q = math.log(npdf(0.1, 0.5))
    log_p = math.log(0.3 * npdf(0.1, -1.0) + 0.7 * npdf(0.1, 2.0))
    kl = prior.kl(mu, logvar, z, probs=probs).item()
    assert kl == pytest.approx(log_q - log_p, rel=1e-5)
    # one-hot probabilities give the labelled estimate
    one_hot = prior.kl(mu, logvar, z, probs=torch.tensor([[0.0, 1.0, 0.0]]))
    assert torch.allclose(one_hot, prior.kl(mu, logvar, z, torch.tensor([1])))
    with pytest.raises(ValueError, match="not both"):
        prior.kl(mu, logvar, z, torch.tensor([1]), probs)


def test_gmm_logvars_start_as_standard_normal_draws():
    """Reference: z_class_logvars.data.normal_() (not zeros)."""
    torch.manual_seed(0)
    prior = GaussianMixturePrior(z_dim=100, n_modes=10)
    lv = prior.logvars.detach()
    assert abs(float(lv.mean())) < 0.1 and abs(float(lv.std()) - 1.0) < 0.1
    zero = GaussianMixturePrior(z_dim=4, n_modes=2, logvar_init="zero")
    assert torch.equal(zero.logvars.detach(), torch.zeros(2, 4))


def test_logvar_layer_has_no_bias_by_default():
    """Reference: fc_layer_split builds the logvar layer with bias=False."""
    assert ReplayVAE(input_size=8, hidden_sizes=(4,), z_dim=2).to_logvar.bias is None
    vae = ReplayVAE(input_size=8, hidden_sizes=(4,), z_dim=2, logvar_bias=True)
    assert vae.to_logvar.bias is not None


def test_gmm_kl_without_class_is_single_sample_estimate_against_mixture():
    prior = GaussianMixturePrior(z_dim=1, n_modes=2)
    with torch.no_grad():
        prior.means.copy_(torch.tensor([[-1.0], [2.0]]))
        prior.logvars.zero_()
    mu, logvar, z = torch.tensor([[0.5]]), torch.tensor([[0.0]]), torch.tensor([[0.1]])

    def npdf(v, m):
        return math.exp(-0.5 * (v - m) ** 2) / math.sqrt(2 * math.pi)

    log_q = math.log(npdf(0.1, 0.5))
    log_p = math.log(0.5 * npdf(0.1, -1.0) + 0.5 * npdf(0.1, 2.0))
    assert prior.kl(mu, logvar, z, None).item() == pytest.approx(
        log_q - log_p, rel=1e-5
    )


def test_gmm_prior_samples_from_the_asked_modes():
    prior = GaussianMixturePrior(z_dim=3, n_modes=4)
    with torch.no_grad():
        prior.means.copy_(torch.arange(4.0).unsqueeze(1).repeat(1, 3) * 10)
        prior.logvars.fill_(math.log(1e-4))
    z = prior.sample(5, torch.tensor([2, 2, 0, 3, 1]))
    assert torch.allclose(z[:, 0], torch.tensor([20.0, 20, 0, 30, 10]), atol=0.1)
    with pytest.raises(ValueError, match="n_modes"):
        prior.sample(1, torch.tensor([4]))


# -- gates ----------------------------------------------------------------------------------
def test_gates_switch_off_gate_prop_of_the_units_bernoulli_by_default():
    """Reference (models/fc/layers.py fc_layer_fixed_gates): each unit is gated OFF
    with probability dg_prop = 0.8 (np.random.choice([0, 1], p=[prop, 1 - prop])),
    so about 20% of each layer's units are open for a class."""
    torch.manual_seed(0)
    gates = ContextGates(n_contexts=10, widths=(400, 400), gate_prop=0.8)
    for layer in (0, 1):
        m = gates.mask(layer)
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        assert abs(float(m.mean()) - 0.2) < 0.02  # fraction of OPEN units
    counts = gates.mask(0).sum(1)
    assert len(set(counts.tolist())) > 1  # Bernoulli draws: counts vary per class


def test_exact_gates_gate_off_an_exact_count_and_are_fixed_per_context():
    gates = ContextGates(n_contexts=10, widths=(400, 50), gate_prop=0.8, masks="exact")
    m0, m1 = gates.mask(0), gates.mask(1)
    assert torch.all(m0.sum(1) == 80) and torch.all(m1.sum(1) == 10)
    assert not torch.equal(m0[0], m0[1])  # different classes, different masks
    h = torch.ones(3, 400)
    out1 = gates(h, 0, torch.tensor([4, 4, 7]))
    out2 = gates(h, 0, torch.tensor([4, 4, 7]))
    assert torch.equal(out1, out2) and torch.equal(out1[0], m0[4])
    assert torch.equal(out1[2], m0[7])
    with pytest.raises(ValueError, match="n_contexts"):
        gates(h, 0, torch.tensor([1, 2, 10]))


def test_soft_gate_context_blends_the_masks():
    """Reference: gate = gate_input @ gate_mask for (batch, classes) soft inputs."""
    torch.manual_seed(0)
    gates = ContextGates(n_contexts=3, widths=(20,), gate_prop=0.5)
    p = torch.tensor([[0.25, 0.75, 0.0], [0.0, 0.0, 1.0]])
    h = torch.rand(2, 20)
    m = gates.mask(0)
    out = gates(h, 0, p)
    assert torch.allclose(out[0], h[0] * (0.25 * m[0] + 0.75 * m[1]))
    assert torch.allclose(out[1], gates(h[1:], 0, torch.tensor([2]))[0])


@pytest.mark.parametrize("prop", [1.0, -0.1, 1.5, float("nan")])
def test_gate_prop_outside_unit_interval_is_refused(prop):
    with pytest.raises(ValueError, match="gate_prop"):
        ContextGates(n_contexts=2, widths=(4,), gate_prop=prop)


def test_gate_prop_of_vae_checked():
    with pytest.raises(ValueError, match="gate_prop"):
        ReplayVAE(input_size=4, gate_prop=1.2, gate_contexts=2)
    with pytest.raises(ValueError, match="gate_contexts"):
        ReplayVAE(input_size=4, gate_prop=0.8)


def test_vae_decoder_gates_leave_about_a_fifth_of_units_open():
    torch.manual_seed(0)
    vae = ReplayVAE(input_size=784, num_classes=10, gate_prop=0.8, gate_contexts=10)
    for layer in (0, 1):
        assert abs(float(vae.gates.mask(layer).mean()) - 0.2) < 0.02


def test_gates_and_modes_are_restored_from_a_checkpoint(tmp_path):
    torch.manual_seed(1)
    a = ReplayVAE(
        input_size=64,
        hidden_sizes=(32, 32),
        z_dim=4,
        num_classes=10,
        prior="gmm",
        gate_prop=0.8,
        gate_contexts=10,
    )
    torch.save(a.state_dict(), tmp_path / "vae.pt")
    torch.manual_seed(2)
    b = ReplayVAE(
        input_size=64,
        hidden_sizes=(32, 32),
        z_dim=4,
        num_classes=10,
        prior="gmm",
        gate_prop=0.8,
        gate_contexts=10,
    )
    assert not torch.equal(a.gates.mask(0), b.gates.mask(0))
    assert "gates.mask_0" in a.state_dict() and "prior.means" in a.state_dict()
    b.load_state_dict(torch.load(tmp_path / "vae.pt"))
    assert torch.equal(a.gates.mask(0), b.gates.mask(0))
    assert torch.equal(a.gates.mask(1), b.gates.mask(1))
    z = torch.randn(5, 4)
    y = torch.tensor([0, 3, 3, 9, 1])
    assert torch.equal(a.decode(z, y), b.decode(z, y))


def test_decoder_gate_really_switches_units_off():
    torch.manual_seed(0)
    vae = ReplayVAE(
        input_size=16,
        hidden_sizes=(20,),
        z_dim=3,
        gate_prop=0.5,
        gate_contexts=2,
        gate_compute="dense",  # the hook below watches the dense layers
    )
    seen = {}
    vae.decoder[0].register_forward_hook(lambda m, i, o: seen.update(pre=o))
    z = torch.randn(1, 3)
    vae.decode(z, torch.tensor([1]))
    post = F.relu(seen["pre"]) * vae.gates.mask(0)[1]
    ref = torch.sigmoid(vae.to_x(post))
    assert torch.allclose(vae.decode(z, torch.tensor([1])), ref)
    with pytest.raises(ValueError, match="context"):
        vae.decode(z)


@pytest.mark.parametrize("recon", ["bce", "mse"])
@pytest.mark.parametrize("gate_by,contexts", [("class", 10), ("task", 3)])
def test_open_unit_decoder_equals_the_dense_one(recon, gate_by, contexts):
    """gate_compute='open' (only each context's open units) gives the dense result,
    values and gradients, to float rounding; blended (soft) gates stay dense."""
    torch.manual_seed(0)
    kw = dict(
        input_size=30,
        hidden_sizes=(40, 24),
        z_dim=6,
        num_classes=10,
        prior="gmm",
        gate_prop=0.8,
        gate_contexts=contexts,
        gate_by=gate_by,
        recon=recon,
    )
    dense = ReplayVAE(**kw, gate_compute="dense")
    sparse = ReplayVAE(**kw, gate_compute="open")
    sparse.load_state_dict(dense.state_dict())
    # one context gated off completely in the first layer: the bias still flows on
    sparse.gates.mask_0[1].zero_()
    dense.gates.mask_0[1].zero_()
    calls = []
    open_decode = sparse._decode_open_parts
    sparse._decode_open_parts = lambda z, c, soft, sizes: (
        calls.append(list(sizes)) or open_decode(z, c, soft, sizes)
    )
    x = torch.rand(25, 30)
    y = torch.randint(10, (25,))
    ctx = y if gate_by == "class" else torch.randint(contexts, (25,))
    ctx[:3] = 1
    # blended gates over classes 0-2 only: the other classes' units are skipped
    probs = torch.softmax(torch.randn(7, 10), 1) * (torch.arange(10) < 3)
    probs = probs / probs.sum(1, keepdim=True)
    eps = torch.randn(32, 6)
    outs = []
    for vae in (dense, sparse):
        vae.reparameterize = lambda mu, logvar: mu + (0.5 * logvar).exp() * eps
        vae.zero_grad()
        kw_cur = {"y": y} if gate_by == "class" else {"y": y, "context": ctx}
        p_rep = (
            {"class_probs": probs}
            if gate_by == "class"
            else {"y": y[:7], "context": ctx[:7]}
        )
        parts = [VAEPart(25, **kw_cur), VAEPart(7, **p_rep)]
        res = vae.evaluate_parts(torch.cat([x, x[:7]]), parts)
        loss = sum(r.generation.mean() + r.logits.logsumexp(1).mean() for r in res)
        loss.backward()
        outs.append(
            (
                torch.cat([r.x_recon for r in res]),
                [p.grad.clone() for p in vae.parameters()],
                vae.decode(eps[:25, :], ctx),
            )
        )
    (rd, gd, dd), (rs, gs, ds) = outs
    assert torch.allclose(rd, rs, atol=1e-6)
    assert torch.allclose(dd, ds, atol=1e-6)
    for a, b in zip(gd, gs):
        assert torch.allclose(a, b, atol=1e-6)
    assert any(g.abs().max() > 1e-3 for g in gs)
    if gate_by == "class":  # gates that need a gradient: the autograd fallback
        grads = []
        for vae in (dense, sparse):
            w = probs.clone().requires_grad_()
            vae.decode(eps[:7], w).sum().backward()
            grads.append(w.grad)
        assert torch.allclose(grads[0], grads[1], atol=1e-5)
    # a frozen decoder (the previous generator) caches its sub-blocks, and a change
    # of its weights is seen
    for vae in (dense, sparse):
        for p in vae.parameters():
            p.requires_grad_(False)
    with torch.no_grad():
        assert torch.allclose(dense.decode(eps[:25], ctx), sparse.decode(eps[:25], ctx))
        assert torch.allclose(dense.decode(eps[:25], ctx), sparse.decode(eps[:25], ctx))
        for vae in (dense, sparse):
            vae.decoder[-1].weight.mul_(0.5)
        assert torch.allclose(
            dense.decode(eps[:25], ctx), sparse.decode(eps[:25], ctx), atol=1e-6
        )
    # the open-unit path ran: on the integer part(s), in decode(), frozen decodes
    assert calls[:2] == ([[25, 7], [25]] if gate_by == "class" else [[32], [25]])
    assert calls[2:] == [[25]] * 3


# -- shapes, interface, errors ----------------------------------------------------------------
def test_input_shape_not_matching_generator_is_refused():
    vae = ReplayVAE(input_size=784, hidden_sizes=(16,), z_dim=4, num_classes=10)
    with pytest.raises(ValueError, match="784"):
        vae(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="output_shape"):
        ReplayVAE(input_size=784, output_shape=(1, 8, 8))


def test_generate_follows_avalanche_generator_interface():
    from avalanche.models.generator import Generator

    vae = ReplayVAE(
        input_size=64,
        hidden_sizes=(16,),
        z_dim=4,
        num_classes=10,
        prior="gmm",
        output_shape=(1, 8, 8),
    )
    assert isinstance(vae, Generator)
    assert vae.generate(5).shape == (5, 1, 8, 8)
    assert vae.generate(3, condition=[1, 2, 3]).shape == (3, 1, 8, 8)
    x = vae.generate(4, condition=2)
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    plain = ReplayVAE(input_size=64, hidden_sizes=(16,), z_dim=4)
    with pytest.raises(ValueError, match="chosen classes"):
        plain.generate(2, condition=1)
    with pytest.raises(ValueError, match="classifier"):
        plain(torch.rand(2, 64))


def test_evaluate_loss_is_per_feature_elbo():
    torch.manual_seed(0)
    vae = ReplayVAE(input_size=64, hidden_sizes=(16,), z_dim=4, num_classes=10)
    x = torch.rand(6, 1, 8, 8)
    out = vae.evaluate(x)
    recon = F.binary_cross_entropy(out.x_recon, x.flatten(1), reduction="none").sum(1)
    assert torch.allclose(out.recon, recon)
    assert torch.allclose(out.kl, kl_standard_normal(out.mu, out.logvar))
    assert torch.allclose(out.generation, (recon + out.kl) / 64)
    mse = ReplayVAE(input_size=64, hidden_sizes=(16,), z_dim=4, recon="mse")
    out = mse.evaluate(x)
    assert torch.allclose(out.recon, 0.5 * (out.x_recon - x.flatten(1)).pow(2).sum(1))


def test_conditional_generation_gives_the_asked_class():
    """Train classifier + GMM-VAE jointly on the 8x8 digits, then generate each class:
    the classifier labels the generated samples as the asked class."""
    torch.manual_seed(0)
    x, y = digits()
    vae = ReplayVAE(
        input_size=64,
        hidden_sizes=(128, 128),
        z_dim=10,
        num_classes=10,
        prior="gmm",
        gate_prop=0.8,
        gate_contexts=10,
        output_shape=(1, 8, 8),
    )
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    for _ in range(700):
        idx = torch.randint(len(y), (64,))
        out = vae.evaluate(x[idx], y[idx])
        loss = F.cross_entropy(out.logits, y[idx]) + out.generation.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    vae.eval()
    asked = torch.arange(10).repeat_interleave(20)
    with torch.no_grad():
        pred = vae(vae.generate(len(asked), condition=asked)).argmax(1)
    acc = (pred == asked).float().mean().item()
    assert acc > 0.8, acc  # chance is 0.1


# -- conv front-ends ------------------------------------------------------------------------------
def test_cifar_front_end_shapes_on_synthetic_tensors():
    front = cifar_front_end()
    x = torch.rand(4, 3, 32, 32)
    assert front(x).shape == (4, 256, 2, 2)
    assert front.output_size((3, 32, 32)) == 1024
    assert small_front_end().output_size((1, 28, 28)) == 32 * 7 * 7
    with pytest.raises(ValueError, match="channels"):
        front(torch.rand(2, 1, 32, 32))


def test_front_end_last_layer_is_a_plain_convolution():
    """Reference (ConvLayers with output="none"): the last conv layer has neither
    batch norm nor a non-linearity, so its features can be negative."""
    torch.manual_seed(0)
    for front in (small_front_end(), cifar_front_end()):
        last = list(front.layers)[-1]
        assert isinstance(last, torch.nn.Conv2d) and last.bias is not None
    front = small_front_end()
    assert float(front(torch.rand(4, 1, 28, 28)).min()) < 0
    old = small_front_end(plain_last=False)
    assert isinstance(list(old.layers)[-1], torch.nn.ReLU)


def test_pretrained_front_end_is_frozen_and_stays_in_eval_mode():
    torch.manual_seed(0)
    x, y = digits()
    front = ConvFrontEnd(in_channels=1, channels=(8, 8), strides=(2, 1))
    frozen = pretrain_front_end(front, x, y, iterations=60, batch_size=64, lr=3e-3)
    assert isinstance(frozen, Frozen)
    assert all(not p.requires_grad for p in frozen.parameters())
    bn = frozen.module.layers[1]
    stats = bn.running_mean.clone()
    wrapper = torch.nn.Sequential(frozen)
    wrapper.train()
    assert not frozen.module.training
    frozen(torch.rand(16, 1, 8, 8) * 5)
    assert torch.equal(bn.running_mean, stats)
    # pre-training learned something: a linear probe on its features beats chance
    feats = frozen(x).flatten(1)
    w = torch.linalg.lstsq(
        torch.cat([feats, torch.ones(len(y), 1)], 1), F.one_hot(y, 10).float()
    ).solution
    acc = (torch.cat([feats, torch.ones(len(y), 1)], 1) @ w).argmax(1) == y
    assert acc.float().mean() > 0.5


def test_mixture_log_prob_skips_unweighted_modes_exactly():
    """On the CPU, modes no sample weighs are left out: same value and gradients as
    the mixture over every mode (their weight is exactly 0)."""
    torch.manual_seed(0)
    prior = GaussianMixturePrior(5, 6)
    z = torch.randn(8, 5)
    probs = torch.softmax(torch.randn(8, 6), 1) * (torch.arange(6) % 3 == 0)
    probs = probs / probs.sum(1, keepdim=True)
    out = prior.log_prob(z, probs)
    out.sum().backward()
    grads = [prior.means.grad.clone(), prior.logvars.grad.clone()]
    prior.zero_grad()
    per_mode = prior._log_prob_modes(z)
    full = torch.logsumexp(per_mode + probs.log(), 1)  # log 0 = -inf
    full.sum().backward()
    assert torch.allclose(out, full, atol=1e-6)
    assert torch.allclose(grads[0], prior.means.grad, atol=1e-6)
    assert torch.allclose(grads[1], prior.logvars.grad, atol=1e-6)
    assert grads[0][1].abs().max() == 0 and grads[0][0].abs().max() > 0


def test_bce_rows_matches_torch_value_and_gradient_including_saturated_logits():
    """The vectorised BCE row sums give torch's values (to float rounding) and the
    same gradient, also for logits far in both tails; a target needing a gradient
    goes through torch's own function."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 784, generator=g) * 6.0
    logits[0, :10] = torch.tensor(
        [-200.0, -90.0, -40.0, -17.0, 0.0, 1e-6, 17.0, 40.0, 90.0, 200.0]
    )
    target = torch.rand(16, 784, generator=g)
    target[1] = (target[1] > 0.5).float()
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    ours = bce_with_logits_rows(a, target)
    ref = F.binary_cross_entropy_with_logits(b, target, reduction="none").sum(1)
    assert ours.shape == (16,)
    # per element at most ~1.2e-7 from log1p rounding, plus float summation
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=784 * 2e-7)
    w = torch.randn(16, generator=g)
    (ours * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-7)
    t_grad = target.clone().requires_grad_()
    fallback = bce_with_logits_rows(logits, t_grad)
    fallback.sum().backward()
    assert t_grad.grad is not None and torch.isfinite(t_grad.grad).all()
