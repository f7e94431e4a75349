"""Sweeps: the run store's keys and resume, the local / processes / Ray executors
(same numbers, retries, killed workers), ``compare`` and reproductions through the
store, ``store list`` / ``store merge``.

Real runs are split-digits with 1 epoch and 16 hidden units (under a second of
training each); the retry and kill tests use :func:`fake_runner`, a module-level
runner (so worker processes can import it) steered by ``config.options``.
"""

# The command line is imported inside the tests: worker processes import this
# module for fake_runner and should not pay for torch and Avalanche.

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from avalanche_meta.experiments import (
    RunConfig,
    RunSettings,
    RunStore,
    Sweep,
    merge_stores,
    resolve_run_config,
    run_sweep,
)
from avalanche_meta.experiments.store import code_revision

TINY = {"epochs": 1, "hidden": "16"}
#: results.json fields that must be equal run for run across executors
METRICS = ("accuracy_matrix", "initial_accuracy", "average_accuracy", "bwt", "fwt")


def main(argv):
    from avalanche_meta.cli.main import main as cli_main

    return cli_main(argv)


def tiny(strategy="naive", seed=0, **hp):
    return resolve_run_config(
        strategy, "split-digits", scenario="class", seed=seed, hparams={**TINY, **hp}
    )


def metrics(res):
    return {k: res[k] for k in METRICS}


def _attempts(config: RunConfig) -> int:
    """Attempts made so far at ``config`` (files in its marker folder)."""
    folder = Path(config.options["marker_dir"])
    return len(list(folder.glob(config.key[:12] + "-*")))


def fake_runner(config: RunConfig, out_dir: Path, settings: RunSettings) -> dict:
    """A run without training. ``config.options``: ``marker_dir`` (one file per
    attempt), ``fail_times`` (raise on the first N attempts), ``kill_times``
    (SIGKILL its own process on the first N attempts), ``interrupt``
    (KeyboardInterrupt), ``sleep`` (seconds)."""
    opts = config.options
    n = _attempts(config)
    Path(opts["marker_dir"], f"{config.key[:12]}-{n}").touch()
    time.sleep(opts.get("sleep", 0.0))
    if n < opts.get("kill_times", 0):
        os.kill(os.getpid(), signal.SIGKILL)
    if opts.get("interrupt"):
        raise KeyboardInterrupt
    if n < opts.get("fail_times", 0):
        raise ValueError(f"planned failure {n} of {config.strategy}")
    (out_dir / "note.txt").write_text("made by fake_runner\n")
    return {
        "strategy": config.strategy,
        "seed": config.seed,
        "average_accuracy": 10.0 * config.seed + n,
        "train_seconds": 0.0,
        "pid": os.getpid(),
    }


def fake(name, seed, marker_dir, **opts):
    return RunConfig(
        name, "none", "class", seed, options={"marker_dir": str(marker_dir), **opts}
    )


# ------------------------------------------------------------------------- keys
def test_key_is_the_configuration_not_the_revision(tmp_path):
    a, b = tiny(), tiny()
    assert a.key == b.key and a.name == b.name
    # a fixed configuration has a fixed key (the same in every process)
    fixed = RunConfig(
        "naive", "split-digits", "class", 3, {"lr": 0.01, "hidden": "16"}, {"n": 2}
    )
    fixed.options = {"initial_eval": True}
    assert fixed.key == (
        "970b25f1cdda746d3717ecfea8a8bf34e2fc8972ce40e98f2e7c6f9f8a044887"
    )
    # every part of the configuration is in the key
    changed = [
        tiny(seed=1),
        tiny(lr=0.0011),
        tiny(epochs=2),
        tiny("replay"),
        resolve_run_config(
            "naive", "split-digits", scenario="task", hparams=TINY, seed=0
        ),
        resolve_run_config(
            "naive", "split-digits", scenario="class", hparams=TINY, initial_eval=False
        ),
        resolve_run_config(
            "naive",
            "split-digits",
            scenario="class",
            hparams=TINY,
            benchmark_options={"test_fraction": 0.4},
        ),
    ]
    keys = {c.key for c in changed}
    assert len(keys) == len(changed) and a.key not in keys
    # defaults are filled in: writing a default out gives the same run
    assert tiny(lr=0.001).key == a.key and tiny(lr="0.001").key == a.key
    # a preset is the same run as its values written out
    from avalanche_meta.cli import registry

    registry.load_all()
    preset, values = next(iter(registry.STRATEGIES["mer"].presets.items()))
    by_name = resolve_run_config("mer", "split-digits", preset=preset)
    assert by_name.key == resolve_run_config("mer", "split-digits", hparams=values).key
    # the revision is recorded in the run, not in its key
    store = RunStore(tmp_path)
    run_sweep([fake("x", 0, tmp_path)], store, runner=fake_runner, log=None)
    cfg = fake("x", 0, tmp_path)
    meta = json.loads((store.path(cfg) / "config.json").read_text())
    assert meta["revision"] == code_revision() and meta["key"] == cfg.key
    assert store.load(cfg)["revision"] == code_revision()
    assert "revision" not in json.dumps(cfg.to_dict())


def test_bad_configuration_is_a_usage_error():
    from avalanche_meta.cli.runner import UsageError

    with pytest.raises(UsageError, match="hyper-parameter 'nope'"):
        tiny(nope=1)
    with pytest.raises(UsageError, match="seed"):
        tiny(seed=-1)
    with pytest.raises(TypeError, match="run configuration holds"):
        RunConfig("naive", "split-digits", hparams={"f": object()}).key


# ----------------------------------------------------------------------- resume
def test_second_invocation_redoes_nothing(tmp_path):
    configs = [fake("a", s, tmp_path) for s in range(3)]
    first = run_sweep(configs, tmp_path / "store", runner=fake_runner, log=None)
    assert len(first.executed) == 3 and not first.missing
    assert sum(_attempts(c) for c in configs) == 3
    # configs given again (and one duplicated): nothing runs, same results
    again = run_sweep(
        configs + configs[:1], tmp_path / "store", runner=fake_runner, log=None
    )
    assert again.executed == [] and len(again.reused) == 3
    assert sum(_attempts(c) for c in configs) == 3
    assert again.results == first.results
    assert Sweep(configs).collect(tmp_path / "store").results == first.results


def test_interrupt_keeps_finished_runs_and_resume_runs_the_rest(tmp_path):
    store = RunStore(tmp_path / "store")
    ok = [fake("a", s, tmp_path) for s in range(2)]
    stop = fake("b", 0, tmp_path, interrupt=True)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(ok[:1] + [stop] + ok[1:], store, runner=fake_runner, log=None)
    assert store.has(ok[0]) and not store.has(stop) and not store.has(ok[1])
    assert list((store.root / ".tmp").iterdir()) == []  # no half-written run
    resumed = run_sweep(ok, store, runner=fake_runner, log=None)
    assert resumed.executed == [ok[1].key] and resumed.reused == [ok[0].key]


# --------------------------------------------------------------- retries, kills
def test_failed_run_is_retried_and_a_hopeless_one_reported(tmp_path):
    once = fake("once", 0, tmp_path, fail_times=1)
    never = fake("never", 0, tmp_path, fail_times=99)
    fine = fake("fine", 0, tmp_path)
    lines = []
    res = run_sweep(
        [once, never, fine],
        tmp_path / "s",
        runner=fake_runner,
        retries=2,
        log=lines.append,
    )
    assert res.get(once)["average_accuracy"] == 1.0  # second attempt (n=1)
    assert res.get(fine) is not None
    assert _attempts(never) == 3 and res.get(never) is None
    assert "planned failure 2 of never" in res.errors[never.key]
    assert res.missing == [never]
    assert "failed: ValueError: planned failure" in res.missing_lines()[0]
    assert any("FAILED after 3 attempt(s)" in line for line in lines)
    assert any("attempt 1 failed" in line and "retrying" in line for line in lines)


def test_processes_executor_survives_a_run_killing_its_worker(tmp_path):
    killer = fake("killer", 0, tmp_path, kill_times=1, sleep=0.2)
    others = [fake("other", s, tmp_path, sleep=0.2) for s in range(2)]
    res = run_sweep(
        [killer] + others,
        tmp_path / "store",
        executor="processes",
        workers=2,
        runner=fake_runner,
        log=None,
    )
    assert not res.missing and not res.errors
    assert _attempts(killer) == 2
    assert res.get(killer)["pid"] != os.getpid()  # ran in a worker process
    assert list((tmp_path / "store" / ".tmp").iterdir()) == []


# ------------------------------------------------------- same numbers everywhere
@pytest.fixture(scope="module")
def local_runs(tmp_path_factory):
    """Two tiny real runs through ``compare`` with the local executor."""
    from avalanche_meta.cli.runner import compare_experiments

    root = tmp_path_factory.mktemp("local")
    res = compare_experiments(
        ["naive"],
        "split-digits",
        seeds=2,
        scenario="class",
        settings={"naive": TINY},
        out_dir=root / "cmp",
        store=root / "store",
        plots=False,
        log=None,
    )
    assert res["executed"] == 2 and not res["missing"]
    return {
        r["seed"]: json.loads(Path(r["results_path"]).read_text()) for r in res["runs"]
    }


def test_processes_executor_gives_the_local_numbers(tmp_path, local_runs):
    from avalanche_meta.cli.runner import compare_experiments

    res = compare_experiments(
        ["naive"],
        "split-digits",
        seeds=2,
        scenario="class",
        settings={"naive": TINY},
        out_dir=tmp_path / "cmp",
        store=tmp_path / "store",
        executor="processes",
        workers=2,
        plots=False,
        log=None,
    )
    assert res["executed"] == 2
    for r in res["runs"]:
        got = json.loads(Path(r["results_path"]).read_text())
        assert metrics(got) == metrics(local_runs[r["seed"]])
        meta = json.loads((Path(r["results_path"]).parent / "config.json").read_text())
        assert meta["worker"]["pid"] != os.getpid()
    # the comparison folder links each run to its store folder
    assert (tmp_path / "cmp" / "naive-s1" / "results.json").is_file()


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_same_numbers_and_a_killed_worker_loses_nothing(
    tmp_path, local_runs, ray_local
):
    store = RunStore(tmp_path / "store")
    configs = [tiny(seed=s) for s in range(2)]
    res = run_sweep(configs, store, executor="ray", log=None)
    assert not res.missing
    for c in configs:
        assert metrics(res.get(c)) == metrics(local_runs[c.seed])

    # kill the Ray worker of one run as soon as it starts: Ray retries it
    slow = [tiny(seed=s, epochs=2) for s in range(2)]
    killed = []

    def killer():
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            for name, _, pid in store.running():
                if name == slow[0].name:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.02)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    res = run_sweep(slow, store, executor="ray", retries=2, log=None)
    thread.join(timeout=5)
    assert killed, "the first run never showed up as running"
    assert not res.missing and not res.errors
    meta = json.loads((store.path(slow[0]) / "config.json").read_text())
    assert meta["worker"]["pid"] != killed[0]  # finished by another worker
    assert all(store.has(c) for c in slow)


def test_ray_not_installed_says_how_to_install(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)
    argv = ["compare", "naive", "--benchmark", "split-digits", "--seeds", "1"]
    argv += ["--store", str(tmp_path / "s"), "--out", str(tmp_path / "c")]
    argv += ["--executor", "ray", "--set", "naive.epochs=1"]
    assert main(argv) == 2
    assert "pip install 'avalanche-meta[ray]'" in capsys.readouterr().err


# ------------------------------------------------------------- reproductions
def _register_repro():
    from avalanche_meta.cli import registry
    from avalanche_meta.cli.runner import MissingRunError

    registry.load_all()
    if "test-sweep-repro" in registry.REPRODUCTIONS:
        return

    @registry.register_reproduction("test-sweep-repro", help="a two-method table")
    def repro(ctx):
        methods = ctx.extra.get("methods", ["naive", "replay"])
        rows = []
        for m in methods:
            hp = dict(TINY, **({"mem_size": 50} if m == "replay" else {}))
            try:
                r = ctx.run(m, "split-digits", scenario="class", seed=0, hparams=hp)
            except MissingRunError:
                rows.append(f"| {m} | missing |")
                continue
            rows.append(f"| {m} | {r['average_accuracy']:.2f} |")
        print("TABLE\n" + "\n".join(rows))


def test_quick_table_from_runs_of_two_invocations(tmp_path, capsys, monkeypatch):
    import avalanche_meta.cli.runner as runner

    _register_repro()
    calls = []
    real = runner.run_experiment

    def counting(strategy, benchmark, **kw):
        calls.append(strategy)
        return real(strategy, benchmark, **kw)

    monkeypatch.setattr(runner, "run_experiment", counting)
    base = ["reproduce", "test-sweep-repro", "--quick", "--out", str(tmp_path)]
    base += ["--store", str(tmp_path / "store")]
    # invocation 1: naive only
    assert main(base + ["--only", "methods=naive"]) == 0
    assert calls == ["naive"]
    # a table from the store alone lists what is missing and runs nothing
    assert main(base + ["--no-run"]) == 0
    out = capsys.readouterr().out
    assert "| replay | missing |" in out and calls == ["naive"]
    # invocation 2: the whole table; naive comes from the store
    assert main(base) == 0
    assert calls == ["naive", "replay"]
    table = capsys.readouterr().out.split("TABLE\n")[1]
    assert "| naive |" in table and "| replay |" in table and "missing" not in table
    # and once more: nothing runs
    assert main(base) == 0 and calls == ["naive", "replay"]


def test_repro_context_store_links_an_explicit_out_dir(tmp_path):
    from avalanche_meta.cli.context import ReproContext

    ctx = ReproContext(quick=True, out_dir=tmp_path, store=tmp_path / "store")
    kw = dict(scenario="class", seed=0, hparams=TINY, plots=False)
    r1 = ctx.run("naive", "split-digits", out_dir=tmp_path / "mine", **kw)
    assert (tmp_path / "mine").is_symlink()
    assert json.loads((tmp_path / "mine" / "results.json").read_text())["seed"] == 0
    r2 = ctx.run("naive", "split-digits", **kw)
    assert r2["results_path"] == r1["results_path"]
    assert len([p for p in (tmp_path / "store").iterdir() if p.name[0] != "."]) == 1


# ------------------------------------------------------------- compare, store
def test_compare_no_run_lists_the_missing_runs(tmp_path, capsys):
    argv = ["compare", "naive", "--benchmark", "split-digits", "--seeds", "2"]
    argv += ["--scenario", "class", "--store", str(tmp_path / "s")]
    argv += ["--out", str(tmp_path / "c"), "--no-plots", "--no-run"]
    argv += ["--set", "naive.epochs=1", "--set", "naive.hidden=16"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "2 run(s) missing from the table" in out
    assert "naive on split-digits (class-IL) seed 1: not run" in out
    assert "runs: 0 executed" in out
    assert "Missing runs" in (tmp_path / "c" / "comparison.md").read_text()


def test_store_merge_and_list(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    run_sweep([fake("x", s, tmp_path) for s in (0, 1)], a, runner=fake_runner, log=None)
    run_sweep([fake("x", s, tmp_path) for s in (1, 2)], b, runner=fake_runner, log=None)
    before = (RunStore(b).path(fake("x", 1, tmp_path)) / "results.json").read_text()
    # a damaged folder: its config no longer matches its name
    bad = RunStore(a).path(fake("x", 0, tmp_path))
    bad_copy = bad.with_name("x-none-class-s9-000000000000")
    import shutil

    shutil.copytree(bad, bad_copy)
    report = merge_stores(a, b)
    assert report["copied"] == [bad.name]
    assert report["kept"] == [RunStore(a).path(fake("x", 1, tmp_path)).name]
    assert report["bad"] == [bad_copy.name]
    merged = RunStore(b)
    assert all(merged.has(fake("x", s, tmp_path)) for s in range(3))
    assert (merged.path(fake("x", 1, tmp_path)) / "results.json").read_text() == before
    assert main(["store", "list", "--store", str(b)]) == 0
    out = capsys.readouterr().out
    assert "3 finished run(s)" in out and "x-none-class-s2-" in out
    c = tmp_path / "c"
    assert main(["store", "merge", str(b), str(c), "--no-weights"]) == 0
    assert "3 run(s) copied" in capsys.readouterr().out
    assert main(["store", "merge", str(tmp_path / "nope"), str(c)]) == 2


def test_processes_executor_ctrl_c_keeps_finished_runs(tmp_path):
    """A KeyboardInterrupt (here raised inside a worker's run) stops the sweep,
    stops the workers and keeps the runs finished before it."""
    first = fake("first", 0, tmp_path)
    stop = fake("stop", 0, tmp_path, interrupt=True, sleep=0.5)
    later = [fake("later", s, tmp_path, sleep=2.0) for s in range(3)]
    store = RunStore(tmp_path / "store")
    run_sweep([first], store, runner=fake_runner, log=None)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(
            [first, stop] + later,
            store,
            executor="processes",
            workers=2,
            runner=fake_runner,
            log=None,
        )
    assert store.has(first) and not store.has(stop)
    assert sum(store.has(c) for c in later) < 3  # stopped before the end
    assert list((store.root / ".tmp").iterdir()) == []


def test_long_runs_start_first_once_their_duration_is_known():
    from collections import Counter, deque

    from avalanche_meta.experiments.executors import Job, cost_group, pop_next

    jobs = [Job(fake(n, s, "/m"), RunSettings(), "/s") for n in "ab" for s in range(3)]

    def order(estimates):
        queue, started = deque(jobs), Counter()
        out = [pop_next(queue, estimates, started) for _ in jobs]
        return [f"{j.config.strategy}{j.config.seed}" for j in out]

    # nothing known: one run of each kind in turn (to time them)
    assert order({}) == ["a0", "b0", "a1", "b1", "a2", "b2"]
    ga, gb = cost_group(jobs[0].config), cost_group(jobs[3].config)
    assert ga == cost_group(jobs[1].config) and ga != gb  # seeds share a group
    # known: longest first; unknown kinds before known ones
    assert order({ga: 1.0, gb: 10.0}) == ["b0", "b1", "b2", "a0", "a1", "a2"]
    assert order({ga: 1.0}) == ["b0", "b1", "b2", "a0", "a1", "a2"]


def test_diagonal_evaluation_gives_the_matrix_runs_ra_la_bti(tmp_path):
    """``evaluation="diagonal"`` evaluates each task after training it and every
    task at the end: RA, LA, BWT and BTI equal the full-matrix run's exactly (the
    model is the same), the other entries are absent and forgetting / FWT are not
    computed; the option is in the run's key only when it is not the default."""
    from avalanche_meta.experiments.runner import UsageError, run_experiment

    common = dict(
        scenario="class",
        seed=0,
        hparams=TINY,
        progress=False,
        plots=False,
        initial_eval=False,
    )
    full = run_experiment("naive", "split-digits", out_dir=tmp_path / "m", **common)
    diag = run_experiment(
        "naive",
        "split-digits",
        out_dir=tmp_path / "d",
        evaluation="diagonal",
        **common,
    )
    for k in ("average_accuracy", "learning_accuracy", "bwt", "bti"):
        assert diag[k] == full[k], k
    R, F = diag["accuracy_matrix"], full["accuracy_matrix"]
    n = len(F)
    assert R[-1] == F[-1]
    assert [R[i][i] for i in range(n)] == [F[i][i] for i in range(n)]
    holes = [(i, j) for i in range(n - 1) for j in range(n) if j != i]
    assert all(R[i][j] is None for i, j in holes)
    assert all(F[i][j] is not None for i, j in holes)
    assert diag["forgetting"] is None and diag["fwt"] is None
    assert full["forgetting"] is not None
    assert diag["config"]["evaluation"] == "diagonal"
    # the key: unchanged for the default, new for "diagonal"
    plain = resolve_run_config("naive", "split-digits", scenario="class")
    assert "evaluation" not in plain.options
    assert (
        resolve_run_config(
            "naive", "split-digits", scenario="class", evaluation="matrix"
        ).key
        == plain.key
    )
    d = resolve_run_config(
        "naive", "split-digits", scenario="class", evaluation="diagonal"
    )
    assert d.options["evaluation"] == "diagonal" and d.key != plain.key
    with pytest.raises(
        UsageError, match="`evaluation` must be one of matrix, diagonal"
    ):
        resolve_run_config("naive", "split-digits", evaluation="rows")
    # a run store executes it with the option
    store = RunStore(tmp_path / "store")
    cfg = resolve_run_config(
        "naive",
        "split-digits",
        scenario="class",
        hparams=TINY,
        initial_eval=False,
        evaluation="diagonal",
    )
    res = run_sweep([cfg], store, log=None, progress=False).get(cfg)
    assert res["config"]["evaluation"] == "diagonal"
    assert res["average_accuracy"] == full["average_accuracy"]
    # a strategy with its own training loop (Joint) cannot evaluate per experience
    with pytest.raises(UsageError, match="runs its own training loop"):
        run_experiment(
            "joint",
            "split-digits",
            out_dir=tmp_path / "j",
            evaluation="diagonal",
            **common,
        )


def test_mer_table_evaluates_many_permutations_on_the_diagonal():
    """The 100-task stream runs with ``evaluation="diagonal"`` (no initial eval);
    the 20-task streams keep the full matrix and their run keys."""
    from avalanche_meta.experiments.context import ReproContext
    from avalanche_meta.experiments.tables.mer import plan_mer_mnist

    plan = plan_mer_mnist(ReproContext(quick=False, seeds=1))
    by_group = {}
    for run in plan.runs:
        by_group.setdefault(run.group.split()[0], []).append(run.config)
    assert all(
        c.options == {"initial_eval": False, "evaluation": "diagonal"}
        for c in by_group["many"]
    )
    for protocol in ("rotations", "permutations"):
        assert all(c.options == {"initial_eval": True} for c in by_group[protocol])
