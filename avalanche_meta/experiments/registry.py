"""Registries of strategies, benchmarks, reproductions and benches.

Entries are registered by the modules of the experiments layer: strategy and
benchmark builders in :mod:`avalanche_meta.experiments.builders`, reproductions
(tables) in :mod:`avalanche_meta.experiments.tables`, benches in
:mod:`avalanche_meta.experiments.benches`; :func:`load_all` imports them. The command
line (:mod:`avalanche_meta.cli`) and the runner look names up here; strategies and
plugins are plain classes that do not know about these registries.
(``avalanche_meta.cli.registry`` is this module under its old name.)
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

#: Modules that register strategies and benchmarks (builders, presets).
METHOD_MODULES = (
    "avalanche_meta.experiments.builders.benchmarks",
    "avalanche_meta.experiments.builders.avalanche_builtin",
    "avalanche_meta.experiments.builders.mer",
    "avalanche_meta.experiments.builders.fewshot",
    "avalanche_meta.experiments.builders.bir",
    "avalanche_meta.experiments.builders.nccl",
)

#: Modules that register reproductions (the papers' tables).
TABLE_MODULES = (
    "avalanche_meta.experiments.tables.baselines",
    "avalanche_meta.experiments.tables.mer",
    "avalanche_meta.experiments.tables.fewshot",
    "avalanche_meta.experiments.tables.bir",
    "avalanche_meta.experiments.tables.nccl",
)

#: Modules that register benches.
OTHER_MODULES = (
    "avalanche_meta.experiments.benches.mer_data",
    "avalanche_meta.experiments.benches.mer",
    "avalanche_meta.experiments.benches.maml",
    "avalanche_meta.experiments.benches.nccl",
    "avalanche_meta.experiments.benches.sweep",
    "avalanche_meta.experiments.benches.bir",
)

#: A hyper-parameter exposed as a command-line flag: (type, default, help).
Param = Tuple[type, Any, str]


@dataclass
class StrategySpec:
    """How the command line builds one strategy.

    :param name: the command-line name (``avalanche-meta run NAME``).
    :param build: ``build(ctx, **hparams) -> SupervisedTemplate``.
    :param help: one line for ``avalanche-meta list``.
    :param scenarios: the scenarios the strategy supports.
    :param online: train on an online stream (``online_batch`` examples per step).
    :param online_batch: default number of examples per online step.
    :param params: hyper-parameters, as ``{name: (type, default, help)}``; each
        becomes a ``--name`` flag (underscores turned into dashes).
    :param presets: named sets of hyper-parameters (``--preset NAME``).
    :param fit: optional ``fit(ctx, strategy, benchmark)`` that replaces the
        runner's default train/eval loop (for strategies such as Joint training); it
        returns None, or a dict of extra results that the runner adds to the run's
        ``results.json`` (names must differ from the runner's own).
    """

    name: str
    build: Callable[..., Any]
    help: str
    scenarios: Tuple[str, ...] = ("task", "class", "domain")
    online: bool = False
    online_batch: int = 10
    params: Dict[str, Param] = field(default_factory=dict)
    presets: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    fit: Optional[Callable[..., Any]] = None


@dataclass
class BenchmarkSpec:
    """How the command line builds one benchmark.

    :param build: ``build(*, scenario, seed, data_root, **options) -> BenchmarkInfo``.
    """

    name: str
    build: Callable[..., Any]
    help: str
    scenarios: Tuple[str, ...] = ("task", "class", "domain")
    default_scenario: str = "class"


@dataclass
class ReproductionSpec:
    """A paper's table: ``run(ctx: ReproContext) -> None`` writes the results document."""

    name: str
    run: Callable[..., Any]
    help: str


@dataclass
class BenchSpec:
    """A speed/memory comparison: ``run(ctx: BenchContext) -> dict`` (printed as a table)."""

    name: str
    run: Callable[..., Any]
    help: str


STRATEGIES: Dict[str, StrategySpec] = {}
BENCHMARKS: Dict[str, BenchmarkSpec] = {}
REPRODUCTIONS: Dict[str, ReproductionSpec] = {}
BENCHES: Dict[str, BenchSpec] = {}


def _add(table: dict, spec) -> None:
    if spec.name in table:
        raise ValueError(f"{spec.name!r} is registered twice.")
    table[spec.name] = spec


def register_strategy(
    name: str,
    *,
    help: str,
    scenarios: Sequence[str] = ("task", "class", "domain"),
    online: bool = False,
    online_batch: int = 10,
    params: Optional[Dict[str, Param]] = None,
    presets: Optional[Dict[str, Dict[str, Any]]] = None,
    fit: Optional[Callable[..., Any]] = None,
):
    """Decorator registering ``build(ctx, **hparams)`` as strategy ``name``."""

    def deco(build):
        _add(
            STRATEGIES,
            StrategySpec(
                name=name,
                build=build,
                help=help,
                scenarios=tuple(scenarios),
                online=online,
                online_batch=online_batch,
                params=dict(params or {}),
                presets=dict(presets or {}),
                fit=fit,
            ),
        )
        return build

    return deco


def register_benchmark(
    name: str,
    *,
    help: str,
    scenarios: Sequence[str] = ("task", "class", "domain"),
    default_scenario: str = "class",
):
    """Decorator registering ``build(*, scenario, seed, data_root, **opts)`` as ``name``."""

    def deco(build):
        _add(
            BENCHMARKS,
            BenchmarkSpec(name, build, help, tuple(scenarios), default_scenario),
        )
        return build

    return deco


def register_reproduction(name: str, *, help: str):
    """Decorator registering ``run(ctx: ReproContext)`` as reproduction ``name``."""

    def deco(run):
        _add(REPRODUCTIONS, ReproductionSpec(name, run, help))
        return run

    return deco


def register_bench(name: str, *, help: str):
    """Decorator registering ``run(ctx: BenchContext) -> dict`` as bench ``name``."""

    def deco(run):
        _add(BENCHES, BenchSpec(name, run, help))
        return run

    return deco


_loaded = False


def load_all() -> None:
    """Import every method module so that its entries are registered (once)."""
    global _loaded
    if _loaded:
        return
    for mod in METHOD_MODULES + TABLE_MODULES + OTHER_MODULES:
        importlib.import_module(mod)
    _loaded = True
