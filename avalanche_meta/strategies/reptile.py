"""Reptile as an Avalanche strategy.

Nichol, Achiam, Schulman, "On First-Order Meta-Learning Algorithms", 2018 (the
"batched" version of their Algorithm 2). For each of ``meta_batch_size`` tasks, start
from the meta-parameters ``phi`` and take ``inner_steps`` steps of the inner optimizer
(Adam with ``beta1 = 0`` by default) on mini-batches of ``inner_batch_size`` samples of
the task, giving ``phi~_i``; then

    ``phi <- phi + epsilon * (1/B sum_i phi~_i - phi)``

with the meta step size ``epsilon`` annealed linearly from ``meta_step_size`` to
``meta_step_size_final`` over the experience's ``meta_iterations``. The parameters
live in one flat buffer (:class:`~avalanche_meta.utils.flat.FlatParameters`), so the
snapshot of ``phi`` is one ``copy_`` and the update one ``lerp_``.

Departures from the paper, on purpose:

- The annealing of ``epsilon`` restarts at every Avalanche experience (training on an
  experience is one Reptile run of ``meta_iterations``; the paper has one training
  set). Defaults are the paper's Omniglot values except ``meta_iterations`` (100,000
  in the paper, per experience here).
- As in the reference code, the inner optimizer's state (Adam moments) persists
  across tasks and meta-iterations; only the model parameters are interpolated.
  Buffers (batch-norm running statistics) are not interpolated; no few-shot
  evaluation uses them (batch norm always normalises with batch statistics, as in
  the reference code, whose batch-norm layers never use running statistics).
- Mini-batches are consecutive slices of a shuffled order, reshuffled when fewer than
  a batch remain; the reference code fills a batch across two shuffles instead. The
  two rules give the same batches when ``inner_batch_size`` divides the task's
  sample count, as in all the paper's Omniglot settings (50 / 10, 200 / 20).
- The reference evaluation fine-tunes with the meta-training Adam (its moments
  carried over, restored after each task):
  :class:`~avalanche_meta.evaluation.fewshot.FewShotAccuracy` does so with
  ``continue_adam=True`` (the command line's Reptile presets), and starts a fresh
  Adam by default.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import CrossEntropyLoss

from avalanche.training.plugins.evaluation import default_evaluator

from avalanche_meta.evaluation.fewshot import FewShotEval, FewShotRule, FewShotTask
from avalanche_meta.strategies._fewshot import EpisodicTemplate, task_logits
from avalanche_meta.utils.flat import FlatParameters
from avalanche_meta.utils.validation import (
    NonFiniteLossError,
    check_in_interval,
    check_positive,
)

__all__ = ["Reptile", "interpolate"]


def interpolate(phi: Tensor, phi_tilde_mean: Tensor, epsilon: float) -> Tensor:
    """Reptile's meta step, in place: ``phi += epsilon * (phi_tilde_mean - phi)``."""
    return phi.lerp_(phi_tilde_mean, epsilon)


class Reptile(EpisodicTemplate):
    """Reptile over N-way tasks of each experience.

    Defaults are Nichol et al.'s Omniglot settings: tasks of ``shots=10`` samples per
    class for 1-shot evaluation (their ``--train-shots 10``), inner Adam with
    ``inner_lr=1e-3`` and ``betas=(0, 0.999)``, ``inner_steps=5`` on mini-batches of
    ``inner_batch_size=10``, ``meta_batch_size=5``, meta step 1 annealed to 0
    (20-way: ``inner_lr=5e-4``, ``inner_steps=10``, ``inner_batch_size=20``, 200,000
    meta-iterations). Their evaluation fine-tunes with Adam for 50 steps on
    mini-batches of 5 support samples (10 for 20-way) and, unless
    ``--transductive``, predicts each query with the support set alone:
    ``FewShotAccuracy(optimizer="adam", inner_lr=1e-3, inner_steps=50,
    inner_batch_size=5, query_shots=1, transductive=False, continue_adam=True)``
    (``transductive=True`` for their transductive results).

    The model must output ``ways`` logits (labels are remapped per task).

    :param model: the model whose parameters ``phi`` are meta-learned.
    :param optimizer: the inner optimizer over ``model``'s parameters; None builds
        ``Adam(model.parameters(), lr=inner_lr, betas=(0, 0.999))``.
    :param inner_lr: the inner learning rate when ``optimizer`` is None (default
        1e-3); giving both is an error.
    :param ways: N, classes per task.
    :param shots: samples per class in a training task.
    :param inner_steps: inner optimizer steps per task (K in the paper).
    :param inner_batch_size: samples per inner step (mini-batches without replacement,
        reshuffled when the task's samples are used up).
    :param meta_batch_size: tasks per meta step.
    :param meta_step_size: epsilon at the start of each experience.
    :param meta_step_size_final: epsilon at its end (linear annealing).
    :param meta_iterations: meta steps per training experience.
    :param class_rotations: rotations by 90/180/270 degrees of every class as new
        classes.
    :param task_rotation_prob: probability of rotating a whole task by 90 or 270
        degrees.
    :param fewshot_eval: the evaluation when the evaluator has no
        ``FewShotAccuracy``; None: ``ways``-way 1-shot tasks, 15 queries per class,
        600 tasks, 50 fresh-Adam steps (``betas=(0, 0.999)``) of the inner learning
        rate on the whole support set, transductive batch norm.

    Evaluation, ``adapt`` / ``predict``, keyword-only construction, refused
    arguments and plugins, and multi-head models: as for
    :class:`~avalanche_meta.strategies.maml.MAML` (``train_mb_size`` -> see
    ``inner_batch_size``). Plugins adding to ``strategy.loss`` in
    ``before_backward`` (e.g. ``avalanche_meta.plugins.si_reference.ReferenceSIPlugin``) act on every inner
    step (Reptile has no meta-loss). On a GPU the loop synchronises with the host
    once per meta step (the NaN check of its inner losses).

    Example::

        strategy = Reptile(model=OmniglotCNN(output_size=5), ways=5,
                           meta_iterations=1000,
                           evaluator=EvaluationPlugin(FewShotAccuracy(
                               ways=5, shots=1, optimizer="adam", inner_lr=1e-3,
                               inner_steps=50)))
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: Optional[torch.optim.Optimizer] = None,
        inner_lr: Optional[float] = None,
        criterion=CrossEntropyLoss(),
        ways: int = 5,
        shots: int = 10,
        inner_steps: int = 5,
        inner_batch_size: int = 10,
        meta_batch_size: int = 5,
        meta_step_size: float = 1.0,
        meta_step_size_final: float = 0.0,
        meta_iterations: int = 100000,
        class_rotations: bool = False,
        task_rotation_prob: float = 0.0,
        fewshot_eval: Optional[FewShotEval] = None,
        device="cpu",
        plugins: Optional[Sequence] = None,
        evaluator=default_evaluator,
        eval_every: int = -1,
        **base_kwargs,
    ):
        check_positive("inner_steps", inner_steps, integer=True)
        check_positive("inner_batch_size", inner_batch_size, integer=True)
        check_in_interval("meta_step_size", meta_step_size, 0.0, 1.0)
        check_in_interval("meta_step_size_final", meta_step_size_final, 0.0, 1.0)
        if optimizer is not None and inner_lr is not None:
            raise ValueError(
                "give either `optimizer` (the inner optimizer) or `inner_lr` (the "
                "learning rate of the default inner Adam), not both."
            )
        if optimizer is None:
            inner_lr = 1e-3 if inner_lr is None else inner_lr
            check_positive("inner_lr", inner_lr)
            optimizer = torch.optim.Adam(
                model.parameters(), lr=inner_lr, betas=(0.0, 0.999)
            )
        super().__init__(
            model=model,
            optimizer=optimizer,
            criterion=criterion,
            ways=ways,
            shots=shots,
            query_shots=0,
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
        self.inner_steps = inner_steps
        self.inner_batch_size = inner_batch_size
        self.meta_step_size = meta_step_size
        self.meta_step_size_final = meta_step_size_final
        self.flat: Optional[FlatParameters] = None
        if self.fewshot_eval is None:
            self.fewshot_eval = FewShotEval(
                ways=ways,
                shots=1,
                query_shots=15,
                num_tasks=600,
                rule=FewShotRule(
                    inner_lr=float(self.optimizer.param_groups[0]["lr"]),
                    inner_steps=50,
                    optimizer="adam",
                ),
            )

    def _before_training_exp(self, **kwargs):
        super()._before_training_exp(**kwargs)
        # The model may have been adapted (new parameters) or moved: re-flatten.
        self.flat = FlatParameters(self.model)

    @property
    def epsilon(self) -> float:
        """The current meta step size (linear from ``meta_step_size`` to
        ``meta_step_size_final`` over the experience's meta-iterations)."""
        frac = self.meta_iteration / self.meta_iterations
        return (1 - frac) * self.meta_step_size + frac * self.meta_step_size_final

    def _mini_batches(self, n: int, device=None) -> Tensor:
        """Indices of ``inner_steps`` mini-batches of ``inner_batch_size`` samples out
        of ``n`` (one row each): consecutive slices of a shuffled order, reshuffled
        when fewer than a batch remain. Drawn on the CPU (torch's generator) and
        moved to ``device`` in one copy per task."""
        size = min(self.inner_batch_size, n)
        order, pos = torch.randperm(n), 0
        rows = []
        for _ in range(self.inner_steps):
            if pos + size > n:
                order, pos = torch.randperm(n), 0
            rows.append(order[pos : pos + size])
            pos += size
        return torch.stack(rows).to(device)

    def train_on_task(self, task: FewShotTask, **kwargs) -> None:
        """``inner_steps`` inner-optimizer steps on the task (the model then holds
        ``phi~``)."""
        x, y = task.support_x, task.support_y
        for step, idx in enumerate(self._mini_batches(len(y), x.device)):
            self.optimizer.zero_grad()
            logits = task_logits(self.model, x[idx])
            self.check_head(logits)
            self.loss = self._criterion(logits, y[idx])
            # plugins adding to ``strategy.loss`` (EWC, SI, ...) act on inner steps
            self._before_backward(**kwargs)
            self.defer_finite_check(self.loss, f"Reptile inner step {step}")
            self.loss.backward()
            self._after_backward(**kwargs)
            self.optimizer.step()

    def meta_update(self, tasks: List[FewShotTask], **kwargs) -> None:
        """``phi <- phi + epsilon * (mean_i phi~_i - phi)``."""
        flat = self.flat.flat
        phi = flat.detach().clone()
        phi_tilde_sum = torch.zeros_like(phi)
        self._before_forward(**kwargs)
        for task in tasks:
            flat.copy_(phi)
            self.train_on_task(task, **kwargs)
            phi_tilde_sum += flat
        # one host synchronisation per meta step (none per task or inner step);
        # on a non-finite loss the parameters go back to phi (the inner Adam's
        # moments keep that meta step's updates) and the error is raised
        try:
            self.check_pending_losses()
        except NonFiniteLossError:
            flat.copy_(phi)
            raise
        self._after_forward(**kwargs)
        self._before_update(**kwargs)
        flat.copy_(interpolate(phi, phi_tilde_sum / len(tasks), self.epsilon))
        self._after_update(**kwargs)
        # For the metrics: the new phi's loss on the last task's samples.
        last = tasks[-1]
        with torch.no_grad():
            self.mb_output = task_logits(self.model, last.support_x)
        self.mbatch = [last.support_x, last.support_y, torch.zeros_like(last.support_y)]
        self.loss = self._criterion(self.mb_output, last.support_y)
