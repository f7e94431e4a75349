"""Reproductions as data: a declared list of runs plus the code that makes the table.

A :class:`Plan` is what a reproduction (``avalanche-meta reproduce NAME``) or a
comparison is made of:

- :attr:`Plan.runs`: :class:`PlannedRun` s, each a
  :class:`~avalanche_meta.experiments.config.RunConfig` (strategy, all
  hyper-parameters, benchmark and options, scenario, seed) with the place it takes in
  the table (``group``: e.g. the scenario or protocol; ``label``: the row);
- :attr:`Plan.table`: ``table(plan, result) -> str`` builds the table from the
  finished runs of a store (a :class:`~avalanche_meta.experiments.sweep.SweepResult`);
  runs that are missing show as such, and :meth:`Plan.missing_lines` lists them;
- :attr:`Plan.write`: optional ``write(plan, result, table)``, the section of the
  results document (``docs/RESULTS.md``).

The runs are independent, so any executor runs them, in parallel where it can, and a
run the store holds is never redone: the table of a plan can be built from runs made
by several invocations or machines (``avalanche-meta store merge``).

From Python::

    from avalanche_meta.experiments import ReproContext, RunStore
    from avalanche_meta.experiments.tables.bir import plan_bir_split_mnist

    plan = plan_bir_split_mnist(ReproContext(quick=True))
    result = plan.run(RunStore("runs/store"), executor="processes", workers=2)
    print(plan.table(plan, result))
    print("\\n".join(plan.missing_lines(result)))

The command line does the same (:func:`run_plan`, with ``ctx`` the options of
``reproduce``): ``avalanche-meta reproduce bir-split-mnist --quick --executor
processes --workers 2``; ``--no-run`` builds the table from the store alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from avalanche_meta.experiments.config import RunConfig
from avalanche_meta.experiments.store import RunStore
from avalanche_meta.experiments.sweep import SweepResult, run_sweep


@dataclass
class PlannedRun:
    """One run of a table and its place in it.

    :param config: the run.
    :param label: the row (method) it belongs to.
    :param group: the part of the table (scenario, protocol, stream, ...; ``""``
        when the table has one part).
    """

    config: RunConfig
    label: str
    group: str = ""


@dataclass
class Plan:
    """A reproduction or comparison as data (see the module docstring).

    :param name: the reproduction's name.
    :param runs: the declared runs.
    :param table: ``table(plan, result) -> str``: the table (Markdown) from the
        finished runs in ``result``; it must cope with missing runs.
    :param write: ``write(plan, result, table) -> None``: the results document's
        section (None: none).
    :param info: whatever the table and the section need besides the runs (seeds,
        iterations, what was left out, ...).
    :param skipped: lines saying what the table leaves out and why (not runs).
    """

    name: str
    runs: List[PlannedRun]
    table: Callable[["Plan", SweepResult], str]
    write: Optional[Callable[["Plan", SweepResult, str], None]] = None
    info: Dict[str, Any] = field(default_factory=dict)
    skipped: List[str] = field(default_factory=list)

    @property
    def configs(self) -> List[RunConfig]:
        """The configurations of :attr:`runs` (duplicates once, in order)."""
        seen, out = set(), []
        for r in self.runs:
            if r.config.key not in seen:
                seen.add(r.config.key)
                out.append(r.config)
        return out

    @property
    def run_labels(self) -> Dict[str, str]:
        """How log lines name each run, by key: ``group label seed N``."""
        out: Dict[str, str] = {}
        for r in self.runs:
            text = " ".join(t for t in (self.name, r.group, r.label) if t)
            out.setdefault(r.config.key, f"[{text}] seed {r.config.seed}")
        return out

    def groups(self) -> List[str]:
        """The groups of :attr:`runs`, in order."""
        return list(dict.fromkeys(r.group for r in self.runs))

    def labels(self, group: str = "") -> List[str]:
        """The row labels of ``group``, in order."""
        return list(dict.fromkeys(r.label for r in self.runs if r.group == group))

    def cell(self, result: SweepResult, group: str, label: str) -> List[Any]:
        """Results of the runs of one row, in declared order (None: missing)."""
        return [
            result.get(r.config)
            for r in self.runs
            if r.group == group and r.label == label
        ]

    def missing_lines(self, result: SweepResult) -> List[str]:
        """One line per declared run without results: failed (with the error) or
        not run."""
        return result.missing_lines()

    def run(self, store: Union[RunStore, str, Path], **kwargs: Any) -> SweepResult:
        """Execute the runs the store lacks and gather all of them (keyword
        arguments: those of :func:`~avalanche_meta.experiments.sweep.run_sweep`)."""
        kwargs.setdefault("labels", self.run_labels)
        return run_sweep(self.configs, store, **kwargs)

    def collect(self, store: Union[RunStore, str, Path]) -> SweepResult:
        """Gather the runs the store holds; run nothing."""
        return run_sweep(
            self.configs, store, execute=False, log=None, labels=self.run_labels
        )


def run_plan(ctx: Any, plan: Plan) -> str:
    """Run ``plan`` with the options of a reproduction and make its table.

    The runs go through ``ctx.sweep`` (the store and executor of ``ctx``, one
    progress display over the runs); then the table is printed with the missing
    runs, and the section of the results document is written when
    ``ctx.write_results``.

    :param ctx: a :class:`~avalanche_meta.experiments.context.ReproContext`.
    :return: the table.
    """
    result = ctx.sweep(plan.configs, labels=plan.run_labels)
    table = plan.table(plan, result)
    print(table, flush=True)
    missing = plan.missing_lines(result)
    if missing:
        print(f"{len(missing)} run(s) missing from the table:", flush=True)
        for line in missing:
            print(f"  {line}", flush=True)
    if ctx.write_results and plan.write is not None:
        plan.write(plan, result, table)
    return table


# --------------------------------------------------------------------------------
# Helpers the tables share
# --------------------------------------------------------------------------------
def values(results: Sequence[Optional[Dict[str, Any]]], key: str) -> List[Any]:
    """``r[key]`` of each result (None for a missing run)."""
    return [None if r is None else r.get(key) for r in results]


def fmt_mean_std(vals: Sequence[Optional[float]], missing: str = "missing") -> str:
    """``mean ± sample std`` of the present values (``mean`` alone for one), with
    the number of missing runs when there are some."""
    present = [float(v) for v in vals if v is not None]
    gone = len(vals) - len(present)
    if not present:
        return f"{missing} ({gone} run(s))" if gone else "n/a"
    m = sum(present) / len(present)
    if len(present) == 1:
        text = f"{m:.2f}"
    else:
        s = math.sqrt(sum((v - m) ** 2 for v in present) / (len(present) - 1))
        text = f"{m:.2f} ± {s:.2f}"
    if gone:
        text += f" ({gone} run(s) {missing})"
    return text


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


__all__ = [
    "Plan",
    "PlannedRun",
    "fmt_mean_std",
    "markdown_table",
    "run_plan",
    "values",
]
