"""Moved to :mod:`avalanche_meta.experiments.plots`; this name stays importable.

``avalanche_meta.cli.plots`` *is* that module (the same module object), so its
names, its state and patches made through either name are shared.
"""

import sys

from avalanche_meta.experiments import plots as _impl

sys.modules[__name__] = _impl
