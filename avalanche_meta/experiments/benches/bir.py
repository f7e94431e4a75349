"""``avalanche-meta bench bir``: the speed of brain-inspired replay.

One run, one torch thread. Split MNIST Class-IL after the first task (digits 2/3
with replay of 0/1; batch 128, VAE / classifier 2 x 400, latent 100, conditional
replay, decoder gates switching off 0.8 of the units per class, distillation T = 2,
Adam 1e-3), milliseconds per training iteration of

- this package's :class:`~avalanche_meta.strategies.BrainInspiredReplay` (the
  strategy the command line builds: fused current + replay pass, decoder computed
  on the open gate units, fused Adam when torch has it), timed between consecutive
  ``before_training_iteration`` callbacks, Avalanche's machinery included;
- a straightforward implementation of the same maths written here in plain PyTorch
  (:class:`PlainBIR`: no Avalanche, one pass per batch, dense gated decoder, the
  previous model's full forward for labelling, ``torch.optim.Adam`` without
  ``fused``), with the same data, weights and gate masks.

The two alternate in blocks of iterations, so a change of the machine's load
touches both; the ratio of the medians is reported. It also reports our iteration
time on permuted MNIST (10 permutations, Domain-IL, 2 x 2000, batch 256, Adam 1e-4,
per-task gates), after the first task.

The bench lives in the experiments layer (not in the command line): the command line
only registers and prints it.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avalanche_meta.experiments.context import BenchContext
from avalanche_meta.experiments.registry import register_bench

_LOG_2PI = math.log(2.0 * math.pi)


def _table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


# -- the straightforward implementation ---------------------------------------------------
def _log_normal(z: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    return -0.5 * (_LOG_2PI + logvar + (z - mean).pow(2) / logvar.exp()).sum(-1)


class PlainBIR:
    """BI-R's split-MNIST training step written plainly (the bench's baseline).

    The VAE of :func:`~avalanche_meta.strategies.replay_vae` (one hidden encoder /
    decoder layer per entry of ``hidden``, classifier on the encoder, Gaussian-mixture
    prior with one mode per class, binary gates on the decoder's hidden layers), with
    its weights and masks copied from ``vae``. One step: generate ``batch`` samples of
    the previous classes with the previous model (classes drawn uniformly, the mode's
    Gaussian, the class's gates), label them with the previous model's full forward
    (soft targets at temperature 2), then one forward pass for the current batch and
    one for the replayed batch (gates blended by the soft targets, KL against the
    mixture weighted by them), ``loss = L_cur / 2 + L_replay / 2``, backward, and
    ``torch.optim.Adam`` (not fused).
    """

    def __init__(self, vae, lr: float = 1e-3):
        import copy

        self.net = copy.deepcopy(vae)
        self.prev = copy.deepcopy(vae).eval()
        for p in self.prev.parameters():
            p.requires_grad_(False)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr, betas=(0.9, 0.999))
        self.masks = [vae.gates.mask(i).clone() for i in range(len(vae.decoder))]

    @staticmethod
    def _encode(net, x):
        h = x.flatten(1)
        for layer in net.encoder:
            h = torch.relu(layer(h))
        return net.classifier(h), net.to_mu(h), net.to_logvar(h)

    def _decode(self, net, z, gate_weights=None, y=None):
        h = z
        for i, layer in enumerate(net.decoder):
            gate = self.masks[i][y] if y is not None else gate_weights @ self.masks[i]
            h = torch.relu(layer(h)) * gate
        return net.to_x(h)

    def _vae_loss(self, net, x, y=None, probs=None):
        logits, mu, logvar = self._encode(net, x)
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
        raw = self._decode(net, z, gate_weights=probs, y=y)
        recon = F.binary_cross_entropy_with_logits(raw, x, reduction="none").sum(1)
        log_q = _log_normal(z, mu, logvar)
        means, logvars = net.prior.means, net.prior.logvars
        if y is not None:
            log_p = _log_normal(z, means[y], logvars[y])
        else:
            per_mode = _log_normal(z.unsqueeze(1), means, logvars)
            log_w = torch.where(probs > 0, probs.clamp_min(1e-45).log(), -math.inf)
            log_p = torch.logsumexp(per_mode + log_w, 1)
        return logits, ((recon + log_q - log_p) / x.shape[1]).mean()

    def step(self, x: Tensor, y: Tensor, active: Tensor, prev_active: Tensor) -> Tensor:
        prev_classes = torch.nonzero(prev_active).flatten()
        with torch.no_grad():
            y_r = prev_classes[torch.randint(len(prev_classes), (x.shape[0],))]
            pr = self.prev.prior
            z = pr.means[y_r] + (0.5 * pr.logvars[y_r]).exp() * torch.randn(
                x.shape[0], pr.means.shape[1]
            )
            x_r = torch.sigmoid(self._decode(self.prev, z, y=y_r))
            scores, _, _ = self._encode(self.prev, x_r)
            scores = scores.masked_fill(~prev_active, -1e9)
            target = F.softmax(scores / 2.0, 1)
        self.opt.zero_grad()
        logits, gen_cur = self._vae_loss(self.net, x.flatten(1), y=y)
        loss_cur = F.cross_entropy(logits.masked_fill(~active, -1e9), y) + gen_cur
        logits_r, gen_rep = self._vae_loss(self.net, x_r, probs=target)
        log_p = F.log_softmax(logits_r.masked_fill(~active, -1e9) / 2.0, 1)
        distil = -(target * log_p).sum(1).mean() * 4.0
        loss = 0.5 * loss_cur + 0.5 * (distil + gen_rep)
        loss.backward()
        self.opt.step()
        return loss.detach()


# -- timing ---------------------------------------------------------------------------------
class _Clock:
    """A plugin timing our iterations (between consecutive ``before_training_iteration``
    callbacks), running ``between`` every ``block`` iterations (not counted) and
    stopping training once ``wanted`` intervals are timed."""

    def __init__(
        self, warmup: int, block: int, between: Optional[Callable], wanted: int
    ):
        from avalanche.core import SupervisedPlugin

        clock = self

        class _Plugin(SupervisedPlugin):
            def before_training_iteration(self, strategy, **kwargs):
                clock.tick()
                if len(clock.times) >= clock.wanted:
                    strategy.stop_training()

        self.plugin = _Plugin()
        self.warmup, self.block, self.between, self.wanted = (
            warmup,
            block,
            between,
            wanted,
        )
        self.count = 0
        self.last: Optional[float] = None
        self.times: List[float] = []
        self.cpu_times: List[float] = []

    def tick(self) -> None:
        now = (time.perf_counter(), time.process_time())
        if self.last is not None and self.count > self.warmup:
            self.times.append(now[0] - self.last[0])
            self.cpu_times.append(now[1] - self.last[1])
        self.count += 1
        if self.between is not None and self.count > self.warmup:
            if (self.count - self.warmup) % self.block == 0:
                self.between()
                now = None
        self.last = None if now is None else (time.perf_counter(), time.process_time())


def _ours(
    protocol: str, data_root: Optional[str], first_iters: int, device: str = "cpu"
):
    """Our BI-R for ``protocol`` (as the command line builds it) and its benchmark."""
    from avalanche.training.plugins import EvaluationPlugin

    from avalanche_meta.benchmarks.bir_protocol import permuted_mnist, split_mnist
    from avalanche_meta.experiments.builders.bir import bir_adam
    from avalanche_meta.strategies.bir import BrainInspiredReplay, replay_vae

    torch.manual_seed(0)
    if protocol == "split":
        info = split_mnist(scenario="class", data_root=data_root)
        hidden, lr, batch, scenario, n_in = (400, 400), 1e-3, 128, "class", 784
    else:
        info = permuted_mnist(n_tasks=10, scenario="domain", data_root=data_root)
        hidden, lr, batch, scenario, n_in = (2000, 2000), 1e-4, 256, "domain", 1024
    vae = replay_vae(
        input_size=n_in,
        num_classes=info.num_classes,
        scenario=scenario,
        n_tasks=10 if protocol == "permuted" else 5,
        gating=0.8,
        hidden_sizes=hidden,
        z_dim=100,
        output_shape=info.input_shape,
    )
    strategy = BrainInspiredReplay.BIR(
        model=vae,
        optimizer=bir_adam(vae.to(device).parameters(), lr, (0.9, 0.999), device),
        scenario=scenario,
        device=device,
        iterations=first_iters,
        train_mb_size=batch,
        evaluator=EvaluationPlugin(loggers=[]),
    )
    return strategy, info


def measure(
    data_root: Optional[str], iterations: int, warmup: int, block: int, perm_iters: int
) -> Dict[str, float]:
    """The bench's figures (see the module docstring)."""
    strategy, info = _ours("split", data_root, first_iters=5)
    stream = info.benchmark.train_stream
    strategy.train(stream[0])
    plain = PlainBIR(strategy.net)
    # the second task's data, for the plain implementation (the same tensors ours draws)
    xs, ys = [], []
    for x, y, *_ in torch.utils.data.DataLoader(stream[1].dataset, batch_size=4096):
        xs.append(x)
        ys.append(y)
    x2, y2 = torch.cat(xs), torch.cat(ys).long()
    active = torch.zeros(10, dtype=torch.bool)
    active[:4] = True
    prev_active = torch.zeros(10, dtype=torch.bool)
    prev_active[:2] = True
    plain_times: List[float] = []
    plain_cpu: List[float] = []

    def plain_block(n: int = block, record: bool = True):
        for _ in range(n):
            t0, c0 = time.perf_counter(), time.process_time()
            idx = torch.randint(x2.shape[0], (128,))
            loss = plain.step(x2[idx], y2[idx], active, prev_active)
            if not torch.isfinite(loss):  # as ours, a non-finite loss is an error
                raise FloatingPointError("PlainBIR: non-finite loss")
            if record:
                plain_times.append(time.perf_counter() - t0)
                plain_cpu.append(time.process_time() - c0)

    plain_block(warmup, record=False)
    clock = _Clock(warmup, block, plain_block, iterations)
    strategy.plugins.append(clock.plugin)
    strategy.iterations = warmup + 3 * iterations + 2 * block
    strategy.train(stream[1])
    out = {
        "ours_ms": 1000 * statistics.median(clock.times),
        "plain_ms": 1000 * statistics.median(plain_times),
        "ours_cpu_ms": 1000 * statistics.median(clock.cpu_times),
        "plain_cpu_ms": 1000 * statistics.median(plain_cpu),
        "ours_n": len(clock.times),
        "plain_n": len(plain_times),
    }
    out["ratio_plain_over_ours"] = out["plain_ms"] / out["ours_ms"]
    out["ratio_cpu"] = out["plain_cpu_ms"] / out["ours_cpu_ms"]
    del strategy, plain, x2, y2

    if perm_iters:
        strategy, info = _ours("permuted", data_root, first_iters=2)
        strategy.train(info.benchmark.train_stream[0])
        clock = _Clock(2, 10**9, None, perm_iters)
        strategy.plugins.append(clock.plugin)
        strategy.iterations = perm_iters + 5
        strategy.train(info.benchmark.train_stream[1])
        out["permuted_ms"] = 1000 * statistics.median(clock.times)
        out["permuted_cpu_ms"] = 1000 * statistics.median(clock.cpu_times)
        out["permuted_n"] = len(clock.times)
    if torch.cuda.is_available():
        strategy, info = _ours("split", data_root, first_iters=5, device="cuda")
        strategy.train(info.benchmark.train_stream[0])
        clock = _Clock(5, 10**9, None, iterations)
        strategy.plugins.append(clock.plugin)
        strategy.iterations = iterations + 10
        strategy.train(info.benchmark.train_stream[1])
        torch.cuda.synchronize()
        out["gpu"] = torch.cuda.get_device_name()
        out["gpu_split_ms"] = 1000 * statistics.median(clock.times)
    out["loadavg_1min"] = os.getloadavg()[0]
    return out


@register_bench(
    "bir",
    help="ms per BI-R iteration: this package vs a plain-PyTorch BI-R (split MNIST), "
    "and permuted MNIST 2x2000",
)
def bench_bir(ctx: BenchContext) -> dict:
    """Milliseconds per BI-R iteration, this package vs plain PyTorch, in one run."""
    from avalanche_meta.experiments.results_doc import provenance, write_section

    torch.set_num_threads(1)
    data_root = ctx.data_root or os.environ.get("AVALANCHE_META_DATA")
    if ctx.quick:
        iterations, warmup, block, perm_iters = 20, 3, 5, 3
    else:
        iterations, warmup, block, perm_iters = 100, 10, 10, 20
    res = measure(data_root, iterations, warmup, block, perm_iters)
    rows = [
        [
            "BI-R (avalanche_meta)",
            "split MNIST, batch 128, 2x400",
            res["ours_n"],
            f"{res['ours_ms']:.1f}",
            f"{res['ours_cpu_ms']:.1f}",
        ],
        [
            "BI-R, plain PyTorch (this bench)",
            "split MNIST, batch 128, 2x400",
            res["plain_n"],
            f"{res['plain_ms']:.1f}",
            f"{res['plain_cpu_ms']:.1f}",
        ],
    ]
    if "permuted_ms" in res:
        rows.append(
            [
                "BI-R (avalanche_meta)",
                "permuted MNIST, batch 256, 2x2000",
                res["permuted_n"],
                f"{res['permuted_ms']:.1f}",
                f"{res['permuted_cpu_ms']:.1f}",
            ]
        )
    if "gpu_split_ms" in res:
        rows.append(
            [
                f"BI-R (avalanche_meta) on {res['gpu']}",
                "split MNIST, batch 128, 2x400",
                res["ours_n"],
                f"{res['gpu_split_ms']:.1f}",
                "",
            ]
        )
    table = _table(
        [
            "implementation",
            "protocol",
            "iterations timed",
            "ms / iteration",
            "CPU ms / iteration",
        ],
        rows,
    )
    print(table)
    if "gpu_split_ms" not in res:
        print(
            "no GPU here (torch.cuda.is_available() is False): GPU figures not measured"
        )
    print(
        f"ratio plain / avalanche_meta (split MNIST): "
        f"{res['ratio_plain_over_ours']:.2f}x wall, {res['ratio_cpu']:.2f}x CPU time "
        f"(load average {res['loadavg_1min']:.1f})"
    )
    if ctx.write_results:
        body = provenance(ctx.command or "avalanche-meta bench bir") + (
            "- one process, one torch thread; split MNIST Class-IL after the first "
            "task (digits 2/3 with replay of 0/1), batch 128, VAE / classifier 2x400, "
            "latent 100, conditional replay, decoder gates (0.8 gated per class), "
            "distillation T=2, Adam 1e-3. Ours: BrainInspiredReplay as the command "
            "line builds it (fused current + replay pass, open-unit decoder, fused "
            "Adam), Avalanche callbacks included. Plain: the same maths in plain "
            "PyTorch written in the bench (one pass per batch, dense gated decoder, "
            "non-fused Adam), same data, weights and masks. The two alternate in "
            f"blocks of {block} iterations; medians. Permuted MNIST: 10 permutations, "
            "Domain-IL, 2x2000, batch 256, Adam 1e-4, per-task gates, our iteration "
            "after the first task. Machine shared with other jobs (load average "
            f"{res['loadavg_1min']:.1f}).\n\n"
            + table
            + f"\n\nRatio of ms per iteration (plain / avalanche_meta): "
            f"{res['ratio_plain_over_ours']:.2f}x in wall time, "
            f"{res['ratio_cpu']:.2f}x in CPU time (the steadier figure on a shared "
            "machine)."
            + (
                ""
                if "gpu_split_ms" in res
                else " No GPU on this machine: GPU figures not measured."
            )
            + "\n"
        )
        write_section(
            "bench bir" + (" --quick" if ctx.quick else ""),
            "Speed: BI-R vs a plain-PyTorch BI-R" + (" (quick)" if ctx.quick else ""),
            body,
        )
    return res
