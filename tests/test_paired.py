"""Scores of the same checkpoints compared paired by seed (adaptive temperature against as trained)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats as sps

from attn.runner.aggregate import aggregate, paired_comparisons
from attn.runner.collect import Run
from attn.runner.stats import Paired

A = [0.61, 0.72, 0.55, 0.80, 0.66]
B = [0.64, 0.71, 0.60, 0.86, 0.70]


def test_paired_equals_scipy_on_fixed_inputs():
    p = Paired(A, B)
    d = [b - a for a, b in zip(A, B, strict=True)]
    assert p.mean == pytest.approx(sum(d) / 5)
    assert p.p == pytest.approx(sps.ttest_rel(B, A).pvalue)
    lo, hi = sps.t.interval(0.95, 4, loc=sum(d) / 5, scale=sps.sem(d))
    assert p.ci == pytest.approx((lo, hi))


def test_paired_edge_cases():
    assert Paired([0.5, 0.6], [0.5, 0.6]).p == 1.0
    assert math.isnan(Paired([0.5, 0.6], [0.6, 0.7]).p)  # the same shift in every pair: no spread
    assert math.isnan(Paired([0.5], [0.7]).p) and Paired([0.5], [0.7]).mean == pytest.approx(0.2)


def run(seed: int, first: float, second: float | None, temperature: float = 1.0) -> Run:
    metrics = {"test/acc": 0.9, "test/acc@64": first, "test/entropy@64/l0": 1.0}
    if second is not None:
        metrics |= {"test/adaptive_acc@64": second, "test/adaptive_entropy@64/l0": 0.5}
    config = {"task": {"name": "mqar"}, "seed": seed, "attention": {"kind": "scaled_dot"},
              "softmax": {"name": "softmax", "temperature": temperature}}  # fmt: skip
    return Run(f"r{seed}-{temperature}", "completed", config, metrics)


def test_paired_comparisons_pair_by_run_and_correct_over_the_task():
    runs = [run(s, a, b) for s, (a, b) in enumerate(zip(A, B, strict=True))]
    runs += [run(s, 0.5, None, temperature=2.0) for s in range(3)]  # no second score: not compared
    groups = aggregate(runs, "test/acc")["mqar"]
    c, entropy = paired_comparisons(groups)
    assert (c.metric, c.other, c.what) == ("test/acc@64", "test/adaptive_acc@64", "adaptive temperature")
    assert c.result.p == pytest.approx(sps.ttest_rel(B, A).pvalue) and c.p_holm == pytest.approx(c.result.p)
    assert entropy.metric == "test/entropy@64/l0" and entropy.p_holm is None  # descriptive: not tested


def test_one_holm_family_in_the_markdown_and_the_csv(tmp_path):
    """Issue 32 §16: report.md and paired.csv correct over the same family (the score pairs, not the
    entropies), and both name it."""
    import csv

    from attn.runner.report import build

    rng = [0.01, 0.03, -0.02, 0.04, 0.02]
    runs = []
    for s, (a, b) in enumerate(zip(A, B, strict=True)):
        r = run(s, a, b)
        r.metrics |= {"test/acc@32": a + 0.1, "test/adaptive_acc@32": a + 0.1 + rng[s]}
        r.metrics |= {"test/entropy@64/l0": 1.0 + rng[s], "test/adaptive_entropy@64/l0": 0.5 - rng[s]}
        runs.append(r)
    build(runs, tmp_path, plots=False)
    rows = list(csv.DictReader((tmp_path / "paired.csv").open()))
    scores = [r for r in rows if "entropy" not in r["metric"]]
    entropies = [r for r in rows if "entropy" in r["metric"]]
    raw = [float(r["p_paired"]) for r in scores]
    expected = sorted(raw)
    holm = [min(1.0, (len(raw) - i) * p) for i, p in enumerate(expected)]
    holm = [max(holm[: i + 1]) for i in range(len(holm))]
    by_p = dict(zip(expected, holm, strict=True))
    assert [float(r["p_holm"]) for r in scores] == pytest.approx([by_p[p] for p in raw])
    assert len(scores) == 2 and all(r["p_holm"] == "" and r["p_paired"] == "" for r in entropies)
    assert {r["holm_family"] for r in scores} == {
        "this task's 2 paired comparison(s) of scores (entropies, which describe, are not tested)"
    }
    md = (tmp_path / "report.md").read_text()
    for r in scores:  # the markdown shows the same Holm values
        assert f"{float(r['p_holm']):.3f}" in md
    assert "Holm-corrected over this task's 2 paired comparison(s) of scores" in md


def test_the_report_shows_the_paired_table(tmp_path):
    from attn.runner.report import build

    runs = [run(s, a, b) for s, (a, b) in enumerate(zip(A, B, strict=True))]
    build(runs, tmp_path, plots=False)
    md = (tmp_path / "report.md").read_text()
    assert "### Scored two ways" in md and "adaptive temperature" in md
    assert "paired.csv" in {p.name for p in tmp_path.iterdir()}


def test_evaluate_at_lengths_scores_the_adaptive_rule_from_the_same_weights():
    from torch.utils.data import TensorDataset

    from attn.models.sequence import SequenceModel, can_score_adaptive, evaluate_at_lengths

    torch.manual_seed(0)
    ids = torch.randint(1, 20, (8, 12))
    data = {12: TensorDataset(ids, ids.roll(1, dims=1))}
    attention = {"kind": "scaled_dot", "softmax": "softmax", "temperature": 1.0}
    net = SequenceModel(20, d_model=16, n_layers=1, n_heads=2, max_len=12, attention=attention)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = evaluate_at_lengths(net, data, adaptive=True)
    assert {"test/acc@12", "test/adaptive_acc@12", "test/adaptive_entropy@12/l0"} <= set(out)
    assert out["test/adaptive_entropy@12/l0"] <= out["test/entropy@12/l0"] + 1e-6  # sharper, never flatter
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert not any(m.adaptive for m in net.modules() if hasattr(m, "adaptive"))  # switched back off
    linear = SequenceModel(20, d_model=16, n_layers=1, n_heads=2, max_len=12, attention={"kind": "linear"})
    assert not can_score_adaptive(linear) and "test/adaptive_acc@12" not in evaluate_at_lengths(
        linear, data, adaptive=True
    )
