"""Avalanche plugins of avalanche-meta."""

from avalanche_meta.plugins.calibration import CalibrationPlugin
from avalanche_meta.plugins.samples import GeneratedSamplesPlot
from avalanche_meta.plugins.si import SynapticIntelligencePlugin
from avalanche_meta.plugins.si_reference import ReferenceSIPlugin
from avalanche_meta.plugins.xdg import XdG, XdGPlugin

__all__ = [
    "CalibrationPlugin",
    "GeneratedSamplesPlot",
    "ReferenceSIPlugin",
    "SynapticIntelligencePlugin",
    "XdG",
    "XdGPlugin",
]
