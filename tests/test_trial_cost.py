"""What a trial spends outside training (issue 36 §4): the order-blind baseline is fitted once per data set
and reused, tuning trials skip what selection never reads, and the length evaluation computes its entropy
only over the rows of the queries it scores."""

from __future__ import annotations

import json

import pytest
import torch

from attn.runner import run as run_module
from attn.runner.config import load
from attn.runner.sweep import plan
from attn.runner.tune import FINAL, TUNE, phase

MQAR = ["task=mqar", "model=small", "logger=none", "task.datamodule.n_train=256", "task.datamodule.n_test=64"]


def test_the_baseline_is_fitted_once_per_data_set(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTN_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def fit(dm):  # a stand-in for the fit (seconds): a number that follows the data
        calls.append(1)
        return {"test/bow_acc": float(dm.datasets["train"].tensors[0].float().mean()) / 1000}

    monkeypatch.setattr(run_module, "_baseline", fit)
    results = []
    for overrides in (
        ["attention=scaled_dot"],
        ["attention=linear", "task.datamodule.batch_size=32"],
        ["seed=1"],
    ):
        cfg = load([*MQAR, *overrides])
        dm, _ = run_module.build_data_and_module(cfg)
        results.append(run_module.cached_baseline(cfg, dm))
    assert len(calls) == 2  # seed 0 once for both kinds and batch sizes, seed 1 once
    assert results[0] == results[1] != results[2] and set(results[0]) == {"test/bow_acc"}
    key = run_module.baseline_key(load([*MQAR, "attention=linear"]))
    assert json.loads((tmp_path / "cache" / "baselines" / f"{key}.json").read_text()) == results[0]
    (tmp_path / "cache" / "baselines" / f"{key}.json").write_text('{"test/bow_acc": "x"}')  # damaged: refit
    cfg = load(MQAR)
    assert run_module.cached_baseline(cfg, run_module.build_data_and_module(cfg)[0]) == results[0]
    assert len(calls) == 3


def test_data_read_from_files_is_never_served_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTN_CACHE_DIR", str(tmp_path / "cache"))

    class FromFiles:  # no GENERATED: a file may change under the same settings
        pass

    monkeypatch.setattr(run_module, "_baseline", lambda dm: {"test/bow_acc": 0.5})
    assert run_module.cached_baseline(load(MQAR), FromFiles()) == {"test/bow_acc": 0.5}
    assert not (tmp_path / "cache").exists()


def test_tuning_trials_skip_what_selection_never_reads(tmp_path):
    m, _ = plan(["task=mqar", "task.eval_adaptive=true", "seed=0,1"], str(tmp_path / "s"),
                tune={"tune": ["optim.lr=1e-3,3e-3"], "tune_seeds": "100"})  # fmt: skip
    lean = ["baseline=false", "task.eval_lengths=[]", "task.eval_adaptive=false"]
    assert all(t.overrides[-3:] == lean for t in m.trials if phase(t) == TUNE)
    assert not any("baseline=false" in t.overrides for t in m.trials if phase(t) == FINAL)
    cfg = load(next(t for t in m.trials if phase(t) == TUNE).overrides)
    assert list(cfg.task.eval_lengths) == [] and cfg.baseline is False  # [] still tests the training length


@pytest.mark.parametrize("kind", ["scaled_dot", "sigmoid"])
def test_length_entropy_over_the_scored_rows_equals_the_full_computation(kind):
    """The entropy is averaged over the scored queries' rows only, computed on those rows alone: the same
    numbers as computing every row and masking (float64)."""
    from attn.models.diagnostics import attention_stats

    torch.manual_seed(0)
    w = torch.softmax(torch.randn(3, 2, 7, 7), -1) if kind == "scaled_dot" else torch.rand(3, 2, 7, 7)
    w[1, :, 4] = 0  # a row with no weight
    mask = torch.rand(3, 7) > 0.4
    got = attention_stats(w, mask)
    p = w.double() / w.double().sum(-1, keepdim=True).clamp_min(1e-300)
    entropy = -(p * p.clamp_min(1e-300).log()).sum(-1)  # [B, H, Lq]
    valid = mask[:, None, :] & (w.sum(-1) > 0)
    want = (entropy * valid).sum((0, 2)) / valid.sum((0, 2))
    assert torch.allclose(got["entropy"], want, atol=1e-12)
    peak = (w.double().amax(-1) * valid).sum((0, 2)) / valid.sum((0, 2))
    assert torch.allclose(got["max_weight"], peak, atol=1e-12)
