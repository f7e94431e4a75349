"""MER (Riemer et al. 2019) on MNIST Rotations, in a plain Avalanche loop.

Trains the paper's 784-100-100-10 MLP with MER (200-memory preset) on a short
MNIST Rotations stream, one example at a time, and prints each task's accuracy after
every task. Needs MNIST in ``$AVALANCHE_META_DATA/MNIST/raw`` (no download).

    AVALANCHE_META_DATA=../shared/data python examples/mer_rotations.py --tasks 5

The full protocol is ``--tasks 20 --examples 1000`` (about 20 minutes on one CPU
core with the default preset is an upper bound; see docs/RESULTS.md).
"""

import argparse
import os

import torch
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.logging import TextLogger
from avalanche.training.plugins import EvaluationPlugin

from avalanche_meta.benchmarks.mer_protocol import mnist_rotations
from avalanche_meta.benchmarks.online import online_stream
from avalanche_meta.models.mlp import MLP
from avalanche_meta.strategies import MER


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--examples", type=int, default=200, help="per task")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    info = mnist_rotations(
        n_tasks=args.tasks,
        samples_per_task=args.examples,
        seed=args.seed,
        data_root=os.environ.get("AVALANCHE_META_DATA"),
    )
    evaluator = EvaluationPlugin(
        accuracy_metrics(experience=True, stream=True),
        loggers=[TextLogger(open(os.devnull, "w"))],
    )
    # The original code's MNIST Rotations setting for 200 memories (mer_examples.sh):
    # each batch is the current example + 10 memories, as in meralg1.py
    # (convention="original"); the CLI preset "rotations-200" is the same.
    strategy = MER(
        model=MLP(input_size=784, hidden_sizes=(100, 100), num_classes=10),
        lr=0.1,
        beta=0.01,
        gamma=1.0,
        mem_size=200,
        replay_batch_size=10,
        batches_per_example=5,
        scenario="domain",
        convention="original",
        seed=args.seed,
        evaluator=evaluator,
    )
    print(f"MER inner loop: {strategy.inner_loop}")
    for i, experience in enumerate(info.benchmark.train_stream):
        # one example per step, each seen once
        strategy.train(online_stream([experience], batch_size=1, seed=i))
        results = strategy.eval(info.benchmark.test_stream)
        accs = [
            100 * v for k, v in sorted(results.items()) if k.startswith("Top1_Acc_Exp")
        ]
        print(
            f"after task {i}: "
            + " ".join(f"{a:5.1f}" for a in accs[: i + 1])
            + f" | mean so far {sum(accs[: i + 1]) / (i + 1):.1f}"
        )


if __name__ == "__main__":
    main()
