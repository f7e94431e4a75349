"""The experiments layer: what is run, where, and how results become tables.

A user builds and runs a table from Python with this package alone; the command line
(:mod:`avalanche_meta.cli`) only parses arguments and prints. Layout:

- :mod:`~avalanche_meta.experiments.config`: :class:`RunConfig` (strategy, all
  hyper-parameters, benchmark and options, scenario, seed: what decides a run's
  numbers, hashed into its key), :func:`resolve_run_config`, :class:`RunSettings`
  (device, data folder, plots: how to execute it; not in the key).
- :mod:`~avalanche_meta.experiments.store`: :class:`RunStore` (a folder per finished
  run, written atomically), :func:`merge_stores`.
- :mod:`~avalanche_meta.experiments.executors`: ``local``, ``processes``, ``ray``.
- :mod:`~avalanche_meta.experiments.sweep`: :func:`run_sweep`, :class:`Sweep`,
  :class:`SweepResult`.
- :mod:`~avalanche_meta.experiments.reproduction`: :class:`Plan` (a declared list of
  :class:`PlannedRun` s plus the function that makes the table from the finished
  runs), :func:`run_plan`.
- :mod:`~avalanche_meta.experiments.registry`: the registries of strategies,
  benchmarks, reproductions and benches; :mod:`~avalanche_meta.experiments.context`:
  what builders, reproductions and benches are given (``RunContext``,
  ``ReproContext``, ``BenchContext``); :mod:`~avalanche_meta.experiments.runner`: one
  run (:func:`~avalanche_meta.experiments.runner.run_experiment`) and ``compare``;
  :mod:`~avalanche_meta.experiments.results_doc` and
  :mod:`~avalanche_meta.experiments.plots`: the results document and the PNGs.
- :mod:`avalanche_meta.experiments.builders`: per method, the strategy and benchmark
  builders, their hyper-parameters, presets and the papers' settings
  (``avalanche_builtin``, ``benchmarks``, ``mer``, ``bir``, ``fewshot``, ``nccl``).
- :mod:`avalanche_meta.experiments.tables`: per method, the reproductions (the papers'
  tables) as plans: ``plan_<name>(ctx) -> Plan`` and the table functions
  (``baselines``, ``mer``, ``bir``, ``nccl``, ``fewshot``).
- :mod:`avalanche_meta.experiments.benches`: speed and memory benches (``bir``,
  ``mer``, ``mer_data``, ``maml``, ``nccl``, ``sweep``).

The old module names under ``avalanche_meta.cli`` (``cli.registry``, ``cli.context``,
``cli.runner``, ``cli.results_doc``, ``cli.plots``, ``cli.bench_sweep``,
``cli.methods.*``) stay importable and give these modules.

From Python (a paper's table, its runs on two worker processes)::

    from avalanche_meta.experiments import ReproContext, RunStore
    from avalanche_meta.experiments.tables.bir import plan_bir_split_mnist

    plan = plan_bir_split_mnist(ReproContext(quick=True))
    result = plan.run(RunStore("runs/store"), executor="processes", workers=2)
    print(plan.table(plan, result))
    print(plan.missing_lines(result))      # failed or not run

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
from avalanche_meta.experiments.reproduction import Plan, PlannedRun, run_plan
from avalanche_meta.experiments.store import RunStore, default_store_root, merge_stores
from avalanche_meta.experiments.sweep import Sweep, SweepResult, run_sweep

__all__ = [
    "Executor",
    "LocalExecutor",
    "Plan",
    "PlannedRun",
    "ProcessExecutor",
    "RayExecutor",
    "ReproContext",
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
    "run_plan",
    "run_sweep",
]


def __getattr__(name: str):
    # ReproContext imports torch (for RunContext): imported on first use only
    if name == "ReproContext":
        from avalanche_meta.experiments.context import ReproContext

        return ReproContext
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
