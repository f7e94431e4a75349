"""NCCL (neuron calibration): builders of ``avalanche-meta run nccl`` and its
ablations (the reproduction is :mod:`avalanche_meta.experiments.tables.nccl`, the
bench :mod:`avalanche_meta.experiments.benches.nccl`).

``nccl`` is only the command-line alias: the strategy is
:class:`avalanche_meta.strategies.NeuronCalibration` (torch's distributed backend is
also called "nccl").
"""

from __future__ import annotations

from typing import Any, Dict, Tuple
import torch
from avalanche_meta.experiments.context import RunContext
from avalanche_meta.experiments.registry import Param, register_benchmark
from avalanche_meta.experiments.registry import register_strategy
from avalanche_meta.utils.validation import check_choice, check_positive

PARAMS: Dict[str, Param] = {
    "lr": (float, 0.1, "SGD learning rate of the base parameters (inner loop)"),
    "hidden": (str, "100,100", "hidden layer widths, comma separated"),
    "mem_size": (int, 500, "episodic memory slots, shared equally by the tasks seen"),
    "mem_batch_size": (int, 50, "memory examples per replay batch"),
    "inner_steps": (int, 5, "SGD steps on the base parameters per incoming batch"),
    "resample_memory": (
        bool,
        True,
        "a new memory batch for every inner step (else one per incoming batch)",
    ),
    "gamma": (float, 2.0, "weight of the memory terms of the inner loss"),
    "reg": (float, 1.0, "weight of the memory distillation KL in the inner loss"),
    "temperature": (float, 2.0, "distillation temperature"),
    "beta": (float, 1.0, "weight of the distillation term of the calibration loss"),
    "consolidation": (float, 1.0, "weight of the Fisher-weighted consolidation term"),
    "calibration_lr": (float, 0.01, "SGD learning rate of psi / lambda (outer loop)"),
    "second_order": (
        bool,
        False,
        "differentiate the outer loss through the inner steps",
    ),
    "grad_clip": (float, 0.0, "gradient norm clipping (0: off)"),
    "wcm": (bool, True, "weight calibration (psi)"),
    "fcm": (bool, True, "feature calibration (lambda)"),
    "combine": (
        str,
        "multiply",
        "FCM combination: multiply (reading code) or add (Eq. 4)",
    ),
    "fcm_position": (
        str,
        "before_bn",
        "FCM before a following batch norm (paper) or after it (after_bn)",
    ),
    "calibration": (
        str,
        "full",
        "calibrated layers: full, hidden (not the output layer), output (the "
        "output layer only), temperature (one scalar logit scale on the output "
        "layer only)",
    ),
    "outer_loop": (bool, True, "run the outer (calibration) update"),
    "online_batch": (int, 10, "examples per online step"),
}


def _parse_hidden(hidden: str) -> Tuple[int, ...]:
    try:
        sizes = tuple(int(h) for h in str(hidden).replace(" ", "").split(",") if h)
    except ValueError:
        sizes = (-1,)
    if any(h < 1 for h in sizes):
        raise ValueError(f"`hidden` must look like '100,100', got {hidden!r}.")
    return sizes


def build_neuron_calibration(ctx: RunContext, **hp) -> Any:
    """A :class:`NeuronCalibration` on the benchmark's single-head MLP."""
    from avalanche_meta.strategies import NeuronCalibration

    check_positive("lr", hp["lr"])
    check_positive("online_batch", hp["online_batch"], integer=True)
    check_choice("combine", hp["combine"], ("multiply", "add"))
    check_choice("fcm_position", hp["fcm_position"], ("before_bn", "after_bn"))
    check_choice(
        "calibration", hp["calibration"], ("full", "hidden", "output", "temperature")
    )
    if ctx.scenario == "task" and not ctx.info.task_labels:
        raise ValueError(
            f"Task-IL needs task labels, and benchmark {ctx.info.name!r} has none in "
            "this configuration: use scenario 'class' or a benchmark with task labels."
        )
    model = ctx.default_model(hidden_sizes=_parse_hidden(hp["hidden"]), multihead=False)
    clip = hp["grad_clip"] or None
    return NeuronCalibration(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=hp["lr"]),
        scenario=ctx.scenario,
        mem_size=hp["mem_size"],
        mem_batch_size=hp["mem_batch_size"],
        inner_steps=hp["inner_steps"],
        resample_memory=hp["resample_memory"],
        gamma=hp["gamma"],
        reg=hp["reg"],
        temperature=hp["temperature"],
        beta=hp["beta"],
        consolidation=hp["consolidation"],
        calibration_lr=hp["calibration_lr"],
        second_order=hp["second_order"],
        grad_clip=clip,
        wcm=hp["wcm"],
        fcm=hp["fcm"],
        combine=hp["combine"],
        fcm_position=hp["fcm_position"],
        calibration=hp["calibration"],
        outer_loop=hp["outer_loop"],
        num_classes=ctx.info.num_classes,
        train_mb_size=hp["online_batch"],
        train_epochs=1,
        eval_mb_size=512,
        device=ctx.device,
        evaluator=ctx.evaluator,
    )


def _register(name: str, help: str, **overrides) -> None:
    params = dict(PARAMS)
    for key, value in overrides.items():
        typ, _, text = params[key]
        params[key] = (typ, value, text)

    def build(ctx: RunContext, **hp):
        return build_neuron_calibration(ctx, **hp)

    build.__name__ = f"build_{name.replace('-', '_')}"
    register_strategy(
        name,
        help=help,
        scenarios=("task", "class", "domain"),
        online=True,
        online_batch=10,
        params=params,
        presets={
            "first-order": {"second_order": False},
            "second-order": {"second_order": True},
        },
    )(build)


_register(
    "nccl",
    "neuron calibration for online CL (NCCL, Yin et al. 2021; NeuronCalibration)",
)
# On an MLP, WCM only and FCM only are both one per-output scale per layer (WCM only
# is the full model there, see avalanche_meta.models.calibration): these two
# ablations are meant for convolutional models.
_register("nccl-wcm", "NCCL ablation: weight calibration only (no lambda)", fcm=False)
_register("nccl-fcm", "NCCL ablation: feature calibration only (no psi)", wcm=False)
_register(
    "nccl-noreg",
    "NCCL ablation: no Fisher-weighted consolidation term",
    consolidation=0.0,
)
_register(
    "nccl-no-outer",
    "NCCL control: outer (calibration) loop off, same inner loop and replay budget",
    outer_loop=False,
)
_register(
    "nccl-temperature",
    "NCCL control: one learned logit scale on the output layer is the only "
    "calibration (same inner and outer loop)",
    calibration="temperature",
)
_register(
    "nccl-hidden",
    "NCCL control: calibration of the hidden layers only (output layer plain)",
    calibration="hidden",
)
_register(
    "nccl-output",
    "NCCL control: calibration of the output layer only (per-unit scales and "
    "calibration bias; hidden layers plain)",
    calibration="output",
)
_register(
    "nccl-er-budget",
    "ER at NCCL's replay budget: NCCL's inner loop (5 SGD steps per incoming batch, "
    "each on the batch and 50 fresh memories) without distillation (reg 0) and "
    "without outer loop",
    outer_loop=False,
    reg=0.0,
)


@register_benchmark(
    "online-permuted-mnist",
    help="MER's MNIST Permutations stream (20 tasks x 1000) in online batches of 10 "
    "(NCCL's protocol)",
    scenarios=("task", "domain"),
    default_scenario="domain",
)
def build_online_permuted_mnist(
    *,
    scenario: str,
    seed: int,
    data_root=None,
    test_samples_per_task: int = 0,
    **options,
):
    """``mnist-permutations`` (same tasks, subsets and test sets) for NCCL's protocol.

    ``test_samples_per_task=N`` (N > 0) evaluates each task on the first ``N``
    images of its permuted MNIST test set instead of all 10,000 (the permutations
    and the training subsets are unchanged): a cheaper evaluation for long tables
    on a busy machine; every method of a table must then use the same ``N``.

    The MER protocol fixes online batches of 1 (``info.online_batch = 1``), which
    the runner imposes on every strategy. Here ``info.online`` is False, so that
    (as on split MNIST) strategies registered ``online=True`` (NCCL, ER, MER) get
    their own online batch (10) and the others train one pass with
    ``batch_size=10`` on whole experiences. Splitting whole experiences for the
    others would break A-GEM's memory budget: it stores ``patterns_per_exp``
    examples per (sub-)experience.
    """
    from avalanche_meta.benchmarks import mnist_permutations

    info = mnist_permutations(
        scenario=scenario, seed=seed, data_root=data_root, **options
    )
    if test_samples_per_task:
        check_positive("test_samples_per_task", test_samples_per_task, integer=True)
        from avalanche_meta.benchmarks.datasets import (
            PixelDataset,
            build_benchmark,
            load_mnist,
        )

        perms = info.extras["permutations"]
        subsets = info.extras["train_indices"]
        x_tr, y_tr, x_te, y_te = load_mnist(data_root)
        n = min(int(test_samples_per_task), int(y_te.shape[0]))
        train = [
            PixelDataset(x_tr, y_tr, indices=idx, permutation=p)
            for p, idx in zip(perms, subsets)
        ]
        test = [
            PixelDataset(x_te, y_te, indices=range(n), permutation=p) for p in perms
        ]
        labels = [exp.task_label for exp in info.benchmark.train_stream]
        info.benchmark = build_benchmark(train, test, labels)
        info.extras["test_samples_per_task"] = n
    info.name = "online-permuted-mnist"
    info.online = False
    info.online_batch = 10
    return info
