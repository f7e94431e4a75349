"""Convolutional front-ends for internal replay, their pre-training and freezing.

*Internal replay* (brain-inspired replay, van de Ven et al. 2020) puts convolutional
layers, pre-trained on other data and then frozen, in front of the VAE: the VAE
encodes, generates and replays their hidden activations instead of pixels.

- :class:`ConvFrontEnd`: ``[conv 3x3, (batch norm), ReLU]`` blocks with given channels
  and strides; as in the paper's code (``ConvLayers(output="none")``), the last block
  is a plain convolution without batch norm or ReLU (``plain_last=True``; ``False``
  ends in batch norm + ReLU like the other blocks);
- :func:`cifar_front_end`: the paper's CIFAR-100 protocol, 5 conv layers with 16, 32,
  64, 128, 256 channels (batch norm, the last four with stride 2), which turns a
  3x32x32 image into 256x2x2 = 1,024 features (pre-trained on CIFAR-10 in the paper);
- :func:`small_front_end`: two conv layers for 28x28 grey images (MNIST), our choice
  for showing internal replay on split MNIST on a CPU;
- :func:`pretrain_front_end`: trains a front-end with a linear head on any labelled
  tensors (e.g. Omniglot characters), then returns it frozen;
- :class:`Frozen`: a module whose parameters never change and which always runs in
  evaluation mode (batch-norm statistics included), even inside a model that a
  strategy switches to training mode.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avalanche_meta.utils.validation import check_finite_loss, check_positive


class ConvFrontEnd(nn.Module):
    """A stack of ``[conv 3x3 (padding 1), batch norm?, ReLU]`` blocks.

    :param in_channels: channels of the input images.
    :param channels: output channels of each block.
    :param strides: stride of each block (same length as ``channels``).
    :param batch_norm: add batch norm after each convolution.
    :param plain_last: the last block is a convolution (with bias) only, no batch
        norm and no ReLU, as the paper's code builds its internal-replay conv layers
        (its features can be negative; the VAE reconstructs them with a squared
        error). False: the last block is like the others.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 32),
        strides: Sequence[int] = (2, 2),
        batch_norm: bool = True,
        plain_last: bool = True,
    ):
        super().__init__()
        check_positive("in_channels", in_channels, integer=True)
        if len(channels) != len(strides) or not channels:
            raise ValueError(
                "`channels` and `strides` must be non-empty and of the same length, "
                f"got {tuple(channels)} and {tuple(strides)}."
            )
        layers: list = []
        c_in = in_channels
        for i, (c_out, s) in enumerate(zip(channels, strides)):
            plain = plain_last and i == len(channels) - 1
            bn = batch_norm and not plain
            layers.append(nn.Conv2d(c_in, c_out, 3, stride=s, padding=1, bias=not bn))
            if bn:
                layers.append(nn.BatchNorm2d(c_out))
            if not plain:
                layers.append(nn.ReLU())
            c_in = c_out
        self.plain_last = bool(plain_last)
        self.in_channels = in_channels
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"the conv front-end expects images with {self.in_channels} "
                f"channels, shape (batch, {self.in_channels}, H, W); got "
                f"{tuple(x.shape)}."
            )
        return self.layers(x)

    @torch.no_grad()
    def output_size(self, input_shape: Sequence[int]) -> int:
        """Number of features the front-end gives for one input of ``input_shape``."""
        was_training = self.training
        self.eval()
        out = self(torch.zeros(1, *input_shape, device=_device(self)))
        self.train(was_training)
        return out[0].numel()


def _device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def cifar_front_end(plain_last: bool = True) -> ConvFrontEnd:
    """The CIFAR-100 protocol's 5 conv layers (3x32x32 -> 256x2x2 = 1,024 features);
    the last one without batch norm or ReLU (``plain_last``, the paper's code)."""
    return ConvFrontEnd(
        in_channels=3,
        channels=(16, 32, 64, 128, 256),
        strides=(1, 2, 2, 2, 2),
        batch_norm=True,
        plain_last=plain_last,
    )


def small_front_end(in_channels: int = 1, plain_last: bool = True) -> ConvFrontEnd:
    """Two conv layers for 28x28 images (16 and 32 channels, stride 2: 32x7x7 = 1,568);
    the last one without batch norm or ReLU (``plain_last``, the paper's code)."""
    return ConvFrontEnd(
        in_channels=in_channels,
        channels=(16, 32),
        strides=(2, 2),
        batch_norm=True,
        plain_last=plain_last,
    )


class Frozen(nn.Module):
    """Wraps a module so that it is never trained: no gradients, always ``eval()``.

    ``model.train()`` on an enclosing model does not reach the wrapped module, so
    batch-norm running statistics stay those of pre-training.

    :param module: the module to freeze (its parameters get ``requires_grad=False``).
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.module.eval()

    def train(self, mode: bool = True) -> "Frozen":
        self.training = mode
        self.module.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.module(x)


def pretrain_front_end(
    front: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    iterations: int = 500,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: Optional[int] = 0,
) -> Frozen:
    """Pre-train ``front`` with a linear softmax head on ``(x, y)``, then freeze it.

    Use other data than the continual-learning stream (the paper pre-trains on
    CIFAR-10 for split CIFAR-100; for split MNIST, e.g., Omniglot characters).

    :param front: the front-end (e.g. :func:`small_front_end`).
    :param x: images, ``(N, C, H, W)``.
    :param y: integer labels, ``(N,)``.
    :param iterations: Adam steps on batches drawn with replacement.
    :param batch_size: examples per step.
    :param lr: Adam learning rate.
    :param seed: seed of the batch sampling (None: torch's global generator).
    :return: the trained front-end, wrapped in :class:`Frozen`.
    """
    check_positive("iterations", iterations, integer=True)
    check_positive("batch_size", batch_size, integer=True)
    check_positive("lr", lr)
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(
            f"`x` and `y` must hold the same (non-zero) number of examples, got "
            f"{x.shape[0]} and {y.shape[0]}."
        )
    y = y.long()
    device = _device(front)
    n_features = front.output_size(tuple(x.shape[1:]))
    head = nn.Linear(n_features, int(y.max()) + 1).to(device)
    opt = torch.optim.Adam(list(front.parameters()) + list(head.parameters()), lr=lr)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    front.train()
    for step in range(iterations):
        idx = torch.randint(x.shape[0], (batch_size,), generator=gen)
        xb, yb = x[idx].to(device), y[idx].to(device)
        loss = F.cross_entropy(head(front(xb).flatten(1)), yb)
        check_finite_loss(loss, f"pretrain_front_end, step {step}")
        opt.zero_grad()
        loss.backward()
        opt.step()
    return Frozen(front)
