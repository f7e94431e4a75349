"""The transfer-learning baseline of few-shot classification.

The "simple" baseline of the MAML / Reptile comparisons: ordinary classification
training on the training classes (one output unit per class, mini-batch SGD/Adam),
then, at evaluation, fine-tuning on each test task's support set. The training is
Avalanche's ``Naive`` loop as it is; the fine-tuning is done by
:class:`~avalanche_meta.evaluation.fewshot.FewShotAccuracy`, which gives the
model a new zero-initialised ``ways``-unit head and fine-tunes every parameter on the
support set (so any strategy's model can be scored the same way).

What this class adds to ``Naive`` is the evaluation rule of the few-shot strategies:
the test classes are new classes, so the per-sample classification pass of
``eval`` is skipped (its accuracy would be meaningless) and only the few-shot
metrics of the evaluator run.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import CrossEntropyLoss

from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.templates import SupervisedTemplate

__all__ = ["TransferLearning"]


class TransferLearning(SupervisedTemplate):
    """Plain classification training; few-shot evaluation by fine-tuning.

    :param model: a classifier with one output per training class (its last
        ``nn.Linear`` is replaced by a ``ways``-unit head in the evaluation copies).
    :param optimizer: the training optimizer; None builds ``Adam(lr=lr)``.
    :param lr: the learning rate of the default Adam (default 1e-3); giving both
        ``optimizer`` and ``lr`` is an error.
    :param train_mb_size: training mini-batch size.
    :param train_epochs: passes over each training experience.

    Example::

        strategy = TransferLearning(model=OmniglotCNN(output_size=n_train_classes),
                                    train_epochs=5,
                                    evaluator=EvaluationPlugin(FewShotAccuracy(
                                        ways=5, shots=1, inner_lr=0.01,
                                        inner_steps=50)))
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: Optional[torch.optim.Optimizer] = None,
        lr: Optional[float] = None,
        criterion=CrossEntropyLoss(),
        train_mb_size: int = 64,
        train_epochs: int = 1,
        eval_mb_size: int = 256,
        device="cpu",
        plugins: Optional[Sequence] = None,
        evaluator=default_evaluator,
        eval_every: int = -1,
        **base_kwargs,
    ):
        if optimizer is not None and lr is not None:
            raise ValueError(
                "give either `optimizer` or `lr` (for the default Adam), not both."
            )
        if optimizer is None:
            optimizer = torch.optim.Adam(
                model.parameters(), lr=1e-3 if lr is None else lr
            )
        super().__init__(
            model=model,
            optimizer=optimizer,
            criterion=criterion,
            train_mb_size=train_mb_size,
            train_epochs=train_epochs,
            eval_mb_size=eval_mb_size,
            device=device,
            plugins=plugins,
            evaluator=evaluator,
            eval_every=eval_every,
            **base_kwargs,
        )

    def eval_epoch(self, **kwargs):
        """No per-sample classification pass (the test classes are new); the few-shot
        evaluation is done by ``FewShotAccuracy`` in the evaluator."""
        return None
