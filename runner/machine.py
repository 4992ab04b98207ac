"""Facts about the machine and the job this process runs in: the CPU, the CPUs it may use, its rank,
and the SLURM job around it. Standard library only: the bottom of the engine."""

from __future__ import annotations

import math
import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

from .paths import CPUS_ENV

# --------------------------------------------------------------------------------------------
# the CPU


def cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The CPU's model name (Linux ``model name``); ``None`` when unknown."""
    try:
        lines = Path(cpuinfo).read_text(errors="replace").splitlines()
    except OSError:
        return None
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), None)


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU computes in bfloat16 natively (Linux flags); ``None`` when unknown."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    flags = set(text.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


# --------------------------------------------------------------------------------------------
# the CPUs this process may use


def env_int(env: Mapping[str, str], key: str) -> int | None:
    """``env[key]`` as a whole number >= 1 (SLURM's ``4(x2)`` and ``4,2`` forms read as 4); else None."""
    try:
        value = int(env.get(key, "").split("(")[0].split(",")[0])
    except ValueError:
        return None
    return value if value >= 1 else None


def cgroup_cpus(root: str = "/sys/fs/cgroup", self_cgroup: str = "/proc/self/cgroup") -> int | None:
    """The CPU quota of this process's cgroup (and its parents) in whole CPUs; None without one."""
    try:
        lines = Path(self_cgroup).read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        rel = path.strip("/")
        if controllers == "":  # cgroup v2: <root>/<path>/cpu.max = "<quota|max> <period>"
            for d in _parents(Path(root), rel):
                parts = _read(d / "cpu.max").split()
                if len(parts) == 2 and parts[0] != "max" and _positive(parts[0]) and _positive(parts[1]):
                    quotas.append(int(parts[0]) / int(parts[1]))
        elif "cpu" in controllers.split(","):  # v1: cpu.cfs_quota_us / cpu.cfs_period_us (-1 = none)
            for mount in {controllers, "cpu", "cpu,cpuacct"}:
                for d in _parents(Path(root) / mount, rel):
                    quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
                    if _positive(quota) and _positive(period):
                        quotas.append(int(quota) / int(period))
    return max(1, math.floor(min(quotas))) if quotas else None


def _parents(base: Path, rel: str) -> list[Path]:
    parts = [p for p in rel.split("/") if p]
    return [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _positive(text: str) -> bool:
    return text.isdigit() and int(text) > 0


def cpu_limits(env: Mapping[str, str] | None = None, cgroup: int | bool | None = True) -> dict[str, int]:
    """Every limit on the CPUs this process may use, by source (``affinity``, ``cgroup``, ...).

    ``cgroup=True`` reads the cgroup quota; tests pass a number (or None) instead.
    """
    env = os.environ if env is None else env
    limits: dict[str, int] = {}
    try:
        limits["affinity"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        limits["affinity"] = os.cpu_count() or 1
    quota = cgroup_cpus() if cgroup is True else cgroup
    if quota:
        limits["cgroup"] = int(quota)
    if "SLURM_JOB_ID" in env:  # per task: its own CPUs, or the job's CPUs here shared by its tasks here
        tasks = slurm_tasks_per_node(env)
        per_task = env_int(env, "SLURM_CPUS_PER_TASK")
        on_node = env_int(env, "SLURM_CPUS_ON_NODE") or (limits["affinity"] if tasks > 1 else None)
        if per_task is None and on_node:
            per_task = max(1, on_node // tasks)
        if per_task:
            limits["slurm"] = per_task
    share = env_int(env, CPUS_ENV)
    if share:
        limits["sweep"] = share
    return limits


def slurm_tasks_per_node(env: Mapping[str, str]) -> int:
    """The tasks of this SLURM job step on this node (1 outside SLURM)."""
    for key in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        tasks = env_int(env, key)
        if tasks:
            return tasks
    tasks, nodes = env_int(env, "SLURM_NTASKS") or 1, env_int(env, "SLURM_NNODES") or 1
    return max(1, math.ceil(tasks / nodes))


def available_cpus(env: Mapping[str, str] | None = None) -> int:
    """The CPUs this process may really use (the smallest of :func:`cpu_limits`)."""
    return min(cpu_limits(env).values())


def visible_gpus(env: Mapping[str, str]) -> int:
    """The GPUs this process sees (``CUDA_VISIBLE_DEVICES``, else the NVIDIA device files)."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len(list(Path("/dev").glob("nvidia[0-9]*")))


# --------------------------------------------------------------------------------------------
# the job


def is_rank_zero() -> bool:
    """Whether this process is rank 0 of its job (torchrun, SLURM, or Lightning's re-launched ranks)."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"]) == 0
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"]) == 0
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


def job_id() -> str | None:
    """This process's SLURM job as squeue shows it (``<array job>_<task>`` for an array task), or None
    outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def restart_count() -> int:
    """How often SLURM has restarted this job (``SLURM_RESTART_COUNT``; 0 for its first run)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def submitit_signal() -> int | None:
    """The signal on which submitit (the sweep's trials) checkpoints and requeues the job itself."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return None
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, f"SIG{name}", signal.SIGUSR2)


def requeue(job: str) -> str | None:
    """``scontrol requeue`` of the job; None when done, else why not."""
    try:
        out = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if out.returncode != 0:
        return (out.stderr or out.stdout).strip().splitlines()[-1] if (out.stderr or out.stdout) else "failed"
    return None
