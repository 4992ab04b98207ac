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
    (c,) = paired_comparisons(groups)
    assert (c.metric, c.other, c.what) == ("test/acc@64", "test/adaptive_acc@64", "adaptive temperature")
    assert c.result.p == pytest.approx(sps.ttest_rel(B, A).pvalue) and c.p_holm == pytest.approx(c.result.p)
    both = paired_comparisons(groups, entropy=True)
    assert len(both) == 2 and both[1].p_holm is None  # entropy: the same shift every seed, untestable


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
