"""``attn report``: collect runs, aggregate them over seeds with honest statistics, write the tables
(Markdown, HTML, CSV, JSON) and figures.

Runs come from every ``results.json`` under a directory (plus the ``sweep.json`` manifests there, so
that trials that never wrote a record are listed as missing) or from W&B's public API
(:mod:`attn.runner.collect`); groups, ranks and verdicts come from :mod:`attn.runner.aggregate`, the
statistics from :mod:`attn.runner.stats`, the figures from :mod:`attn.runner.figures`.
"""

from __future__ import annotations

import csv
import io
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attn.datamodules.files import write_json_atomic, write_text_atomic

from .aggregate import (
    DEFAULT_GROUP_BY,
    PRIMARY_METRICS,
    Group,
    PairedComparison,
    Verdict,
    aggregate_with_verdicts,
    holm_family,
    paired_comparisons,
    split_metrics,
)
from .collect import ALIASES, Run, Tuning
from .errors import ConfigError
from .figures import STATE, draw_all, recall_vs_state
from .paths import now_iso
from .stats import (
    ALPHA,
    BOOTSTRAP_MIN_N,
    CHANCE,
    POWER_MIN_N,
    Stat,
    base_name,
    iqm,
    is_counter,
    is_descriptive,
    metric_order,
)
from .tune import TuneSpec, at_edge

FORMATS = ("md", "html", "csv")


PROVENANCE_KEYS = ("code", "torch", "lightning", "device", "host")


def provenance_rows(runs: list[Run]) -> list[list[str]]:
    """A table of what produced the completed runs: one row per distinct origin, with its run count."""
    counts: dict[tuple[str, ...], int] = {}
    for r in runs:
        if r.status == "completed":
            key = tuple(r.origin.get(k, "unrecorded") for k in PROVENANCE_KEYS)
            counts[key] = counts.get(key, 0) + 1
    return [[*PROVENANCE_KEYS, "runs"], *([*k, str(n)] for k, n in sorted(counts.items()))]


def mixed_origins(groups: dict[str, list[Group]]) -> list[str]:
    """One warning line per task whose compared runs mix code versions, library versions or devices."""
    lines = []
    for split, gs in groups.items():
        runs = [r for g in gs for r in g.runs]
        for what, keys in (("code versions", ("code", "torch", "lightning")), ("devices", ("device",))):
            seen = sorted({" / ".join(r.origin.get(k, "unrecorded") for k in keys) for r in runs})
            if len(seen) > 1:
                lines.append(
                    f"warning: task {split} compares runs of {len(seen)} {what} ({'; '.join(seen)}):"
                    " differences between groups may come from them"
                )
    return lines


def shown_path(path: str | Path) -> str:
    """``path`` relative to the working directory where it lies below it (headings stay short and say the
    same on every machine), else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _fmt(x: float | None, digits: int = 4) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _cell(stat: Stat | None, metric: str = "") -> str:
    if stat is None:
        return "–"
    if is_counter(metric):  # a count: its value, or the range over seeds
        lo, hi = min(stat.values), max(stat.values)
        return f"{lo:g}" if lo == hi else f"{lo:g}–{hi:g}"
    d = 0 if base_name(metric).startswith("steps_to_") else 4  # steps: whole numbers
    if stat.n < 2:
        return f"{_fmt(stat.mean, d)} (n=1)"
    lo, hi = stat.ci
    return f"{_fmt(stat.mean, d)} ± {_fmt(stat.std, d)} [{_fmt(lo, d)}, {_fmt(hi, d)}]"


def _mark(g: Group) -> str:
    r = g.rank()
    if r.best:
        mark = "best"
    elif r.top:
        mark = "best mean (not separated from the rest)"
    elif r.tied and r.at_chance:
        mark = "not separated from the best"  # a chance-level group is not "≈ best", only untold apart
    elif r.tied:
        mark = "≈ best"
    else:
        mark = "worse than best" if r.p_holm is not None else ""  # separated from it by the test
    if r.p_holm is not None:
        mark = f"{mark} (p={r.p:.3f}, Holm {r.p_holm:.3f})".strip()
    if r.at_chance:
        mark = f"{mark}; at chance".strip("; ")
    if r.p_improve is not None:
        if r.p_improve_ci is None:
            interval = f"[n too small: < {BOOTSTRAP_MIN_N} runs]"
        else:
            interval = f"[{_fmt(r.p_improve_ci[0], 2)}, {_fmt(r.p_improve_ci[1], 2)}]"
        mark = f"{mark}; P(best>) {r.p_improve:.2f} {interval}".strip("; ")
    if r.seeds_needed is not None:
        at = f" (α = {r.power_alpha:.3g})" if r.power_alpha is not None else ""
        mark = f"{mark}; 80% power at ~{r.seeds_needed} seeds/group{at}".strip("; ")
    elif r.too_few_for_power:
        mark = f"{mark}; seeds for 80% power: n too small (< {POWER_MIN_N} runs)".strip("; ")
    return mark


def _success_cell(g: Group) -> str:
    s = g.success
    if s is None:
        return "–"
    lo, hi = s.ci
    return f"{s.k}/{s.n} = {s.rate:.2f} [{lo:.2f}, {hi:.2f}]"


def _published_cell(g: Group) -> str:
    if g.published is None or g.optimism is None:
        return "–"
    return f"{_fmt(g.published)} ({g.optimism:+.4f}; best of {g.published_from})"


def _iqm_cell(stat: Stat | None) -> str:
    if stat is None or stat.n < 2:
        return "–"
    if stat.n < BOOTSTRAP_MIN_N:
        return f"{iqm(stat.values):.4f} [n too small]"
    lo, hi = stat.iqm_interval
    return f"{iqm(stat.values):.4f} [{_fmt(lo)}, {_fmt(hi)}]"


def table_rows(
    groups: list[Group], group_by: tuple[str, ...], metrics: list[str], split_on: list[str] | None = None
) -> list[list[str]]:
    """Header and rows of one task's summary table (strings); ``split_on``: the task's split keys."""
    split_on = split_on or []
    chance = any(g.chance is not None for g in groups)
    success = any(g.success is not None for g in groups)
    ranking = groups[0].metric if groups else ""
    robust = (
        bool(ranking)
        and not is_counter(ranking)
        and any(g.stats.get(ranking) is not None and g.stats[ranking].n >= 2 for g in groups)
    )
    header = [*group_by, *split_on, "n", "seeds"]
    header += [m if is_counter(m) else f"{m} mean ± std [95% CI]" for m in metrics]
    header += [f"{ranking} IQM [95% percentile bootstrap, n ≥ {BOOTSTRAP_MIN_N}]"] if robust else []
    header += ["solved [95% Wilson]"] if success else []
    published = any(g.published is not None for g in groups)
    header += ["published rule (optimism)"] if published else []
    header += [*(["chance"] if chance else []), "train s", "vs best"]
    tuned = any(r.tuned for g in groups for r in g.runs)
    header[len(group_by) + len(split_on) : len(group_by) + len(split_on)] = ["selected"] if tuned else []
    rows = [header]
    for g in groups:
        n = max((s.n for s in g.stats.values()), default=len(g.runs))
        cells = [*map(str, g.key), *([selected_text(g)] if tuned else []), str(n), seeds_text(g)]
        cells += [_cell(g.stats.get(m), m) for m in metrics]
        cells += [_iqm_cell(g.stats.get(ranking))] if robust else []
        cells += [_success_cell(g)] if success else []
        cells += [_published_cell(g)] if published else []
        cells += [_fmt(g.chance)] if chance else []
        rows.append([*cells, _fmt(g.duration, 1), _mark(g)])
    return rows


def seeds_text(g: Group) -> str:
    """The seeds of a group's runs (``0,1,2``; the final seeds of a tuned sweep), in order."""
    seeds = sorted(
        {r.get("seed") for r in g.runs if r.get("seed") is not None}, key=lambda x: (str(type(x)), x)
    )
    return ",".join(str(x) for x in seeds) or "–"


def selected_text(g: Group) -> str:
    """The values tuning selected for a group's runs (``optim.lr=0.001``), ``–`` for untuned runs."""
    values = {" ".join(f"{k}={v}" for k, v in r.tuned.items()) for r in g.runs if r.tuned}
    return "; ".join(sorted(values)) or "–"


def tuning_rows(t: Tuning) -> tuple[list[list[str]], list[str]]:
    """One tuned sweep's tuning table (per arm and candidate: the mean over the tuning seeds of the
    monitor's best validation value, how many tuning runs, how many failed, the selected one) and its
    warnings (a selection at the edge of its grid)."""
    seeds = ",".join(str(s) for s in t.spec.get("seeds", []))
    header = ["arm", "candidate", f"mean {t.monitor}, tuning seeds {seeds}", "n", "failed", "selected"]
    rows, warnings = [header], []
    spec = TuneSpec.from_dict(t.spec)
    for arm, candidates in t.table.items():
        chosen = t.selected.get(arm, {})
        for c in candidates:
            mean = "failed" if c.get("mean") is None else _fmt(c["mean"])
            if c.get("halted") is not None:  # successive halving stopped it there: not a full-budget value
                mean = f"{mean} at {c['halted']:.3g} of the budget (halved out)"
            text = " ".join(f"{k}={v}" for k, v in c["candidate"].items())
            rows.append(
                [
                    arm,
                    text,
                    mean,
                    str(c["n"]),
                    str(c["failed"]),
                    "selected" if c["candidate"] == chosen else "",
                ]
            )
        for key in at_edge(spec, chosen):
            grid = spec.keys[key]
            warnings.append(
                f"warning: {arm}: the selected {key}={chosen[key]} is at the edge of its grid ({grid[0]} …"
                f" {grid[-1]}); the best value may lie beyond it"
            )
    if not t.selected:
        where = shown_path(t.sweep_dir)
        warnings.append(f"warning: {where} has not selected yet (its tuning phase has not ended)")
    return rows, warnings


TUNING_CAPTION = (
    "Per-arm tuning (docs/fair-comparisons.md): every arm tried the same candidates on the tuning seeds;"
    " the candidate with the best mean of the best validation value was selected (ties: the earlier one; a"
    " failed run scores as the worst value), and only the arm's runs on the other, final seeds are results."
)


def paired_rows(comparisons: list[PairedComparison], group_by: tuple[str, ...]) -> list[list[str]]:
    """Header and rows of the paired comparisons of one task (second score against the first)."""
    header = [*group_by, "metric", "second score", "n", "first", "second", "second − first [95% CI]",
              "paired t p", "Holm"]  # fmt: skip
    rows = [header]
    for c in comparisons:
        r = c.result
        lo, hi = r.ci
        diff = f"{r.mean:+.4f}" + (f" [{lo:+.4f}, {hi:+.4f}]" if r.n >= 2 else " (n=1)")
        first, second = r.mean_a, r.mean_b
        tested = not is_descriptive(c.metric)
        rows.append([*map(str, c.key[: len(group_by)]), c.metric, c.what, str(r.n), _fmt(first), _fmt(second),
                     diff, _fmt(r.p, 3) if tested else "not tested",
                     _fmt(c.p_holm, 3) if tested else "–"])  # fmt: skip
    return rows


PAIRED_CAPTION = (
    "The same checkpoints scored a second way, paired by seed: the mean of the per-seed differences with its"
    " 95% t-interval, and the paired t-test (scipy's ttest_rel), Holm-corrected over {family}."
)


def _markdown_table(rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(rows[0]), line(["---"] * len(rows[0])), *map(line, rows[1:])])


def _html_table(rows: list[list[str]], marks: list[str]) -> str:
    import html

    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = []
    for cells, mark in zip(rows[1:], marks, strict=True):
        cls = f' class="{mark}"' if mark else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


@dataclass
class Report:
    """What ``attn report`` produced: the aggregated groups, the problem runs and the files written."""

    groups: dict[str, list[Group]]
    runs: list[Run]
    problems: list[Run]
    files: list[Path]
    metrics: list[str]
    command: str
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    tunings: list[Tuning] = field(default_factory=list)
    tuning_runs: int = 0  # tuning trials read and left out of the results
    notes: list[str] = field(default_factory=list)  # what the report did not draw, and why
    tuning: list[Run] = field(default_factory=list)  # those trials (runs.csv lists them, phase=tune)


def report_metrics(runs: list[Run], metric: str) -> list[str]:
    """The metric columns: the chosen metric first, then the other test metrics present."""
    present = sorted({m for r in runs if r.status == "completed" for m in r.metrics}, key=metric_order)
    rest = [m for m in present if m not in (metric, CHANCE) and m.startswith("test/")]
    return [metric, *rest]


def build(
    runs: list[Run],
    out_dir: str | Path | None,
    *,
    metric: str | None = None,
    group_by: tuple[str, ...] = DEFAULT_GROUP_BY,
    split_by: str = "task",
    formats: tuple[str, ...] = FORMATS,
    plots: bool = True,
    command: str | None = None,
    tunings: list[Tuning] | None = None,
) -> Report:
    """Aggregate ``runs`` and write the report files into ``out_dir`` (None: no files, the tables only).
    Tuning trials (``phase`` tune) are left out of the results; ``tunings``
    (:func:`attn.runner.collect.tunings`) adds their tables."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ConfigError(f"unknown report format {bad[0]!r}; valid choices: {', '.join(FORMATS)}")
    tuning = [r for r in runs if r.phase == "tune"]  # never results; the published rule reads them
    tuning_runs = len(tuning)
    runs = [r for r in runs if r.phase != "tune"]
    completed = [r for r in runs if r.status == "completed"]
    if not runs and tuning_runs:
        raise ConfigError(
            f"the {tuning_runs} runs found are tuning runs (phase=tune), which are never results: report the"
            " sweep directory that holds them, whose report shows them in its tuning tables"
        )
    if not runs:
        raise ConfigError("no runs found (no results.json or sweep.json)")
    if metric is not None and completed and not any(metric in r.metrics for r in completed):
        names = sorted({m for r in completed for m in r.metrics})
        raise ConfigError(f"metric {metric!r} is in no completed run; valid choices: {', '.join(names)}")
    for option, keys in (("--group-by", group_by), ("--split-by", (split_by,))):
        for key in keys:
            if completed and all(r.get(key) is None for r in completed):
                raise ConfigError(
                    f"{option} {key!r} is in no run's config; use a dotted config path"
                    f" or one of {', '.join(ALIASES)}"
                )
    command = command or " ".join(shlex.quote(a) for a in ["attn", "report", *sys.argv[2:]])
    metric = metric or PRIMARY_METRICS[0]  # tasks without it are ranked by their own primary metric
    groups, verdicts = aggregate_with_verdicts(runs, metric, group_by, split_by, tuning)
    metrics = report_metrics(runs, metric)
    problems = [r for r in runs if r.status != "completed"]
    files: list[Path] = []
    images: dict[str, list[Path]] = {}
    rep = Report(groups, runs, problems, files, metrics, command, verdicts, list(tunings or []), tuning_runs)
    rep.tuning = tuning
    if out_dir is None:
        return rep
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if plots and completed:
        images, rep.notes = draw_all(groups, group_by, metric, out)
        files += [p for ps in images.values() for p in ps]
    if "csv" in formats:
        files += _write_csv(rep, group_by, out)
    if "md" in formats:
        files.append(write_text_atomic(out / "report.md", _markdown(rep, group_by, images, out)))
    if "html" in formats:
        files.append(write_text_atomic(out / "report.html", _html(rep, group_by, images)))
    write_json_atomic(out / "report.json", _json(rep, group_by))
    files.append(out / "report.json")
    return rep


def _write_csv(rep: Report, group_by: tuple[str, ...], out: Path) -> list[Path]:
    everything = [*rep.runs, *rep.tuning]  # the tuning trials too, marked: never results
    metrics = sorted({m for r in everything for m in r.metrics}, key=metric_order)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["run_dir", "status", "phase", "task", *group_by, "seed", "selected", *metrics, "duration_s",
                "error"])  # fmt: skip
    for r in everything:
        values = r.tuned if r.phase == "final" else r.candidate  # selected, or tried (a tuning trial)
        w.writerow(
            [r.run_dir, r.status, r.phase or "", r.get("task"), *[r.get(g) for g in group_by], r.get("seed")]
            + [" ".join(f"{k}={v}" for k, v in values.items())]
            + [r.metrics.get(m, "") for m in metrics]
            + [r.duration_s if r.duration_s is not None else "", r.error or ""]
        )
    runs_csv = write_text_atomic(out / "runs.csv", buf.getvalue())
    paired_csv = []
    comparisons = {split: paired_comparisons(gs) for split, gs in rep.groups.items()}
    if any(comparisons.values()):
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["task", *group_by, "metric", "second", "n", "mean_first", "mean_second", "mean_diff",
                    "ci_low", "ci_high", "p_paired", "p_holm", "holm_family"])  # fmt: skip
        for split, cs in comparisons.items():
            family = holm_family(cs)
            for c in cs:
                r = c.result
                lo, hi = r.ci
                tested = not is_descriptive(c.metric)
                p_holm = "" if c.p_holm is None else c.p_holm
                w.writerow([split, *c.key[: len(group_by)], c.metric, c.other, r.n, r.mean_a,
                            r.mean_b, r.mean, lo, hi, r.p if tested else "", p_holm,
                            family if tested else "not tested (descriptive)"])  # fmt: skip
        paired_csv = [write_text_atomic(out / "paired.csv", buf.getvalue())]
    buf = io.StringIO()
    w = csv.writer(buf)
    keys = sorted({k for v in rep.verdicts.values() for k in v.split_keys})
    head = ["task", *group_by, *keys, "metric", "n", "mean", "std", "ci_low", "ci_high", "chance"]
    robust = ["iqm", "iqm_ci_low", "iqm_ci_high", "p_best_beats", "p_best_beats_ci_low",
              "p_best_beats_ci_high", "seeds_for_80pct_power"]  # fmt: skip
    lottery = ["success_rate", "success_ci_low", "success_ci_high", "p_success_fisher", "p_success_holm"]
    w.writerow(
        [*head, "best", "tied", "p_vs_best", "p_holm", *robust, *lottery, "published_rule", "optimism"]
    )

    def num(x: float | None) -> float | str:
        return "" if x is None or math.isnan(x) else x

    for split, groups in rep.groups.items():
        own = rep.verdicts[split].split_keys if split in rep.verdicts else []
        for g in groups:
            base, extra = g.key[: len(group_by)], dict(zip(own, g.key[len(group_by) :], strict=True))
            for m, s in g.stats.items():
                r = g.rank(m)
                lo, hi = (math.nan, math.nan) if is_counter(m) else s.ci
                chance = g.chance if m.split("@")[0] == "test/acc" else None
                std = math.nan if is_counter(m) else s.std
                row = [split, *base, *[extra.get(k, "") for k in keys], m, s.n, s.mean, num(std), num(lo)]
                row += [num(hi), num(chance), r.best, r.tied, num(r.p), num(r.p_holm)]
                rule = [num(g.published), num(g.optimism)] if m == g.metric else ["", ""]
                w.writerow([*row, *_robust_cells(g, m, num), *_success_cells(g, m, num), *rule])
    return [runs_csv, *paired_csv, write_text_atomic(out / "summary.csv", buf.getvalue())]


def _robust_cells(g: Group, metric: str, num: Any) -> list[Any]:
    """IQM (every metric; its bootstrap interval for the ranking metric), P(best > this) and the seeds for
    80% power (ranking metric)."""
    s, r = g.stats[metric], g.rank(metric)
    if is_counter(metric) or s.n < 1:
        return [""] * 7
    shown = metric == g.metric and s.n >= BOOTSTRAP_MIN_N  # below it the interval under-covers
    lo, hi = s.iqm_interval if shown else (math.nan, math.nan)
    plo, phi = r.p_improve_ci or (math.nan, math.nan)
    return [iqm(s.values), num(lo), num(hi), num(r.p_improve), num(plo), num(phi), num(r.seeds_needed)]


def _success_cells(g: Group, metric: str, num: Any) -> list[Any]:
    if g.success is None or metric != g.metric:
        return [""] * 5
    lo, hi = g.success.ci
    return [g.success.rate, lo, hi, num(g.success.p), num(g.success.p_holm)]


def _counts(rep: Report) -> str:
    by: dict[str, int] = {}
    for r in rep.runs:
        by[r.status] = by.get(r.status, 0) + 1
    detail = ", ".join(f"{n} {s}" for s, n in sorted(by.items()))
    tuning = (
        f"; {rep.tuning_runs} tuning runs, not results, are in the tuning tables" if rep.tuning_runs else ""
    )
    return f"{len(rep.runs)} runs read ({detail}){tuning}"


CAPTION = (
    "Cells: mean ± sample std [95% t-interval over seeds, clipped to the metric's range: [0, 1] for rates,"
    " [0, 100] for BLEU/chrF, ≥ 0 for losses]; counters (examples, steps, epochs) show their value or range."
    " A group pools the runs whose configs are equal except for the seed and keys that cannot change a"
    " result (run name, logger, progress bar, threads); any other key that differs becomes a column. A seed"
    " counts once per group: copies (the configuration, seed, code and device of a run already counted) are"
    " set aside."
    " best: the best mean among groups with 2 or more seeds, marked only when some group differs from it"
    f" (Welch's t-test against it, Holm-corrected over the task's comparisons, α = {ALPHA}; for rates each"
    " group's std counts as at least one test example) and not every group is at chance level; ≈ best:"
    f" Holm-adjusted p ≥ {ALPHA}; worse than best: Holm-adjusted p < {ALPHA}; at chance: the interval reaches"
    " the task's chance level (majority class)."
    " val/steps_to_50pct and val/steps_to_90pct: the first step at which validation was 50% / 90% of the way"
    " from chance to the run's own final value (not to 90% accuracy)."
)


def task_lines(rep: Report, split: str) -> list[str]:
    """One task's plain-text heading lines: its ranking metric, the keys it split on, its verdict."""
    groups = rep.groups[split]
    ranked_by = groups[0].metric if groups else rep.metrics[0]
    lines = [f"Ranked by {ranked_by}" + (f" ({rep.metrics[0]} is not logged by this task)."
                                          if ranked_by != rep.metrics[0] else ".")]  # fmt: skip
    v = rep.verdicts.get(split)
    if v and v.split_keys:
        lines.append(f"Split on {', '.join(v.split_keys)}: runs that differ in these are not pooled.")
    copies = [r for g in groups for r in g.duplicates]
    if copies:
        where = ", ".join(r.run_dir for r in copies[:3]) + (
            f" and {len(copies) - 3} more" if len(copies) > 3 else ""
        )
        lines.append(
            f"Set aside {len(copies)} duplicate run(s), the configuration, seed and origin of a run already"
            f" counted (counted once): {where}."
        )
    trained = _training_length(groups)
    if trained:
        lines.append(trained)
    if v and v.text:
        lines.append(f"Verdict: {v.text}.")
    return lines


def _training_length(groups: list[Group]) -> str:
    """``Each run trained 1 epoch (107 steps).``: how long the runs of a task trained (a range when they
    differ), so that a reader knows what a short study measured."""

    def span(values: set[int], unit: str) -> str:
        lo, hi = min(values), max(values)
        return f"{lo}{'' if lo == hi else f'-{hi}'} {unit}{'' if hi == 1 else 's'}"

    runs = [r for g in groups for r in g.runs]
    epochs = {int(r.metrics["train/epochs"]) for r in runs if "train/epochs" in r.metrics}
    steps = {int(r.metrics["train/steps"]) for r in runs if "train/steps" in r.metrics}
    if not epochs or not steps:
        return ""
    return f"Each run trained {span(epochs, 'epoch')} ({span(steps, 'step')})."


def _markdown(rep: Report, group_by: tuple[str, ...], images: dict[str, list[Path]], out: Path) -> str:
    lines = ["# attn report", "", f"Generated {now_iso()} by `{rep.command}`.", "", _counts(rep) + ".", ""]
    lines += [CAPTION, ""]
    for split, groups in rep.groups.items():
        own = rep.verdicts[split].split_keys if split in rep.verdicts else []
        lines += [f"## task: {split}", ""]
        for t in task_lines(rep, split):
            lines += [f"**{t}**" if t.startswith("Verdict") else t, ""]
        lines += [_markdown_table(table_rows(groups, group_by, split_metrics(groups), own)), ""]
        pairs = paired_comparisons(groups)
        if pairs:
            lines += [
                "### Scored two ways",
                "",
                PAIRED_CAPTION.format(family=holm_family(pairs)),
                "",
                _markdown_table(paired_rows(pairs, group_by)),
                "",
            ]
        for img in images.get(split, []):
            lines.append(f"![{img.stem}]({img.relative_to(out).as_posix()})")
        lines.append("")
    for img in images.get("", []):
        lines.append(f"![{img.stem}]({img.relative_to(out).as_posix()})")
    lines += [f"- {n}" for n in rep.notes]
    for t in rep.tunings:
        rows, warnings = tuning_rows(t)
        lines += ["", f"## Tuning: {shown_path(t.sweep_dir)}", "", TUNING_CAPTION, ""]
        lines += [f"**{w}**" for w in warnings] + ([""] if warnings else [])
        lines += [_markdown_table(rows)]
    lines += ["", "## Provenance", ""]
    lines += [f"**{w}**" for w in mixed_origins(rep.groups)]
    lines += ["", _markdown_table(provenance_rows(rep.runs))]
    if rep.problems:
        lines += ["", "## Runs that did not complete", ""]
        lines += [f"- `{r.run_dir}`: {r.status}: {r.error or ''}" for r in rep.problems]
    return "\n".join(lines) + "\n"


def _html(rep: Report, group_by: tuple[str, ...], images: dict[str, list[Path]]) -> str:
    import base64
    import html

    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}"
        "tr.best{background:#d4f7d4;font-weight:bold}tr.tied{background:#eef9ee}"
        "img{max-width:100%;margin:0.5em 0}code{background:#f4f4f4}p.verdict{font-weight:bold}"
    )
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>attn report</title><style>{style}</style>"
        "</head><body><h1>attn report</h1>",
        f"<p>Generated {html.escape(now_iso())} by <code>{html.escape(rep.command)}</code>.</p>",
        f"<p>{html.escape(_counts(rep))}. {html.escape(CAPTION)} Green: best; light green: ≈ best.</p>",
    ]

    def img_tag(path: Path) -> str:
        data = base64.b64encode(path.read_bytes()).decode()
        return f"<img alt='{html.escape(path.stem)}' src='data:image/png;base64,{data}'>"

    for split, groups in rep.groups.items():
        own = rep.verdicts[split].split_keys if split in rep.verdicts else []
        marks = ["best" if g.best else ("tied" if g.tied else "") for g in groups]
        parts.append(f"<h2>task: {html.escape(split)}</h2>")
        for t in task_lines(rep, split):
            cls = " class='verdict'" if t.startswith("Verdict") else ""
            parts.append(f"<p{cls}>{html.escape(t)}</p>")
        parts.append(_html_table(table_rows(groups, group_by, split_metrics(groups), own), marks))
        parts += [img_tag(p) for p in images.get(split, [])]
    parts += [img_tag(p) for p in images.get("", [])]
    parts += [f"<p>{html.escape(n)}</p>" for n in rep.notes]
    for t in rep.tunings:
        rows, warnings = tuning_rows(t)
        heading = html.escape(shown_path(t.sweep_dir))
        parts.append(f"<h2>Tuning: {heading}</h2><p>{html.escape(TUNING_CAPTION)}</p>")
        parts += [f"<p class='verdict'>{html.escape(w)}</p>" for w in warnings]
        parts.append(_html_table(rows, [""] * (len(rows) - 1)))
    parts.append("<h2>Provenance</h2>")
    parts += [f"<p class='verdict'>{html.escape(w)}</p>" for w in mixed_origins(rep.groups)]
    rows = provenance_rows(rep.runs)
    parts.append(_html_table(rows, [""] * (len(rows) - 1)))
    if rep.problems:
        parts.append("<h2>Runs that did not complete</h2><ul>")
        for r in rep.problems:
            what = f"{html.escape(r.status)}: {html.escape(r.error or '')}"
            parts.append(f"<li><code>{html.escape(r.run_dir)}</code>: {what}</li>")
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _json(rep: Report, group_by: tuple[str, ...]) -> dict[str, Any]:
    def num(x: float | None) -> float | None:
        return None if x is None or math.isnan(x) else x

    def group(g: Group, own: list[str]) -> dict[str, Any]:
        return {
            **dict(zip([*group_by, *own], g.key, strict=True)),
            "ranked_by": g.metric,
            "best": g.best,
            "tied": g.tied,
            "p_vs_best": num(g.p_value),
            "p_holm": num(g.rank().p_holm),
            "chance": g.chance,
            "selected": next((r.tuned for r in g.runs if r.tuned), None),
            "seeds": sorted({r.get("seed") for r in g.runs if r.get("seed") is not None}, key=str),
            "published_rule": num(g.published),  # the best tuning candidate's test mean (tuned sweeps)
            "published_from": g.published_from or None,
            "optimism": num(g.optimism),
            "metrics": {
                m: {
                    "n": s.n,
                    "mean": s.mean,
                    "std": num(s.std),
                    "ci": [num(c) for c in s.ci],
                    "best": g.rank(m).best,
                    "tied": g.rank(m).tied,
                    "p_vs_best": num(g.rank(m).p),
                    "p_holm": num(g.rank(m).p_holm),
                }
                for m, s in g.stats.items()
            },
        }

    tasks, verdicts, state = {}, {}, {}
    rows = provenance_rows(rep.runs)
    for split, groups in rep.groups.items():
        v = rep.verdicts.get(split) or Verdict("", [])
        tasks[split] = [group(g, v.split_keys) for g in groups]
        metric = groups[0].metric if groups and groups[0].metric else rep.metrics[0]
        if recall_vs_state(groups, metric):  # the numbers of the recall-vs-state figure
            state[split] = [
                {"attention": str(g.runs[0].get("attention.kind")), "key": list(g.key),
                 STATE: g.stats[STATE].mean, "metric": metric, "n": g.stats[metric].n,
                 "mean": g.stats[metric].mean, "ci": [num(c) for c in g.stats[metric].ci]}
                for g in groups if STATE in g.stats and metric in g.stats
            ]  # fmt: skip
        verdicts[split] = {
            "verdict": v.text, "split_on": v.split_keys, "comparisons": v.comparisons,
            "duplicates_set_aside": [r.run_dir for g in groups for r in g.duplicates],
        }  # fmt: skip
    return {
        "command": rep.command,
        "runs": len(rep.runs),
        "problems": [{"run_dir": r.run_dir, "status": r.status, "error": r.error} for r in rep.problems],
        "metric": rep.metrics[0],
        "verdicts": verdicts,
        "tasks": tasks,
        "recall_vs_state": state,
        "provenance": [dict(zip(rows[0], row, strict=True)) for row in rows[1:]],
        "warnings": mixed_origins(rep.groups),
        "notes": rep.notes,
        "tuning": [
            {
                "sweep_dir": t.sweep_dir,
                "spec": t.spec,
                "monitor": t.monitor,
                "table": t.table,
                "selected": t.selected,
                "warnings": tuning_rows(t)[1],
            }
            for t in rep.tunings
        ],
    }
