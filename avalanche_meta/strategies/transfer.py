"""The transfer-learning baseline of few-shot classification.

The "simple" baseline of the MAML / Reptile comparisons: ordinary classification
training on the training classes (one output unit per class, mini-batch SGD/Adam),
then, at evaluation, fine-tuning on each test task's support set. The training is
Avalanche's ``Naive`` loop as it is; the fine-tuning is done by
:class:`~avalanche_meta.evaluation.fewshot.FewShotAccuracy`, which gives the
model a new zero-initialised ``ways``-unit head and fine-tunes every parameter on the
support set (so any strategy's model can be scored the same way).

What this class adds to ``Naive`` is the evaluation rule of the few-shot strategies
(:class:`~avalanche_meta.strategies._fewshot.FewShotStrategyMixin`): the test classes
are new classes, so evaluating an experience runs few-shot tasks as Avalanche's
evaluation iterations (Avalanche's accuracy, loss, forgetting and BWT metrics then
measure few-shot query accuracy and loss), and ``adapt`` / ``predict`` adapt the
model to a user's own task by the same rule.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import CrossEntropyLoss

from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.templates import SupervisedTemplate

from avalanche_meta.evaluation.fewshot import FewShotEval, FewShotRule
from avalanche_meta.strategies._fewshot import (
    FewShotStrategyMixin,
    StrategyArgumentError,
)

__all__ = ["TransferLearning"]


class TransferLearning(FewShotStrategyMixin, SupervisedTemplate):
    """Plain classification training; few-shot evaluation by fine-tuning.

    :param model: a classifier with one output per training class (its last
        ``nn.Linear`` is replaced by a ``ways``-unit head in the evaluation copies).
    :param optimizer: the training optimizer; None builds ``Adam(lr=lr)``.
    :param lr: the learning rate of the default Adam (default 1e-3); giving both
        ``optimizer`` and ``lr`` is an error.
    :param train_mb_size: training mini-batch size.
    :param train_epochs: passes over each training experience.
    :param eval_mb_size: Avalanche's evaluation mini-batch size (unused: the
        evaluation runs few-shot tasks).
    :param fewshot_eval: the evaluation when the evaluator has no
        ``FewShotAccuracy``; None: 5-way 1-shot tasks, 15 queries per class, 600
        tasks, a new zero-initialised 5-unit head and 50 SGD steps of 0.1 on the
        support set (every parameter), transductive batch norm.

    Keyword arguments only (positional or unknown ones raise
    :class:`~avalanche_meta.strategies._fewshot.StrategyArgumentError`). Training is
    Avalanche's ``Naive`` loop, so any criterion and Avalanche's plugins (EWC, LwF,
    replay, ...) compose as with ``Naive``, and multi-head models (``MTSimpleMLP``)
    train as with ``Naive``; the few-shot evaluation gives the copy a task-free
    ``ways``-unit head in place of a multi-head classifier.

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
        fewshot_eval: Optional[FewShotEval] = None,
        device="cpu",
        plugins: Optional[Sequence] = None,
        evaluator=default_evaluator,
        eval_every: int = -1,
        **base_kwargs,
    ):
        if fewshot_eval is not None and not isinstance(fewshot_eval, FewShotEval):
            raise StrategyArgumentError(
                f"`fewshot_eval` must be a FewShotEval (from "
                f"avalanche_meta.evaluation.fewshot), got {fewshot_eval!r}."
            )
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
        self.fewshot_eval = fewshot_eval or FewShotEval(
            ways=5,
            shots=1,
            query_shots=15,
            num_tasks=600,
            rule=FewShotRule(inner_lr=0.1, inner_steps=50, optimizer="sgd"),
        )
