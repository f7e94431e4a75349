"""Model-Agnostic Meta-Learning (MAML) and first-order MAML as an Avalanche strategy.

Finn, Abbeel, Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks", ICML 2017. For each task of a meta-batch, the initial parameters ``theta``
are cloned and adapted by ``inner_steps`` SGD steps of size ``inner_lr`` on the support
loss, ``theta'_i = theta - inner_lr * grad L_support(theta)`` (repeated); the
meta-loss is the mean query loss of the adapted parameters,
``L_meta = 1/B sum_i L_query(theta'_i)``, and the outer optimizer (Adam, ``meta_lr``)
steps ``theta`` on its gradient. The second-order version differentiates through the
inner gradients; first-order MAML (``first_order=True``, :class:`FOMAML`) treats them
as constants, so its meta-gradient is the query gradient at ``theta'_i``.

The fast weights are learn2learn's functional clones
(``learn2learn.algorithms.MAML(model, lr=inner_lr, first_order=...)``, ``clone()`` /
``adapt()``), so no ``deepcopy`` of the model happens in the loop.

Departures from the paper, on purpose:

- Training on an Avalanche experience is ``meta_iterations`` meta-updates over tasks
  sampled from that experience's classes (the paper has one training set and 60,000
  iterations: the default here).
- Batch-norm running statistics are shared between the clones and the model (as in
  learn2learn) and updated by them; no few-shot evaluation uses them
  (:mod:`avalanche_meta.evaluation.fewshot` normalises with batch statistics, in
  both its transductive and non-transductive rules).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn
from torch.nn import CrossEntropyLoss

from avalanche.training.plugins.evaluation import default_evaluator

from avalanche_meta.evaluation.fewshot import FewShotEval, FewShotRule, FewShotTask
from avalanche_meta.strategies._fewshot import EpisodicTemplate, task_logits
from avalanche_meta.utils.quiet_import import import_learn2learn
from avalanche_meta.utils.validation import (
    check_non_negative,
    check_positive,
)

__all__ = ["MAML", "FOMAML"]


class MAML(EpisodicTemplate):
    """MAML (and first-order MAML) over N-way K-shot tasks of each experience.

    Defaults are the paper's Omniglot 5-way 1-shot settings: ``inner_lr=0.4``, one
    inner step, meta-batch 32, Adam with ``meta_lr=1e-3``, 60,000 meta-iterations;
    the query set has ``query_shots`` samples per class (the paper's code uses as many
    query as support samples, the default when ``query_shots`` is None). For 20-way
    1-shot the paper uses ``inner_lr=0.1``, ``inner_steps=5``, ``meta_batch_size=16``.

    The model must output ``ways`` logits (labels are remapped per task), e.g.
    ``learn2learn.vision.models.OmniglotCNN(output_size=ways)``; Avalanche
    multi-head models are refused. Evaluating an experience runs few-shot tasks as
    Avalanche evaluation iterations, so ``accuracy_metrics``, ``loss_metrics``,
    ``forgetting_metrics`` and ``bwt_metrics`` report few-shot query accuracy and
    loss; :class:`~avalanche_meta.evaluation.fewshot.FewShotAccuracy` in the
    evaluator adds the 95% confidence intervals and sets the tasks and rule
    (:mod:`avalanche_meta.strategies._fewshot`). ``strategy.adapt(support_x,
    support_y)`` / ``strategy.predict(support_x, support_y, query_x)`` adapt the
    model to a user's task (any labels) by the same rule, and
    :func:`avalanche_meta.fewshot.save` / :func:`~avalanche_meta.fewshot.load` keep
    a meta-trained model for that use.

    Keyword arguments only; ``train_mb_size``, ``train_epochs`` and
    ``eval_mb_size`` are refused (see ``meta_batch_size``, ``meta_iterations``,
    ``fewshot_eval``). Plugins adding a term to ``strategy.loss`` in
    ``before_backward`` without needing the experience's labels (e.g.
    ``avalanche_meta.plugins.si_reference.ReferenceSIPlugin``; Avalanche 0.6's ``SynapticIntelligencePlugin`` adds its term too, but on a CPU its importances stay 0: it keeps views of the parameters as the old weights) add it to the meta-loss; ``EWCPlugin``,
    ``LwFPlugin``, replay plugins, ``GEMPlugin``, ``AGEMPlugin`` are refused with the
    reason. On a GPU the loop synchronises with the host once per meta-update (the
    NaN check of all its losses), never per task.

    :param model: the model whose initial parameters ``theta`` are meta-learned.
    :param optimizer: the outer optimizer over ``model``'s parameters; None builds
        ``Adam(model.parameters(), lr=meta_lr)``.
    :param meta_lr: the outer learning rate when ``optimizer`` is None (default 1e-3);
        giving both is an error.
    :param criterion: the loss of the inner and outer steps.
    :param ways: N, classes per task.
    :param shots: K, support samples per class.
    :param query_shots: Q, query samples per class (None: ``shots``).
    :param inner_lr: the inner SGD step size (alpha in the paper).
    :param inner_steps: inner SGD steps per task.
    :param meta_batch_size: tasks per meta-update.
    :param meta_iterations: meta-updates per training experience.
    :param first_order: first-order MAML (no second derivatives).
    :param class_rotations: rotations by 90/180/270 degrees of every class as new
        classes (standard Omniglot protocol).
    :param task_rotation_prob: probability of rotating a whole task by 90 or 270
        degrees (task augmentation).
    :param fewshot_eval: the evaluation when the evaluator has no
        ``FewShotAccuracy``; None: ``ways``-way ``shots``-shot tasks, 15 queries per
        class, 600 tasks, 10 SGD steps of ``inner_lr`` (the paper's test-time
        adaptation), transductive batch norm.

    Example::

        l2l = import_learn2learn()
        model = l2l.vision.models.OmniglotCNN(output_size=5)
        strategy = MAML(model=model, ways=5, shots=1, meta_iterations=1000,
                        evaluator=EvaluationPlugin(FewShotAccuracy(ways=5, shots=1)))
        for exp in benchmark.train_stream:
            strategy.train(exp)
            strategy.eval(benchmark.test_stream)
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: Optional[torch.optim.Optimizer] = None,
        meta_lr: Optional[float] = None,
        criterion=CrossEntropyLoss(),
        ways: int = 5,
        shots: int = 1,
        query_shots: Optional[int] = None,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        meta_batch_size: int = 32,
        meta_iterations: int = 60000,
        first_order: bool = False,
        class_rotations: bool = False,
        task_rotation_prob: float = 0.0,
        fewshot_eval: Optional[FewShotEval] = None,
        device="cpu",
        plugins: Optional[Sequence] = None,
        evaluator=default_evaluator,
        eval_every: int = -1,
        **base_kwargs,
    ):
        check_positive("inner_lr", inner_lr)
        check_non_negative("inner_steps", inner_steps, integer=True)
        if optimizer is not None and meta_lr is not None:
            raise ValueError(
                "give either `optimizer` or `meta_lr` (the learning rate of the default "
                "Adam outer optimizer), not both."
            )
        if optimizer is None:
            meta_lr = 1e-3 if meta_lr is None else meta_lr
            check_positive("meta_lr", meta_lr)
            optimizer = torch.optim.Adam(model.parameters(), lr=meta_lr)
        super().__init__(
            model=model,
            optimizer=optimizer,
            criterion=criterion,
            ways=ways,
            shots=shots,
            query_shots=shots if query_shots is None else query_shots,
            meta_batch_size=meta_batch_size,
            meta_iterations=meta_iterations,
            class_rotations=class_rotations,
            task_rotation_prob=task_rotation_prob,
            fewshot_eval=fewshot_eval,
            device=device,
            plugins=plugins,
            evaluator=evaluator,
            eval_every=eval_every,
            **base_kwargs,
        )
        if self.query_shots < 1:
            raise ValueError(
                "`query_shots` must be >= 1: MAML's meta-loss needs a query set."
            )
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.first_order = bool(first_order)
        self.learner = None
        if self.fewshot_eval is None:
            self.fewshot_eval = FewShotEval(
                ways=ways,
                shots=shots,
                query_shots=15,
                num_tasks=600,
                rule=FewShotRule(inner_lr=inner_lr, inner_steps=10, optimizer="sgd"),
            )

    def _before_training_exp(self, **kwargs):
        super()._before_training_exp(**kwargs)
        l2l = import_learn2learn()
        # A thin wrapper holding a reference to self.model (no copy).
        self.learner = l2l.algorithms.MAML(
            self.model, lr=self.inner_lr, first_order=self.first_order
        )

    def inner_loop(self, task: FewShotTask):
        """``theta'``: a functional clone of the model after ``inner_steps`` SGD steps
        on the task's support loss (graph kept unless first order). Used in
        training (a learn2learn clone, inside ``train()``); to adapt the model to
        a user's task use :meth:`adapt`."""
        if self.learner is None:
            l2l = import_learn2learn()
            self.learner = l2l.algorithms.MAML(
                self.model, lr=self.inner_lr, first_order=self.first_order
            )
        fast = self.learner.clone()
        for step in range(self.inner_steps):
            logits = task_logits(fast.module, task.support_x)
            self.check_head(logits)
            support_loss = self._criterion(logits, task.support_y)
            self.defer_finite_check(
                support_loss, f"{type(self).__name__} inner step {step}"
            )
            fast.adapt(support_loss)
        return fast

    def meta_update(self, tasks: List[FewShotTask], **kwargs) -> None:
        """``theta <- Adam step on 1/B sum_i L_query(theta'_i)``.

        Each task's query loss is back-propagated as soon as it is computed (its
        graph is freed, as in learn2learn's examples), which gives the same
        gradient as one backward of the mean. ``self.loss`` then holds the
        (detached) meta-loss; a plugin adding a term to it in ``before_backward``
        (EWC, SI, ...) gets that term's gradient added too.
        """
        self.optimizer.zero_grad()
        self._before_forward(**kwargs)
        logits = []
        meta_loss = torch.zeros((), device=self.device)
        for i, task in enumerate(tasks):
            fast = self.inner_loop(task)
            query_logits = task_logits(fast.module, task.query_x)
            self.check_head(query_logits)
            query_loss = self._criterion(query_logits, task.query_y) / len(tasks)
            self.defer_finite_check(
                query_loss, f"{type(self).__name__} query loss, task {i}"
            )
            query_loss.backward()
            meta_loss += query_loss.detach()
            logits.append(query_logits.detach())
        # one host synchronisation per meta-update (none per task)
        self.check_pending_losses()
        self.set_query_batch(tasks, logits)
        self._after_forward(**kwargs)
        self.loss = self.loss + meta_loss
        self._before_backward(**kwargs)
        if self.loss.requires_grad:  # terms added by plugins
            self.defer_finite_check(self.loss, f"{type(self).__name__} meta-loss")
            self.check_pending_losses()
            self.loss.backward()
        self._after_backward(**kwargs)
        self._before_update(**kwargs)
        self.optimizer.step()
        self._after_update(**kwargs)


class FOMAML(MAML):
    """First-order MAML: :class:`MAML` with ``first_order=True``.

    The meta-gradient of each task is the query-loss gradient at the adapted
    parameters ``theta'_i`` (the inner gradients are treated as constants).
    """

    REFUSED_ARGUMENTS = {
        **MAML.REFUSED_ARGUMENTS,
        "first_order": "FOMAML is always first order; use MAML(first_order=...) "
        "to choose.",
    }

    def __init__(self, **kwargs):
        super().__init__(first_order=True, **kwargs)
