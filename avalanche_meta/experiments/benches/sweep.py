"""``avalanche-meta bench sweep``: the same comparison through each executor.

Registered by :func:`avalanche_meta.experiments.registry.load_all`.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from avalanche_meta.experiments.context import BenchContext
from avalanche_meta.experiments.registry import register_bench

#: The results.json fields that must be equal run for run across executors.
METRICS = (
    "accuracy_matrix",
    "initial_accuracy",
    "average_accuracy",
    "learning_accuracy",
    "bwt",
    "bti",
    "forgetting",
    "fwt",
)

FULL = {
    "strategies": ("naive", "replay", "er", "mer"),
    "seeds": 3,
    "settings": {"er": {"mem_size": 200}, "mer": {"mem_size": 200}},
}
QUICK = {
    "strategies": ("naive", "replay"),
    "seeds": 2,
    "settings": {
        "naive": {"epochs": 1, "hidden": "16"},
        "replay": {"epochs": 1, "hidden": "16", "mem_size": 50},
    },
}


def _metrics(res: Dict[str, Any]) -> Dict[str, Any]:
    return {k: res.get(k) for k in METRICS}


def _differences(ref: Dict[str, Any], other: Dict[str, Any]) -> List[str]:
    """Runs (``strategy-sSEED``) whose metrics differ, or that one side lacks."""
    out = []
    for name in sorted(set(ref) | set(other)):
        if name not in ref or name not in other:
            out.append(f"{name} (missing)")
        elif _metrics(ref[name]) != _metrics(other[name]):
            out.append(name)
    return out


def _load_runs(compare_dir: Path) -> Dict[str, Dict[str, Any]]:
    return {
        link.name: json.loads((link / "results.json").read_text())
        for link in sorted(compare_dir.iterdir())
        if link.is_dir() and (link / "results.json").is_file()
    }


def _ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


@register_bench(
    "sweep",
    help="compare naive/replay/er/mer x 3 seeds on split digits (Class-IL) through "
    "--executor local, processes (2 workers) and ray: wall-clock, same numbers",
)
def bench_sweep(ctx: BenchContext) -> Dict[str, Dict[str, Any]]:
    """Times ``avalanche-meta compare naive replay er mer --benchmark split-digits
    --scenario class --seeds 3 --set er.mem_size=200 --set mer.mem_size=200`` with
    ``--executor local``, ``--executor processes --workers 2`` and (when Ray is
    installed) ``--executor ray --workers 2`` (a local Ray instance, started and
    stopped inside the timing), each as its own command (``python -m
    avalanche_meta compare ...``) into a fresh store, one after another; then runs
    the local one again on its own store (a resumed table: nothing must run).

    Wall-clock is the whole command's, as a user sees it (Python start-up, imports,
    worker and Ray start-up included); torch runs one thread per run everywhere
    (``--threads 1``). The ``identical`` column checks that every
    run's metrics in ``results.json`` (accuracy matrix, initial accuracies and
    their summaries) equal the local run's exactly. ``--quick``: naive and replay,
    2 seeds, 1 epoch, 16 hidden units (a check that it works, not a measurement).
    ``ctx.extra["executors"]`` may restrict the executors (local always runs).
    """
    from avalanche_meta.experiments.results_doc import provenance, write_section

    plan = QUICK if ctx.quick else FULL
    root = Path(ctx.out_dir) / "bench-sweep" / time.strftime("%Y%m%d-%H%M%S")
    executors = ["local", "processes"] + (["ray"] if _ray_available() else [])
    if "executors" in ctx.extra:
        wanted = list(ctx.extra["executors"])
        executors = ["local"] + [e for e in executors[1:] if e in wanted]
    rows: Dict[str, Dict[str, Any]] = {}
    runs: Dict[str, Dict[str, Dict[str, Any]]] = {}
    commands: Dict[str, str] = {}

    sets: List[str] = []
    for strategy, hp in plan["settings"].items():
        for k, v in hp.items():
            sets += ["--set", f"{strategy}.{k}={v}"]
    base = [*plan["strategies"], "--benchmark", "split-digits", "--scenario", "class"]
    base += ["--seeds", str(plan["seeds"]), *sets, "--no-plots", "--threads", "1"]
    base += ["--device", ctx.device]
    if ctx.data_root:
        base += ["--data-root", str(ctx.data_root)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    def one(label: str, executor: str, folder: str) -> Dict[str, Any]:
        out = root / folder
        argv = [sys.executable, "-m", "avalanche_meta", "compare", *base]
        argv += ["--executor", executor]
        if executor != "local":
            argv += ["--workers", "2"]
        commands[label] = shlex.join(["avalanche-meta", *argv[3:]])
        commands[label] += " --out OUT --store OUT/store"
        argv += ["--out", str(out), "--store", str(out / "store")]
        t0 = time.perf_counter()
        proc = subprocess.run(argv, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(
                f"bench sweep: `{shlex.join(argv[1:])}` failed with status "
                f"{proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            )
        res = json.loads((out / "comparison.json").read_text())
        runs[label] = _load_runs(out)
        return {
            "wall_s": round(wall, 1),
            "runs_executed": res["executed"],
            "runs_missing": len(res["missing"]),
        }

    rows["local"] = one("local", "local", "local")
    rows["local"].update(speedup=1.0, identical=True)
    for ex in executors[1:]:
        label = f"{ex} (2 workers)"
        rows[label] = one(label, ex, ex)
        diff = _differences(runs["local"], runs[label])
        rows[label].update(
            speedup=round(rows["local"]["wall_s"] / rows[label]["wall_s"], 2),
            identical=not diff,
        )
        if diff:
            rows[label]["differing_runs"] = ", ".join(diff)
    resumed = one("local, resumed", "local", "local")
    resumed.update(
        speedup=None, identical=not _differences(runs["local"], runs["local, resumed"])
    )
    rows["local, resumed"] = resumed
    load = os.getloadavg()[0]

    if ctx.write_results:
        n_runs = len(plan["strategies"]) * plan["seeds"]
        lines = [
            provenance(ctx.command or "avalanche-meta bench sweep"),
            f"- setting: {n_runs} runs ({', '.join(plan['strategies'])} x "
            f"{plan['seeds']} seeds, split digits, Class-IL, no plots), the same "
            "comparison through each executor as its own command, each into a "
            "fresh store, one after another; torch threads 1 per run; wall-clock "
            "of the whole command (Python start-up, imports, worker and Ray "
            f"start-up included); 1-min load average at the end: {load:.1f}.\n",
            f"- command: `{commands['local']}` (OUT: a fresh folder per executor), "
            "then the same with `--executor processes --workers 2` and "
            "`--executor ray --workers 2`, then the local one again (resumed).\n",
            "| executor | wall (s) | speed-up | runs executed | same numbers as local |",
            "|---|---|---|---|---|",
        ]
        for label, row in rows.items():
            sp = "—" if row["speedup"] is None else f"{row['speedup']:.2f}x"
            lines.append(
                f"| {label} | {row['wall_s']:.1f} | {sp} | {row['runs_executed']} | "
                f"{'yes' if row['identical'] else 'NO: ' + row.get('differing_runs', '')} |"
            )
        lines.append(
            "\nTarget: processes (2 workers) at least 1.6x faster than local, same "
            "numbers run for run; ray: same numbers; resumed: 0 runs executed."
            + ("" if "ray" in executors else " Ray was not installed: not run.")
        )
        write_section(
            "bench sweep" + (" --quick" if ctx.quick else ""),
            "Sweep executors: local vs processes vs Ray"
            + (" (quick)" if ctx.quick else ""),
            "\n".join(lines),
        )
    return rows
