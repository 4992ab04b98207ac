"""The report's figures (matplotlib, PNG): metric vs temperature, calibration, learning curves,
metric and attention entropy vs evaluation length, and attention heatmaps read from the best checkpoints."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .report import Group, Run


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _index(group_by: tuple[str, ...], name: str) -> int | None:
    return group_by.index(name) if name in group_by else None


def vs_temperature(
    groups: list[Group], group_by: tuple[str, ...], metric: str, path: Path, title: str
) -> Path | None:
    """``metric`` against the (numeric) softmax temperature, log x axis, one line per other setting,
    error bars = the 95% interval clipped to the metric's range (none for a single seed), and the
    task's chance level as a dashed line where it is known."""
    ti = _index(group_by, "temperature")
    if ti is None:
        return None
    lines: dict[str, list[tuple[float, float, float]]] = {}
    for g in groups:
        t, s = g.key[ti], g.stats.get(metric)
        if s is None or not isinstance(t, int | float):
            continue
        label = " / ".join(str(k) for i, k in enumerate(g.key) if i != ti) or metric
        lo, hi = s.ci if s.n > 1 else (s.mean, s.mean)
        lines.setdefault(label, []).append((float(t), s.mean, s.mean - lo, hi - s.mean))
    if not any(len(pts) > 1 for pts in lines.values()):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, pts in sorted(lines.items()):
        pts.sort()
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[[p[2] for p in pts], [p[3] for p in pts]],
                    marker="o", capsize=3, label=label)  # fmt: skip
    _chance_line(ax, groups, metric)
    ax.set_xscale("log")
    temps = sorted({p[0] for pts in lines.values() for p in pts})
    ax.set_xticks(temps, [f"{t:g}" for t in temps])
    ax.minorticks_off()
    ax.set_xlabel("softmax temperature T")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _at_lengths(groups: list[Group], pattern: str) -> dict[int, str]:
    """``{length: metric}`` for the metrics named ``pattern`` with ``{L}`` a length (``test/acc@{L}``)."""
    head, _, tail = pattern.partition("{L}")
    found: dict[int, str] = {}
    for g in groups:
        for name in g.stats:
            middle = name[len(head) : len(name) - len(tail)] if tail else name[len(head) :]
            if name.startswith(head) and name.endswith(tail) and middle.isdigit():
                found[int(middle)] = name
    return found


def vs_length(groups: list[Group], metric: str, path: Path, title: str) -> Path | None:
    """``metric`` tested at each ``task.eval_lengths`` length (``{metric}@{L}``), and beside it the mean
    attention entropy of each layer at each length: one line per group, 95% intervals over seeds."""
    acc = _at_lengths(groups, metric + "@{L}")
    if len(acc) < 2:
        return None
    layers = sorted(
        {int(n.rsplit("/l", 1)[1]) for g in groups for n in g.stats if n.startswith("test/entropy@")}
    )
    plt = _pyplot()
    fig, axes = plt.subplots(1, 1 + len(layers), figsize=(5.5 * (1 + len(layers)), 4), squeeze=False)
    panels = [(axes[0][0], acc, metric)]
    for i, layer in enumerate(layers):
        panels.append((axes[0][i + 1], _at_lengths(groups, f"test/entropy@{{L}}/l{layer}"),
                       f"attention entropy, layer {layer} (nats)"))  # fmt: skip
    for ax, names, ylabel in panels:
        for g in groups:
            pts = [(n, g.stats[m]) for n, m in sorted(names.items()) if m in g.stats]
            if not pts:
                continue
            mean = [s.mean for _, s in pts]
            lo = [s.mean - (s.ci[0] if s.n > 1 else s.mean) for _, s in pts]
            hi = [(s.ci[1] if s.n > 1 else s.mean) - s.mean for _, s in pts]
            label = " / ".join(str(k) for k in g.key)
            ax.errorbar([n for n, _ in pts], mean, yerr=[lo, hi], marker="o", capsize=3, label=label)
        if ax is axes[0][0]:
            _chance_line(ax, groups, metric)
        ax.set_xscale("log", base=2)
        lengths = sorted(names)
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.minorticks_off()
        ax.set_xlabel("evaluation length (task.eval_lengths)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _chance_line(ax: Any, groups: list[Group], metric: str) -> None:
    """The task's chance level (majority-class accuracy) as a dashed line, for accuracies."""
    chance = next((g.chance for g in groups if g.chance is not None), None)
    if chance is not None and metric.endswith("/acc"):
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance:.3f})")


def _curve(run_dir: str, key: str) -> dict[int, float]:
    path = Path(run_dir) / "csv" / "metrics.csv"
    if not path.exists():
        return {}
    out: dict[int, float] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            if row.get(key) not in (None, "") and row.get("epoch") not in (None, ""):
                out[int(float(row["epoch"]))] = float(row[key])
    return out


def learning_curves(
    groups: list[Group], group_by: tuple[str, ...], metric: str, path: Path, title: str
) -> Path | None:
    """The task's monitored validation metric (``task.monitor``, e.g. ``val/acc``) per epoch, mean over
    seeds, for the best group of each attention kind."""
    from .report import lower_is_better

    sign = -1 if lower_is_better(metric) else 1
    ai = _index(group_by, "attention")
    best: dict[Any, Group] = {}
    for g in groups:
        kind = g.key[ai] if ai is not None else "all"
        s = g.stats.get(metric)
        if s is not None and (kind not in best or sign * s.mean > sign * best[kind].stats[metric].mean):
            best[kind] = g
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    drawn = 0
    monitor = "val/acc"
    for _, g in sorted(best.items(), key=lambda kv: str(kv[0])):
        monitor = str((g.runs[0].config.get("task") or {}).get("monitor") or "val/acc")
        curves = [c for c in (_curve(r.run_dir, monitor) for r in g.runs) if c]
        if not curves:
            continue
        epochs = sorted(set.intersection(*(set(c) for c in curves)))
        if not epochs:
            continue
        means = [sum(c[e] for c in curves) / len(curves) for e in epochs]
        ax.plot([e + 1 for e in epochs], means, marker=".", label=" / ".join(map(str, g.key)))
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    from matplotlib.ticker import MaxNLocator

    _chance_line(ax, groups, monitor)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{monitor} (mean over seeds)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _held_out_tokens(run: Run) -> list[str] | None:
    """The first test example of a run's task, regenerated from its config (deterministic)."""
    node = (run.config.get("task") or {}).get("datamodule")
    if not isinstance(node, dict) or "_target_" not in node:
        return None
    from hydra.utils import instantiate

    dm = instantiate(node)
    dm.setup("test")
    splits = getattr(dm, "splits", None) or {}
    return list(splits["test"][0][0]) if splits.get("test") else None


def heatmaps(runs: list[Run], groups: dict[str, list[Group]], group_by: tuple[str, ...], metric: str,
             out: Path) -> list[Path]:  # fmt: skip
    """Per attention kind, the head-mean attention of every layer (and the pooling weights) of the
    best run's best checkpoint on one fixed held-out example, tokens on the axes."""
    from attn.datamodules.vocab import Vocabulary
    from attn.models.diagnostics import attention_maps

    from .report import lower_is_better

    sign = -1 if lower_is_better(metric) else 1
    ai = _index(group_by, "attention")
    best_run: dict[Any, Run] = {}
    for gs in groups.values():
        for g in gs:
            s = g.stats.get(metric)
            kind = g.key[ai] if ai is not None else "all"
            candidates = [
                r
                for r in g.runs
                if r.metrics.get(metric) is not None
                and _checkpoint(r)
                and (Path(r.run_dir) / "vocab.json").exists()
            ]  # token classifiers only
            if s is None or not candidates:
                continue
            r = max(candidates, key=lambda r: sign * r.metrics[metric])
            if kind not in best_run or sign * r.metrics[metric] > sign * best_run[kind].metrics[metric]:
                best_run[kind] = r
    if not best_run:
        return []
    tokens = _held_out_tokens(next(iter(best_run.values())))
    if not tokens:
        return []
    plt = _pyplot()
    paths = []
    for kind, run in sorted(best_run.items(), key=lambda kv: str(kv[0])):
        vocab_path = Path(run.run_dir) / "vocab.json"
        if not vocab_path.exists():
            continue
        ids = Vocabulary.load(str(vocab_path)).encode(tokens)
        maps = attention_maps(_checkpoint(run), ids)
        layers, pool = maps[:-1], maps[-1]
        fig, axes = plt.subplots(1, len(layers) + 1, figsize=(4.2 * (len(layers) + 1), 4.6),
                                 gridspec_kw={"width_ratios": [1] * len(layers) + [0.35]})  # fmt: skip
        for i, (ax, m) in enumerate(zip(axes[:-1], layers, strict=True)):
            if bool(m.isnan().all()):
                ax.text(0.5, 0.5, "no weight matrix\n(linear attention)", ha="center", va="center")
                ax.set_axis_off()
                continue
            image = ax.imshow(m.numpy(), cmap="viridis", vmin=0)
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="attention weight")
            ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=6)
            ax.set_yticks(range(len(tokens)), tokens, fontsize=6)
            ax.set_title(f"layer {i} (mean over heads)", fontsize=9)
        image = axes[-1].imshow(pool.numpy().T, cmap="viridis", vmin=0, aspect="auto")
        fig.colorbar(image, ax=axes[-1], fraction=0.3, pad=0.1, label="pooling weight")
        axes[-1].set_yticks(range(len(tokens)), tokens, fontsize=6)
        axes[-1].set_xticks([])
        axes[-1].set_title("pooling", fontsize=9)
        temp = run.get("temperature")
        fig.suptitle(f"{kind} attention, T={temp}, {metric}={run.metrics[metric]:.4f}", fontsize=10)
        fig.tight_layout()
        path = out / f"attention_{kind}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _checkpoint(run: Run) -> str | None:
    """The run's best checkpoint, if it is on disk (looked up in the run directory when the run was
    moved or copied since the record was written)."""
    import json

    try:
        record = json.loads((Path(run.run_dir) / "results.json").read_text())
    except (OSError, ValueError):
        return None
    ckpt = record.get("best_checkpoint")
    if not isinstance(ckpt, str) or not ckpt:
        return None
    here = Path(run.run_dir) / "checkpoints" / Path(ckpt).name
    return str(here) if here.exists() else (ckpt if Path(ckpt).exists() else None)


def draw_all(runs: list[Run], groups: dict[str, list[Group]], group_by: tuple[str, ...], metric: str,
             out: Path) -> dict[str, list[Path]]:  # fmt: skip
    """Every figure of the report; ``{task: [paths], "": [heatmaps]}``."""
    images: dict[str, list[Path]] = {}
    for split, gs in groups.items():
        slug = "".join(c if c.isalnum() else "_" for c in split)
        m = gs[0].metric if gs and gs[0].metric else metric  # the task's ranking metric
        paths = [
            vs_temperature(gs, group_by, m, out / f"{slug}_{m.replace('/', '_')}_vs_T.png",
                           f"{split}: {m} vs temperature"),
            vs_temperature(gs, group_by, "test/ece", out / f"{slug}_ece_vs_T.png",
                           f"{split}: calibration error vs temperature")
            if m != "test/ece" and any("test/ece" in g.stats for g in gs) else None,
            learning_curves(gs, group_by, m, out / f"{slug}_learning_curves.png",
                            f"{split}: learning curves (best setting per kind)"),
            vs_length(gs, m.split("@")[0], out / f"{slug}_vs_length.png",
                      f"{split}: {m.split('@')[0]} and attention entropy vs evaluation length"),
        ]  # fmt: skip
        images[split] = [p for p in paths if p is not None]
    try:
        images[""] = heatmaps(runs, groups, group_by, metric, out)
    except Exception as e:  # a report without heatmaps beats no report
        print(f"warning: attention heatmaps skipped: {type(e).__name__}: {str(e).splitlines()[0]}")
        images[""] = []
    return images
