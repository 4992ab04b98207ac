"""Aggregating runs for the report: completed runs grouped per task and configuration, pooled over seeds
only when their configs are otherwise equal (``NEUTRAL_KEYS`` aside: a key that differs inside a group
becomes a column of its own), every metric summarised (:class:`attn.runner.stats.Stat`) and ranked: per
task and metric, the group with the best mean is compared with every other group of two or more seeds
(Welch's t-test, Holm-corrected); it is marked best only when some group differs from it and not every
group is at chance level, and each task gets a one-line verdict that says so plainly."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from .collect import ALIASES, Run
from .stats import (
    ALPHA,
    BOOTSTRAP_MIN_N,
    CHANCE,
    POWER_MIN_N,
    Paired,
    Stat,
    Success,
    count_of,
    fisher_p,
    holm,
    is_counter,
    is_descriptive,
    lower_is_better,
    metric_order,
    metric_range,
    optimism,
    prob_improvement,
    prob_improvement_ci,
    published_rule,
    resolution,
    seeds_for_power,
    solved,
    welch_p,
)

DEFAULT_GROUP_BY = ("attention", "softmax", "temperature")
# Config keys (and key prefixes) that cannot change a run's result: runs differing only in these and
# the seed are pooled. Any other key that differs between the runs of a group splits the group.
NEUTRAL_KEYS = (
    "name", "seed", "runs_root", "threads", "logger", "trainer.enable_progress_bar",
    "trainer.enable_model_summary", "trainer.log_every_n_steps", "trainer.pause_at",
)  # fmt: skip


@dataclass
class Rank:
    """Where a group stands on one metric among its task's groups."""

    best: bool = False
    top: bool = False  # the best mean of the groups with 2+ seeds (what the others are compared with)
    tied: bool = False  # not distinguishable from the best (Holm-corrected Welch p >= ALPHA)
    p: float | None = None  # Welch's p against the best, uncorrected
    p_holm: float | None = None
    at_chance: bool | None = None  # the interval reaches the task's chance level
    # Against the group with the best mean (the ranking metric only): P(best > this) over pairs of runs
    # with its bootstrap interval, and the seeds per group a Welch test would need to separate the two.
    p_improve: float | None = None
    p_improve_ci: tuple[float, float] | None = None  # None: fewer runs than BOOTSTRAP_MIN_N in a group
    seeds_needed: int | None = None
    power_alpha: float | None = None  # the level the seeds are sized at: the verdict's (Holm's first step)
    too_few_for_power: bool = False  # not separated, but too few runs to size the effect


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
    duplicates: list[Run] = field(default_factory=list)  # copies of a counted run's config and seed
    success: Success | None = None  # runs past task.solved_at on the ranking metric (a lottery, if split)
    # A tuned arm's ranking metric as the published protocol reports it (the best test mean over its tuning
    # candidates), the candidates it had, and how much it overstates the held-out mean (see stats).
    published: float | None = None
    published_from: int = 0
    optimism: float | None = None

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
    present = {m for g in groups for m in g.stats if m.startswith("test/") and m != CHANCE}
    present = sorted(present, key=metric_order)
    ranking = groups[0].metric if groups else ""
    return [ranking, *[m for m in present if m != ranking]] if ranking else present


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
    alone = [g for g in scored if g.stats[metric].n < 2]
    left_out = (
        f"; left out (one seed, nothing to test): {', '.join(' / '.join(map(str, g.key)) for g in alone)}"
        if alone
        else ""
    )
    chance = (
        next((g.chance for g in scored if g.chance is not None), None)
        if metric.split("@")[0] == "test/acc"
        else None
    )
    if chance is not None:
        for g in eligible:
            # a group some of whose runs solved the task is a lottery, not at chance, whatever its interval
            lottery = g.success is not None and g.metric == metric and g.success.k > 0
            g.ranks[metric].at_chance = g.stats[metric].ci[0] <= chance and not lottery
    if not eligible:
        return f"no group has 2 or more seeds of {metric}: nothing is ranked", 0
    sign = -1 if lower_is_better(metric) else 1
    top = max(eligible, key=lambda g: sign * g.stats[metric].mean)
    top.ranks[metric].top = True
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
            f" nothing was learned, so nothing is ranked{left_out}",
            len(others),
        )
    if not others:
        return f"one group has 2 or more seeds ({label}, {where}): nothing to compare it with{left_out}", 0
    differ = [g for g in others if g.ranks[metric].p_holm is not None and g.ranks[metric].p_holm < ALPHA]
    test = f"Welch's t-test, Holm-corrected over {len(others)} comparison(s), α = {ALPHA}"
    if not differ:
        return (
            f"no group differs from the one with the best mean ({label}, {where}; {test}): nothing is"
            f" ranked{left_out}",
            len(others),
        )
    top.ranks[metric].best = True
    tied = sum(g.ranks[metric].tied for g in others)
    untestable = len(others) - len(differ) - tied
    extra = f", {untestable} untestable (no spread)" if untestable else ""
    return (
        f"best: {label} ({where}); {len(differ)} of {len(others)} other group(s) differ from it,"
        f" {tied} indistinguishable{extra} ({test}){left_out}",
        len(others),
    )


def successes(groups: list[Group], metric: str) -> list[float]:
    """Each group's success count on ``metric``, every run scored against its own ``task.solved_at`` (a run
    without one is not counted; a group none of whose runs has one gets no rate), and Fisher's exact test
    of every rate against the highest one, Holm-corrected. Returns the thresholds met, sorted."""
    used: set[float] = set()
    for g in groups:
        scored = [
            (r.metrics[metric], float(r.get("task.solved_at")))
            for r in g.runs
            if metric in r.metrics and _number(r.get("task.solved_at"))
        ]
        if scored:
            g.success = Success(sum(solved(v, t, metric) for v, t in scored), len(scored))
            used |= {t for _, t in scored}
    scored_groups = [g for g in groups if g.success is not None]
    if len(scored_groups) >= 2:
        top = max(scored_groups, key=lambda g: g.success.rate)
        others = [g for g in scored_groups if g is not top]
        raw = [fisher_p(top.success.k, top.success.n, g.success.k, g.success.n) for g in others]
        for g, p, q in zip(others, raw, holm(raw), strict=True):
            g.success.p, g.success.p_holm = p, q
    return sorted(used)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def lottery_text(groups: list[Group], thresholds: list[float]) -> str:
    """The verdict's words for groups whose runs split into solved and unsolved ("3 of 6 runs solved it");
    runs recorded with different thresholds are each scored against their own, and the verdict says so."""
    split = [g for g in groups if g.success is not None and g.success.split]
    mixed = (
        f"; runs were scored against their own solved_at ({', '.join(f'{t:g}' for t in thresholds)})"
        if len(thresholds) > 1
        else ""
    )
    if not split:
        return mixed
    parts = [f"{' / '.join(map(str, g.key))}: {g.success.k} of {g.success.n} runs solved it" for g in split]
    past = f"solved_at = {thresholds[0]:g}" if len(thresholds) == 1 else "its run's solved_at"
    return f"; a lottery (runs past {past} or not) in {'; '.join(parts)}{mixed}"


def versus_best(groups: list[Group], metric: str) -> None:
    """For the ranking metric: P(best > group), with its bootstrap interval where both groups have
    :data:`~attn.runner.stats.BOOTSTRAP_MIN_N` runs, and, where the two are not told apart, the seeds per
    group that would separate the observed difference with 80% power at the level the verdict tests the
    first of its comparisons at (Holm's first step: ``ALPHA / comparisons``)."""
    eligible = [g for g in groups if metric in g.stats and g.stats[metric].n >= 2]
    if len(eligible) < 2 or is_counter(metric) or is_descriptive(metric):
        return
    sign = -1 if lower_is_better(metric) else 1
    top = max(eligible, key=lambda g: sign * g.stats[metric].mean)
    best = [sign * v for v in top.stats[metric].values]
    alpha = ALPHA / (len(eligible) - 1)
    for g in eligible:
        if g is top:
            continue
        r, values = g.ranks[metric], [sign * v for v in g.stats[metric].values]
        r.p_improve = prob_improvement(best, values)
        enough = min(len(best), len(values)) >= BOOTSTRAP_MIN_N
        r.p_improve_ci = prob_improvement_ci(best, values) if enough else None
        separated = r.p_holm is not None and r.p_holm < ALPHA
        r.power_alpha = alpha
        if not separated:
            r.seeds_needed = seeds_for_power(top.stats[metric], g.stats[metric], alpha=alpha)
            r.too_few_for_power = min(len(best), len(values)) < POWER_MIN_N


def aggregate(
    runs: list[Run], metric: str, group_by: tuple[str, ...] = DEFAULT_GROUP_BY, split_by: str = "task"
) -> dict[str, list[Group]]:
    """Completed runs grouped per split (task) and configuration, every metric ranked (the verdict
    lines come from :func:`aggregate_with_verdicts`)."""
    return aggregate_with_verdicts(runs, metric, group_by, split_by)[0]


def aggregate_with_verdicts(
    runs: list[Run],
    metric: str,
    group_by: tuple[str, ...] = DEFAULT_GROUP_BY,
    split_by: str = "task",
    tuning: list[Run] | None = None,
) -> tuple[dict[str, list[Group]], dict[str, Verdict]]:
    """:func:`aggregate`, plus each split's verdict on its ranking metric and the keys it split on;
    ``tuning``: tuned sweeps' tuning runs, for what the published protocol would report
    (:func:`published_rules`)."""
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
        for key, pooled in buckets.items():
            group_runs, duplicates = _once_per_seed(pooled)
            names = sorted({m for r in group_runs for m in r.metrics})
            stats = {
                m: Stat([r.metrics[m] for r in group_runs if m in r.metrics], metric_range(m)) for m in names
            }
            durations = [r.duration_s for r in group_runs if r.duration_s is not None]
            chance = stats[CHANCE].mean if CHANCE in stats else None
            rows.append(
                Group(split, key, group_runs, stats, sum(durations) / len(durations) if durations else None,
                      chance=chance, duplicates=duplicates)
            )  # fmt: skip
        rows.sort(key=lambda g: tuple(_sortable(k) for k in g.key))
        ranked_by = ranking_metric({m for g in rows for m in g.stats}, metric)
        for g in rows:
            g.metric = ranked_by
        thresholds = successes(rows, ranked_by)
        text, k = "", 0
        for m in sorted({m for g in rows for m in g.stats}):
            line, n = rank(rows, m, resolution(m, [count_of(r.metrics, m) for r in members]))
            if m == ranked_by:
                text, k = line, n
        versus_best(rows, ranked_by)
        rows.sort(key=lambda g: _by_score(g, ranked_by))  # best first; the key's order breaks ties
        mine = [r for r in tuning or [] if str(r.get(split_by)) == split]
        text += lottery_text(rows, thresholds) + (published_rules(rows, mine, ranked_by) if mine else "")
        verdicts[split] = Verdict(text, extra, k)
        out[split] = rows
    return out, verdicts


def _by_score(g: Group, metric: str) -> tuple[int, float]:
    """Sort key: groups with ``metric`` first, best mean first (a metric of no direction keeps the order)."""
    s = g.stats.get(metric)
    if s is None or is_descriptive(metric) or is_counter(metric):
        return (1, 0.0)
    return (0, s.mean if lower_is_better(metric) else -s.mean)


# Second scores of the same checkpoint (test/adaptive_acc@N beside test/acc@N): prefix -> what differs.
SECOND_SCORES = {"test/adaptive_": "adaptive temperature", "test/logn_": "log-n scaling"}


@dataclass
class PairedComparison:
    """A group's runs scored two ways from the same checkpoints, paired by seed."""

    key: tuple[Any, ...]
    metric: str  # the score as trained, e.g. test/acc@64
    other: str  # the second score, e.g. test/adaptive_acc@64
    what: str  # what the second score changes
    result: Paired
    p_holm: float | None = None  # Holm-corrected over the task's family (None for descriptive metrics)


def holm_family(comparisons: list[PairedComparison]) -> str:
    """The family one task's paired p-values are Holm-corrected over, in words: its paired comparisons of
    metrics with a better direction (accuracies); entropies describe the attention and are not in it."""
    n = sum(not is_descriptive(c.metric) for c in comparisons)
    return f"this task's {n} paired comparison(s) of scores (entropies, which describe, are not tested)"


def paired_comparisons(groups: list[Group]) -> list[PairedComparison]:
    """Every second score (:data:`SECOND_SCORES`) against its first, per group, over the runs that have
    both. One Holm family per task (:func:`holm_family`): the comparisons of metrics with a better
    direction; a descriptive metric's pair (an entropy) gets its difference and interval, no test."""
    out = []
    for g in groups:
        names = sorted({m for r in g.runs for m in r.metrics})
        for prefix, what in SECOND_SCORES.items():
            for other in (m for m in names if m.startswith(prefix)):
                base = "test/" + other[len(prefix) :]
                runs = [r for r in g.runs if base in r.metrics and other in r.metrics]
                if runs:
                    pair = Paired([r.metrics[base] for r in runs], [r.metrics[other] for r in runs])
                    out.append(PairedComparison(g.key, base, other, what, pair))
    tested = [c for c in out if not is_descriptive(c.metric)]
    adjusted = holm([c.result.p for c in tested])
    for c, p in zip(tested, adjusted, strict=True):
        c.p_holm = None if math.isnan(p) else p
    return out


def published_rules(groups: list[Group], tuning: list[Run], metric: str) -> str:
    """For every group of a tuned sweep's final runs, what the published protocol would have reported
    (:func:`attn.runner.stats.published_rule` over its arm's tuning runs that recorded ``metric``; a
    candidate halving dropped has none) and its optimism against the group's held-out mean. Returns a
    verdict sentence when the published rule would rank the groups differently ('' otherwise)."""
    higher = not lower_is_better(metric)
    by_arm: dict[str, dict[str, list[float]]] = {}
    for r in tuning:
        if r.arm and metric in r.metrics and r.status == "completed":
            key = json.dumps(r.candidate, sort_keys=True)
            by_arm.setdefault(r.arm, {}).setdefault(key, []).append(r.metrics[metric])
    scored = []
    for g in groups:
        arms = {r.arm for r in g.runs if r.arm}
        s = g.stats.get(metric)
        if len(arms) != 1 or s is None or not by_arm.get(next(iter(arms))):
            continue
        candidates = by_arm[next(iter(arms))]
        g.published = published_rule(list(candidates.values()), higher)
        g.published_from = len(candidates)
        g.optimism = optimism(g.published, s.mean, higher)
        scored.append(g)
    if len(scored) < 2:
        return ""
    sign = 1 if higher else -1
    held = max(scored, key=lambda g: sign * g.stats[metric].mean)
    pub = max(scored, key=lambda g: sign * g.published)
    if held is pub:
        return ""
    name = " / ".join
    return (
        f"; the published rule (the best {metric} over the tuning candidates, on the tuning seeds) would put"
        f" {name(map(str, pub.key))} first ({pub.published:.4f}), where the held-out estimate puts"
        f" {name(map(str, held.key))} first"
    )


def _once_per_seed(runs: list[Run]) -> tuple[list[Run], list[Run]]:
    """The runs of one group with each seed once (the first found), and the copies set aside: runs of
    one group share their config up to neutral keys, so two with one seed and one origin (code, libraries,
    device) are one observation (a sweep run twice into one folder), not two. Runs of one seed from other
    code or devices are kept (the report warns that it mixes them); runs without a seed are all kept."""
    kept, copies, seen = [], [], set()
    for r in runs:
        seed = r.get("seed")
        key = json.dumps([seed, r.origin], sort_keys=True, default=str)
        if seed is not None and key in seen:
            copies.append(r)
            continue
        seen.add(key)
        kept.append(r)
    return kept, copies


def _sortable(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | float) else (1, str(value))
