"""Test defaults: W&B disabled, runs written under a temporary directory, never the network."""

import os

import pytest

os.environ["WANDB_MODE"] = "disabled"
os.environ["WANDB_SILENT"] = "true"
os.environ.pop("ATTN_RUN_DIR", None)

# Tiny, fast settings shared by the in-process training tests.
FAST = [
    "logger=none",
    "model=small",
    "task.datamodule.n_train=256",
    "task.datamodule.n_val=64",
    "task.datamodule.n_test=64",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "baseline=false",
]


@pytest.fixture
def fast() -> list[str]:
    """Overrides for a seconds-long training run."""
    return list(FAST)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ATTN_RUN_DIR", raising=False)
    yield
