"""The ``avalanche-meta`` command: run, compare, reproduce, bench, list, store.

Examples::

    avalanche-meta list
    avalanche-meta run replay --benchmark split-digits --scenario class --mem-size 500
    avalanche-meta run replay --help            # the strategy's own flags
    avalanche-meta compare naive replay ewc --benchmark split-digits --seeds 3 \\
        --set ewc.ewc_lambda=1e5
    avalanche-meta reproduce NAME --quick
    avalanche-meta bench NAME --quick
    avalanche-meta compare naive replay er mer --benchmark split-digits \\
        --scenario class --executor processes --workers 2
    avalanche-meta store list
    avalanche-meta store merge other-machine/runs/store runs/store

The command line is a thin layer over :mod:`avalanche_meta.experiments`: it parses
arguments, calls the experiments layer and prints.

- ``run`` without ``--out`` writes the run into the run store under its
  configuration's key (``--store``, default ``$AVALANCHE_META_STORE`` else
  ``runs/store``), in this process; if the store already holds that configuration,
  nothing runs and its stored results are printed. With ``--out DIR`` the run goes
  to ``DIR`` and always runs (no store), as before the store existed.
- ``compare`` and ``reproduce`` run their runs as one sweep through the store and
  the chosen executor (``--executor local|processes|ray``, ``--workers``), with one
  progress bar over the runs; a reproduction declares its runs
  (:mod:`avalanche_meta.experiments.reproduction`), so they run in parallel too.
  ``--device`` and ``--gpus-per-run`` reach every run (Ray: ``num_gpus``).

A strategy's hyper-parameters (its registered ``params``) become ``run`` flags
(underscores turned into dashes); since they depend on the strategy, ``run`` parses
in two stages: the strategy name first, then a parser built for that strategy.

Bad input (unknown names, bad values, a missing dataset, a strategy's argument
check) prints one line ``avalanche-meta: error: ...`` on stderr and exits with
status 2; a non-finite loss during training, a run that failed after its retries
or a run missing from a table exits with status 1; Ctrl-C exits with status 130 and
keeps the finished runs in the store (``compare`` and ``reproduce`` run through a
run store, see :mod:`avalanche_meta.experiments`). Set
``AVALANCHE_META_DEBUG=1`` to get the traceback instead.

``run``, ``compare``, ``reproduce`` and ``bench`` set torch to one CPU thread unless
``--threads N`` says otherwise (see :data:`DEFAULT_THREADS`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from avalanche_meta.experiments import registry
from avalanche_meta.experiments.runner import (
    MissingRunError,
    RunFailedError,
    UsageError,
    compare_experiments,
    get_strategy_spec,
    parse_bool,
    parse_literal,
    run_experiment,
    run_in_store,
)

PROG = "avalanche-meta"


class _Parser(argparse.ArgumentParser):
    """An argument parser that raises :class:`UsageError` instead of exiting."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def _bool(text: str) -> bool:
    return parse_bool(text)


_bool.__name__ = "boolean (true/false)"


def _default_data_root_text() -> str:
    """The default data folder, for help texts."""
    env = os.environ.get("AVALANCHE_META_DATA")
    if env:
        return f"$AVALANCHE_META_DATA = {env}"
    return "$AVALANCHE_META_DATA if set, else Avalanche's dataset location"


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-root",
        default=None,
        help=f"data folder (default: {_default_data_root_text()})",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")


#: Default torch CPU threads. The models run from the command line are small MLPs
#: and CNNs, for which extra intra-op threads mostly spin: on this project's 2-core
#: machine, shared with other jobs, a split-digits run took 82 s of training with
#: torch's default threads and 1.5-3 s with one thread.
DEFAULT_THREADS = 1


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help=f"torch CPU threads (default: {DEFAULT_THREADS}; small models gain "
        "nothing from more, and extra threads spin when cores are shared; 0: "
        "torch's own choice)",
    )


def _set_threads(threads: Optional[int]) -> None:
    if threads is None or threads == 0:
        return
    if threads < 0:
        raise UsageError(f"--threads must be >= 0, got {threads}.")
    import torch

    torch.set_num_threads(threads)


def _add_bench_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bench-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the benchmark's builder (repeatable), e.g. n_tasks=5",
    )


def _add_execution_options(p: argparse.ArgumentParser, reproduction: bool) -> None:
    """``--store``, ``--executor`` and their options (``compare``, ``reproduce``)."""
    from avalanche_meta.experiments.executors import EXECUTORS

    g = p.add_argument_group(
        "runs and where they execute"
        + (
            " (a reproduction declares its runs and they execute as one sweep, in "
            "parallel with processes or ray; the few-shot reproductions still run "
            "in this process)"
            if reproduction
            else ""
        )
    )
    g.add_argument(
        "--store",
        default=None,
        help="run store: a folder per finished run, keyed by its configuration; "
        "a run it holds is never redone (default: $AVALANCHE_META_STORE, else "
        "runs/store)",
    )
    g.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="local: one run after another in this process; processes: --workers "
        "worker processes of this machine; ray: a Ray cluster (--address) or a "
        "local Ray instance (needs `pip install 'avalanche-meta[ray]'`)",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (processes; default 2) or CPUs of a local Ray "
        "instance (default: all)",
    )
    g.add_argument(
        "--address", default=None, help="Ray cluster address (ray; e.g. auto)"
    )
    g.add_argument(
        "--retries",
        type=int,
        default=2,
        help="attempts after the first for a run that fails or whose worker dies",
    )
    g.add_argument(
        "--gpus-per-run",
        type=float,
        default=None,
        help="GPUs per run (ray: Ray's num_gpus; default 1 with --device cuda)",
    )
    g.add_argument(
        "--no-run",
        action="store_true",
        help="run nothing: build the table from the runs the store holds and list "
        "the missing ones",
    )


def _store_of(args: argparse.Namespace):
    from avalanche_meta.experiments import RunStore, default_store_root

    return RunStore(args.store if args.store else default_store_root())


def _check_execution(args: argparse.Namespace) -> None:
    if args.retries < 0:
        raise UsageError(f"--retries must be >= 0, got {args.retries}.")


def _key_values(items: Sequence[str], flag: str) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UsageError(f"{flag} expects KEY=VALUE, got {item!r}.")
        out[key] = parse_literal(value)
    return out


#: ``reproduce --only`` keys whose value is always a list (comma-separated).
LIST_KEYS = ("methods", "scenarios", "protocols", "memories", "settings")
#: ``reproduce --only`` keys whose items are labels, kept as text.
TEXT_KEYS = ("methods", "scenarios", "protocols", "settings")
#: Every key some reproduction reads (each one's docstring says which it reads).
ONLY_KEYS = LIST_KEYS + (
    "n_tasks",
    "iterations",
    "hidden",
    "section",
    "section_suffix",
    "reuse_only",
    "test_samples",
    "reuse_runs",
)


def _subset_options(items: Sequence[str]) -> Dict[str, Any]:
    """``--only KEY=A,B`` options: lists for :data:`LIST_KEYS`, else one literal.

    Items are separated by ``;`` when the value has one (for labels that contain
    commas, e.g. ``methods=NCCL, WCM only;Naive``), else by ``,``.
    """
    out: Dict[str, Any] = {}
    for key, value in _key_values(items, "--only").items():
        if key not in ONLY_KEYS:
            raise UsageError(
                f"--only: unknown key {key!r}; known keys: {', '.join(ONLY_KEYS)}."
            )
        if key in LIST_KEYS or (isinstance(value, str) and "," in value):
            text = value if isinstance(value, str) else str(value)
            sep = ";" if ";" in text else ","
            # labels stay text (a method may be called "None"); other lists are parsed
            parse = parse_literal if key not in TEXT_KEYS else str.strip
            value = [parse(v) for v in text.split(sep) if v.strip()]
            if not value:
                raise UsageError(f"--only {key}= needs at least one value.")
        out[key] = value
    return out


# --------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------
def build_run_parser(spec: registry.StrategySpec) -> argparse.ArgumentParser:
    """The parser of ``avalanche-meta run STRATEGY`` for one strategy."""
    presets = ""
    if spec.presets:
        presets = "\n\npresets:\n" + "\n".join(
            f"  {name}: {', '.join(f'{k}={v}' for k, v in values.items())}"
            for name, values in spec.presets.items()
        )
    p = _Parser(
        prog=f"{PROG} run {spec.name}",
        description=(
            f"{spec.help}\nscenarios: {', '.join(spec.scenarios)}"
            + (f"; online (batch {spec.online_batch})" if spec.online else "")
            + presets
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--benchmark", required=True, help="a registered benchmark (see `list`)"
    )
    p.add_argument(
        "--scenario",
        choices=("task", "class", "domain"),
        default=None,
        help="Task-IL, Class-IL or Domain-IL (default: the benchmark's default)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    _add_data_options(p)
    p.add_argument(
        "--out",
        default=None,
        help="run folder: the run goes there, whatever it holds (default: the run "
        "store, see --store)",
    )
    p.add_argument(
        "--store",
        default=None,
        help="without --out, the run goes to this run store under its "
        "configuration's key, and a run the store already holds is not redone (its "
        "results are printed; use --out to run it again) (default: "
        "$AVALANCHE_META_STORE, else runs/store)",
    )
    p.add_argument(
        "--preset",
        default=None,
        choices=sorted(spec.presets) or None,
        help="a named set of hyper-parameters (flags override it)",
    )
    p.add_argument("--tensorboard", action="store_true", help="log to out/tb too")
    p.add_argument("--csv", action="store_true", help="log with the CSV logger too")
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bars or metric logs"
    )
    p.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    p.add_argument(
        "--save-model", action="store_true", help="write the final weights (model.pt)"
    )
    p.add_argument(
        "--no-initial-eval",
        action="store_true",
        help="skip the eval before training (then FWT is not computed)",
    )
    p.add_argument(
        "--evaluation",
        choices=("matrix", "diagonal"),
        default="matrix",
        help="matrix: every test experience after every experience; diagonal: "
        "each experience's own after it, all after the last (RA, LA, BWT, BTI "
        "only; for long streams such as many-permutations)",
    )
    _add_bench_opt(p)
    _add_threads(p)
    group = p.add_argument_group(f"hyper-parameters of {spec.name}")
    for name, (typ, default, text) in spec.params.items():
        flag = "--" + name.replace("_", "-")
        dest = "hp_" + name
        # SUPPRESS: a flag not given leaves the preset's value in place.
        if typ is bool:
            group.add_argument(
                flag,
                dest=dest,
                nargs="?",
                const=True,
                type=_bool,
                default=argparse.SUPPRESS,
                metavar="true|false",
                help=f"{text} (default: {str(default).lower()})",
            )
            group.add_argument(
                "--no-" + name.replace("_", "-"),
                dest=dest,
                action="store_false",
                default=argparse.SUPPRESS,
                help=f"same as {flag} false",
            )
        else:
            group.add_argument(
                flag,
                dest=dest,
                type=typ,
                default=argparse.SUPPRESS,
                metavar=typ.__name__.upper(),
                help=f"{text} (default: {default})",
            )
    return p


def _run_help() -> str:
    registry.load_all()
    lines = [
        f"usage: {PROG} run STRATEGY --benchmark NAME [options] [hyper-parameter flags]",
        "",
        f"`{PROG} run STRATEGY --help` lists the strategy's flags. Strategies:",
    ]
    for name, spec in sorted(registry.STRATEGIES.items()):
        lines.append(f"  {name:<20} {spec.help}")
    return "\n".join(lines)


def format_summary(res: Mapping[str, Any]) -> str:
    """The results of one run as text: matrix (percent), summaries, time, files."""
    lines = [
        f"{res['strategy']} on {res['benchmark']} ({res['scenario']}-IL), "
        f"seed {res['seed']}"
    ]
    R = res["accuracy_matrix"]
    if R and len(R[0]) <= 20:
        lines.append("accuracy matrix (%; row i: after training experience i):")
        for i, row in enumerate(R):
            cells = " ".join("  n/a" if v is None else f"{v:5.1f}" for v in row)
            lines.append(f"  {i:>3} | {cells}")
    for key, title in (
        ("average_accuracy", "average accuracy"),
        ("learning_accuracy", "learning accuracy (LA)"),
        ("bwt", "BWT"),
        ("bti", "BTI"),
        ("forgetting", "forgetting"),
        ("fwt", "FWT"),
    ):
        v = res.get(key)
        text = "n/a" if v is None else f"{v + 0.0:.2f}".replace("-0.00", "0.00")
        lines.append(f"  {title:<24} {text}")
    lines.append(
        f"  train {res['train_seconds']:.1f} s, eval {res['eval_seconds']:.1f} s, "
        f"peak memory {res['peak_memory_mb']:.0f} MiB"
    )
    return "\n".join(lines)


def cmd_run(argv: List[str]) -> int:
    """``avalanche-meta run STRATEGY ...`` (two-stage parsing)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(_run_help())
        return 0
    if argv[0].startswith("-"):
        raise UsageError(
            f"run: give the strategy first, e.g. `{PROG} run naive --benchmark "
            f"split-digits`; got {argv[0]!r}."
        )
    spec = get_strategy_spec(argv[0])
    args = build_run_parser(spec).parse_args(argv[1:])
    hp = {
        name: getattr(args, "hp_" + name)
        for name in spec.params
        if hasattr(args, "hp_" + name)
    }
    _set_threads(args.threads)
    kwargs: Dict[str, Any] = dict(
        scenario=args.scenario,
        seed=args.seed,
        data_root=args.data_root,
        device=args.device,
        hparams=hp,
        preset=args.preset,
        benchmark_options=_key_values(args.bench_opt, "--bench-opt"),
        progress=not args.no_progress,
        plots=not args.no_plots,
        tensorboard=args.tensorboard,
        csv=args.csv,
        initial_eval=not args.no_initial_eval,
        evaluation=args.evaluation,
        command=shlex.join([PROG, "run", *argv]),
        save_model=args.save_model,
    )
    reused = False
    if args.out is not None:
        res = run_experiment(spec.name, args.benchmark, out_dir=args.out, **kwargs)
    else:
        res, reused = run_in_store(
            spec.name, args.benchmark, store=_store_of(args), **kwargs
        )
    print(format_summary(res))
    for plot in res.get("plots", []):
        print(f"plot: {plot}")
    print(f"results: {res['results_path']}")
    if reused:
        print(
            "taken from the run store (this configuration had run before; use --out "
            "DIR to run it again)"
        )
    return 0


# --------------------------------------------------------------------------------
# compare, reproduce, bench, list
# --------------------------------------------------------------------------------
def _settings(items: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    out: Dict[str, Dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        strategy, dot, param = key.strip().partition(".")
        if not sep or not dot or not strategy or not param:
            raise UsageError(
                f"--set expects STRATEGY.PARAM=VALUE (e.g. replay.mem_size=500), "
                f"got {item!r}."
            )
        out.setdefault(strategy, {})[param.replace("-", "_")] = parse_literal(value)
    return out


def cmd_compare(args: argparse.Namespace, argv: List[str]) -> int:
    from avalanche_meta.experiments import make_executor

    _check_execution(args)
    if args.threads < 0:
        raise UsageError(f"--threads must be >= 0, got {args.threads}.")
    executor = make_executor(
        "local" if args.no_run else args.executor,
        workers=None if args.no_run else args.workers,
        threads=args.threads,
        address=args.address if not args.no_run else None,
        gpus_per_run=args.gpus_per_run if not args.no_run else None,
        device=args.device,
    )
    try:
        # worker processes import torch and Avalanche while this process does
        executor.start()
        _set_threads(args.threads)
        res = compare_experiments(
            args.strategies,
            args.benchmark,
            seeds=args.seeds,
            scenario=args.scenario,
            settings=_settings(args.set),
            out_dir=args.out,
            data_root=args.data_root,
            device=args.device,
            benchmark_options=_key_values(args.bench_opt, "--bench-opt"),
            initial_eval=not args.no_initial_eval,
            plots=not args.no_plots,
            progress=args.progress,
            command=shlex.join([PROG, *argv]),
            store=_store_of(args),
            executor=executor,
            retries=args.retries,
            execute=not args.no_run,
            save_model=args.save_model,
        )
    except BaseException:
        # bad input or Ctrl-C: do not wait for the workers
        getattr(executor, "terminate", executor.close)()
        raise
    executor.close()
    print()
    print(
        f"{res['benchmark']} ({res['scenario']}-IL), mean ± std over seeds "
        f"{res['seeds']}:"
    )
    print(res["table"])
    out = Path(res["out_dir"])
    print(f"table: {out / 'comparison.md'}")
    print(f"results: {out / 'comparison.json'}")
    if "plot" in res:
        print(f"plot: {res['plot']}")
    print(
        f"runs: {res['executed']} executed, {res['reused']} taken from the store "
        f"{res['store']}"
    )
    if res["missing"]:
        print(f"{len(res['missing'])} run(s) missing from the table:")
        for line in res["missing"]:
            print(f"  {line}")
        return 1
    return 0


def _lookup(table: Mapping[str, Any], name: str, what: str):
    registry.load_all()
    if name not in table:
        raise UsageError(
            f"unknown {what} {name!r}; known {what}s: "
            f"{', '.join(sorted(table)) or '(none registered)'}."
        )
    return table[name]


def cmd_reproduce(args: argparse.Namespace, argv: List[str]) -> int:
    from avalanche_meta.experiments.context import ReproContext

    spec = _lookup(registry.REPRODUCTIONS, args.name, "reproduction")
    _set_threads(args.threads)
    if args.seeds is not None and args.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {args.seeds}.")
    from avalanche_meta.experiments import make_executor

    _check_execution(args)
    extra = _subset_options(args.only)
    store = _store_of(args)
    executor = make_executor(
        args.executor,
        workers=args.workers,
        threads=args.threads,
        address=args.address,
        gpus_per_run=args.gpus_per_run,
        device=args.device,
    )
    ctx = ReproContext(
        quick=args.quick,
        seeds=args.seeds,
        data_root=args.data_root,
        device=args.device,
        out_dir=Path(args.out),
        command=shlex.join([PROG, *argv]),
        extra=extra,
        store=store,
        executor=executor,
        retries=args.retries,
        execute=not args.no_run,
    )
    try:
        with executor:
            spec.run(ctx)
    except BaseException:
        # bad input or Ctrl-C: do not wait for the workers (finished runs are kept)
        getattr(executor, "terminate", executor.close)()
        raise
    executed = sum(len(r.executed) for r in ctx.sweeps)
    reused = sum(len(r.reused) for r in ctx.sweeps)
    failed = sorted({k for r in ctx.sweeps for k in r.errors})
    if ctx.sweeps:
        print(
            f"runs: {executed} executed, {reused} taken from the store {store.root}"
            + (f", {len(failed)} failed after their retries" if failed else "")
        )
    print(
        f"reproduction {spec.name} finished; runs in the store {store.root}, "
        f"other outputs in {args.out}"
    )
    return 1 if failed else 0


def format_table(result: Any) -> str:
    """A bench's returned dict as a table (rows of dicts) or key/value lines."""
    if (
        isinstance(result, Mapping)
        and result
        and all(isinstance(v, Mapping) for v in result.values())
    ):
        cols: List[str] = []
        for row in result.values():
            cols += [c for c in row if c not in cols]
        head = [""] + cols
        rows = [
            [str(name)] + [_cell(row.get(c)) for c in cols]
            for name, row in result.items()
        ]
        widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [head] + rows
        )
    if isinstance(result, Mapping):
        width = max((len(str(k)) for k in result), default=0)
        return "\n".join(f"{str(k):<{width}}  {_cell(v)}" for k, v in result.items())
    return json.dumps(result, indent=2, default=str)


def _cell(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v, default=str)
    return str(v)


def cmd_bench(args: argparse.Namespace, argv: List[str]) -> int:
    from avalanche_meta.experiments.context import BenchContext

    spec = _lookup(registry.BENCHES, args.name, "bench")
    _set_threads(args.threads)
    ctx = BenchContext(
        quick=args.quick,
        data_root=args.data_root,
        device=args.device,
        out_dir=Path(args.out),
        command=shlex.join([PROG, *argv]),
    )
    result = spec.run(ctx)
    print(format_table(result if result is not None else {}))
    return 0


def _revision_text(meta: Mapping[str, Any]) -> str:
    rev = meta.get("revision") or {}
    text = str(rev.get("commit", rev.get("version", "?")))[:10]
    return text + ("+dirty" if rev.get("dirty") else "")


def cmd_store_list(args: argparse.Namespace, argv: List[str]) -> int:
    store = _store_of(args)
    rows = []
    for run in store.runs():
        c = run.config
        if args.strategy and c.strategy not in args.strategy:
            continue
        if args.benchmark and c.benchmark != args.benchmark:
            continue
        acc = run.results.get("average_accuracy")
        rows.append(
            [
                run.path.name,
                "n/a" if acc is None else f"{acc:.2f}",
                f"{run.results.get('train_seconds') or 0.0:.1f}",
                _revision_text(run.meta),
                str((run.meta.get("worker") or {}).get("host", "?")),
                str(run.meta.get("finished_at", "?")),
            ]
        )
    head = ["run", "avg acc (%)", "train (s)", "revision", "host", "finished"]
    if rows:
        widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
        for r in [head] + rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print(f"{len(rows)} finished run(s) in {store.root}")
    running = store.running()
    if running:
        print(f"{len(running)} run(s) in progress:")
        for name, host, pid in running:
            print(f"  {name} (host {host}, pid {pid})")
    return 0


def cmd_store_merge(args: argparse.Namespace, argv: List[str]) -> int:
    from avalanche_meta.experiments import merge_stores

    report = merge_stores(args.src, args.dst, weights=not args.no_weights)
    print(
        f"merged {args.src} into {args.dst}: {len(report['copied'])} run(s) copied, "
        f"{len(report['kept'])} already there (kept)"
    )
    if report["bad"]:
        print(
            f"{len(report['bad'])} folder(s) not copied: their config.json does not "
            "match their name (edited or damaged):"
        )
        for name in report["bad"]:
            print(f"  {name}")
        return 1
    return 0


def cmd_list(args: argparse.Namespace, argv: List[str]) -> int:
    registry.load_all()
    print("strategies (avalanche-meta run NAME --help):")
    for name, s in sorted(registry.STRATEGIES.items()):
        extra = f"; online, batch {s.online_batch}" if s.online else ""
        print(f"  {name:<20} [{', '.join(s.scenarios)}{extra}] {s.help}")
    print("benchmarks:")
    for name, b in sorted(registry.BENCHMARKS.items()):
        print(
            f"  {name:<20} [{', '.join(b.scenarios)}; default {b.default_scenario}] "
            f"{b.help}"
        )
    print("reproductions (avalanche-meta reproduce NAME):")
    for name, r in sorted(registry.REPRODUCTIONS.items()):
        print(f"  {name:<20} {r.help}")
    if not registry.REPRODUCTIONS:
        print("  (none registered)")
    print("benches (avalanche-meta bench NAME):")
    for name, b in sorted(registry.BENCHES.items()):
        print(f"  {name:<20} {b.help}")
    if not registry.BENCHES:
        print("  (none registered)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser (``run`` is parsed separately, see :func:`cmd_run`)."""
    p = _Parser(
        prog=PROG,
        description="Meta-learning based continual learning on Avalanche.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    sub.add_parser(
        "run",
        help="train one strategy on one benchmark (`run STRATEGY --help`)",
        add_help=False,
    )

    c = sub.add_parser(
        "compare",
        help="run several strategies over several seeds, side by side",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    c.add_argument("strategies", nargs="+", metavar="STRATEGY")
    c.add_argument("--benchmark", required=True, help="a registered benchmark")
    c.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    c.add_argument(
        "--scenario",
        choices=("task", "class", "domain"),
        default=None,
        help="default: the benchmark's default",
    )
    c.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="STRATEGY.PARAM=VALUE",
        help="a hyper-parameter of one strategy (repeatable)",
    )
    c.add_argument(
        "--out", default=None, help="default: runs/compare-<benchmark>-<scenario>"
    )
    _add_data_options(c)
    _add_bench_opt(c)
    c.add_argument("--no-initial-eval", action="store_true", help="skip FWT's eval")
    c.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    c.add_argument("--progress", action="store_true", help="Avalanche progress bars")
    c.add_argument(
        "--save-model", action="store_true", help="each run writes model.pt too"
    )
    _add_threads(c)
    _add_execution_options(c, reproduction=False)
    c.set_defaults(func=cmd_compare)

    r = sub.add_parser(
        "reproduce",
        help="run a paper's table and write its section of docs/RESULTS.md",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    r.add_argument("name", help="a registered reproduction (see `list`)")
    r.add_argument("--quick", action="store_true", help="the minutes-long version")
    r.add_argument("--seeds", type=int, default=None, help="number of seeds")
    r.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="KEY=A,B",
        help="run part of the table (repeatable): methods=LABEL,..., scenarios=..., "
        "protocols=..., n_tasks=N (separate with ';' labels that contain commas); "
        "the reproduction's docstring lists its keys",
    )
    _add_data_options(r)
    r.add_argument("--out", default="runs", help="where other outputs go")
    _add_threads(r)
    _add_execution_options(r, reproduction=True)
    r.set_defaults(func=cmd_reproduce)

    b = sub.add_parser(
        "bench",
        help="a speed/memory comparison; prints its table",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    b.add_argument("name", help="a registered bench (see `list`)")
    b.add_argument("--quick", action="store_true", help="the short version")
    _add_data_options(b)
    b.add_argument("--out", default="runs", help="where outputs go")
    _add_threads(b)
    b.set_defaults(func=cmd_bench)

    ls = sub.add_parser("list", help="strategies, benchmarks, reproductions, benches")
    ls.set_defaults(func=cmd_list)

    st = sub.add_parser(
        "store",
        help="list a run store, or merge one into another",
        description="A run store holds one folder per finished run (config.json, "
        "results.json, plots, optional model.pt), named after its configuration's "
        "key; copy folders between machines and merge them with `store merge`.",
    )
    st_sub = st.add_subparsers(
        dest="store_command", metavar="ACTION", parser_class=_Parser
    )
    st_sub.required = True
    sl = st_sub.add_parser("list", help="the finished runs (and runs in progress)")
    sl.add_argument(
        "--store",
        default=None,
        help="the store (default: $AVALANCHE_META_STORE, else runs/store)",
    )
    sl.add_argument(
        "--strategy",
        action="append",
        default=[],
        help="only this strategy (repeatable)",
    )
    sl.add_argument("--benchmark", default=None, help="only this benchmark")
    sl.set_defaults(func=cmd_store_list)
    sm = st_sub.add_parser(
        "merge",
        help="copy the runs of SRC that DST lacks into DST (atomically, run by run)",
    )
    sm.add_argument(
        "src", metavar="SRC", help="a store folder (e.g. copied from another machine)"
    )
    sm.add_argument("dst", metavar="DST", help="the store to add them to")
    sm.add_argument(
        "--no-weights", action="store_true", help="do not copy model.pt files"
    )
    sm.set_defaults(func=cmd_store_merge)
    return p


def _dispatch(argv: List[str]) -> int:
    if argv and argv[0] == "run":
        return cmd_run(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args, argv)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``avalanche-meta``; returns the exit status.

    :param argv: the arguments (without the program name); None: ``sys.argv[1:]``.
    """
    from avalanche_meta.utils.validation import NonFiniteLossError

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("AVALANCHE_META_DEBUG", "") not in ("", "0")
    try:
        return _dispatch(argv)
    except SystemExit as exit_:  # --help
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except KeyboardInterrupt:
        if debug:
            raise
        print(
            f"\n{PROG}: interrupted; finished runs are kept in the store, and the same "
            "command resumes without redoing them.",
            file=sys.stderr,
        )
        return 130
    except NonFiniteLossError as err:
        if debug:
            raise
        print(f"{PROG}: error: training stopped: {_one_line(err)}", file=sys.stderr)
        return 1
    except (RunFailedError, MissingRunError) as err:
        if debug:
            raise
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as err:
        # UsageError, argument checks of strategies (ValueError), and
        # DatasetNotFoundError (a FileNotFoundError).
        if debug:
            raise
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
