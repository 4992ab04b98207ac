"""The report's statistics, as pure functions over numbers (no files, no plots): a metric's range and
direction, mean / std / 95% t-interval over seeds, Welch's t-test, Holm's correction, a rate's
resolution, paired differences of two scores of the same runs. Quantiles and tests come from scipy."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

ALPHA = 0.05
LOWER_IS_BETTER = ("loss", "ece", "error", "perplexity", "steps_to")
COUNTERS = ("/examples", "/steps", "/epochs")  # metrics that count things: no mean ± CI, no ranking
# Metric names that end so are rates in [0, 1] (intervals clipped there, a Welch floor of one example):
# accuracies, exact-match rates (test/exact: the share of sequences reproduced exactly), F1, ECE, ...
RATES = ("acc", "exact", "f1", "ece", "precision", "recall", "auc", "success_rate")
CHANCE = "test/chance_acc"  # majority-class accuracy of the test split, logged by classification tasks


def is_descriptive(metric: str) -> bool:
    """Whether ``metric`` describes the model (attention entropy, the chance level) without a better
    direction: shown with mean ± CI, never ranked."""
    return "/entropy" in metric or metric == CHANCE


def is_counter(metric: str) -> bool:
    """Whether ``metric`` counts things (examples, steps, epochs) rather than measuring quality."""
    return metric.endswith(COUNTERS)


def lower_is_better(metric: str) -> bool:
    """Whether smaller values of ``metric`` are better (losses, calibration error)."""
    return any(word in metric.split("/")[-1] for word in LOWER_IS_BETTER)


def metric_range(metric: str) -> tuple[float, float]:
    """The values ``metric`` can take: rates (:data:`RATES`) in [0, 1], BLEU/chrF in [0, 100], losses,
    step counts and entropies >= 0; a metric measured at a length (``test/acc@16``) has the range of its
    base metric."""
    base = metric.split("@")[0]
    name = base.split("/")[-1]
    if name.endswith(("bleu", "chrf")):
        return 0.0, 100.0
    if name.endswith(RATES):
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


def resolution(metric: str, examples: list[float | None]) -> float:
    """The smallest step a test rate can take: one test example (``1 / test/examples``, the fewest of
    the runs' ``examples``); else 0."""
    if metric_range(metric) != (0.0, 1.0) or not metric.startswith("test/"):
        return 0.0
    counts = examples
    if not counts or any(not c for c in counts):
        return 0.0
    return 1.0 / min(counts)


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


def seeds_for_power(a: Stat, b: Stat, power: float = 0.8) -> int | None:
    """Seeds per group a two-sided two-sample t-test (α = 0.05, equal groups) needs to detect the observed
    difference of means with ``power`` (statsmodels' ``TTestIndPower``), the effect size being the
    difference over the pooled std (Cohen's d); None when there is no difference or no spread to size it."""
    if a.n < 2 or b.n < 2 or a.mean == b.mean:
        return None
    pooled = math.sqrt(((a.n - 1) * a.std**2 + (b.n - 1) * b.std**2) / (a.n + b.n - 2))
    if pooled <= 1e-9 * max(1.0, abs(a.mean), abs(b.mean)):  # float rounding is no spread
        return None
    from statsmodels.stats.power import TTestIndPower

    d = abs(a.mean - b.mean) / pooled
    n = TTestIndPower().solve_power(
        effect_size=d, alpha=ALPHA, power=power, ratio=1.0, alternative="two-sided"
    )
    n = float(n)
    return max(2, math.ceil(n)) if math.isfinite(n) else None
