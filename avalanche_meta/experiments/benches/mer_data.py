"""``avalanche-meta bench mer-data``: the MER protocols' data, this package vs
Avalanche's classic ``RotatedMNIST`` / ``PermutedMNIST`` (build time, one test pass,
peak memory; each measured in a child process).
"""

from __future__ import annotations

from typing import Any, Dict, Tuple
from avalanche_meta.benchmarks import (
    many_permutations,
    mnist_permutations,
    mnist_rotations,
)
from avalanche_meta.experiments.registry import register_bench


# -- bench: the MER protocols' data, this package vs Avalanche's classic benchmarks --
def _eval_pass(test_stream, model) -> Tuple[int, float]:
    """One pass over every test experience (batches of 1000); (images, seconds)."""
    import time

    import torch
    from torch.utils.data import DataLoader

    n, start = 0, time.perf_counter()
    with torch.no_grad():
        for exp in test_stream:
            ds = exp.dataset.eval()
            for x, y, *_ in DataLoader(ds, batch_size=1000, collate_fn=ds.collate_fn):
                model(x).argmax(1).eq(y).sum()
                n += len(y)
    return n, time.perf_counter() - start


def mer_data_child(kind: str, impl: str, n_tasks: int, data_root: str) -> None:
    """Child process of the ``mer-data`` bench: build, read once, print JSON.

    :param kind: ``"rotations"``, ``"permutations"``, ``"many"`` or ``"none"``
        (imports only: the baseline memory).
    :param impl: ``"ours"`` or ``"avalanche"``.
    """
    import json
    import resource
    import time

    import torch
    from avalanche.benchmarks.classic import PermutedMNIST, RotatedMNIST

    from avalanche_meta.benchmarks.mer_protocol import mer_angles
    from avalanche_meta.models.mlp import MLP

    torch.set_num_threads(1)
    model = MLP(784, (100, 100), 10).eval()
    row: Dict[str, Any] = {"tasks": n_tasks}
    if kind != "none":
        start = time.perf_counter()
        if impl == "ours":
            build = {
                "rotations": mnist_rotations,
                "permutations": mnist_permutations,
                "many": many_permutations,
            }[kind]
            bm = build(n_tasks=n_tasks, data_root=data_root).benchmark
        elif kind == "rotations":
            import numpy as np

            angles = mer_angles(n_tasks, np.random.default_rng(0))
            bm = RotatedMNIST(
                n_tasks, rotations_list=angles, seed=0, dataset_root=data_root
            )
        else:
            bm = PermutedMNIST(n_tasks, seed=0, dataset_root=data_root)
        row["build_s"] = round(time.perf_counter() - start, 2)
        n, seconds = _eval_pass(bm.test_stream, model)
        row.update(
            eval_images=n,
            eval_pass_s=round(seconds, 2),
            us_per_image=round(1e6 * seconds / n, 1),
        )
    row["peak_rss_mb"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    print(json.dumps(row))


def _run_child(kind: str, impl: str, n_tasks: int, data_root: str) -> Dict[str, Any]:
    import json
    import os
    import subprocess
    import sys

    code = (
        "from avalanche_meta.experiments.benches.mer_data import mer_data_child; "
        f"mer_data_child({kind!r}, {impl!r}, {n_tasks}, {data_root!r})"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=3600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    for line in out.stdout.splitlines()[::-1]:
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"mer-data child {kind}/{impl} failed: {out.stderr[-2000:]}")


@register_bench(
    "mer-data",
    help="MER MNIST benchmarks: build time, one test pass and peak memory, this "
    "package vs Avalanche's classic RotatedMNIST / PermutedMNIST",
)
def bench_mer_data(ctx) -> Dict[str, Dict[str, Any]]:
    """Build time, one evaluation pass and peak memory of the MER MNIST benchmarks.

    Ours: :func:`mnist_rotations`, :func:`mnist_permutations` (and, in the full
    run, :func:`many_permutations`). Avalanche's: ``RotatedMNIST`` with the same
    angles and ``PermutedMNIST``, which apply the rotation / permutation through
    PIL and torchvision transforms every time an image is read. Each runs in its
    own fresh process, one after the other: build, then one pass over every
    task's full 10,000-image test set by the same loop (``DataLoader``, batches of
    1000, an MLP 784-100-100-10 forward); peak resident memory of the process is
    reported beside that of a process that only imports the same modules.
    """
    import os

    from avalanche_meta.benchmarks.datasets import resolve_data_root
    from avalanche_meta.experiments.results_doc import provenance, write_section

    root = str(resolve_data_root(ctx.data_root))
    n_tasks = 5 if ctx.quick else 20
    plan = [
        ("imports only (baseline)", "none", "ours", n_tasks),
        ("rotations, avalanche_meta", "rotations", "ours", n_tasks),
        ("rotations, Avalanche RotatedMNIST", "rotations", "avalanche", n_tasks),
        ("permutations, avalanche_meta", "permutations", "ours", n_tasks),
        ("permutations, Avalanche PermutedMNIST", "permutations", "avalanche", n_tasks),
    ]
    if not ctx.quick:
        plan.append(("many permutations, avalanche_meta", "many", "ours", 100))
    results = {name: _run_child(k, i, n, root) for name, k, i, n in plan}
    load = os.getloadavg()[0]
    ratios = []
    for kind, theirs in (
        ("rotations", "Avalanche RotatedMNIST"),
        ("permutations", "Avalanche PermutedMNIST"),
    ):
        a = results[f"{kind}, avalanche_meta"]["eval_pass_s"]
        b = results[f"{kind}, {theirs}"]["eval_pass_s"]
        ratios.append(f"{kind} {b / a:.1f}x")
    if ctx.write_results:
        lines = [
            "| benchmark, implementation | tasks | build (s) | test images | "
            "one eval pass (s) | µs per image | peak RSS (MB) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r in results.items():
            lines.append(
                f"| {name} | {r['tasks']} | {r.get('build_s', '-')} | "
                f"{r.get('eval_images', '-')} | {r.get('eval_pass_s', '-')} | "
                f"{r.get('us_per_image', '-')} | {r['peak_rss_mb']} |"
            )
        body = provenance(ctx.command or "avalanche-meta bench mer-data") + (
            f"- setting: {n_tasks} tasks; each row is a fresh process that builds "
            "the benchmark and reads every task's full 10,000-image MNIST test set "
            "once with the same loop (DataLoader, batch 1000, no workers, MLP "
            "784-100-100-10 forward); torch threads 1; rows run one after the other "
            "on a shared machine (1-min load average at the end: "
            f"{load:.1f}). Peak RSS includes Python, torch and Avalanche (see the "
            "baseline row). Training streams are not read (ours: 1000 examples per "
            "task as in MER; Avalanche's: all 60,000).\n"
            "- not run: Avalanche's `PermutedMNIST(100)` (the equivalent of Many "
            "Permutations)"
            + ("; quick mode skips Many Permutations" if ctx.quick else "")
            + ".\n\n"
            + "\n".join(lines)
            + "\n\nEval-pass speed-up over Avalanche's classic benchmarks: "
            + ", ".join(ratios)
            + ".\n"
        )
        write_section(
            "bench mer-data" + (" --quick" if ctx.quick else ""),
            "MER MNIST data: build time, evaluation pass, memory"
            + (" (quick)" if ctx.quick else ""),
            body,
        )
    return results
