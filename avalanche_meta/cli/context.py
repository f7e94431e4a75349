"""What the command line hands to strategy builders, reproductions and benches."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from avalanche_meta.benchmarks.base import BenchmarkInfo


@dataclass
class RunContext:
    """Everything a strategy builder needs (see ``register_strategy``).

    :param info: the built benchmark and its description.
    :param scenario: ``"task"``, ``"class"`` or ``"domain"``.
    :param device: where to train.
    :param seed: the run's seed (already applied to torch, numpy and random).
    :param evaluator: the ``EvaluationPlugin`` the strategy must use.
    :param out_dir: the run folder (plots of generated samples etc. go there).
    """

    info: BenchmarkInfo
    scenario: str
    device: torch.device
    seed: int
    evaluator: Any
    out_dir: Optional[Path] = None

    def default_model(
        self, hidden_sizes: Sequence[int] = (400, 400), multihead: bool = False
    ) -> nn.Module:
        """An MLP sized for the benchmark (ReLU, no dropout).

        :param hidden_sizes: widths of the hidden layers.
        :param multihead: an Avalanche multi-head model (one head per task) instead
            of one head over ``info.num_classes`` units.
        """
        from avalanche_meta.models.mlp import MLP, MultiHeadMLP

        if multihead:
            return MultiHeadMLP(
                input_size=self.info.input_size, hidden_sizes=tuple(hidden_sizes)
            )
        return MLP(
            input_size=self.info.input_size,
            hidden_sizes=tuple(hidden_sizes),
            num_classes=self.info.num_classes,
        )


@dataclass
class ReproContext:
    """Options of ``avalanche-meta reproduce NAME``.

    :param quick: run the minutes-long version of the table.
    :param seeds: number of seeds (None: the reproduction's own default).
    :param data_root: the data folder (None: the package default).
    :param device: where to train.
    :param out_dir: where run folders go.
    :param command: the command line that started the reproduction (for the results
        document).
    :param write_results: write the results document (tests turn it off).
    """

    quick: bool = False
    seeds: Optional[int] = None
    data_root: Optional[str] = None
    device: str = "cpu"
    out_dir: Path = Path("runs")
    command: str = ""
    write_results: bool = True
    extra: Dict[str, Any] = field(default_factory=dict)

    def run(self, strategy: str, benchmark: str, **kwargs) -> Dict[str, Any]:
        """Run one experiment with this context's data root, device and out_dir.

        Keyword arguments are those of :func:`avalanche_meta.cli.runner.run_experiment`.
        """
        from avalanche_meta.cli.runner import run_experiment

        kwargs.setdefault("data_root", self.data_root)
        kwargs.setdefault("device", self.device)
        kwargs.setdefault("progress", False)
        seed = kwargs.get("seed", 0)
        scen = kwargs.get("scenario") or "default"
        kwargs.setdefault(
            "out_dir", Path(self.out_dir) / f"{strategy}-{benchmark}-{scen}-s{seed}"
        )
        return run_experiment(strategy, benchmark, **kwargs)


@dataclass
class BenchContext:
    """Options of ``avalanche-meta bench NAME``."""

    quick: bool = False
    data_root: Optional[str] = None
    device: str = "cpu"
    out_dir: Path = Path("runs")
    command: str = ""
    write_results: bool = True
    extra: Dict[str, Any] = field(default_factory=dict)
