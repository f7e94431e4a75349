"""Brain-inspired replay on split MNIST, as a plain Avalanche script.

    python examples/bir_split_mnist.py --scenario class --iterations 2000
    python examples/bir_split_mnist.py --internal      # internal replay (conv front-end
                                                        # pre-trained on Omniglot)

Needs MNIST in ``$AVALANCHE_META_DATA/MNIST/raw`` (and, for ``--internal``, Omniglot's
``images_background_small1.zip`` in ``$AVALANCHE_META_DATA/omniglot``). Plots of the
generated samples after each experience go to ``--out``.
"""

from __future__ import annotations

import argparse
import io

import torch
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.logging import TextLogger
from avalanche.training.plugins import EvaluationPlugin

from avalanche_meta.benchmarks.bir_protocol import split_mnist
from avalanche_meta.models.conv import pretrain_front_end, small_front_end
from avalanche_meta.plugins import GeneratedSamplesPlot
from avalanche_meta.strategies import BrainInspiredReplay, replay_vae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", default="class", choices=("task", "class"))
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--internal", action="store_true")
    parser.add_argument(
        "--gate-prop",
        type=float,
        default=0.8,
        help="proportion of decoder units gated OFF per class (paper: 0.8)",
    )
    parser.add_argument("--out", default="runs/example-bir")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    info = split_mnist(scenario=args.scenario, seed=args.seed)
    front, input_size = None, info.input_size
    if args.internal:
        from avalanche_meta.benchmarks.omniglot import load_omniglot

        omniglot = load_omniglot("small1")  # other data than MNIST
        front = pretrain_front_end(
            small_front_end(), omniglot.images, omniglot.targets, iterations=1000
        )
        input_size = front.module.output_size(info.input_shape)

    vae = replay_vae(
        input_size=input_size,
        num_classes=info.num_classes,
        scenario=args.scenario,
        gating=args.gate_prop,
        internal=args.internal,
        output_shape=info.input_shape,
    )
    strategy = BrainInspiredReplay.BIR(
        model=vae,
        optimizer=torch.optim.Adam(vae.parameters(), lr=1e-3),
        internal=front,
        gating=args.gate_prop,
        scenario=args.scenario,
        iterations=args.iterations,
        train_mb_size=128,
        plugins=[GeneratedSamplesPlot(args.out)],
        evaluator=EvaluationPlugin(
            accuracy_metrics(experience=True), loggers=[TextLogger(io.StringIO())]
        ),
    )
    for exp in info.benchmark.train_stream:
        strategy.train(exp)
        res = strategy.eval(info.benchmark.test_stream[: exp.current_experience + 1])
        accs = [v for k, v in sorted(res.items()) if k.startswith("Top1_Acc_Exp/eval")]
        accs = accs[: exp.current_experience + 1]
        print(
            f"after task {exp.current_experience + 1}: "
            + " ".join(f"{100 * a:.1f}" for a in accs)
            + f"  (mean {100 * sum(accs) / len(accs):.2f}%)"
        )
    torch.save(strategy.state_dict(), f"{args.out}/checkpoint.pt")


if __name__ == "__main__":
    main()
