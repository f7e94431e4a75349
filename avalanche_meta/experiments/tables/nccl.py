"""Reproduction ``nccl``: NCCL, its ablations and controls against ER, MER, A-GEM,
LaMAML and Naive on online permuted MNIST and online split MNIST.

Declared as data: :func:`plan_nccl` lists the runs (group: the stream, label: the
method) and what the table leaves out; :func:`nccl_rows` makes the table's rows from
the finished runs. With a run store the runs execute as one sweep (in parallel on
``--executor processes|ray``); the older run-folder reuse (``reuse_runs``,
``reuse_only``, ``AVALANCHE_META_REUSE_RUNS``) runs them one at a time.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from avalanche_meta.experiments.context import ReproContext
from avalanche_meta.experiments.registry import register_reproduction
from avalanche_meta.experiments.reproduction import Plan, PlannedRun
from avalanche_meta.experiments.sweep import SweepResult

#: NCCL's inner-loop settings before the validation sweep that chose today's
#: defaults (``examples/nccl_default_sweep.py``): the ablation row "1 inner step".
FIRST_DEFAULTS: Dict[str, Any] = {
    "inner_steps": 1,
    "mem_batch_size": 10,
    "gamma": 1.0,
    "resample_memory": False,
}

#: (label, registered strategy, hparams) of the compared methods; ``{mem}``-valued
#: entries are filled with the memory budget of the stream.
#: The controls that separate calibration from the inner loop come first: the
#: outer loop switched off (same inner loop and budget), a single learned logit
#: scale on the output layer as the only calibration, calibration of the hidden
#: layers only, and ER at NCCL's replay budget. There are no "WCM only" / "FCM
#: only" rows: on the MLP both are one per-output scale per layer (WCM only is the
#: full model), see :mod:`avalanche_meta.models.calibration`.
METHODS: List[Tuple[str, str, Dict[str, Any]]] = [
    ("NCCL (first order)", "nccl", {}),
    ("NCCL, outer loop off", "nccl-no-outer", {}),
    ("NCCL, output temperature only", "nccl-temperature", {}),
    ("NCCL, hidden layers only", "nccl-hidden", {}),
    ("ER, NCCL's replay budget", "nccl-er-budget", {}),
    ("NCCL, output layer only", "nccl-output", {}),
    # the single scale gets the summed gradient of all output units: at the
    # default calibration lr it shrinks the logits towards 0 (see RESULTS)
    (
        "NCCL, output temperature only, calibration lr 0.001",
        "nccl-temperature",
        {"calibration_lr": 0.001},
    ),
    ("NCCL (second order)", "nccl", {"second_order": True}),
    ("NCCL (first order), 1 inner step", "nccl", FIRST_DEFAULTS),
    ("NCCL, no consolidation", "nccl-noreg", {}),
    ("ER (same memory)", "er", {}),
    ("ER (same memory), 25 memories per example", "er", {"replay_batch_size": 25}),
    (
        "MER",
        "mer",
        # the paper's permutations / 200 memories setting (SPEC section 1)
        {
            "lr": 0.03,
            "beta": 0.03,
            "gamma": 1.0,
            "replay_batch_size": 10,
            "batches_per_example": 10,
        },
    ),
    ("A-GEM (same memory)", "agem", {}),
    ("LaMAML (same memory)", "lamaml", {}),
    ("Naive", "naive", {}),
]


#: Hyper-parameters given to every baseline when the strategy has them: one pass,
#: batch 10, SGD, the same MLP and the same memory budget (filled per stream).
def _baseline_settings(mem_size: int, n_tasks: int, lr: float) -> Dict[str, Any]:
    return {
        "epochs": 1,
        "batch_size": 10,
        "optimizer": "sgd",
        "lr": lr,
        "hidden": "100,100",
        "mem_size": mem_size,
        "max_buffer_size": mem_size,
        "patterns_per_exp": max(mem_size // n_tasks, 1),
        "replay_batch_size": 10,
        "batch_size_mem": 10,
        "buffer_mb_size": 10,
        "sample_size": 64,
        "online_batch": 10,
    }


def _streams(quick: bool) -> List[Dict[str, Any]]:
    if quick:
        return [
            dict(
                benchmark="online-permuted-mnist",
                scenario="domain",
                n_tasks=5,
                options={"n_tasks": 5, "samples_per_task": 500},
                mem_size=100,
            ),
            dict(
                benchmark="split-mnist",
                scenario="task",
                n_tasks=5,
                options={},
                mem_size=100,
            ),
            dict(
                benchmark="split-mnist",
                scenario="class",
                n_tasks=5,
                options={},
                mem_size=100,
            ),
        ]
    return [
        dict(
            benchmark="online-permuted-mnist",
            scenario="domain",
            n_tasks=20,
            options={"n_tasks": 20, "samples_per_task": 1000},
            mem_size=500,
        ),
        dict(
            benchmark="split-mnist",
            scenario="task",
            n_tasks=5,
            options={},
            mem_size=500,
        ),
        dict(
            benchmark="split-mnist",
            scenario="class",
            n_tasks=5,
            options={},
            mem_size=500,
        ),
    ]


#: Methods run by ``--quick`` on each stream: everything on the small permuted
#: stream; on split MNIST (60,000 examples, no subsampling option) only NCCL and the
#: fast baselines.
QUICK_METHODS = {
    "online-permuted-mnist": [m[0] for m in METHODS],
    "split-mnist": [
        "NCCL (first order)",
        "NCCL, outer loop off",
        "NCCL (second order)",
        "NCCL (first order), 1 inner step",
        "ER (same memory)",
        "A-GEM (same memory)",
        "Naive",
    ],
}


def _reusable(
    run_dir, name: str, stream: Dict[str, Any], seed: int, hp: Dict[str, Any]
) -> Optional[Dict[str, Any]]:
    """A finished run's results if they match this run's configuration, else None."""
    path = run_dir / "results.json"
    if not path.exists():
        return None
    res = json.loads(path.read_text())
    cfg = res.get("config", {})
    same = (
        res.get("strategy") == name
        and res.get("benchmark") == stream["benchmark"]
        and res.get("scenario") == stream["scenario"]
        and res.get("seed") == seed
        and cfg.get("benchmark_options") == stream["options"]
        and all(cfg.get("hparams", {}).get(k) == v for k, v in hp.items())
    )
    return res if same else None


def _fmt(mean: Optional[float], std: Optional[float]) -> str:
    return "n/a" if mean is None else f"{mean:.2f} ± {std:.2f}"


def _mean_std(
    values: Sequence[Optional[float]],
) -> Tuple[Optional[float], Optional[float]]:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, 0.0
    return m, (sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5


def _run_dir(ctx: ReproContext, name, extra, stream, te_tag, seed) -> Path:
    """The run folder of the run-folder reuse (``out_dir/nccl/...``)."""
    return (
        Path(ctx.out_dir)
        / "nccl"
        / (
            f"{name}{'-so' if extra.get('second_order') else ''}"
            f"{'-inner%d' % extra['inner_steps'] if 'inner_steps' in extra else ''}"
            f"{'-rb%d' % extra['replay_batch_size'] if 'replay_batch_size' in extra else ''}"
            f"{'-clr%g' % extra['calibration_lr'] if 'calibration_lr' in extra else ''}-"
            f"{stream['benchmark']}{te_tag}-{stream['scenario']}-s{seed}"
            f"{'-quick' if ctx.quick else ''}"
        )
    )


def plan_nccl(ctx: ReproContext) -> Plan:
    """The runs of ``nccl`` (see :func:`reproduce_nccl`).

    A group is a stream (``"<benchmark> (<scenario>-IL)"``), a label a method;
    ``plan.info["runs"]`` has, per run, what the run-folder reuse needs (strategy,
    stream, seed, hyper-parameters, folder), ``plan.skipped`` what is left out.
    """
    from avalanche_meta.experiments import registry
    from avalanche_meta.experiments.config import resolve_run_config

    registry.load_all()
    seeds = ctx.seeds or (1 if ctx.quick else 3)
    lr = 0.1
    skipped: List[str] = []
    scenarios = ctx.extra.get("scenarios")
    wanted = ctx.extra.get("methods")
    test_samples = int(
        ctx.extra.get("test_samples")
        or os.environ.get("AVALANCHE_META_NCCL_TEST_SAMPLES", "")
        or 0
    )
    known = [m[0] for m in METHODS]
    for label in wanted or ():
        if label not in known:
            raise ValueError(
                f"--only methods: unknown label {label!r}; labels (separate them "
                f"with ';'): {'; '.join(known)}."
            )
    runs: List[PlannedRun] = []
    details: List[Dict[str, Any]] = []
    hparams: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for stream in _streams(ctx.quick):
        if scenarios and stream["scenario"] not in scenarios:
            continue
        te_tag = ""
        if test_samples and stream["benchmark"] == "online-permuted-mnist":
            stream = dict(stream)
            stream["options"] = dict(
                stream["options"], test_samples_per_task=test_samples
            )
            te_tag = f"-te{test_samples}"
        group = f"{stream['benchmark']} ({stream['scenario']}-IL)"
        settings = _baseline_settings(stream["mem_size"], stream["n_tasks"], lr)
        for label, name, extra in METHODS:
            if wanted and label not in wanted:
                continue
            if ctx.quick and label not in QUICK_METHODS[stream["benchmark"]]:
                skipped.append(
                    f"{label} on {stream['benchmark']} ({stream['scenario']}-IL): "
                    "not in the --quick set (runs without --quick)"
                )
                continue
            spec = registry.STRATEGIES.get(name)
            if spec is None:
                skipped.append(f"{label}: strategy {name!r} is not registered")
                continue
            if stream["scenario"] not in spec.scenarios:
                skipped.append(f"{label}: no {stream['scenario']}-IL")
                continue
            hp = {k: v for k, v in settings.items() if k in spec.params}
            if name.startswith("nccl"):
                hp = {"mem_size": stream["mem_size"], "lr": lr, "online_batch": 10}
            hp.update(extra)
            hparams[(group, label)] = hp
            for seed in range(seeds):
                config = resolve_run_config(
                    name,
                    stream["benchmark"],
                    scenario=stream["scenario"],
                    seed=seed,
                    hparams=hp,
                    benchmark_options=stream["options"],
                )
                runs.append(PlannedRun(config, label, group))
                details.append(
                    dict(
                        name=name,
                        stream=stream,
                        seed=seed,
                        hp=hp,
                        run_dir=_run_dir(ctx, name, extra, stream, te_tag, seed),
                    )
                )
    return Plan(
        "nccl",
        runs,
        table=lambda plan, result: _table_text(nccl_rows(plan, result)),
        info=dict(
            seeds=seeds,
            runs=details,
            hparams=hparams,
            partial=bool(scenarios or wanted or test_samples),
            test_samples=test_samples,
        ),
        skipped=skipped,
    )


def nccl_rows(plan: Plan, result: SweepResult) -> List[Dict[str, Any]]:
    """The table's rows (stream, method, hyper-parameters, mean ± std of accuracy,
    forgetting and training time over the runs present) from the finished runs."""
    rows = []
    for group in plan.groups():
        for label in plan.labels(group):
            results = [r for r in plan.cell(result, group, label) if r is not None]
            if not results:
                continue
            rows.append(
                {
                    "stream": group,
                    "method": label,
                    "hparams": plan.info["hparams"][(group, label)],
                    "seeds": len(results),
                    "acc": _mean_std([r["average_accuracy"] for r in results]),
                    "fgt": _mean_std([r["forgetting"] for r in results]),
                    "time": _mean_std([r["train_seconds"] for r in results]),
                }
            )
    return rows


def _table_text(rows: List[Dict[str, Any]]) -> str:
    lines = [
        "| stream | method | avg acc (%) | forgetting (%) | train time (s) | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['stream']} | {r['method']} | {_fmt(*r['acc'])} | {_fmt(*r['fgt'])} "
            f"| {_fmt(*r['time'])} | {r['seeds']} |"
        )
    return "\n".join(lines)


def _run_one_at_a_time(
    ctx: ReproContext, plan: Plan, reuse: bool, reuse_only: bool, skipped: List[str]
) -> Tuple[SweepResult, List[str]]:
    """One run at a time through ``ctx.run``; with ``reuse``, a run whose folder
    holds matching results (``_reusable``) is taken from there instead."""
    result = SweepResult(configs=plan.configs, labels=plan.run_labels)
    reused: List[str] = []
    for planned, d in zip(plan.runs, plan.info["runs"]):
        stream, seed, name, hp = d["stream"], d["seed"], d["name"], d["hp"]
        where = f"{planned.label} on {stream['benchmark']} ({stream['scenario']}-IL)"
        t0 = time.perf_counter()
        try:
            res = _reusable(d["run_dir"], name, stream, seed, hp) if reuse else None
            if res is not None:
                reused.append(str(d["run_dir"]))
            elif reuse_only:
                skipped.append(
                    f"{where} seed {seed}: not run (this table only collects "
                    "finished runs, `reuse_only`)"
                )
                continue
            else:
                res = ctx.run(
                    name,
                    stream["benchmark"],
                    scenario=stream["scenario"],
                    seed=seed,
                    hparams=hp,
                    benchmark_options=stream["options"],
                    plots=False,
                    out_dir=d["run_dir"],
                )
        except Exception as err:  # noqa: BLE001 - reported in the table
            skipped.append(f"{where} seed {seed}: {type(err).__name__}: {err}")
            continue
        result.results[planned.config.key] = res
        print(
            f"[nccl] {planned.label:28s} {stream['benchmark']}/{stream['scenario']} "
            f"seed {seed}: acc {res['average_accuracy']:.2f} "
            f"forgetting {res['forgetting']:.2f} "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    return result, reused


@register_reproduction(
    "nccl",
    help="NCCL vs ER, MER, A-GEM, LaMAML, Naive on online permuted MNIST and online "
    "split MNIST (Task-IL, Class-IL), with NCCL's ablations",
)
def reproduce_nccl(ctx: ReproContext) -> None:
    """Average accuracy and forgetting of every method on every stream, same memory.

    Full: 20 x 1000 permuted MNIST and split MNIST, memory 500, 3 seeds. ``--quick``:
    5 x 500 permuted MNIST (every method) and split MNIST (NCCL, ER, A-GEM, Naive),
    memory 100, 1 seed. ``ctx.extra`` (``reproduce --only``) may restrict the
    ``scenarios`` (``domain``: permuted MNIST; ``task``, ``class``: split MNIST) and
    the ``methods`` (labels), and ``test_samples=N`` (``ctx.extra``, or the
    environment variable ``AVALANCHE_META_NCCL_TEST_SAMPLES=N`` while the command
    line does not know that ``--only`` key) evaluates permuted MNIST on the first N
    test images of each task (default: all); such a run writes a separate
    "partial" section, and a
    later whole run with ``AVALANCHE_META_REUSE_RUNS=1`` reuses its run folders
    (``reuse_only=true``: reuse the finished runs, run nothing, list the rest as not
    run). The runs are :func:`plan_nccl`; with a run store and no run-folder reuse
    they execute as one sweep on ``ctx``'s executor.
    """
    plan = plan_nccl(ctx)
    skipped = list(plan.skipped)
    reuse_only = bool(ctx.extra.get("reuse_only"))
    reuse = (
        reuse_only
        or bool(ctx.extra.get("reuse_runs"))
        or os.environ.get("AVALANCHE_META_REUSE_RUNS", "") not in ("", "0")
    )
    reused: List[str] = []
    if ctx.store is not None and not reuse:
        result = ctx.sweep(plan.configs, labels=plan.run_labels)
        skipped += plan.missing_lines(result)
    else:
        result, reused = _run_one_at_a_time(ctx, plan, reuse, reuse_only, skipped)
    rows = nccl_rows(plan, result)
    info = plan.info
    _write_repro(
        ctx,
        rows,
        skipped,
        info["seeds"],
        reused,
        info["partial"],
        info["test_samples"],
    )


def _write_repro(
    ctx: ReproContext,
    rows,
    skipped,
    seeds,
    reused,
    partial: bool = False,
    test_samples: int = 0,
) -> None:
    from avalanche_meta.experiments.results_doc import provenance, write_section

    lines = [
        provenance(
            ctx.command
            or f"avalanche-meta reproduce nccl{' --quick' if ctx.quick else ''}"
        ),
        "",
        "Average accuracy: mean over tasks of the final accuracies (percent); "
        "forgetting: mean over tasks but the last of (best earlier accuracy - final "
        f"accuracy). Mean ± sample std over {seeds} seed(s) (seeds 0..{seeds - 1}). "
        "One pass, batches of 10 incoming examples, MLP 784-100-100-10, plain SGD "
        "lr 0.1 for every method but MER (its paper's permutations setting: "
        "lr 0.03, beta 0.03, gamma 1, k 10, s 10); ER and MER update example by "
        "example within each batch of 10 (their papers' algorithm). Same memory "
        "budget for every replay method (A-GEM: the budget divided by the number "
        "of tasks, per experience; LaMAML: `max_buffer_size`). NCCL's other "
        "hyper-parameters are the command line's defaults (`avalanche-meta run "
        "nccl --help`): 5 inner steps per incoming batch, each on the 10 incoming "
        "examples and 50 memories drawn anew (gamma 2), chosen on validation "
        "streams (seeds 100-102, section 'NCCL: choice of the defaults'); the row "
        "'1 inner step' is the configuration before that choice. ER, A-GEM and the "
        "other baselines were not tuned beyond ER's learning rate (0.1 better than "
        "0.03 on the same validation streams). Controls: 'outer loop off' runs the "
        "same inner loop with the calibration parameters left at their initial "
        "values (the plain network); 'output temperature only' has one learned "
        "logit scale on the output layer as its only calibration parameter, trained "
        "by the same outer loop; 'hidden layers only' leaves the output layer "
        "uncalibrated, 'output layer only' calibrates the output layer alone; 'ER, NCCL's replay budget' is NCCL's inner loop (5 SGD steps "
        "per incoming batch, 50 fresh memories each: 250 memories) without "
        "distillation and without outer loop, while 'ER (same memory)' replays 10 "
        "memories per example (10 steps, 100 memories per incoming batch) and its "
        "'25 memories per example' row 250.",
        "",
    ]
    if test_samples:
        lines += [
            f"Permuted MNIST is evaluated on the first {test_samples} test images of "
            "each task (same images for every method; training unchanged).",
            "",
        ]
    lines += _table_text(rows).split("\n")
    lines += [
        "",
        "Targets (the paper's claim, same run and memory): NCCL's average "
        "accuracy above ER's and A-GEM's, its forgetting lower."
        + (
            " One seed: differences of about a point are within seed-to-seed noise "
            "and decide nothing."
            if seeds == 1
            else ""
        ),
        "",
    ]
    for stream in dict.fromkeys(r["stream"] for r in rows):
        mine = {r["method"]: r for r in rows if r["stream"] == stream}
        for variant in [m for m in mine if m.startswith("NCCL (")]:
            v = mine[variant]
            for base in (
                "ER (same memory)",
                "ER, NCCL's replay budget",
                "A-GEM (same memory)",
            ):
                if (
                    base not in mine
                    or v["acc"][0] is None
                    or mine[base]["acc"][0] is None
                ):
                    continue
                b = mine[base]
                acc_ok = v["acc"][0] > b["acc"][0]
                fgt_ok = (
                    v["fgt"][0] is not None
                    and b["fgt"][0] is not None
                    and v["fgt"][0] < b["fgt"][0]
                )
                lines.append(
                    f"- {stream}, {variant} vs {base}: accuracy "
                    f"{v['acc'][0]:.2f} vs {b['acc'][0]:.2f} "
                    f"({'met' if acc_ok else 'NOT met'}), forgetting "
                    f"{v['fgt'][0]:.2f} vs {b['fgt'][0]:.2f} "
                    f"({'met' if fgt_ok else 'NOT met'})"
                )
    lines += [
        "",
        "Published (SPEC section 5 has no NCCL figure; the NCCL paper reports permuted "
        "MNIST, Split CIFAR, miniImageNet and CORe50 with other protocols): nothing to "
        "put side by side on these streams.",
    ]
    if skipped:
        lines += ["", "Not run:", ""] + [f"- {s}" for s in skipped]
    if reused:
        lines += [
            "",
            "Runs whose results.json was reused (same strategy, stream, seed and "
            "hyper-parameters; `AVALANCHE_META_REUSE_RUNS=1`):",
            "",
        ]
        lines += [f"- `{r}`" for r in reused]
    lines += ["", "Hyper-parameters passed per method:", ""]
    seen = set()
    for r in rows:
        key = (r["method"], str(r["hparams"]))
        if key not in seen:
            seen.add(key)
            lines.append(f"- {r['method']} ({r['stream']}): `{r['hparams']}`")
    body = "\n".join(lines) + "\n"
    print(body)
    if ctx.write_results:
        key = "reproduce nccl --quick" if ctx.quick else "reproduce nccl"
        title = "NCCL: online permuted and split MNIST" + (
            " (quick)" if ctx.quick else ""
        )
        if partial:
            key, title = key + " partial", title + ", part of the table"
        write_section(key, title, body)
