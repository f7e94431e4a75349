"""Parity of avalanche_meta's MER (Algorithms 1, 6, 7) and ER with the original code.

Usage::

    python benchmarks/parity_mer.py --reference /path/to/mattriemer+MER \\
        [--examples 40] [--out docs/parity/mer.json]

The reference (https://github.com/mattriemer/MER, commit
4b7b9c977f3126f533e968b82321649f1ca7d446) is imported at run time from the given
checkout (``model/meralg1.py``, ``meralg6.py``, ``meralg7.py``, ``eralg4.py``); no
code of it is copied here. For each algorithm both implementations get:

- the same initial weights (MLP 784-100-100-10, ours copied into the reference's);
- the same stream: ``--examples`` synthetic 784-d inputs in [0, 1) with labels
  0..9, half with task label 0 and half with task label 1, one at a time, in order;
- the same random draws: ours are made by our memory's generator and recorded
  (memory slots of every replay batch, Algorithm 7's position of the current
  example, the reservoir's slot draw); the reference's ``random.shuffle`` and
  ``random.randint`` (the only random calls of its ``observe``) are replaced,
  inside its module, by functions that replay exactly those draws. Each replaced
  call checks that it is the call expected (a memory draw, the Algorithm 7
  permutation, a reservoir draw): an extra or missing draw stops the script, so
  the batch structure (k memories + the current example, positions, when Reptile
  happens, the skipped first example of Algorithm 7) is checked, not assumed.

Ours runs through Avalanche's ``strategy.train`` (``train_mb_size=1``, no
shuffling, ``convention="original"``, Domain-IL: no output masking, as the
reference). After every example the parameters of both are compared; at the end
the memories (inputs, labels, task labels, slot by slot). MER is run with each of
our inner loops that is available (native C kernel, TorchScript, autograd).

Shims, at run time only: an ``args`` namespace with the fields the reference's
``Net.__init__`` reads (``cuda=False``). Nothing else was needed with PyTorch 2.x
(``torch.autograd.Variable`` still exists as a no-op wrapper).

Writes a table to stdout and JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import subprocess
import sys
import time
import types
import warnings
from collections import deque
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Tuple

import torch

REFERENCE_COMMIT = "4b7b9c977f3126f533e968b82321649f1ca7d446"

#: Settings per algorithm: small memory so reservoir replacements happen; gamma and
#: beta away from 1 so every interpolation matters; s > 1 for Algorithm 6 so its
#: per-batch Reptile (the code) differs from one Reptile over the s batches (paper).
SETTINGS: Dict[str, Dict[str, Any]] = {
    "alg1": dict(lr=0.1, beta=0.3, gamma=0.7, k=5, s=3, mem=16),
    "alg6": dict(lr=0.1, gamma=0.3, k=5, s=3, mem=16),
    "alg7": dict(lr=0.03, gamma=0.3, k=5, s=5, mem=16),
    "er": dict(lr=0.1, k=5, mem=16),
}
REFERENCE_MODULE = {
    "alg1": "meralg1",
    "alg6": "meralg6",
    "alg7": "meralg7",
    "er": "eralg4",
}


# --------------------------------------------------------------------------------
# The reference, with its random calls replaced by scripted ones
# --------------------------------------------------------------------------------
class Script:
    """Queues of draws the reference must make, in order, with their kind."""

    def __init__(self) -> None:
        self.queue: Deque[Tuple[str, Any]] = deque()
        self.calls = 0

    def push(self, kind: str, value: Any) -> None:
        self.queue.append((kind, value))

    def _pop(self, kind: str):
        if not self.queue:
            raise AssertionError(f"the reference made an unexpected {kind} draw")
        got_kind, value = self.queue.popleft()
        if got_kind != kind:
            raise AssertionError(
                f"the reference made a {kind} draw where ours made a {got_kind} draw"
            )
        self.calls += 1
        return value

    def shuffle(self, order: List[int]) -> None:
        """Replaces ``random.shuffle`` in the reference module.

        A memory draw (``shuffle(order); k = order[j]``): every entry of ``order``
        becomes the scripted slot, so ``order[j]`` is it for any ``j`` (``order`` is
        rebuilt before each batch). Algorithm 7's batch permutation: the scripted
        permutation.
        """
        kind = self.queue[0][0] if self.queue else "memory"
        value = self._pop("permutation" if kind == "permutation" else "memory")
        if kind == "permutation":
            if sorted(value) != sorted(order):
                raise AssertionError("permutation of the wrong length")
            order[:] = value
        else:
            if not 0 <= value < len(order):
                raise AssertionError(f"slot {value} outside memory of {len(order)}")
            order[:] = [value] * len(order)

    def randint(self, low: int, high: int) -> int:
        """Replaces ``random.randint`` (the reservoir draw, both ends included)."""
        value = self._pop("reservoir")
        if not low <= value <= high:
            raise AssertionError(f"reservoir draw {value} outside [{low}, {high}]")
        return value


def load_reference(path: Path, algorithm: str, script: Script):
    sys.path.insert(0, str(path))
    try:
        module = importlib.import_module("model." + REFERENCE_MODULE[algorithm])
    finally:
        sys.path.remove(str(path))
    module.shuffle = script.shuffle
    module.random = types.SimpleNamespace(randint=script.randint)
    return module


def reference_args(algorithm: str, hp: Dict[str, Any]) -> argparse.Namespace:
    """The fields of the reference's argparse ``args`` that its ``Net`` reads."""
    return argparse.Namespace(
        n_layers=2,
        n_hiddens=100,
        lr=hp["lr"],
        replay_batch_size=hp["k"],
        memories=hp["mem"],
        batches_per_example=hp.get("s", 1),
        s=hp.get("s", 1),
        beta=hp.get("beta", 1.0),
        gamma=hp.get("gamma", 1.0),
        cuda=False,
    )


# --------------------------------------------------------------------------------
# Ours, with its draws recorded
# --------------------------------------------------------------------------------
CONVENTION = "original"


def build_ours(algorithm: str, hp: Dict[str, Any], model, loop: str):
    from avalanche.training.plugins import EvaluationPlugin

    from avalanche_meta.strategies import ER, MER

    common = dict(
        model=model,
        lr=hp["lr"],
        mem_size=hp["mem"],
        replay_batch_size=hp["k"],
        scenario="domain",
        num_classes=10,
        seed=1234,
        convention=CONVENTION,
        evaluator=EvaluationPlugin(),
    )
    if algorithm == "er":
        return ER(**common)
    strategy = MER(
        **common,
        batches_per_example=hp["s"],
        beta=hp.get("beta"),
        gamma=hp["gamma"],
        variant=algorithm,
        fast_path=loop != "autograd",
    )
    if loop == "torchscript":
        strategy._bind()
        strategy._native = None
    if strategy.inner_loop != loop:
        raise RuntimeError(f"inner loop {loop} not available ({strategy.inner_loop})")
    return strategy


def record_draws(strategy, events: List[Tuple[str, Any]]) -> None:
    """Wrap the strategy's memory and batch builder to log every random draw."""
    memory = strategy.memory
    sample_indices = memory.sample_indices
    reservoir_slot = memory.reservoir_slot
    replay_batch = strategy.replay_batch

    def sample_indices_logged(n_batches, n_per_batch):
        idx = sample_indices(n_batches, n_per_batch)
        events.append(("memory", idx.tolist()))
        return idx

    def reservoir_slot_logged():
        state = memory.generator.get_state()
        slot = reservoir_slot()
        if memory.n_seen > memory.mem_size:  # a draw happened: replay it exactly
            g = torch.Generator()
            g.set_state(state)
            high = memory.n_seen + 1 if memory.original_draw else memory.n_seen
            events.append(("reservoir", int(torch.randint(0, high, (1,), generator=g))))
        return slot

    def replay_batch_logged(x, y, t, n_batches, position="first"):
        out = replay_batch(x, y, t, n_batches, position)
        events.append(("position", (position, list(out[3]), int(out[1].shape[1]))))
        return out

    memory.sample_indices = sample_indices_logged
    memory.reservoir_slot = reservoir_slot_logged
    strategy.replay_batch = replay_batch_logged


def params_of(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def run_ours(algorithm, hp, model, loop, x, y, t):
    """Train ours example by example; return (events per example, params per example)."""
    from avalanche.benchmarks import benchmark_from_datasets
    from avalanche.benchmarks.utils import (
        _make_taskaware_tensor_classification_dataset as make_dataset,
    )
    from avalanche.core import SupervisedPlugin

    strategy = build_ours(algorithm, hp, model, loop)
    events: List[Tuple[str, Any]] = []
    per_example: List[List[Tuple[str, Any]]] = []
    params: List[torch.Tensor] = []

    class AfterEach(SupervisedPlugin):
        def after_training_iteration(self, strategy, **kwargs):
            per_example.append(list(events))
            events.clear()
            params.append(params_of(strategy.model))

    strategy.plugins.append(AfterEach())
    record_draws(strategy, events)
    datasets = []
    for task in sorted(set(t.tolist())):
        sel = t == task
        datasets.append(
            make_dataset(x[sel], y[sel], task_labels=[task] * int(sel.sum()))
        )
    bm = benchmark_from_datasets(train=datasets, test=datasets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for experience in bm.train_stream:
            strategy.train(experience, shuffle=False)
    return strategy, per_example, params


def script_example(algorithm, hp, events, script: Script, index: int) -> None:
    """Turn our draws for one example into the reference's expected calls."""
    memory = [v for k, v in events if k == "memory"]
    positions = [v for k, v in events if k == "position"]
    reservoir = [v for k, v in events if k == "reservoir"]
    if algorithm == "alg7" and index == 0:
        if memory or positions:
            raise AssertionError("ours drew a batch for the stream's first example")
    if memory:
        rows = memory[0]
        if algorithm == "alg6":
            # meralg6 builds one batch before its loop and never uses it
            for _ in rows[0]:
                script.push("memory", 0)
        for row in rows:
            for slot in row:
                script.push("memory", int(slot))
        if algorithm == "alg7":
            position, pos, m = positions[0]
            p = pos[0]
            # the reference's batch list is [current] + memories; bx2[i] =
            # bxs[perm[i]]: put the current example (index 0) at position p
            perm = list(range(1, p + 1)) + [0] + list(range(p + 1, m))
            script.push("permutation", perm)
    for j in reservoir:
        script.push("reservoir", int(j))


def run_reference(module, algorithm, hp, model, x, y, t, per_example, ours_params):
    script = Script()
    module.shuffle = script.shuffle
    module.random = types.SimpleNamespace(randint=script.randint)
    torch.manual_seed(0)
    net = module.Net(784, 10, 2, reference_args(algorithm, hp))
    with torch.no_grad():
        ref_params = list(net.net.parameters())
        our_params = list(model.parameters())
        assert len(ref_params) == len(our_params)
        for a, b in zip(ref_params, our_params):
            a.copy_(b)
    diffs = []
    for i in range(x.shape[0]):
        script_example(algorithm, hp, per_example[i], script, i)
        net.observe(x[i : i + 1].clone(), int(t[i]), y[i : i + 1].clone())
        if script.queue:
            raise AssertionError(
                f"example {i}: the reference left {len(script.queue)} of our draws "
                f"unused ({script.queue[0][0]} first)"
            )
        diffs.append(float((params_of(net.net) - ours_params[i]).abs().max()))
    return net, diffs, script.calls


def compare_memory(strategy, net) -> Dict[str, Any]:
    mem = strategy.memory
    n = len(mem)
    if n != len(net.M):
        return {"same_size": False, "ours": n, "reference": len(net.M)}
    ref_x = torch.stack([torch.as_tensor(m[0]).float().view(-1) for m in net.M])
    ref_y = torch.tensor([int(m[1]) for m in net.M])
    ref_t = torch.tensor([int(m[2]) for m in net.M])
    return {
        "same_size": True,
        "slots": n,
        "max_abs_diff_x": float((mem.x[:n].view(n, -1) - ref_x).abs().max()),
        "labels_equal": bool(torch.equal(mem.y[:n].cpu(), ref_y)),
        "task_labels_equal": bool(torch.equal(mem.t[:n].cpu(), ref_t)),
    }


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", required=True, type=Path)
    parser.add_argument("--examples", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/parity/mer.json"))
    parser.add_argument(
        "--algorithms", default="alg1,alg6,alg7,er", help="comma-separated subset"
    )
    parser.add_argument(
        "--convention",
        default="original",
        choices=("original", "paper"),
        help="our convention; 'paper' is a negative control (must not match)",
    )
    args = parser.parse_args(argv)
    global CONVENTION
    CONVENTION = args.convention
    torch.set_num_threads(1)
    if not (args.reference / "model" / "meralg1.py").exists():
        parser.error(f"{args.reference} is not a checkout of mattriemer/MER")
    try:
        commit = subprocess.run(
            ["git", "-C", str(args.reference), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown (not a git checkout)"

    from avalanche_meta.models.mlp import MLP
    from avalanche_meta.strategies._mer_kernels import native_library

    g = torch.Generator().manual_seed(args.seed)
    n = args.examples
    x = torch.rand(n, 784, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    t = torch.cat([torch.zeros(n // 2), torch.ones(n - n // 2)]).long()

    loops = ["native", "torchscript", "autograd"]
    if native_library() is None:
        loops.remove("native")
    rows = []
    for algorithm in args.algorithms.split(","):
        hp = SETTINGS[algorithm]
        for loop in loops if algorithm != "er" else ["autograd"]:
            torch.manual_seed(args.seed)
            model = MLP(784, (100, 100), 10)
            initial = copy.deepcopy(model)
            t0 = time.perf_counter()
            strategy, per_example, ours_params = run_ours(
                algorithm, hp, model, loop, x, y, t
            )
            module = load_reference(args.reference, algorithm, Script())
            net, diffs, calls = run_reference(
                module, algorithm, hp, initial, x, y, t, per_example, ours_params
            )
            moved = float((ours_params[-1] - params_of(initial)).abs().max())
            rows.append(
                {
                    "algorithm": algorithm,
                    "reference": f"model/{REFERENCE_MODULE[algorithm]}.py",
                    "our_inner_loop": loop if algorithm != "er" else "optimizer",
                    "settings": hp,
                    "examples": n,
                    "draws_replayed": calls,
                    "max_abs_param_diff": max(diffs),
                    "final_abs_param_diff": diffs[-1],
                    "max_abs_param_change": moved,
                    "memory": compare_memory(strategy, net),
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
            r = rows[-1]
            print(
                f"{algorithm:5s} {r['our_inner_loop']:11s} draws {calls:5d}  "
                f"max |dtheta| {r['max_abs_param_diff']:.2e}  final "
                f"{r['final_abs_param_diff']:.2e}  (params moved up to {moved:.2e})  "
                f"memory |dx| {r['memory'].get('max_abs_diff_x', float('nan')):.1e} "
                f"labels equal {r['memory'].get('labels_equal')}",
                flush=True,
            )
    result = {
        "reference": "https://github.com/mattriemer/MER",
        "reference_commit_expected": REFERENCE_COMMIT,
        "reference_commit": commit,
        "command": "python benchmarks/parity_mer.py --reference <MER checkout> "
        f"--examples {n} --seed {args.seed}",
        "torch": torch.__version__,
        "stream": f"{n} synthetic 784-d examples in [0,1), labels 0..9, task labels "
        "0 then 1, one at a time; MLP 784-100-100-10 (same initial weights); "
        "convention='original'; Domain-IL",
        "tolerance": 1e-5,
        "rows": rows,
        "remaining_differences": [
            "Floating-point rounding only: the native kernel sums in another order "
            "than autograd and is built with -fassociative-math; our Reptile step "
            "is torch.lerp (theta_0 + w (theta - theta_0), or its mirrored form for "
            "w >= 0.5) where the reference computes before + (after - before) * w "
            "on state_dict copies; with gamma = 1 we skip the no-op interpolation.",
            "Random draws are the same by construction (replayed), not by seeding: "
            "the reference draws with Python's random.shuffle (a memory slot is "
            "order[j] after a fresh shuffle, i.e. uniform with replacement) and "
            "random.randint; ours with a torch.Generator (uniform with replacement, "
            "randint over 0..age with convention='original'). Same distributions, "
            "different streams of numbers for the same seed.",
            "Algorithm 7: the reference shuffles the whole batch (memories "
            "included); ours inserts the current example at a uniform position and "
            "keeps the memories in their drawn order. The memories being i.i.d. "
            "uniform draws, both give the same distribution of batches; the parity "
            "run feeds the reference the permutation that reproduces our batch.",
        ],
    }
    ok = all(
        r["max_abs_param_diff"] <= result["tolerance"]
        and r["memory"].get("same_size")
        and r["memory"].get("max_abs_diff_x", 1.0) == 0.0
        and r["memory"].get("labels_equal")
        and r["memory"].get("task_labels_equal")
        for r in rows
    )
    result["all_within_tolerance"] = ok
    print()
    print(
        "| algorithm | our inner loop | draws | max abs param diff | final | memory |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        m = r["memory"]
        mem_text = (
            f"{m['slots']} slots, |dx| {m['max_abs_diff_x']:.0e}, labels "
            f"{'equal' if m['labels_equal'] and m['task_labels_equal'] else 'DIFFER'}"
            if m.get("same_size")
            else "sizes differ"
        )
        print(
            f"| {r['algorithm']} | {r['our_inner_loop']} | {r['draws_replayed']} | "
            f"{r['max_abs_param_diff']:.2e} | {r['final_abs_param_diff']:.2e} | "
            f"{mem_text} |"
        )
    print(f"\nall within {result['tolerance']:g}: {ok}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.out}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["all_within_tolerance"] else 1)
