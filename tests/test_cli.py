"""The command line end to end on split-digits (in-process through ``main``), plus
one real ``python -m avalanche_meta list``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.supervised import Naive

from avalanche_meta.cli import registry
from avalanche_meta.cli.main import build_run_parser, format_table, main
from avalanche_meta.cli.runner import UsageError
from avalanche_meta.utils.validation import check_finite_loss

torch.set_num_threads(1)

CALLS = {}
SMALL = ["--epochs", "2", "--hidden", "32", "--no-progress"]


def _register_test_entries():
    registry.load_all()
    if "test-repro-cli" in registry.REPRODUCTIONS:
        return

    @registry.register_reproduction("test-repro-cli", help="records its context")
    def repro(ctx):
        CALLS["repro"] = ctx

    @registry.register_bench("test-bench-cli", help="returns a fixed table")
    def bench(ctx):
        CALLS["bench"] = ctx
        return {
            "ours": {"ms_per_step": 1.5, "ratio": 2.0},
            "avalanche": {"ms_per_step": 3.0, "ratio": 1.0},
        }

    class NaNLoss(SupervisedPlugin):
        def before_backward(self, strategy, **kw):
            check_finite_loss(strategy.loss * float("nan"), "test-nan-cli step")

    @registry.register_strategy("test-nan-cli", help="NaN loss", params={})
    def build_nan(ctx):
        model = ctx.default_model(hidden_sizes=(4,))
        return Naive(
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            plugins=[NaNLoss()],
            evaluator=ctx.evaluator,
        )


_register_test_entries()


def test_run_split_digits_writes_results_and_plots(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        ["run", "replay", "--benchmark", "split-digits", "--out", str(out)]
        + ["--epochs", "6", "--hidden", "32", "--no-progress"]
        + ["--mem-size", "100", "--seed", "1"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert f"results: {out / 'results.json'}" in printed
    res = json.loads((out / "results.json").read_text())
    R = res["accuracy_matrix"]
    assert len(R) == 5 and all(len(r) == 5 for r in R)
    assert res["scenario"] == "class" and res["seed"] == 1
    assert res["config"]["hparams"]["mem_size"] == 100
    assert res["config"]["command"].startswith("avalanche-meta run replay")
    assert res["average_accuracy"] > 40.0  # replay keeps old digits (chance: 10)
    assert (out / "accuracy_matrix.png").exists()
    assert (out / "task_accuracy.png").exists()


def test_run_help_lists_the_strategy_flags(capsys):
    assert main(["run", "lamaml", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--n-inner-updates" in text and "(default: 5)" in text
    assert "--no-second-order" in text and "--benchmark" in text
    assert main(["run", "--help"]) == 0
    assert "avalanche-meta run STRATEGY" in capsys.readouterr().out


def test_typed_and_boolean_flags():
    parser = build_run_parser(registry.STRATEGIES["lamaml"])
    args = parser.parse_args(["--benchmark", "x", "--no-second-order", "--lr", "0.5"])
    assert args.hp_second_order is False and args.hp_lr == 0.5
    args = parser.parse_args(["--benchmark", "x", "--second-order", "false"])
    assert args.hp_second_order is False
    args = parser.parse_args(["--benchmark", "x", "--learn-lr"])
    assert args.hp_learn_lr is True
    args = parser.parse_args(["--benchmark", "x"])
    assert not hasattr(args, "hp_second_order")  # unset: default or preset applies
    with pytest.raises(UsageError, match="second-order"):
        parser.parse_args(["--benchmark", "x", "--second-order", "maybe"])


def test_compare_writes_table_json_and_plot(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "naive", "replay", "--benchmark", "split-digits"]
    argv += ["--seeds", "2", "--out", str(out)]
    for s in ("naive", "replay"):
        argv += ["--set", f"{s}.epochs=1", "--set", f"{s}.hidden=16"]
    argv += ["--set", "replay.mem_size=50"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "avg acc (%)" in printed and "±" in printed
    assert f"plot: {out / 'comparison.png'}" in printed
    cmp = json.loads((out / "comparison.json").read_text())
    assert set(cmp["summary"]) == {"naive", "replay"}
    assert len(cmp["runs"]) == 4
    accs = [r["average_accuracy"] for r in cmp["runs"] if r["strategy"] == "naive"]
    mean, std = cmp["summary"]["naive"]["average_accuracy"]
    assert mean == pytest.approx(sum(accs) / 2)
    assert cmp["settings"]["replay"]["mem_size"] == 50
    assert "| naive |" in (out / "comparison.md").read_text()
    assert (out / "comparison.png").stat().st_size > 1000
    assert (out / "replay-s1" / "results.json").exists()


def test_list_lists_everything(capsys):
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    for name in ("naive", "joint", "replay", "ewc", "si", "lwf", "gem", "agem"):
        assert f"  {name} " in text
    for name in ("generative-replay", "lamaml", "avalanche-mer", "split-digits"):
        assert name in text
    assert "test-repro-cli" in text and "test-bench-cli" in text


def test_reproduce_and_bench_get_their_context(tmp_path, capsys):
    argv = ["reproduce", "test-repro-cli", "--quick", "--seeds", "2"]
    argv += ["--out", str(tmp_path)]
    assert main(argv) == 0
    ctx = CALLS["repro"]
    assert ctx.quick and ctx.seeds == 2 and ctx.out_dir == Path(tmp_path)
    assert ctx.command == "avalanche-meta " + " ".join(argv)
    assert ctx.extra == {}
    only = ["--only", "methods=BI-R,DGR + distill", "--only", "iterations=500"]
    assert main(["reproduce", "test-repro-cli", "--out", str(tmp_path), *only]) == 0
    extra = CALLS["repro"].extra
    assert extra == {"methods": ["BI-R", "DGR + distill"], "iterations": 500}
    only = ["--only", "methods=None,5", "--only", "memories=200,5120"]
    assert main(["reproduce", "test-repro-cli", "--out", str(tmp_path), *only]) == 0
    assert CALLS["repro"].extra == {"methods": ["None", "5"], "memories": [200, 5120]}
    only = ["--only", "methods=NCCL, WCM only;Naive"]
    assert main(["reproduce", "test-repro-cli", "--out", str(tmp_path), *only]) == 0
    assert CALLS["repro"].extra == {"methods": ["NCCL, WCM only", "Naive"]}
    assert main(["bench", "test-bench-cli", "--quick"]) == 0
    assert CALLS["bench"].quick
    text = capsys.readouterr().out
    assert "ms_per_step" in text and "ratio" in text and "avalanche" in text
    assert format_table({"a": 1.0, "b": None}) == "a  1\nb  n/a"


BAD = [
    (["run", "nope", "--benchmark", "split-digits"], "unknown strategy 'nope'"),
    (["run", "naive", "--benchmark", "split-digits", "--lr", "abc"], "invalid float"),
    (["run", "naive", "--benchmark", "nope"], "unknown benchmark 'nope'"),
    (["run", "naive"], "--benchmark"),
    (["run", "--benchmark", "split-digits"], "give the strategy first"),
    (["run", "replay", "--benchmark", "split-digits", "--mem-size", "0"], "mem_size"),
    (
        ["run", "naive", "--benchmark", "rotated-mnist", "--scenario", "class"],
        "scenario",
    ),
    (["run", "naive", "--benchmark", "split-digits", "--bench-opt", "x"], "KEY=VALUE"),
    (["run", "naive", "--benchmark", "split-digits", "--preset", "p"], "preset"),
    (
        ["compare", "naive", "--benchmark", "split-digits", "--set", "naive.nope=1"],
        "'nope'",
    ),
    (["compare", "naive", "--benchmark", "split-digits", "--set", "bad"], "--set"),
    (["compare", "naive", "--benchmark", "split-digits", "--seeds", "0"], "seeds"),
    (["run", "naive", "--benchmark", "split-digits", "--threads", "-1"], "--threads"),
    (["reproduce", "nope"], "unknown reproduction 'nope'"),
    (["reproduce", "test-repro-cli", "--only", "methods"], "KEY=VALUE"),
    (["reproduce", "test-repro-cli", "--only", "methods=,"], "at least one"),
    (["reproduce", "test-repro-cli", "--only", "method=BI-R"], "unknown key 'method'"),
    (["bench", "nope"], "unknown bench 'nope'"),
    (["frobnicate"], "invalid choice"),
]


@pytest.mark.parametrize("argv,message", BAD)
def test_bad_input_exits_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("avalanche-meta: error: ")
    assert "\n" not in err and message in err
    assert "Traceback" not in err


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    argv = ["run", "naive", "--benchmark", "split-mnist", "--data-root", str(tmp_path)]
    assert main(argv + SMALL) == 2
    err = capsys.readouterr().err
    assert err.startswith("avalanche-meta: error: ") and str(tmp_path) in err


def test_non_finite_loss_exits_1(capsys, tmp_path):
    argv = ["run", "test-nan-cli", "--benchmark", "split-digits", "--no-progress"]
    assert main(argv + ["--no-plots", "--out", str(tmp_path)]) == 1
    assert "test-nan-cli step" in capsys.readouterr().err


def test_debug_env_reraises(monkeypatch):
    monkeypatch.setenv("AVALANCHE_META_DEBUG", "1")
    with pytest.raises(UsageError, match="unknown strategy"):
        main(["run", "nope", "--benchmark", "split-digits"])


def test_python_dash_m_list():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "avalanche_meta", "list"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "naive" in proc.stdout and "split-digits" in proc.stdout


def test_baselines_reproduction_writes_its_section(tmp_path, monkeypatch, capsys):
    from avalanche_meta.experiments.tables import baselines

    monkeypatch.setattr(baselines, "BASELINES", ("naive", "joint"))
    results = tmp_path / "RESULTS.md"
    monkeypatch.setenv("AVALANCHE_META_RESULTS", str(results))
    argv = ["reproduce", "baselines-split-digits", "--quick", "--seeds", "1"]
    assert main(argv + ["--out", str(tmp_path)]) == 0
    text = results.read_text()
    assert "<!-- BEGIN reproduce baselines-split-digits --quick -->" in text
    assert "avalanche-meta reproduce baselines-split-digits --quick" in text
    assert "| naive |" in text and "| 19.90 |" in text and "| joint |" in text
    assert "Not run here: Task-IL" in text
