"""Plain fully connected networks used by the protocols (MER: 784-100-100-10; BI-R: 2x400, 2x2000)."""

from __future__ import annotations

from typing import Sequence

from avalanche.models import MultiHeadClassifier, MultiTaskModule
from torch import Tensor, nn


def _hidden_stack(input_size: int, hidden_sizes: Sequence[int]) -> nn.Sequential:
    layers: list = [nn.Flatten()]
    width = input_size
    for h in hidden_sizes:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers)


class MLP(nn.Module):
    """Flatten, ``len(hidden_sizes)`` ReLU layers, a linear head over ``num_classes``.

    :param input_size: number of input features (inputs are flattened).
    :param hidden_sizes: widths of the hidden layers (may be empty: a linear model).
    :param num_classes: number of output units.

    Example::

        model = MLP(input_size=784, hidden_sizes=(100, 100), num_classes=10)
    """

    def __init__(
        self,
        input_size: int = 784,
        hidden_sizes: Sequence[int] = (100, 100),
        num_classes: int = 10,
    ):
        super().__init__()
        self.input_size = input_size
        self.features = _hidden_stack(input_size, hidden_sizes)
        width = hidden_sizes[-1] if len(hidden_sizes) else input_size
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x[0].numel() != self.input_size:
            raise ValueError(
                f"the MLP expects {self.input_size} input features per sample, got "
                f"shape {tuple(x.shape[1:])}; build it with "
                f"input_size={x[0].numel()}."
            )
        return self.classifier(self.features(x))


class MultiHeadMLP(MultiTaskModule):
    """The same trunk with one Avalanche ``MultiHeadClassifier`` head per task (Task-IL).

    :param input_size: number of input features (inputs are flattened).
    :param hidden_sizes: widths of the hidden layers.
    """

    def __init__(self, input_size: int = 784, hidden_sizes: Sequence[int] = (100, 100)):
        super().__init__()
        self.input_size = input_size
        self.features = _hidden_stack(input_size, hidden_sizes)
        width = hidden_sizes[-1] if len(hidden_sizes) else input_size
        self.classifier = MultiHeadClassifier(width)

    def forward_single_task(self, x: Tensor, task_label: int) -> Tensor:
        return self.classifier(self.features(x), task_label)
