"""What strategy builders, reproductions and benches are given (by the command line,
or by a user's script): :class:`RunContext`, :class:`ReproContext`,
:class:`BenchContext`. (``avalanche_meta.cli.context`` is this module under its old
name.)"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from avalanche_meta.benchmarks.base import BenchmarkInfo


@dataclass
class RunContext:
    """Everything a strategy builder needs (see ``register_strategy``).

    :param info: the built benchmark and its description.
    :param scenario: ``"task"``, ``"class"`` or ``"domain"``.
    :param device: where to train.
    :param seed: the run's seed (already applied to torch, numpy and random).
    :param evaluator: the ``EvaluationPlugin`` the strategy must use.
    :param out_dir: the run folder (plots of generated samples etc. go there).
    """

    info: BenchmarkInfo
    scenario: str
    device: torch.device
    seed: int
    evaluator: Any
    out_dir: Optional[Path] = None

    def default_model(
        self, hidden_sizes: Sequence[int] = (400, 400), multihead: bool = False
    ) -> nn.Module:
        """An MLP sized for the benchmark (ReLU, no dropout).

        :param hidden_sizes: widths of the hidden layers.
        :param multihead: an Avalanche multi-head model (one head per task) instead
            of one head over ``info.num_classes`` units.
        """
        from avalanche_meta.models.mlp import MLP, MultiHeadMLP

        if multihead:
            return MultiHeadMLP(
                input_size=self.info.input_size, hidden_sizes=tuple(hidden_sizes)
            )
        return MLP(
            input_size=self.info.input_size,
            hidden_sizes=tuple(hidden_sizes),
            num_classes=self.info.num_classes,
        )


@dataclass
class ReproContext:
    """Options of ``avalanche-meta reproduce NAME``.

    :param quick: run the minutes-long version of the table.
    :param seeds: number of seeds (None: the reproduction's own default).
    :param data_root: the data folder (None: the package default).
    :param device: where to train.
    :param out_dir: where run folders go.
    :param command: the command line that started the reproduction (for the results
        document).
    :param write_results: write the results document (tests turn it off).
    :param store: a run store (:class:`avalanche_meta.experiments.RunStore` or a
        folder): :meth:`run` returns the stored results of a configuration the store
        holds and stores every run it makes. None: no store, every call runs (the
        command line always gives one).
    :param executor: where runs the store lacks execute: ``"local"`` (this
        process), ``"processes"``, ``"ray"`` or an
        :class:`~avalanche_meta.experiments.Executor`; needs ``store``. Give an
        ``Executor`` (``make_executor``) to keep its workers between sweeps; a name
        starts and stops one per call. :meth:`sweep` (what a declared reproduction
        calls) runs its runs in parallel on it; :meth:`run` asks for one run and
        waits for it.
    :param retries: attempts after the first for a run that fails or whose worker
        dies (with ``store``).
    :param execute: False: run nothing; a run the store lacks raises
        :class:`avalanche_meta.experiments.runner.MissingRunError` (reproductions that
        report failed runs then list it as missing).
    :param progress: one progress bar over the runs of :meth:`sweep` (None: when
        stderr is a terminal).
    :param sweeps: every :class:`~avalanche_meta.experiments.SweepResult` of
        :meth:`sweep`, in order (the command line reports the runs executed, taken
        from the store and failed).
    """

    quick: bool = False
    seeds: Optional[int] = None
    data_root: Optional[str] = None
    device: str = "cpu"
    out_dir: Path = Path("runs")
    command: str = ""
    write_results: bool = True
    extra: Dict[str, Any] = field(default_factory=dict)
    store: Any = None
    executor: Any = "local"
    retries: int = 2
    execute: bool = True
    progress: Optional[bool] = None
    sweeps: List[Any] = field(default_factory=list)

    def sweep(self, configs: Sequence[Any], labels: Optional[Dict[str, str]] = None):
        """Run the :class:`~avalanche_meta.experiments.RunConfig` s ``configs`` with
        this context's store, executor, device and data folder (no plots); return
        the :class:`~avalanche_meta.experiments.SweepResult`.

        With a :attr:`store`: :func:`~avalanche_meta.experiments.run_sweep` (runs
        the store holds are not redone, the others execute on :attr:`executor`, in
        parallel where it can, retried :attr:`retries` times; nothing executes when
        :attr:`execute` is False). Without one: each run in this process, into
        ``out_dir/<run name>``, a failure recorded as the run's error. Ctrl-C keeps
        the finished runs and raises :class:`KeyboardInterrupt`.

        :param labels: how log lines name each run, by key.
        """
        from avalanche_meta.experiments.config import RunSettings
        from avalanche_meta.experiments.sweep import SweepResult, run_sweep

        settings = RunSettings(
            device=self.device,
            data_root=self.data_root,
            plots=False,
            progress=False,
            command=self.command or None,
        )
        if self.store is not None:
            result = run_sweep(
                configs,
                self.store,
                executor=self.executor,
                settings=settings,
                retries=self.retries,
                execute=self.execute,
                progress=self.progress,
                labels=labels,
            )
        else:
            from avalanche_meta.experiments.executors import default_runner

            result = SweepResult(configs=list(configs), labels=dict(labels or {}))
            for config in result.configs:
                if not self.execute:
                    continue
                try:
                    res = default_runner(
                        config, Path(self.out_dir) / config.name, settings
                    )
                except Exception as err:  # noqa: BLE001 - reported in the table
                    result.errors[config.key] = f"{type(err).__name__}: {err}"
                    print(f"{result.label(config)}: FAILED: {err}", flush=True)
                    continue
                result.results[config.key] = res
                result.executed.append(config.key)
        self.sweeps.append(result)
        return result

    def run(self, strategy: str, benchmark: str, **kwargs) -> Dict[str, Any]:
        """Run one experiment with this context's data root, device and out_dir.

        Keyword arguments are those of :func:`avalanche_meta.experiments.runner.run_experiment`.
        With a :attr:`store`, the run goes through it
        (:func:`avalanche_meta.experiments.runner.run_stored`): a finished run is never
        redone, and an ``out_dir`` given here becomes a link to the run's store
        folder.
        """
        from avalanche_meta.experiments.runner import run_experiment, run_stored

        kwargs.setdefault("data_root", self.data_root)
        kwargs.setdefault("device", self.device)
        kwargs.setdefault("progress", False)
        if self.store is not None:
            if self.command:
                kwargs.setdefault("command", self.command)
            return run_stored(
                strategy,
                benchmark,
                store=self.store,
                executor=self.executor,
                retries=self.retries,
                execute=self.execute,
                **kwargs,
            )
        seed = kwargs.get("seed", 0)
        scen = kwargs.get("scenario") or "default"
        kwargs.setdefault(
            "out_dir", Path(self.out_dir) / f"{strategy}-{benchmark}-{scen}-s{seed}"
        )
        return run_experiment(strategy, benchmark, **kwargs)


@dataclass
class BenchContext:
    """Options of ``avalanche-meta bench NAME``."""

    quick: bool = False
    data_root: Optional[str] = None
    device: str = "cpu"
    out_dir: Path = Path("runs")
    command: str = ""
    write_results: bool = True
    extra: Dict[str, Any] = field(default_factory=dict)
