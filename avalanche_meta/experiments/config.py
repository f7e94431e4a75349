"""Run configurations and their keys.

A :class:`RunConfig` is everything that decides a run's numbers: the strategy, its
full hyper-parameters, the benchmark and its options, the scenario, the seed and the
run options that change results (``initial_eval``, ``evaluation``). Its :attr:`RunConfig.key` is a
SHA-256 hash of that content written as canonical JSON, so the same configuration
always gets the same key and any change (one hyper-parameter, the seed, a benchmark
option) gets a new one.

What is *not* in the key, on purpose: the code revision (recorded in the run's
``results.json`` instead), the device, the data folder and output options (plots,
progress bars, saved weights). A run made on another machine, revision or device
is the same run for the store; ``avalanche-meta store list`` shows where each one
came from.

:func:`resolve_run_config` turns what a user writes (a preset, a few hyper-parameters,
no scenario) into the canonical configuration of a registered strategy: the
scenario resolved, every hyper-parameter filled in from the strategy's defaults and
preset. A preset and the same values written out therefore give the same key.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Dict, Mapping, Optional

#: Bumped when the meaning of a configuration changes (every key changes with it).
KEY_VERSION = 1

#: ``run_experiment`` keyword arguments that change a run's numbers; they go in
#: :attr:`RunConfig.options`.
RESULT_OPTIONS = ("initial_eval", "evaluation")


def _jsonable(value: Any) -> Any:
    """``json.dumps`` fallback: paths as text, sets sorted; anything else is an
    error (its text could differ between processes, and so would the key)."""
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    raise TypeError(
        f"a run configuration holds {value!r} ({type(value).__name__}); use "
        "numbers, strings, booleans, None, lists and dicts (a key is a hash of "
        "their JSON)."
    )


def canonical_json(value: Any) -> str:
    """``value`` as JSON with sorted keys and no spaces (tuples become lists)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_jsonable)


@dataclass
class RunConfig:
    """One run of a sweep: what decides its numbers.

    :param strategy: a registered strategy name (or any name a custom runner knows).
    :param benchmark: a registered benchmark name.
    :param scenario: ``"task"``, ``"class"`` or ``"domain"``.
    :param seed: the run's seed.
    :param hparams: the strategy's hyper-parameters (all of them, for a config made
        by :func:`resolve_run_config`).
    :param benchmark_options: keyword arguments of the benchmark's builder.
    :param options: other options that change the numbers (``initial_eval``) or
        that a custom runner reads.

    Values must be JSON data (numbers, strings, booleans, None, lists, dicts; paths
    are taken as text). Treat it as immutable: :attr:`key` is computed from the
    fields on each access.
    """

    strategy: str
    benchmark: str
    scenario: Optional[str] = None
    seed: int = 0
    hparams: Mapping[str, Any] = field(default_factory=dict)
    benchmark_options: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        """The configuration as plain JSON-able data (what :attr:`key` hashes)."""
        return {
            "strategy": self.strategy,
            "benchmark": self.benchmark,
            "scenario": self.scenario,
            "seed": self.seed,
            "hparams": dict(self.hparams),
            "benchmark_options": dict(self.benchmark_options),
            "options": dict(self.options),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunConfig":
        """The inverse of :meth:`to_dict` (extra keys such as ``key`` are ignored)."""
        return cls(
            strategy=data["strategy"],
            benchmark=data["benchmark"],
            scenario=data.get("scenario"),
            seed=data.get("seed", 0),
            hparams=dict(data.get("hparams") or {}),
            benchmark_options=dict(data.get("benchmark_options") or {}),
            options=dict(data.get("options") or {}),
        )

    @property
    def key(self) -> str:
        """SHA-256 (hex) of the canonical JSON of the configuration."""
        payload = canonical_json({"key_version": KEY_VERSION, **self.to_dict()})
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    @property
    def name(self) -> str:
        """The run's folder name: readable fields, then the first 12 hex of the key."""
        scen = self.scenario or "default"
        text = f"{self.strategy}-{self.benchmark}-{scen}-s{self.seed}"
        return re.sub(r"[^A-Za-z0-9_.=-]", "_", text) + "-" + self.key[:12]

    def label(self) -> str:
        """A short human description, e.g. ``mer on split-digits (class-IL) seed 0``."""
        scen = f" ({self.scenario}-IL)" if self.scenario else ""
        return f"{self.strategy} on {self.benchmark}{scen} seed {self.seed}"


def resolve_run_config(
    strategy: str,
    benchmark: str,
    *,
    scenario: Optional[str] = None,
    seed: int = 0,
    hparams: Optional[Mapping[str, Any]] = None,
    preset: Optional[str] = None,
    benchmark_options: Optional[Mapping[str, Any]] = None,
    initial_eval: bool = True,
    evaluation: str = "matrix",
) -> RunConfig:
    """The canonical :class:`RunConfig` of a registered strategy on a registered
    benchmark (arguments as in :func:`avalanche_meta.experiments.runner.run_experiment`).

    The scenario is resolved (None: the benchmark's default) and checked, the
    hyper-parameters are the strategy's defaults updated by the preset, then by
    ``hparams``, each converted to its declared type; the preset's name itself is not
    kept.

    ``evaluation`` enters :attr:`RunConfig.options` only when it is not the
    default ``"matrix"``, so the keys of runs made before it existed stay valid.

    :raises UsageError: unknown names, unsupported scenario, bad hyper-parameters or
        benchmark options, a bad seed, an unknown ``evaluation``.
    """
    from avalanche_meta.experiments.runner import (
        UsageError,
        check_benchmark_options,
        check_evaluation,
        get_benchmark_spec,
        get_strategy_spec,
        resolve_hparams,
        resolve_scenario,
    )

    s_spec = get_strategy_spec(strategy)
    b_spec = get_benchmark_spec(benchmark)
    scen = resolve_scenario(s_spec, b_spec, scenario)
    hp = resolve_hparams(s_spec, preset, hparams)
    opts = dict(benchmark_options or {})
    check_benchmark_options(b_spec, opts)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"`seed` must be a non-negative integer, got {seed!r}.")
    check_evaluation(evaluation)
    options: Dict[str, Any] = {"initial_eval": bool(initial_eval)}
    if evaluation != "matrix":
        options["evaluation"] = evaluation
    return RunConfig(
        strategy=strategy,
        benchmark=benchmark,
        scenario=scen,
        seed=seed,
        hparams=hp,
        benchmark_options=opts,
        options=options,
    )


@dataclass
class RunSettings:
    """How to execute a run, none of which is in its key.

    :param device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (under Ray, ``"cuda"`` is
        the GPU Ray gave the task).
    :param data_root: the data folder (None: ``$AVALANCHE_META_DATA`` of the process
        that runs it, else each benchmark's default).
    :param plots: write the PNG plots.
    :param progress: Avalanche's interactive logger in the run (off in sweeps).
    :param save_model: also write the final weights (``model.pt``).
    :param command: the command line, recorded in the results.
    :param tensorboard: also log to TensorBoard in the run folder.
    :param csv: also log with Avalanche's CSV logger in the run folder.
    """

    device: str = "cpu"
    data_root: Optional[str] = None
    plots: bool = True
    progress: bool = False
    save_model: bool = False
    command: Optional[str] = None
    tensorboard: bool = False
    csv: bool = False
