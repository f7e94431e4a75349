"""Avalanche strategies of avalanche-meta (append one export line per strategy)."""
from avalanche_meta.strategies.bir import BrainInspiredReplay, replay_vae
from avalanche_meta.strategies.neuron_calibration import NeuronCalibration
