"""Reproductions ``fewshot-omniglot`` and ``fewshot-omniglot-5w1s``: transfer,
FO-MAML, MAML, MAML + task augmentation and Reptile on offline Omniglot.

Declared as data, like the other tables:
:func:`plan_fewshot_omniglot` / :func:`plan_fewshot_omniglot_5w1s` list the runs (one
:class:`~avalanche_meta.experiments.config.RunConfig` per setting, method and seed:
the registered strategy ``transfer``, ``fomaml``, ``maml`` or ``reptile`` with the
hyper-parameters of :func:`_method_hparams`, on the registered benchmark ``omniglot``
with its default options, Class-IL, ``initial_eval`` off) and :func:`table_fewshot`
builds the table from the finished runs of a run store, listing the missing ones.
So the runs execute on any executor (``reproduce ... --executor processes|ray``), a
run the store holds is never redone, and ``--no-run`` builds the table from the store
alone. Each run is an ordinary store run: ``avalanche-meta run maml --benchmark
omniglot --no-initial-eval`` with the same hyper-parameters and seed is the same run
(same key).

What a run stores: besides the runner's usual ``results.json`` (few-shot accuracies
as the accuracy matrix, in percent; ``train_seconds``, ``eval_seconds``), the
``"fewshot"`` entry that the few-shot ``fit`` returns
(:func:`~avalanche_meta.experiments.builders.fewshot.fit_fewshot`): the matrix of
mean accuracies and of 95% confidence half-widths over the test tasks, as fractions.
A cell of the table is the last test experience after training (the benchmark has
one): the mean over seeds of each run's mean accuracy and of its CI half-width, as
before. Runs stored before results.json had ``"fewshot"`` are read from their
``fewshot.json``.

Same numbers as the in-process code these tables ran before (kept as
:func:`run_fewshot_method`, which trains one method on a benchmark built once and
shared by all runs): a store run seeds (``seed_everything(seed)``) *before* building
the benchmark, the in-process code after; building the offline Omniglot benchmark
draws no random numbers (checked by tests/test_reproduction_fewshot.py), so the model
initialisation, the training tasks (their sampler is seeded from torch's generator
when training starts) and the data order are the same. ``initial_eval`` is off, so
nothing is evaluated before training; the test tasks come from the few-shot metric's
own seed, so they are the same tasks; the runner's evaluator adds Avalanche's accuracy
and loss metrics and the accuracy matrix, which read the evaluation iterations and
change nothing. Measured: identical per-run accuracies and CIs, old path against the
store runs, local and ``processes`` executors (tests/test_reproduction_fewshot.py
and the notes of the change). What differs: the seconds (each run's own, possibly
from another invocation or machine, and ``train_seconds`` is the runner's: time of
the ``fit`` minus its evaluation), and the table reports how many runs are missing.

``ctx.extra`` (``reproduce --only``) may hold ``methods`` (row labels, e.g.
``methods=MAML,Reptile``), ``iterations`` (meta-iterations of MAML, FO-MAML and
Reptile), ``settings`` (e.g. ``settings=5-way 1-shot``; a list from Python) and,
from Python only, ``budget``
(a dict overriding entries of :data:`BUDGETS`: ``epochs``, ``maml_iterations``,
``maml_batch``, ``reptile_iterations``, ``eval_tasks``); any of them makes the run a
"partial" one with its own section of the results document.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from avalanche_meta.benchmarks.base import BenchmarkInfo
from avalanche_meta.experiments.context import ReproContext, RunContext
from avalanche_meta.experiments.registry import register_reproduction
from avalanche_meta.experiments.reproduction import (
    Plan,
    PlannedRun,
    markdown_table,
    run_plan,
)
from avalanche_meta.experiments.sweep import SweepResult

# --------------------------------------------------------------------------------
# Methods and settings
# --------------------------------------------------------------------------------
#: SPEC.md section 5 (Finn et al. 2017; Nichol et al. 2018, transductive), percent.
PUBLISHED = {
    ("5-way 1-shot", "MAML"): "98.7",
    ("5-way 1-shot", "FO-MAML"): "98.3",
    ("5-way 1-shot", "Reptile"): "97.68",
    ("20-way 1-shot", "MAML"): "95.8",
    ("20-way 1-shot", "FO-MAML"): "89.4",
    ("20-way 1-shot", "Reptile"): "89.43",
}

SETTINGS = {
    "5-way 1-shot": {"ways": 5, "shots": 1},
    "5-way 5-shot": {"ways": 5, "shots": 5},
    "20-way 1-shot": {"ways": 20, "shots": 1},
}

#: The benchmark every run uses (registered; default options: meta-train on
#: ``small1``, test on the unseen alphabets of ``small2``).
BENCHMARK = "omniglot"

#: Training budgets (``{reproduction: {"quick" | "full": budget}}``): transfer
#: ``epochs``, MAML/FO-MAML ``maml_iterations`` of ``maml_batch`` tasks, Reptile
#: ``reptile_iterations`` (of 5 tasks), ``eval_tasks`` test tasks per run.
BUDGETS: Dict[str, Dict[str, Dict[str, int]]] = {
    "fewshot-omniglot": {
        "full": dict(
            epochs=20,
            maml_iterations=600,
            maml_batch=16,
            reptile_iterations=4000,
            eval_tasks=600,
        ),
        "quick": dict(
            epochs=3,
            maml_iterations=40,
            maml_batch=8,
            reptile_iterations=300,
            eval_tasks=100,
        ),
    },
    "fewshot-omniglot-5w1s": {
        "full": dict(
            epochs=10,
            maml_iterations=600,
            maml_batch=8,
            reptile_iterations=600,
            eval_tasks=600,
        ),
        "quick": dict(
            epochs=5,
            maml_iterations=150,
            maml_batch=8,
            reptile_iterations=300,
            eval_tasks=200,
        ),
    },
}


def _method_hparams(
    method: str, setting: str, budget: Dict[str, int]
) -> Tuple[str, Dict[str, Any]]:
    """(registered strategy, hyper-parameters) of one method in one setting.

    Papers' values for everything but the number of iterations (``budget``).
    """
    ways, shots = SETTINGS[setting]["ways"], SETTINGS[setting]["shots"]
    ev = {"eval_ways": ways, "eval_shots": shots, "eval_tasks": budget["eval_tasks"]}
    if method == "transfer":
        return "transfer", {**ev, "epochs": budget["epochs"]}
    if method in ("FO-MAML", "MAML", "MAML + aug"):
        hp = {**ev, "ways": ways, "shots": shots, "query_shots": shots}
        hp["meta_iterations"] = budget["maml_iterations"]
        hp["meta_batch_size"] = budget["maml_batch"]
        if ways == 20:
            hp.update(inner_lr=0.1, inner_steps=5, eval_inner_lr=0.1)
        if method == "MAML + aug":
            hp.update(class_rotations=True, task_rotation_prob=0.4)
        return ("fomaml" if method == "FO-MAML" else "maml"), hp
    if method == "Reptile":
        # --eval-batch of Nichol et al.'s commands: 5 (5-way), 10 (20-way)
        hp = {
            **ev,
            "ways": ways,
            "shots": 10,
            "eval_batch_size": 5 if ways == 5 else 10,
        }
        hp["meta_iterations"] = budget["reptile_iterations"]
        if ways == 20:
            hp.update(inner_batch_size=20, inner_steps=10, inner_lr=5e-4)
        return "reptile", hp
    raise ValueError(f"unknown method {method!r}")


METHODS = ("transfer", "FO-MAML", "MAML", "MAML + aug", "Reptile")


def run_fewshot_method(
    info: BenchmarkInfo,
    name: str,
    hp: Dict[str, Any],
    *,
    seed: int,
    device: str = "cpu",
):
    """Train one registered few-shot strategy on ``info`` and few-shot evaluate it,
    in this process (no run store).

    How these tables were made before they were declared runs: one benchmark built
    once, then for each run ``seed_everything(seed)``, the strategy, training on
    every training experience and one evaluation of the test stream. A store run of
    the same method and seed gives the same figures (see the module docstring);
    kept for scripts and for the test that checks it.

    :return: ``(FewShotResult of the last test experience, train seconds, eval
        seconds)``.
    """
    import io

    import torch

    from avalanche.logging import TextLogger
    from avalanche.training.plugins import EvaluationPlugin

    from avalanche_meta.experiments import registry
    from avalanche_meta.experiments.runner import resolve_hparams, seed_everything

    registry.load_all()
    spec = registry.STRATEGIES[name]
    seed_everything(seed)
    ctx = RunContext(
        info=info,
        scenario="class",
        device=torch.device(device),
        seed=seed,
        evaluator=EvaluationPlugin(loggers=[TextLogger(io.StringIO())]),
    )
    strategy = spec.build(ctx, **resolve_hparams(spec, None, hp))
    t0 = time.perf_counter()
    for exp in info.benchmark.train_stream:
        strategy.train(exp)
    t1 = time.perf_counter()
    strategy.eval(info.benchmark.test_stream)
    t2 = time.perf_counter()
    last = max(strategy.fewshot_metric.results)
    return strategy.fewshot_metric.results[last], t1 - t0, t2 - t1


# --------------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------------
def _budget(ctx: ReproContext, name: str) -> Tuple[Dict[str, int], bool]:
    """The budget of reproduction ``name`` for ``ctx`` and whether ``ctx.extra``
    changed it (``iterations``, ``budget``)."""
    from avalanche_meta.experiments.runner import UsageError

    budget = dict(BUDGETS[name]["quick" if ctx.quick else "full"])
    changed = False
    over = ctx.extra.get("budget")
    if over:
        unknown = sorted(set(over) - set(budget))
        if unknown:
            raise UsageError(
                f"budget: unknown entries {unknown}; known: {', '.join(budget)}."
            )
        budget.update({k: int(v) for k, v in over.items()})
        changed = True
    if ctx.extra.get("iterations") is not None:
        n = ctx.extra["iterations"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UsageError(
                f"--only iterations= must be a positive integer (meta-iterations of "
                f"MAML, FO-MAML and Reptile), got {n!r}."
            )
        budget.update(maml_iterations=n, reptile_iterations=n)
        changed = True
    for key, value in budget.items():
        if value < 1:
            raise UsageError(f"budget: {key} must be >= 1, got {value}.")
    return budget, changed


def _chosen(ctx: ReproContext, key: str, known: Sequence[str]) -> List[str]:
    """``ctx.extra[key]`` (labels) checked against ``known``, in ``known``'s order;
    all of ``known`` when absent."""
    from avalanche_meta.experiments.runner import UsageError

    wanted = ctx.extra.get(key)
    if not wanted:
        return list(known)
    if isinstance(wanted, str):
        wanted = [wanted]
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise UsageError(
            f"--only {key}=: unknown label(s) {unknown}; this table's {key}: "
            f"{'; '.join(known)}."
        )
    return [k for k in known if k in wanted]


def _plan(
    ctx: ReproContext,
    name: str,
    *,
    settings: Sequence[str],
    title: str,
    budget_note: str,
) -> Plan:
    """The plan of a few-shot reproduction: setting x method x seed runs."""
    from avalanche_meta.experiments.config import resolve_run_config

    budget, changed = _budget(ctx, name)
    settings = _chosen(ctx, "settings", settings)
    methods = _chosen(ctx, "methods", METHODS)
    partial = changed or bool(ctx.extra.get("settings") or ctx.extra.get("methods"))
    seeds = ctx.seeds or 1
    runs: List[PlannedRun] = []
    hparams: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for setting in settings:
        for method in methods:
            strategy, hp = _method_hparams(method, setting, budget)
            hparams[(setting, method)] = hp
            runs += [
                PlannedRun(
                    resolve_run_config(
                        strategy,
                        BENCHMARK,
                        scenario="class",
                        seed=seed,
                        hparams=hp,
                        initial_eval=False,
                    ),
                    label=method,
                    group=setting,
                )
                for seed in range(seeds)
            ]
    key = f"reproduce {name}" + (" --quick" if ctx.quick else "")
    key += " partial" if partial else ""
    return Plan(
        name,
        runs,
        table=table_fewshot,
        write=_write_fewshot,
        info=dict(
            quick=ctx.quick,
            seeds=seeds,
            budget=budget,
            hparams=hparams,
            partial=partial,
            key=key,
            title=title
            + (" (--quick)" if ctx.quick else "")
            + (", partial" if partial else ""),
            notes=_DATA_NOTE + budget_note.format(**budget),
            command=ctx.command
            or f"avalanche-meta reproduce {name}" + (" --quick" if ctx.quick else ""),
        ),
    )


def plan_fewshot_omniglot(ctx: ReproContext) -> Plan:
    """The runs of ``fewshot-omniglot``: the three settings x :data:`METHODS` x
    seeds (``--seeds``, default 1)."""
    return _plan(
        ctx,
        "fewshot-omniglot",
        settings=tuple(SETTINGS),
        title="Few-shot Omniglot: transfer, FO-MAML, MAML, MAML + aug, Reptile",
        budget_note=(
            "- budget: transfer {epochs} epochs; MAML/FO-MAML {maml_iterations} "
            "meta-iterations of {maml_batch} tasks (paper: 60,000 of 32, or 16 for "
            "20-way); Reptile {reptile_iterations} meta-iterations of 5 tasks "
            "(paper: 100,000; 200,000 for 20-way).\n"
        ),
    )


def plan_fewshot_omniglot_5w1s(ctx: ReproContext) -> Plan:
    """The runs of ``fewshot-omniglot-5w1s``: 5-way 1-shot x :data:`METHODS` x
    seeds (``--seeds``, default 1)."""
    return _plan(
        ctx,
        "fewshot-omniglot-5w1s",
        settings=("5-way 1-shot",),
        title="Few-shot Omniglot 5-way 1-shot, longer run",
        budget_note=(
            "- budget: transfer {epochs} epochs; MAML/FO-MAML {maml_iterations} "
            "meta-iterations of {maml_batch} tasks (paper: 60,000 of 32); Reptile "
            "{reptile_iterations} meta-iterations of 5 tasks (paper: 100,000).\n"
        ),
    )


# --------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------
def fewshot_cell(results: Optional[Dict[str, Any]]) -> Optional[Tuple[float, float]]:
    """``(mean accuracy, 95% CI half-width)`` (fractions) of a run's last test
    experience after training, from its ``results.json`` (``"fewshot"``) or, for runs
    stored before that entry existed, its ``fewshot.json``; None for a missing run.

    :raises ValueError: a stored run without few-shot results (not a few-shot run).
    """
    if results is None:
        return None
    fs = results.get("fewshot")
    if fs is None and results.get("out_dir"):
        path = Path(results["out_dir"]) / "fewshot.json"
        if path.is_file():
            fs = json.loads(path.read_text())
    if not fs or not fs.get("accuracy_matrix"):
        raise ValueError(
            f"run {results.get('run_key') or results.get('out_dir')} has no few-shot "
            "results (results.json without 'fewshot', no fewshot.json)."
        )
    return float(fs["accuracy_matrix"][-1][-1]), float(fs["ci95_matrix"][-1][-1])


def fewshot_rows(plan: Plan, result: SweepResult) -> List[Dict[str, Any]]:
    """One dict per (setting, method) of ``plan``: the mean over the runs the store
    holds of the accuracy and of the CI half-width (fractions), per-seed
    accuracies, mean seconds, published figure and the number of missing runs."""
    rows: List[Dict[str, Any]] = []
    for setting in plan.groups():
        for method in plan.labels(setting):
            planned = [r for r in plan.runs if r.group == setting and r.label == method]
            runs = [result.get(r.config) for r in planned]
            cells = [fewshot_cell(r) for r in runs]
            present = [(c, r) for c, r in zip(cells, runs) if c is not None]
            n = len(present)

            def mean(vals: List[float]) -> Optional[float]:
                return sum(vals) / len(vals) if vals else None

            rows.append(
                {
                    "setting": setting,
                    "method": method,
                    "strategy": planned[0].config.strategy,
                    "hparams": dict(plan.info["hparams"][(setting, method)]),
                    "accuracy": mean([c[0] for c, _ in present]),
                    "ci95": mean([c[1] for c, _ in present]),
                    "per_seed": [None if c is None else c[0] for c in cells],
                    "seeds": [r.config.seed for r in planned],
                    "runs": n,
                    "missing": len(planned) - n,
                    "train_seconds": mean(
                        [float(r.get("train_seconds") or 0.0) for _, r in present]
                    ),
                    "eval_seconds": mean(
                        [float(r.get("eval_seconds") or 0.0) for _, r in present]
                    ),
                    "published": PUBLISHED.get((setting, method), "—"),
                    "run_keys": [r.config.key for r in planned],
                }
            )
    return rows


def _secs(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.0f}"


def table_fewshot(plan: Plan, result: SweepResult) -> str:
    """The Markdown table of a few-shot reproduction from the runs the store holds
    (accuracy ± 95% CI in percent: means over seeds; missing runs counted)."""
    lines = []
    for r in fewshot_rows(plan, result):
        if r["accuracy"] is None:
            acc = f"missing ({r['missing']} run(s))"
        else:
            acc = f"{100 * r['accuracy']:.1f} ± {100 * r['ci95']:.1f}"
            if r["missing"]:
                acc += f" ({r['missing']} run(s) missing)"
        hp_text = ", ".join(
            f"{k}={v}" for k, v in r["hparams"].items() if not k.startswith("eval")
        )
        lines.append(
            [
                r["setting"],
                r["method"],
                acc,
                r["published"],
                _secs(r["train_seconds"]),
                _secs(r["eval_seconds"]),
                hp_text,
            ]
        )
    return markdown_table(
        [
            "setting",
            "method",
            "accuracy ± 95% CI (%)",
            "published (%)",
            "train (s)",
            "eval (s)",
            "hyper-parameters",
        ],
        lines,
    )


def _write_fewshot(plan: Plan, result: SweepResult, table: str) -> None:
    """The reproduction's section of the results document."""
    from avalanche_meta.experiments.results_doc import provenance, write_section

    info = plan.info
    notes = info["notes"]
    if info["partial"]:
        notes += (
            "- partial run (`--only` or a changed budget): settings "
            f"{plan.groups()}, methods {plan.labels(plan.groups()[0])}; not the "
            "reproduction's protocol.\n"
        )
    load = os.getloadavg()[1] if hasattr(os, "getloadavg") else float("nan")
    notes += (
        "- seconds are each run's own wall-clock on a shared machine, means over "
        "seeds (runs may come from several invocations or machines; load average "
        f"{load:.1f} over the 5 minutes before the table was written): compare "
        "them within a table only\n"
    )
    missing = plan.missing_lines(result)
    if missing:
        notes += "- missing from the table (failed or not run):\n" + "".join(
            f"  - {line}\n" for line in missing
        )
    body = (
        provenance(info["command"])
        + f"- seeds: {info['seeds']}; {info['budget']['eval_tasks']} test tasks per "
        "cell, 15 query samples per class; the CI is the 95% interval over test "
        "tasks (mean over seeds when several)\n" + notes + "\n" + table + "\n"
    )
    write_section(info["key"], info["title"], body)


def _reproduce(ctx: ReproContext, plan: Plan) -> List[Dict[str, Any]]:
    """Run ``plan`` (:func:`~avalanche_meta.experiments.reproduction.run_plan`),
    then write its rows to ``<out>/<section key>/results.json`` (as before the
    table was declared, with the missing runs counted)."""
    run_plan(ctx, plan)
    rows = fewshot_rows(plan, ctx.sweeps[-1])
    out = Path(ctx.out_dir) / plan.info["key"].replace(" ", "_")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


_DATA_NOTE = (
    "- data: the offline Omniglot subsets, **not the full Omniglot**: meta-training "
    "on the 136 characters of `images_background_small1` (Balinese, Early Aramaic, "
    "Greek, Korean, Latin), testing on the 106 characters of the alphabets of "
    "`images_background_small2` that are not in small1 (Japanese katakana, "
    "Sanskrit, Tagalog). The two subsets share Greek and Latin (identical images), "
    "which are removed from the test set so that test alphabets are never seen in "
    "training. The published numbers use 1,200 training characters of all 50 "
    "alphabets (and 60,000-100,000 meta-iterations), so they are an upper "
    "reference, not a pass/fail line.\n"
    "- evaluation: transductive (batch norm uses the statistics of the task's query "
    "set, predicted as one batch), as in the "
    "published MAML and Reptile results; MAML/FO-MAML fine-tune with SGD (their "
    "inner step size, 10 steps), Reptile with Adam (lr of its inner loop, 50 steps "
    "on mini-batches of 5 support samples for 5-way, 10 for 20-way), "
    "transfer with SGD (lr 0.1, 50 steps) on a new zero-initialised head.\n"
    "- methods: MAML + aug adds 90/180/270-degree rotations of every training "
    "character as new classes and rotates a whole task by 90 or 270 degrees with "
    "probability 0.4; the other methods train without augmentation.\n"
    "- full Omniglot (users): `avalanche-meta run maml --benchmark omniglot "
    "--preset paper-5way1shot --bench-opt train=background,evaluation "
    "--bench-opt test=none --bench-opt test_classes=423` (likewise `fomaml`, "
    "`reptile`, presets `paper-5way5shot`, `paper-20way1shot`; `reptile` also has "
    "`paper-20way5shot` and `paper-5way1shot-transductive`, and its presets are "
    "Nichol et al.'s commands, non-transductive unless named so); not run here.\n"
)


@register_reproduction(
    "fewshot-omniglot",
    help="transfer, FO-MAML, MAML, MAML + task augmentation, Reptile on offline "
    "Omniglot: 5-way 1-shot, 5-way 5-shot, 20-way 1-shot",
)
def reproduce_fewshot_omniglot(ctx: ReproContext) -> None:
    """The few-shot Omniglot table (short budgets, :data:`BUDGETS`; see the
    section's notes). The runs are :func:`plan_fewshot_omniglot`, the table
    :func:`table_fewshot`; ``--only`` keys: see the module docstring."""
    _reproduce(ctx, plan_fewshot_omniglot(ctx))


@register_reproduction(
    "fewshot-omniglot-5w1s",
    help="a longer 5-way 1-shot run of the five methods on offline Omniglot",
)
def reproduce_fewshot_omniglot_5w1s(ctx: ReproContext) -> None:
    """5-way 1-shot only, with larger budgets than ``fewshot-omniglot``
    (:data:`BUDGETS`). The runs are :func:`plan_fewshot_omniglot_5w1s`, the table
    :func:`table_fewshot`; ``--only`` keys: see the module docstring."""
    _reproduce(ctx, plan_fewshot_omniglot_5w1s(ctx))
