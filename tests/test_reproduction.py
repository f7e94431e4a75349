"""Reproductions as data (:mod:`avalanche_meta.experiments.reproduction`): a declared
list of runs executed as one sweep (in parallel on worker processes), tables from the
store, ``run`` and the store, and ``--device`` / ``--gpus-per-run`` reaching the runs.

Real runs are split digits with 1 epoch and 16 hidden units; GPU and Ray pass-through
are checked on the configuration objects and a stand-in for Ray (no GPU here).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from avalanche_meta.experiments import RunStore, resolve_run_config
from avalanche_meta.experiments.executors import Event, Executor

TINY = {"epochs": 1, "hidden": "16"}
HP = {"naive": TINY, "replay": dict(TINY, mem_size=50), "ewc": TINY}


def main(argv: List[str]) -> int:
    from avalanche_meta.cli.main import main as cli_main

    return cli_main(argv)


def _plan(ctx):
    from avalanche_meta.experiments.reproduction import (
        Plan,
        PlannedRun,
        fmt_mean_std,
        markdown_table,
        values,
    )

    methods = ctx.extra.get("methods", ["naive", "replay", "ewc"])
    seeds = ctx.seeds or 1
    runs = [
        PlannedRun(
            resolve_run_config(
                m, "split-digits", scenario="class", seed=s, hparams=HP[m]
            ),
            label=m,
            group="class",
        )
        for m in methods
        for s in range(seeds)
    ]

    def table(plan, result):
        rows = [
            [m, fmt_mean_std(values(plan.cell(result, "class", m), "average_accuracy"))]
            for m in plan.labels("class")
        ]
        return "TABLE\n" + markdown_table(["method", "acc"], rows)

    def write(plan, result, text):
        from avalanche_meta.experiments.results_doc import write_section

        write_section("reproduce test-plan-repro --quick", "test plan", text)

    return Plan("test-plan-repro", runs, table=table, write=write)


def _register():
    from avalanche_meta.experiments import registry
    from avalanche_meta.experiments.reproduction import run_plan

    registry.load_all()
    if "test-plan-repro" not in registry.REPRODUCTIONS:
        registry.register_reproduction("test-plan-repro", help="a declared table")(
            lambda ctx: run_plan(ctx, _plan(ctx))
        )


def _table(out: str) -> str:
    return out.split("TABLE\n", 1)[1].split("\n\n")[0]


def test_quick_table_from_two_invocations_second_one_in_parallel(
    tmp_path, capsys, monkeypatch
):
    _register()
    results = tmp_path / "RESULTS.md"
    monkeypatch.setenv("AVALANCHE_META_RESULTS", str(results))
    store = tmp_path / "store"
    base = ["reproduce", "test-plan-repro", "--quick", "--out", str(tmp_path)]
    base += ["--store", str(store)]
    # invocation 1: part of the table, in this process
    assert main(base + ["--only", "methods=naive"]) == 0
    out = capsys.readouterr().out
    assert "runs: 1 executed, 0 taken from the store" in out
    # the whole table from the store alone: two runs listed as missing, none run
    assert main(base + ["--no-run"]) == 0
    out = capsys.readouterr().out
    assert "| replay | missing (1 run(s)) |" in _table(out)
    assert "2 run(s) missing from the table" in out
    assert "[test-plan-repro class ewc] seed 0: not run" in out
    assert "runs: 0 executed, 1 taken from the store" in out
    # invocation 2: the whole table on two worker processes; naive is not redone
    assert main(base + ["--executor", "processes", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "runs: 2 executed, 1 taken from the store" in out
    table = _table(out)
    assert "missing" not in table
    assert all(f"| {m} |" in table for m in ("naive", "replay", "ewc"))
    assert "missing" not in results.read_text()
    # the two new runs ran in two different worker processes, not in this one
    import os

    pids = {}
    for run in RunStore(store).runs():
        pids[run.config.strategy] = run.meta["worker"]["pid"]
    assert pids["naive"] == os.getpid()
    assert len({pids["replay"], pids["ewc"], os.getpid()}) == 3
    # and once more: nothing runs
    assert main(base) == 0
    assert "runs: 0 executed, 3 taken from the store" in capsys.readouterr().out


class RecordingExecutor(Executor):
    """Records the jobs it is given; every run fails (nothing needs to train)."""

    name = "recording"

    def __init__(self) -> None:
        self.jobs: List[Any] = []

    def run(self, jobs, retries, estimates=None):
        for job in jobs:
            self.jobs.append(job)
            job.attempt = retries + 1
            yield Event("fail", job, error="recorded, not run")


def test_device_reaches_every_run_of_a_reproduction_and_a_comparison(tmp_path):
    from avalanche_meta.experiments.context import ReproContext
    from avalanche_meta.experiments.runner import compare_experiments

    ex = RecordingExecutor()
    ctx = ReproContext(
        quick=True, device="cuda:1", store=tmp_path / "s", executor=ex, retries=0
    )
    plan = _plan(ctx)
    result = ctx.sweep(plan.configs, labels=plan.run_labels)
    assert len(ex.jobs) == 3 and set(result.errors) == {c.key for c in plan.configs}
    assert {j.settings.device for j in ex.jobs} == {"cuda:1"}
    assert not any(j.settings.plots for j in ex.jobs)
    # the device is not part of a run's key: the same runs as on the CPU
    assert [j.config.key for j in ex.jobs] == [c.key for c in plan.configs]

    ex2 = RecordingExecutor()
    res = compare_experiments(
        ["naive"],
        "split-digits",
        seeds=2,
        settings={"naive": TINY},
        out_dir=tmp_path / "c",
        device="cuda",
        store=tmp_path / "s",
        executor=ex2,
        retries=0,
        plots=False,
        log=None,
    )
    assert [j.settings.device for j in ex2.jobs] == ["cuda", "cuda"]
    assert len(res["missing"]) == 2


class FakeRay:
    """Just enough of Ray's API for :class:`RayExecutor`: records the resource
    requests and the jobs, and returns made-up results."""

    def __init__(self) -> None:
        self.options: List[Dict[str, Any]] = []
        self.jobs: List[Any] = []
        self.init_kwargs: Dict[str, Any] = {}
        self.events: List[str] = []

    def is_initialized(self) -> bool:
        return bool(self.init_kwargs)

    def init(self, **kwargs) -> None:
        self.init_kwargs = kwargs

    def shutdown(self) -> None:
        self.init_kwargs = {}

    def remote(self, fn):
        fake = self

        class Remote:
            def options(self, **kw):
                fake.options.append(kw)
                return self

            def remote(self, job, threads):
                fake.jobs.append(job)
                fake.events.append("submit")
                return len(fake.jobs) - 1

        return Remote()

    def wait(self, refs, num_returns=1, timeout=None):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        self.events.append("get")
        job = self.jobs[ref]
        results = {"average_accuracy": 50.0 + ref, "train_seconds": 1.0}
        return {
            "summary": {"key": job.config.key, "status": "ran"},
            "results": results,
            "files": {"note.txt": b"made up"},
            "worker": {"host": "fake", "pid": 0},
        }

    def cancel(self, ref, force=False) -> None:
        pass


def test_gpus_per_run_and_device_reach_ray(tmp_path, monkeypatch, capsys):
    from avalanche_meta.experiments import executors

    fake = FakeRay()
    monkeypatch.setattr(executors, "import_ray", lambda: fake)
    # --device cuda alone: one GPU per run
    ex = executors.make_executor("ray", device="cuda", workers=2)
    assert ex.gpus_per_run == 1.0 and fake.init_kwargs["num_cpus"] == 2
    ex.close()
    assert executors.make_executor("ray", device="cpu").gpus_per_run == 0.0

    _register()
    store = tmp_path / "store"
    argv = ["reproduce", "test-plan-repro", "--quick", "--out", str(tmp_path)]
    argv += ["--store", str(store), "--executor", "ray", "--device", "cuda"]
    argv += ["--gpus-per-run", "0.5", "--retries", "3"]
    monkeypatch.setenv("AVALANCHE_META_RESULTS", str(tmp_path / "R.md"))
    assert main(argv) == 0
    assert fake.options == [
        dict(num_cpus=1.0, num_gpus=0.5, max_retries=3, retry_exceptions=True)
    ]
    assert [j.settings.device for j in fake.jobs] == ["cuda"] * 3
    # the whole declared list is submitted before any result is awaited
    assert fake.events == ["submit"] * 3 + ["get"] * 3
    out = capsys.readouterr().out
    assert "runs: 3 executed" in out and "| naive | 50.00 |" in _table(out)
    assert len(list(RunStore(store).runs())) == 3
    # the flags are checked: --gpus-per-run is for Ray only
    argv2 = ["reproduce", "test-plan-repro", "--store", str(store)]
    assert main(argv2 + ["--gpus-per-run", "1"]) == 2
    assert "--gpus-per-run is for --executor ray" in capsys.readouterr().err


def test_run_without_out_goes_to_the_store_and_is_not_redone(tmp_path, capsys):
    store = tmp_path / "store"
    argv = ["run", "naive", "--benchmark", "split-digits", "--epochs", "1"]
    argv += ["--hidden", "16", "--no-progress", "--no-plots", "--seed", "2"]
    assert main(argv + ["--store", str(store)]) == 0
    out = capsys.readouterr().out
    (run,) = list(RunStore(store).runs())
    assert f"results: {run.path / 'results.json'}" in out
    assert "taken from the run store" not in out
    assert run.config.seed == 2 and run.config.hparams["epochs"] == 1
    before = (run.path / "results.json").read_text()
    # the same command again: the stored run, not a new one
    assert main(argv + ["--store", str(store)]) == 0
    assert "taken from the run store" in capsys.readouterr().out
    assert (run.path / "results.json").read_text() == before
    assert len(list(RunStore(store).runs())) == 1
    # with --out: a run into that folder, as before the store
    assert main(argv + ["--out", str(tmp_path / "mine")]) == 0
    res = json.loads((tmp_path / "mine" / "results.json").read_text())
    assert res["accuracy_matrix"] == json.loads(before)["accuracy_matrix"]
    assert len(list(RunStore(store).runs())) == 1
    # a failing run leaves nothing in the store, and its error is unchanged (exit 2)
    bad = ["run", "replay", "--benchmark", "split-digits", "--mem-size", "0"]
    assert main(bad + ["--store", str(store), "--no-progress"]) == 2
    assert "mem_size" in capsys.readouterr().err
    assert len(list(RunStore(store).runs())) == 1
    assert not list((store / ".tmp").glob("*"))


def test_paper_tables_are_declared_runs():
    """Every declared reproduction lists its runs without running anything, with the
    same keys as the runs it made before it was declared (``ctx.run``)."""
    from avalanche_meta.experiments.context import ReproContext
    from avalanche_meta.experiments.sweep import SweepResult
    from avalanche_meta.experiments.tables import baselines, bir, mer, nccl

    ctx = ReproContext(quick=True)
    plans = {
        "bir-split-mnist": (bir.plan_bir_split_mnist(ctx), 24),
        "bir-permuted-mnist": (bir.plan_bir_permuted_mnist(ctx), 7),
        "bir-ablation": (bir.plan_bir_ablation(ctx), 12),
        "mer-mnist": (mer.plan_mer_mnist(ctx), 12),
        "baselines-split-digits": (baselines.plan_baselines_split_digits(ctx), 21),
        "nccl": (nccl.plan_nccl(ctx), 16 + 7 + 7),
    }
    for name, (plan, n) in plans.items():
        assert plan.name == name
        assert len(plan.configs) == n, name
        empty = SweepResult(configs=plan.configs)
        text = plan.table(plan, empty)  # a table with every run missing
        assert "|" in text and len(plan.missing_lines(empty)) == n
    # BI-R split MNIST: the class-IL "None" row is Naive, 2 epochs at batch 128
    p = plans["bir-split-mnist"][0]
    (none,) = [r.config for r in p.runs if r.group == "class" and r.label == "None"]
    assert none.strategy == "naive" and none.hparams["epochs"] == 2
    assert (
        none.key
        == resolve_run_config(
            "naive",
            "split-mnist",
            scenario="class",
            seed=0,
            hparams=dict(lr=1e-3, batch_size=128, epochs=2, hidden="400,400"),
        ).key
    )
    # --only keeps working: a subset of the table
    sub = bir.plan_bir_split_mnist(
        ReproContext(quick=True, extra={"scenarios": ["class"], "methods": ["BI-R"]})
    )
    assert [(r.group, r.label) for r in sub.runs] == [("class", "BI-R")]


def test_ctrl_c_keeps_finished_runs_and_the_next_invocation_completes(
    tmp_path, capsys, monkeypatch
):
    import avalanche_meta.experiments.runner as runner

    _register()
    monkeypatch.setenv("AVALANCHE_META_RESULTS", str(tmp_path / "R.md"))
    real = runner.run_experiment
    calls = []

    def interrupted_at_replay(strategy, benchmark, **kw):
        calls.append(strategy)
        if strategy == "replay":
            raise KeyboardInterrupt
        return real(strategy, benchmark, **kw)

    monkeypatch.setattr(runner, "run_experiment", interrupted_at_replay)
    store = tmp_path / "store"
    argv = ["reproduce", "test-plan-repro", "--quick", "--out", str(tmp_path)]
    argv += ["--store", str(store)]
    assert main(argv) == 130
    assert calls == ["naive", "replay"]
    assert [r.config.strategy for r in RunStore(store).runs()] == ["naive"]
    assert not list((store / ".tmp").glob("*")) and not RunStore(store).running()
    monkeypatch.setattr(runner, "run_experiment", real)
    assert main(argv) == 0
    assert "runs: 2 executed, 1 taken from the store" in capsys.readouterr().out
