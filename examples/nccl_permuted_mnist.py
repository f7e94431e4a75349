"""NCCL (neuron calibration, ``NeuronCalibration``) on online permuted MNIST.

One pass over each task, batches of 10, a calibrated MLP 784-100-100-10, an episodic
memory of 500 examples shared by the tasks. Prints the accuracy on every task seen
so far after each task.

Run (MNIST in ``$AVALANCHE_META_DATA/MNIST/raw``)::

    AVALANCHE_META_DATA=../shared/data python examples/nccl_permuted_mnist.py --tasks 5

The same experiment from the command line::

    avalanche-meta run nccl --benchmark online-permuted-mnist --scenario domain
"""

from __future__ import annotations

import argparse
import io
import os

import torch
from avalanche.benchmarks import split_online_stream
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.logging import TextLogger
from avalanche.training.plugins import EvaluationPlugin

from avalanche_meta.benchmarks import mnist_permutations
from avalanche_meta.models import MLP
from avalanche_meta.strategies import NeuronCalibration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--samples-per-task", type=int, default=1000)
    parser.add_argument("--mem-size", type=int, default=500)
    parser.add_argument("--second-order", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    info = mnist_permutations(
        n_tasks=args.tasks,
        samples_per_task=args.samples_per_task,
        scenario="domain",
        seed=args.seed,
        data_root=os.environ.get("AVALANCHE_META_DATA"),
    )
    model = MLP(input_size=784, hidden_sizes=(100, 100), num_classes=10)
    strategy = NeuronCalibration(
        model=model,  # calibrated by the strategy (WCM + FCM)
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        scenario="domain",
        mem_size=args.mem_size,
        second_order=args.second_order,
        evaluator=EvaluationPlugin(
            accuracy_metrics(experience=True), loggers=[TextLogger(io.StringIO())]
        ),
    )
    test_stream = info.benchmark.test_stream
    for k, exp in enumerate(info.benchmark.train_stream):
        strategy.train(
            split_online_stream([exp], experience_size=10, access_task_boundaries=True)
        )
        res = strategy.eval(test_stream[: k + 1])
        accs = [v for n, v in sorted(res.items()) if n.startswith("Top1_Acc_Exp")]
        accs = accs[: k + 1]
        print(
            f"after task {k}: mean accuracy {100 * sum(accs) / len(accs):.1f}% "
            f"({', '.join(f'{100 * a:.0f}' for a in accs)})"
        )


if __name__ == "__main__":
    main()
