"""The report's statistics, as pure functions over numbers (no files, no plots): a metric's range and
direction, mean / std / 95% t-interval over seeds, Welch's t-test, Holm's correction, a rate's
resolution. Quantiles and tails come from scipy."""

from __future__ import annotations

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
