"""Continual-learning metrics: the accuracy matrix and its summaries.

See :mod:`avalanche_meta.evaluation.metrics`.
"""

from avalanche_meta.evaluation.metrics import (
    BTI,
    BWT,
    FWT,
    AccuracyMatrix,
    AverageAccuracy,
    Forgetting,
    LearningAccuracy,
    average_accuracy,
    bti,
    bwt,
    continual_metrics,
    forgetting,
    fwt,
    learning_accuracy,
)

from avalanche_meta.evaluation.fewshot import (
    FewShotAccuracy,
    few_shot_accuracy,
    fewshot_metrics,
)

__all__ = [
    "AccuracyMatrix",
    "AverageAccuracy",
    "LearningAccuracy",
    "BWT",
    "BTI",
    "Forgetting",
    "FWT",
    "continual_metrics",
    "average_accuracy",
    "learning_accuracy",
    "bwt",
    "bti",
    "forgetting",
    "fwt",
    "FewShotAccuracy",
    "few_shot_accuracy",
    "fewshot_metrics",
]
