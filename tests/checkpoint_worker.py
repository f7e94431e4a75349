"""Train, checkpoint and resume the strategies of ``tests/test_checkpoint.py``.

Imported by the test (modes ``first`` and ``full`` run in the test's process) and
run as a script for the resume, which must happen in a new process (the script
imports ``avalanche_meta`` before torch, as a user's job may, and writes
``FOLDER/hook.txt`` telling whether the workaround was applied)::

    python tests/checkpoint_worker.py MODE FOLDER CASE [CASE ...]

Modes (:func:`run`):

- ``first``: build the strategy, train experience 0, ``save_checkpoint`` to
  ``FOLDER/CASE.ckpt``;
- ``resume``: build the strategy again (as a restarted job would), load the
  checkpoint with ``maybe_load_checkpoint``, train experience 1, save the
  parameters to ``FOLDER/CASE.resumed.pt``;
- ``full``: train experiences 0 and 1 without interruption, save the parameters to
  ``FOLDER/CASE.full.pt``.

Every case starts from the same seed on a tiny benchmark (sklearn's 8x8 digits, two
experiences of two classes, 16 training images per class), with the strategy built
by the command line's builder (``avalanche_meta.cli``), a tiny model and small
hyper-parameters. A case that fails writes ``FOLDER/CASE.MODE.error`` (the
traceback) and the other cases go on.
"""

from __future__ import annotations

import io
import os
import sys
import traceback
import warnings
from pathlib import Path

if __name__ == "__main__":
    # A restarted job's path: avalanche_meta imported before torch, so its
    # checkpointing workaround is applied by the import hook (checked in main).
    import avalanche_meta  # noqa: F401

    _TORCH_BEFORE_AVALANCHE_META = "torch" in sys.modules

import numpy as np  # noqa: E402
import torch  # noqa: E402

SEED = 3

#: name -> (registered strategy, preset, hyper-parameters, scenario)
#: hyper-parameters of the tiny VAE every BI-R-family case uses
TINY_VAE = dict(hidden="16", z_dim=4, batch_size=8, iterations=4)

CASES = {
    "naive": (
        "naive",
        None,
        dict(hidden="16", batch_size=8, epochs=2, lr=0.1),
        "class",
    ),
    "naive-adam": (
        "naive",
        None,
        dict(hidden="16", batch_size=8, epochs=2, lr=0.01, optimizer="adam"),
        "class",
    ),
    "replay": (
        "replay",
        None,
        dict(hidden="16", batch_size=8, epochs=1, lr=0.1, mem_size=8),
        "class",
    ),
    "ewc": ("ewc", None, dict(hidden="16", batch_size=8, epochs=1, lr=0.1), "class"),
    "si": ("si", None, dict(hidden="16", batch_size=8, epochs=1, lr=0.1), "class"),
    "lwf": ("lwf", None, dict(hidden="16", batch_size=8, epochs=1, lr=0.1), "class"),
    "xdg": (
        "xdg",
        None,
        dict(hidden="16", batch_size=8, epochs=1, lr=0.1, gating_prop=0.5),
        "task",
    ),
    "er": (
        "er",
        None,
        dict(hidden="16", mem_size=12, replay_batch_size=4, online_batch=4),
        "class",
    ),
    "mer": (
        "mer",
        None,
        dict(
            hidden="16",
            mem_size=12,
            replay_batch_size=4,
            batches_per_example=2,
            online_batch=4,
        ),
        "class",
    ),
    "mer-alg7-original": (
        "mer",
        None,
        dict(
            hidden="16",
            mem_size=12,
            replay_batch_size=4,
            batches_per_example=2,
            online_batch=4,
            variant="alg7",
            convention="original",
        ),
        "class",
    ),
    "mer-task-multihead": (
        "mer",
        None,
        dict(
            hidden="16",
            mem_size=12,
            replay_batch_size=4,
            batches_per_example=2,
            online_batch=4,
            multihead=True,
        ),
        "task",
    ),
    "nccl": (
        "nccl",
        None,
        dict(hidden="16", mem_size=12, mem_batch_size=4, inner_steps=2),
        "class",
    ),
    "nccl-first-order": (
        "nccl",
        "first-order",
        dict(hidden="16", mem_size=12, mem_batch_size=4, inner_steps=2),
        "class",
    ),
    "bir": (
        "bir",
        None,
        dict(TINY_VAE),
        "class",
    ),
    "rtf": (
        "rtf",
        None,
        dict(TINY_VAE),
        "class",
    ),
    "dgr": (
        "dgr",
        None,
        dict(TINY_VAE),
        "class",
    ),
    "dgr-distill": (
        "dgr-distill",
        None,
        dict(TINY_VAE),
        "class",
    ),
    "bir-si": (
        "bir-si",
        None,
        dict(TINY_VAE),
        "class",
    ),
    "bir-task": (
        "bir",
        None,
        dict(TINY_VAE),
        "task",
    ),
    "maml": (
        "maml",
        None,
        dict(
            model="fc",
            ways=2,
            shots=1,
            meta_batch_size=2,
            meta_iterations=3,
            eval_tasks=2,
        ),
        "class",
    ),
    "fomaml": (
        "fomaml",
        None,
        dict(
            model="fc",
            ways=2,
            shots=1,
            meta_batch_size=2,
            meta_iterations=3,
            eval_tasks=2,
        ),
        "class",
    ),
    "reptile": (
        "reptile",
        None,
        dict(
            model="fc",
            ways=2,
            shots=1,
            inner_steps=2,
            meta_batch_size=2,
            meta_iterations=3,
            eval_tasks=2,
        ),
        "class",
    ),
    "transfer": (
        "transfer",
        None,
        dict(model="fc", epochs=1, batch_size=8, eval_tasks=2),
        "class",
    ),
}


class _Digits(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.targets = x, y

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        return self.x[i], int(self.targets[i])


def tiny_info(scenario: str):
    """Two experiences ({0, 1}, {2, 3}) of real 8x8 digits, 16 + 8 per class."""
    from sklearn.datasets import load_digits

    from avalanche_meta.benchmarks.base import BenchmarkInfo
    from avalanche_meta.benchmarks.datasets import build_benchmark

    digits = load_digits()
    x = torch.from_numpy((digits.images / 16.0).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(digits.target.astype(np.int64))
    classes = [[0, 1], [2, 3]]
    train, test = [], []
    for pair in classes:
        tr = torch.cat([(y == c).nonzero()[:16, 0] for c in pair])
        te = torch.cat([(y == c).nonzero()[16:24, 0] for c in pair])
        train.append(_Digits(x[tr], y[tr]))
        test.append(_Digits(x[te], y[te]))
    task = scenario == "task"
    bm = build_benchmark(train, test, [0, 1] if task else [0, 0])
    return BenchmarkInfo(
        benchmark=bm,
        name="tiny-digits",
        scenario=scenario,
        input_shape=(1, 8, 8),
        num_classes=4,
        classes_per_experience=classes,
        task_labels=task,
    )


def build(case: str):
    """The strategy of ``case`` (seeded), its registry entry and the benchmark."""
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.logging import TextLogger
    from avalanche.training.plugins import EvaluationPlugin

    from avalanche_meta.cli.context import RunContext
    from avalanche_meta.cli.runner import (
        get_strategy_spec,
        resolve_hparams,
        seed_everything,
    )

    name, preset, hp, scenario = CASES[case]
    seed_everything(SEED)
    info = tiny_info(scenario)
    spec = get_strategy_spec(name)
    evaluator = EvaluationPlugin(
        accuracy_metrics(experience=True), loggers=[TextLogger(io.StringIO())]
    )
    ctx = RunContext(
        info=info,
        scenario=scenario,
        device=torch.device("cpu"),
        seed=SEED,
        evaluator=evaluator,
    )
    strategy = spec.build(ctx, **resolve_hparams(spec, preset, hp))
    return strategy, spec, info, hp


def train_experience(strategy, spec, info, hp, i: int) -> None:
    """What ``avalanche-meta run`` does for experience ``i`` (without evaluation)."""
    from avalanche_meta.benchmarks.online import online_stream

    exp = info.benchmark.train_stream[i]
    if spec.online:
        batch = int(hp.get("online_batch") or spec.online_batch)
        strategy.train(online_stream([exp], batch_size=batch, seed=SEED * 1000 + i))
    else:
        strategy.train(exp)


def parameters(strategy) -> dict:
    """Every tensor of the model's state (and of a separate generator, if any)."""
    out = {f"model.{k}": v.clone() for k, v in strategy.model.state_dict().items()}
    gen = getattr(strategy, "generator", None)
    if isinstance(gen, torch.nn.Module) and gen is not strategy.model:
        out.update({f"generator.{k}": v.clone() for k, v in gen.state_dict().items()})
    return out


def run(mode: str, folder: Path, case: str) -> None:
    from avalanche.checkpointing import maybe_load_checkpoint, save_checkpoint

    strategy, spec, info, hp = build(case)
    ckpt = folder / f"{case}.ckpt"
    if mode == "first":
        train_experience(strategy, spec, info, hp, 0)
        save_checkpoint(strategy, str(ckpt))
    elif mode == "resume":
        strategy, start = maybe_load_checkpoint(
            strategy, str(ckpt), unique_objects=info.benchmark
        )
        # Avalanche's counter counts the experiences given to train(): with an
        # online stream, the mini-experiences of experience 0.
        expected = 1
        if spec.online:
            batch = int(hp.get("online_batch") or spec.online_batch)
            expected = -(-len(info.benchmark.train_stream[0].dataset) // batch)
        if start != expected:
            raise AssertionError(f"checkpoint says {start}, expected {expected}")
        train_experience(strategy, spec, info, hp, 1)
        torch.save(parameters(strategy), folder / f"{case}.resumed.pt")
    elif mode == "full":
        for i in range(2):
            train_experience(strategy, spec, info, hp, i)
        torch.save(parameters(strategy), folder / f"{case}.full.pt")
    else:
        raise SystemExit(f"unknown mode {mode!r}")


def run_cases(mode: str, folder: Path, cases) -> None:
    """:func:`run` for each case; a failure is written to ``CASE.MODE.error``."""
    import avalanche_meta  # noqa: F401  (applies the checkpointing workaround)
    import avalanche_meta.cli.registry as registry

    registry.load_all()
    for case in cases:
        try:
            run(mode, folder, case)
        except Exception:  # reported to the test through the file, then go on
            (folder / f"{case}.{mode}.error").write_text(traceback.format_exc())


def main(argv) -> int:
    """``MODE FOLDER CASE...``; ``$CHECKPOINT_WORKER_THREADS`` sets torch's threads."""
    warnings.simplefilter("ignore")
    folder = Path(argv[1])
    (folder / "hook.txt").write_text(
        f"torch imported before avalanche_meta: {_TORCH_BEFORE_AVALANCHE_META}\n"
        f"torch.optim.sgd attached: {getattr(torch.optim, 'sgd', None) is not None}\n"
    )
    torch.set_num_threads(int(os.environ.get("CHECKPOINT_WORKER_THREADS", "1")))
    run_cases(argv[0], folder, argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
