"""Models of avalanche-meta (append one export line per module)."""

from avalanche_meta.models.mlp import MLP, MultiHeadMLP
from avalanche_meta.models.vae import ReplayVAE, GaussianMixturePrior, StandardNormalPrior  # BI-R
from avalanche_meta.models.calibration import *  # noqa: F401,F403 (see its __all__)
from avalanche_meta.models.resnet import ReducedResNet18
