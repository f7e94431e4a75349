"""``avalanche-meta bench mer``: examples per second and peak memory of this MER and
Avalanche's MER (5120 memories, k = 100, s = 10).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, Optional, Tuple
import torch
from avalanche_meta.experiments.context import BenchContext
from avalanche_meta.experiments.registry import register_bench

# --------------------------------------------------------------------------------
# Bench: examples per second of this MER and Avalanche's MER
# --------------------------------------------------------------------------------
BENCH_MEM, BENCH_K, BENCH_S = 5120, 100, 10


def _bench_strategies(seed: int = 0, which: str = "both"):
    """(ours, Avalanche's) MER on the same 784-100-100-10 model, memory full.

    :param which: ``"both"``, ``"ours"`` or ``"avalanche"`` (the other is None).
    """
    import copy
    import warnings

    from avalanche.benchmarks.utils import (
        _make_taskaware_tensor_classification_dataset,
    )
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.supervised import MER as AvalancheMER

    from avalanche_meta.models.mlp import MLP
    from avalanche_meta.strategies.mer import MER

    torch.manual_seed(seed)
    model = MLP(784, (100, 100), 10)
    g = torch.Generator().manual_seed(seed)
    mem_x = torch.rand(BENCH_MEM, 784, generator=g)
    mem_y = torch.randint(0, 10, (BENCH_MEM,), generator=g)
    ours = theirs = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if which in ("both", "ours"):
            ours = MER(
                model=copy.deepcopy(model),
                lr=0.03,
                beta=0.03,
                gamma=1.0,
                mem_size=BENCH_MEM,
                # both: the current example + 100 memories (101 samples), as the
                # original code's batches: 1,010 steps per example
                replay_batch_size=BENCH_K,
                convention="original",
                batches_per_example=BENCH_S,
                scenario="domain",
                num_classes=10,
                seed=seed,
                evaluator=EvaluationPlugin(),
            )
            ours.memory.add_batch(mem_x, mem_y)
        if which in ("both", "avalanche"):
            their_model = copy.deepcopy(model)
            theirs = AvalancheMER(
                model=their_model,
                optimizer=torch.optim.SGD(their_model.parameters(), lr=0.03),
                mem_size=BENCH_MEM,
                batch_size_mem=BENCH_K,
                n_inner_steps=BENCH_S,
                beta=0.03,
                gamma=1.0,
                train_mb_size=1,
                evaluator=EvaluationPlugin(),
            )
            theirs.buffer.storage_policy.update_from_dataset(
                _make_taskaware_tensor_classification_dataset(mem_x, mem_y)
            )
    return ours, theirs


def _experience(n: int, seed: int):
    from avalanche.benchmarks import benchmark_from_datasets
    from avalanche.benchmarks.utils import (
        _make_taskaware_tensor_classification_dataset,
    )

    g = torch.Generator().manual_seed(seed)
    ds = _make_taskaware_tensor_classification_dataset(
        torch.rand(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g)
    )
    return benchmark_from_datasets(train=[ds], test=[ds]).train_stream[0]


def _timed_train(strategy, experience) -> float:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        strategy.train(experience)
        return time.perf_counter() - t0


def _rss_mb() -> Tuple[float, float]:
    """(current, peak) resident set size of this process, in MB (Linux)."""
    cur = peak = float("nan")
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return cur, peak


def peak_memory_child(which: str) -> None:
    """Run in a fresh process: build one MER, fill its memory, train 2 examples.

    Prints the growth of the resident set size over the process after its imports
    (the strategy, its memory and what training allocates), and the peak RSS.
    """
    torch.set_num_threads(1)
    _experience(2, 1)  # import and warm up Avalanche's dataset machinery first
    base, _ = _rss_mb()
    ours, theirs = _bench_strategies(which=which)
    strategy = ours if which == "ours" else theirs
    _timed_train(strategy, _experience(2, 1))
    cur, peak = _rss_mb()
    print(json.dumps({"growth_mb": cur - base, "peak_growth_mb": peak - base}))


def _peak_memory(which: str) -> Optional[float]:
    code = (
        "from avalanche_meta.experiments.benches.mer import peak_memory_child; "
        f"peak_memory_child({which!r})"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    for line in out.stdout.splitlines()[::-1]:
        if line.startswith("{"):
            return json.loads(line)["peak_growth_mb"]
    raise RuntimeError(f"peak-memory child failed: {out.stderr[-2000:]}")


@register_bench(
    "mer",
    help="examples/s of this MER vs Avalanche's MER (5120 memories, k=100, s=10), "
    "ratio, peak memory",
)
def bench_mer(ctx: BenchContext) -> Dict[str, Any]:
    """Examples per second of both MERs on the same stream, model and full memory.

    Both train through Avalanche's ``train`` on online experiences of
    ``train_mb_size=1`` examples; model 784-100-100-10; 5120 random memories in
    both buffers before the first example; 10 inner batches of 101 samples (the
    current example + 100 memories) = 1,010 single-sample steps per example in
    both. The two are timed in alternating rounds in one process (the machine is
    shared: alternating exposes both to the same load); peak resident memory of
    each is measured in its own fresh process.
    """
    from avalanche_meta.experiments.results_doc import provenance, write_section

    torch.set_num_threads(1)
    rounds, n_ours, n_theirs = (2, 6, 2) if ctx.quick else (5, 40, 4)
    ours, theirs = _bench_strategies()
    inner_loop = ours.inner_loop
    _timed_train(ours, _experience(1, 100))  # compile the fast path once
    t_ours = t_theirs = 0.0
    for r in range(rounds):
        t_ours += _timed_train(ours, _experience(n_ours, 2 * r))
        t_theirs += _timed_train(theirs, _experience(n_theirs, 2 * r + 1))
    eps_ours = rounds * n_ours / t_ours
    eps_theirs = rounds * n_theirs / t_theirs
    steps = BENCH_S * (BENCH_K + 1)
    mem_ours = _peak_memory("ours")
    mem_theirs = _peak_memory("avalanche")
    result = {
        "examples_ours": rounds * n_ours,
        "examples_avalanche": rounds * n_theirs,
        "examples_per_s_ours": round(eps_ours, 3),
        "examples_per_s_avalanche": round(eps_theirs, 3),
        "speedup": round(eps_ours / eps_theirs, 2),
        "us_per_step_ours": round(1e6 / (eps_ours * steps), 1),
        "us_per_step_avalanche": round(1e6 / (eps_theirs * steps), 1),
        "peak_rss_growth_mb_ours": round(mem_ours, 1),
        "peak_rss_growth_mb_avalanche": round(mem_theirs, 1),
        "inner_loop_ours": inner_loop,
        "load_average": os.getloadavg()[0],
    }
    if ctx.write_results:
        body = provenance(ctx.command or "avalanche-meta bench mer") + (
            f"- setting: 784-100-100-10 MLP, memory of 5120 random 784-d examples "
            f"filled before the first step, 10 inner batches of the current example + "
            f"100 memories ({steps} single-sample SGD steps per example) in both; "
            f"Avalanche's `MER(train_mb_size=1, batch_size_mem=100, n_inner_steps=10)`; "
            f"ours `MER(replay_batch_size=100, batches_per_example=10, "
            f"convention='original')` (inner loop: "
            f"{inner_loop}); "
            f"torch threads 1; {rounds} alternating rounds of {n_ours} (ours) and "
            f"{n_theirs} (Avalanche) examples; the machine was shared with other jobs "
            f"(1-min load average at the end: {result['load_average']:.1f}).\n"
            f"- peak memory: in a fresh process per implementation, growth of the peak "
            f"resident set size over the process after its imports, while it builds "
            f"the strategy, fills the 5120-example memory (16 MB of inputs) and trains "
            f"2 examples.\n\n"
            "| implementation | examples/s | µs per single-sample step | "
            "peak RSS growth (MB) |\n"
            "|---|---|---|---|\n"
            f"| avalanche_meta MER | {eps_ours:.3f} | {result['us_per_step_ours']} | "
            f"{mem_ours:.0f} |\n"
            f"| Avalanche 0.6 MER | {eps_theirs:.3f} | "
            f"{result['us_per_step_avalanche']} | {mem_theirs:.0f} |\n\n"
            f"Speed-up (examples/s ratio): **{result['speedup']}x** (target >= 10x).\n"
        )
        write_section(
            "bench mer" + (" --quick" if ctx.quick else ""),
            "MER speed: this MER vs Avalanche's MER"
            + (" (quick)" if ctx.quick else ""),
            body,
        )
    return result
