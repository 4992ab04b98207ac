"""The published protocol (issue 33): the best test mean over the tuning candidates, beside the held-out
estimate, and how much the first overstates."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from attn.runner.aggregate import aggregate_with_verdicts
from attn.runner.collect import Run
from attn.runner.stats import optimism, published_rule


def test_the_rule_is_the_best_candidate_mean():
    assert published_rule([[0.5, 0.7], [0.9], [0.55, 0.65, 0.6]]) == pytest.approx(0.9)
    assert published_rule([[2.0, 4.0], [3.5]], higher=False) == pytest.approx(3.0)
    assert np.isnan(published_rule([[], []]))
    assert optimism(0.9, 0.8) == pytest.approx(0.1)
    assert optimism(3.0, 3.2, higher=False) == pytest.approx(0.2)


def _protocol(candidates: int, reps: int, rng: np.random.Generator) -> tuple[float, float]:
    """Arms whose runs are pure noise (every candidate's true accuracy 0.7, run noise sd 0.05): the mean
    optimism of the published rule (one tuning seed per candidate, as Zoology and MAD) and the mean error of
    the held-out estimate (3 fresh seeds at the candidate a separate validation draw selected)."""
    optimisms, errors = [], []
    for _ in range(reps):
        test = 0.7 + 0.05 * rng.standard_normal(candidates)  # one tuning seed's test value per candidate
        val = test + 0.01 * rng.standard_normal(candidates)  # its validation value: nearly the same draw
        pick = int(np.argmax(val))  # attn selects on validation ...
        held_out = float(np.mean(0.7 + 0.05 * rng.standard_normal(3)))  # ... and reports fresh seeds
        published = published_rule([[v] for v in test])
        optimisms.append(optimism(published, held_out))
        errors.append(held_out - 0.7)
        assert 0 <= pick < candidates
    return float(np.mean(optimisms)), float(np.mean(errors))


def test_on_noise_the_rule_is_optimistic_and_more_so_with_more_candidates():
    rng = np.random.default_rng(0)
    reps = 4000
    results = {c: _protocol(c, reps, rng) for c in (1, 2, 4, 8)}
    se = 0.05 * np.sqrt(1 + 1 / 3) / np.sqrt(reps)  # sd of one optimism draw with one candidate, over reps
    # One candidate: no selection, no optimism; the expected maximum of c standard normals is 0.56, 1.03,
    # 1.42 for 2, 4, 8, times the run noise 0.05.
    assert abs(results[1][0]) < 4 * se
    for c, expected in ((2, 0.0282), (4, 0.0515), (8, 0.0712)):
        assert results[c][0] == pytest.approx(expected, abs=4 * se)
    assert results[1][0] < results[2][0] < results[4][0] < results[8][0]
    for _, error in results.values():  # the held-out estimate: fresh seeds, unbiased
        assert abs(error) < 4 * 0.05 / np.sqrt(3 * reps)


def _run(kind: str, seed: int, acc: float, phase: str, lr: str, arm: str) -> Run:
    config = {
        "task": {"name": "mqar", "solved_at": None}, "seed": seed, "optim": {"lr": float(lr)},
        "attention": {"kind": kind}, "softmax": {"name": "softmax", "temperature": 1.0},
    }  # fmt: skip
    run = Run(f"/s/{phase}/{kind}-{lr}-{seed}", "completed", config, {"test/acc": acc, "val/acc": acc})
    run.phase, run.arm = phase, arm
    if phase == "tune":
        run.candidate = {"optim.lr": lr}
    else:
        run.tuned = {"optim.lr": "0.001"}
    return run


def _sweep() -> tuple[list[Run], list[Run]]:
    """Two tuned arms: ``lucky`` has one tuning candidate that drew high (0.95) and a held-out mean of 0.80;
    ``steady`` had no lucky draw (0.86 best) and holds 0.85 on fresh seeds."""
    seeds = (10, 11, 12)
    finals = [
        _run("lucky", s, v, "final", "0.001", "/s:lucky")
        for s, v in zip(seeds, (0.79, 0.8, 0.81), strict=True)
    ]
    finals += [
        _run("steady", s, v, "final", "0.001", "/s:steady")
        for s, v in zip(seeds, (0.84, 0.85, 0.86), strict=True)
    ]
    tuning = [_run("lucky", 0, v, "tune", lr, "/s:lucky") for lr, v in (("0.001", 0.95), ("0.01", 0.6))]
    tuning += [_run("steady", 0, v, "tune", lr, "/s:steady") for lr, v in (("0.001", 0.86), ("0.01", 0.7))]
    return finals, tuning


def test_the_report_sets_the_rule_beside_the_held_out_estimate_and_says_when_they_disagree():
    finals, tuning = _sweep()
    groups, verdicts = aggregate_with_verdicts(finals, "test/acc", ("attention",), tuning=tuning)
    by = {g.key[0]: g for g in groups["mqar"]}
    assert by["lucky"].published == pytest.approx(0.95) and by["lucky"].published_from == 2
    assert by["lucky"].optimism == pytest.approx(0.15)
    assert by["steady"].optimism == pytest.approx(0.01)
    text = verdicts["mqar"].text
    assert "the published rule" in text and "would put lucky first (0.9500)" in text
    assert "held-out estimate puts steady first" in text
    # no tuning runs: no rule, no sentence
    groups, verdicts = aggregate_with_verdicts(finals, "test/acc", ("attention",))
    assert all(g.published is None for g in groups["mqar"]) and "published rule" not in verdicts["mqar"].text


def test_the_rule_lands_in_summary_csv_report_json_and_the_table(tmp_path):
    from attn.runner.report import build

    finals, tuning = _sweep()
    rep = build([*finals, *tuning], tmp_path, group_by=("attention",), formats=("md", "csv"), plots=False)
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    acc = {r["attention"]: r for r in rows if r["metric"] == "test/acc"}
    assert float(acc["lucky"]["published_rule"]) == pytest.approx(0.95)
    assert float(acc["lucky"]["optimism"]) == pytest.approx(0.15)
    assert all(r["published_rule"] == "" for r in rows if r["metric"] != "test/acc")
    data = json.loads((tmp_path / "report.json").read_text())
    lucky = next(g for g in data["tasks"]["mqar"] if g["attention"] == "lucky")
    assert lucky["published_rule"] == pytest.approx(0.95) and lucky["published_from"] == 2
    assert "published rule (optimism)" in (tmp_path / "report.md").read_text()
    assert rep is not None
