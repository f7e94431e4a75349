"""Import learn2learn without the banner that its dependency gym prints on import.

learn2learn imports gym, and gym 0.26 prints an "unmaintained" notice to stderr on
import (looked up in ``gym_notices``). We hide exactly that notice, by removing gym's
own entry from ``gym_notices`` for the duration of the import, instead of redirecting
stderr: any other message or warning raised during the import still reaches the user.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType


def _import_quietly(name: str) -> ModuleType:
    if "gym" in sys.modules:
        return importlib.import_module(name)
    try:
        from gym_notices import notices as gym_notices
    except ImportError:  # no gym_notices: gym prints nothing
        return importlib.import_module(name)
    saved = dict(gym_notices.notices)
    gym_notices.notices.clear()
    try:
        return importlib.import_module(name)
    finally:
        gym_notices.notices.update(saved)


def import_learn2learn() -> ModuleType:
    """Return the ``learn2learn`` module, imported without gym's banner.

    :raises ImportError: with install instructions if learn2learn is missing.
    """
    try:
        return _import_quietly("learn2learn")
    except ImportError as err:
        if err.name not in ("learn2learn", "gym"):
            raise
        raise ImportError(
            "learn2learn is required (MAML, Reptile, NeuronCalibration second order). "
            "Its PyPI release does not build on Python >= 3.11 as shipped: run "
            "`bash scripts/bootstrap.sh` from the avalanche-meta checkout, which builds it."
        ) from err
