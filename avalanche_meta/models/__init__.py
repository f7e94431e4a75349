"""Models of avalanche-meta (append one export line per module)."""

from avalanche_meta.models.mlp import MLP, MultiHeadMLP
from avalanche_meta.models.vae import ReplayVAE, GaussianMixturePrior, StandardNormalPrior  # BI-R
