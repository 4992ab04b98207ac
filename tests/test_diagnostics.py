"""Attention diagnostics: entropy and max weight per head, logged by the callback during training."""

import math
from pathlib import Path

import pytest
import torch

from attn.models.diagnostics import attention_stats
from attn.runner.config import load
from attn.runner.run import run


def test_uniform_and_one_hot_rows():
    n = 5
    uniform = torch.full((1, 1, 3, n), 1 / n)
    one_hot = torch.zeros(1, 1, 3, n)
    one_hot[..., 2] = 1.0
    w = torch.cat([uniform, one_hot], dim=1)  # head 0 uniform, head 1 one-hot
    s = attention_stats(w)
    assert s["entropy"].tolist() == pytest.approx([math.log(n), 0.0], abs=1e-7)
    assert s["max_weight"].tolist() == pytest.approx([1 / n, 1.0], abs=1e-7)


def test_padding_queries_and_empty_rows_are_excluded():
    w = torch.zeros(1, 1, 3, 4)
    w[0, 0, 0] = torch.tensor([0.5, 0.5, 0.0, 0.0])  # entropy log 2, max 0.5
    w[0, 0, 1] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # a padding query: excluded by the mask
    # row 2: fully masked (all zero): excluded, and no NaN
    s = attention_stats(w, query_mask=torch.tensor([[True, False, True]]))
    assert s["entropy"].item() == pytest.approx(math.log(2))
    assert s["max_weight"].item() == pytest.approx(0.5)


def test_unnormalised_rows_get_the_entropy_of_their_shape():
    w = torch.tensor([[[[0.2, 0.2, 0.0]]]])  # sigmoid attention: rows need not sum to one
    s = attention_stats(w)
    assert s["entropy"].item() == pytest.approx(math.log(2)) and s["max_weight"].item() == pytest.approx(0.2)


@pytest.mark.parametrize("kind", ["scaled_dot", "linear"])
def test_training_logs_diagnostics_per_layer_and_head(fast, kind):
    overrides = [a for a in fast if not a.startswith("logger=")]
    record, exc = run(load([*overrides, "logger=csv", f"attention={kind}"]))
    assert exc is None, exc
    header = (Path(record["run_dir"]) / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    cfg = load(["model=small"])
    expected = {
        f"attn/l{layer}h{head}/{stat}"
        for layer in range(cfg.model.n_layers)
        for head in range(cfg.model.n_heads)
        for stat in ("entropy", "max_weight")
    }
    if kind == "linear":  # no weight matrix, nothing to log
        assert not any(h.startswith("attn/") for h in header)
    else:
        assert expected <= set(header)


def test_diagnostics_can_be_switched_off(fast):
    overrides = [a for a in fast if not a.startswith("logger=")]
    record, _ = run(load([*overrides, "logger=csv", "diagnostics.enabled=false"]))
    header = (Path(record["run_dir"]) / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "attn/" not in header
