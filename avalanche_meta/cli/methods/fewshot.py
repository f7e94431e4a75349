"""Command-line wiring of few-shot meta-learning: MAML, FO-MAML, Reptile, transfer.

Registered names:

- benchmarks ``omniglot`` (meta-train on one set of alphabets, test on characters of
  alphabets never seen in training) and ``omniglot-continual`` (experiences are
  groups of alphabets; few-shot accuracy on held-out characters of every group);
- strategies ``maml``, ``fomaml``, ``reptile``, ``transfer`` (few-shot evaluation by
  :class:`~avalanche_meta.evaluation.fewshot.FewShotAccuracy`; the accuracy matrix
  of ``run`` holds few-shot accuracies, and ``fewshot.json`` in the run folder adds
  the 95% confidence intervals);
- reproductions ``fewshot-omniglot`` (the three settings, five methods) and
  ``fewshot-omniglot-5w1s`` (a longer 5-way 1-shot run);
- bench ``maml``: meta-training tasks per second of :class:`MAML` against a bare
  learn2learn loop over the same tasks and model.

The full Omniglot (for users who have ``images_background`` and
``images_evaluation`` in ``<data root>/omniglot``), MAML's protocol (1,200 training
characters, 423 test characters, rotations as classes, 60,000 meta-iterations)::

    avalanche-meta run maml --benchmark omniglot --preset paper-5way1shot \\
        --bench-opt train=background,evaluation --bench-opt test=none \\
        --bench-opt test_classes=423

Reptile's presets are Nichol et al.'s Omniglot commands (supervised-reptile README),
e.g. 20-way 1-shot (inner batch 20, 10 inner Adam steps of 5e-4, 200,000
meta-iterations, evaluation with 50 steps on batches of 10 and each query predicted
with the support set alone, ``eval_transductive`` false)::

    avalanche-meta run reptile --benchmark omniglot --preset paper-20way1shot \
        --bench-opt train=background,evaluation --bench-opt test=none \
        --bench-opt test_classes=423
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from avalanche_meta.benchmarks.base import BenchmarkInfo
from avalanche_meta.cli.context import BenchContext, ReproContext, RunContext
from avalanche_meta.cli.registry import (
    Param,
    register_bench,
    register_benchmark,
    register_reproduction,
    register_strategy,
)
from avalanche_meta.utils.validation import check_choice

PathLike = Union[str, Path, None]


# --------------------------------------------------------------------------------
# Benchmarks
# --------------------------------------------------------------------------------
def _none(value):
    return None if value in (None, "", "none", "None") else value


@register_benchmark(
    "omniglot",
    help="few-shot Omniglot: meta-train on small1's alphabets, test on the unseen "
    "alphabets of small2 (options: train, test, test_classes)",
    scenarios=("class",),
    default_scenario="class",
)
def build_omniglot(
    *,
    scenario: str,
    seed: int,
    data_root: PathLike = None,
    train: str = "small1",
    test: Optional[str] = "small2",
    test_classes: Optional[int] = None,
) -> BenchmarkInfo:
    from avalanche_meta.benchmarks.omniglot import omniglot_fewshot

    return omniglot_fewshot(
        train=train,
        test=_none(test),
        test_classes=_none(test_classes),
        data_root=data_root,
        seed=seed,
    )


@register_benchmark(
    "omniglot-continual",
    help="continual few-shot Omniglot: experiences are groups of alphabets "
    "(options: sources, n_experiences, test_fraction)",
    scenarios=("class",),
    default_scenario="class",
)
def build_omniglot_continual(
    *,
    scenario: str,
    seed: int,
    data_root: PathLike = None,
    sources: str = "small1,small2",
    n_experiences: int = 4,
    test_fraction: float = 0.25,
) -> BenchmarkInfo:
    from avalanche_meta.benchmarks.omniglot import omniglot_continual

    return omniglot_continual(
        sources=sources,
        n_experiences=n_experiences,
        test_fraction=test_fraction,
        data_root=data_root,
        seed=seed,
    )


# --------------------------------------------------------------------------------
# Models, evaluation
# --------------------------------------------------------------------------------
def make_fewshot_model(info: BenchmarkInfo, output_size: int, model: str) -> nn.Module:
    """learn2learn's Omniglot CNN (4 x conv64-BN-ReLU, stride 2; 28x28 inputs) or
    its fully connected network (Santoro et al.)."""
    from avalanche_meta.utils.quiet_import import import_learn2learn

    check_choice("model", model, ("cnn", "fc"))
    l2l = import_learn2learn()
    if model == "cnn":
        if tuple(info.input_shape) != (1, 28, 28):
            raise ValueError(
                f"model 'cnn' (learn2learn's OmniglotCNN) takes 1x28x28 images; the "
                f"benchmark's inputs are {tuple(info.input_shape)}: use --model fc."
            )
        return l2l.vision.models.OmniglotCNN(output_size=output_size)
    return l2l.vision.models.OmniglotFC(
        input_size=info.input_size, output_size=output_size
    )


EVAL_PARAMS: Dict[str, Param] = {
    "eval_ways": (int, None, "N of the test tasks (default: ways)"),
    "eval_shots": (int, 1, "K of the test tasks"),
    "eval_query_shots": (int, 15, "query samples per class of the test tasks"),
    "eval_tasks": (int, 600, "test tasks per evaluation experience"),
    "eval_inner_lr": (
        float,
        None,
        "fine-tuning step size at test (default: the method's)",
    ),
    "eval_inner_steps": (int, 10, "fine-tuning steps on the support set at test"),
    "eval_batch_size": (
        int,
        None,
        "support samples per fine-tuning step at test (default: the whole support "
        "set)",
    ),
    "eval_transductive": (
        bool,
        True,
        "predict the query set as one batch (batch norm on the queries' statistics); "
        "false: each query with the support set, alone (Nichol et al.'s default)",
    ),
    "model": (str, "cnn", "cnn (learn2learn OmniglotCNN) or fc (OmniglotFC)"),
}


def _metric(hp: Dict[str, Any], ways: int, inner_lr: float, optimizer: str = "sgd"):
    """The few-shot metric of the ``eval_*`` hyper-parameters."""
    from avalanche_meta.evaluation.fewshot import FewShotAccuracy

    return FewShotAccuracy(
        ways=hp["eval_ways"] or ways,
        shots=hp["eval_shots"],
        query_shots=hp["eval_query_shots"],
        num_tasks=hp["eval_tasks"],
        inner_lr=hp["eval_inner_lr"] or inner_lr,
        inner_steps=hp["eval_inner_steps"],
        optimizer=optimizer,
        inner_batch_size=hp["eval_batch_size"],
        transductive=hp["eval_transductive"],
        continue_adam=hp.get("eval_continue_adam", False),
    )


def _evaluator(ctx: RunContext, metric):
    """The run's evaluator plus the few-shot metric (same metrics and loggers)."""
    from avalanche.training.plugins import EvaluationPlugin

    return EvaluationPlugin(
        *ctx.evaluator.metrics, metric, loggers=list(ctx.evaluator.loggers)
    )


def fit_fewshot(ctx: RunContext, strategy, info: BenchmarkInfo) -> None:
    """Train on each experience, few-shot evaluate the whole test stream after it.

    The few-shot accuracies fill the run's accuracy matrix (so ``run`` / ``compare``
    report them) and ``fewshot.json`` in the run folder (with the 95% CIs).
    """
    from avalanche_meta.evaluation.metrics import AccuracyMatrix

    metric = strategy.fewshot_metric
    test_stream = info.benchmark.test_stream
    for exp in info.benchmark.train_stream:
        strategy.train(exp)
        strategy.eval(test_stream)
    rows = {
        i: {j: v for j, v in enumerate(row) if v is not None}
        for i, row in enumerate(metric.matrix)
    }
    initial = {j: r.mean for j, r in metric.initial.items()}
    for m in ctx.evaluator.metrics:
        if isinstance(m, AccuracyMatrix):
            m.load_state_dict(
                {"rows": rows, "initial": initial, "trained": len(rows) - 1}
            )
    if ctx.out_dir is not None:
        Path(ctx.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(ctx.out_dir) / "fewshot.json").write_text(
            json.dumps(
                {
                    "unit": "fraction",
                    "settings": {
                        **metric.kwargs,
                        "continue_adam": metric.continue_adam,
                    },
                    "accuracy_matrix": metric.matrix,
                    "ci95_matrix": metric.ci_matrix,
                },
                indent=2,
            )
            + "\n"
        )


# --------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------
MAML_PARAMS: Dict[str, Param] = {
    "ways": (int, 5, "N, classes per training task"),
    "shots": (int, 1, "K, support samples per class"),
    "query_shots": (int, None, "query samples per class (default: shots)"),
    "inner_lr": (float, 0.4, "inner SGD step size"),
    "inner_steps": (int, 1, "inner SGD steps per task"),
    "meta_batch_size": (int, 32, "tasks per meta-update"),
    "meta_lr": (float, 1e-3, "Adam step size of the meta-update"),
    "meta_iterations": (int, 60000, "meta-updates per training experience"),
    "class_rotations": (bool, False, "90/180/270-degree rotations as new classes"),
    "task_rotation_prob": (float, 0.0, "probability of rotating a whole task"),
    **EVAL_PARAMS,
}


def _maml_paper(ways: int, shots: int) -> Dict[str, Any]:
    """Finn et al.'s Omniglot settings (SPEC.md section 4)."""
    five = ways == 5
    return {
        "ways": ways,
        "shots": shots,
        "eval_shots": shots,
        "inner_lr": 0.4 if five else 0.1,
        "inner_steps": 1 if five else 5,
        "meta_batch_size": 32 if five else 16,
        "meta_lr": 1e-3,
        "meta_iterations": 60000,
        "eval_inner_lr": 0.4 if five else 0.1,
        "eval_inner_steps": 10,
        "eval_transductive": True,
        "class_rotations": True,
    }


MAML_PRESETS: Dict[str, Dict[str, Any]] = {
    "paper-5way1shot": _maml_paper(5, 1),
    "paper-5way5shot": _maml_paper(5, 5),
    "paper-20way1shot": _maml_paper(20, 1),
    "quick": {"meta_iterations": 50, "meta_batch_size": 8, "eval_tasks": 100},
}


def _build_maml(ctx: RunContext, first_order: bool, hp: Dict[str, Any]):
    from avalanche_meta.strategies.maml import MAML

    model = make_fewshot_model(ctx.info, hp["ways"], hp["model"]).to(ctx.device)
    metric = _metric(hp, hp["ways"], hp["inner_lr"])
    strategy = MAML(
        model=model,
        meta_lr=hp["meta_lr"],
        ways=hp["ways"],
        shots=hp["shots"],
        query_shots=hp["query_shots"],
        inner_lr=hp["inner_lr"],
        inner_steps=hp["inner_steps"],
        meta_batch_size=hp["meta_batch_size"],
        meta_iterations=hp["meta_iterations"],
        first_order=first_order,
        class_rotations=hp["class_rotations"],
        task_rotation_prob=hp["task_rotation_prob"],
        device=ctx.device,
        evaluator=_evaluator(ctx, metric),
    )
    strategy.fewshot_metric = metric
    return strategy


@register_strategy(
    "maml",
    help="MAML (Finn et al. 2017) on N-way K-shot tasks of each experience",
    scenarios=("class",),
    params=MAML_PARAMS,
    presets=MAML_PRESETS,
    fit=fit_fewshot,
)
def build_maml(ctx: RunContext, **hp):
    return _build_maml(ctx, False, hp)


@register_strategy(
    "fomaml",
    help="first-order MAML on N-way K-shot tasks of each experience",
    scenarios=("class",),
    params=MAML_PARAMS,
    presets=MAML_PRESETS,
    fit=fit_fewshot,
)
def build_fomaml(ctx: RunContext, **hp):
    return _build_maml(ctx, True, hp)


REPTILE_PARAMS: Dict[str, Param] = {
    "ways": (int, 5, "N, classes per training task"),
    "shots": (int, 10, "samples per class of a training task (paper: 10 for 1-shot)"),
    "inner_lr": (float, 1e-3, "inner Adam step size (beta1 = 0)"),
    "inner_steps": (int, 5, "inner Adam steps per task"),
    "inner_batch_size": (int, 10, "samples per inner step"),
    "meta_batch_size": (int, 5, "tasks per meta step"),
    "meta_step_size": (float, 1.0, "epsilon at the start of an experience"),
    "meta_step_size_final": (float, 0.0, "epsilon at its end"),
    "meta_iterations": (int, 100000, "meta steps per training experience"),
    "class_rotations": (bool, False, "90/180/270-degree rotations as new classes"),
    "task_rotation_prob": (float, 0.0, "probability of rotating a whole task"),
    **EVAL_PARAMS,
    "eval_inner_steps": (int, 50, "fine-tuning Adam steps at test (paper: 50)"),
    "eval_continue_adam": (
        bool,
        False,
        "fine-tune at test from the meta-training Adam's moments (Nichol et al.'s "
        "code) instead of a fresh Adam",
    ),
}


def _reptile_paper(ways: int, shots: int, transductive: bool = False) -> Dict[str, Any]:
    """The flags of Nichol et al.'s Omniglot command (supervised-reptile README)."""
    five = ways == 5
    return {
        "ways": ways,  # --classes
        "shots": 10,  # --train-shots 10
        "inner_batch_size": 10 if five else 20,  # --inner-batch
        "inner_steps": 5 if five else 10,  # --inner-iters
        "inner_lr": 1e-3 if five else 5e-4,  # --learning-rate (Adam, beta1 = 0)
        "meta_step_size": 1.0,  # --meta-step
        "meta_step_size_final": 0.0,  # --meta-step-final
        "meta_batch_size": 5,  # --meta-batch
        "meta_iterations": 100000 if five else 200000,  # --meta-iters
        "eval_shots": shots,  # --shots
        "eval_batch_size": 5 if five else 10,  # --eval-batch
        "eval_inner_steps": 50,  # --eval-iters
        "eval_transductive": transductive,  # --transductive
        # their evaluation runs the meta-training Adam (moments restored afterwards)
        "eval_continue_adam": True,
        # their code's defaults: 10,000 test tasks of one query per class
        "eval_tasks": 10000,  # --eval-samples
        "eval_query_shots": 1,
        # rotations of the training characters as new classes (augment_dataset)
        "class_rotations": True,
    }


#: Nichol et al.'s Omniglot commands (supervised-reptile README); only the 5-way
#: 1-shot one is also given with ``--transductive``.
REPTILE_PRESETS: Dict[str, Dict[str, Any]] = {
    "paper-5way1shot": _reptile_paper(5, 1),
    "paper-5way1shot-transductive": _reptile_paper(5, 1, transductive=True),
    "paper-5way5shot": _reptile_paper(5, 5),
    "paper-20way1shot": _reptile_paper(20, 1),
    "paper-20way5shot": _reptile_paper(20, 5),
    "quick": {"meta_iterations": 200, "eval_tasks": 100},
}


@register_strategy(
    "reptile",
    help="Reptile (Nichol et al. 2018) on N-way tasks of each experience",
    scenarios=("class",),
    params=REPTILE_PARAMS,
    presets=REPTILE_PRESETS,
    fit=fit_fewshot,
)
def build_reptile(ctx: RunContext, **hp):
    from avalanche_meta.strategies.reptile import Reptile

    model = make_fewshot_model(ctx.info, hp["ways"], hp["model"]).to(ctx.device)
    metric = _metric(hp, hp["ways"], hp["inner_lr"], optimizer="adam")
    strategy = Reptile(
        model=model,
        inner_lr=hp["inner_lr"],
        ways=hp["ways"],
        shots=hp["shots"],
        inner_steps=hp["inner_steps"],
        inner_batch_size=hp["inner_batch_size"],
        meta_batch_size=hp["meta_batch_size"],
        meta_step_size=hp["meta_step_size"],
        meta_step_size_final=hp["meta_step_size_final"],
        meta_iterations=hp["meta_iterations"],
        class_rotations=hp["class_rotations"],
        task_rotation_prob=hp["task_rotation_prob"],
        device=ctx.device,
        evaluator=_evaluator(ctx, metric),
    )
    strategy.fewshot_metric = metric
    return strategy


TRANSFER_PARAMS: Dict[str, Param] = {
    "lr": (float, 1e-3, "Adam step size of the classification training"),
    "epochs": (int, 10, "passes over each training experience"),
    "batch_size": (int, 64, "training mini-batch size"),
    "eval_ways": (int, 5, "N of the test tasks"),
    **{k: v for k, v in EVAL_PARAMS.items() if k != "eval_ways"},
    "eval_inner_lr": (float, 0.1, "fine-tuning SGD step size at test"),
    "eval_inner_steps": (int, 50, "fine-tuning SGD steps at test"),
}


@register_strategy(
    "transfer",
    help="transfer baseline: classification training, fine-tuning on each test "
    "task's support set",
    scenarios=("class",),
    params=TRANSFER_PARAMS,
    presets={"quick": {"epochs": 3, "eval_tasks": 100}},
    fit=fit_fewshot,
)
def build_transfer(ctx: RunContext, **hp):
    from avalanche_meta.strategies.transfer import TransferLearning

    n_out = ctx.info.extras.get("train_classes", ctx.info.num_classes)
    model = make_fewshot_model(ctx.info, n_out, hp["model"]).to(ctx.device)
    metric = _metric(hp, hp["eval_ways"], hp["eval_inner_lr"])
    strategy = TransferLearning(
        model=model,
        lr=hp["lr"],
        train_mb_size=hp["batch_size"],
        train_epochs=hp["epochs"],
        device=ctx.device,
        evaluator=_evaluator(ctx, metric),
    )
    strategy.fewshot_metric = metric
    return strategy


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

    from avalanche_meta.cli import registry
    from avalanche_meta.cli.runner import resolve_hparams, seed_everything

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
    document (through :func:`~avalanche_meta.cli.results_doc.write_section`)."""
    from avalanche_meta.cli.results_doc import provenance, write_section

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


# --------------------------------------------------------------------------------
# Bench
# --------------------------------------------------------------------------------
@register_bench(
    "maml",
    help="MAML strategy vs a bare learn2learn loop: meta-training tasks per second",
)
def bench_maml(ctx: BenchContext) -> Dict[str, Any]:
    """Meta-training throughput of :class:`MAML` and of a bare learn2learn loop.

    Both train the same OmniglotCNN initialisation on the same pre-sampled 5-way
    1-shot tasks of offline Omniglot (second order, one inner step of 0.4, Adam
    1e-3). The strategy's time is that of ``strategy.train(experience)``: its
    per-experience set-up (reading the experience's tensors, building the task
    sampler) and Avalanche's callbacks are included, task sampling is not (both
    loops get the same ready-made tasks). Runs alternate (bare, strategy, ...) and
    the best of ``repeats`` is kept for each, which filters out the other
    processes sharing the machine.
    """
    import io

    from avalanche.logging import TextLogger
    from avalanche.training.plugins import EvaluationPlugin

    from avalanche_meta.benchmarks.omniglot import omniglot_fewshot
    from avalanche_meta.evaluation.fewshot import FewShotTaskSampler, dataset_tensors
    from avalanche_meta.strategies.maml import MAML
    from avalanche_meta.utils.quiet_import import import_learn2learn

    torch.set_num_threads(1)
    l2l = import_learn2learn()
    info = omniglot_fewshot(data_root=ctx.data_root)
    exp = info.benchmark.train_stream[0]
    iterations, batch, repeats = (5, 8, 3) if ctx.quick else (20, 16, 3)
    x, y = dataset_tensors(exp.dataset)
    sampler = FewShotTaskSampler(x, y, ways=5, shots=1, query_shots=1, seed=0)
    batches = [[sampler.sample() for _ in range(batch)] for _ in range(iterations)]
    torch.manual_seed(0)
    init = l2l.vision.models.OmniglotCNN(output_size=5).state_dict()
    loss_fn = nn.CrossEntropyLoss()

    def bare() -> float:
        model = l2l.vision.models.OmniglotCNN(output_size=5)
        model.load_state_dict(init)
        maml = l2l.algorithms.MAML(model, lr=0.4, first_order=False)
        opt = torch.optim.Adam(maml.parameters(), lr=1e-3)
        t0 = time.perf_counter()
        for tasks in batches:
            opt.zero_grad()
            for t in tasks:
                learner = maml.clone()
                learner.adapt(loss_fn(learner(t.support_x), t.support_y))
                (loss_fn(learner(t.query_x), t.query_y) / len(tasks)).backward()
            opt.step()
        return time.perf_counter() - t0

    def strategy() -> float:
        model = l2l.vision.models.OmniglotCNN(output_size=5)
        model.load_state_dict(init)
        s = MAML(
            model=model,
            ways=5,
            shots=1,
            inner_lr=0.4,
            meta_batch_size=batch,
            meta_iterations=iterations,
            evaluator=EvaluationPlugin(loggers=[TextLogger(io.StringIO())]),
        )
        queue = iter(batches)
        s.sample_tasks = lambda: next(queue)
        t0 = time.perf_counter()
        s.train(exp)
        return time.perf_counter() - t0

    times = {"bare": [], "strategy": []}
    for _ in range(repeats):
        times["bare"].append(bare())
        times["strategy"].append(strategy())
    n_tasks = iterations * batch
    bare_tps = n_tasks / min(times["bare"])
    strat_tps = n_tasks / min(times["strategy"])
    out = {
        "setting": f"5-way 1-shot Omniglot, OmniglotCNN, second order, {iterations} "
        f"meta-iterations x {batch} tasks, best of {repeats}, 1 thread",
        "bare_learn2learn_tasks_per_s": bare_tps,
        "strategy_tasks_per_s": strat_tps,
        "ratio_strategy_over_bare": strat_tps / bare_tps,
        "target": ">= 0.9",
        "all_seconds": times,
    }
    if ctx.write_results:
        from avalanche_meta.cli.results_doc import provenance, write_section

        key = "bench maml" + (" --quick" if ctx.quick else "")
        body = (
            provenance(ctx.command or f"avalanche-meta {key}")
            + f"- setting: {out['setting']}\n"
            + "- what is timed: the strategy's `train(experience)` (set-up and "
            "Avalanche callbacks included) vs a bare learn2learn loop "
            "(`clone()`/`adapt()`, per-task backward, Adam), on the same pre-sampled "
            "tasks and initial weights\n"
            + "- the strategy's per-experience set-up (reading the experience's "
            "tensors, building the task sampler, Avalanche's `train()` bookkeeping, "
            "about 0.1 s) is paid once per `train()` call, so the short `--quick` "
            "run (40 tasks) understates the steady-state ratio of the full run "
            "(320 tasks)\n\n"
            + "| loop | tasks/s |\n|---|---|\n"
            + f"| bare learn2learn | {bare_tps:.1f} |\n"
            + f"| avalanche_meta MAML | {strat_tps:.1f} |\n"
            + f"| ratio (target >= 0.9) | {strat_tps / bare_tps:.3f} |\n"
        )
        write_section(key, "MAML meta-training throughput vs bare learn2learn", body)
    return out
