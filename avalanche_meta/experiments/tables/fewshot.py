"""Reproductions ``fewshot-omniglot`` and ``fewshot-omniglot-5w1s``: transfer,
FO-MAML, MAML, MAML + task augmentation and Reptile on offline Omniglot.

These run in the reproduction's process on one shared benchmark (their results are
few-shot accuracies with confidence intervals, not run-store runs yet).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple
import torch
from avalanche_meta.benchmarks.base import BenchmarkInfo
from avalanche_meta.experiments.context import ReproContext, RunContext
from avalanche_meta.experiments.registry import register_reproduction

# --------------------------------------------------------------------------------
# Reproduction
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
    """Train one registered few-shot strategy on ``info`` and few-shot evaluate it.

    :return: ``(FewShotResult of the last test experience, train seconds, eval
        seconds)``.
    """
    import io

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


def _fmt(mean: float, ci: float) -> str:
    return f"{100 * mean:.1f} ± {100 * ci:.1f}"


def write_table(
    command: str,
    key: str,
    title: str,
    rows: List[Dict[str, Any]],
    *,
    seeds: int,
    eval_tasks: int,
    notes: str,
) -> None:
    """Write the rows of a few-shot reproduction as a section of the results
    document (through :func:`~avalanche_meta.experiments.results_doc.write_section`)."""
    from avalanche_meta.experiments.results_doc import provenance, write_section

    lines = [
        "| setting | method | accuracy ± 95% CI (%) | published (%) | train (s) | "
        "eval (s) | hyper-parameters |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        hp_text = ", ".join(
            f"{k}={v}" for k, v in r["hparams"].items() if not k.startswith("eval")
        )
        lines.append(
            f"| {r['setting']} | {r['method']} | {_fmt(r['accuracy'], r['ci95'])} "
            f"| {r['published']} | {r['train_seconds']:.0f} | "
            f"{r['eval_seconds']:.0f} | {hp_text} |"
        )
    body = (
        provenance(command)
        + f"- seeds: {seeds}; {eval_tasks} test tasks per cell, 15 query "
        "samples per class; the CI is the 95% interval over test tasks "
        "(mean over seeds when several)\n" + notes + "\n" + "\n".join(lines) + "\n"
    )
    write_section(key, title, body)


def _reproduce(
    ctx: ReproContext,
    *,
    key: str,
    title: str,
    settings: Sequence[str],
    budget: Dict[str, int],
    notes: str,
) -> List[Dict[str, Any]]:
    from avalanche_meta.benchmarks.omniglot import omniglot_fewshot

    torch.set_num_threads(1)
    seeds = ctx.seeds or 1
    info = omniglot_fewshot(data_root=ctx.data_root)
    rows: List[Dict[str, Any]] = []
    for setting in settings:
        for method in METHODS:
            name, hp = _method_hparams(method, setting, budget)
            accs, cis, t_train, t_eval = [], [], 0.0, 0.0
            for seed in range(seeds):
                res, tt, te = run_fewshot_method(
                    info, name, hp, seed=seed, device=ctx.device
                )
                accs.append(res.mean)
                cis.append(res.ci95)
                t_train, t_eval = t_train + tt, t_eval + te
                print(
                    f"{setting:>14} {method:<10} seed {seed}: {res}  "
                    f"(train {tt:.0f}s, eval {te:.0f}s)",
                    flush=True,
                )
            row = {
                "setting": setting,
                "method": method,
                "strategy": name,
                "hparams": {k: v for k, v in hp.items()},
                "accuracy": sum(accs) / len(accs),
                "ci95": sum(cis) / len(cis),
                "per_seed": accs,
                "train_seconds": t_train / seeds,
                "eval_seconds": t_eval / seeds,
                "published": PUBLISHED.get((setting, method), "—"),
            }
            rows.append(row)
    out = Path(ctx.out_dir) / key.replace(" ", "_")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    if ctx.write_results:
        load = os.getloadavg()[1] if hasattr(os, "getloadavg") else float("nan")
        notes += (
            f"- seconds are wall-clock on a shared machine (load average "
            f"{load:.1f} over the last 5 minutes of the run): compare them within "
            "a table only\n"
        )
        write_table(
            ctx.command or f"avalanche-meta reproduce {key}",
            key,
            title,
            rows,
            seeds=seeds,
            eval_tasks=budget["eval_tasks"],
            notes=notes,
        )
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
    """The few-shot Omniglot table (short budgets; see the section's notes)."""
    if ctx.quick:
        budget = dict(
            epochs=3,
            maml_iterations=40,
            maml_batch=8,
            reptile_iterations=300,
            eval_tasks=100,
        )
    else:
        budget = dict(
            epochs=20,
            maml_iterations=600,
            maml_batch=16,
            reptile_iterations=4000,
            eval_tasks=600,
        )
    notes = _DATA_NOTE + (
        f"- budget: transfer {budget['epochs']} epochs; MAML/FO-MAML "
        f"{budget['maml_iterations']} meta-iterations of {budget['maml_batch']} tasks "
        f"(paper: 60,000 of 32, or 16 for 20-way); Reptile "
        f"{budget['reptile_iterations']} meta-iterations of 5 tasks (paper: 100,000; "
        "200,000 for 20-way).\n"
    )
    key = "reproduce fewshot-omniglot" + (" --quick" if ctx.quick else "")
    _reproduce(
        ctx,
        key=key,
        title="Few-shot Omniglot: transfer, FO-MAML, MAML, MAML + aug, Reptile"
        + (" (--quick)" if ctx.quick else ""),
        settings=tuple(SETTINGS),
        budget=budget,
        notes=notes,
    )


@register_reproduction(
    "fewshot-omniglot-5w1s",
    help="a longer 5-way 1-shot run of the five methods on offline Omniglot",
)
def reproduce_fewshot_omniglot_5w1s(ctx: ReproContext) -> None:
    """5-way 1-shot only, with larger budgets than ``fewshot-omniglot``."""
    budget = dict(
        epochs=10,
        maml_iterations=600,
        maml_batch=8,
        reptile_iterations=600,
        eval_tasks=600,
    )
    if ctx.quick:
        budget.update(
            maml_iterations=150, reptile_iterations=300, epochs=5, eval_tasks=200
        )
    notes = _DATA_NOTE + (
        f"- budget: transfer {budget['epochs']} epochs; MAML/FO-MAML "
        f"{budget['maml_iterations']} meta-iterations of {budget['maml_batch']} tasks "
        f"(paper: 60,000 of 32); Reptile {budget['reptile_iterations']} "
        "meta-iterations of 5 tasks (paper: 100,000).\n"
    )
    key = "reproduce fewshot-omniglot-5w1s" + (" --quick" if ctx.quick else "")
    _reproduce(
        ctx,
        key=key,
        title="Few-shot Omniglot 5-way 1-shot, longer run"
        + (" (--quick)" if ctx.quick else ""),
        settings=("5-way 1-shot",),
        budget=budget,
        notes=notes,
    )
