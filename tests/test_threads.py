"""The thread policy's decisions (attn.runner.threads), on faked CPU limits: nothing here is timed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attn.runner.config import load
from attn.runner.errors import ConfigError
from attn.runner.machine import cgroup_cpus, cpu_limits
from attn.runner.sweep import trial_cpus
from attn.runner.threads import MARK, apply_env, thread_plan

ATTN = str(Path(sys.executable).parent / "attn")
TINY = ["model=small", "task.datamodule.batch_size=16"]  # 0.03 GFLOP per step: one thread is enough


@pytest.fixture
def cpus(monkeypatch):
    """Pretend this process may run on ``n`` CPUs, whatever the machine has."""

    def set_cpus(n: int) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)))

    return set_cpus


def _plan(overrides, env=None, cgroup=None):
    return thread_plan(load(overrides), env=env or {}, cgroup=cgroup)


def test_threads_option_is_checked_at_config_time():
    assert load([]).threads == "auto"
    assert load(["threads=3"]).threads == 3
    assert load(["threads=torch"]).threads == "torch"
    for bad in ("0", "-2", "abc", "1.5", "true"):
        with pytest.raises(ConfigError, match=r"threads=.* is invalid: must be 'auto', 'torch' or an"):
            load([f"threads={bad}"])


def test_auto_uses_every_cpu_for_a_model_that_can_use_them(cpus):
    cpus(2)
    p = _plan([])  # the default model: 1.3 GFLOP per step
    assert (p.mode, p.threads, p.cpus, p.ranks) == ("auto", 2, 2, 1)
    assert (p.wait_policy, p.spin_count) == ("PASSIVE", "2000")
    assert p.limits == {"affinity": 2} and p.step_gflop == pytest.approx(1.3086, abs=1e-3)


def test_auto_gives_a_tiny_model_one_thread(cpus):
    cpus(8)
    p = _plan(TINY)
    assert p.step_gflop < 0.05 and p.threads == 1 and p.cpus == 8
    assert _plan(["model=small"]).threads == 2  # 0.13 GFLOP per step: two threads were faster
    assert _plan([]).threads == 8


def test_affinity_cgroup_slurm_and_sweep_limits_take_the_smallest(cpus):
    cpus(16)
    assert _plan([], cgroup=4).limits == {"affinity": 16, "cgroup": 4}
    assert _plan([], cgroup=4).threads == 4
    slurm = {"SLURM_JOB_ID": "7", "SLURM_CPUS_PER_TASK": "3", "SLURM_NTASKS": "1"}
    assert _plan([], env=slurm).threads == 3
    on_node = {"SLURM_JOB_ID": "7", "SLURM_CPUS_ON_NODE": "6", "SLURM_NTASKS_PER_NODE": "2"}
    on_node["SLURM_NTASKS"] = "2"
    p = _plan([], env=on_node)
    assert (p.limits["slurm"], p.threads, p.ranks) == (3, 3, 1)  # each task is a rank with its share
    assert _plan([], env={"ATTN_CPUS": "5"}, cgroup=4).threads == 4
    assert _plan([], env={"ATTN_CPUS": "2"}, cgroup=4).limits["sweep"] == 2
    assert _plan([], env={"ATTN_CPUS": "2"}).threads == 2
    assert _plan([], env={"SLURM_CPUS_PER_TASK": "3"}).threads == 16  # not in a SLURM job: ignored


def test_srun_tasks_without_cpu_counts_share_the_affinity(cpus):
    cpus(2)
    env = {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "2", "SLURM_NNODES": "1"}
    assert _plan(["trainer=ddp_cpu"], env=env).threads == 1


def test_local_ddp_ranks_share_the_cpus(cpus):
    cpus(4)
    for preset in ("ddp_cpu", "ddp_fork"):
        p = _plan([f"trainer={preset}"])
        assert (p.ranks, p.cpus, p.threads) == (2, 2, 2)
    assert _plan(["trainer=ddp_cpu", "trainer.devices=4"]).threads == 1
    assert _plan(["trainer=ddp_cpu"], env={"LOCAL_WORLD_SIZE": "4"}).threads == 1  # torchrun
    no_gpu = {"CUDA_VISIBLE_DEVICES": ""}
    assert _plan(["trainer=ddp"], env=no_gpu).ranks == 1  # devices=auto without a GPU: one CPU process
    assert _plan(["trainer=ddp"], env={"CUDA_VISIBLE_DEVICES": "0,1"}).ranks == 2
    cpus(3)
    assert _plan(["trainer=ddp_cpu", "trainer.devices=4"]).threads == 1  # never 0


def test_users_settings_win(cpus):
    cpus(8)
    p = _plan([], env={"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "ACTIVE"})
    assert (p.mode, p.threads, p.wait_policy, p.spin_count) == ("OMP_NUM_THREADS", 3, "ACTIVE", None)
    p = _plan([], env={"GOMP_SPINCOUNT": "0"})  # a user's own spin count: no policy added to it
    assert (p.wait_policy, p.spin_count) == (None, "0")
    p = _plan(["threads=5"], env={"OMP_NUM_THREADS": "3"})
    assert (p.mode, p.threads) == ("threads", 5)  # the config's threads beats the environment
    capped = _plan(["threads=12"])  # more threads than CPUs: capped at the CPUs, and recorded
    assert (capped.mode, capped.threads, capped.requested) == ("threads", 8, 12)
    omp = _plan([], env={"OMP_NUM_THREADS": "100000"})  # once a segfault inside OpenMP (issue 25)
    assert (omp.mode, omp.threads, omp.requested) == ("OMP_NUM_THREADS", 8, 100000)
    assert _plan(["threads=8"]).requested is None
    p = _plan(["threads=torch"], env={"OMP_WAIT_POLICY": "ACTIVE"})
    assert (p.mode, p.threads, p.wait_policy) == ("torch", None, "ACTIVE")


def test_apply_env_marks_only_what_attn_set(cpus):
    cpus(4)
    env: dict[str, str] = {}
    apply_env(_plan(["trainer=ddp_cpu"], env=env), env)
    assert env == {
        "OMP_NUM_THREADS": "2", MARK + "OMP_NUM_THREADS": "2",
        "OMP_WAIT_POLICY": "PASSIVE", MARK + "OMP_WAIT_POLICY": "PASSIVE",
        "GOMP_SPINCOUNT": "2000", MARK + "GOMP_SPINCOUNT": "2000",
    }  # fmt: skip
    # A child process (a DDP rank) inherits attn's values and does not take them for the user's:
    child = _plan(["trainer=ddp_cpu"], env=dict(env))
    assert child.mode == "auto" and child.threads == 2
    cpus(2)
    assert _plan([], env=dict(env)).threads == 2  # recomputed, not the inherited 2 as a user's setting
    user = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "ACTIVE"}
    apply_env(_plan([], env=user), user)
    assert user == {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "ACTIVE"}  # left as the user set them
    untouched: dict[str, str] = {}
    apply_env(_plan(["threads=torch"], env=untouched), untouched)
    assert untouched == {}


def test_cgroup_quota_v2_and_v1(tmp_path):
    v2 = tmp_path / "v2"
    (v2 / "job" / "step").mkdir(parents=True)
    (v2 / "job" / "cpu.max").write_text("300000 100000\n")
    (v2 / "job" / "step" / "cpu.max").write_text("max 100000\n")
    (tmp_path / "self2").write_text("0::/job/step\n")
    assert cgroup_cpus(str(v2), str(tmp_path / "self2")) == 3  # the parent's quota limits the child
    (v2 / "job" / "step" / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpus(str(v2), str(tmp_path / "self2")) == 1  # 1.5 CPUs: one whole CPU
    v1 = tmp_path / "v1" / "cpu,cpuacct" / "docker"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "self1").write_text("4:memory:/docker\n3:cpu,cpuacct:/docker\n")
    assert cgroup_cpus(str(tmp_path / "v1"), str(tmp_path / "self1")) == 2
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpus(str(tmp_path / "v1"), str(tmp_path / "self1")) is None
    assert cgroup_cpus(str(tmp_path), str(tmp_path / "missing")) is None


def test_cpu_limits_read_the_real_machine():
    limits = cpu_limits({})
    assert limits["affinity"] == len(os.sched_getaffinity(0)) and min(limits.values()) >= 1


def test_sweep_shares_the_cpus_among_trials_at_once(monkeypatch):
    import attn.runner.sweep as sweep

    monkeypatch.setattr(sweep, "available_cpus", lambda env=None: 4)
    assert trial_cpus("joblib", 2, 10) == 2
    assert trial_cpus("joblib", 3, 10) == 1
    assert trial_cpus("joblib", 4, 1) == 4  # one trial left: it gets every CPU
    assert trial_cpus("submitit_local", 1, 8) == 1
    assert trial_cpus("basic", 1, 8) is None and trial_cpus("slurm", 1, 8) is None


def test_plan_survives_an_unvalidated_config(cpus):
    """The plan is made before validation: bad values elsewhere leave it to validation's error."""
    from attn.runner.config import compose

    cpus(2)
    cfg = compose(["model.d_model=abc", "trainer.devices=xyz", "task.datamodule.batch_size=0"])
    p = thread_plan(cfg, env={}, cgroup=None)
    assert (p.step_gflop, p.threads, p.ranks) == (None, 2, 1)
    with pytest.raises(ConfigError, match=r"model\.d_model='abc' is invalid"):
        load(["model.d_model=abc"], before_validate=lambda c: thread_plan(c, env={}, cgroup=None))


def test_resume_may_change_threads():
    from attn.runner.resume import RESUMABLE_KEYS

    assert "threads" in RESUMABLE_KEYS


@pytest.mark.slow
def test_attn_train_decides_before_torch_and_records_it(tmp_path):
    """The CLI plans before torch is imported (else OpenMP ignores the plan) and records the plan."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_", MARK))}
    env.update(WANDB_MODE="disabled", ATTN_CPUS="1")  # as a sweep trial with one CPU would get
    args = [ATTN, "train", "debug=fast_dev_run", "logger=none", "baseline=false"]
    out = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (record,) = tmp_path.glob("runs/*/results.json")
    plan_ = json.loads(record.read_text())["threads"]
    assert plan_["env_in_time"] is True, "torch was imported before the thread plan"
    assert (plan_["mode"], plan_["threads"], plan_["limits"]["sweep"], plan_["wait_policy"]) == (
        "auto", 1, 1, "PASSIVE",
    )  # fmt: skip
    assert plan_["spin_count"] == "2000"


def test_absurd_thread_counts_are_capped_with_one_line(tmp_path):
    """threads=100000 (MemoryError tracebacks before) and OMP_NUM_THREADS=100000 (a segfault inside
    OpenMP) are capped at the CPUs this process may use, with one line (issue 25)."""
    cpus = min(cpu_limits().values())
    for args, env in ((["threads=100000"], {}), ([], {"OMP_NUM_THREADS": "100000"})):
        out = subprocess.run(
            [ATTN, "train", *args, "--cfg", "job"], capture_output=True, text=True, cwd=tmp_path,
            env={**os.environ, **env}, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        (line,) = [ln for ln in out.stderr.splitlines() if ln.strip()]
        assert line.endswith(
            f"=100000 is more than the {cpus} CPUs this process may use; using {cpus} threads"
        )
