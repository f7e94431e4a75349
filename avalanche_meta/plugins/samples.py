"""A picture of what the generator replays, after each experience.

People look at replay before they trust it: :class:`GeneratedSamplesPlot` writes,
after every training experience, a PNG grid with one row of generated samples per
class seen so far (for class-conditional generators) or a grid of unconditional
samples, in a given folder. Images are drawn with matplotlib's Agg canvas (no
display, and the global matplotlib backend is left alone).

Samples that are not images (internal replay: hidden activations) are drawn as
near-square heat maps of the feature vector.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, List, Optional, Union

import torch
from avalanche.core import SupervisedPlugin

from avalanche_meta.strategies._keywords import KeywordOnlyConstruction
from avalanche_meta.utils.validation import check_positive


def _as_images(x: torch.Tensor, shape) -> torch.Tensor:
    """``(n, H, W)`` or ``(n, H, W, 3)`` arrays to draw."""
    n = x.shape[0]
    if len(shape) == 3 and shape[0] in (1, 3):
        img = x.view(n, *shape)
        return img[:, 0] if shape[0] == 1 else img.permute(0, 2, 3, 1).clamp(0, 1)
    if len(shape) == 2:
        return x.view(n, *shape)
    d = x[0].numel()
    w = math.ceil(math.sqrt(d))
    h = math.ceil(d / w)
    flat = torch.zeros(n, h * w)
    flat[:, :d] = x.view(n, -1)
    return flat.view(n, h, w)


def _replay_generator(strategy):
    return strategy.replay_generator


class GeneratedSamplesPlot(KeywordOnlyConstruction, SupervisedPlugin):
    """After each training experience, save a grid of generated samples per class.

    :param out_dir: folder of the PNG files (``samples_exp000.png``, ...).
    :param per_class: samples per class (per row).
    :param generator: ``generator(strategy)`` returning the generator to sample
        from; default ``strategy.replay_generator`` (BrainInspiredReplay).
    """

    MAX_POSITIONAL = 1

    def __init__(
        self,
        out_dir: Union[str, Path],
        *,
        per_class: int = 8,
        generator: Optional[Callable] = None,
    ):
        super().__init__()
        check_positive("per_class", per_class, integer=True)
        self.out_dir = Path(out_dir)
        self.per_class = per_class
        self.get_generator = generator or _replay_generator
        #: the files written so far
        self.paths: List[Path] = []

    def before_training(self, strategy, **kwargs):
        if self.get_generator is _replay_generator and not hasattr(
            strategy, "replay_generator"
        ):
            raise ValueError(
                f"GeneratedSamplesPlot draws samples of the strategy's generator, "
                f"but {type(strategy).__name__} has no `replay_generator`: use it "
                "with BrainInspiredReplay, or give `generator=lambda strategy: "
                "<a ReplayVAE>`."
            )

    def after_training_exp(self, strategy, **kwargs):
        gen = self.get_generator(strategy)
        exp_id = strategy.experience.current_experience
        self.paths.append(self.plot(gen, strategy, exp_id))

    @torch.no_grad()
    def plot(self, gen, strategy, exp_id: int) -> Path:
        """Draw and save the grid for experience ``exp_id``; return the file."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        was_training = gen.training
        gen.eval()
        by_class = gen.conditional or (gen.gated and gen.gate_by == "class")
        active = getattr(strategy, "active", None)
        if by_class:
            if active is not None and bool(active.seen.any()):
                classes = torch.nonzero(active.seen).flatten().tolist()
            else:
                classes = list(
                    range(
                        gen.prior.n_modes if gen.conditional else gen.gates.n_contexts
                    )
                )
            rows = [
                (f"class {c}", gen.generate(self.per_class, condition=c).cpu())
                for c in classes
            ]
        else:
            n_rows = 4
            samples = gen.generate(self.per_class * n_rows).cpu()
            rows = [
                (
                    "unconditional",
                    samples[i * self.per_class : (i + 1) * self.per_class],
                )
                for i in range(n_rows)
            ]
        gen.train(was_training)

        fig = Figure(figsize=(self.per_class * 0.8, len(rows) * 0.8 + 0.4))
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(rows), self.per_class, squeeze=False)
        for r, (label, x) in enumerate(rows):
            images = _as_images(x, gen.output_shape)
            for c in range(self.per_class):
                ax = axes[r][c]
                ax.imshow(images[c].numpy(), cmap="gray")
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0:
                    ax.set_ylabel(label, fontsize=6)
        fig.suptitle(f"generated samples after experience {exp_id}", fontsize=8)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"samples_exp{exp_id:03d}.png"
        fig.savefig(path, dpi=80)
        return path


__all__ = ["GeneratedSamplesPlot"]
