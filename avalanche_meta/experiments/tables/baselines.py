"""Reproduction ``baselines-split-digits``: Avalanche's baselines on split digits.

Declared as data: :func:`plan_baselines_split_digits` lists the runs (one
:class:`~avalanche_meta.experiments.config.RunConfig` per strategy, scenario and seed,
the same configurations as ``avalanche-meta compare``, so either reuses the other's
runs) and :func:`table_baselines_split_digits` turns the finished runs of a store
into the table.
"""

from __future__ import annotations

from typing import List

from avalanche_meta.experiments.context import ReproContext
from avalanche_meta.experiments.registry import register_reproduction
from avalanche_meta.experiments.reproduction import Plan, PlannedRun, run_plan, values
from avalanche_meta.experiments.runner import mean_std
from avalanche_meta.experiments.sweep import SweepResult

#: Published split-MNIST average accuracies (SPEC section 5, [R]: van de Ven &
#: Tolias' three-scenarios paper). Split digits is a different (smaller, 8x8) data
#: set: these are a reference for the ordering, not a target.
PUBLISHED_SPLIT_MNIST = {
    "class": {
        "naive": 19.90,
        "ewc": 20.01,
        "si": 19.99,
        "lwf": 23.85,
        "joint": 97.94,
    },
    "task": {"naive": 87.19, "ewc": 98.64, "si": 99.09, "lwf": 99.57},
}

BASELINES = ("naive", "replay", "ewc", "si", "lwf", "agem", "joint")


def plan_baselines_split_digits(ctx: ReproContext) -> Plan:
    """The runs of ``baselines-split-digits``: :data:`BASELINES` x scenarios x seeds
    with the built-ins' defaults (``--quick``: Class-IL only, 3 seeds; else both
    scenarios, 5 seeds, or ``--seeds``)."""
    from avalanche_meta.experiments.config import resolve_run_config

    seeds = ctx.seeds or (3 if ctx.quick else 5)
    scenarios = ("class",) if ctx.quick else ("class", "task")
    runs: List[PlannedRun] = [
        PlannedRun(
            resolve_run_config(name, "split-digits", scenario=scenario, seed=seed),
            label=name,
            group=scenario,
        )
        for scenario in scenarios
        for name in BASELINES
        for seed in range(seeds)
    ]
    return Plan(
        "baselines-split-digits",
        runs,
        table=table_baselines_split_digits,
        write=_write_baselines,
        info=dict(quick=ctx.quick, seeds=seeds, command=ctx.command),
    )


def table_baselines_split_digits(plan: Plan, result: SweepResult) -> str:
    """One table per scenario (mean ± sample std over the seeds the store holds)."""
    lines: List[str] = []
    for scenario in plan.groups():
        lines.append(f"\n### {scenario.capitalize()}-IL\n")
        lines.append(
            "| strategy | average accuracy | learning accuracy | forgetting | "
            "train (s) | published split-MNIST |"
        )
        lines.append("|---|---|---|---|---|---|")
        for name in plan.labels(scenario):
            runs = plan.cell(result, scenario, name)
            cells = []
            for key in ("average_accuracy", "learning_accuracy", "forgetting"):
                m, s = mean_std(values(runs, key))
                cells.append("n/a" if m is None else f"{m:.2f} ± {s:.2f}")
            t = mean_std(values(runs, "train_seconds"))[0]
            pub = PUBLISHED_SPLIT_MNIST[scenario].get(name)
            gone = sum(r is None for r in runs)
            lines.append(
                f"| {name} | {' | '.join(cells)} | "
                f"{'n/a' if t is None else f'{t:.1f}'} | "
                f"{'—' if pub is None else f'{pub:.2f}'} |"
                + (f" ({gone} run(s) missing)" if gone else "")
            )
    return "\n".join(lines)


def _write_baselines(plan: Plan, result: SweepResult, table: str) -> None:
    from avalanche_meta.experiments.results_doc import provenance, write_section

    seeds, quick = plan.info["seeds"], plan.info["quick"]
    lines = [
        provenance(plan.info["command"]),
        f"Split digits (scikit-learn's 8x8 digits, 5 experiences of 2 digits, 70/30 "
        f"split), built-in defaults (MLP 400-400, Adam 1e-3, 10 epochs, batch 32, "
        f"replay 200 examples, A-GEM 40 per experience). Mean ± sample standard "
        f"deviation over seeds 0-{seeds - 1} of the average accuracy (mean over "
        f"tasks of the final row of the accuracy matrix), in percent. The "
        f"published column is split **MNIST** (a different data set, [R]), "
        f"given for the ordering only.\n",
        table,
    ]
    not_run = ["split MNIST itself (see the BI-R reproduction)"]
    if quick:
        not_run.insert(0, "Task-IL (only with the full command, without --quick)")
    missing = plan.missing_lines(result)
    if missing:
        not_run += missing
    lines.append("\nNot run here: " + "; ".join(not_run) + ".")
    write_section(
        f"reproduce baselines-split-digits{' --quick' if quick else ''}",
        "Avalanche baselines on split digits" + (" (quick)" if quick else ""),
        "\n".join(lines),
    )


@register_reproduction(
    "baselines-split-digits",
    help="Avalanche's baselines (naive, replay, EWC, SI, LwF, A-GEM, joint) on split "
    "digits, Class-IL and Task-IL, beside the published split-MNIST figures",
)
def reproduce_baselines_split_digits(ctx: ReproContext) -> None:
    """Avalanche's baselines on split digits, one section of the results document.

    ``--quick``: Class-IL only, 3 seeds. Otherwise both scenarios, 5 seeds (or
    ``--seeds``). Hyper-parameters are the built-ins' defaults. The runs are
    :func:`plan_baselines_split_digits`, the table
    :func:`table_baselines_split_digits`.
    """
    run_plan(ctx, plan_baselines_split_digits(ctx))
