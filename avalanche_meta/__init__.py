"""avalanche-meta: meta-learning based continual learning for Avalanche.

Strategies and plugins written as Avalanche ``SupervisedTemplate`` subclasses and
plugins: Meta-Experience Replay (MER), neuron calibration (NCCL), brain-inspired
replay (BI-R) and XdG, MAML / first-order MAML / Reptile.

Importing the package is cheap and silent (it does not import torch); strategies
live in :mod:`avalanche_meta.strategies`, plugins in :mod:`avalanche_meta.plugins`,
models in :mod:`avalanche_meta.models`, benchmarks in
:mod:`avalanche_meta.benchmarks` and metrics in :mod:`avalanche_meta.evaluation`.

Importing it also makes Avalanche's checkpointing
(``avalanche.checkpointing.save_checkpoint``) work with current torch and dill:
see :mod:`avalanche_meta.checkpoint` (a narrow workaround that re-attaches
the submodules ``torch.optim`` deletes from itself; set
``AVALANCHE_META_NO_TORCH_OPTIM_FIX=1`` to turn it off).
"""

from avalanche_meta.checkpoint import install as _install_checkpoint_fix

__version__ = "0.1.0"

__all__ = ["__version__", "set_threads"]


def set_threads(n: int) -> None:
    """Set torch's CPU threads for this process (see :func:`avalanche_meta.fewshot.set_threads`).

    The library never changes torch's thread count by itself; small models train
    fastest with one thread on a shared machine (the command line uses 1).
    """
    from avalanche_meta.fewshot import set_threads as _set

    _set(n)


_install_checkpoint_fix()
