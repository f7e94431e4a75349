"""Few-shot meta-learning builders: MAML, FO-MAML, Reptile, transfer, Omniglot.

Registered names:

- benchmarks ``omniglot`` (meta-train on one set of alphabets, test on characters of
  alphabets never seen in training) and ``omniglot-continual`` (experiences are
  groups of alphabets; few-shot accuracy on held-out characters of every group);
- strategies ``maml``, ``fomaml``, ``reptile``, ``transfer`` (few-shot evaluation by
  :class:`~avalanche_meta.evaluation.fewshot.FewShotAccuracy`; the accuracy matrix
  of ``run`` holds few-shot accuracies, and ``fewshot.json`` in the run folder adds
  the 95% confidence intervals);
- reproductions ``fewshot-omniglot`` (the three settings, five methods) and
  ``fewshot-omniglot-5w1s`` (a longer 5-way 1-shot run), in
  :mod:`avalanche_meta.experiments.tables.fewshot`;
- bench ``maml`` (:mod:`avalanche_meta.experiments.benches.maml`): meta-training tasks
  per second of :class:`MAML` against a bare learn2learn loop over the same tasks and
  model.

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

    avalanche-meta run reptile --benchmark omniglot --preset paper-20way1shot \\
        --bench-opt train=background,evaluation --bench-opt test=none \\
        --bench-opt test_classes=423
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Union
from torch import nn
from avalanche_meta.benchmarks.base import BenchmarkInfo
from avalanche_meta.experiments.context import RunContext
from avalanche_meta.experiments.registry import (
    Param,
    register_benchmark,
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


def fit_fewshot(ctx: RunContext, strategy, info: BenchmarkInfo) -> Dict[str, Any]:
    """Train on each experience, few-shot evaluate the whole test stream after it.

    The few-shot accuracies fill the run's accuracy matrix (so ``run`` / ``compare``
    report them); the same figures with their 95% confidence intervals are returned
    as ``{"fewshot": ...}`` (the runner adds them to ``results.json``) and written to
    ``fewshot.json`` in the run folder, beside the meta-trained model
    (``fewshot_model.pt`` + ``fewshot_model.json``, read back by
    :func:`avalanche_meta.fewshot.load`).

    :return: ``{"fewshot": {"unit": "fraction", "settings": ..., "accuracy_matrix":
        R, "ci95_matrix": CI}}`` (``R[i][j]``: mean accuracy over the test tasks of
        evaluation experience ``j`` after training experience ``i``; ``CI[i][j]``:
        the half-width of its 95% confidence interval over those tasks).
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
    payload = {
        "unit": "fraction",
        "settings": {**metric.kwargs, "continue_adam": metric.continue_adam},
        "accuracy_matrix": metric.matrix,
        "ci95_matrix": metric.ci_matrix,
    }
    if ctx.out_dir is not None:
        Path(ctx.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(ctx.out_dir) / "fewshot.json").write_text(
            json.dumps(payload, indent=2) + "\n"
        )
        # The meta-trained model and its adaptation rule, for use on a user's own
        # task: ``avalanche_meta.fewshot.load(out_dir)``.
        from avalanche_meta.fewshot import save

        save(strategy, ctx.out_dir, info={"benchmark": info.name, "seed": ctx.seed})
    return {"fewshot": payload}


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
