"""Sweeps: a declared list of runs, executed into a store, then tabulated.

From Python::

    from avalanche_meta.experiments import RunStore, Sweep, resolve_run_config

    configs = [
        resolve_run_config(s, "split-digits", scenario="class", seed=seed)
        for s in ("naive", "replay", "er", "mer")
        for seed in range(3)
    ]
    sweep = Sweep(configs)
    result = sweep.run(RunStore("runs/store"), executor="processes", workers=2)
    for config in configs:
        print(config.label(), result.get(config)["average_accuracy"])
    print(result.missing_lines())   # runs that failed or were not run

Runs the store already holds are not run again (:meth:`Sweep.collect` runs nothing
and only gathers them); a run that fails is retried ``retries`` times and then
listed in :attr:`SweepResult.errors`, while the other runs go on. Ctrl-C stops the
sweep and keeps every finished run; running the same sweep again resumes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

from avalanche_meta.experiments.config import RunConfig, RunSettings
from avalanche_meta.experiments.executors import (
    Executor,
    Job,
    Runner,
    cost_group,
    make_executor,
)
from avalanche_meta.experiments.store import RunStore


@dataclass
class SweepResult:
    """What a sweep produced.

    :param configs: the sweep's configurations, in order (duplicates removed).
    :param results: results of every run the store holds, by key.
    :param errors: the error of each run that failed after its retries, by key.
    :param executed: keys of the runs executed by this call.
    :param reused: keys of the runs the store already held.
    :param interrupted: the sweep was stopped (Ctrl-C) before the end.
    :param seconds: wall-clock time of the call.
    :param labels: text naming a run in log lines and :meth:`missing_lines`, by key
        (None or absent: :meth:`RunConfig.label`).
    """

    configs: List[RunConfig]
    results: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    errors: Dict[str, str] = field(default_factory=dict)
    executed: List[str] = field(default_factory=list)
    reused: List[str] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0
    labels: Dict[str, str] = field(default_factory=dict)

    def label(self, config: RunConfig) -> str:
        """How log lines name ``config``: its label in :attr:`labels`, else
        :meth:`RunConfig.label`."""
        return self.labels.get(config.key) or config.label()

    def get(self, config: RunConfig) -> Optional[Dict[str, Any]]:
        """``config``'s results, or None if the run is missing."""
        return self.results.get(config.key)

    @property
    def missing(self) -> List[RunConfig]:
        """The configurations without results (failed, or not run)."""
        return [c for c in self.configs if c.key not in self.results]

    def missing_lines(self) -> List[str]:
        """One line per missing run: its label and its error, or "not run"."""
        return [
            f"{self.label(c)}: "
            + (f"failed: {self.errors[c.key]}" if c.key in self.errors else "not run")
            for c in self.missing
        ]


def _unique(configs: Iterable[RunConfig]) -> List[RunConfig]:
    seen, out = set(), []
    for c in configs:
        if c.key not in seen:
            seen.add(c.key)
            out.append(c)
    return out


def _say(line: str) -> None:
    print(line, flush=True)


def _describe(summary: Dict[str, Any]) -> str:
    acc = summary.get("average_accuracy")
    text = "average accuracy " + ("n/a" if acc is None else f"{acc:.2f}%")
    if summary.get("train_seconds") is not None:
        text += f", {summary['train_seconds']:.1f} s training"
    return text


def run_sweep(
    configs: Sequence[RunConfig],
    store: Union[RunStore, str, Path],
    *,
    executor: Union[str, Executor] = "local",
    settings: Optional[RunSettings] = None,
    retries: int = 2,
    workers: Optional[int] = None,
    threads: Optional[int] = 1,
    address: Optional[str] = None,
    gpus_per_run: Optional[float] = None,
    runner: Optional[Runner] = None,
    execute: bool = True,
    progress: Optional[bool] = None,
    log: Optional[Callable[[str], None]] = _say,
    labels: Optional[Dict[str, str]] = None,
) -> SweepResult:
    """Execute the runs of ``configs`` the store lacks, then gather all of them.

    :param configs: the runs (duplicates are run once).
    :param store: the run store (a folder path or a :class:`RunStore`).
    :param executor: ``"local"``, ``"processes"``, ``"ray"`` or an
        :class:`Executor` (kept open; a named one is closed at the end).
    :param settings: device, data folder, plots, weights (not in the runs' keys).
    :param retries: attempts after the first for a run that fails or whose worker
        dies.
    :param workers: worker processes (``processes``) or local Ray CPUs (``ray``).
    :param threads: torch threads per worker (``processes``, ``ray``).
    :param address: Ray cluster address.
    :param gpus_per_run: GPUs per run (``ray``).
    :param runner: what runs one configuration (None: the registered strategy on the
        registered benchmark); a module-level function for ``processes``/``ray``.
    :param execute: False: run nothing, only gather what the store holds.
    :param progress: one progress bar over the runs (None: when stderr is a
        terminal).
    :param log: called with one line per finished, retried or failed run.
    :param labels: how log lines name each run, by key (default:
        :meth:`RunConfig.label`; e.g. a table's row label).
    :return: the :class:`SweepResult`. On Ctrl-C the finished runs are in the store
        and :class:`KeyboardInterrupt` is raised.
    """
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"`retries` must be a non-negative integer, got {retries!r}.")
    t0 = time.perf_counter()
    store = store if isinstance(store, RunStore) else RunStore(store)
    configs = _unique(configs)
    result = SweepResult(configs=configs, labels=dict(labels or {}))
    pending: List[RunConfig] = []
    for c in configs:
        res = store.load(c)
        if res is not None:
            result.results[c.key] = res
            result.reused.append(c.key)
        else:
            pending.append(c)
    if not execute or not pending:
        result.seconds = time.perf_counter() - t0
        return result

    store.root.mkdir(parents=True, exist_ok=True)
    store.clean_stale()
    settings = settings or RunSettings()
    root = str(store.root.resolve())
    jobs = [Job(c, settings, root, runner) for c in pending]
    own = not isinstance(executor, Executor)
    ex = (
        make_executor(
            executor,
            workers=workers,
            threads=threads,
            address=address,
            gpus_per_run=gpus_per_run,
            device=settings.device,
            preload=runner is None,
        )
        if own
        else executor
    )
    # durations of runs the store holds: parallel executors start long runs first
    estimates: Dict[str, float] = {}
    for c in configs:
        res = result.results.get(c.key)
        if res and isinstance(res.get("train_seconds"), (int, float)):
            estimates[cost_group(c)] = res["train_seconds"] + float(
                res.get("eval_seconds") or 0.0
            )
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(jobs),
        unit="run",
        desc=f"runs ({ex.name})",
        disable=None if progress is None else not progress,
        dynamic_ncols=True,
    )

    def say(line: str) -> None:
        if log is None:
            return
        if bar.disable:
            log(line)
        else:
            bar.write(line)

    done = failed = 0

    def show(running: int) -> None:
        bar.set_postfix_str(
            f"done {done}, running {running}, failed {failed}", refresh=True
        )

    try:
        for ev in ex.run(jobs, retries, estimates):
            if ev.kind == "done":
                done += 1
                bar.update(1)
                key = ev.job.config.key
                if ev.summary.get("status") == "cached":
                    result.reused.append(key)
                else:
                    result.executed.append(key)
                say(f"{result.label(ev.job.config)}: {_describe(ev.summary)}")
            elif ev.kind == "retry":
                say(
                    f"{result.label(ev.job.config)}: attempt {ev.job.attempt} failed "
                    f"({ev.error}); retrying"
                )
            elif ev.kind == "fail":
                failed += 1
                bar.update(1)
                result.errors[ev.job.config.key] = ev.error
                say(
                    f"{result.label(ev.job.config)}: FAILED after "
                    f"{ev.job.attempt} attempt(s): {ev.error}"
                )
            show(ev.running)
    except KeyboardInterrupt:
        result.interrupted = True
        say(
            f"interrupted: {done} run(s) finished in this call are kept in "
            f"{store.root}; run the same command again to resume."
        )
        raise
    finally:
        bar.close()
        if own:
            ex.close()
        store.clean_stale()  # folders of runs whose worker was killed
        result.seconds = time.perf_counter() - t0
    for c in pending:
        res = store.load(c)
        if res is not None:
            result.results[c.key] = res
    return result


@dataclass
class Sweep:
    """A declared list of runs plus the code that turns them into a table.

    :param configs: the runs.
    :param table: ``table(result: SweepResult) -> Any`` builds the table from
        whatever runs are present (missing ones are in ``result.missing``).
    :param runner: see :func:`run_sweep`.
    """

    configs: List[RunConfig]
    table: Optional[Callable[[SweepResult], Any]] = None
    runner: Optional[Runner] = None

    def run(self, store: Union[RunStore, str, Path], **kwargs: Any) -> SweepResult:
        """Execute the missing runs and gather all (see :func:`run_sweep`)."""
        kwargs.setdefault("runner", self.runner)
        return run_sweep(self.configs, store, **kwargs)

    def collect(self, store: Union[RunStore, str, Path]) -> SweepResult:
        """Gather the runs the store holds; run nothing."""
        return run_sweep(self.configs, store, execute=False, runner=self.runner)

    def tabulate(self, result: SweepResult) -> Any:
        """``table(result)``; a :class:`ValueError` when the sweep has no table."""
        if self.table is None:
            raise ValueError("this sweep has no `table` function.")
        return self.table(result)
