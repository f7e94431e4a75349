"""What the episodic (few-shot) strategies share: task sampling per experience, the
meta-iteration loop with Avalanche's callbacks, and the few-shot evaluation rule.

:class:`EpisodicTemplate` is a ``SupervisedTemplate`` whose training on an experience is
``meta_iterations`` meta-updates, each over ``meta_batch_size`` N-way tasks sampled
from the experience's data by :class:`~avalanche_meta.evaluation.fewshot.FewShotTaskSampler`.
Subclasses (:class:`~avalanche_meta.strategies.maml.MAML`,
:class:`~avalanche_meta.strategies.reptile.Reptile`) write only ``meta_update``.

Evaluation: labels are remapped per task, so the per-sample classification pass of
``SupervisedTemplate.eval`` is meaningless for these models (a 5-unit head cannot
score 156 character classes); :meth:`EpisodicTemplate.eval_epoch` therefore skips it
and the evaluation callbacks still fire, so
:class:`~avalanche_meta.evaluation.fewshot.FewShotAccuracy` in the ``evaluator`` does
the few-shot evaluation.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import CrossEntropyLoss

from avalanche.models.utils import avalanche_forward
from avalanche.training.templates import SupervisedTemplate
from avalanche.training.plugins.evaluation import default_evaluator

from avalanche_meta.evaluation.fewshot import (
    FewShotTask,
    FewShotTaskSampler,
    dataset_tensors,
)
from avalanche_meta.utils.validation import (
    check_in_interval,
    check_non_negative,
    check_positive,
)


def task_logits(model: nn.Module, x: Tensor) -> Tensor:
    """``model``'s logits on ``x``, task label 0 for multi-task modules."""
    t = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    return avalanche_forward(model, x, t)


class EpisodicTemplate(SupervisedTemplate):
    """Base of the few-shot strategies: ``meta_iterations`` meta-updates per experience.

    :param ways: N, classes per task.
    :param shots: K, support (training) samples per class.
    :param query_shots: Q, query samples per class (0: tasks have no query set).
    :param meta_batch_size: tasks per meta-update.
    :param meta_iterations: meta-updates per training experience.
    :param class_rotations: add the 90/180/270-degree rotations of every class of the
        experience as new classes (the standard Omniglot augmentation).
    :param task_rotation_prob: probability of rotating a whole task by 90 or 270
        degrees (task augmentation).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion=CrossEntropyLoss(),
        ways: int,
        shots: int,
        query_shots: int,
        meta_batch_size: int,
        meta_iterations: int,
        class_rotations: bool = False,
        task_rotation_prob: float = 0.0,
        device="cpu",
        plugins: Optional[Sequence] = None,
        evaluator=default_evaluator,
        eval_every: int = -1,
        **base_kwargs,
    ):
        check_positive("ways", ways, integer=True)
        check_positive("shots", shots, integer=True)
        check_non_negative("query_shots", query_shots, integer=True)
        check_positive("meta_batch_size", meta_batch_size, integer=True)
        check_positive("meta_iterations", meta_iterations, integer=True)
        check_in_interval("task_rotation_prob", task_rotation_prob, 0.0, 1.0)
        if not isinstance(class_rotations, bool):
            raise ValueError(
                f"`class_rotations` must be True or False, got {class_rotations!r}."
            )
        super().__init__(
            model=model,
            optimizer=optimizer,
            criterion=criterion,
            train_mb_size=1,
            train_epochs=1,
            eval_mb_size=256,
            device=device,
            plugins=plugins,
            evaluator=evaluator,
            eval_every=eval_every,
            **base_kwargs,
        )
        self.ways = ways
        self.shots = shots
        self.query_shots = query_shots
        self.meta_batch_size = meta_batch_size
        self.meta_iterations = meta_iterations
        self.class_rotations = class_rotations
        self.task_rotation_prob = task_rotation_prob
        #: meta-updates done on the current experience (drives Reptile's annealing).
        self.meta_iteration = 0
        #: meta-updates done since the strategy was built.
        self.total_meta_iterations = 0
        self.sampler: Optional[FewShotTaskSampler] = None

    # ----------------------------------------------------------------- tasks
    def make_sampler(self, dataset, name: str) -> FewShotTaskSampler:
        """The task sampler over ``dataset`` (seeded from torch's generator)."""
        x, y = dataset_tensors(dataset)
        return FewShotTaskSampler(
            x,
            y,
            ways=self.ways,
            shots=self.shots,
            query_shots=self.query_shots,
            class_rotations=self.class_rotations,
            task_rotation_prob=self.task_rotation_prob,
            seed=int(torch.randint(0, 2**31 - 1, ()).item()),
            name=name,
        )

    def sample_tasks(self) -> List[FewShotTask]:
        """``meta_batch_size`` tasks of the current experience, on the device."""
        assert self.sampler is not None
        return [
            self.sampler.sample().to(self.device) for _ in range(self.meta_batch_size)
        ]

    def check_head(self, logits: Tensor) -> None:
        """Raise unless the model has ``ways`` outputs (labels are ``0..ways-1``)."""
        if logits.shape[-1] != self.ways:
            raise ValueError(
                f"the model outputs {logits.shape[-1]} units but `ways`={self.ways}: "
                f"{type(self).__name__} remaps each task's labels to 0..{self.ways - 1}, "
                f"so build the model with {self.ways} outputs (e.g. "
                f"OmniglotCNN(output_size={self.ways}))."
            )

    # ------------------------------------------------------------------ loop
    def _before_training_exp(self, **kwargs):
        super()._before_training_exp(**kwargs)
        exp_id = self.experience.current_experience
        self.sampler = self.make_sampler(
            self.adapted_dataset, f"training experience {exp_id}"
        )
        self.meta_iteration = 0

    def training_epoch(self, **kwargs):
        """``meta_iterations`` meta-updates, each firing Avalanche's iteration,
        forward, backward and update callbacks (plugins that add to
        ``strategy.loss`` in ``before_backward`` add to MAML's meta-loss, and to
        every inner-step loss of Reptile, which has no meta-loss)."""
        while self.meta_iteration < self.meta_iterations:
            if self._stop_training:
                break
            tasks = self.sample_tasks()
            self._before_training_iteration(**kwargs)
            self.loss = self._make_empty_loss()
            self.meta_update(tasks, **kwargs)
            self.meta_iteration += 1
            self.total_meta_iterations += 1
            self._after_training_iteration(**kwargs)

    def meta_update(self, tasks: List[FewShotTask], **kwargs) -> None:
        """One meta-update on ``tasks``; sets ``self.mbatch``, ``self.mb_output`` and
        ``self.loss`` (for the metrics) and fires the forward/backward/update
        callbacks."""
        raise NotImplementedError

    def set_query_batch(self, tasks: List[FewShotTask], logits: List[Tensor]) -> None:
        """Expose the tasks' query sets and logits as the current mini-batch."""
        x = torch.cat([t.query_x for t in tasks])
        y = torch.cat([t.query_y for t in tasks])
        self.mbatch = [x, y, torch.zeros_like(y)]
        self.mb_output = torch.cat(logits)

    def eval_epoch(self, **kwargs):
        """No per-sample classification pass (labels are remapped per task); the
        few-shot evaluation is done by ``FewShotAccuracy`` in the evaluator."""
        return None

    # ----------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Model, optimizer and meta-iteration counters (to resume a run)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "meta_iteration": self.meta_iteration,
            "total_meta_iterations": self.total_meta_iterations,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.meta_iteration = state["meta_iteration"]
        self.total_meta_iterations = state["total_meta_iterations"]
