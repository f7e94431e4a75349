"""Online (single-pass) streams that keep task labels and classes.

Avalanche 0.6's ``split_online_stream`` cuts each experience into
mini-experiences, but the mini-experiences lose ``task_labels`` and
``classes_in_this_experience`` (AVALANCHE_NOTES section 1.5): Avalanche's
``forward`` then calls ``model(x)`` without task labels, which breaks multi-head
models, and dynamic heads cannot adapt. :func:`online_stream` uses
``split_online_stream`` with task boundaries visible and puts those attributes
back on every mini-experience.
"""

from __future__ import annotations

import itertools
from typing import Iterable, Optional

import numpy as np

from avalanche_meta.utils.validation import check_positive


def _sub_seed(seed: Optional[int], index: int) -> Optional[int]:
    # A different, reproducible shuffling seed for each origin experience.
    if seed is None:
        return None
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def online_stream(
    stream: Iterable,
    batch_size: int = 1,
    *,
    seed: Optional[int] = None,
    shuffle: bool = True,
):
    """Split every experience of ``stream`` into mini-experiences of ``batch_size`` examples.

    A thin wrapper over ``avalanche.benchmarks.scenarios.online.split_online_stream``
    with ``access_task_boundaries=True``. Each mini-experience gets, from the
    experience it was cut from:

    - ``task_labels`` (and ``task_label`` when there is one), so Avalanche's
      ``forward`` passes the task labels to multi-task models;
    - ``classes_in_this_experience``: the origin experience's classes, as a sorted
      list. With task boundaries visible, a dynamic head (``IncrementalClassifier``,
      ``MultiHeadClassifier``) learns a task's classes at the task's first
      mini-experience; the list (not a set) avoids Avalanche 0.6's indexing bug.

    The samples keep their task label (third batch element); boundary attributes
    (``is_first_subexp``, ``is_last_subexp``, ``origin_experience``) are readable
    during training.

    :param stream: a stream (or list) of experiences, e.g.
        ``benchmark.train_stream`` or ``[experience]``.
    :param batch_size: examples per mini-experience (the last one may be smaller).
    :param seed: seeds the order of the examples within each experience (None:
        Avalanche draws a random seed per experience).
    :param shuffle: shuffle the examples of each experience before cutting it.
    :return: a lazy, single-use Avalanche ``CLStream`` of mini-experiences.

    Example::

        for exp in info.benchmark.train_stream:
            strategy.train(online_stream([exp], batch_size=10, seed=0))
            strategy.eval(info.benchmark.test_stream)
    """
    from avalanche.benchmarks.scenarios.online import (
        FixedSizeExperienceSplitter,
        split_online_stream,
    )

    check_positive("batch_size", batch_size, integer=True)

    counter = itertools.count()

    def split_keeping_labels(exp, size: int):
        index = next(counter)
        with exp.no_attribute_masking():
            task_labels = getattr(exp, "task_labels", None)
            classes = getattr(exp, "classes_in_this_experience", None)
        if task_labels is None and hasattr(exp.dataset, "targets_task_labels"):
            task_labels = exp.dataset.targets_task_labels.uniques
        if classes is None:
            classes = exp.dataset.targets.uniques
        classes = sorted(int(c) for c in classes)
        if task_labels is not None:
            task_labels = sorted(int(t) for t in task_labels)
        splitter = FixedSizeExperienceSplitter(
            experience=exp,
            experience_size=size,
            shuffle=shuffle,
            drop_last=False,
            access_task_boundaries=True,
            seed=_sub_seed(seed, index),
        )
        for sub in splitter:
            if task_labels is not None:
                sub.task_labels = task_labels
                if len(task_labels) == 1:
                    sub.task_label = task_labels[0]
            sub.classes_in_this_experience = classes
            yield sub

    return split_online_stream(
        stream,
        batch_size,
        shuffle=shuffle,
        experience_split_strategy=split_keeping_labels,
        access_task_boundaries=True,
        seed=seed,
    )
