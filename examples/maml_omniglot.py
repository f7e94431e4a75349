"""MAML on Omniglot 5-way 1-shot with avalanche-meta, in a plain Avalanche script.

Meta-trains learn2learn's Omniglot CNN with :class:`avalanche_meta.strategies.MAML`
on the characters of one set of alphabets and reports few-shot accuracy (mean and 95%
confidence interval over test tasks) on characters of alphabets never seen in
training, through Avalanche's ``EvaluationPlugin``.

Offline subsets (the default; ``$AVALANCHE_META_DATA/omniglot`` must hold
``images_background_small1.zip`` and ``images_background_small2.zip``)::

    python examples/maml_omniglot.py --meta-iterations 300

Full Omniglot (``images_background`` and ``images_evaluation``, zips or folders, in
``<data root>/omniglot``), MAML's protocol: 1,200 training characters, the other 423
for testing, rotations as new classes, 60,000 meta-iterations of 32 tasks::

    python examples/maml_omniglot.py --train background,evaluation --test none \\
        --test-classes 423 --rotations --meta-iterations 60000 --meta-batch-size 32
"""

import argparse

import torch
from avalanche.logging import InteractiveLogger
from avalanche.training.plugins import EvaluationPlugin

from avalanche_meta.benchmarks.omniglot import omniglot_fewshot
from avalanche_meta.evaluation.fewshot import FewShotAccuracy
from avalanche_meta.strategies import FOMAML, MAML
from avalanche_meta.utils.quiet_import import import_learn2learn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", default="small1")
    p.add_argument(
        "--test", default="small2", help="'none': split --train's characters"
    )
    p.add_argument("--test-classes", type=int, default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--inner-lr", type=float, default=0.4)
    p.add_argument("--inner-steps", type=int, default=1)
    p.add_argument("--meta-batch-size", type=int, default=8)
    p.add_argument("--meta-iterations", type=int, default=300)
    p.add_argument("--first-order", action="store_true")
    p.add_argument("--rotations", action="store_true", help="rotations as new classes")
    p.add_argument("--eval-tasks", type=int, default=600)
    p.add_argument(
        "--non-transductive",
        action="store_true",
        help="predict each query with the support set alone (batch norm never sees "
        "the other queries); default: the query set as one batch, as in MAML's paper",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    l2l = import_learn2learn()
    info = omniglot_fewshot(
        train=args.train,
        test=None if args.test == "none" else args.test,
        test_classes=args.test_classes,
        data_root=args.data_root,
        seed=args.seed,
    )
    print(
        f"meta-train: {info.extras['train_classes']} characters of "
        f"{info.extras['train_alphabets']}; test: {info.extras['test_classes']} "
        f"characters of {info.extras['test_alphabets']}"
    )
    fewshot = FewShotAccuracy(
        ways=args.ways,
        shots=args.shots,
        num_tasks=args.eval_tasks,
        inner_lr=args.inner_lr,
        inner_steps=10,
        transductive=not args.non_transductive,
    )
    strategy = (FOMAML if args.first_order else MAML)(
        model=l2l.vision.models.OmniglotCNN(output_size=args.ways),
        meta_lr=1e-3,
        ways=args.ways,
        shots=args.shots,
        inner_lr=args.inner_lr,
        inner_steps=args.inner_steps,
        meta_batch_size=args.meta_batch_size,
        meta_iterations=args.meta_iterations,
        class_rotations=args.rotations,
        evaluator=EvaluationPlugin(fewshot, loggers=[InteractiveLogger()]),
    )
    for experience in info.benchmark.train_stream:
        strategy.train(experience)
        strategy.eval(info.benchmark.test_stream)
    result = fewshot.results[0]
    print(f"{args.ways}-way {args.shots}-shot accuracy on unseen alphabets: {result}")


if __name__ == "__main__":
    main()
