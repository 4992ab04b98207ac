"""The report's figures (matplotlib, PNG), drawn from numbers only: every group's metric with its interval
(a forest plot), metric vs temperature, metric vs the attention's state size, metric and attention
entropy vs evaluation length, learning curves, attention heatmaps. What to draw is decided by
the report (:mod:`attn.runner.report`); nothing here reads runs or files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attn.datamodules.files import atomic_write

# A point with its error bars: (x, mean, mean - low, high - mean).
Point = tuple[float, float, float, float]


def _pyplot() -> Any:
    import matplotlib  # only when a figure is drawn: matplotlib takes a second to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _chance_line(ax: Any, chance: float | None, metric: str) -> None:
    """The task's chance level (majority-class accuracy) as a dashed line, for accuracies."""
    if chance is not None and metric.endswith("/acc"):
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance:.3f})")


def _errorbars(ax: Any, label: str, points: list[Point]) -> None:
    x, mean, below, above = zip(*sorted(points), strict=True)
    ax.errorbar(x, mean, yerr=[below, above], marker="o", capsize=3, label=label)


def _save(fig: Any, plt: Any, path: Path) -> Path:
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


def _lines_on_log_x(
    lines: dict[str, list[Point]], metric: str, chance: float | None, title: str, base: float = 10
) -> tuple[Any, Any, Any]:
    """A figure of one line per label with its error bars on a log x axis, the chance level dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, points in sorted(lines.items()):
        _errorbars(ax, label, points)
    _chance_line(ax, chance, metric)
    ax.set_xscale("log", base=base)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return plt, fig, ax


def metric_vs_temperature(
    lines: dict[str, list[Point]], metric: str, chance: float | None, path: Path, title: str
) -> Path:
    """``metric`` against the softmax temperature (log x axis), one line per label, error bars as given
    (the 95% interval), and the chance level as a dashed line where it is known."""
    plt, fig, ax = _lines_on_log_x(lines, metric, chance, title)
    temps = sorted({p[0] for points in lines.values() for p in points})
    ax.set_xticks(temps, [f"{t:g}" for t in temps])
    ax.minorticks_off()
    ax.set_xlabel("softmax temperature T")
    return _save(fig, plt, path)


def metric_vs_state(
    lines: dict[str, list[Point]], metric: str, chance: float | None, path: Path, title: str
) -> Path:
    """``metric`` against the bytes the attention carries per sequence at inference (log2 x axis), one
    line per attention kind, error bars as given (the 95% interval)."""
    plt, fig, ax = _lines_on_log_x(lines, metric, chance, title, base=2)
    ax.set_xlabel("state per sequence (bytes, log2)")
    return _save(fig, plt, path)


def metric_vs_length(
    panels: list[tuple[str, dict[str, list[Point]]]],
    metric: str,
    chance: float | None,
    path: Path,
    title: str,
) -> Path:
    """Panels of (y label, ``{line label: points}``) against the evaluation length (log2 x axis), three to a
    row: the metric first (with the chance level), then what each layer's attention does."""
    plt = _pyplot()
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for i, (ax, (ylabel, lines)) in enumerate(zip(axes.flat, panels, strict=False)):
        for label, points in lines.items():
            _errorbars(ax, label, points)
        if i == 0:
            _chance_line(ax, chance, metric)
        ax.set_xscale("log", base=2)
        lengths = sorted({int(p[0]) for points in lines.values() for p in points})
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.minorticks_off()
        ax.set_xlabel("evaluation length (task.eval_lengths)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, plt, path)


def learning_curves(
    curves: dict[str, list[tuple[int, float, float, float]]],
    monitor: str,
    chance: float | None,
    path: Path,
    title: str,
) -> Path:
    """The monitored validation metric per training step, one line per label: the mean over seeds, and
    the band from the lowest to the highest seed; the chance level dashed, inside the axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, points in curves.items():
        steps = [p[0] for p in points]
        (line,) = ax.plot(steps, [p[1] for p in points], marker=".", label=label)
        low, high = [p[2] for p in points], [p[3] for p in points]
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
    _chance_line(ax, chance, monitor)
    if chance is not None and monitor.endswith("/acc"):
        low, high = ax.get_ylim()
        ax.set_ylim(min(low, chance - 0.02), max(high, chance + 0.02))
    ax.set_xlabel("training step")
    ax.set_ylabel(f"{monitor} (mean over seeds; band: lowest to highest)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


@dataclass
class ForestRow:
    """One group of a forest plot: its label, mean and 95% interval, its runs' values (one dot each), and
    where a task has a success threshold, its success rate with the 95% Wilson interval and ``k/n``."""

    label: str
    mean: float
    low: float
    high: float
    values: list[float]
    success: tuple[float, float, float, str] | None = None


def forest(rows: list[ForestRow], metric: str, chance: float | None, path: Path, title: str) -> Path:
    """A dot-and-whisker plot, one row per group (top to bottom as given): the mean with its 95% interval
    and each run as a small dot; beside it, when the rows carry them, the success rates with their 95%
    Wilson intervals."""
    plt = _pyplot()
    panels = 2 if any(r.success for r in rows) else 1
    height = 1.2 + 0.42 * len(rows)
    fig, axes = plt.subplots(1, panels, figsize=(6 + 3.5 * (panels - 1), height), squeeze=False, sharey=True,
                             gridspec_kw={"width_ratios": [1.6, 1][:panels]})  # fmt: skip
    ys = list(range(len(rows)))[::-1]
    ax = axes[0][0]
    for y, r in zip(ys, rows, strict=True):
        ax.errorbar([r.mean], [y], xerr=[[r.mean - r.low], [r.high - r.mean]], fmt="o", color="C0", capsize=3)
        ax.scatter(r.values, [y + 0.18] * len(r.values), s=9, color="C1", alpha=0.7, zorder=3)
    if chance is not None and metric.endswith("/acc"):
        ax.axvline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance:.3f})")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_yticks(ys, [r.label for r in rows], fontsize=8)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel(f"{metric}: mean [95% CI] (orange: each run)")
    ax.grid(True, axis="x", alpha=0.3)
    if panels == 2:
        ax = axes[0][1]
        for y, r in zip(ys, rows, strict=True):
            if r.success is None:
                continue
            rate, lo, hi, text = r.success
            ax.errorbar([rate], [y], xerr=[[rate - lo], [hi - rate]], fmt="s", color="C2", capsize=3)
            ax.annotate(text, (rate, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
        ax.set_xlim(-0.05, 1.05)
        ax.set_xlabel("solved: rate [95% Wilson]")
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return _save(fig, plt, path)


def attention_heatmap(layers: list[Any | None], pool: Any, tokens: list[str], title: str, path: Path) -> Path:
    """The head-mean attention matrix of each layer (``None``: the kind has none) and the pooling weights,
    tokens on the axes."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(layers) + 1, figsize=(4.2 * (len(layers) + 1), 4.6),
                             gridspec_kw={"width_ratios": [1] * len(layers) + [0.35]})  # fmt: skip
    for i, (ax, m) in enumerate(zip(axes[:-1], layers, strict=True)):
        if m is None:
            ax.text(0.5, 0.5, "no weight matrix\n(linear attention)", ha="center", va="center")
            ax.set_axis_off()
            continue
        image = ax.imshow(m, cmap="viridis", vmin=0)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="attention weight")
        ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=6)
        ax.set_yticks(range(len(tokens)), tokens, fontsize=6)
        ax.set_title(f"layer {i} (mean over heads)", fontsize=9)
    image = axes[-1].imshow(pool.T, cmap="viridis", vmin=0, aspect="auto")
    fig.colorbar(image, ax=axes[-1], fraction=0.3, pad=0.1, label="pooling weight")
    axes[-1].set_yticks(range(len(tokens)), tokens, fontsize=6)
    axes[-1].set_xticks([])
    axes[-1].set_title("pooling", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _save(fig, plt, path)
