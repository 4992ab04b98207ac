"""WANDB_MODE from the environment wins over logger.mode; disabled means no W&B files at all."""

from pathlib import Path

from attn.runner.config import load
from attn.runner.run import run, wandb_mode


def test_environment_wins(monkeypatch):
    cfg = load(["logger=wandb"])
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(cfg) == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    assert wandb_mode(cfg) == "offline"


def test_disabled_wandb_still_writes_csv(fast):
    overrides = [a for a in fast if not a.startswith("logger=")]
    overrides += ["logger=wandb", "trainer.log_every_n_steps=1"]
    record, exc = run(load(overrides))  # conftest sets WANDB_MODE=disabled
    assert exc is None
    run_dir = Path(record["run_dir"])
    assert not (run_dir / "wandb").exists()
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val/acc" in header and "train/loss" in header
