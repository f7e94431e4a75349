"""Moved to :mod:`avalanche_meta.experiments.benches.sweep`; this name stays importable.

``avalanche_meta.cli.bench_sweep`` *is* that module (the same module object).
"""

import sys

from avalanche_meta.experiments.benches import sweep as _impl

sys.modules[__name__] = _impl
