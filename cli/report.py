"""``attn report``: read runs, aggregate over seeds with honest statistics, write tables and plots.

Runs come from every ``results.json`` under a directory (plus the ``sweep.json`` manifests there,
so that trials that never wrote a record are listed as missing) or from W&B's public API. Runs
are grouped by configuration (default: attention kind, softmax variant, temperature) within each
task; each metric gets mean, sample standard deviation and a 95% t-interval over seeds. The best
group per task is the one with the best mean of the chosen metric; groups whose difference from
it is not significant (Welch's t-test, p >= 0.05) are marked as indistinguishable.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .records import RECORD_KEYS, now_iso, write_json_atomic
from .schema import ConfigError

ALIASES = {
    "attention": "attention.kind",
    "softmax": "softmax.name",
    "temperature": "softmax.temperature",
    "task": "task.name",
    "model": "model.d_model",
}
DEFAULT_GROUP_BY = ("attention", "softmax", "temperature")
FORMATS = ("md", "html", "csv")
ALPHA = 0.05
LOWER_IS_BETTER = ("loss", "ece", "error", "perplexity")


@dataclass
class Run:
    """One run as the report sees it."""

    run_dir: str
    status: str  # completed | failed | interrupted | missing | corrupt
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    duration_s: float | None = None
    error: str | None = None

    def get(self, path: str) -> Any:
        """A config value by dotted path (aliases allowed); ``None`` when absent."""
        node: Any = self.config
        for part in ALIASES.get(path, path).split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node


@dataclass
class Stat:
    """Mean, sample std and 95% t-interval of one metric over the seeds of one group."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / self.n

    @property
    def std(self) -> float:
        if self.n < 2:
            return math.nan
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (self.n - 1))

    @property
    def half_width(self) -> float:
        """Half-width of the 95% confidence interval: ``t_{0.975, n-1} * std / sqrt(n)``."""
        if self.n < 2:
            return math.nan
        from scipy.stats import t

        return float(t.ppf(1 - ALPHA / 2, self.n - 1)) * self.std / math.sqrt(self.n)

    @property
    def ci(self) -> tuple[float, float]:
        return self.mean - self.half_width, self.mean + self.half_width


@dataclass
class Group:
    """One configuration of one task, aggregated over its completed runs."""

    split: str
    key: tuple[Any, ...]
    runs: list[Run]
    stats: dict[str, Stat]
    duration: float | None
    best: bool = False
    tied: bool = False  # not significantly different from the best (Welch p >= 0.05)
    p_value: float | None = None
    metric: str = ""  # the metric that ranks this task's groups


# A task without the chosen metric is ranked by the first of these it has (translation: BLEU).
PRIMARY_METRICS = ("test/acc", "test/bleu")


def ranking_metric(present: set[str], metric: str) -> str:
    """``metric`` if the task logs it, else the task's primary metric (``PRIMARY_METRICS``)."""
    if metric in present:
        return metric
    return next((m for m in PRIMARY_METRICS if m in present), metric)


def split_metrics(groups: list[Group]) -> list[str]:
    """One task's metric columns: its ranking metric first, then its other test metrics."""
    present = sorted({m for g in groups for m in g.stats if m.startswith("test/")})
    ranking = groups[0].metric if groups else ""
    return [ranking, *[m for m in present if m != ranking]] if ranking else present


# --------------------------------------------------------------------------------------------
# reading


def _read_record(path: Path) -> Run:
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or any(k not in data for k in RECORD_KEYS):
            raise ValueError("lacks keys")
    except (OSError, ValueError) as e:
        return Run(str(path.parent.resolve()), "corrupt", error=f"{path}: unreadable run record ({e})")
    metrics = {k: float(v) for k, v in (data.get("metrics") or {}).items() if isinstance(v, int | float)}
    return Run(
        run_dir=str(path.parent.resolve()),
        status=str(data["status"]),
        config=data.get("config") or {},
        metrics=metrics,
        duration_s=data.get("duration_s"),
        error=data.get("error"),
    )


def collect(root: str | Path) -> list[Run]:
    """Every run under ``root``: its ``results.json`` files and the sweep trials that never wrote one.

    Directories of set-aside attempts (``attempts/``) are superseded by their re-runs and skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such directory")
    runs: dict[str, Run] = {}
    for path in sorted(root.rglob("results.json")):
        if "attempts" in path.relative_to(root).parts:
            continue
        run = _read_record(path)
        runs[run.run_dir] = run
    for manifest_path in sorted(root.rglob("sweep.json")):
        try:
            manifest = json.loads(manifest_path.read_text())
            trials = manifest["trials"]
        except (OSError, ValueError, KeyError, TypeError):
            runs[str(manifest_path)] = Run(
                str(manifest_path.parent), "corrupt", error=f"{manifest_path}: unreadable sweep manifest"
            )
            continue
        for t in trials:
            run_dir = str(Path(t["run_dir"]).resolve())
            if run_dir not in runs:
                runs[run_dir] = Run(run_dir, "missing", error=t.get("error") or "no results.json")
    return list(runs.values())


def collect_wandb(path: str, group: str | None, api: Any = None) -> list[Run]:
    """Runs of the W&B project ``entity/project`` (optionally one group) through the public API."""
    if api is None:
        import wandb

        try:
            api = wandb.Api(timeout=20)
        except Exception as e:  # no credentials, no network
            raise ConfigError(f"cannot reach W&B for {path}: {str(e).splitlines()[0]}") from e
    filters = {"group": group} if group else {}
    try:
        found = list(api.runs(path, filters=filters))
    except Exception as e:
        raise ConfigError(f"cannot read W&B runs of {path}: {str(e).splitlines()[0]}") from e
    runs = []
    for r in found:
        config = _unflatten({k: v for k, v in dict(r.config).items() if not k.startswith("_")})
        summary = dict(r.summary)
        metrics = {k: float(v) for k, v in summary.items() if "/" in k and isinstance(v, int | float)}
        status = (
            "completed"
            if r.state == "finished"
            else ("failed" if r.state in ("crashed", "failed") else r.state)
        )
        runs.append(Run(f"wandb:{path}/{r.id}", status, config, metrics, summary.get("_runtime")))
    return runs


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


# --------------------------------------------------------------------------------------------
# aggregating


def lower_is_better(metric: str) -> bool:
    """Whether smaller values of ``metric`` are better (losses, calibration error)."""
    return any(word in metric.split("/")[-1] for word in LOWER_IS_BETTER)


def _welch_p(a: Stat, b: Stat) -> float:
    """Two-sided Welch t-test p-value; ``nan`` when either group has fewer than two runs."""
    if a.n < 2 or b.n < 2:
        return math.nan
    if a.std == 0 and b.std == 0:
        return 1.0 if a.mean == b.mean else 0.0
    from scipy.stats import ttest_ind

    return float(ttest_ind(a.values, b.values, equal_var=False).pvalue)


def aggregate(
    runs: list[Run], metric: str, group_by: tuple[str, ...] = DEFAULT_GROUP_BY, split_by: str = "task"
) -> dict[str, list[Group]]:
    """Completed runs grouped per split (task) and configuration, best and tied groups marked."""
    buckets: dict[str, dict[tuple, list[Run]]] = {}
    for run in runs:
        if run.status != "completed":
            continue
        split = str(run.get(split_by))
        key = tuple(run.get(g) for g in group_by)
        buckets.setdefault(split, {}).setdefault(key, []).append(run)
    out: dict[str, list[Group]] = {}
    for split, groups in sorted(buckets.items()):
        rows = []
        for key, members in groups.items():
            names = sorted({m for r in members for m in r.metrics})
            stats = {m: Stat([r.metrics[m] for r in members if m in r.metrics]) for m in names}
            durations = [r.duration_s for r in members if r.duration_s is not None]
            rows.append(
                Group(split, key, members, stats, sum(durations) / len(durations) if durations else None)
            )
        rows.sort(key=lambda g: tuple(_sortable(k) for k in g.key))
        ranked_by = ranking_metric({m for g in rows for m in g.stats}, metric)
        for g in rows:
            g.metric = ranked_by
        scored = [g for g in rows if ranked_by in g.stats]
        if scored:
            sign = -1 if lower_is_better(ranked_by) else 1
            best = max(scored, key=lambda g: sign * g.stats[ranked_by].mean)
            best.best = True
            for g in scored:
                if g is not best:
                    g.p_value = _welch_p(best.stats[ranked_by], g.stats[ranked_by])
                    g.tied = not math.isnan(g.p_value) and g.p_value >= ALPHA
        out[split] = rows
    return out


def _sortable(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | float) else (1, str(value))


# --------------------------------------------------------------------------------------------
# writing


def _fmt(x: float | None, digits: int = 4) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _cell(stat: Stat | None) -> str:
    if stat is None:
        return "–"
    if stat.n < 2:
        return f"{_fmt(stat.mean)} (n=1)"
    lo, hi = stat.ci
    return f"{_fmt(stat.mean)} ± {_fmt(stat.std)} [{_fmt(lo)}, {_fmt(hi)}]"


def _mark(g: Group) -> str:
    return "best" if g.best else ("≈ best" if g.tied else "")


def table_rows(groups: list[Group], group_by: tuple[str, ...], metrics: list[str]) -> list[list[str]]:
    """Header and rows of one task's summary table (strings)."""
    header = [*group_by, "n", *[f"{m} mean ± std [95% CI]" for m in metrics], "train s", "vs best"]
    rows = [header]
    for g in groups:
        n = max((s.n for s in g.stats.values()), default=len(g.runs))
        mark = _mark(g)
        if g.p_value is not None and not math.isnan(g.p_value):
            mark = f"{mark} (p={g.p_value:.3f})".strip()
        rows.append(
            [*map(str, g.key), str(n), *[_cell(g.stats.get(m)) for m in metrics], _fmt(g.duration, 1), mark]
        )
    return rows


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


def report_metrics(runs: list[Run], metric: str) -> list[str]:
    """The metric columns: the chosen metric first, then the other test metrics present."""
    present = sorted({m for r in runs if r.status == "completed" for m in r.metrics})
    rest = [m for m in present if m != metric and m.startswith("test/")]
    return [metric, *rest]


def build(
    runs: list[Run],
    out_dir: str | Path,
    *,
    metric: str | None = None,
    group_by: tuple[str, ...] = DEFAULT_GROUP_BY,
    split_by: str = "task",
    formats: tuple[str, ...] = FORMATS,
    plots: bool = True,
    command: str | None = None,
) -> Report:
    """Aggregate ``runs`` and write the report files into ``out_dir``."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ConfigError(f"unknown report format {bad[0]!r}; valid choices: {', '.join(FORMATS)}")
    completed = [r for r in runs if r.status == "completed"]
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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    command = command or " ".join(shlex.quote(a) for a in ["attn", "report", *sys.argv[2:]])
    metric = metric or PRIMARY_METRICS[0]  # tasks without it are ranked by their own primary metric
    groups = aggregate(runs, metric, group_by, split_by)
    metrics = report_metrics(runs, metric)
    problems = [r for r in runs if r.status != "completed"]
    files: list[Path] = []
    images: dict[str, list[Path]] = {}
    if plots and completed:
        from .plots import draw_all

        images = draw_all(runs, groups, group_by, metric, out)
        files += [p for ps in images.values() for p in ps]
    rep = Report(groups, runs, problems, files, metrics, command)
    if "csv" in formats:
        files += _write_csv(rep, group_by, out)
    if "md" in formats:
        files.append(_write_text(out / "report.md", _markdown(rep, group_by, images, out)))
    if "html" in formats:
        files.append(_write_text(out / "report.html", _html(rep, group_by, images)))
    write_json_atomic(out / "report.json", _json(rep, group_by))
    files.append(out / "report.json")
    return rep


def _write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def _write_csv(rep: Report, group_by: tuple[str, ...], out: Path) -> list[Path]:
    metrics = sorted({m for r in rep.runs for m in r.metrics})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["run_dir", "status", "task", *group_by, "seed", *metrics, "duration_s", "error"])
    for r in rep.runs:
        w.writerow(
            [r.run_dir, r.status, r.get("task"), *[r.get(g) for g in group_by], r.get("seed")]
            + [r.metrics.get(m, "") for m in metrics]
            + [r.duration_s if r.duration_s is not None else "", r.error or ""]
        )
    runs_csv = _write_text(out / "runs.csv", buf.getvalue())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        ["task", *group_by, "metric", "n", "mean", "std", "ci_low", "ci_high", "best", "tied", "p_vs_best"]
    )
    for split, groups in rep.groups.items():
        for g in groups:
            for m, s in g.stats.items():
                lo, hi = s.ci
                w.writerow([split, *g.key, m, s.n, s.mean, s.std, lo, hi, g.best, g.tied, g.p_value])
    return [runs_csv, _write_text(out / "summary.csv", buf.getvalue())]


def _counts(rep: Report) -> str:
    by: dict[str, int] = {}
    for r in rep.runs:
        by[r.status] = by.get(r.status, 0) + 1
    detail = ", ".join(f"{n} {s}" for s, n in sorted(by.items()))
    return f"{len(rep.runs)} runs read ({detail})"


def _markdown(rep: Report, group_by: tuple[str, ...], images: dict[str, list[Path]], out: Path) -> str:
    lines = ["# attn report", "", f"Generated {now_iso()} by `{rep.command}`.", "", _counts(rep) + ".", ""]
    lines += [
        f"Cells: mean ± sample std [95% t-interval] of the completed runs (seeds). best: best mean of"
        f" the task's ranking metric (`{rep.metrics[0]}`, else {' or '.join(PRIMARY_METRICS)}; first"
        f" column); ≈ best: Welch's t-test against the best gives p ≥ {ALPHA}.",
        "",
    ]
    for split, groups in rep.groups.items():
        lines += [
            f"## task: {split}",
            "",
            _markdown_table(table_rows(groups, group_by, split_metrics(groups))),
            "",
        ]
        for img in images.get(split, []):
            lines.append(f"![{img.stem}]({img.relative_to(out).as_posix()})")
        lines.append("")
    for img in images.get("", []):
        lines.append(f"![{img.stem}]({img.relative_to(out).as_posix()})")
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
        "img{max-width:100%;margin:0.5em 0}code{background:#f4f4f4}"
    )
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>attn report</title><style>{style}</style>"
        "</head><body><h1>attn report</h1>",
        f"<p>Generated {html.escape(now_iso())} by <code>{html.escape(rep.command)}</code>.</p>",
        f"<p>{html.escape(_counts(rep))}. Cells: mean ± sample std [95% t-interval] over seeds; green:"
        f" best mean of the task's ranking metric (first column: <code>{html.escape(rep.metrics[0])}</code>,"
        f" else {' or '.join(PRIMARY_METRICS)}); light green: Welch p ≥ {ALPHA} against it.</p>",
    ]

    def img_tag(path: Path) -> str:
        data = base64.b64encode(path.read_bytes()).decode()
        return f"<img alt='{html.escape(path.stem)}' src='data:image/png;base64,{data}'>"

    for split, groups in rep.groups.items():
        marks = ["best" if g.best else ("tied" if g.tied else "") for g in groups]
        parts.append(f"<h2>task: {html.escape(split)}</h2>")
        parts.append(_html_table(table_rows(groups, group_by, split_metrics(groups)), marks))
        parts += [img_tag(p) for p in images.get(split, [])]
    parts += [img_tag(p) for p in images.get("", [])]
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

    return {
        "command": rep.command,
        "runs": len(rep.runs),
        "problems": [{"run_dir": r.run_dir, "status": r.status, "error": r.error} for r in rep.problems],
        "metric": rep.metrics[0],
        "tasks": {
            split: [
                {
                    **dict(zip(group_by, g.key, strict=True)),
                    "ranked_by": g.metric,
                    "best": g.best,
                    "tied": g.tied,
                    "p_vs_best": num(g.p_value),
                    "metrics": {
                        m: {"n": s.n, "mean": s.mean, "std": num(s.std), "ci": [num(c) for c in s.ci]}
                        for m, s in g.stats.items()
                    },
                }
                for g in groups
            ]
            for split, groups in rep.groups.items()
        },
    }
