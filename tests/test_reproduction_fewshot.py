"""The few-shot tables (``fewshot-omniglot``, ``fewshot-omniglot-5w1s``) as declared
runs (:mod:`avalanche_meta.experiments.tables.fewshot`): the plans list their runs
without running anything, a table is built from two separate invocations through the
run store (the second runs only what is missing), and a store run gives the same
figures as the in-process code the tables used before (:func:`run_fewshot_method`).

Real runs use a tiny budget (1 epoch, 2 meta-iterations, 3 test tasks) on the
``omniglot_root`` fixture.
"""

from __future__ import annotations

import json
import random
from typing import List

import numpy as np
import pytest
import torch

from avalanche_meta.experiments import RunStore, resolve_run_config
from avalanche_meta.experiments.context import ReproContext
from avalanche_meta.experiments.runner import UsageError
from avalanche_meta.experiments.sweep import SweepResult
from avalanche_meta.experiments.tables import fewshot as F

TINY = dict(
    epochs=1, maml_iterations=2, maml_batch=2, reptile_iterations=2, eval_tasks=3
)


def main(argv: List[str]) -> int:
    from avalanche_meta.cli.main import main as cli_main

    return cli_main(argv)


def _table(out: str) -> str:
    start = out.index("| setting | method |")
    return out[start:].split("\n\n")[0].split("\nruns:")[0]


def test_fewshot_plans_list_their_runs_without_running():
    ctx = ReproContext(quick=True, seeds=2)
    full = F.plan_fewshot_omniglot(ctx)
    assert full.name == "fewshot-omniglot"
    assert full.groups() == ["5-way 1-shot", "5-way 5-shot", "20-way 1-shot"]
    assert all(full.labels(g) == list(F.METHODS) for g in full.groups())
    assert len(full.configs) == 3 * 5 * 2
    strategies = {r.label: r.config.strategy for r in full.runs}
    assert strategies == {
        "transfer": "transfer",
        "FO-MAML": "fomaml",
        "MAML": "maml",
        "MAML + aug": "maml",
        "Reptile": "reptile",
    }
    for r in full.runs:
        # ordinary store runs of the registered benchmark, no eval before training
        assert r.config.benchmark == "omniglot" and r.config.scenario == "class"
        assert r.config.options == {"initial_eval": False}
        assert r.config.benchmark_options == {}
    # the key is the one `run` gives the same strategy, hyper-parameters and seed
    (maml20,) = [
        r.config
        for r in full.runs
        if r.group == "20-way 1-shot" and r.label == "MAML" and r.config.seed == 1
    ]
    hp = dict(F.BUDGETS["fewshot-omniglot"]["quick"])
    assert maml20.hparams["meta_iterations"] == hp["maml_iterations"] == 40
    assert maml20.hparams["inner_steps"] == 5 and maml20.hparams["eval_ways"] == 20
    assert (
        maml20.key
        == resolve_run_config(
            "maml",
            "omniglot",
            seed=1,
            hparams=F._method_hparams("MAML", "20-way 1-shot", hp)[1],
            initial_eval=False,
        ).key
    )
    # every row of a table with nothing in the store says so
    empty = SweepResult(configs=full.configs, labels=full.run_labels)
    text = full.table(full, empty)
    assert text.count("missing (2 run(s))") == 15
    assert len(full.missing_lines(empty)) == 30
    assert "[fewshot-omniglot 5-way 5-shot Reptile] seed 1: not run" in (
        full.missing_lines(empty)
    )

    five = F.plan_fewshot_omniglot_5w1s(ReproContext())
    assert five.groups() == ["5-way 1-shot"] and len(five.configs) == 5
    assert five.info["budget"]["eval_tasks"] == 600 and not five.info["partial"]
    assert five.info["key"] == "reproduce fewshot-omniglot-5w1s"

    # subsets and budget changes: fewer runs, a partial section of their own
    sub = F.plan_fewshot_omniglot(
        ReproContext(
            quick=True, extra={"methods": ["Reptile", "MAML"], "iterations": 7}
        )
    )
    assert [(r.group, r.label) for r in sub.runs][:2] == [
        ("5-way 1-shot", "MAML"),
        ("5-way 1-shot", "Reptile"),
    ]
    assert len(sub.configs) == 6
    assert {r.config.hparams["meta_iterations"] for r in sub.runs} == {7}
    assert sub.info["key"] == "reproduce fewshot-omniglot --quick partial"
    sub2 = F.plan_fewshot_omniglot(ReproContext(extra={"settings": ["20-way 1-shot"]}))
    assert sub2.groups() == ["20-way 1-shot"] and len(sub2.configs) == 5
    with pytest.raises(UsageError, match="unknown label.*'Reptil'.*MAML \\+ aug"):
        F.plan_fewshot_omniglot(ReproContext(extra={"methods": ["Reptil"]}))
    with pytest.raises(UsageError, match="iterations= must be a positive integer"):
        F.plan_fewshot_omniglot(ReproContext(extra={"iterations": 0}))
    with pytest.raises(UsageError, match="unknown entries \\['epoch'\\]"):
        F.plan_fewshot_omniglot(ReproContext(extra={"budget": {"epoch": 1}}))


def test_building_omniglot_draws_no_random_numbers(omniglot_root):
    """Why a store run (seeded before the benchmark is built) matches the in-process
    code (benchmark built once, seeded before each strategy): after the runner's
    ``seed_everything`` (which imports Avalanche, whose first import draws from
    numpy's generator, before its last reseed), building the benchmark draws
    nothing from torch's, Python's or numpy's generator."""
    from avalanche_meta.experiments.builders.fewshot import build_omniglot
    from avalanche_meta.experiments.runner import seed_everything

    seed_everything(5)
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1])
    info = build_omniglot(scenario="class", seed=3, data_root=omniglot_root)
    assert len(info.benchmark.train_stream) == len(info.benchmark.test_stream) == 1
    assert torch.equal(torch.get_rng_state(), before[0])
    assert random.getstate() == before[1]
    assert (np.random.get_state()[1] == before[2]).all()


def test_fewshot_table_from_two_invocations_equals_the_in_process_figures(
    omniglot_root, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(F.BUDGETS["fewshot-omniglot-5w1s"], "quick", dict(TINY))
    monkeypatch.setenv("AVALANCHE_META_RESULTS", str(tmp_path / "RESULTS.md"))
    store = tmp_path / "store"
    base = ["reproduce", "fewshot-omniglot-5w1s", "--quick", "--store", str(store)]
    base += ["--out", str(tmp_path / "out"), "--data-root", str(omniglot_root)]
    # invocation 1: two of the five rows
    assert main(base + ["--only", "methods=transfer,MAML + aug"]) == 0
    out = capsys.readouterr().out
    assert "runs: 2 executed, 0 taken from the store" in out
    # the whole table from the store alone: three rows missing, nothing runs
    assert main(base + ["--no-run"]) == 0
    out = capsys.readouterr().out
    table = _table(out)
    assert table.count("missing (1 run(s))") == 3
    assert "| 5-way 1-shot | MAML + aug | missing" not in table
    assert "3 run(s) missing from the table" in out
    assert "[fewshot-omniglot-5w1s 5-way 1-shot Reptile] seed 0: not run" in out
    assert "runs: 0 executed, 2 taken from the store" in out
    # invocation 2: only the three missing runs execute
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "runs: 3 executed, 2 taken from the store" in out
    table = _table(out)
    assert "missing" not in table and table.count("| 5-way 1-shot |") == 5
    section = (tmp_path / "RESULTS.md").read_text()
    assert "<!-- BEGIN reproduce fewshot-omniglot-5w1s --quick -->" in section
    assert "missing" not in section and "| 5-way 1-shot | Reptile |" in section
    rows = json.loads(
        (
            tmp_path
            / "out"
            / "reproduce_fewshot-omniglot-5w1s_--quick"
            / "results.json"
        ).read_text()
    )
    assert [r["method"] for r in rows] == list(F.METHODS)
    assert all(r["runs"] == 1 and r["missing"] == 0 for r in rows)

    # each run's results.json holds the few-shot figures the table needs
    plan = F.plan_fewshot_omniglot_5w1s(ReproContext(quick=True))
    stored = RunStore(store)
    assert {s.config.key for s in stored.runs()} == {c.key for c in plan.configs}
    from avalanche_meta.benchmarks.omniglot import omniglot_fewshot

    info = omniglot_fewshot(data_root=omniglot_root)
    for r in plan.runs:
        res = stored.load(r.config)
        fs = res["fewshot"]
        assert fs["unit"] == "fraction" and fs["settings"]["num_tasks"] == 3
        mean, ci = F.fewshot_cell(res)
        assert res["average_accuracy"] == pytest.approx(100 * mean)
        row = rows[F.METHODS.index(r.label)]
        assert row["accuracy"] == mean and row["ci95"] == ci
        if r.label in ("MAML + aug", "Reptile"):
            # the same figures as the in-process code (same seed, same test tasks):
            # task rotations (MAML + aug), Reptile's tasks and Adam; every method
            # and setting, two seeds, local and processes executors: in the notes
            old, _, _ = F.run_fewshot_method(
                info,
                r.config.strategy,
                plan.info["hparams"][(r.group, r.label)],
                seed=r.config.seed,
            )
            assert (old.mean, old.ci95) == (mean, ci), r.label
    # and once more: nothing runs
    assert main(base) == 0
    assert "runs: 0 executed, 5 taken from the store" in capsys.readouterr().out


def test_fewshot_cell_reads_runs_stored_before_results_json_had_it(tmp_path):
    (tmp_path / "fewshot.json").write_text(
        json.dumps({"accuracy_matrix": [[0.5, 0.25]], "ci95_matrix": [[0.1, 0.05]]})
    )
    assert F.fewshot_cell({"out_dir": str(tmp_path)}) == (0.25, 0.05)
    assert F.fewshot_cell(None) is None
    with pytest.raises(ValueError, match="no few-shot results"):
        F.fewshot_cell({"out_dir": str(tmp_path / "nothing"), "run_key": "abc"})
