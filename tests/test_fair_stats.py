"""Lotteries as success rates (Wilson, Fisher), robust aggregates (IQM, bootstrap, P(A > B)) and the seeds a
comparison would need (statsmodels' power), each checked against the library or a formula on fixed inputs."""

from __future__ import annotations

import math

import pytest
from scipy import stats as sps

from attn.runner.aggregate import aggregate_with_verdicts
from attn.runner.collect import Run
from attn.runner.stats import (
    Stat,
    Success,
    fisher_p,
    iqm,
    iqm_ci,
    prob_improvement,
    prob_improvement_ci,
    seeds_for_power,
    wilson,
)


@pytest.mark.parametrize("k, n", [(0, 3), (1, 3), (3, 6), (7, 12), (12, 12)])
def test_wilson_is_the_score_interval(k, n):
    z = sps.norm.ppf(0.975)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert wilson(k, n) == pytest.approx((centre - half, centre + half), abs=1e-12)
    ci = sps.binomtest(k, n).proportion_ci(method="wilson")
    assert wilson(k, n) == pytest.approx((ci.low, ci.high))
    assert Success(k, n).ci == wilson(k, n) and Success(k, n).split == (0 < k < n)


def test_fisher_on_fixed_tables():
    assert fisher_p(1, 3, 0, 3) == pytest.approx(1.0)  # the README's "width helps linear attention": n = 3
    assert fisher_p(7, 12, 0, 12) == pytest.approx(sps.fisher_exact([[7, 5], [0, 12]]).pvalue)
    assert fisher_p(10, 10, 0, 10) < 1e-4


def test_iqm_and_its_bootstrap_interval():
    values = [0.167, 0.165, 0.928, 0.5, 0.4, 0.61, 0.33, 0.2]
    assert iqm(values) == pytest.approx(sps.trim_mean(values, 0.25))
    lo, hi = iqm_ci(values)
    assert lo <= iqm(values) <= hi and iqm_ci(values) == (lo, hi)  # seeded: the same every time
    assert all(math.isnan(x) for x in iqm_ci([0.5])) and iqm_ci([0.4, 0.4, 0.4]) == (0.4, 0.4)


def test_probability_of_improvement_is_the_normalised_mann_whitney_u():
    a, b = [0.9, 0.8, 0.95, 0.8], [0.8, 0.7, 0.85]
    u = sps.mannwhitneyu(a, b, alternative="two-sided").statistic
    assert prob_improvement(a, b) == pytest.approx(u / (len(a) * len(b)))
    lo, hi = prob_improvement_ci(a, b)
    assert 0 <= lo <= prob_improvement(a, b) <= hi <= 1 and prob_improvement_ci(a, b) == (lo, hi)
    assert prob_improvement([1.0], [0.0]) == 1.0 and math.isnan(prob_improvement_ci([1.0], [0.0, 0.1])[0])


def test_seeds_for_power_match_statsmodels():
    from statsmodels.stats.power import TTestIndPower

    a, b = Stat([0.96, 0.95, 0.97]), Stat([0.93, 0.95, 0.96])
    pooled = math.sqrt((a.std**2 + b.std**2) / 2)
    n = TTestIndPower().solve_power(effect_size=abs(a.mean - b.mean) / pooled, alpha=0.05, power=0.8)
    assert seeds_for_power(a, b) == math.ceil(n)
    # a 0.5-sd difference needs 64 seeds per group (the textbook value)
    half_sd = Stat([0.0, 1.0, 2.0]), Stat([0.5, 1.5, 2.5])
    assert seeds_for_power(*half_sd) == 64
    assert seeds_for_power(Stat([0.5, 0.5]), Stat([0.5, 0.5])) is None  # no difference to detect


def run(name: str, seed: int, acc: float, solved_at: float | None = 0.9) -> Run:
    config = {
        "task": {"name": "hard", "solved_at": solved_at}, "seed": seed,
        "attention": {"kind": name}, "softmax": {"name": "softmax", "temperature": 1.0},
    }  # fmt: skip
    return Run(f"{name}-{seed}", "completed", config, {"test/acc": acc, "test/chance_acc": 0.5})


def test_a_lottery_is_reported_as_a_success_rate_not_as_chance():
    learned = [0.99, 1.0, 0.98, 0.99, 1.0, 0.99, 0.98]
    stuck = [0.52, 0.55, 0.58, 0.53, 0.52]
    runs = [run("scaled_dot", i, v) for i, v in enumerate(learned + stuck)]
    runs += [run("linear", i, v) for i, v in enumerate([0.51, 0.52, 0.5, 0.53])]
    groups, verdicts = aggregate_with_verdicts(runs, "test/acc")
    sd = next(g for g in groups["hard"] if g.key[0] == "scaled_dot")
    lin = next(g for g in groups["hard"] if g.key[0] == "linear")
    assert (sd.success.k, sd.success.n) == (7, 12) and (lin.success.k, lin.success.n) == (0, 4)
    assert sd.rank().at_chance is False and lin.rank().at_chance is True
    assert "7 of 12 runs solved it" in verdicts["hard"].text
    assert "every group is at chance" not in verdicts["hard"].text
    assert lin.success.p == pytest.approx(fisher_p(7, 12, 0, 4))


def test_no_threshold_no_success_rates(tmp_path):
    from attn.runner.report import build

    runs = [run("scaled_dot", i, v, None) for i, v in enumerate([0.9, 0.91, 0.92])]
    runs += [run("linear", i, v, None) for i, v in enumerate([0.7, 0.75, 0.72])]
    groups, _ = aggregate_with_verdicts(runs, "test/acc")
    assert all(g.success is None for g in groups["hard"])
    build(runs, tmp_path, plots=False)
    summary = (tmp_path / "summary.csv").read_text().splitlines()
    assert summary[0].endswith("seeds_for_80pct_power,success_rate,success_ci_low,success_ci_high,"
                               "p_success_fisher,p_success_holm,published_rule,optimism")  # fmt: skip
    md = (tmp_path / "report.md").read_text()
    assert "IQM [95% percentile bootstrap, n ≥ 10]" in md and "P(best>)" in md
    assert "solved [95% Wilson]" not in md


def test_unseparated_pairs_say_how_many_seeds_would_separate_them():
    runs = [run("scaled_dot", i, v, None) for i, v in enumerate([0.96, 0.95, 0.97])]
    runs += [run("linear", i, v, None) for i, v in enumerate([0.93, 0.95, 0.96])]
    groups, _ = aggregate_with_verdicts(runs, "test/acc")
    lin = next(g for g in groups["hard"] if g.key[0] == "linear")
    sd = next(g for g in groups["hard"] if g.key[0] == "scaled_dot")
    assert lin.rank().seeds_needed == seeds_for_power(sd.stats["test/acc"], lin.stats["test/acc"])
    assert lin.rank().p_improve == pytest.approx(prob_improvement([0.96, 0.95, 0.97], [0.93, 0.95, 0.96]))


def test_power_is_sized_at_the_level_the_verdict_tests_at():
    """Issue 32 §18: with Holm over k comparisons, the first is tested at 0.05 / k; the seeds for 80% power
    are sized there, and the table says at which level."""
    from statsmodels.stats.power import TTestIndPower

    from attn.runner.report import table_rows

    values = {"scaled_dot": [0.96, 0.95, 0.97], "linear": [0.93, 0.95, 0.96], "local": [0.95, 0.94, 0.96],
              "dot": [0.94, 0.95, 0.955]}  # fmt: skip
    runs = [run(k, i, v, None) for k, vs in values.items() for i, v in enumerate(vs)]
    groups, _ = aggregate_with_verdicts(runs, "test/acc")
    top = next(g for g in groups["hard"] if g.key[0] == "scaled_dot")
    lin = next(g for g in groups["hard"] if g.key[0] == "linear")
    a, b = top.stats["test/acc"], lin.stats["test/acc"]
    pooled = math.sqrt((a.std**2 + b.std**2) / 2)
    n = TTestIndPower().solve_power(effect_size=abs(a.mean - b.mean) / pooled, alpha=0.05 / 3, power=0.8)
    assert lin.rank().seeds_needed == math.ceil(n) > seeds_for_power(a, b)  # more than at α = 0.05
    assert lin.rank().power_alpha == pytest.approx(0.05 / 3)
    rows = table_rows(groups["hard"], ("attention",), ["test/acc"])
    assert any(f"80% power at ~{math.ceil(n)} seeds/group (α = 0.0167)" in c for row in rows for c in row)


def test_bootstrap_intervals_and_power_need_enough_runs():
    """§21 (and issue 35 §4): below BOOTSTRAP_MIN_N runs no bootstrap interval is shown, below POWER_MIN_N
    no power estimate; the table says "n too small" instead of a number."""
    from attn.runner.report import table_rows
    from attn.runner.stats import BOOTSTRAP_MIN_N

    runs = [run("scaled_dot", i, v, None) for i, v in enumerate([0.96, 0.95])]
    runs += [run("linear", i, v, None) for i, v in enumerate([0.93, 0.95])]
    groups, _ = aggregate_with_verdicts(runs, "test/acc")
    lin = next(g for g in groups["hard"] if g.key[0] == "linear")
    assert lin.rank().p_improve_ci is None and lin.rank().seeds_needed is None
    cells = [c for row in table_rows(groups["hard"], ("attention",), ["test/acc"]) for c in row]
    assert any("P(best>) 0.88 [n too small: < 10 runs]" in c for c in cells)
    assert any("seeds for 80% power: n too small" in c for c in cells)
    assert any(c.endswith("[n too small]") for c in cells)  # the IQM cell
    many = [run("scaled_dot", i, 0.9 + 0.001 * i, None) for i in range(BOOTSTRAP_MIN_N)]
    many += [run("linear", i, 0.89 + 0.001 * i, None) for i in range(BOOTSTRAP_MIN_N)]
    groups, _ = aggregate_with_verdicts(many, "test/acc")
    lin = next(g for g in groups["hard"] if g.key[0] == "linear")
    assert lin.rank().p_improve_ci is not None


def test_the_percentile_bootstrap_undercovers_at_small_n_as_the_cutoff_says():
    """The reason for BOOTSTRAP_MIN_N, re-simulated on normal data (200 draws each; seeded)."""
    import numpy as np

    rng = np.random.default_rng(1)

    def coverage(n: int) -> float:
        hits = 0
        for _ in range(200):
            lo, hi = iqm_ci(list(rng.normal(size=n)))
            hits += lo <= 0 <= hi
        return hits / 200

    assert coverage(3) < 0.85 and coverage(10) > 0.88


def test_each_run_is_scored_against_its_own_threshold():
    """§13: a group recorded with solved_at 0.5 whose runs are all >= 0.70 is 3/3, not 0/3."""
    runs = [run("scaled_dot", i, v, 0.9) for i, v in enumerate([0.95, 0.97, 0.99])]
    runs += [run("linear", i, v, 0.5) for i, v in enumerate([0.70, 0.72, 0.75])]
    groups, verdicts = aggregate_with_verdicts(runs, "test/acc")
    lin = next(g for g in groups["hard"] if g.key[0] == "linear")
    assert (lin.success.k, lin.success.n) == (3, 3)
    assert "scored against their own solved_at (0.5, 0.9)" in verdicts["hard"].text


def test_a_group_with_one_seed_is_named_not_dropped():
    """§15: a one-seed group is left out of the ranking, and the verdict says so."""
    runs = [run("scaled_dot", i, v, None) for i, v in enumerate([0.96, 0.95, 0.97])]
    runs += [run("linear", i, v, None) for i, v in enumerate([0.63, 0.65, 0.66])]
    runs += [run("local", 0, 0.99, None)]
    _, verdicts = aggregate_with_verdicts(runs, "test/acc")
    assert "left out (one seed, nothing to test): local" in verdicts["hard"].text
