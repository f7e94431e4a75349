"""Moved to the experiments layer; the old names stay importable from here.

- :mod:`avalanche_meta.experiments.builders.fewshot`
- :mod:`avalanche_meta.experiments.tables.fewshot`
- :mod:`avalanche_meta.experiments.benches.maml`

Importing this module imports (and so registers) all of them; any name of theirs,
including private ones, is looked up in them in that order.
"""

import importlib
from typing import Any

_MODULES = tuple(
    importlib.import_module(name)
    for name in (
        "avalanche_meta.experiments.builders.fewshot",
        "avalanche_meta.experiments.tables.fewshot",
        "avalanche_meta.experiments.benches.maml",
    )
)


def __getattr__(name: str) -> Any:
    for module in _MODULES:
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
