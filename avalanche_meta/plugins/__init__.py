"""Avalanche plugins of avalanche-meta (append one export line per plugin)."""
from avalanche_meta.plugins.xdg import XdG; from avalanche_meta.plugins.samples import GeneratedSamplesPlot
from avalanche_meta.plugins.calibration import CalibrationPlugin
