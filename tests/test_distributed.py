"""Multi-process runs on the CPU: rank-sliced batches, unrepeated evaluation, DDP and SLURM launches."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attn.datamodules.resumable import EpochSeededBatchSampler, ShardSampler
from attn.runner.config import load
from attn.runner.errors import ConfigError
from attn.runner.machine import available_cpus
from attn.runner.records import read_record

ATTN = str(Path(sys.executable).parent / "attn")
SMALL = [
    "model=small", "logger=csv", "baseline=false", "diagnostics.enabled=false",
    "task.datamodule.n_train=512", "task.datamodule.n_val=101", "task.datamodule.n_test=301",
    "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
]  # fmt: skip


@pytest.mark.parametrize("n, batch, world", [(100, 16, 2), (101, 16, 2), (97, 10, 3), (33, 32, 2)])
def test_ranks_split_the_same_global_batches(n, batch, world):
    single = EpochSeededBatchSampler(n, seed=3, batch_size=batch)
    ranks = [EpochSeededBatchSampler(n, seed=3, batch_size=batch, rank=r, world=world) for r in range(world)]
    for epoch in (0, 1):
        for s in (single, *ranks):
            s.set_epoch(epoch)
        expected = [b for b in single.global_batches(epoch) if len(b) >= world]
        per_rank = [list(r) for r in ranks]
        assert all(len(p) == len(expected) == len(r) for p, r in zip(per_rank, ranks, strict=True))
        for i, batch_indices in enumerate(expected):
            joined = [idx for p in per_rank for idx in p[i]]
            assert joined == batch_indices  # the ranks' slices make up the global batch, in order
            sizes = [len(p[i]) for p in per_rank]
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert single.global_batches(0) != single.global_batches(1)  # a new order each epoch


def test_resume_skips_the_trained_batches_once():
    s = EpochSeededBatchSampler(50, seed=0, batch_size=8)
    s.set_epoch(2)
    full = list(s)
    s.resume_at(2, 3)
    assert list(s) == full[3:]
    assert list(s) == full  # only the first pass after the restore skips


@pytest.mark.parametrize("n, world", [(7, 2), (10, 3), (2, 4)])
def test_evaluation_shards_count_each_example_once(n, world):
    shards = [list(ShardSampler(n, r, world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert [len(ShardSampler(n, r, world)) for r in range(world)] == [len(s) for s in shards]


def test_precision_presets_and_bf16_check(monkeypatch):
    import attn.runner.schema as schema

    # Both branches on any CPU: the capability check is faked.
    for has_bf16 in (True, None):  # native bfloat16, or a CPU whose flags cannot be read
        monkeypatch.setattr(schema, "cpu_has_bf16", lambda has=has_bf16: has)
        assert load(["precision=bf16-mixed"]).trainer.precision == "bf16-mixed"
    assert load([]).trainer.precision == "32-true"
    monkeypatch.setattr(schema, "cpu_has_bf16", lambda: False)
    with pytest.raises(ConfigError, match="this CPU has no native bfloat16"):
        load(["precision=bf16-mixed"])
    with pytest.raises(ConfigError, match="16-mixed needs a GPU"):
        load(["trainer.precision=16-mixed"])


def test_cpu_bf16_flags_are_read_from_cpuinfo(tmp_path):
    from attn.runner.machine import cpu_has_bf16

    amd = "processor : 0\nflags : fpu sse2 avx2 avx512f avx512bw\n"  # AVX-512 without bf16
    cases = ((amd, False), (amd + "flags : avx512_bf16\n", True), ("flags : amx_bf16\n", True))
    for flags, expected in cases:
        (tmp_path / "cpuinfo").write_text(flags)
        assert cpu_has_bf16(str(tmp_path / "cpuinfo")) is expected
    assert cpu_has_bf16(str(tmp_path / "missing")) is None


def test_cpu_name_is_read_from_cpuinfo(tmp_path):
    from attn.runner.machine import cpu_name

    (tmp_path / "cpuinfo").write_text("processor : 0\nmodel name\t: AMD EPYC 7B13\nflags : avx2\n")
    assert cpu_name(str(tmp_path / "cpuinfo")) == "AMD EPYC 7B13"
    (tmp_path / "arm").write_text("processor : 0\nBogoMIPS : 50.00\n")
    assert cpu_name(str(tmp_path / "arm")) is None and cpu_name(str(tmp_path / "missing")) is None


def test_ddp_presets_compose():
    for preset, devices, strategy in (
        ("ddp", "auto", "ddp"),
        ("ddp_cpu", 2, "ddp"),
        ("ddp_fork", 2, "ddp_fork"),
    ):
        cfg = load([f"trainer={preset}"])
        assert (cfg.trainer.devices, cfg.trainer.strategy) == (devices, strategy)
        assert cfg.trainer.use_distributed_sampler is False


def _run(args, env, cwd):
    return subprocess.run(
        [ATTN, "train", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_cpu_two_ranks_one_run_dir_same_metrics(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("ATTN_RUN_DIR", None)
    (tmp_path / "one").mkdir()
    single = _run(SMALL, env, tmp_path / "one")
    assert single.returncode == 0, single.stderr[-2000:]
    (tmp_path / "two").mkdir()
    ddp = _run([*SMALL, "trainer=ddp_cpu"], env, tmp_path / "two")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("attn train: completed") == 1  # rank 1 prints nothing
    (run_dir,) = (tmp_path / "two" / "runs").iterdir()  # one directory for the whole job
    assert [p.name for p in (tmp_path / "two").rglob("results.json")] == ["results.json"]
    a = read_record(next((tmp_path / "one" / "runs").iterdir()) / "results.json")["metrics"]
    b = read_record(run_dir / "results.json")["metrics"]
    assert a["test/examples"] == b["test/examples"] == 301  # each test example counted exactly once
    assert b["train/steps"] == a["train/steps"]  # the same global batches
    assert abs(a["test/acc"] - b["test/acc"]) <= 0.02 and abs(a["test/loss"] - b["test/loss"]) <= 0.02
    device = read_record(run_dir / "results.json")["device"]
    assert (device["strategy"], device["world_size"], device["backend"]) == ("DDPStrategy", 2, "gloo")
    threads = read_record(run_dir / "results.json")["threads"]  # the two ranks share the CPUs
    assert (threads["ranks"], threads["cpus"]) == (2, max(1, available_cpus({}) // 2))


@pytest.mark.slow
def test_slurm_tasks_started_like_srun_share_one_run_dir(tmp_path):
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = {
            **os.environ, "WANDB_MODE": "disabled", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "attn-test",
            "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_NODEID": "0",
            "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NODELIST": "127.0.0.1",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
        }  # fmt: skip
        env.pop("ATTN_RUN_DIR", None)
        cmd = [ATTN, "train", *SMALL, "trainer=ddp_cpu"]
        out = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
        procs.append(subprocess.Popen(cmd, env=env, cwd=tmp_path, **out))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("slurm-4242-")
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "completed" and record["metrics"]["test/examples"] == 301
    # Two SLURM tasks without CPU counts in the environment: each takes its half of the CPUs.
    assert record["threads"]["limits"]["slurm"] == max(1, len(os.sched_getaffinity(0)) // 2)
    assert [p.name for p in tmp_path.rglob("results.json")] == ["results.json"]


@pytest.mark.slow
def test_a_signal_to_one_ddp_rank_stops_every_rank_after_the_same_batch(tmp_path):
    """SIGUSR1 reaches rank 0 only: the ranks agree to stop after one batch (no rank waits forever in the
    next all-reduce), the checkpoint is saved, and the resumed run completes."""
    env = {**os.environ, "WANDB_MODE": "disabled", "ATTN_RUN_DIR": str(tmp_path / "run")}
    args = [*SMALL, "trainer=ddp_cpu", "trainer.max_epochs=30", "task.datamodule.n_train=2048"]
    proc = subprocess.Popen([ATTN, "train", *args], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    while not list((tmp_path / "run" / "checkpoints").glob("best-*.ckpt")) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[0][-2000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGUSR1)
    try:
        out, _ = proc.communicate(timeout=120)  # a rank left waiting in an all-reduce would hang here
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # both ranks
        pytest.fail("the ranks did not stop together: one waits in a collective")
    assert proc.returncode == 138, out[-3000:]
    assert out.count("SIGUSR1 received") == 1
    record = read_record(tmp_path / "run" / "results.json")
    assert record["status"] == "interrupted" and "interrupted by SIGUSR1 at step" in record["error"]
    env.pop("ATTN_RUN_DIR")
    resumed = _run([f"resume={tmp_path / 'run'}"], env, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = read_record(tmp_path / "run" / "results.json")
    assert final["status"] == "completed" and final["metrics"]["train/epochs"] == 30
