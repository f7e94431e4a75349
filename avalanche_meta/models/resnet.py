"""The reduced ResNet-18 of the GEM / A-GEM / NCCL papers (width ``nf = 20`` instead of 64).

Four stages of two basic blocks, ``nf``, ``2 nf``, ``4 nf``, ``8 nf`` channels, a
3x3 stem with stride 1, global average pooling and one linear head. It is the model
the continual-learning literature uses on Split CIFAR / miniImageNet; it also runs on
small inputs (e.g. 3x8x8 in the tests), since the pooling is adaptive.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1) shortcut.

    :param in_planes: input channels.
    :param planes: output channels.
    :param stride: stride of the first convolution and of the shortcut.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_planes, planes, 3, stride=stride, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ReducedResNet18(nn.Module):
    """ResNet-18 with ``nf`` base filters (20 in GEM, A-GEM, ER and NCCL).

    :param num_classes: output units.
    :param nf: filters of the first stage (the standard ResNet-18 has 64).
    :param in_channels: input channels (3 for CIFAR / miniImageNet).

    Example::

        model = ReducedResNet18(num_classes=100)
        logits = model(torch.randn(10, 3, 32, 32))
    """

    def __init__(self, num_classes: int = 100, nf: int = 20, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, nf, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(nf)
        layers = []
        in_planes = nf
        for i, stride in enumerate((1, 2, 2, 2)):
            planes = nf * 2**i
            layers.append(
                nn.Sequential(
                    BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)
                )
            )
            in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.classifier(out)
