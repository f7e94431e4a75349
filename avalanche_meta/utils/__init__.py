"""Small shared helpers: argument validation, scenario output masks, flat parameters."""

from avalanche_meta.utils.validation import (
    NonFiniteLossError,
    check_choice,
    check_finite_loss,
    check_in_interval,
    check_non_negative,
    check_positive,
)
from avalanche_meta.utils.scenario import SCENARIOS, ActiveUnits, check_scenario
from avalanche_meta.utils.flat import FlatParameters

__all__ = [
    "NonFiniteLossError",
    "check_choice",
    "check_finite_loss",
    "check_in_interval",
    "check_non_negative",
    "check_positive",
    "SCENARIOS",
    "ActiveUnits",
    "check_scenario",
    "FlatParameters",
]
