"""What the report draws: the numbers of each figure, taken from the aggregated groups (and the runs'
metric histories and best checkpoints), handed to :mod:`attn.runner.plots`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attn.datamodules.subword import TOKENIZER_FILE, Subwords
from attn.datamodules.vocab import Vocabulary
from attn.models.attention import forms_weights, list_attention
from attn.models.diagnostics import attention_maps

from . import plots
from .aggregate import Group
from .collect import Run
from .records import inside, read_metrics
from .stats import Stat, lower_is_better


def _index(group_by: tuple[str, ...], name: str) -> int | None:
    return group_by.index(name) if name in group_by else None


def _point(x: float, s: Stat) -> plots.Point:
    """A mean with its 95% interval as error bars (none for a single seed)."""
    lo, hi = s.ci if s.n > 1 else (s.mean, s.mean)
    return (x, s.mean, s.mean - lo, hi - s.mean)


def _chance(groups: list[Group]) -> float | None:
    return next((g.chance for g in groups if g.chance is not None), None)


def temperature_lines(
    groups: list[Group], group_by: tuple[str, ...], metric: str
) -> dict[str, list[plots.Point]]:
    """``metric`` per numeric temperature, one line per other setting; empty when no line has two
    temperatures (or the groups are not split by temperature)."""
    ti = _index(group_by, "temperature")
    if ti is None:
        return {}
    lines: dict[str, list[plots.Point]] = {}
    for g in groups:
        t, s = g.key[ti], g.stats.get(metric)
        if s is None or not isinstance(t, int | float):
            continue
        label = " / ".join(str(k) for i, k in enumerate(g.key) if i != ti) or metric
        lines.setdefault(label, []).append(_point(float(t), s))
    return lines if any(len(points) > 1 for points in lines.values()) else {}


STATE = "state_bytes"  # what a run's attention carries per sequence at inference (attn.runner.run)


def recall_vs_state(groups: list[Group], metric: str) -> dict[str, list[plots.Point]]:
    """``metric`` (mean and 95% interval over seeds) against the groups' ``state_bytes``, one line per
    attention kind (Based, Arora et al. 2024, Figure 2); empty unless some kind has two state sizes."""
    lines: dict[str, list[plots.Point]] = {}
    for g in groups:
        s, state = g.stats.get(metric), g.stats.get(STATE)
        if s is None or state is None:
            continue
        kind = str(g.runs[0].get("attention.kind"))
        lines.setdefault(kind, []).append(_point(state.mean, s))
    return lines if any(len({p[0] for p in points}) > 1 for points in lines.values()) else {}


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


def length_panels(groups: list[Group], metric: str) -> list[tuple[str, dict[str, list[plots.Point]]]]:
    """``metric`` at each ``task.eval_lengths`` length (``{metric}@{L}``), then per layer what its attention
    does there (entropy, largest weight, sink rate; descriptive, none ranked): one line per group; empty
    when fewer than two lengths were tested."""
    acc = _at_lengths(groups, metric + "@{L}")
    if len(acc) < 2:
        return []
    layers = sorted(
        {int(n.rsplit("/l", 1)[1]) for g in groups for n in g.stats if n.startswith("test/entropy@")}
    )
    described = (("entropy", "attention entropy (nats)"), ("max_weight", "largest weight of a row"),
                 ("sink_rate", "sink rate (share of heads)"))  # fmt: skip
    named = [(metric, acc)] + [
        (f"{label}, layer {layer}", _at_lengths(groups, f"test/{name}@{{L}}/l{layer}"))
        for name, label in described
        for layer in layers
    ]
    named = [(label, names) for label, names in named if names]
    panels = []
    for ylabel, names in named:
        lines = {}
        for g in groups:
            points = [_point(n, g.stats[m]) for n, m in sorted(names.items()) if m in g.stats]
            if points:
                lines[" / ".join(str(k) for k in g.key)] = points
        panels.append((ylabel, lines))
    return panels


def forest_rows(groups: list[Group], group_by: tuple[str, ...], metric: str) -> list[plots.ForestRow]:
    """Every group with ``metric``: label (its key, and the values tuning selected), mean, 95% interval,
    its runs' values, and its success rate where the task has a threshold."""
    rows = []
    for g in groups:
        s = g.stats.get(metric)
        if s is None:
            continue
        label = " / ".join(str(k) for k in g.key)
        tuned = sorted(
            {" ".join(f"{k.split('.')[-1]}={v}" for k, v in r.tuned.items()) for r in g.runs if r.tuned}
        )
        if tuned:
            label += f" ({'; '.join(tuned)})"
        lo, hi = s.ci if s.n > 1 else (s.mean, s.mean)
        success = None
        if g.success is not None:
            slo, shi = g.success.ci
            success = (g.success.rate, slo, shi, f"{g.success.k}/{g.success.n}")
        rows.append(plots.ForestRow(f"{label}  n={s.n}", s.mean, lo, hi, list(s.values), success))
    return rows


def _curve(run_dir: str, key: str) -> dict[int, float]:
    """``{training step: value}`` of ``key`` in a run's metric history."""
    out: dict[int, float] = {}
    for row in read_metrics(run_dir):
        if row.get(key) not in (None, "") and row.get("step") not in (None, ""):
            out[int(float(row["step"]))] = float(row[key])
    return out


def learning_curves(
    groups: list[Group], group_by: tuple[str, ...], metric: str
) -> tuple[dict[str, list[tuple[int, float, float, float]]], str]:
    """The task's monitored validation metric (``task.monitor``, e.g. ``val/acc``) per training step: mean,
    lowest and highest over seeds, for the best group (by ``metric``) of each attention kind, labelled with
    its values, the values tuning selected and its number of seeds; and the monitor's name."""
    sign = -1 if lower_is_better(metric) else 1
    ai = _index(group_by, "attention")
    best: dict[Any, Group] = {}
    for g in groups:
        kind = g.key[ai] if ai is not None else "all"
        s = g.stats.get(metric)
        if s is not None and (kind not in best or sign * s.mean > sign * best[kind].stats[metric].mean):
            best[kind] = g
    curves: dict[str, list[tuple[int, float, float, float]]] = {}
    monitor = "val/acc"
    for _, g in sorted(best.items(), key=lambda kv: str(kv[0])):
        monitor = str((g.runs[0].config.get("task") or {}).get("monitor") or "val/acc")
        found = [c for c in (_curve(r.run_dir, monitor) for r in g.runs) if c]
        steps = sorted(set.intersection(*(set(c) for c in found))) if found else []
        if steps:
            tuned = sorted({" ".join(f"{k}={v}" for k, v in r.tuned.items()) for r in g.runs if r.tuned})
            label = " / ".join(map(str, g.key)) + (f" ({'; '.join(tuned)})" if tuned else "")
            curves[f"{label}, {len(found)} seed{'s' if len(found) > 1 else ''}"] = [
                (e, sum(c[e] for c in found) / len(found), min(c[e] for c in found), max(c[e] for c in found))
                for e in steps
            ]
    return curves, monitor


def checkpoint(run: Run) -> str | None:
    """The run's best checkpoint, if it is on disk in the run's own ``checkpoints/`` (where the record's
    path points elsewhere, a moved or copied run, its file name is looked up there; a record's path never
    leads outside its run directory)."""
    ckpt = run.best_checkpoint
    if not ckpt:
        return None
    try:
        here = inside(run.run_dir, Path("checkpoints") / Path(ckpt).name, "best_checkpoint")
    except ValueError:
        return None
    return str(here) if here.is_file() else None


# A record's config is data: the report rebuilds a run's data module only when its class is attn's own.
OWN_TARGETS = "attn.datamodules."


def _held_out_tokens(run: Run) -> list[str] | None:
    """The first test example of a run's task, regenerated from its config (deterministic); None when the
    config names a data module outside :data:`OWN_TARGETS`."""
    node = (run.config.get("task") or {}).get("datamodule")
    if not isinstance(node, dict) or not str(node.get("_target_", "")).startswith(OWN_TARGETS):
        return None
    from hydra.utils import instantiate

    dm = instantiate(node)
    dm.setup("test")
    splits = getattr(dm, "splits", None) or {}
    return list(splits["test"][0][0]) if splits.get("test") else None


def heatmaps(
    groups: dict[str, list[Group]], group_by: tuple[str, ...], metric: str, out: Path
) -> tuple[list[Path], list[str]]:
    """Per attention kind, the head-mean attention of every layer (and the pooling weights) of the
    best run's best checkpoint on one fixed held-out example (token classifiers only); and one line per
    kind drawn without one (a kind that forms no weights, one whose plugin was not given, a failure).

    A kind that a plugin registers is drawn only when the user gave that plugin (``attn report
    --plugins`` or ``ATTN_PLUGINS``, imported before): the report never imports a module a record names."""
    sign = -1 if lower_is_better(metric) else 1
    ai = _index(group_by, "attention")
    best_run: dict[Any, Run] = {}
    for gs in groups.values():
        for g in gs:
            kind = g.key[ai] if ai is not None else "all"
            candidates = [
                r
                for r in g.runs
                if r.metrics.get(metric) is not None
                and checkpoint(r)
                and (Path(r.run_dir) / "vocab.json").exists()
            ]
            if g.stats.get(metric) is None or not candidates:
                continue
            r = max(candidates, key=lambda r: sign * r.metrics[metric])
            if kind not in best_run or sign * r.metrics[metric] > sign * best_run[kind].metrics[metric]:
                best_run[kind] = r
    paths: list[Path] = []
    notes: list[str] = []
    drawable: dict[Any, Run] = {}
    for kind, run in sorted(best_run.items(), key=lambda kv: str(kv[0])):
        name = str(run.get("attention.kind"))
        if name not in list_attention():
            plugins = ", ".join(map(str, run.get("plugins") or [])) or "a plugin"
            notes.append(f"attention heatmap of {kind}: not drawn; its kind {name!r} comes from {plugins},"
                         " imported only when given: attn report --plugins or ATTN_PLUGINS")  # fmt: skip
        elif not forms_weights(name):
            notes.append(f"attention heatmap of {kind}: none; attention {name!r} forms no weight matrix")
        else:
            drawable[kind] = run
    tokens = None
    for run in drawable.values():
        tokens = tokens or _held_out_tokens(run)
    if not tokens:
        return paths, notes
    for kind, run in drawable.items():
        try:
            paths.append(_heatmap(run, kind, tokens, metric, out))
        except Exception as e:  # one kind's failure costs its own figure only
            notes.append(
                f"attention heatmap of {kind}: skipped: {type(e).__name__}: {str(e).splitlines()[0]}"
            )
    return paths, notes


def _heatmap(run: Run, kind: Any, tokens: list[str], metric: str, out: Path) -> Path:
    subwords = Path(run.run_dir) / TOKENIZER_FILE  # a subword run reads its pieces, not the words
    shown = Subwords.load(subwords).split(tokens) if subwords.is_file() else tokens
    shown = shown[: int(run.get("model.max_len") or len(shown))]  # cut as the data module cuts
    ids = Vocabulary.load(str(Path(run.run_dir) / "vocab.json")).encode(shown)
    maps = attention_maps(checkpoint(run), ids)
    layers = [None if bool(m.isnan().all()) else m.numpy() for m in maps[:-1]]
    title = f"{kind} attention, T={run.get('temperature')}, {metric}={run.metrics[metric]:.4f}"
    return plots.attention_heatmap(layers, maps[-1].numpy(), shown, title, out / f"attention_{kind}.png")


def draw_all(
    groups: dict[str, list[Group]], group_by: tuple[str, ...], metric: str, out: Path
) -> tuple[dict[str, list[Path]], list[str]]:
    """Every figure of the report, ``{task: [paths], "": [heatmaps]}``, and a line per figure not drawn."""
    images: dict[str, list[Path]] = {}
    for split, gs in groups.items():
        slug = "".join(c if c.isalnum() else "_" for c in split)
        m = gs[0].metric if gs and gs[0].metric else metric  # the task's ranking metric
        chance = _chance(gs)
        paths = []
        rows = forest_rows(gs, group_by, m)
        if rows:
            title = f"{split}: {m} per setting" + (
                " and success rate" if any(r.success for r in rows) else ""
            )
            paths.append(
                plots.forest(rows, m, chance, out / f"{slug}_{m.replace('/', '_')}_forest.png", title)
            )
        lines = temperature_lines(gs, group_by, m)
        if lines:
            path = out / f"{slug}_{m.replace('/', '_')}_vs_T.png"
            paths.append(plots.metric_vs_temperature(lines, m, chance, path, f"{split}: {m} vs temperature"))
        ece = temperature_lines(gs, group_by, "test/ece") if m != "test/ece" else {}
        if ece and any("test/ece" in g.stats for g in gs):
            title = f"{split}: calibration error vs temperature"
            paths.append(
                plots.metric_vs_temperature(ece, "test/ece", chance, out / f"{slug}_ece_vs_T.png", title)
            )
        curves, monitor = learning_curves(gs, group_by, m)
        if curves:
            title = f"{split}: {monitor} while training (best setting per kind; ranked by {m})"
            paths.append(
                plots.learning_curves(curves, monitor, chance, out / f"{slug}_learning_curves.png", title)
            )
        state = recall_vs_state(gs, m)
        if state:
            title = f"{split}: {m} vs the attention's state per sequence"
            paths.append(plots.metric_vs_state(state, m, chance, out / f"{slug}_vs_state.png", title))
        base = m.split("@")[0]
        panels = length_panels(gs, base)
        if panels:
            title = f"{split}: {base} and attention entropy vs evaluation length"
            paths.append(plots.metric_vs_length(panels, base, chance, out / f"{slug}_vs_length.png", title))
        images[split] = paths
    images[""], notes = heatmaps(groups, group_by, metric, out)
    return images, notes
