"""One writer per run and per sweep, resumes that keep the whole story (metric history, the config that
trained, moved directories), checkpoints that are never half-written."""

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from attn.runner.config import load
from attn.runner.errors import ConfigError, RunDirBusy
from attn.runner.records import DirLock
from attn.runner.resume import prepare_resume
from attn.runner.run import run

ATTN = str(Path(sys.executable).parent / "attn")


def hold_lock(directory: Path, name: str = ".lock") -> subprocess.Popen:
    """A separate process that takes the lock and sleeps until killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from attn.runner.records import DirLock
        DirLock({str(directory)!r}, {name!r}).acquire()
        print("locked", flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_names_its_holder_and_dies_with_it(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(RunDirBusy, match=rf"run directory {tmp_path} is in use by pid {holder.pid} on "):
            DirLock(tmp_path).acquire()
        assert DirLock(tmp_path).held_elsewhere()
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs, the kernel drops the lock
        holder.wait()
    with DirLock(tmp_path):  # the stale lock file does not block
        assert (tmp_path / ".lock").read_text().split()[0] == str(os.getpid())


def test_second_run_in_the_same_directory_is_refused(tmp_path, fast):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = hold_lock(run_dir)  # stands for a live `attn train` of this directory
    try:
        env = {**os.environ, "WANDB_MODE": "disabled", "ATTN_RUN_DIR": str(run_dir)}
        done = subprocess.run([ATTN, "train", *fast], env=env, capture_output=True, text=True, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 1, done.stderr[-1000:]
    assert f"is in use by pid {holder.pid}" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # nothing written, nothing lost


def test_second_sweep_process_is_refused(tmp_path):
    from attn.runner.sweep import SWEEP_LOCK, start

    root = start(["seed=0,1", "model=small", "trainer.max_epochs=1"], str(tmp_path / "sw"), False)
    holder = hold_lock(root, SWEEP_LOCK)
    try:
        env = {**os.environ, "WANDB_MODE": "disabled"}
        done = subprocess.run([ATTN, "sweep", "--resume", str(root)], env=env, capture_output=True, text=True)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 1 and f"sweep directory {root} is in use by pid {holder.pid}" in done.stderr
    assert not (root / "trials").exists()  # no trial was started


def test_a_trial_whose_previous_attempt_lives_is_not_started_twice(tmp_path):
    from attn.runner.records import read_manifest, trial_dir
    from attn.runner.sweep import start, wait_for_live_attempt

    root = start(["seed=0,1", "model=small"], str(tmp_path / "sw"), False)
    run_dir = trial_dir(root, read_manifest(root).trials[1].run_dir)
    run_dir.mkdir(parents=True)
    holder = hold_lock(run_dir)  # the orphan of a killed sweep, still training
    subprocess.Popen(["bash", "-c", f"sleep 2; kill {holder.pid}"])
    t0 = time.time()
    wait_for_live_attempt(root, 1)
    assert time.time() - t0 > 1.5  # it waited for the orphan to end
    holder.wait()
    t0 = time.time()
    wait_for_live_attempt(root, 0)  # nothing alive: no wait
    assert time.time() - t0 < 1


@pytest.fixture
def cut_short(fast, tmp_path):
    """A completed 2-epoch run whose record is turned into an interrupted one, so it can be resumed."""
    run_dir = tmp_path / "run"
    os.environ["ATTN_RUN_DIR"] = str(run_dir)
    try:
        record, exc = run(load([*fast, "logger=csv", "trainer.val_check_interval=1.0"]))  # once an epoch
    finally:
        del os.environ["ATTN_RUN_DIR"]
    assert exc is None
    data = record.to_dict()
    data["status"] = data["attempts"][0]["status"] = "interrupted"
    (run_dir / "results.json").write_text(json.dumps(data))
    return run_dir


def _steps(run_dir: Path) -> list[int]:
    with (run_dir / "csv" / "metrics.csv").open() as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("val/acc")]


def test_resume_keeps_the_metric_history_and_the_attempts(cut_short):
    before = _steps(cut_short)
    assert len(before) == 2
    cfg, resume = prepare_resume(str(cut_short), ["trainer.max_epochs=3"])
    assert resume.step >= before[-1]  # last.ckpt is from the end of the last epoch (Lightning logs step - 1)
    record, exc = run(cfg, resume)
    assert exc is None and record["status"] == "completed"
    after = _steps(cut_short)
    assert after[:2] == before and len(after) == 3  # the first attempt's rows are still there
    assert [a["status"] for a in record["attempts"]] == ["interrupted", "completed"]


def test_resume_refuses_an_edited_config(cut_short):
    path = cut_short / "config.yaml"
    text = path.read_text()
    assert "temperature: 1.0" in text
    path.write_text(text.replace("temperature: 1.0", "temperature: 0.5").replace("lr: 0.003", "lr: 0.01"))
    with pytest.raises(ConfigError) as e:
        prepare_resume(str(cut_short), [])
    message = str(e.value)
    assert "config.yaml is not the config that trained last.ckpt" in message
    assert "softmax.temperature (1.0 -> 0.5)" in message and "optim.lr (0.003 -> 0.01)" in message
    path.write_text(text)
    prepare_resume(str(cut_short), ["trainer.max_epochs=3"])  # restored: accepted


def test_moved_run_directory_resumes_against_its_own_checkpoints(cut_short, tmp_path):
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    shutil.move(str(cut_short), moved)
    cfg, resume = prepare_resume(str(moved), ["trainer.max_epochs=3"])
    record, exc = run(cfg, resume)
    assert exc is None and record["status"] == "completed", record["error"]
    assert record["run_dir"] == str(moved) and record["best_checkpoint"].startswith(str(moved))
    assert not cut_short.exists()


def test_restored_checkpoint_paths_follow_the_directory(tmp_path):
    from attn.runner.checkpoints import RunCheckpoint

    old, new = "/gone/run/checkpoints", str(tmp_path / "checkpoints")
    state = {
        "monitor": "val/acc", "best_model_score": torch.tensor(0.9), "best_model_path": f"{old}/best-1.ckpt",
        "current_score": torch.tensor(0.9), "dirpath": old, "best_k_models": {f"{old}/best-1.ckpt": 0.9},
        "kth_best_model_path": f"{old}/best-1.ckpt", "kth_value": torch.tensor(0.9),
        "last_model_path": f"{old}/last.ckpt",
    }  # fmt: skip
    cb = RunCheckpoint(dirpath=new, monitor="val/acc", mode="max")
    cb.load_state_dict(state)
    assert cb.best_model_path == f"{new}/best-1.ckpt" and cb.last_model_path == f"{new}/last.ckpt"
    assert list(cb.best_k_models) == [f"{new}/best-1.ckpt"] and cb.best_model_score == pytest.approx(0.9)


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    from attn.runner.checkpoints import AtomicCheckpointIO, remove_partial_checkpoints

    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def dies_mid_write(checkpoint, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process is stopped while writing

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    assert torch.load(path, weights_only=True)["step"] == 1  # the previous checkpoint is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary file left
    killed = path.parent / ".last.ckpt.abc123.tmp"  # what a kill -9 mid-write leaves
    killed.write_bytes(b"x" * 1000)
    assert remove_partial_checkpoints(tmp_path) == [killed] and not killed.exists()


def test_loader_restored_at_an_epoch_end_starts_the_next_epoch():
    from torch.utils.data import TensorDataset

    from attn.datamodules.resumable import ResumableLoader

    data = TensorDataset(torch.arange(40))
    fresh = ResumableLoader(data, 8, seed=3, progress=lambda: 0)
    fresh.batches.set_epoch(2)
    epoch2 = [b[0].tolist() for b in fresh]
    loader = ResumableLoader(data, 8, seed=3, progress=lambda: 0)
    loader.load_state_dict({"epoch": 1, "batches_done": 5})  # all 5 batches of epoch 1 were trained
    assert [b[0].tolist() for b in loader] == epoch2  # not an empty pass over epoch 1
    loader.load_state_dict({"epoch": 1, "batches_done": 2})  # mid-epoch: the rest of epoch 1
    loader.batches.set_epoch(1)
    assert len(list(loader)) == 3


def test_resume_from_an_epoch_end_matches_the_uninterrupted_run(fast, tmp_path, monkeypatch):
    from attn.models.training import AttnModule

    overrides = [*fast, "trainer.max_epochs=3", "logger=csv"]
    full, exc = run(load(overrides))
    assert exc is None

    def killed_between_epochs(self):  # as if the process died after epoch 1's checkpoints
        if self.current_epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(AttnModule, "on_train_epoch_start", killed_between_epochs, raising=False)
    monkeypatch.setenv("ATTN_RUN_DIR", str(tmp_path / "cut"))
    cut, _ = run(load(overrides))
    assert cut["status"] == "interrupted"
    monkeypatch.delattr(AttnModule, "on_train_epoch_start")
    monkeypatch.delenv("ATTN_RUN_DIR")
    cfg, resume = prepare_resume(str(tmp_path / "cut"), [])
    assert resume.step == 8  # last.ckpt is the end of epoch 1, not the last improvement
    final, exc = run(cfg, resume)
    assert exc is None and final["status"] == "completed"
    for key, value in full["metrics"].items():
        assert final["metrics"][key] == pytest.approx(value, abs=1e-6), key
    assert _steps(tmp_path / "cut") == _steps(Path(full["run_dir"]))  # one row per validation, no gaps


def test_a_failed_write_leaves_no_temporary_file_and_the_old_file_intact(tmp_path, monkeypatch):
    """A full disk while a file is written (predictions, records, checkpoints all go through one atomic
    write) removes the temporary file: nothing fills the disk further (issue 25: a 2.7 MB temporary
    predictions file stayed). Temporaries live beside their destination, never in $TMPDIR."""
    import errno
    import tempfile

    from attn.datamodules.files import atomic_write, write_text_atomic

    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)
    target = tmp_path / "predictions" / "test.tsv"
    target.parent.mkdir()
    write_text_atomic(target, "index\tlabel\n")

    def disk_full(f):
        f.write(b"x" * 100_000)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, disk_full)
    assert target.read_text() == "index\tlabel\n" and [p.name for p in target.parent.iterdir()] == [
        "test.tsv"
    ]
    from attn.runner.checkpoints import AtomicCheckpointIO

    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(1000)}, tmp_path / "checkpoints" / "last.ckpt")
    assert list(scratch.iterdir()) == []
