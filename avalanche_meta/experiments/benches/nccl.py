"""``avalanche-meta bench nccl``: NCCL vs ER time per batch, and the calibrated
against the plain forward pass.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict
import torch
from torch import nn
from avalanche_meta.experiments.context import BenchContext
from avalanche_meta.experiments.registry import register_bench

# --------------------------------------------------------------------------------
# Bench
# --------------------------------------------------------------------------------
#: Alternating timing rounds of the forward bench (the best of each is kept).
ROUNDS = 11


def _forward_ratio(
    make: Callable[[], nn.Module], x: torch.Tensor, repeats: int, grad: bool = False
):
    """Best-of-``ROUNDS`` times of the plain and the calibrated model, measured
    alternately (the machine is shared: alternating keeps both under the same load)."""
    from avalanche_meta.models.calibration import calibrate

    torch.manual_seed(0)
    plain = make().eval()
    torch.manual_seed(0)
    calibrated = calibrate(make().eval())
    best = [float("inf"), float("inf")]
    with torch.set_grad_enabled(grad):
        for model in (plain, calibrated):  # warm-up
            model(x)
        for _ in range(ROUNDS):
            for i, model in enumerate((plain, calibrated)):
                t0 = time.perf_counter()
                for _ in range(repeats):
                    model(x)
                best[i] = min(best[i], (time.perf_counter() - t0) / repeats)
    return best[0], best[1]


def _tiny_stream(n_tasks: int, per_task: int, seed: int):
    """Permuted-MNIST-shaped random stream (784 inputs, 10 classes), in memory."""
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset

    g = torch.Generator().manual_seed(seed)
    xs, ys, ts = [], [], []
    protos = torch.randn(10, 784, generator=g)
    for t in range(n_tasks):
        perm = torch.randperm(784, generator=g)
        y = torch.randint(0, 10, (per_task,), generator=g)
        x = (protos[y] + torch.randn(per_task, 784, generator=g))[:, perm]
        xs.append(x), ys.append(y), ts.append(torch.full_like(y, t))
    from avalanche.benchmarks import benchmark_from_datasets

    exps = [
        _make_taskaware_tensor_classification_dataset(x, y, task_labels=t.tolist())
        for x, y, t in zip(xs, ys, ts)
    ]
    return benchmark_from_datasets(train=exps, test=exps)


@register_bench("nccl", help="NCCL vs ER time per batch; calibrated vs plain forward")
def bench_nccl(ctx: BenchContext) -> Dict[str, Any]:
    """Time per incoming batch of 10 of NCCL (first and second order) and ER on the
    same stream, and forward time of calibrated vs plain models (ratio, target <= 1.3).
    """
    from avalanche.benchmarks import split_online_stream
    from avalanche.logging import TextLogger
    from avalanche.training.plugins import EvaluationPlugin
    import io

    from avalanche_meta.models import MLP, ReducedResNet18
    from avalanche_meta.strategies import NeuronCalibration
    from avalanche_meta.strategies.er import ER

    torch.set_num_threads(1)
    n_tasks, per_task = (2, 200) if ctx.quick else (3, 500)
    out: Dict[str, Any] = {}

    def run(build) -> float:
        torch.manual_seed(0)
        bm = _tiny_stream(n_tasks, per_task, seed=0)
        strategy = build()
        n_batches = 0
        t0 = time.perf_counter()
        for exp in bm.train_stream:
            stream = split_online_stream(
                [exp], experience_size=10, access_task_boundaries=True
            )
            strategy.train(stream)
            n_batches += (len(exp.dataset) + 9) // 10
        return (time.perf_counter() - t0) / n_batches

    def evaluator():
        return EvaluationPlugin(loggers=[TextLogger(io.StringIO())])

    def nccl(second_order: bool):
        def build():
            model = MLP(784, (100, 100), 10)
            return NeuronCalibration(
                model=model,
                optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                scenario="class",
                mem_size=100,
                second_order=second_order,
                evaluator=evaluator(),
            )

        return build

    def er():
        model = MLP(784, (100, 100), 10)
        return ER(
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            mem_size=100,
            replay_batch_size=10,
            scenario="class",
            train_mb_size=10,
            evaluator=evaluator(),
        )

    t_er = run(er)
    t_fo = run(nccl(False))
    t_so = run(nccl(True))
    out["stream"] = (
        f"{n_tasks} tasks x {per_task} examples, batch 10, MLP 784-100-100-10, memory 100"
    )
    out["er_ms_per_batch"] = 1e3 * t_er
    out["nccl_first_order_ms_per_batch"] = 1e3 * t_fo
    out["nccl_second_order_ms_per_batch"] = 1e3 * t_so
    out["nccl_first_order_over_er"] = t_fo / t_er
    out["nccl_second_order_over_er"] = t_so / t_er

    reps = 50 if ctx.quick else 200
    forward_cases = [
        (
            "MLP 784-100-100-10, batch 10",
            lambda: MLP(784, (100, 100), 10),
            torch.randn(10, 784),
        ),
        (
            "MLP 784-100-100-10, batch 512",
            lambda: MLP(784, (100, 100), 10),
            torch.randn(512, 784),
        ),
        (
            "reduced ResNet-18 (nf 20), 3x32x32, batch 10",
            lambda: ReducedResNet18(10),
            torch.randn(10, 3, 32, 32),
        ),
    ]
    out["forward"] = []
    for grad in (False, True):
        for label, make, x in forward_cases:
            r = reps if "MLP" in label else max(reps // 20, 3)
            t_plain, t_cal = _forward_ratio(make, x, r, grad=grad)
            out["forward"].append(
                {
                    "model": label,
                    "mode": "with autograd" if grad else "no_grad (evaluation)",
                    "plain_ms": 1e3 * t_plain,
                    "calibrated_ms": 1e3 * t_cal,
                    "ratio": t_cal / t_plain,
                }
            )
    _write_bench(ctx, out)
    return out


def _write_bench(ctx: BenchContext, out: Dict[str, Any]) -> None:
    from avalanche_meta.experiments.results_doc import provenance, write_section

    lines = [
        provenance(
            ctx.command or f"avalanche-meta bench nccl{' --quick' if ctx.quick else ''}"
        ),
        "",
        f"Training time per incoming batch of 10 on the same stream ({out['stream']}), "
        "one thread, wall time of the whole stream divided by the number of batches:",
        "",
        "| strategy | ms per batch | ratio to ER |",
        "|---|---|---|",
        f"| ER (per-example replay, 10 SGD steps of 10 per batch) | {out['er_ms_per_batch']:.2f} | 1.00 |",
        f"| NCCL first order (defaults: 5 inner steps of 10 + 50 memories, outer "
        f"step) | "
        f"{out['nccl_first_order_ms_per_batch']:.2f} | {out['nccl_first_order_over_er']:.2f} |",
        f"| NCCL second order | {out['nccl_second_order_ms_per_batch']:.2f} | "
        f"{out['nccl_second_order_over_er']:.2f} |",
        "",
        "Forward pass, calibrated model (WCM + FCM) vs the plain one (eval mode, best "
        f"of {ROUNDS} alternating timings; target ratio <= 1.3). Under ``no_grad`` a "
        "calibrated layer runs one plain kernel on its folded weight; with autograd "
        "(training) a linear layer computes ``W x`` and scales its output "
        "(``psi * Wx + b + psi_bias``: two small operations more than the plain "
        "layer; a linear layer has no separate ``lam``, which would be the same "
        "per-output scale), a convolution forms ``psi * W`` (its ``psi`` is per "
        "input and output channel) and scales its output by ``lam``:",
        "",
        "| model | mode | plain (ms) | calibrated (ms) | ratio |",
        "|---|---|---|---|---|",
    ]
    for f in out["forward"]:
        lines.append(
            f"| {f['model']} | {f['mode']} | {f['plain_ms']:.3f} | {f['calibrated_ms']:.3f} "
            f"| {f['ratio']:.2f} |"
        )
    lines += [
        "",
        "The stream is synthetic (random prototypes, permuted per task) so that the bench "
        "needs no data; the work per batch depends only on the shapes.",
    ]
    body = "\n".join(lines) + "\n"
    print(body)
    if ctx.write_results:
        write_section(
            "bench nccl" + (" --quick" if ctx.quick else ""),
            "NCCL: time per batch and calibrated forward overhead",
            body,
        )
