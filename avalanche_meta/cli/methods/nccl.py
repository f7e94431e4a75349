"""Command line of NCCL (neuron calibration): ``avalanche-meta run nccl``, its ablations,
``avalanche-meta reproduce nccl [--quick]`` and ``avalanche-meta bench nccl``.

``nccl`` is only the command-line alias: the strategy is
:class:`avalanche_meta.strategies.NeuronCalibration` (torch's distributed backend is
also called "nccl").
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from avalanche_meta.cli.context import BenchContext, ReproContext, RunContext
from avalanche_meta.cli.registry import (
    Param,
    register_bench,
    register_benchmark,
    register_reproduction,
)
from avalanche_meta.cli.registry import register_strategy
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


# --------------------------------------------------------------------------------
# Reproduction
# --------------------------------------------------------------------------------
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
    run).
    """
    from avalanche_meta.cli import registry

    registry.load_all()
    seeds = ctx.seeds or (1 if ctx.quick else 3)
    lr = 0.1
    rows: List[Dict[str, Any]] = []
    skipped: List[str] = []
    reused: List[str] = []
    reuse_only = bool(ctx.extra.get("reuse_only"))
    reuse = (
        reuse_only
        or bool(ctx.extra.get("reuse_runs"))
        or os.environ.get("AVALANCHE_META_REUSE_RUNS", "") not in ("", "0")
    )
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
            results = []
            for seed in range(seeds):
                t0 = time.perf_counter()
                run_dir = (
                    ctx.out_dir
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
                try:
                    res = _reusable(run_dir, name, stream, seed, hp) if reuse else None
                    if res is not None:
                        reused.append(str(run_dir))
                    elif reuse_only:
                        skipped.append(
                            f"{label} on {stream['benchmark']} "
                            f"({stream['scenario']}-IL) seed {seed}: not run (this "
                            "table only collects finished runs, `reuse_only`)"
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
                            out_dir=run_dir,
                        )
                except Exception as err:  # noqa: BLE001 - reported in the table
                    skipped.append(
                        f"{label} on {stream['benchmark']} "
                        f"({stream['scenario']}-IL) seed {seed}: "
                        f"{type(err).__name__}: {err}"
                    )
                    continue
                results.append(res)
                print(
                    f"[nccl] {label:28s} {stream['benchmark']}/{stream['scenario']} "
                    f"seed {seed}: acc {res['average_accuracy']:.2f} "
                    f"forgetting {res['forgetting']:.2f} "
                    f"({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
            if results:
                rows.append(
                    {
                        "stream": f"{stream['benchmark']} ({stream['scenario']}-IL)",
                        "method": label,
                        "hparams": hp,
                        "seeds": len(results),
                        "acc": _mean_std([r["average_accuracy"] for r in results]),
                        "fgt": _mean_std([r["forgetting"] for r in results]),
                        "time": _mean_std([r["train_seconds"] for r in results]),
                    }
                )
    partial = bool(scenarios or wanted or test_samples)
    _write_repro(ctx, rows, skipped, seeds, reused, partial, test_samples)


def _write_repro(
    ctx: ReproContext,
    rows,
    skipped,
    seeds,
    reused,
    partial: bool = False,
    test_samples: int = 0,
) -> None:
    from avalanche_meta.cli.results_doc import provenance, write_section

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
    lines += [
        "| stream | method | avg acc (%) | forgetting (%) | train time (s) | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['stream']} | {r['method']} | {_fmt(*r['acc'])} | {_fmt(*r['fgt'])} "
            f"| {_fmt(*r['time'])} | {r['seeds']} |"
        )
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


# --------------------------------------------------------------------------------
# Bench
# --------------------------------------------------------------------------------
#: Alternating timing rounds of the forward bench (the best of each is kept).
ROUNDS = 11


def _forward_ratio(
    make: Callable[[], nn.Module], x: torch.Tensor, repeats: int, grad: bool = False
):
    """Best-of-``ROUNDS`` times of the plain and the calibrated model, measured
    alternately (the machine is shared: alternating keeps both under the same load)."""
    from avalanche_meta.models.calibration import calibrate

    torch.manual_seed(0)
    plain = make().eval()
    torch.manual_seed(0)
    calibrated = calibrate(make().eval())
    best = [float("inf"), float("inf")]
    with torch.set_grad_enabled(grad):
        for model in (plain, calibrated):  # warm-up
            model(x)
        for _ in range(ROUNDS):
            for i, model in enumerate((plain, calibrated)):
                t0 = time.perf_counter()
                for _ in range(repeats):
                    model(x)
                best[i] = min(best[i], (time.perf_counter() - t0) / repeats)
    return best[0], best[1]


def _tiny_stream(n_tasks: int, per_task: int, seed: int):
    """Permuted-MNIST-shaped random stream (784 inputs, 10 classes), in memory."""
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset

    g = torch.Generator().manual_seed(seed)
    xs, ys, ts = [], [], []
    protos = torch.randn(10, 784, generator=g)
    for t in range(n_tasks):
        perm = torch.randperm(784, generator=g)
        y = torch.randint(0, 10, (per_task,), generator=g)
        x = (protos[y] + torch.randn(per_task, 784, generator=g))[:, perm]
        xs.append(x), ys.append(y), ts.append(torch.full_like(y, t))
    from avalanche.benchmarks import benchmark_from_datasets

    exps = [
        _make_taskaware_tensor_classification_dataset(x, y, task_labels=t.tolist())
        for x, y, t in zip(xs, ys, ts)
    ]
    return benchmark_from_datasets(train=exps, test=exps)


@register_bench("nccl", help="NCCL vs ER time per batch; calibrated vs plain forward")
def bench_nccl(ctx: BenchContext) -> Dict[str, Any]:
    """Time per incoming batch of 10 of NCCL (first and second order) and ER on the
    same stream, and forward time of calibrated vs plain models (ratio, target <= 1.3).
    """
    from avalanche.benchmarks import split_online_stream
    from avalanche.logging import TextLogger
    from avalanche.training.plugins import EvaluationPlugin
    import io

    from avalanche_meta.models import MLP, ReducedResNet18
    from avalanche_meta.strategies import NeuronCalibration
    from avalanche_meta.strategies.er import ER

    torch.set_num_threads(1)
    n_tasks, per_task = (2, 200) if ctx.quick else (3, 500)
    out: Dict[str, Any] = {}

    def run(build) -> float:
        torch.manual_seed(0)
        bm = _tiny_stream(n_tasks, per_task, seed=0)
        strategy = build()
        n_batches = 0
        t0 = time.perf_counter()
        for exp in bm.train_stream:
            stream = split_online_stream(
                [exp], experience_size=10, access_task_boundaries=True
            )
            strategy.train(stream)
            n_batches += (len(exp.dataset) + 9) // 10
        return (time.perf_counter() - t0) / n_batches

    def evaluator():
        return EvaluationPlugin(loggers=[TextLogger(io.StringIO())])

    def nccl(second_order: bool):
        def build():
            model = MLP(784, (100, 100), 10)
            return NeuronCalibration(
                model=model,
                optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                scenario="class",
                mem_size=100,
                second_order=second_order,
                evaluator=evaluator(),
            )

        return build

    def er():
        model = MLP(784, (100, 100), 10)
        return ER(
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            mem_size=100,
            replay_batch_size=10,
            scenario="class",
            train_mb_size=10,
            evaluator=evaluator(),
        )

    t_er = run(er)
    t_fo = run(nccl(False))
    t_so = run(nccl(True))
    out["stream"] = (
        f"{n_tasks} tasks x {per_task} examples, batch 10, MLP 784-100-100-10, memory 100"
    )
    out["er_ms_per_batch"] = 1e3 * t_er
    out["nccl_first_order_ms_per_batch"] = 1e3 * t_fo
    out["nccl_second_order_ms_per_batch"] = 1e3 * t_so
    out["nccl_first_order_over_er"] = t_fo / t_er
    out["nccl_second_order_over_er"] = t_so / t_er

    reps = 50 if ctx.quick else 200
    forward_cases = [
        (
            "MLP 784-100-100-10, batch 10",
            lambda: MLP(784, (100, 100), 10),
            torch.randn(10, 784),
        ),
        (
            "MLP 784-100-100-10, batch 512",
            lambda: MLP(784, (100, 100), 10),
            torch.randn(512, 784),
        ),
        (
            "reduced ResNet-18 (nf 20), 3x32x32, batch 10",
            lambda: ReducedResNet18(10),
            torch.randn(10, 3, 32, 32),
        ),
    ]
    out["forward"] = []
    for grad in (False, True):
        for label, make, x in forward_cases:
            r = reps if "MLP" in label else max(reps // 20, 3)
            t_plain, t_cal = _forward_ratio(make, x, r, grad=grad)
            out["forward"].append(
                {
                    "model": label,
                    "mode": "with autograd" if grad else "no_grad (evaluation)",
                    "plain_ms": 1e3 * t_plain,
                    "calibrated_ms": 1e3 * t_cal,
                    "ratio": t_cal / t_plain,
                }
            )
    _write_bench(ctx, out)
    return out


def _write_bench(ctx: BenchContext, out: Dict[str, Any]) -> None:
    from avalanche_meta.cli.results_doc import provenance, write_section

    lines = [
        provenance(
            ctx.command or f"avalanche-meta bench nccl{' --quick' if ctx.quick else ''}"
        ),
        "",
        f"Training time per incoming batch of 10 on the same stream ({out['stream']}), "
        "one thread, wall time of the whole stream divided by the number of batches:",
        "",
        "| strategy | ms per batch | ratio to ER |",
        "|---|---|---|",
        f"| ER (per-example replay, 10 SGD steps of 10 per batch) | {out['er_ms_per_batch']:.2f} | 1.00 |",
        f"| NCCL first order (defaults: 5 inner steps of 10 + 50 memories, outer "
        f"step) | "
        f"{out['nccl_first_order_ms_per_batch']:.2f} | {out['nccl_first_order_over_er']:.2f} |",
        f"| NCCL second order | {out['nccl_second_order_ms_per_batch']:.2f} | "
        f"{out['nccl_second_order_over_er']:.2f} |",
        "",
        "Forward pass, calibrated model (WCM + FCM) vs the plain one (eval mode, best "
        f"of {ROUNDS} alternating timings; target ratio <= 1.3). Under ``no_grad`` a "
        "calibrated layer runs one plain kernel on its folded weight; with autograd "
        "(training) a linear layer computes ``W x`` and scales its output "
        "(``psi * Wx + b + psi_bias``: two small operations more than the plain "
        "layer; a linear layer has no separate ``lam``, which would be the same "
        "per-output scale), a convolution forms ``psi * W`` (its ``psi`` is per "
        "input and output channel) and scales its output by ``lam``:",
        "",
        "| model | mode | plain (ms) | calibrated (ms) | ratio |",
        "|---|---|---|---|---|",
    ]
    for f in out["forward"]:
        lines.append(
            f"| {f['model']} | {f['mode']} | {f['plain_ms']:.3f} | {f['calibrated_ms']:.3f} "
            f"| {f['ratio']:.2f} |"
        )
    lines += [
        "",
        "The stream is synthetic (random prototypes, permuted per task) so that the bench "
        "needs no data; the work per batch depends only on the shapes.",
    ]
    body = "\n".join(lines) + "\n"
    print(body)
    if ctx.write_results:
        write_section(
            "bench nccl" + (" --quick" if ctx.quick else ""),
            "NCCL: time per batch and calibrated forward overhead",
            body,
        )
