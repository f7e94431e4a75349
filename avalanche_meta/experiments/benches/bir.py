"""``avalanche-meta bench bir``: the speed of brain-inspired replay.

The bench lives in the experiments layer (not in the command line): the command line
only registers and prints it.
"""

from __future__ import annotations

import os
import time
from typing import List

import torch

from avalanche_meta.cli.context import BenchContext
from avalanche_meta.cli.registry import register_bench

#: Training examples of one split-MNIST experience (two digits).
SPLIT_EXP_SIZE = 12_000


def _epochs(iterations: int, batch: int, exp_size: int) -> int:
    """Passes over an experience that match ``iterations`` batches (at least 1)."""
    return max(1, round(iterations * batch / exp_size))


def _table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


@register_bench(
    "bir",
    help="iterations/s of BI-R and of Avalanche's GenerativeReplay on split MNIST Class-IL",
)
def bench_bir(ctx: BenchContext) -> dict:
    """Training iterations per second, BI-R vs Avalanche's GenerativeReplay, one run.

    Both train on the first ``n_exp`` experiences of split MNIST (Class-IL, batch 128,
    Adam 1e-3, MLP 2x400): BI-R for ``iters`` iterations per experience, Avalanche's
    ``GenerativeReplay`` for as many epochs as give about as many iterations. An
    iteration of either includes generating and labelling the replayed batch; the
    time of Avalanche's generator training (after each experience) is counted too,
    as BI-R's generator training is part of its iterations.
    """
    from avalanche_meta.cli.results_doc import provenance, write_section

    torch.set_num_threads(1)
    n_exp, iters = (2, 100) if ctx.quick else (3, 400)
    results = {}
    for label, strategy, hp in (
        ("BI-R (avalanche_meta)", "bir", dict(iterations=iters, samples=False)),
        (
            "GenerativeReplay (Avalanche)",
            "generative-replay",
            dict(epochs=_epochs(iters, 128, SPLIT_EXP_SIZE), batch_size=128),
        ),
    ):
        from avalanche_meta.cli.runner import get_benchmark_spec, get_strategy_spec
        from avalanche_meta.cli.runner import resolve_hparams, seed_everything
        from avalanche_meta.cli.context import RunContext as _RC
        from avalanche.training.plugins import EvaluationPlugin
        from avalanche.logging import TextLogger
        import io

        seed_everything(0)
        info = get_benchmark_spec("split-mnist").build(
            scenario="class",
            seed=0,
            data_root=ctx.data_root or os.environ.get("AVALANCHE_META_DATA"),
        )
        rc = _RC(
            info=info,
            scenario="class",
            device=torch.device(ctx.device),
            seed=0,
            evaluator=EvaluationPlugin(loggers=[TextLogger(io.StringIO())]),
            out_dir=None,
        )
        spec = get_strategy_spec(strategy)
        s = spec.build(rc, **resolve_hparams(spec, None, hp))
        t0 = time.perf_counter()
        for exp in list(info.benchmark.train_stream)[:n_exp]:
            s.train(exp)
        seconds = time.perf_counter() - t0
        n_it = s.clock.train_iterations
        results[label] = {
            "iterations": n_it,
            "seconds": seconds,
            "it_per_s": n_it / seconds,
        }
        print(
            f"[bench bir] {label}: {n_it} iterations in {seconds:.1f} s "
            f"({n_it / seconds:.1f} it/s)",
            flush=True,
        )
    a, b = results["BI-R (avalanche_meta)"], results["GenerativeReplay (Avalanche)"]
    results["ratio_bir_over_avalanche"] = a["it_per_s"] / b["it_per_s"]
    table = _table(
        ["implementation", "iterations", "seconds", "iterations/s"],
        [
            [k, v["iterations"], f"{v['seconds']:.1f}", f"{v['it_per_s']:.1f}"]
            for k, v in results.items()
            if isinstance(v, dict)
        ],
    )
    print(table)
    print(f"ratio (BI-R / Avalanche GR): {results['ratio_bir_over_avalanche']:.2f}")
    if ctx.write_results:
        body = provenance(ctx.command or "avalanche-meta bench bir") + (
            f"- split MNIST Class-IL, first {n_exp} experiences, batch 128, Adam 1e-3, "
            f"MLP 2x400, one torch thread; BI-R {iters} iterations per experience "
            "(feedback, conditional replay, gates, distillation; VAE 2x400, latent "
            "100); Avalanche's GenerativeReplay (MlpVAE, latent 2, hard labels) for "
            f"{_epochs(iters, 128, SPLIT_EXP_SIZE)} epoch(s) per experience, its "
            "generator training after each experience included in the time. Both "
            "replay from the second experience on. Measured in one process, one after "
            "the other, on a machine shared with other jobs.\n\n"
            + table
            + f"\n\nRatio of iterations/s (BI-R / Avalanche): "
            f"{results['ratio_bir_over_avalanche']:.2f}. The two do different work per "
            "iteration (BI-R trains classifier and generator in one model on a current "
            "and a replayed batch; Avalanche's solver step does not include the "
            "generator's updates, which run as separate epochs after each "
            "experience).\n"
        )
        write_section(
            "bench bir" + (" --quick" if ctx.quick else ""),
            "Speed: BI-R vs Avalanche's GenerativeReplay"
            + (" (quick)" if ctx.quick else ""),
            body,
        )
    return results
