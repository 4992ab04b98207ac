"""One table of metric kinds decides how the report treats every metric attn writes: its direction (or
none: descriptive metrics are never ranked), its range (intervals are clipped to it) and whether it counts
things (issue 32 §17)."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import pytest

from attn.runner.aggregate import aggregate_with_verdicts
from attn.runner.collect import Run
from attn.runner.stats import (
    METRIC_KINDS,
    UNKNOWN,
    base_name,
    count_of,
    is_counter,
    is_descriptive,
    kind_of,
    lower_is_better,
    metric_range,
)

ROOT = Path(__file__).resolve().parent.parent

# What each metric attn writes must be: (higher is better, lower is better, descriptive, counter).
EXPECTED = {
    "test/acc": "higher", "test/f1": "higher", "test/ece": "lower", "test/loss": "lower",
    "test/seq_acc": "higher", "test/token_acc": "higher", "test/exact": "higher", "test/bleu": "higher",
    "test/chrf": "higher", "test/acc@16": "higher", "test/adaptive_acc@16": "higher",
    "test/logn_acc@16": "higher", "val/best_acc": "higher", "val/best_token_acc": "higher",
    "val/best_loss": "lower", "val/acc": "higher", "val/loss": "lower", "train/loss": "lower",
    "val/steps_to_50pct": "lower", "val/steps_to_90pct": "lower",
    "test/entropy@16/l0": "descriptive", "test/adaptive_entropy@16/l1": "descriptive",
    "test/logn_entropy@128/l3": "descriptive", "test/chance_acc": "descriptive",
    "test/bow_acc": "descriptive", "test/bof_acc": "descriptive", "train/grad_norm": "descriptive",
    "test/examples": "counter", "test/targets": "counter", "test/targets@64": "counter",
    "train/steps": "counter", "train/epochs": "counter",
}  # fmt: skip


@pytest.mark.parametrize("metric", sorted(EXPECTED))
def test_every_metric_attn_writes_has_its_kind(metric):
    want = EXPECTED[metric]
    assert kind_of(metric) is not UNKNOWN
    assert is_counter(metric) == (want == "counter")
    assert is_descriptive(metric) == (want == "descriptive")
    assert lower_is_better(metric) == (want == "lower")


def _written_names() -> set[str]:
    """The metric names in attn's source: string literals (and f-string heads) of test/, val/, train/."""
    names = set()
    for path in [*ROOT.glob("models/*.py"), *ROOT.glob("runner/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
                text = str(node.values[0].value)
            else:
                continue
            if re.fullmatch(r"(test|val|train)/[a-z_]+[a-z0-9_]*(@.*)?", text) and not text.endswith("_"):
                names.add(text + "0" if text.endswith("/l") else text)  # an f-string's head: .../l{layer}
    return names


def test_the_source_writes_no_metric_of_unknown_kind():
    names = _written_names()
    assert {"test/acc", "test/bleu", "test/examples", "test/ece"} <= names  # the scan finds them
    unknown = sorted(n for n in names if kind_of(n) is UNKNOWN and not n.endswith("@"))
    assert unknown == [], f"add these to METRIC_KINDS: {unknown}"


def test_base_names_strip_lengths_layers_and_score_prefixes():
    assert base_name("test/adaptive_entropy@16/l1") == "entropy"
    assert base_name("val/best_acc") == "acc" and base_name("test/logn_acc@8") == "acc"
    assert base_name("test/bow_acc") == "bow_acc"  # a baseline is not the model's accuracy
    assert set(METRIC_KINDS) >= {"acc", "entropy", "examples", "bleu", "loss"}


def test_ranges_come_from_the_kind():
    assert metric_range("test/adaptive_acc@64") == (0.0, 1.0)
    assert metric_range("test/adaptive_entropy@64/l0") == (0.0, math.inf)
    assert metric_range("test/chrf") == (0.0, 100.0)
    assert metric_range("test/mystery") == (-math.inf, math.inf)


def _run(seed, metrics, kind="scaled_dot"):
    config = {"task": {"name": "mqar"}, "seed": seed, "attention": {"kind": kind},
              "softmax": {"name": "softmax", "temperature": 1.0}}  # fmt: skip
    return Run(f"{kind}-{seed}", "completed", config, metrics)


def test_adaptive_entropy_is_never_ranked():
    """It escaped the old substring rule (ranked, higher counted better)."""
    runs = [_run(s, {"test/acc": 0.9, "test/adaptive_entropy@16/l0": v}) for s, v in enumerate([1, 1.1, 1.2])]
    runs += [_run(s, {"test/acc": 0.8, "test/adaptive_entropy@16/l0": v}, "linear")
             for s, v in enumerate([2.0, 2.1, 2.2])]  # fmt: skip
    groups, _ = aggregate_with_verdicts(runs, "test/adaptive_entropy@16/l0")
    assert not any(g.rank("test/adaptive_entropy@16/l0").best for g in groups["mqar"])
    assert all(g.rank("test/adaptive_entropy@16/l0").p is None for g in groups["mqar"])


def test_the_significance_floor_counts_what_the_rate_counts():
    """§21: MQAR's accuracy counts queries (test/targets), not sequences (test/examples)."""
    m = {"test/examples": 1000.0, "test/targets": 8000.0, "test/targets@64": 64000.0}
    assert count_of(m, "test/acc") == 8000.0
    assert count_of(m, "test/acc@64") == 64000.0 and count_of(m, "test/adaptive_acc@64") == 64000.0
    assert count_of(m, "test/exact") == 1000.0  # a rate over whole sequences
    assert count_of({"test/examples": 500.0}, "test/acc") == 500.0  # a classifier's (and older records)
