"""The report's statistics, as pure functions over numbers (no files, no plots): a metric's range and
direction, mean / std / 95% t-interval over seeds, Welch's t-test, Holm's correction, a rate's
resolution, paired differences of two scores of the same runs. Quantiles and tests come from scipy."""

from __future__ import annotations

import functools
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any

ALPHA = 0.05
CHANCE = "test/chance_acc"  # majority-class accuracy of the test split, logged by classification tasks


@dataclass(frozen=True)
class MetricKind:
    """What a metric measures, and so how the report treats it: ``better`` is ``"higher"``, ``"lower"``
    or ``None`` (descriptive: shown with its interval, never ranked); ``bounds`` clip its intervals;
    ``counter`` metrics count things (shown as a value or range, no interval)."""

    name: str
    better: str | None
    bounds: tuple[float, float] = (-math.inf, math.inf)
    counter: bool = False


RATE = MetricKind("rate", "higher", (0.0, 1.0))
ERROR_RATE = MetricKind("error rate", "lower", (0.0, 1.0))
SCORE_100 = MetricKind("score out of 100", "higher", (0.0, 100.0))
LOSS = MetricKind("loss", "lower", (0.0, math.inf))
STEPS_TO = MetricKind("steps to a share of the final value", "lower", (0.0, math.inf))
ENTROPY = MetricKind("entropy (describes the attention)", None, (0.0, math.inf))
SHARE = MetricKind("share (describes the attention)", None, (0.0, 1.0))
REFERENCE = MetricKind("reference level of the task (chance, a baseline)", None, (0.0, 1.0))
COUNT = MetricKind("count", None, (0.0, math.inf), counter=True)
MEASURE = MetricKind("measurement (describes the run)", None, (0.0, math.inf))
UNKNOWN = MetricKind("of no known kind", None)

# Every metric attn writes, by its base name: the last part of the name without ``@<length>``, the
# ``/l<layer>`` of per-layer values and the prefixes of second scores and bests (``test/adaptive_acc@16``,
# ``test/entropy@16/l0`` and ``val/best_acc`` have the base names ``acc``, ``entropy`` and ``acc``).
METRIC_KINDS: dict[str, MetricKind] = {
    **dict.fromkeys(
        ("acc", "seq_acc", "token_acc", "exact", "f1", "precision", "recall", "auc", "success_rate"), RATE
    ),
    **dict.fromkeys(("ece", "error"), ERROR_RATE),
    **dict.fromkeys(("bleu", "chrf"), SCORE_100),
    **dict.fromkeys(("loss", "perplexity"), LOSS),
    **dict.fromkeys(("steps_to_50pct", "steps_to_90pct"), STEPS_TO),
    "entropy": ENTROPY,
    **dict.fromkeys(("sink_rate", "max_weight"), SHARE),
    **dict.fromkeys(("chance_acc", "bow_acc", "bof_acc"), REFERENCE),
    **dict.fromkeys(("examples", "targets", "steps", "epochs"), COUNT),
    **dict.fromkeys(("grad_norm", "state_bytes", "duration_s"), MEASURE),
}
# Second scores of one checkpoint (``test/adaptive_acc@16`` beside ``test/acc@16``) and bests.
SCORE_PREFIXES = ("adaptive_", "logn_", "best_")


def base_name(metric: str) -> str:
    """A metric's base name (see :data:`METRIC_KINDS`): ``test/adaptive_entropy@16/l1`` -> ``entropy``."""
    parts = metric.split("/")
    last = parts[-1]
    if len(parts) >= 3 and last[:1] == "l" and last[1:].isdigit():  # a per-layer value: .../l<k>
        last = parts[-2]
    last = last.split("@")[0]
    for prefix in SCORE_PREFIXES:
        if last.startswith(prefix) and last[len(prefix) :] in METRIC_KINDS:
            return last[len(prefix) :]
    return last


def metric_order(name: str) -> tuple[Any, ...]:
    """Sort key for metric names with lengths in numeric order (``test/acc@16`` before ``test/acc@128``)."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def kind_of(metric: str) -> MetricKind:
    """The kind of ``metric`` from :data:`METRIC_KINDS`; :data:`UNKNOWN` (never ranked) for a name of no
    known kind."""
    name = base_name(metric)
    if name in METRIC_KINDS:
        return METRIC_KINDS[name]
    if name.startswith("steps_to_") and name.endswith("pct"):
        return STEPS_TO
    return UNKNOWN


def is_descriptive(metric: str) -> bool:
    """Whether ``metric`` has no better direction (an entropy, a task's reference level, a metric of no
    known kind): shown with mean ± CI, never ranked."""
    kind = kind_of(metric)
    return kind.better is None and not kind.counter


def is_counter(metric: str) -> bool:
    """Whether ``metric`` counts things (examples, steps, epochs) rather than measuring quality."""
    return kind_of(metric).counter


def lower_is_better(metric: str) -> bool:
    """Whether smaller values of ``metric`` are better (losses, calibration error, steps to a level)."""
    return kind_of(metric).better == "lower"


def metric_range(metric: str) -> tuple[float, float]:
    """The values ``metric`` can take (rates in [0, 1], BLEU/chrF in [0, 100], losses, step counts and
    entropies >= 0), from its kind."""
    return kind_of(metric).bounds


@dataclass
class Stat:
    """Mean, sample std and 95% t-interval of one metric over the seeds of one group; the interval
    is clipped to ``bounds``, the metric's range (an accuracy's interval never passes 1)."""

    values: list[float]
    bounds: tuple[float, float] = (-math.inf, math.inf)

    @functools.cached_property
    def iqm_interval(self) -> tuple[float, float]:
        """:func:`iqm_ci` of the values, computed once (the report's tables and CSV all show it)."""
        return iqm_ci(self.values)

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
        from scipy.stats import t  # scipy loads only when an interval is asked for

        return float(t.ppf(1 - ALPHA / 2, self.n - 1)) * self.std / math.sqrt(self.n)

    @property
    def ci(self) -> tuple[float, float]:
        lo, hi = self.bounds
        h = self.half_width
        if math.isnan(h):
            return math.nan, math.nan
        return max(lo, self.mean - h), min(hi, self.mean + h)


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


# Rates over whole sequences: their count is the sequences scored (``test/examples``), not the targets.
PER_SEQUENCE = ("exact", "seq_acc")


def counted_by(metric: str) -> tuple[str, ...]:
    """The metrics that may hold the count behind a test rate, in order of preference: the scored targets
    at its length (``test/targets@16`` for ``test/acc@16`` and ``test/adaptive_acc@16``), else the test
    examples (what records before ``test/targets`` hold)."""
    if base_name(metric) in PER_SEQUENCE:
        return ("test/examples",)
    _, at, length = metric.partition("@")
    length = length.split("/")[0]
    return (f"test/targets@{length}" if at else "test/targets", "test/examples")


def resolution(metric: str, counts: list[float | None]) -> float:
    """The smallest step a test rate can take: one of the things it counts (``1 / count``, the fewest of
    the runs' counts, :func:`counted_by`); else 0."""
    if metric_range(metric) != (0.0, 1.0) or not metric.startswith("test/"):
        return 0.0
    if not counts or any(not c for c in counts):
        return 0.0
    return 1.0 / min(counts)


def count_of(metrics: dict[str, float], metric: str) -> float | None:
    """One run's count behind ``metric`` (:func:`counted_by`), or None."""
    return next((metrics[c] for c in counted_by(metric) if c in metrics), None)


@dataclass
class Paired:
    """Two scores of the same runs (``a``, then ``b``, paired by seed): the mean of ``b - a``, its 95%
    t-interval and the paired t-test's two-sided p (scipy's ``ttest_rel``)."""

    a: list[float]
    b: list[float]

    @property
    def n(self) -> int:
        return len(self.a)

    @property
    def mean_a(self) -> float:
        return sum(self.a) / self.n

    @property
    def mean_b(self) -> float:
        return sum(self.b) / self.n

    @property
    def diffs(self) -> list[float]:
        return [y - x for x, y in zip(self.a, self.b, strict=True)]

    @property
    def mean(self) -> float:
        return sum(self.diffs) / self.n if self.n else math.nan

    @property
    def ci(self) -> tuple[float, float]:
        return Stat(self.diffs).ci if self.n >= 2 else (math.nan, math.nan)

    @property
    def p(self) -> float:
        """``nan`` below two pairs or when every pair differs by the same nonzero amount (no spread to
        test against); 1 when every pair is equal."""
        d = self.diffs
        if self.n < 2:
            return math.nan
        if all(x == 0 for x in d):
            return 1.0
        if max(d) - min(d) <= 1e-12 * max(1.0, max(abs(x) for x in d)):
            return math.nan
        from scipy.stats import ttest_rel

        return float(ttest_rel(self.b, self.a).pvalue)


# ------------------------------------------------------------------------------------------------
# lotteries, robust aggregates and power (scipy and statsmodels do the arithmetic)

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # a report is reproducible: the same runs give the same intervals
# The fewest runs per group for which the report shows a percentile-bootstrap interval (IQM, P(A > B)).
# Below it the interval covers far less than it says: simulated on normal data, the IQM's 95% percentile
# interval covers 78% of the time at n = 3, 90% at n = 5 and 92-94% from n = 10 on
# (tests/test_fair_stats.py re-simulates it).
BOOTSTRAP_MIN_N = 10
# The fewest runs per group for which the report sizes an effect for a power estimate: two values give
# a spread, but not one to plan a study with.
POWER_MIN_N = 3


@dataclass
class Success:
    """How many of a group's runs solved the task (main metric past ``task.solved_at``): the rate with its
    95% Wilson interval, and Fisher's exact test against the group with the highest rate."""

    k: int
    n: int
    p: float | None = None  # Fisher's exact test against the best rate, two-sided
    p_holm: float | None = None

    @property
    def rate(self) -> float:
        return self.k / self.n

    @property
    def ci(self) -> tuple[float, float]:
        return wilson(self.k, self.n)

    @property
    def split(self) -> bool:
        """Some runs solved it and some did not: a lottery."""
        return 0 < self.k < self.n


def wilson(k: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of ``k`` successes in ``n`` trials (scipy's ``binomtest``)."""
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=1 - ALPHA, method="wilson")
    return float(ci.low), float(ci.high)


def fisher_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided Fisher's exact test of two success rates ``k1/n1`` and ``k2/n2`` (scipy)."""
    from scipy.stats import fisher_exact

    return float(fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue)


def solved(value: float, threshold: float, metric: str) -> bool:
    """Whether one run's ``metric`` reached the task's ``solved_at`` threshold."""
    return value <= threshold if lower_is_better(metric) else value >= threshold


def iqm(values: list[float]) -> float:
    """The interquartile mean: the mean of the middle 50% (scipy's ``trim_mean`` cutting 25% each side,
    as rliable does)."""
    from scipy.stats import trim_mean

    return float(trim_mean(values, 0.25))


def _rng():
    import numpy as np

    return np.random.default_rng(BOOTSTRAP_SEED)


def iqm_ci(values: list[float]) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the IQM over seeds (scipy's ``bootstrap``, seeded); ``nan``
    below two values. (One task per group: the stratified bootstrap of rliable is this one stratum.)"""
    if len(values) < 2 or max(values) == min(values):
        return (math.nan, math.nan) if len(values) < 2 else (values[0], values[0])
    from scipy.stats import bootstrap, trim_mean

    res = bootstrap(
        (values,), lambda x, axis: trim_mean(x, 0.25, axis=axis), n_resamples=BOOTSTRAP_RESAMPLES,
        confidence_level=1 - ALPHA, method="percentile", random_state=_rng(),
    )  # fmt: skip
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def prob_improvement(a: list[float], b: list[float]) -> float:
    """P(A > B): the chance that a run of A beats a run of B (ties count half), over all pairs of runs;
    the Mann-Whitney U statistic divided by ``len(a) * len(b)``, as in rliable."""
    wins = sum((x > y) + 0.5 * (x == y) for x in a for y in b)
    return wins / (len(a) * len(b))


def prob_improvement_ci(a: list[float], b: list[float]) -> tuple[float, float]:
    """95% percentile-bootstrap interval of :func:`prob_improvement`, each group resampled on its own
    (scipy's ``bootstrap``, seeded); ``nan`` when a group has fewer than two runs."""
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    import numpy as np
    from scipy.stats import bootstrap

    def stat(x, y, axis):
        gt = (x[..., :, None] > y[..., None, :]).mean(axis=(-2, -1))
        eq = (x[..., :, None] == y[..., None, :]).mean(axis=(-2, -1))
        return gt + 0.5 * eq

    res = bootstrap(
        (np.asarray(a), np.asarray(b)), stat, n_resamples=BOOTSTRAP_RESAMPLES, paired=False,
        confidence_level=1 - ALPHA, method="percentile", random_state=_rng(),
    )  # fmt: skip
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def seeds_for_power(a: Stat, b: Stat, power: float = 0.8, alpha: float = ALPHA) -> int | None:
    """Seeds per group a two-sided two-sample t-test at level ``alpha`` (equal groups) needs to detect the
    observed difference of means with ``power`` (statsmodels' ``TTestIndPower``), the effect size being the
    difference over the pooled std (Cohen's d); None when there is no difference, no spread to size it, or
    fewer than :data:`POWER_MIN_N` runs in a group. The report passes the level its verdict tests at
    (Holm's first step, ``ALPHA / comparisons``)."""
    if a.n < POWER_MIN_N or b.n < POWER_MIN_N or a.mean == b.mean:
        return None
    pooled = math.sqrt(((a.n - 1) * a.std**2 + (b.n - 1) * b.std**2) / (a.n + b.n - 2))
    if pooled <= 1e-9 * max(1.0, abs(a.mean), abs(b.mean)):  # float rounding is no spread
        return None
    from statsmodels.stats.power import TTestIndPower

    d = abs(a.mean - b.mean) / pooled
    with warnings.catch_warnings():  # a tiny effect's root search warns; the result is checked below
        warnings.simplefilter("ignore")
        n = TTestIndPower().solve_power(
            effect_size=d, alpha=alpha, power=power, ratio=1.0, alternative="two-sided"
        )
    n = float(n)
    return max(2, math.ceil(n)) if math.isfinite(n) else None


# ------------------------------------------------------------------------------------------------
# the published protocol: selection and report on the same runs


def published_rule(candidates: list[list[float]], higher: bool = True) -> float:
    """What Zoology's and MAD's protocol reports for an arm: the best, over the tuning candidates, of the
    mean test value over the tuning seeds (the maximum of several noisy estimates, on the data it is
    reported on); ``candidates`` holds each candidate's test values. ``nan`` without any."""
    means = [sum(v) / len(v) for v in candidates if v]
    if not means:
        return math.nan
    return max(means) if higher else min(means)


def optimism(published: float, held_out: float, higher: bool = True) -> float:
    """How much better the published rule makes an arm look than its held-out estimate (the final seeds'
    mean at the values selected on validation): ``published - held_out`` for a metric where higher is
    better, ``held_out - published`` where lower is."""
    return published - held_out if higher else held_out - published
