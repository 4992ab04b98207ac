"""attn train in-process: the run-record contract, determinism, failures, the bag-of-words gap."""

import json
import os
from pathlib import Path

import pytest

from attn.runner.config import load
from attn.runner.errors import ConfigError
from attn.runner.paths import resolve_run_dir
from attn.runner.records import RECORD_KEYS, read_record
from attn.runner.run import run


@pytest.fixture
def train(fast):
    def _train(*overrides):
        return run(load([*fast, *overrides]))

    return _train


def test_record_contract_and_run_dir_contents(train):
    record, exc = train()
    assert exc is None, exc
    run_dir = Path(record["run_dir"])
    assert run_dir.parent == Path("runs").resolve()
    on_disk = read_record(run_dir / "results.json")
    assert list(on_disk)[: len(RECORD_KEYS)] == list(RECORD_KEYS)
    assert on_disk["status"] == "completed" and on_disk["error"] is None
    assert on_disk["config"]["attention"]["kind"] == "scaled_dot"
    assert on_disk["config"]["trainer"]["max_epochs"] == 2
    for key in ("test/acc", "test/loss", "test/f1", "test/ece"):
        assert 0.0 <= on_disk["metrics"][key] < 10, key
    assert on_disk["duration_s"] > 0 and on_disk["started"] <= on_disk["finished"]
    assert Path(on_disk["best_checkpoint"]).is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "config.yaml").is_file() and (run_dir / "vocab.json").is_file()
    assert not list(run_dir.glob(".results.json.*"))  # no temporary left behind
    device = on_disk["device"]  # where it trained, for provenance
    assert device["device"] == "cpu" and device["strategy"] == "SingleDeviceStrategy"
    assert device["world_size"] == 1 and device["backend"] is None and device["precision"] == "32-true"


def test_same_seed_same_metrics_other_seed_differs(train):
    a, _ = train("seed=3")
    b, _ = train("seed=3")
    c, _ = train("seed=4")
    assert a["metrics"] == b["metrics"]
    assert a["metrics"]["test/loss"] != c["metrics"]["test/loss"]


def test_run_dir_from_environment(train, tmp_path, monkeypatch):
    target = tmp_path / "chosen"
    monkeypatch.setenv("ATTN_RUN_DIR", str(target))
    record, _ = train()
    assert record["run_dir"] == str(target.resolve())
    assert json.loads((target / "results.json").read_text())["status"] == "completed"


def test_run_dir_name_and_env_scoped_to_the_run(train, monkeypatch):
    path = resolve_run_dir("runs", "my run/name")
    assert path.name.endswith("-my_run_name") and not path.exists()
    a, _ = train()
    b, _ = train()
    assert a["run_dir"] != b["run_dir"]  # a second run in the same process gets its own directory
    assert "ATTN_RUN_DIR" not in os.environ


def test_crash_writes_failed_record(train):
    # Divergence fails inside the run, after the run dir exists.
    record, exc = train("optim.lr=1e30")
    assert exc is not None
    on_disk = read_record(Path(record["run_dir"]) / "results.json")
    assert on_disk["status"] == "failed"
    assert on_disk["error"] and "\n" not in on_disk["error"]


@pytest.mark.slow  # trains for a minute or more: an end-to-end result
def test_default_task_beats_bag_of_words(train):
    """The embedded default: attention learns what a bag of words cannot (short run here)."""
    record, _ = train(
        "model=transformer", "task.datamodule.n_train=4000", "task.datamodule.n_test=1000",
        "trainer.max_epochs=8", "baseline=true",
    )  # fmt: skip
    m = record["metrics"]
    assert m["test/bow_acc"] < 0.6, m
    assert m["test/acc"] > 0.85, m


def test_debug_presets_compose_and_overfit_learns(train):
    record, _ = train("debug=overfit", "trainer.max_epochs=40")
    assert record["status"] == "completed"
    assert record["metrics"]["train/steps"] == 40


def test_a_finished_run_is_never_overwritten(train, fast, tmp_path, monkeypatch):
    """A second run into a directory that holds a run is refused before it touches anything (issue 25:
    ATTN_RUN_DIR=runs/mine twice, or two attn train in one SLURM job, overwrote the first run)."""
    import subprocess
    import sys

    target = tmp_path / "mine"
    monkeypatch.setenv("ATTN_RUN_DIR", str(target))
    first, _ = train("seed=0")
    files = {p: p.read_bytes() for p in sorted(target.rglob("*")) if p.is_file() and p.name != ".lock"}
    with pytest.raises(ConfigError, match=r"already holds a completed run; nothing was overwritten"):
        train("seed=1")
    attn = str(Path(sys.executable).parent / "attn")
    out = subprocess.run([attn, "train", *fast, "seed=1"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    (line,) = out.stderr.strip().splitlines()
    assert f"resume={target.resolve()}" in line and "ATTN_RUN_DIR" in line
    after = {p: p.read_bytes() for p in sorted(target.rglob("*")) if p.is_file() and p.name != ".lock"}
    assert after == files and first["config"]["seed"] == 0  # every file of the first run as it was
    # A run killed before its record left config.yaml: not reused either.
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "config.yaml").write_text("seed: 0\n")
    monkeypatch.setenv("ATTN_RUN_DIR", str(killed))
    with pytest.raises(ConfigError, match=r"already holds a run \(no readable record\)"):
        train()
    # Two attn train in one SLURM job resolve the same runs/slurm-<job>-<name>: the second is refused.
    monkeypatch.delenv("ATTN_RUN_DIR")
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.setenv("SLURM_JOB_NAME", "loop")
    one, _ = train("seed=0")
    with pytest.raises(ConfigError, match="in a SLURM job every attn train needs its own name"):
        train("seed=1")
    two, _ = train("seed=1", "name=seed1")
    assert Path(one["run_dir"]).name.startswith("slurm-777-") and two["run_dir"].endswith("slurm-777-seed1")
