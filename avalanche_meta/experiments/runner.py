"""Runs one experiment (a registered strategy on a registered benchmark) or a comparison.

:func:`run_experiment` is what ``avalanche-meta run`` calls and what each run of a
sweep calls; :func:`compare_experiments` (``avalanche-meta compare``) and
:func:`run_stored` (what :meth:`ReproContext.run` calls when it has a store) go
through a run store and an executor (:mod:`avalanche_meta.experiments`), so a
finished run is never redone. They return plain dicts and write them as JSON in the
run folder, with plots.

The protocol: seed torch/numpy/random, build the benchmark, then for each training
experience train on it (as an online stream of small sub-experiences when the
protocol is online) and evaluate on the whole test stream, which fills one row of
the accuracy matrix. An optional eval before any training records the initial
accuracies used by forward transfer. Strategies whose registration has a ``fit``
(e.g. Joint training, the few-shot strategies) run their own loop instead; a dict
the ``fit`` returns is added to the results (the few-shot ``fit`` adds
``"fewshot"``: per-cell means and 95% confidence intervals).
"""

from __future__ import annotations

import inspect
import io
import json
import math
import os
import platform
import random
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from avalanche_meta.experiments import registry

# torch, numpy, Avalanche and the metrics are imported where they are used, so that
# importing this module (and starting the command line) is cheap: ``compare
# --executor processes`` starts its worker processes before this process pays for
# those imports.

#: The summaries ``compare`` tabulates: (results.json key, column title).
SUMMARY_COLUMNS = (
    ("average_accuracy", "avg acc (%)"),
    ("learning_accuracy", "LA (%)"),
    ("bwt", "BWT (%)"),
    ("forgetting", "forgetting (%)"),
    ("train_seconds", "train (s)"),
)


class UsageError(ValueError):
    """Bad input to the runner or the command line (unknown name, bad value)."""


# --------------------------------------------------------------------------------
# Looking things up
# --------------------------------------------------------------------------------
def _known(table: Mapping[str, Any]) -> str:
    return ", ".join(sorted(table)) or "(none registered)"


def get_strategy_spec(name: str) -> registry.StrategySpec:
    """The registered strategy ``name``; a :class:`UsageError` listing the known ones."""
    registry.load_all()
    if name not in registry.STRATEGIES:
        raise UsageError(
            f"unknown strategy {name!r}; known strategies: "
            f"{_known(registry.STRATEGIES)}."
        )
    return registry.STRATEGIES[name]


def get_benchmark_spec(name: str) -> registry.BenchmarkSpec:
    """The registered benchmark ``name``; a :class:`UsageError` listing the known ones."""
    registry.load_all()
    if name not in registry.BENCHMARKS:
        raise UsageError(
            f"unknown benchmark {name!r}; known benchmarks: "
            f"{_known(registry.BENCHMARKS)}."
        )
    return registry.BENCHMARKS[name]


def resolve_scenario(
    s_spec: registry.StrategySpec,
    b_spec: registry.BenchmarkSpec,
    scenario: Optional[str],
) -> str:
    """The scenario to run: ``scenario`` or the benchmark's default, checked against
    what the benchmark and the strategy support."""
    from avalanche_meta.utils.scenario import check_scenario

    scenario = check_scenario(scenario or b_spec.default_scenario)
    if scenario not in b_spec.scenarios:
        raise UsageError(
            f"benchmark {b_spec.name!r} does not support scenario {scenario!r}; it "
            f"supports: {', '.join(b_spec.scenarios)}."
        )
    if scenario not in s_spec.scenarios:
        raise UsageError(
            f"strategy {s_spec.name!r} does not support scenario {scenario!r}; it "
            f"supports: {', '.join(s_spec.scenarios)}."
        )
    return scenario


# --------------------------------------------------------------------------------
# Hyper-parameters
# --------------------------------------------------------------------------------
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


#: How a run evaluates during training (see :func:`run_experiment`).
EVALUATIONS = ("matrix", "diagonal")


def check_evaluation(evaluation: Any) -> None:
    """Raise :class:`UsageError` unless ``evaluation`` is one of :data:`EVALUATIONS`."""
    if evaluation not in EVALUATIONS:
        raise UsageError(
            f"`evaluation` must be one of {', '.join(EVALUATIONS)}, got "
            f"{evaluation!r}."
        )


def parse_bool(text: Any) -> bool:
    """``true/false/yes/no/on/off/1/0`` (any case) to a bool; ValueError otherwise."""
    if isinstance(text, bool):
        return text
    s = str(text).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def coerce_param(strategy: str, name: str, typ: type, value: Any) -> Any:
    """Convert ``value`` (possibly a string from the command line) to ``typ``.

    None stays None (a parameter whose default is None means "not set").
    """
    if value is None:
        return None
    try:
        if typ is bool:
            return parse_bool(value)
        if (
            typ is float
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
        ):
            return float(value)
        if typ is int and isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{value!r} is not an integer")
            return int(value)
        if isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
            return value
        return typ(value)
    except (TypeError, ValueError) as err:
        raise UsageError(
            f"hyper-parameter {name!r} of strategy {strategy!r} must be of type "
            f"{typ.__name__}; got {value!r} ({err})."
        ) from None


def resolve_hparams(
    s_spec: registry.StrategySpec,
    preset: Optional[str] = None,
    hparams: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """The strategy's defaults, updated by the preset, then by ``hparams``.

    :raises UsageError: for an unknown preset or hyper-parameter name, or a value of
        the wrong type.
    """
    hp = {name: default for name, (_, default, _) in s_spec.params.items()}
    layers: List[tuple] = []
    if preset is not None:
        if preset not in s_spec.presets:
            raise UsageError(
                f"strategy {s_spec.name!r} has no preset {preset!r}; its presets: "
                f"{_known(s_spec.presets)}."
            )
        layers.append((f"preset {preset!r}", s_spec.presets[preset]))
    if hparams:
        layers.append(("hparams", hparams))
    for origin, values in layers:
        for name, value in values.items():
            if name not in s_spec.params:
                raise UsageError(
                    f"unknown hyper-parameter {name!r} (from {origin}) for strategy "
                    f"{s_spec.name!r}; its hyper-parameters: {_known(s_spec.params)}."
                )
            hp[name] = coerce_param(s_spec.name, name, s_spec.params[name][0], value)
    return hp


def check_benchmark_options(b_spec: registry.BenchmarkSpec, options: Mapping) -> None:
    """Raise a :class:`UsageError` for options the benchmark's builder does not take."""
    sig = inspect.signature(b_spec.build)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    accepted = [n for n in sig.parameters if n not in ("scenario", "seed", "data_root")]
    for key in options:
        if key not in accepted:
            raise UsageError(
                f"benchmark {b_spec.name!r} has no option {key!r}; its options: "
                f"{', '.join(accepted) or '(none)'}."
            )


def parse_literal(text: str) -> Any:
    """A command-line value: int, float, bool (true/false), None (none) or string."""
    s = text.strip()
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            pass
    if s.lower() in ("true", "false"):
        return s.lower() == "true"
    if s.lower() == "none":
        return None
    return s


# --------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) and Avalanche's RNG manager."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    try:
        from avalanche.training.determinism.rng_manager import RNGManager

        RNGManager.set_random_seeds(seed)
    except ImportError:  # pragma: no cover - older Avalanche
        pass


def _global_rng_states() -> tuple:
    """The states of torch's (CPU and CUDA), numpy's and ``random``'s global
    generators."""
    import numpy as np
    import torch

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda, np.random.get_state(), random.getstate()


def _set_global_rng_states(states: tuple) -> None:
    """Restore what :func:`_global_rng_states` returned."""
    import numpy as np
    import torch

    cpu, cuda, np_state, py_state = states
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    np.random.set_state(np_state)
    random.setstate(py_state)


def default_data_root() -> Optional[str]:
    """``$AVALANCHE_META_DATA``, else None (each benchmark then uses Avalanche's
    dataset location, ``~/.avalanche/data/<name>``)."""
    return os.environ.get("AVALANCHE_META_DATA") or None


def default_run_dir(strategy: str, benchmark: str, scenario: str, seed: int) -> Path:
    """``runs/<strategy>-<benchmark>-<scenario>-s<seed>``."""
    return Path("runs") / f"{strategy}-{benchmark}-{scenario}-s{seed}"


def versions() -> Dict[str, str]:
    """Versions of Python and the libraries a result depends on."""
    import avalanche
    import numpy as np
    import torch

    import avalanche_meta

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "avalanche": getattr(avalanche, "__version__", "unknown"),
        "avalanche_meta": avalanche_meta.__version__,
        "numpy": np.__version__,
    }
    try:
        from importlib.metadata import version

        out["learn2learn"] = version("learn2learn")
    except Exception:  # noqa: BLE001 - optional
        pass
    return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def _percent(R: List[List[Optional[float]]]) -> List[List[Optional[float]]]:
    return [[None if v is None else 100.0 * v for v in row] for row in R]


def _summaries(
    R: List[List[Optional[float]]],
    b: Optional[List[Optional[float]]],
    joint: bool,
    evaluation: str = "matrix",
) -> Dict[str, Optional[float]]:
    """The summaries of a percent matrix (see :mod:`avalanche_meta.evaluation`).

    With ``evaluation="diagonal"`` only the diagonal and the last row exist: the
    average and learning accuracies, BWT and BTI come from them; forgetting and
    FWT need other entries and are None.
    """
    from avalanche_meta.evaluation.metrics import (
        average_accuracy,
        bti,
        bwt,
        forgetting,
        fwt,
        learning_accuracy,
    )

    T = len(R[0]) if R else 0
    empty = dict.fromkeys(
        ("average_accuracy", "learning_accuracy", "bwt", "bti", "forgetting", "fwt")
    )
    if not R:
        return empty
    if len(R) < T:
        if not joint:
            raise RuntimeError(
                f"the accuracy matrix has {len(R)} rows for {T} test experiences: the "
                "strategy did not train on every experience."
            )
        # One model trained on everything at once: a single row, no per-task
        # learning accuracy, transfer or forgetting.
        out = dict(empty)
        out["average_accuracy"] = average_accuracy(R[-1:], over="all")
        return out
    if evaluation == "diagonal":
        return dict(
            empty,
            average_accuracy=average_accuracy(R),
            learning_accuracy=learning_accuracy(R),
            bwt=bwt(R),
            bti=bti(R),
        )
    return {
        "average_accuracy": average_accuracy(R),
        "learning_accuracy": learning_accuracy(R),
        "bwt": bwt(R),
        "bti": bti(R),
        "forgetting": forgetting(R),
        "fwt": fwt(R, b),
    }


def run_experiment(
    strategy: str,
    benchmark: str,
    *,
    scenario: Optional[str] = None,
    seed: int = 0,
    data_root: Optional[str] = None,
    out_dir: Optional[os.PathLike] = None,
    device: str = "cpu",
    hparams: Optional[Mapping[str, Any]] = None,
    preset: Optional[str] = None,
    benchmark_options: Optional[Mapping[str, Any]] = None,
    progress: bool = True,
    plots: bool = True,
    tensorboard: bool = False,
    csv: bool = False,
    initial_eval: bool = True,
    command: Optional[str] = None,
    save_model: bool = False,
    evaluation: str = "matrix",
) -> Dict[str, Any]:
    """Train and evaluate one registered strategy on one registered benchmark.

    :param strategy: a registered strategy name (``avalanche-meta list``).
    :param benchmark: a registered benchmark name.
    :param scenario: ``"task"``, ``"class"`` or ``"domain"``; None: the benchmark's
        default.
    :param seed: seeds torch, numpy, random and the benchmark's class order.
    :param data_root: the data folder; None: ``$AVALANCHE_META_DATA``, else each
        benchmark's Avalanche default.
    :param out_dir: the run folder; None: ``runs/<strategy>-<benchmark>-<scenario>-s<seed>``.
    :param device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    :param hparams: hyper-parameters overriding the defaults and the preset.
    :param preset: a named set of hyper-parameters of the strategy.
    :param benchmark_options: extra keyword arguments of the benchmark's builder.
    :param progress: Avalanche's interactive logger (progress bars) on stdout;
        otherwise metrics are logged to an in-memory text logger.
    :param plots: write the accuracy-matrix heatmap and per-task curves (PNG).
    :param tensorboard: also log to TensorBoard in ``out_dir/tb``.
    :param csv: also log with Avalanche's CSV logger in ``out_dir/csv``.
    :param initial_eval: evaluate before training (initial accuracies, for FWT).
    :param command: the command line, recorded in the results.
    :param save_model: also write the final weights, ``out_dir/model.pt`` (the
        strategy's model ``state_dict``).
    :param evaluation: ``"matrix"``: after every experience, evaluate every test
        experience (the full accuracy matrix). ``"diagonal"``: after each experience
        only its own test experience, and after the last one the whole stream: the
        diagonal and the last row, all that the average and learning accuracies,
        BWT and BTI (MER's RA, LA, BTI) read, with the same values as ``"matrix"``
        (evaluation changes no state); forgetting and FWT are then not computed.
        For long streams: MER's Many Permutations evaluates 100 tasks x 10,000
        images after each of 100 tasks with ``"matrix"`` (100 M images), 2 M
        with ``"diagonal"``. Evaluation leaves the global random generators as it
        found them, so neither this option nor ``initial_eval`` changes training.
    :return: the results (also written to ``out_dir/results.json``); accuracies and
        their summaries in percent.
    :raises UsageError: unknown names, unsupported scenario, bad hyper-parameters.

    The online batch: a benchmark whose protocol is online (``info.online``) fixes
    it (``info.online_batch``); otherwise a strategy registered ``online=True`` uses
    its ``online_batch`` hyper-parameter if it has one, else its registered
    ``online_batch``. ``peak_memory_mb`` is the process's peak resident memory,
    so with several runs in one process it is the peak over all of them so far.
    """
    import torch

    from avalanche_meta.experiments.context import RunContext
    from avalanche_meta.evaluation.metrics import continual_metrics

    s_spec = get_strategy_spec(strategy)
    b_spec = get_benchmark_spec(benchmark)
    scenario = resolve_scenario(s_spec, b_spec, scenario)
    hp = resolve_hparams(s_spec, preset, hparams)
    check_evaluation(evaluation)
    bench_opts = dict(benchmark_options or {})
    check_benchmark_options(b_spec, bench_opts)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"`seed` must be a non-negative integer, got {seed!r}.")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            f"device {device!r} was asked for but CUDA is not available here; use "
            "--device cpu."
        )
    data_root = data_root or default_data_root()
    out = (
        Path(out_dir)
        if out_dir is not None
        else default_run_dir(strategy, benchmark, scenario, seed)
    )
    out.mkdir(parents=True, exist_ok=True)

    seed_everything(seed)
    try:
        info = b_spec.build(
            scenario=scenario, seed=seed, data_root=data_root, **bench_opts
        )
    except TypeError as err:
        if "unexpected keyword argument" not in str(err):
            raise
        raise UsageError(
            f"benchmark {benchmark!r} does not take that option ({err}); check the "
            "--bench-opt names."
        ) from None

    from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
    from avalanche.logging import InteractiveLogger, TextLogger
    from avalanche.training.plugins import EvaluationPlugin

    loggers: list = [InteractiveLogger() if progress else TextLogger(io.StringIO())]
    if tensorboard:
        from avalanche.logging import TensorboardLogger

        loggers.append(TensorboardLogger(tb_log_dir=str(out / "tb")))
    if csv:
        from avalanche.logging import CSVLogger

        loggers.append(CSVLogger(log_folder=str(out / "csv")))
    cmetrics = continual_metrics()
    evaluator = EvaluationPlugin(
        accuracy_metrics(experience=True, stream=True),
        loss_metrics(stream=True),
        *cmetrics,
        loggers=loggers,
    )
    ctx = RunContext(
        info=info,
        scenario=scenario,
        device=dev,
        seed=seed,
        evaluator=evaluator,
        out_dir=out,
    )
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    model_strategy = s_spec.build(ctx, **hp)

    # Time spent in eval is measured by wrapping the strategy's eval, so that the
    # training time excludes it on both the default loop and a custom ``fit``. The
    # wrapper also gives the global random generators back as they were: each
    # DataLoader iterator draws its seed from torch's, so otherwise how much is
    # evaluated (``initial_eval``, ``evaluation``) would change the training.
    eval_time = [0.0]
    inner_eval = model_strategy.eval

    def timed_eval(*args, **kwargs):
        t0 = time.perf_counter()
        rng = _global_rng_states()
        try:
            return inner_eval(*args, **kwargs)
        finally:
            _set_global_rng_states(rng)
            eval_time[0] += time.perf_counter() - t0

    model_strategy.eval = timed_eval

    online = bool(info.online or s_spec.online)
    if info.online:
        online_batch = int(info.online_batch)
    else:
        online_batch = int(hp.get("online_batch") or s_spec.online_batch)
    test_stream = info.benchmark.test_stream

    train_stream = info.benchmark.train_stream
    diagonal = evaluation == "diagonal"
    if diagonal and s_spec.fit is not None:
        raise UsageError(
            f"evaluation='diagonal' evaluates after each training experience, but "
            f"{strategy!r} runs its own training loop (all experiences at once, or "
            "few-shot episodes); use evaluation='matrix'."
        )
    if diagonal and len(test_stream) != len(train_stream):
        raise UsageError(
            f"evaluation='diagonal' pairs training and test experiences, but "
            f"{benchmark!r} has {len(train_stream)} training and "
            f"{len(test_stream)} test experiences; use evaluation='matrix'."
        )
    if initial_eval:
        model_strategy.eval(test_stream)
    initial_eval_seconds = eval_time[0]
    t_start = time.perf_counter()
    fit_results: Optional[Mapping[str, Any]] = None
    try:
        if s_spec.fit is not None:
            fit_results = s_spec.fit(ctx, model_strategy, info)
        else:
            from avalanche_meta.benchmarks.online import online_stream

            last = len(train_stream) - 1
            for i, exp in enumerate(train_stream):
                if online:
                    # online_stream keeps task labels and classes on every
                    # mini-experience (split_online_stream drops them).
                    model_strategy.train(
                        online_stream(
                            [exp], batch_size=online_batch, seed=seed * 100_003 + i
                        )
                    )
                else:
                    model_strategy.train(exp)
                if diagonal and i < last:
                    # its row has holes: the summaries are not emitted (expected)
                    with warnings.catch_warnings():
                        warnings.filterwarnings(
                            "ignore", message="AccuracyMatrix: some rows are missing"
                        )
                        model_strategy.eval([test_stream[i]])
                else:
                    model_strategy.eval(test_stream)
    finally:
        model_strategy.eval = inner_eval
    total = time.perf_counter() - t_start
    eval_seconds = eval_time[0]
    train_seconds = total - (eval_seconds - initial_eval_seconds)

    R = _percent(cmetrics[0].matrix)
    b = cmetrics[0].initial
    b = None if b is None else [None if v is None else 100.0 * v for v in b]
    summary = _summaries(
        R,
        b,
        joint=s_spec.fit is not None,
        evaluation=evaluation,
    )
    results: Dict[str, Any] = {
        "strategy": strategy,
        "benchmark": benchmark,
        "scenario": scenario,
        "seed": seed,
        "config": {
            "hparams": hp,
            "preset": preset,
            "benchmark_options": bench_opts,
            "device": str(dev),
            "data_root": data_root,
            "online": online,
            "online_batch": online_batch if online else None,
            "initial_eval": initial_eval,
            "evaluation": evaluation,
            "command": command,
            "versions": versions(),
        },
        "n_experiences": info.n_experiences,
        "classes_per_experience": info.classes_per_experience,
        "accuracy_unit": "percent",
        "accuracy_matrix": R,
        "accuracy_matrix_rows": (
            "one row per training experience"
            if len(R) == len(R[0] if R else [])
            else "a single row: the strategy trained on every experience at once"
        ),
        "initial_accuracy": b,
        **summary,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "peak_memory_mb": peak_rss_mb(),
        "cuda_peak_memory_mb": (
            torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
        ),
        "out_dir": str(out),
    }
    if fit_results:
        # results a registered ``fit`` adds (e.g. few-shot confidence intervals)
        clash = sorted(set(fit_results) & set(results))
        if clash:
            raise RuntimeError(
                f"the fit of strategy {strategy!r} returned results named like the "
                f"runner's own ({', '.join(clash)}); rename them."
            )
        results.update(fit_results)
    if plots:
        from avalanche_meta.experiments.plots import (
            plot_accuracy_matrix,
            plot_task_curves,
        )

        title = f"{strategy} on {benchmark} ({scenario}-IL, seed {seed})"
        results["plots"] = [
            str(plot_accuracy_matrix(R, out / "accuracy_matrix.png", title=title)),
            str(plot_task_curves(R, out / "task_accuracy.png", initial=b, title=title)),
        ]
    if save_model:
        torch.save(model_strategy.model.state_dict(), out / "model.pt")
        results["model_path"] = str(out / "model.pt")
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    results["results_path"] = str(path)
    return results


# --------------------------------------------------------------------------------
# Comparisons
# --------------------------------------------------------------------------------
def mean_std(values: Sequence[Optional[float]]) -> tuple:
    """Mean and sample standard deviation (ddof=1; 0 for one value) of the
    non-None values, or ``(None, None)`` when there is none."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def _fmt(m: Optional[float], s: Optional[float]) -> str:
    if m is None:
        return "n/a"
    return f"{m:.2f} ± {s:.2f}".replace("-0.00 ", "0.00 ")


def comparison_table(summary: Mapping[str, Mapping[str, Any]], markdown: bool) -> str:
    """The comparison as a text (or Markdown) table, one row per strategy."""
    head = ["strategy"] + [title for _, title in SUMMARY_COLUMNS]
    rows = [
        [name] + [_fmt(*row[key]) for key, _ in SUMMARY_COLUMNS]
        for name, row in summary.items()
    ]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join(
        [fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
    )


def _say(line: str) -> None:
    print(line, flush=True)


def _link(link: Path, target: Path) -> None:
    """Make ``link`` a symbolic link to the store folder ``target`` (a real folder
    already at ``link``, e.g. from before the store, is left alone)."""
    try:
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            return
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(target).resolve(), target_is_directory=True)
    except OSError:  # pragma: no cover - no symbolic links here
        pass


class RunFailedError(RuntimeError):
    """A run failed after its retries (the message has its error)."""


class MissingRunError(LookupError):
    """A run is not in the store and running was not allowed (``--no-run``)."""


#: ``run_experiment`` keyword arguments that are part of a run's configuration.
_CONFIG_ARGS = ("scenario", "seed", "hparams", "preset", "benchmark_options")
_CONFIG_ARGS += ("initial_eval", "evaluation")
#: ``run_experiment`` keyword arguments that say how to execute it.
_SETTING_ARGS = ("data_root", "device", "progress", "plots", "tensorboard", "csv")
_SETTING_ARGS += ("command", "save_model")


def run_stored(
    strategy: str,
    benchmark: str,
    *,
    store,
    executor="local",
    retries: int = 2,
    execute: bool = True,
    **kwargs: Any,
) -> Dict[str, Any]:
    """:func:`run_experiment` through a run store: the stored results if the store
    holds this configuration, else the run, executed by ``executor`` (retried up to
    ``retries`` times) and stored.

    :param store: a :class:`~avalanche_meta.experiments.store.RunStore` or folder.
    :param executor: ``"local"``, ``"processes"``, ``"ray"`` or an
        :class:`~avalanche_meta.experiments.executors.Executor`.
    :param execute: False: never run; a run the store lacks raises
        :class:`MissingRunError`.
    :param kwargs: those of :func:`run_experiment`; ``out_dir``, when given,
        becomes a symbolic link to the run's store folder.
    :raises RunFailedError: the run failed ``retries + 1`` times.
    :raises UsageError: bad names or hyper-parameters (before anything runs).
    """
    from avalanche_meta.experiments import (
        RunSettings,
        RunStore,
        resolve_run_config,
        run_sweep,
    )

    unknown = set(kwargs) - set(_CONFIG_ARGS) - set(_SETTING_ARGS) - {"out_dir"}
    if unknown:
        raise TypeError(
            f"run_stored() got unexpected keyword argument(s): {sorted(unknown)}"
        )
    config = resolve_run_config(
        strategy, benchmark, **{k: kwargs[k] for k in _CONFIG_ARGS if k in kwargs}
    )
    settings = RunSettings(**{k: kwargs[k] for k in _SETTING_ARGS if k in kwargs})
    store = store if isinstance(store, RunStore) else RunStore(store)
    result = run_sweep(
        [config],
        store,
        executor=executor,
        settings=settings,
        retries=retries,
        execute=execute,
        progress=False,
        log=None,
    )
    res = result.get(config)
    if res is None:
        if config.key in result.errors:
            raise RunFailedError(
                f"{config.label()} failed after {retries + 1} attempt(s): "
                f"{result.errors[config.key]}"
            )
        raise MissingRunError(
            f"{config.label()} is not in the store {store.root} (key "
            f"{config.key[:12]}) and running was not allowed (--no-run)."
        )
    if kwargs.get("out_dir") is not None:
        _link(Path(kwargs["out_dir"]), Path(res["out_dir"]))
    return res


def run_in_store(strategy: str, benchmark: str, *, store, **kwargs: Any) -> tuple:
    """:func:`run_experiment` into a run store, in this process: the stored results
    if the store holds this configuration, else the run, written to the store under
    its key (atomically; what ``avalanche-meta run`` without ``--out`` does).

    Unlike :func:`run_stored`, nothing is retried and the run's own error is raised
    unchanged (a bad argument stays a ``ValueError``, a NaN loss a
    ``NonFiniteLossError``).

    :param store: a :class:`~avalanche_meta.experiments.store.RunStore` or folder.
    :param kwargs: those of :func:`run_experiment` but ``out_dir``.
    :return: ``(results, reused)``; ``reused`` is True when the store held the run.
    """
    import shutil

    from avalanche_meta.experiments import RunStore, resolve_run_config

    unknown = set(kwargs) - set(_CONFIG_ARGS) - set(_SETTING_ARGS)
    if unknown:
        raise TypeError(
            f"run_in_store() got unexpected keyword argument(s): {sorted(unknown)}"
        )
    config = resolve_run_config(
        strategy, benchmark, **{k: kwargs[k] for k in _CONFIG_ARGS if k in kwargs}
    )
    store = store if isinstance(store, RunStore) else RunStore(store)
    res = store.load(config)
    if res is not None:
        return res, True
    store.root.mkdir(parents=True, exist_ok=True)
    store.clean_stale()
    marker = store.mark_running(config)
    tmp = store.new_tmp(config)
    try:
        results = run_experiment(strategy, benchmark, out_dir=tmp, **kwargs)
        store.commit(config, tmp, results)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        store.unmark_running(marker)
    return store.load(config), False


def compare_experiments(
    strategies: Sequence[str],
    benchmark: str,
    *,
    seeds: int = 3,
    scenario: Optional[str] = None,
    settings: Optional[Mapping[str, Mapping[str, Any]]] = None,
    out_dir: Optional[os.PathLike] = None,
    data_root: Optional[str] = None,
    device: str = "cpu",
    benchmark_options: Optional[Mapping[str, Any]] = None,
    initial_eval: bool = True,
    plots: bool = True,
    progress: bool = False,
    log=_say,
    command: Optional[str] = None,
    store: Optional[Any] = None,
    executor: Any = "local",
    workers: Optional[int] = None,
    threads: Optional[int] = 1,
    address: Optional[str] = None,
    gpus_per_run: Optional[float] = None,
    retries: int = 2,
    execute: bool = True,
    save_model: bool = False,
    progress_bar: Optional[bool] = None,
) -> Dict[str, Any]:
    """Run every strategy with seeds ``0..seeds-1`` and summarise them side by side.

    The runs go through a run store (:mod:`avalanche_meta.experiments`): a run the
    store already holds (same strategy, hyper-parameters, benchmark, options,
    scenario, seed) is not run again, the others are executed by ``executor``, and
    the table is built from whatever runs the store then holds; the missing ones
    (failed after their retries, or not run with ``execute=False``) are listed in
    ``result["missing"]`` and in ``comparison.md``.

    :param strategies: registered strategy names.
    :param seeds: number of seeds.
    :param settings: hyper-parameters per strategy, ``{strategy: {param: value}}``.
    :param out_dir: the comparison folder (None: ``runs/compare-<benchmark>-<scenario>``);
        ``<out_dir>/<strategy>-s<seed>`` is a symbolic link to each run's store
        folder.
    :param log: called with one line per finished, retried or failed run (None:
        silent).
    :param progress: Avalanche's progress bars inside each run.
    :param store: the run store (a folder or a ``RunStore``; None:
        ``$AVALANCHE_META_STORE``, else ``runs/store``).
    :param executor: ``"local"`` (one run after another in this process),
        ``"processes"`` or ``"ray"`` (see
        :func:`avalanche_meta.experiments.make_executor`), or an ``Executor``.
    :param workers: worker processes (``processes``; default 2) or CPUs of a local
        Ray instance.
    :param threads: torch CPU threads per worker process (not used by ``local``).
    :param address: Ray cluster address (``ray``).
    :param gpus_per_run: GPUs per run (``ray``; default 1 with a CUDA device).
    :param retries: attempts after the first for a run that fails or whose worker
        dies.
    :param execute: False: run nothing, tabulate what the store holds.
    :param save_model: each run also writes its final weights (``model.pt``).
    :param progress_bar: one progress bar over the runs (None: when stderr is a
        terminal).
    :return: ``{"runs": [...], "summary": {strategy: {key: (mean, std)}},
        "missing": [...], ...}``; also written to ``comparison.json``,
        ``comparison.md`` and ``comparison.png`` in ``out_dir``.
    """
    from avalanche_meta.experiments import (
        RunSettings,
        RunStore,
        default_store_root,
        resolve_run_config,
        run_sweep,
    )

    if not strategies:
        raise UsageError("give at least one strategy to compare.")
    if len(set(strategies)) != len(strategies):
        raise UsageError(f"a strategy is listed twice: {list(strategies)}.")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise UsageError(f"`seeds` must be a positive integer, got {seeds!r}.")
    settings = dict(settings or {})
    b_spec = get_benchmark_spec(benchmark)
    for name in settings:
        if name not in strategies:
            raise UsageError(
                f"settings given for {name!r}, which is not among the compared "
                f"strategies ({', '.join(strategies)})."
            )
    # Check every name and setting before the first (long) run.
    scen = None
    for name in strategies:
        s_spec = get_strategy_spec(name)
        scen = resolve_scenario(s_spec, b_spec, scenario)
        resolve_hparams(s_spec, None, settings.get(name))
    check_benchmark_options(b_spec, benchmark_options or {})
    grid = [(name, seed) for name in strategies for seed in range(seeds)]
    configs = [
        resolve_run_config(
            name,
            benchmark,
            scenario=scen,
            seed=seed,
            hparams=settings.get(name),
            benchmark_options=benchmark_options,
            initial_eval=initial_eval,
        )
        for name, seed in grid
    ]
    out = (
        Path(out_dir)
        if out_dir is not None
        else Path("runs") / (f"compare-{benchmark}-{scen}")
    )
    out.mkdir(parents=True, exist_ok=True)
    if store is None:
        store = default_store_root()
    store = store if isinstance(store, RunStore) else RunStore(store)

    sweep = run_sweep(
        configs,
        store,
        executor=executor,
        settings=RunSettings(
            device=device,
            data_root=data_root,
            plots=plots,
            progress=progress,
            save_model=save_model,
            command=command,
        ),
        retries=retries,
        workers=workers,
        threads=threads,
        address=address,
        gpus_per_run=gpus_per_run,
        execute=execute,
        progress=progress_bar,
        log=log,
    )
    runs: List[Dict[str, Any]] = []
    for (name, seed), config in zip(grid, configs):
        res = sweep.get(config)
        if res is None:
            continue
        _link(out / f"{name}-s{seed}", Path(res["out_dir"]))
        runs.append(res)
    missing = sweep.missing_lines()
    summary: Dict[str, Dict[str, Any]] = {}
    for name in strategies:
        mine = [r for r in runs if r["strategy"] == name]
        summary[name] = {
            key: mean_std([r.get(key) for r in mine])
            for key in ("average_accuracy", "learning_accuracy", "bwt", "bti")
            + ("forgetting", "fwt", "train_seconds", "peak_memory_mb")
        }
        summary[name]["n_runs"] = len(mine)
    result: Dict[str, Any] = {
        "benchmark": benchmark,
        "scenario": scen,
        "seeds": list(range(seeds)),
        "strategies": list(strategies),
        "settings": settings,
        "command": command,
        "store": str(store.root),
        "executor": getattr(executor, "name", executor),
        "executed": len(sweep.executed),
        "reused": len(sweep.reused),
        "missing": missing,
        "wall_seconds": sweep.seconds,
        "summary": summary,
        "runs": [
            {
                k: r.get(k)
                for k in (
                    "strategy",
                    "seed",
                    "average_accuracy",
                    "learning_accuracy",
                    "bwt",
                    "bti",
                    "forgetting",
                    "fwt",
                    "train_seconds",
                    "run_key",
                    "results_path",
                )
            }
            for r in runs
        ],
    }
    (out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    md = (
        f"# {', '.join(strategies)} on {benchmark} ({scen}-IL)\n\n"
        f"Mean ± sample standard deviation over seeds {list(range(seeds))}; "
        "accuracies in percent (average accuracy: mean over tasks of the final "
        "row of the accuracy matrix).\n\n"
        + (f"Command: `{command}`\n\n" if command else "")
        + comparison_table(summary, markdown=True)
        + "\n"
        + (
            "\nMissing runs (not in this table):\n\n"
            + "".join(f"- {line}\n" for line in missing)
            if missing
            else ""
        )
    )
    (out / "comparison.md").write_text(md)
    result["table"] = comparison_table(summary, markdown=False)
    result["out_dir"] = str(out)
    if plots and runs:
        from avalanche_meta.experiments.plots import plot_comparison

        result["plot"] = str(
            plot_comparison(
                summary,
                out / "comparison.png",
                title=f"{benchmark} ({scen}-IL), {seeds} seed(s)",
            )
        )
    return result
