"""PNG plots of a run and of a comparison (matplotlib, no display needed).

Figures are drawn on matplotlib's Agg canvas directly, without ``pyplot``, so
plotting never touches a global figure manager or a GUI backend.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _nan(v: Optional[float]) -> float:
    return float("nan") if v is None else float(v)


def plot_accuracy_matrix(
    R: Sequence[Sequence[Optional[float]]], path: Path, title: str = ""
) -> Path:
    """Heatmap of the accuracy matrix (percent), one cell per (trained, tested) pair.

    :param R: rows = after training experience i, columns = test experience j.
    :param path: the PNG to write.
    :return: ``path``.
    """
    rows, cols = len(R), len(R[0]) if R else 0
    fig = Figure(figsize=(1.0 + 0.6 * max(cols, 2), 1.0 + 0.5 * max(rows, 2)))
    ax = fig.add_subplot(1, 1, 1)
    data = [[_nan(v) for v in r] for r in R] or [[float("nan")]]
    im = ax.imshow(data, vmin=0.0, vmax=100.0, cmap="viridis", aspect="auto")
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    if rows * cols <= 400:
        for i, r in enumerate(data):
            for j, v in enumerate(r):
                if not math.isnan(v):
                    ax.text(
                        j,
                        i,
                        f"{v:.0f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if v < 60 else "black",
                    )
    ax.set_xlabel("test experience j")
    ax.set_ylabel("after training experience i")
    step = max(1, cols // 20)
    ax.set_xticks(range(0, cols, step))
    ax.set_yticks(range(0, rows, max(1, rows // 20)))
    ax.set_title(title or "accuracy matrix", fontsize=9)
    return _save(fig, path)


def plot_task_curves(
    R: Sequence[Sequence[Optional[float]]],
    path: Path,
    initial: Optional[Sequence[Optional[float]]] = None,
    title: str = "",
) -> Path:
    """Accuracy of each task (one line per test experience) after each training
    experience; an ``initial`` point at x = -1 when given.

    :return: ``path``.
    """
    rows, cols = len(R), len(R[0]) if R else 0
    fig = Figure(figsize=(6.5, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    for j in range(cols):
        xs = list(range(rows))
        ys = [_nan(R[i][j]) for i in range(rows)]
        if initial is not None:
            xs = [-1] + xs
            ys = [_nan(initial[j])] + ys
        ax.plot(xs, ys, marker="o", markersize=3, label=f"task {j}")
    ax.set_xlabel("after training experience (-1: before training)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    if cols <= 20:
        ax.legend(
            fontsize=7,
            ncol=2 if cols > 10 else 1,
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
        )
    ax.set_title(title or "accuracy of each task over time", fontsize=9)
    return _save(fig, path)


def plot_comparison(
    summary: Mapping[str, Mapping[str, Any]],
    path: Path,
    title: str = "",
    keys: Sequence[str] = ("average_accuracy", "learning_accuracy"),
) -> Path:
    """Grouped bar chart: for each strategy, the mean of each of ``keys`` with the
    standard deviation over seeds as error bars.

    :param summary: ``{strategy: {key: (mean, std)}}`` (as ``compare`` builds it).
    :return: ``path``.
    """
    names = list(summary)
    fig = Figure(figsize=(1.5 + 1.1 * len(names), 4.0))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(keys)
    labels = {
        "average_accuracy": "average accuracy",
        "learning_accuracy": "learning accuracy",
    }
    for k, key in enumerate(keys):
        means = [_nan(summary[n][key][0]) for n in names]
        stds = [_nan(summary[n][key][1]) for n in names]
        xs = [i + (k - (len(keys) - 1) / 2) * width for i in range(len(names))]
        bars = ax.bar(
            xs,
            [0 if math.isnan(m) else m for m in means],
            width,
            yerr=stds,
            capsize=3,
            label=labels.get(key, key),
        )
        for bar, m in zip(bars, means):
            ax.text(
                bar.get_x() + bar.get_width() / 2,
                1,
                "n/a" if math.isnan(m) else f"{m:.1f}",
                ha="center",
                va="bottom",
                fontsize=7,
                rotation=90,
                color="white" if not math.isnan(m) and m > 15 else "black",
            )
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=20)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 118)
    ax.legend(fontsize=8, loc="upper center", ncol=len(keys), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)
