"""Time one BI-R training iteration: the official code and avalanche_meta, side by side.

    OMP_NUM_THREADS=1 python benchmarks/speed_bir_reference.py \\
        --reference /work/refs/GMvandeVen+brain-inspired-replay [--iterations 100]

Both run the paper's split-MNIST Class-IL BI-R (VAE / classifier 2 x 400, latent 100,
conditional replay, decoder gates switching off 0.8 of the units per class,
distillation T = 2, batch 128, Adam 1e-3) in one process, one torch thread, on the
same MNIST files. Each trains a few iterations on the first task (digits 0/1), takes
its frozen copy as the previous model / generator, and then the timed iterations run
on the second task (digits 2/3) with replay of 0/1.

- The official code (github.com/GMvandeVen/brain-inspired-replay, commit 1a030f7) is
  imported at run time from ``--reference``; nothing of it is copied here. One of its
  iterations is what its ``train.py::train_cl`` does per batch for this protocol,
  calling its own functions: the next batch of its data loader (its
  ``get_multitask_experiment`` datasets and ``utils.get_data_loader``, which reads
  the images one by one through torchvision), ``previous_generator.sample``,
  ``previous_model.classify`` on the replayed batch, and ``model.train_a_batch``
  (forward passes, losses, backward pass, Adam step). Its time without the data
  loader is reported too.
- Ours: one iteration of :class:`avalanche_meta.strategies.BrainInspiredReplay`'s
  training loop, Avalanche callbacks included (timed between consecutive
  ``before_training_iteration`` callbacks), with the Adam the command line builds
  (``--adam fused`` by default; ``plain`` for ``torch.optim.Adam`` without
  ``fused``).

The two alternate in blocks of ``--block`` iterations (after ``--warmup``
iterations each), so a change in the machine's load touches both; the medians over
``--iterations`` iterations and their ratio are printed (and written to ``--json``),
of the wall-clock time and of the process's CPU time (``time.process_time``; on a
machine shared with other jobs the CPU time is the steadier of the two).

``--ours-only`` times only our side; ``--protocol permuted`` times ours on permuted
MNIST (10 permutations, Domain-IL, 2 x 2000, batch 256, Adam 1e-4, per-task gates;
replay active in the second task). Run with ``PYTHONPATH=<another checkout>`` the
same command times that checkout's package (the output names the package's path),
e.g. to compare with an earlier commit in alternating runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch


# -- the official code ------------------------------------------------------------------------
class Reference:
    """The official BI-R on split MNIST Class-IL, driven one iteration at a time."""

    def __init__(self, path: str, data_root: str, batch: int, first_task_iters: int):
        root = Path(path).resolve()
        if not (root / "models" / "vae.py").is_file():
            raise SystemExit(
                f"--reference {path}: no models/vae.py there; give the checkout of "
                "GMvandeVen/brain-inspired-replay."
            )
        for name in list(sys.modules):
            if name.split(".")[0] in ("models", "utils", "data"):
                sys.modules.pop(name)
        sys.path.insert(0, str(root))  # stays: its functions import lazily
        import utils as ref_utils  # noqa: E402  (the reference's utils.py)
        from data.load import get_multitask_experiment  # noqa: E402
        from models.vae import AutoEncoder  # noqa: E402

        here = Path(__file__).resolve().parent
        sys.path.insert(0, str(here))
        from parity_bir import PRESETS, build_reference  # noqa: E402

        # its datasets read <dir>/mnist/MNIST/raw: point that at our MNIST files
        self._tmp = tempfile.TemporaryDirectory()
        os.symlink(Path(data_root).resolve(), Path(self._tmp.name) / "mnist")
        (train_sets, _), _, _ = get_multitask_experiment(
            "splitMNIST",
            scenario="class",
            tasks=5,
            data_dir=self._tmp.name,
            exception=True,  # digits in natural order, as its seeds < 10 do
        )
        torch.manual_seed(0)
        self.model, _ = build_reference(
            AutoEncoder, None, PRESETS["BI-R"], "class", "adam"
        )
        self.batch = batch
        self.utils = ref_utils
        self.train_sets = train_sets
        # task 1 (no replay): a few iterations, as train_cl does them
        loader = self._loader(0)
        for _ in range(first_task_iters):
            x, y = self._next(loader, 0)
            self.model.train_a_batch(x, y=y, active_classes=[0, 1], task=1, rnt=1.0)
        self.previous = copy.deepcopy(self.model).eval()
        self.loader = self._loader(1)

    def _loader(self, task: int):
        return iter(
            self.utils.get_data_loader(
                self.train_sets[task], self.batch, cuda=False, drop_last=True
            )
        )

    def _next(self, loader, task: int):
        try:
            return next(loader)
        except StopIteration:  # a new epoch, as train_cl makes one
            self.loader = self._loader(task)
            return next(self.loader)

    def iteration(self, times: Dict[str, List[float]]) -> None:
        """One iteration of task 2 (replay of classes 0/1), as train_cl does it."""
        t0, c0 = time.perf_counter(), time.process_time()
        x, y = self._next(self.loader, 1)
        t1, c1 = time.perf_counter(), time.process_time()
        x_, _, task_used = self.previous.sample(
            self.batch, allowed_classes=[0, 1], allowed_domains=[0], only_x=False
        )
        with torch.no_grad():
            all_scores_ = self.previous.classify(x_, not_hidden=False)
        scores_ = all_scores_[:, :2]
        self.model.train_a_batch(
            x,
            y=y,
            x_=x_,
            y_=None,
            scores_=scores_,
            tasks_=task_used,
            active_classes=[0, 1, 2, 3],
            task=2,
            rnt=0.5,
        )
        t2, c2 = time.perf_counter(), time.process_time()
        times["reference"].append(t2 - t0)
        times["reference_without_loader"].append(t2 - t1)
        times["reference_cpu"].append(c2 - c0)
        times["reference_without_loader_cpu"].append(c2 - c1)


# -- ours -----------------------------------------------------------------------------------------
def build_ours(protocol: str, data_root: str, adam: str, iters: int):
    """Our BI-R for ``protocol``, its benchmark, and the package's path."""
    import avalanche_meta
    from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche_meta.benchmarks.bir_protocol import permuted_mnist, split_mnist
    from avalanche_meta.strategies.bir import BrainInspiredReplay, replay_vae

    torch.manual_seed(0)
    if protocol == "split":
        info = split_mnist(scenario="class", data_root=data_root)
        hidden, lr, batch, scenario, n_in = (400, 400), 1e-3, 128, "class", 784
    else:
        info = permuted_mnist(n_tasks=10, scenario="domain", data_root=data_root)
        hidden, lr, batch, scenario, n_in = (2000, 2000), 1e-4, 256, "domain", 1024
    vae = replay_vae(
        input_size=n_in,
        num_classes=info.num_classes,
        scenario=scenario,
        n_tasks=info.n_experiences if hasattr(info, "n_experiences") else 10,
        gating=0.8,
        hidden_sizes=hidden,
        z_dim=100,
        output_shape=info.input_shape,
    )
    kw = dict(lr=lr, betas=(0.9, 0.999))
    if adam == "fused":
        kw["fused"] = True
    strategy = BrainInspiredReplay.BIR(
        model=vae,
        optimizer=torch.optim.Adam(vae.parameters(), **kw),
        scenario=scenario,
        iterations=iters,
        train_mb_size=batch,
        evaluator=EvaluationPlugin(
            accuracy_metrics(epoch=True), loss_metrics(epoch=True), loggers=[]
        ),
    )
    return strategy, info, os.path.dirname(avalanche_meta.__file__)


class IterationClock:
    """A plugin timing our iterations (between consecutive
    ``before_training_iteration`` callbacks) and running ``between`` every
    ``block`` iterations (not counted).

    ``bench bir`` has the same clock; this script keeps its own copy on purpose: it
    also times older checkouts of the package (``PYTHONPATH=<checkout>``), which do
    not have the bench module."""

    def __init__(
        self, warmup: int, block: int, between: Optional[Callable], wanted: int
    ):
        from avalanche.core import SupervisedPlugin

        clock = self

        class _Plugin(SupervisedPlugin):
            def before_training_iteration(self, strategy, **kwargs):
                clock.tick()
                if len(clock.times) >= clock.wanted:
                    strategy.stop_training()

            def after_training_exp(self, strategy, **kwargs):
                clock.last = None

        self.plugin = _Plugin()
        self.warmup, self.block, self.between = warmup, block, between
        self.wanted = wanted
        self.count = 0
        self.last: Optional[float] = None
        self.times: List[float] = []
        self.cpu_times: List[float] = []

    def tick(self) -> None:
        now = (time.perf_counter(), time.process_time())
        if self.last is not None and self.count > self.warmup:
            self.times.append(now[0] - self.last[0])
            self.cpu_times.append(now[1] - self.last[1])
        self.count += 1
        if self.between is not None and self.count > self.warmup:
            if (self.count - self.warmup) % self.block == 0:
                self.between()
                now = None  # the next interval contains the reference's block
        self.last = None if now is None else (time.perf_counter(), time.process_time())


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", help="checkout of the official code")
    parser.add_argument("--ours-only", action="store_true")
    parser.add_argument("--protocol", choices=("split", "permuted"), default="split")
    parser.add_argument("--iterations", type=int, default=100, help="timed, each")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--first-task-iterations", type=int, default=20)
    parser.add_argument("--adam", choices=("fused", "plain"), default="fused")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--data-root", default=os.environ.get("AVALANCHE_META_DATA", "")
    )
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    if not args.ours_only and not args.reference:
        parser.error("give --reference (or --ours-only)")
    if args.protocol == "permuted" and not args.ours_only:
        parser.error("--protocol permuted times ours only: add --ours-only")
    if not args.data_root:
        parser.error("give --data-root (the folder holding MNIST/raw)")
    torch.set_num_threads(args.threads)

    ref = None
    keys = ("reference", "reference_without_loader")
    times: Dict[str, List[float]] = {k + c: [] for k in keys for c in ("", "_cpu")}
    if not args.ours_only:
        ref = Reference(args.reference, args.data_root, 128, args.first_task_iterations)
        for _ in range(args.warmup):
            ref.iteration({k: [] for k in times})

    def ref_block():
        for _ in range(args.block):
            ref.iteration(times)

    total = args.warmup + 2 * args.iterations + 2 * args.block  # stops earlier
    strategy, info, where = build_ours(
        args.protocol, args.data_root, args.adam, args.first_task_iterations
    )
    clock = IterationClock(
        args.warmup, args.block, ref_block if ref else None, args.iterations
    )
    stream = info.benchmark.train_stream
    strategy.train(stream[0])  # first task, no replay (not timed)
    strategy.iterations = total
    strategy.plugins.append(clock.plugin)
    t0 = time.perf_counter()
    strategy.train(stream[1])
    wall = time.perf_counter() - t0
    ours = clock.times[: args.iterations]
    ours_cpu = clock.cpu_times[: args.iterations]

    def ms(v: List[float]) -> float:
        return 1000.0 * statistics.median(v)

    out = {
        "protocol": args.protocol,
        "package": where,
        "adam": args.adam,
        "fused": getattr(strategy, "fused", None),
        "threads": args.threads,
        "iterations_timed": len(ours),
        "ours_ms": ms(ours),
        "ours_cpu_ms": ms(ours_cpu),
        "ours_ms_quartiles": [1000 * q for q in statistics.quantiles(ours, n=4)],
        "wall_seconds": wall,
        "loadavg": os.getloadavg(),
        "torch": torch.__version__,
    }
    print(f"package: {where} (adam {args.adam}, fused pass {out['fused']})")
    print(
        f"ours ({args.protocol}): {out['ours_ms']:.1f} ms/iteration wall, "
        f"{out['ours_cpu_ms']:.1f} ms CPU time (medians of {len(ours)})"
    )
    if ref is not None:
        out["reference_ms"] = ms(times["reference"])
        out["reference_without_loader_ms"] = ms(times["reference_without_loader"])
        out["reference_cpu_ms"] = ms(times["reference_cpu"])
        out["reference_without_loader_cpu_ms"] = ms(
            times["reference_without_loader_cpu"]
        )
        out["ratio_cpu"] = out["reference_cpu_ms"] / out["ours_cpu_ms"]
        out["ratio_cpu_without_loader"] = (
            out["reference_without_loader_cpu_ms"] / out["ours_cpu_ms"]
        )
        out["reference_iterations_timed"] = len(times["reference"])
        out["ratio_reference_over_ours"] = out["reference_ms"] / out["ours_ms"]
        out["ratio_without_loader"] = (
            out["reference_without_loader_ms"] / out["ours_ms"]
        )
        print(
            f"official code: {out['reference_ms']:.1f} ms/iteration "
            f"({out['reference_without_loader_ms']:.1f} without its data loader; "
            f"median of {len(times['reference'])})"
        )
        print(
            f"ratio official / ours: {out['ratio_reference_over_ours']:.2f}x "
            f"({out['ratio_without_loader']:.2f}x without its data loader)"
        )
        print(
            f"CPU time per iteration: official {out['reference_cpu_ms']:.1f} ms "
            f"({out['reference_without_loader_cpu_ms']:.1f} without its data loader), "
            f"ours {out['ours_cpu_ms']:.1f} ms: ratio {out['ratio_cpu']:.2f}x "
            f"({out['ratio_cpu_without_loader']:.2f}x)"
        )
    print(f"load average: {out['loadavg']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
