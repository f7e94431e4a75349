"""Keyword-only construction with clear errors, for ER, MER, NeuronCalibration and
the XdG and calibration plugins.

Avalanche's strategies are built with keyword arguments (``Naive(model=...,
optimizer=..., ...)``); Python's own errors for a positional argument or a typo'd
keyword name neither the strategy's arguments nor the likely fix. The mixin
:class:`KeywordOnlyConstruction` checks the call before ``__init__`` runs:

- positional arguments raise :class:`StrategyArgumentError` saying the strategy
  takes keyword arguments only;
- an unknown keyword raises :class:`StrategyArgumentError` naming it and its close
  matches among the accepted names (the ``__init__`` parameters along the MRO,
  Avalanche's templates included).

:class:`StrategyArgumentError` is the few-shot strategies' class (one type for the
whole package): both a ``TypeError`` and a ``ValueError``.
"""

from __future__ import annotations

import difflib
import inspect
from typing import List

from avalanche_meta.strategies._fewshot import StrategyArgumentError


def accepted_keywords(cls) -> List[str]:
    """Named parameters of the ``__init__`` methods along ``cls``'s MRO."""
    names: List[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            continue
        for p in params:
            if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
                if p.name not in names:
                    names.append(p.name)
    return names


class KeywordOnlyConstruction:
    """Mixin: refuse positional arguments and unknown keywords with a clear error.

    :attr:`MAX_POSITIONAL` arguments may be positional (0 for strategies; 1 for a
    plugin built on a model, e.g. ``XdG(model, n_tasks=5)``).
    """

    MAX_POSITIONAL = 0

    def __new__(cls, *args, **kwargs):
        name = cls.__name__
        if len(args) > cls.MAX_POSITIONAL:
            allowed = (
                ""
                if cls.MAX_POSITIONAL == 0
                else f" after the first {cls.MAX_POSITIONAL}"
            )
            raise StrategyArgumentError(
                f"{name} takes keyword arguments only{allowed} (as Avalanche "
                f"strategies are called): got {len(args)} positional argument(s) "
                f"({', '.join(type(a).__name__ for a in args)}); write e.g. "
                f"{name}(model=model, ...)."
            )
        if kwargs:
            accepted = accepted_keywords(cls)
            for key in kwargs:
                if key not in accepted:
                    close = difflib.get_close_matches(key, accepted, n=3, cutoff=0.6)
                    hint = (
                        f"; did you mean {' or '.join(repr(c) for c in close)}?"
                        if close
                        else f"; it takes: {', '.join(accepted)}."
                    )
                    raise StrategyArgumentError(
                        f"{name} got an unexpected keyword argument {key!r}{hint}"
                    )
        return super().__new__(cls)


__all__ = ["KeywordOnlyConstruction", "StrategyArgumentError", "accepted_keywords"]
