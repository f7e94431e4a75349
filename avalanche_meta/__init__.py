"""avalanche-meta: meta-learning based continual learning for Avalanche.

Strategies and plugins written as Avalanche ``SupervisedTemplate`` subclasses and
plugins: Meta-Experience Replay (MER), neuron calibration (NCCL), brain-inspired
replay (BI-R) and XdG, MAML / first-order MAML / Reptile.

Importing the package is cheap and silent; strategies live in
:mod:`avalanche_meta.strategies`, plugins in :mod:`avalanche_meta.plugins`, models in
:mod:`avalanche_meta.models`, benchmarks in :mod:`avalanche_meta.benchmarks` and
metrics in :mod:`avalanche_meta.evaluation`.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
