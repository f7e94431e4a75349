"""Models of avalanche-meta (append one export line per module)."""

from avalanche_meta.models.mlp import MLP, MultiHeadMLP
