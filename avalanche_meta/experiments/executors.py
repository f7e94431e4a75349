"""Executors: where the runs of a sweep execute.

- :class:`LocalExecutor` (``--executor local``): one run after another in this
  process.
- :class:`ProcessExecutor` (``--executor processes --workers N``): N worker
  processes of this machine (``concurrent.futures.ProcessPoolExecutor``, spawn
  context), each with its own torch threads (1 unless ``--threads``).
- :class:`RayExecutor` (``--executor ray [--address ADDR]``): Ray remote tasks on a
  Ray cluster, or on a local Ray instance started with ``ray.init()``; Ray retries a
  task whose worker dies or that raises (``max_retries``, ``retry_exceptions``)
  and places it on a GPU (``num_gpus``) when asked.

Each executor takes :class:`Job` s (a configuration, how to run it, the store) and
yields :class:`Event` s; a run that fails, or whose worker dies, is retried up to
``retries`` times, then reported as failed with its error. Runs are written to the
store atomically (see :mod:`avalanche_meta.experiments.store`), so an interrupted
sweep keeps every finished run and a resubmitted run that another attempt already
finished is not redone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

from avalanche_meta.experiments.config import RunConfig, RunSettings, canonical_json
from avalanche_meta.experiments.store import RunStore, worker_info

#: ``runner(config, out_dir, settings) -> results``: trains and evaluates one run,
#: writing its files into ``out_dir``; must be a module-level function for the
#: ``processes`` and ``ray`` executors (it is pickled).
Runner = Callable[[RunConfig, Path, RunSettings], Dict[str, Any]]

#: ``pip`` extra that installs Ray.
RAY_INSTALL = "pip install 'avalanche-meta[ray]'  (or: pip install 'ray>=2.9')"

EXECUTORS = ("local", "processes", "ray")


class RunError(RuntimeError):
    """A run raised: the original error's type and message, and its traceback.

    (A plain exception, so that it crosses process boundaries whatever the
    original error was.)
    """

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details

    def __reduce__(self):
        return (RunError, (str(self), self.details))


def default_runner(
    config: RunConfig, out_dir: Path, settings: RunSettings
) -> Dict[str, Any]:
    """Run a registered strategy on a registered benchmark
    (:func:`avalanche_meta.experiments.runner.run_experiment`)."""
    from avalanche_meta.experiments.runner import run_experiment

    from avalanche_meta.experiments.config import RESULT_OPTIONS

    known = {k: v for k, v in config.options.items() if k in RESULT_OPTIONS}
    return run_experiment(
        config.strategy,
        config.benchmark,
        scenario=config.scenario,
        seed=config.seed,
        data_root=settings.data_root,
        out_dir=out_dir,
        device=settings.device,
        hparams=dict(config.hparams),
        benchmark_options=dict(config.benchmark_options),
        progress=settings.progress,
        plots=settings.plots,
        tensorboard=settings.tensorboard,
        csv=settings.csv,
        save_model=settings.save_model,
        command=settings.command,
        **known,
    )


@dataclass
class Job:
    """One run to execute.

    :param config: what to run.
    :param settings: how (device, data folder, plots, weights).
    :param store_root: the store (absolute path).
    :param runner: see :data:`Runner` (None: :func:`default_runner`).
    :param attempt: failed attempts so far (set by the executors).
    """

    config: RunConfig
    settings: RunSettings
    store_root: str
    runner: Optional[Runner] = None
    attempt: int = 0


@dataclass
class Event:
    """What an executor reports.

    :param kind: ``"start"``, ``"done"`` (``summary`` set), ``"retry"`` and
        ``"fail"`` (``error`` set), or ``"tick"`` (nothing happened; counts only).
    :param running: runs executing now (for Ray, those whose marker file is in the
        store, when the store is reachable from the workers; else those submitted).
    """

    kind: str
    job: Optional[Job] = None
    summary: Dict[str, Any] = field(default_factory=dict)
    error: str = ""
    running: int = 0


def set_threads(threads: Optional[int]) -> None:
    """Torch CPU threads of this process (None or 0: leave torch's choice)."""
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ["MKL_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


def _summary(job: Job, results: Dict[str, Any], seconds: float, status: str) -> dict:
    return {
        "key": job.config.key,
        "status": status,
        "average_accuracy": results.get("average_accuracy"),
        "train_seconds": results.get("train_seconds"),
        "seconds": seconds,
        "worker": worker_info(),
    }


def _call_runner(job: Job, out_dir: Path) -> Dict[str, Any]:
    runner = job.runner or default_runner
    try:
        return runner(job.config, out_dir, job.settings)
    except Exception as err:  # noqa: BLE001 - re-raised as a picklable RunError
        raise RunError(f"{type(err).__name__}: {err}", traceback.format_exc()) from None


def execute_job(job: Job) -> Dict[str, Any]:
    """Run ``job`` in this process and commit it to the store (the function the
    local and ``processes`` executors call).

    Returns at once if the store already holds the run (an earlier attempt finished
    it before its worker died).

    :raises RunError: the run raised.
    """
    store = RunStore(job.store_root)
    t0 = time.perf_counter()
    if store.has(job.config):
        return _summary(job, store.load(job.config) or {}, 0.0, "cached")
    marker = store.mark_running(job.config)
    tmp = store.new_tmp(job.config)
    try:
        results = _call_runner(job, tmp)
        store.commit(job.config, tmp, results)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        store.unmark_running(marker)
    return _summary(job, results, time.perf_counter() - t0, "ran")


def execute_job_remote(job: Job, threads: Optional[int] = None) -> Dict[str, Any]:
    """Run ``job`` in a Ray worker: into a local temporary folder, returning the
    results and the run's files for the driver to commit (the store need not be
    reachable from the worker; when it is, a marker shows the run as running)."""
    set_threads(threads)
    store = RunStore(job.store_root)
    t0 = time.perf_counter()
    marker = store.mark_running(job.config) if store.root.is_dir() else None
    tmp = Path(tempfile.mkdtemp(prefix="avalanche-meta-run-"))
    try:
        results = _call_runner(job, tmp)
        files = {
            str(p.relative_to(tmp)): p.read_bytes()
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        }
        return {
            "summary": _summary(job, results, time.perf_counter() - t0, "ran"),
            "results": results,
            "files": files,
            "worker": worker_info(),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        store.unmark_running(marker)


def _error_text(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def cost_group(config: RunConfig) -> str:
    """Runs that differ only by their seed take about as long: they share a group."""
    data = config.to_dict()
    data.pop("seed")
    return canonical_json(data)


def pop_next(queue: deque, estimates: Dict[str, float], started: Counter) -> Job:
    """Take the job to start next from ``queue``: first a run of a group whose
    duration is not known yet (one of each such group in turn), then the longest
    expected run (``estimates``: seconds per :func:`cost_group`), so that the long
    runs do not end up alone at the end of a sweep. Ties keep the given order."""

    def rank(item):
        i, job = item
        group = cost_group(job.config)
        if group not in estimates:
            return (0, started[group], 0.0, i)
        return (1, 0, -estimates[group], i)

    i, job = min(enumerate(queue), key=rank)
    del queue[i]
    started[cost_group(job.config)] += 1
    return job


class Executor:
    """Base class: :meth:`run` yields :class:`Event` s until every job finished or
    failed. Use as a context manager (or call :meth:`close`) to free workers."""

    name = "base"

    def run(
        self,
        jobs: List[Job],
        retries: int,
        estimates: Optional[Dict[str, float]] = None,
    ) -> Iterator[Event]:  # pragma: no cover
        """Execute ``jobs``.

        :param retries: attempts after the first for a failing run.
        :param estimates: expected seconds per :func:`cost_group` (e.g. from runs
            the store holds); parallel executors start long runs first.
        """
        raise NotImplementedError

    def start(self) -> None:
        """Start the workers now (they import torch and Avalanche while this process
        does something else); otherwise they start with the first run."""

    def close(self) -> None:
        """Free the workers (a no-op for the local executor)."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _failed(job: Job, err: str, retries: int, queue: deque) -> Event:
        job.attempt += 1
        if job.attempt <= retries:
            queue.appendleft(job)
            return Event("retry", job, error=err)
        return Event("fail", job, error=err)


class LocalExecutor(Executor):
    """One run after another in this process (torch threads as they are)."""

    name = "local"

    def run(
        self,
        jobs: List[Job],
        retries: int,
        estimates: Optional[Dict[str, float]] = None,
    ) -> Iterator[Event]:
        queue = deque(jobs)
        while queue:
            job = queue.popleft()
            yield Event("start", job, running=1)
            try:
                summary = execute_job(job)
            except Exception as err:  # noqa: BLE001 - reported or retried
                yield self._failed(job, _error_text(err), retries, queue)
                continue
            yield Event("done", job, summary=summary)


def _init_worker(threads: Optional[int], preload: bool) -> None:
    set_threads(threads)
    if preload:
        from avalanche_meta.experiments import registry
        from avalanche_meta.experiments.runner import run_experiment  # noqa: F401

        registry.load_all()


def _ready() -> int:
    return os.getpid()


class ProcessExecutor(Executor):
    """``workers`` processes of this machine (spawn), each with ``threads`` torch
    threads.

    At most ``workers`` runs are submitted at a time, so every submitted run is
    running, and the next run to start is chosen when a worker frees up (see
    :func:`pop_next`: runs of a kind not timed yet first, then the longest). If a
    worker process dies, the pool breaks: each run that was in flight counts one
    failed attempt (the pool does not tell which one died) and is resubmitted to a
    fresh pool.

    :param workers: number of worker processes.
    :param threads: torch CPU threads per worker (None or 0: torch's choice).
    :param preload: each worker imports the runner, torch and Avalanche as it
        starts (for the default runner; a custom runner imports what it needs).
    :param start_method: ``multiprocessing`` start method (``"spawn"``: a fresh
        interpreter per worker, safe with torch's threads and CUDA).
    """

    name = "processes"

    def __init__(
        self,
        workers: int = 2,
        threads: Optional[int] = 1,
        preload: bool = True,
        start_method: str = "spawn",
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"`workers` must be a positive integer, got {workers!r}.")
        self.workers = workers
        self.threads = threads
        self.preload = preload
        self.start_method = start_method
        self._pool = None

    def _new_pool(self):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context(self.start_method),
            initializer=_init_worker,
            initargs=(self.threads, self.preload),
        )

    def start(self) -> None:
        """Create the pool and start every worker (one no-op task each)."""
        if self._pool is None:
            self._pool = self._new_pool()
            for _ in range(self.workers):
                self._pool.submit(_ready)

    def run(
        self,
        jobs: List[Job],
        retries: int,
        estimates: Optional[Dict[str, float]] = None,
    ) -> Iterator[Event]:
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        queue = deque(jobs)
        estimates = dict(estimates or {})
        started: Counter = Counter()
        inflight: Dict[Any, Job] = {}
        if self._pool is None:
            self._pool = self._new_pool()
        try:
            while queue or inflight:
                while queue and len(inflight) < self.workers:
                    job = pop_next(queue, estimates, started)
                    inflight[self._pool.submit(execute_job, job)] = job
                    yield Event("start", job, running=len(inflight))
                done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                broken = False
                for fut in done:
                    job = inflight.pop(fut)
                    try:
                        summary = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        yield self._failed(
                            job, "its worker process died", retries, queue
                        )
                        continue
                    except Exception as err:  # noqa: BLE001 - reported or retried
                        yield self._failed(job, _error_text(err), retries, queue)
                        continue
                    if summary.get("status") == "ran":
                        estimates[cost_group(job.config)] = summary["seconds"]
                    yield Event("done", job, summary=summary, running=len(inflight))
                if broken:
                    # every run still in flight died with the pool
                    for fut, job in list(inflight.items()):
                        yield self._failed(
                            job, "its worker process died", retries, queue
                        )
                    inflight.clear()
                    self._pool.shutdown(wait=True, cancel_futures=True)
                    self._pool = self._new_pool()
        except BaseException:
            # Ctrl-C or a closed generator: stop the workers, keep finished runs.
            self.terminate()
            raise

    def close(self) -> None:
        """Let the workers finish and exit."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def terminate(self) -> None:
        """Stop the workers now (runs in progress are lost, finished ones kept)."""
        if self._pool is not None:
            # the pool has no public way to stop running tasks: terminate its
            # processes (their half-written runs are removed by clean_stale)
            procs = list((getattr(self._pool, "_processes", None) or {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.join(timeout=10)
            self._pool = None


def import_ray():
    """``import ray``, or a :class:`ValueError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ValueError(
            f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}."
        ) from None
    return ray


class RayExecutor(Executor):
    """Ray remote tasks, one per run.

    Joins the cluster at ``address`` (``"auto"``: the one this machine belongs to),
    or, with no address, uses the Ray instance this process already started or
    starts a local one (``ray.init(num_cpus=workers)``; shut down by :meth:`close`).
    Each task asks for ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs; Ray
    retries it ``retries`` times when its worker dies or it raises
    (``max_retries``, ``retry_exceptions``). Runs execute in a temporary folder of
    the worker and come back to this process, which writes them to the store, so
    the nodes need the package and the data but not the store.

    :param address: a Ray cluster address, or None.
    :param workers: CPUs of the local Ray instance (None: all of this machine).
    :param threads: torch CPU threads per task.
    :param gpus_per_run: GPUs per run (Ray's ``num_gpus``; fractions share a GPU).
    :param cpus_per_run: CPUs per run (Ray's ``num_cpus``).
    """

    name = "ray"

    def __init__(
        self,
        address: Optional[str] = None,
        workers: Optional[int] = None,
        threads: Optional[int] = 1,
        gpus_per_run: float = 0.0,
        cpus_per_run: float = 1.0,
    ) -> None:
        self.ray = import_ray()
        self.threads = threads
        self.gpus_per_run = float(gpus_per_run or 0.0)
        self.cpus_per_run = float(cpus_per_run)
        self._started = False
        if not self.ray.is_initialized():
            kwargs: Dict[str, Any] = {
                "include_dashboard": False,
                "ignore_reinit_error": True,
            }
            if address:
                kwargs["address"] = address
            elif workers:
                kwargs["num_cpus"] = workers
            self.ray.init(**kwargs)
            self._started = True

    def run(
        self,
        jobs: List[Job],
        retries: int,
        estimates: Optional[Dict[str, float]] = None,
    ) -> Iterator[Event]:
        """Submit every job at once (Ray queues them), in the order of
        :func:`pop_next` with the durations known beforehand."""
        ray = self.ray
        queue, started = deque(jobs), Counter()
        jobs = [pop_next(queue, dict(estimates or {}), started) for _ in jobs]
        remote = ray.remote(execute_job_remote).options(
            num_cpus=self.cpus_per_run,
            num_gpus=self.gpus_per_run,
            max_retries=retries,
            retry_exceptions=True,
        )
        refs: Dict[Any, Job] = {}
        for job in jobs:
            refs[remote.remote(job, self.threads)] = job
            yield Event("start", job, running=0)
        stores = {RunStore(j.store_root).root for j in jobs}
        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
                running = sum(len(RunStore(s).running()) for s in stores)
                if not ready:
                    yield Event("tick", running=running)
                    continue
                ref = ready[0]
                job = refs.pop(ref)
                try:
                    out = ray.get(ref)
                    store = RunStore(job.store_root)
                    store.commit_files(
                        job.config, out["files"], out["results"], out["worker"]
                    )
                except Exception as err:  # noqa: BLE001 - Ray already retried it
                    job.attempt = retries + 1
                    cause = getattr(err, "cause", None)
                    yield Event(
                        "fail", job, error=_error_text(cause or err), running=running
                    )
                    continue
                yield Event("done", job, summary=out["summary"], running=running)
        except BaseException:
            for ref in refs:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
            raise

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()
            self._started = False


def make_executor(
    name: str,
    *,
    workers: Optional[int] = None,
    threads: Optional[int] = 1,
    address: Optional[str] = None,
    gpus_per_run: Optional[float] = None,
    device: str = "cpu",
    preload: bool = True,
) -> Executor:
    """The executor called ``name`` (``local``, ``processes`` or ``ray``).

    :param workers: worker processes (``processes``: default 2) or CPUs of a local
        Ray instance (default: all).
    :param threads: torch CPU threads per worker (``processes``, ``ray``).
    :param address: Ray cluster address (``ray`` only).
    :param gpus_per_run: GPUs per run (``ray``; default 1 when ``device`` is CUDA,
        else 0).
    :param preload: ``processes`` workers import the default runner as they start.
    :raises ValueError: unknown name, bad numbers, options the executor does not
        take, or Ray not installed.
    """
    if name not in EXECUTORS:
        raise ValueError(
            f"unknown executor {name!r}; choose one of: {', '.join(EXECUTORS)}."
        )
    if workers is not None and (isinstance(workers, bool) or workers < 1):
        raise ValueError(f"--workers must be >= 1, got {workers!r}.")
    if gpus_per_run is not None and gpus_per_run < 0:
        raise ValueError(f"--gpus-per-run must be >= 0, got {gpus_per_run!r}.")
    if address and name != "ray":
        raise ValueError(f"--address is for --executor ray, not {name!r}.")
    if gpus_per_run and name != "ray":
        raise ValueError(
            f"--gpus-per-run is for --executor ray (Ray places each run on a GPU); "
            f"with {name!r} every run uses --device as given."
        )
    if name == "local":
        if workers not in (None, 1):
            raise ValueError(
                "--workers is for --executor processes or ray; the local executor "
                "runs one run at a time in this process."
            )
        return LocalExecutor()
    if name == "processes":
        return ProcessExecutor(workers=workers or 2, threads=threads, preload=preload)
    if gpus_per_run is None:
        gpus_per_run = 1.0 if str(device).startswith("cuda") else 0.0
    return RayExecutor(
        address=address, workers=workers, threads=threads, gpus_per_run=gpus_per_run
    )
