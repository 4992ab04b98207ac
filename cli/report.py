"""``attn report``: read runs, aggregate over seeds with honest statistics, write tables and plots.

Runs come from every ``results.json`` under a directory (plus the ``sweep.json`` manifests there,
so that trials that never wrote a record are listed as missing) or from W&B's public API. Runs
are grouped by configuration (default: attention kind, softmax variant, temperature) within each
task, and pooled over seeds only when their configs are otherwise equal (``NEUTRAL_KEYS`` aside): a
key that differs inside a group becomes a column of its own. Each metric gets mean, sample standard
deviation and a 95% t-interval over seeds, clipped to the metric's range. Per task and metric, the
group with the best mean is compared with every other group of two or more seeds (Welch's t-test,
Holm-corrected); it is marked best only when some group differs from it and not every group is at
chance level, and each task gets a one-line verdict that says so plainly.
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
from .sweep import trial_dir

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
LOWER_IS_BETTER = ("loss", "ece", "error", "perplexity", "steps_to")
# Config keys (and key prefixes) that cannot change a run's result: runs differing only in these and
# the seed are pooled. Any other key that differs between the runs of a group splits the group.
NEUTRAL_KEYS = (
    "name", "seed", "runs_root", "threads", "logger", "trainer.enable_progress_bar",
    "trainer.enable_model_summary", "trainer.log_every_n_steps",
)  # fmt: skip
COUNTERS = ("/examples", "/steps", "/epochs")  # metrics that count things: no mean ± CI, no ranking
CHANCE = "test/chance_acc"  # majority-class accuracy of the test split, logged by classification tasks


@dataclass
class Run:
    """One run as the report sees it."""

    run_dir: str
    status: str  # completed | failed | interrupted | missing | corrupt | no record
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    duration_s: float | None = None
    error: str | None = None
    origin: dict[str, str] = field(default_factory=dict)  # code version, libraries, device, host

    def get(self, path: str) -> Any:
        """A config value by dotted path (aliases allowed); ``None`` when absent."""
        node: Any = self.config
        for part in ALIASES.get(path, path).split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node


def is_descriptive(metric: str) -> bool:
    """Whether ``metric`` describes the model (attention entropy, the chance level) without a better
    direction: shown with mean ± CI, never ranked."""
    return "/entropy" in metric or metric == CHANCE


def is_counter(metric: str) -> bool:
    """Whether ``metric`` counts things (examples, steps, epochs) rather than measuring quality."""
    return metric.endswith(COUNTERS)


def metric_range(metric: str) -> tuple[float, float]:
    """The values ``metric`` can take: rates in [0, 1], BLEU/chrF in [0, 100], losses, step counts and
    entropies >= 0; a metric measured at a length (``test/acc@16``) has the range of its base metric."""
    base = metric.split("@")[0]
    name = base.split("/")[-1]
    if name.endswith(("bleu", "chrf")):
        return 0.0, 100.0
    if name.endswith(("acc", "f1", "ece", "precision", "recall", "auc")):
        return 0.0, 1.0
    if lower_is_better(base) or name == "entropy":
        return 0.0, math.inf
    return -math.inf, math.inf


@dataclass
class Stat:
    """Mean, sample std and 95% t-interval of one metric over the seeds of one group; the interval
    is clipped to ``bounds``, the metric's range (an accuracy's interval never passes 1)."""

    values: list[float]
    bounds: tuple[float, float] = (-math.inf, math.inf)

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
        """Half-width of the unclipped 95% interval: ``t_{0.975, n-1} * std / sqrt(n)``."""
        if self.n < 2:
            return math.nan
        from scipy.stats import t

        return float(t.ppf(1 - ALPHA / 2, self.n - 1)) * self.std / math.sqrt(self.n)

    @property
    def ci(self) -> tuple[float, float]:
        lo, hi = self.bounds
        h = self.half_width
        if math.isnan(h):
            return math.nan, math.nan
        return max(lo, self.mean - h), min(hi, self.mean + h)


@dataclass
class Rank:
    """Where a group stands on one metric among its task's groups."""

    best: bool = False
    tied: bool = False  # not distinguishable from the best (Holm-corrected Welch p >= ALPHA)
    p: float | None = None  # Welch's p against the best, uncorrected
    p_holm: float | None = None
    at_chance: bool | None = None  # the interval reaches the task's chance level


@dataclass
class Group:
    """One configuration of one task, aggregated over its completed runs."""

    split: str
    key: tuple[Any, ...]  # the --group-by values, then the values of the task's split keys
    runs: list[Run]
    stats: dict[str, Stat]
    duration: float | None
    ranks: dict[str, Rank] = field(default_factory=dict)
    metric: str = ""  # the metric that ranks this task's groups
    chance: float | None = None  # the task's chance level of ``metric`` (accuracy only)

    def rank(self, metric: str | None = None) -> Rank:
        return self.ranks.get(metric or self.metric) or Rank()

    @property
    def best(self) -> bool:
        return self.rank().best

    @property
    def tied(self) -> bool:
        return self.rank().tied

    @property
    def p_value(self) -> float | None:
        return self.rank().p


@dataclass
class Verdict:
    """A task's one-line answer and the keys its runs were split on."""

    text: str
    split_keys: list[str]
    comparisons: int = 0


# A task without the chosen metric is ranked by the first of these it has (translation: BLEU).
PRIMARY_METRICS = ("test/acc", "test/bleu")


def ranking_metric(present: set[str], metric: str) -> str:
    """``metric`` if the task logs it, else the task's primary metric (``PRIMARY_METRICS``)."""
    if metric in present:
        return metric
    return next((m for m in PRIMARY_METRICS if m in present), metric)


def split_metrics(groups: list[Group]) -> list[str]:
    """One task's metric columns: its ranking metric first, then its other test metrics."""
    present = sorted({m for g in groups for m in g.stats if m.startswith("test/") and m != CHANCE})
    ranking = groups[0].metric if groups else ""
    return [ranking, *[m for m in present if m != ranking]] if ranking else present


# --------------------------------------------------------------------------------------------
# reading


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _read_record(path: Path) -> Run:
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or any(k not in data for k in RECORD_KEYS):
            raise ValueError("lacks keys")
    except (OSError, ValueError) as e:
        return Run(str(path.parent.resolve()), "corrupt", error=f"{path}: unreadable run record ({e})")
    # Hand-edited records: anything of the wrong type is read as absent, never a traceback.
    raw = data["metrics"] if isinstance(data["metrics"], dict) else {}
    metrics = {
        str(k): float(v) for k, v in raw.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    duration = data["duration_s"]
    return Run(
        origin=origin(data),
        run_dir=str(path.parent.resolve()),
        status=str(data["status"]),
        config=data["config"] if isinstance(data["config"], dict) else {},
        metrics=metrics,
        duration_s=float(duration)
        if isinstance(duration, int | float) and not isinstance(duration, bool)
        else None,
        error=None if data["error"] is None else str(data["error"]),
    )


def origin(record: dict[str, Any]) -> dict[str, str]:
    """What produced a record, as short strings: ``code`` (attn version, git commit, dirty diff hash),
    ``torch``, ``lightning``, ``device`` (name, precision) and ``host``; unknown parts are absent."""
    prov = record.get("provenance") if isinstance(record.get("provenance"), dict) else {}
    device = record.get("device") if isinstance(record.get("device"), dict) else {}
    libs = prov.get("libraries") if isinstance(prov.get("libraries"), dict) else {}
    git = prov.get("git") if isinstance(prov.get("git"), dict) else {}
    out: dict[str, str] = {}
    if prov.get("attn") or git:
        code = str(prov.get("attn") or "?")
        if git.get("commit"):
            code += f" @ {str(git['commit'])[:10]}"
            if git.get("dirty"):
                code += f" + diff {str(git.get('diff_sha1') or '?')[:8]}"
        out["code"] = code
    for lib in ("torch", "lightning"):
        if libs.get(lib):
            out[lib] = str(libs[lib])
    if device.get("name") or device.get("device"):
        out["device"] = f"{device.get('name') or device.get('device')} ({device.get('precision', '?')})"
    if prov.get("host"):
        out["host"] = str(prov["host"])
    return out


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
    # A run killed before its first record still has the config.yaml written when it started.
    for path in sorted(root.rglob("config.yaml")):
        parts = path.relative_to(root).parts
        run_dir = str(path.parent.resolve())
        if "attempts" in parts or ".hydra" in parts or run_dir in runs:
            continue
        if (path.parent / "checkpoints").is_dir() or (path.parent / "csv").is_dir():
            runs[run_dir] = Run(run_dir, "no record", error="no results.json (killed before it was written?)")
    for manifest_path in sorted(root.rglob("sweep.json")):
        try:
            manifest = json.loads(manifest_path.read_text())
            trials = manifest["trials"]
        except (OSError, ValueError, KeyError, TypeError):
            runs[str(manifest_path)] = Run(
                str(manifest_path.parent), "corrupt", error=f"{manifest_path}: unreadable sweep manifest"
            )
            continue
        for i, t in enumerate(trials if isinstance(trials, list) else []):
            if not isinstance(t, dict) or not isinstance(t.get("run_dir"), str):
                where = f"{manifest_path}: trial {i}"
                runs[where] = Run(where, "corrupt", error=f"{where} has no run_dir")
                continue
            run_dir = str(trial_dir(manifest_path.parent, t).resolve())
            if run_dir not in runs or runs[run_dir].status == "no record":
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


def welch_p(a: Stat, b: Stat, floor: float = 0.0) -> float:
    """Two-sided Welch t-test p-value of two groups' means; ``nan`` when it cannot be tested.

    ``floor`` is the metric's resolution (one test example of an accuracy, say): each group's std is
    taken as at least that, so that seeds that agree exactly do not make a one-example difference
    look certain. Without a floor, two groups with no spread at all are untestable (``nan``) unless
    their means are equal (p = 1). Fewer than two runs in either group: ``nan``.
    """
    if a.n < 2 or b.n < 2:
        return math.nan
    if a.mean == b.mean:
        return 1.0
    # Spread below float rounding ([0.9995] * 3 has a std of 1e-16, not 0) is no spread.
    tiny = 1e-9 * max(1.0, abs(a.mean), abs(b.mean))
    sa, sb = (max(s.std if s.std > tiny else 0.0, floor) for s in (a, b))
    va, vb = sa**2 / a.n, sb**2 / b.n
    if va + vb == 0:
        return math.nan
    from scipy.stats import t

    stat = (a.mean - b.mean) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    return float(2 * t.sf(abs(stat), df))


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (``nan`` entries stay out of the family)."""
    valid = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    out = [math.nan] * len(pvalues)
    running, m = 0.0, len(valid)
    for rank, (p, i) in enumerate(valid):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def resolution(metric: str, runs: list[Run]) -> float:
    """The smallest step a test rate can take: one test example (``1 / test/examples``); else 0."""
    if metric_range(metric) != (0.0, 1.0) or not metric.startswith("test/"):
        return 0.0
    counts = [r.metrics.get("test/examples") for r in runs]
    if not counts or any(not c for c in counts):
        return 0.0
    return 1.0 / min(counts)


def _flat(node: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(node, dict):
        out: dict[str, str] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(node, sort_keys=True, default=str)}


def _neutral(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in NEUTRAL_KEYS)


def split_keys(runs: list[Run], group_by: tuple[str, ...]) -> list[str]:
    """Config keys (besides ``group_by`` and ``NEUTRAL_KEYS``) that differ between runs that
    ``group_by`` alone would pool: epochs, model size, a debug preset, ...

    A key that equals the run's seed in every run (``task.datamodule.seed: ${seed}``) follows the
    seed and is pooled with it.
    """
    grouped = {ALIASES.get(g, g) for g in group_by}
    flats = [
        {
            k: v
            for k, v in _flat(r.config).items()
            if not _neutral(k) and not any(k == g or k.startswith(g + ".") for g in grouped)
        }
        for r in runs
    ]
    seeds = [json.dumps(r.get("seed")) for r in runs]
    keys = set().union(*flats)
    follows_seed = {k for k in keys if all(f.get(k) == s for f, s in zip(flats, seeds, strict=True))}
    buckets: dict[tuple, list[dict[str, str]]] = {}
    for r, flat in zip(runs, flats, strict=True):
        buckets.setdefault(tuple(_value(r, g) for g in group_by), []).append(flat)
    varying = {
        key
        for fs in buckets.values()
        for key in keys - follows_seed
        if len({f.get(key, "<absent>") for f in fs}) > 1
    }
    return sorted(varying)


def _value(run: Run, key: str) -> Any:
    value = run.get(key)
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value


def rank(groups: list[Group], metric: str, floor: float = 0.0) -> tuple[str, int]:
    """Mark best/tied groups on ``metric`` (see the module docstring); the verdict and the number of
    comparisons made."""
    for g in groups:
        g.ranks[metric] = Rank()
    if is_counter(metric):
        return f"{metric} counts things; it is not ranked", 0
    if is_descriptive(metric):
        return f"{metric} describes the attention, it is neither better nor worse; it is not ranked", 0
    scored = [g for g in groups if metric in g.stats]
    eligible = [g for g in scored if g.stats[metric].n >= 2]
    chance = (
        next((g.chance for g in scored if g.chance is not None), None)
        if metric.split("@")[0] == "test/acc"
        else None
    )
    if chance is not None:
        for g in eligible:
            g.ranks[metric].at_chance = g.stats[metric].ci[0] <= chance
    if not eligible:
        return f"no group has 2 or more seeds of {metric}: nothing is ranked", 0
    sign = -1 if lower_is_better(metric) else 1
    top = max(eligible, key=lambda g: sign * g.stats[metric].mean)
    others = [g for g in eligible if g is not top]
    raw = [welch_p(top.stats[metric], g.stats[metric], floor) for g in others]
    adjusted = holm(raw)
    for g, p, q in zip(others, raw, adjusted, strict=True):
        r = g.ranks[metric]
        r.p, r.p_holm = (None if math.isnan(p) else p), (None if math.isnan(q) else q)
        r.tied = r.p_holm is not None and r.p_holm >= ALPHA
    label = " / ".join(map(str, top.key))
    where = f"{metric} {top.stats[metric].mean:.4f}"
    if chance is not None and all(g.ranks[metric].at_chance for g in eligible):
        return (
            f"every group is at chance level ({metric} {chance:.4f}; no 95% interval lies above it):"
            " nothing was learned, so nothing is ranked",
            len(others),
        )
    if not others:
        return f"one group has 2 or more seeds ({label}, {where}): nothing to compare it with", 0
    differ = [g for g in others if g.ranks[metric].p_holm is not None and g.ranks[metric].p_holm < ALPHA]
    test = f"Welch's t-test, Holm-corrected over {len(others)} comparison(s), α = {ALPHA}"
    if not differ:
        return (
            f"no group differs from the one with the best mean ({label}, {where}; {test}): nothing is ranked",
            len(others),
        )
    top.ranks[metric].best = True
    tied = sum(g.ranks[metric].tied for g in others)
    untestable = len(others) - len(differ) - tied
    extra = f", {untestable} untestable (no spread)" if untestable else ""
    return (
        f"best: {label} ({where}); {len(differ)} of {len(others)} other group(s) differ from it,"
        f" {tied} indistinguishable{extra} ({test})",
        len(others),
    )


def aggregate(
    runs: list[Run], metric: str, group_by: tuple[str, ...] = DEFAULT_GROUP_BY, split_by: str = "task"
) -> dict[str, list[Group]]:
    """Completed runs grouped per split (task) and configuration, every metric ranked (the verdict
    lines come from :func:`aggregate_with_verdicts`)."""
    return aggregate_with_verdicts(runs, metric, group_by, split_by)[0]


def aggregate_with_verdicts(
    runs: list[Run], metric: str, group_by: tuple[str, ...] = DEFAULT_GROUP_BY, split_by: str = "task"
) -> tuple[dict[str, list[Group]], dict[str, Verdict]]:
    """:func:`aggregate`, plus each split's verdict on its ranking metric and the keys it split on."""
    per_split: dict[str, list[Run]] = {}
    for run in runs:
        if run.status == "completed":
            per_split.setdefault(str(run.get(split_by)), []).append(run)
    out: dict[str, list[Group]] = {}
    verdicts: dict[str, Verdict] = {}
    for split, members in sorted(per_split.items()):
        extra = [k for k in split_keys(members, group_by) if k != ALIASES.get(split_by, split_by)]
        buckets: dict[tuple, list[Run]] = {}
        for run in members:
            key = tuple(_value(run, k) for k in (*group_by, *extra))
            buckets.setdefault(key, []).append(run)
        rows = []
        for key, group_runs in buckets.items():
            names = sorted({m for r in group_runs for m in r.metrics})
            stats = {
                m: Stat([r.metrics[m] for r in group_runs if m in r.metrics], metric_range(m)) for m in names
            }
            durations = [r.duration_s for r in group_runs if r.duration_s is not None]
            chance = stats[CHANCE].mean if CHANCE in stats else None
            rows.append(
                Group(split, key, group_runs, stats,
                      sum(durations) / len(durations) if durations else None, chance=chance)
            )  # fmt: skip
        rows.sort(key=lambda g: tuple(_sortable(k) for k in g.key))
        ranked_by = ranking_metric({m for g in rows for m in g.stats}, metric)
        text, k = "", 0
        for m in sorted({m for g in rows for m in g.stats}):
            line, n = rank(rows, m, resolution(m, members))
            if m == ranked_by:
                text, k = line, n
        for g in rows:
            g.metric = ranked_by
        verdicts[split] = Verdict(text, extra, k)
        out[split] = rows
    return out, verdicts


def _sortable(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | float) else (1, str(value))


# --------------------------------------------------------------------------------------------
# writing


def _fmt(x: float | None, digits: int = 4) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _cell(stat: Stat | None, metric: str = "") -> str:
    if stat is None:
        return "–"
    if is_counter(metric):  # a count: its value, or the range over seeds
        lo, hi = min(stat.values), max(stat.values)
        return f"{lo:g}" if lo == hi else f"{lo:g}–{hi:g}"
    if stat.n < 2:
        return f"{_fmt(stat.mean)} (n=1)"
    lo, hi = stat.ci
    return f"{_fmt(stat.mean)} ± {_fmt(stat.std)} [{_fmt(lo)}, {_fmt(hi)}]"


def _mark(g: Group) -> str:
    r = g.rank()
    mark = "best" if r.best else ("≈ best" if r.tied else "")
    if r.p_holm is not None:
        mark = f"{mark} (p={r.p:.3f}, Holm {r.p_holm:.3f})".strip()
    if r.at_chance:
        mark = f"{mark}; at chance".strip("; ")
    return mark


def table_rows(
    groups: list[Group], group_by: tuple[str, ...], metrics: list[str], split_on: list[str] | None = None
) -> list[list[str]]:
    """Header and rows of one task's summary table (strings); ``split_on``: the task's split keys."""
    split_on = split_on or []
    chance = any(g.chance is not None for g in groups)
    header = [*group_by, *split_on, "n"]
    header += [m if is_counter(m) else f"{m} mean ± std [95% CI]" for m in metrics]
    header += [*(["chance"] if chance else []), "train s", "vs best"]
    rows = [header]
    for g in groups:
        n = max((s.n for s in g.stats.values()), default=len(g.runs))
        cells = [*map(str, g.key), str(n), *[_cell(g.stats.get(m), m) for m in metrics]]
        cells += [_fmt(g.chance)] if chance else []
        rows.append([*cells, _fmt(g.duration, 1), _mark(g)])
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
    verdicts: dict[str, Verdict] = field(default_factory=dict)


def report_metrics(runs: list[Run], metric: str) -> list[str]:
    """The metric columns: the chosen metric first, then the other test metrics present."""
    present = sorted({m for r in runs if r.status == "completed" for m in r.metrics})
    rest = [m for m in present if m not in (metric, CHANCE) and m.startswith("test/")]
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
    groups, verdicts = aggregate_with_verdicts(runs, metric, group_by, split_by)
    metrics = report_metrics(runs, metric)
    problems = [r for r in runs if r.status != "completed"]
    files: list[Path] = []
    images: dict[str, list[Path]] = {}
    if plots and completed:
        from .plots import draw_all

        images = draw_all(runs, groups, group_by, metric, out)
        files += [p for ps in images.values() for p in ps]
    rep = Report(groups, runs, problems, files, metrics, command, verdicts)
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
    keys = sorted({k for v in rep.verdicts.values() for k in v.split_keys})
    head = ["task", *group_by, *keys, "metric", "n", "mean", "std", "ci_low", "ci_high", "chance"]
    w.writerow([*head, "best", "tied", "p_vs_best", "p_holm"])

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
                w.writerow([*row, num(hi), num(chance), r.best, r.tied, num(r.p), num(r.p_holm)])
    return [runs_csv, _write_text(out / "summary.csv", buf.getvalue())]


def _counts(rep: Report) -> str:
    by: dict[str, int] = {}
    for r in rep.runs:
        by[r.status] = by.get(r.status, 0) + 1
    detail = ", ".join(f"{n} {s}" for s, n in sorted(by.items()))
    return f"{len(rep.runs)} runs read ({detail})"


CAPTION = (
    "Cells: mean ± sample std [95% t-interval over seeds, clipped to the metric's range: [0, 1] for rates,"
    " [0, 100] for BLEU/chrF, ≥ 0 for losses]; counters (examples, steps, epochs) show their value or range."
    " A group pools the runs whose configs are equal except for the seed and keys that cannot change a"
    " result (run name, logger, progress bar, threads); any other key that differs becomes a column."
    " best: the best mean among groups with 2 or more seeds, marked only when some group differs from it"
    f" (Welch's t-test against it, Holm-corrected over the task's comparisons, α = {ALPHA}; for rates each"
    " group's std counts as at least one test example) and not every group is at chance level; ≈ best:"
    f" Holm-adjusted p ≥ {ALPHA}; at chance: the interval reaches the task's chance level (majority class)."
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
    if v and v.text:
        lines.append(f"Verdict: {v.text}.")
    return lines


def _markdown(rep: Report, group_by: tuple[str, ...], images: dict[str, list[Path]], out: Path) -> str:
    lines = ["# attn report", "", f"Generated {now_iso()} by `{rep.command}`.", "", _counts(rep) + ".", ""]
    lines += [CAPTION, ""]
    for split, groups in rep.groups.items():
        own = rep.verdicts[split].split_keys if split in rep.verdicts else []
        lines += [f"## task: {split}", ""]
        for t in task_lines(rep, split):
            lines += [f"**{t}**" if t.startswith("Verdict") else t, ""]
        lines += [_markdown_table(table_rows(groups, group_by, split_metrics(groups), own)), ""]
        for img in images.get(split, []):
            lines.append(f"![{img.stem}]({img.relative_to(out).as_posix()})")
        lines.append("")
    for img in images.get("", []):
        lines.append(f"![{img.stem}]({img.relative_to(out).as_posix()})")
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

    tasks, verdicts = {}, {}
    rows = provenance_rows(rep.runs)
    for split, groups in rep.groups.items():
        v = rep.verdicts.get(split) or Verdict("", [])
        tasks[split] = [group(g, v.split_keys) for g in groups]
        verdicts[split] = {"verdict": v.text, "split_on": v.split_keys, "comparisons": v.comparisons}
    return {
        "command": rep.command,
        "runs": len(rep.runs),
        "problems": [{"run_dir": r.run_dir, "status": r.status, "error": r.error} for r in rep.problems],
        "metric": rep.metrics[0],
        "verdicts": verdicts,
        "tasks": tasks,
        "provenance": [dict(zip(rows[0], row, strict=True)) for row in rows[1:]],
        "warnings": mixed_origins(rep.groups),
    }
