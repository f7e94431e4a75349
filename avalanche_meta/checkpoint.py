"""Avalanche checkpointing (``avalanche.checkpointing``) with current torch and dill.

The problem: ``avalanche.checkpointing.save_checkpoint`` pickles the whole strategy
with dill. With torch >= 2.x, dill 0.4 and typing_extensions >= 4.13 it fails for
every strategy (Avalanche's ``Naive`` included) with ``PicklingError: Can't pickle
sentinel: it's not the same object as typing_extensions.sentinel``.

Why: ``torch/optim/__init__.py`` imports its submodules and then deletes their names
from the package (``del sgd``, ``del adam``, ...). When dill pickles a class such as
``torch.optim.sgd.SGD`` it checks that the class can be found again by walking the
dotted path from the top package (``torch`` -> ``optim`` -> ``sgd`` -> ``SGD``);
``torch.optim.sgd`` is missing as an attribute, so dill concludes the class is not
importable and pickles it *by value*, dragging along its decorators, among them a
``typing_extensions.deprecated`` wrapper whose ``sentinel`` object then fails.

The workaround (:func:`reattach_torch_optim_submodules`): put the submodules that
``torch.optim`` deleted back as attributes of the package (``torch.optim.sgd =
sys.modules["torch.optim.sgd"]``, for each one that is imported and missing). It
changes nothing else: no pickling setting, no torch class; ``torch.optim.SGD`` and
friends are untouched, and the attributes are the modules Python already holds in
``sys.modules`` (torch itself had them before it started deleting them). Optimizers
are then pickled by reference, as any other class.

:func:`install` applies it when ``avalanche_meta`` is imported: at once if
``torch.optim`` is already imported, otherwise right after ``torch.optim`` is first
imported (a one-shot import hook, so that importing ``avalanche_meta`` stays cheap
and does not import torch). Set ``AVALANCHE_META_NO_TORCH_OPTIM_FIX=1`` to disable
it.

Resuming with ``save_checkpoint`` / ``maybe_load_checkpoint``: the checkpoint holds
the strategy (model, optimizer state, plugins, the strategies' own state such as a
replay memory and its random generator) and the global random generators (torch,
numpy, ``random``, through Avalanche's ``RNGManager``), so training resumed in a new
process continues exactly as an uninterrupted run: ``tests/test_checkpoint.py``
checks it, bit for bit, for Avalanche's Naive (SGD and Adam), Replay, EWC, SI, LwF
and for MER (Algorithms 1 and 7, a multi-head model), ER, NCCL, XdG, BI-R and its
RtF / DGR presets, MAML, FO-MAML, Reptile and transfer learning. Not yet BI-R with
SI (``bir-si``): its ``ReferenceSIPlugin`` remembers its modules' parameters by
``id()``, which changes when a checkpoint is loaded. With an online stream,
``maybe_load_checkpoint`` returns Avalanche's experience counter, which counts the
mini-experiences given to ``train`` (not the original experiences).

Example::

    import avalanche_meta  # applies the workaround
    from avalanche.checkpointing import maybe_load_checkpoint, save_checkpoint

    strategy, start = maybe_load_checkpoint(strategy, "ckpt.pkl")
    for exp in benchmark.train_stream[start:]:
        strategy.train(exp)
        save_checkpoint(strategy, "ckpt.pkl")
"""

from __future__ import annotations

import importlib.abc
import os
import sys
from typing import List, Optional

#: Environment variable that turns the workaround off (any non-empty value).
DISABLE_ENV = "AVALANCHE_META_NO_TORCH_OPTIM_FIX"

_PACKAGE = "torch.optim"


def reattach_torch_optim_submodules() -> List[str]:
    """Make every imported ``torch.optim.<name>`` submodule an attribute again.

    Only submodules already in ``sys.modules`` whose attribute is missing from the
    ``torch.optim`` package are set; nothing is imported and nothing is replaced.
    Idempotent.

    :return: the names that were re-attached (e.g. ``["adam", "sgd", ...]``); empty
        when ``torch.optim`` is not imported or nothing was missing.
    """
    package = sys.modules.get(_PACKAGE)
    if package is None:
        return []
    prefix = _PACKAGE + "."
    attached = []
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(prefix):
            continue
        short = name[len(prefix) :]
        if "." in short or hasattr(package, short):
            continue
        setattr(package, short, module)
        attached.append(short)
    return sorted(attached)


class _AfterTorchOptimImport(importlib.abc.MetaPathFinder):
    """One-shot hook: runs :func:`reattach_torch_optim_submodules` once
    ``torch.optim`` has been executed, then removes itself."""

    def find_spec(self, fullname, path, target=None):  # noqa: D102
        if fullname != _PACKAGE:
            return None
        self._remove()
        spec = None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        loader = getattr(spec, "loader", None)
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None:
            return spec

        def exec_then_reattach(module):
            exec_module(module)
            # torch.optim is in sys.modules while it executes: reattach looks there.
            reattach_torch_optim_submodules()

        loader.exec_module = exec_then_reattach
        return spec

    def _remove(self) -> None:
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass


_HOOK: Optional[_AfterTorchOptimImport] = None


def install() -> None:
    """Apply the workaround now, or as soon as ``torch.optim`` is imported.

    Called by ``import avalanche_meta``. Does nothing when
    ``$AVALANCHE_META_NO_TORCH_OPTIM_FIX`` is set to a non-empty value.
    """
    global _HOOK
    if os.environ.get(DISABLE_ENV):
        return
    if _PACKAGE in sys.modules:
        reattach_torch_optim_submodules()
        return
    if _HOOK is None or _HOOK not in sys.meta_path:
        _HOOK = _AfterTorchOptimImport()
        sys.meta_path.insert(0, _HOOK)


__all__ = ["DISABLE_ENV", "install", "reattach_torch_optim_submodules"]
