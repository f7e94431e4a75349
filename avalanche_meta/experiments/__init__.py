"""Sweeps of independent runs: run configurations and their keys, a persistent run
store, and executors (this process, worker processes, a Ray cluster).

- :mod:`~avalanche_meta.experiments.config`: :class:`RunConfig` (what decides a
  run's numbers, hashed into its key), :func:`resolve_run_config`,
  :class:`RunSettings` (how to execute it; not in the key).
- :mod:`~avalanche_meta.experiments.store`: :class:`RunStore` (a folder per finished
  run, written atomically), :func:`merge_stores`.
- :mod:`~avalanche_meta.experiments.executors`: ``local``, ``processes``, ``ray``.
- :mod:`~avalanche_meta.experiments.sweep`: :func:`run_sweep`, :class:`Sweep`,
  :class:`SweepResult`.

``avalanche-meta compare`` and ``avalanche-meta reproduce`` run through these; see
``avalanche-meta store --help`` for listing and merging stores. Ray is optional
(``pip install 'avalanche-meta[ray]'``).
"""

from avalanche_meta.experiments.config import (
    RunConfig,
    RunSettings,
    resolve_run_config,
)
from avalanche_meta.experiments.executors import (
    Executor,
    LocalExecutor,
    ProcessExecutor,
    RayExecutor,
    RunError,
    make_executor,
)
from avalanche_meta.experiments.store import RunStore, default_store_root, merge_stores
from avalanche_meta.experiments.sweep import Sweep, SweepResult, run_sweep

__all__ = [
    "Executor",
    "LocalExecutor",
    "ProcessExecutor",
    "RayExecutor",
    "RunConfig",
    "RunError",
    "RunSettings",
    "RunStore",
    "Sweep",
    "SweepResult",
    "default_store_root",
    "make_executor",
    "merge_stores",
    "resolve_run_config",
    "run_sweep",
]
