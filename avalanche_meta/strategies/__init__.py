"""Avalanche strategies of avalanche-meta (append one export line per strategy)."""
from avalanche_meta.strategies.neuron_calibration import NeuronCalibration
from avalanche_meta.strategies.bir import BrainInspiredReplay, replay_vae
from avalanche_meta.strategies.er import ER  # noqa: F401
from avalanche_meta.strategies.mer import MER  # noqa: F401
from avalanche_meta.strategies.maml import FOMAML, MAML  # noqa: F401
from avalanche_meta.strategies.reptile import Reptile  # noqa: F401
from avalanche_meta.strategies.transfer import TransferLearning  # noqa: F401
