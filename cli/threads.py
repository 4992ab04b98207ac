"""CPU threads for one attn process, decided before torch is imported.

attn shares its machine: a laptop with other work, a SLURM node whose allocation is smaller than the
machine, a sweep running trials side by side, DDP ranks on one host. Torch's defaults (one intra-op
thread per core of the whole machine, OpenMP threads that spin while they wait) make every such
neighbour slow down both. :func:`plan` decides instead, from what the process may really use:

* the CPUs it may run on: the smallest of ``os.sched_getaffinity``, the cgroup CPU quota
  (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), ``SLURM_CPUS_PER_TASK`` (or the job's CPUs on the node
  divided by its tasks there) and ``ATTN_CPUS``, the share a sweep gives each trial;
* divided among the local ranks of a DDP job started on this host (``trainer.devices`` processes,
  or torchrun's ``LOCAL_WORLD_SIZE``; SLURM tasks already come with their own CPUs);
* and no more threads than the model's work per step can use: one thread per
  :data:`FLOPS_PER_THREAD` training FLOPs of a step (measured on 2 cores: a 0.03 GFLOP step ran
  fastest on one thread, a 0.13 GFLOP step on two).

OpenMP threads that wait give their core back soon: ``OMP_WAIT_POLICY=PASSIVE``, and for GNU
OpenMP (the runtime of torch's Linux wheels) a short spin first, ``GOMP_SPINCOUNT`` =
:data:`SPIN_COUNT` iterations, which libgomp uses instead of the policy's spin count of 0. Torch's
default (libgomp spinning 300,000 iterations) costs a neighbour a whole core per waiting thread;
a plain passive wait costs a small model up to half its speed alone, because every parallel region
then wakes its threads through the kernel; the short spin keeps most of both (benchmarks/contention.py
and the README's threads section). The user's own settings win: ``threads=<n>`` in the config, then
``OMP_NUM_THREADS``, ``OMP_WAIT_POLICY`` and ``GOMP_SPINCOUNT`` set in the environment; ``threads=torch``
leaves everything to torch and OpenMP (the behaviour before this policy). :func:`apply_env` must
run before torch is imported, because OpenMP reads its environment once, when torch loads it.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The CPUs a sweep gives one trial (set by ``attn sweep`` in the trial's environment).
CPUS_ENV = "ATTN_CPUS"
# attn marks the OpenMP variables it set itself, so that its child processes (DDP ranks) do not
# take them for the user's own.
MARK = "ATTN_SET_"
# Training FLOPs of one step per useful intra-op thread (see the module docstring).
FLOPS_PER_THREAD = 5e7
# libgomp's spin before a waiting thread sleeps (see the module docstring).
SPIN_COUNT = 2000
THREADS_CHOICES = "'auto', 'torch' or an integer >= 1"


@dataclass
class ThreadPlan:
    """What :func:`plan` decided for this process, and why (recorded in ``results.json``)."""

    mode: str  # auto | threads | OMP_NUM_THREADS | torch
    threads: int | None  # torch intra-op threads; None = torch's default (mode torch)
    cpus: int  # CPUs this process may use, after the share among local ranks
    ranks: int  # local processes of this job that share the CPUs
    limits: dict[str, int] = field(default_factory=dict)  # every CPU limit found, by source
    wait_policy: str | None = None  # OMP_WAIT_POLICY in force
    spin_count: str | None = None  # GOMP_SPINCOUNT in force
    step_gflop: float | None = None  # estimated training GFLOP per step, None when unknown
    env_in_time: bool = True  # set before torch was imported (else OpenMP kept its own settings)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_threads(value: Any) -> str | int:
    """``threads`` from the config: ``'auto'``, ``'torch'`` or an int >= 1; ``ValueError`` otherwise."""
    if isinstance(value, str) and value.strip() in ("auto", "torch"):
        return value.strip()
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(f"threads={value!r} is invalid: must be {THREADS_CHOICES}")


def _int_env(env: Mapping[str, str], key: str) -> int | None:
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
        per_task = _int_env(env, "SLURM_CPUS_PER_TASK")
        on_node = _int_env(env, "SLURM_CPUS_ON_NODE") or (limits["affinity"] if tasks > 1 else None)
        if per_task is None and on_node:
            per_task = max(1, on_node // tasks)
        if per_task:
            limits["slurm"] = per_task
    share = _int_env(env, CPUS_ENV)
    if share:
        limits["sweep"] = share
    return limits


def slurm_tasks_per_node(env: Mapping[str, str]) -> int:
    """The tasks of this SLURM job step on this node (1 outside SLURM)."""
    for key in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        tasks = _int_env(env, key)
        if tasks:
            return tasks
    tasks, nodes = _int_env(env, "SLURM_NTASKS") or 1, _int_env(env, "SLURM_NNODES") or 1
    return max(1, math.ceil(tasks / nodes))


def available_cpus(env: Mapping[str, str] | None = None) -> int:
    """The CPUs this process may really use (the smallest of :func:`cpu_limits`)."""
    return min(cpu_limits(env).values())


def _get(cfg: Any, path: str, default: Any = None) -> Any:
    node = cfg
    for key in path.split("."):
        try:
            node = node.get(key) if hasattr(node, "get") else None
        except Exception:  # an interpolation that does not resolve
            return default
        if node is None:
            return default
    return node


def _visible_gpus(env: Mapping[str, str]) -> int:
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len(list(Path("/dev").glob("nvidia[0-9]*")))


def local_ranks(cfg: Any, env: Mapping[str, str]) -> int:
    """How many processes of this job run on this host and share its CPUs."""
    torchrun = _int_env(env, "LOCAL_WORLD_SIZE")
    if torchrun:
        return torchrun
    if "SLURM_JOB_ID" in env and (_int_env(env, "SLURM_NTASKS") or 1) > 1:
        return 1  # each SLURM task is one rank, and cpu_limits gives each its own CPUs
    if "ddp" not in str(_get(cfg, "trainer.strategy", "auto")):
        return 1
    devices = _get(cfg, "trainer.devices", 1)
    if isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1:
        return devices
    if not isinstance(devices, str) and hasattr(devices, "__len__"):  # a list of device ids
        return max(1, len(devices))
    accelerator = str(_get(cfg, "trainer.accelerator", "cpu"))
    if accelerator in ("gpu", "cuda", "auto"):  # devices=auto/-1: every visible GPU, else one CPU process
        return max(1, _visible_gpus(env))
    return 1


def step_flops(cfg: Any) -> float | None:
    """Training FLOPs of one step of the configured encoder (3 x forward), or None when unknown.

    The encoder's count of ``attn bench`` on ``task.datamodule``'s batch size and length; a decoder
    or a speech front end is not counted. The config is not validated yet: what does not fit gives None.
    """
    from .bench import train_flops_per_step

    batch = _get(cfg, "task.datamodule.batch_size")
    length = _get(cfg, "task.datamodule.max_len") or _get(cfg, "model.max_len")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (batch, length)):
        return None
    try:
        flops = float(train_flops_per_step(cfg, batch, length))
    except Exception:  # a value validation will reject (e.g. model.d_model=abc)
        return None
    return flops if math.isfinite(flops) and flops > 0 else None


def _users(env: Mapping[str, str], key: str) -> str | None:
    """``env[key]`` if the user set it (not attn for one of its own child processes)."""
    value = env.get(key)
    if value is None or env.get(MARK + key) == value:
        return None
    return value


def plan(cfg: Any, env: Mapping[str, str] | None = None, cgroup: int | bool | None = True) -> ThreadPlan:
    """The thread settings for a process that runs ``cfg`` (see the module docstring)."""
    env = os.environ if env is None else env
    choice = parse_threads(_get(cfg, "threads", "auto"))
    limits = cpu_limits(env, cgroup)
    ranks = local_ranks(cfg, env)
    cpus = max(1, min(limits.values()) // ranks)
    flops = step_flops(cfg)
    gflop = None if flops is None else round(flops / 1e9, 4)
    if choice == "torch":
        return ThreadPlan(
            "torch", None, cpus, ranks, limits, env.get("OMP_WAIT_POLICY"), env.get("GOMP_SPINCOUNT"), gflop
        )
    wait = _users(env, "OMP_WAIT_POLICY")
    spin = _users(env, "GOMP_SPINCOUNT")
    if wait is None and spin is None:  # the user chose neither: passive after a short spin
        wait, spin = "PASSIVE", str(SPIN_COUNT)
    user_omp = _users(env, "OMP_NUM_THREADS")
    if isinstance(choice, int):
        mode, threads = "threads", choice
    elif user_omp is not None and user_omp.strip().isdigit() and int(user_omp) >= 1:
        mode, threads = "OMP_NUM_THREADS", int(user_omp)
    else:
        useful = cpus if flops is None else max(1, math.floor(flops / FLOPS_PER_THREAD))
        mode, threads = "auto", min(cpus, useful)
    return ThreadPlan(mode, threads, cpus, ranks, limits, wait, spin, gflop)


def prepare(cfg: Any) -> ThreadPlan:
    """Plan this process's threads for ``cfg`` and put the plan into the environment (before torch).

    Raises the config's one-line error for a bad ``threads`` value.
    """
    from .schema import ConfigError

    try:
        return apply_env(plan(cfg))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def apply_env(p: ThreadPlan, env: MutableMapping[str, str] | None = None) -> ThreadPlan:
    """Put the plan into the environment, for OpenMP and for the processes this one starts.

    Must run before torch is imported; the plan records whether it did (``env_in_time``).
    """
    env = os.environ if env is None else env
    p.env_in_time = "torch" not in sys.modules
    if p.mode == "torch":
        return p
    settings = (
        ("OMP_NUM_THREADS", str(p.threads)),
        ("OMP_WAIT_POLICY", p.wait_policy),
        ("GOMP_SPINCOUNT", p.spin_count),
    )
    for key, value in settings:
        if value is not None and env.get(key) != value:  # a user's own value stays unmarked
            env[key] = env[MARK + key] = value
    return p


def apply_torch(p: ThreadPlan) -> None:
    """Set torch's intra-op threads to the plan's (after torch is imported)."""
    if p.threads is not None:
        import torch

        if torch.get_num_threads() != p.threads:
            torch.set_num_threads(p.threads)


def describe(p: ThreadPlan) -> str:
    """One line for people: threads, CPUs and where the numbers came from."""
    limits = ", ".join(f"{k} {v}" for k, v in p.limits.items())
    if p.mode == "torch":
        return f"threads: torch's default (threads=torch); CPUs {p.cpus} ({limits})"
    share = f", shared by {p.ranks} local ranks" if p.ranks > 1 else ""
    work = f", {p.step_gflop:g} GFLOP/step" if p.step_gflop is not None else ""
    return (
        f"threads: {p.threads} ({p.mode}{work}); CPUs {p.cpus} ({limits}{share});"
        f" OMP_WAIT_POLICY={p.wait_policy}, GOMP_SPINCOUNT={p.spin_count}"
    )
