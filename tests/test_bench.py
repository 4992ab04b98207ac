"""attn bench in its short mode: every field present, every number finite and positive."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attn.runner.bench import forward_flops_per_sequence, train_flops_per_step
from attn.runner.config import load

ATTN = str(Path(sys.executable).parent / "attn")


def test_flop_formula_for_scaled_dot_product():
    cfg = load(["model=small"])
    d, n, r, layers = cfg.model.d_model, 10, cfg.model.mlp_ratio, cfg.model.n_layers
    per_layer = 2 * n * d * 3 * d + 2 * n * d * d + 4 * r * n * d * d + 4 * n * n * d
    assert forward_flops_per_sequence(cfg.model, cfg.attention, n) == layers * per_layer
    assert train_flops_per_step(cfg, 4, n) == 3 * 4 * layers * per_layer
    linear = load(["model=small", "attention=linear"])

    def flops(c, length):
        return forward_flops_per_sequence(c.model, c.attention, length)

    assert flops(linear, 2000) == 2 * flops(linear, 1000)  # linear attention: linear in the length
    assert flops(cfg, 2000) > 2 * flops(cfg, 1000)  # softmax attention: quadratic term


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["attention=additive", "+attention.params.hidden=8"],
        ["attention=linear", "model.n_kv_heads=2"],
        ["attention=general"],
    ],
)
def test_the_model_counts_its_own_flops_as_the_config_does(overrides):
    """nanoGPT's habit: the built encoder states its FLOPs; attn bench and the thread policy count the
    same from the config, before anything is built."""
    from attn.runner.run import build_data_and_module

    cfg = load(["model=small", *overrides])
    _, module = build_data_and_module(cfg)
    encoder = module.net.encoder
    assert encoder.flops_per_sequence(32) == forward_flops_per_sequence(cfg.model, cfg.attention, 32)


@pytest.mark.slow
def test_bench_short_mode_json(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    args = ["bench", "--json", "--steps", "3", "--warmup", "1", "--rounds", "1", "--matmul-n", "256",
            "model=small", "logger=none", "task.datamodule.n_train=256"]  # fmt: skip
    out = subprocess.run([ATTN, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    for key in ("matmul_peak_flops", "train_flops_per_step", "plain", "lightning", "lightning_over_plain"):
        assert key in result
    for key in ("step_s", "data_s", "forward_s", "backward_s", "optimizer_s", "tokens_per_s", "mfu"):
        assert key in result["plain"]
    numbers = [
        result["train_flops_per_step"],
        result["lightning_over_plain"],
        *result["matmul_peak_flops"].values(),
    ]
    numbers += [v for v in result["plain"].values()] + [v for v in result["lightning"].values()]
    assert all(math.isfinite(x) and x > 0 for x in numbers), result
    assert result["plain"]["tokens_per_s"] > 0 and result["lightning_over_plain"] > 0
    assert result["rounds"] == 1  # --rounds reaches the measurement
    plan = result["thread_plan"]  # the thread policy's decision, made before torch was imported
    assert plan["env_in_time"] is True and plan["mode"] == "auto"
    assert result["threads"] == plan["threads"] == min(plan["cpus"], 2)  # model=small: 0.13 GFLOP/step


def test_bench_refuses_tasks_its_flop_count_does_not_model():
    from attn.runner.bench import bench
    from attn.runner.errors import ConfigError

    for task in ("translation", "speech"):
        with pytest.raises(
            ConfigError, match=rf"task={task} .* is not supported yet; valid choices: classification"
        ):
            bench(load([f"task={task}"]))
