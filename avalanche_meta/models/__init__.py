"""Models of avalanche-meta: MLPs, calibrated layers (NCCL), the BI-R VAE family."""

from avalanche_meta.models.calibration import (
    CalibratedLinear,
    CalibratedConv2d,
    CalibratedBasicBlock,
    CalibrationMemory,
    calibrate,
    calibrated_layers,
    base_parameters,
    calibration_parameters,
    named_base_parameters,
    named_calibration_parameters,
)
from avalanche_meta.models.mlp import MLP, MultiHeadMLP
from avalanche_meta.models.resnet import ReducedResNet18
from avalanche_meta.models.vae import (
    GaussianMixturePrior,
    ReplayVAE,
    StandardNormalPrior,
)

__all__ = [
    "MLP",
    "MultiHeadMLP",
    "ReducedResNet18",
    "GaussianMixturePrior",
    "ReplayVAE",
    "StandardNormalPrior",
    "CalibratedLinear",
    "CalibratedConv2d",
    "CalibratedBasicBlock",
    "CalibrationMemory",
    "calibrate",
    "calibrated_layers",
    "base_parameters",
    "calibration_parameters",
    "named_base_parameters",
    "named_calibration_parameters",
]
