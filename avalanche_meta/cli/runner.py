"""Moved to :mod:`avalanche_meta.experiments.runner`; this name stays importable.

``avalanche_meta.cli.runner`` *is* that module (the same module object), so its
names, its state and patches made through either name are shared.
"""

import sys

from avalanche_meta.experiments import runner as _impl

sys.modules[__name__] = _impl
