"""Avalanche strategies of avalanche-meta (``SupervisedTemplate`` subclasses)."""

from avalanche_meta.strategies.bir import BrainInspiredReplay, replay_vae
from avalanche_meta.strategies.er import ER
from avalanche_meta.strategies.maml import FOMAML, MAML
from avalanche_meta.strategies.mer import MER
from avalanche_meta.strategies.neuron_calibration import NeuronCalibration
from avalanche_meta.strategies.reptile import Reptile
from avalanche_meta.strategies.transfer import TransferLearning

__all__ = [
    "BrainInspiredReplay",
    "replay_vae",
    "ER",
    "FOMAML",
    "MAML",
    "MER",
    "NeuronCalibration",
    "Reptile",
    "TransferLearning",
]
