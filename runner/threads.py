"""CPU threads for one attn process, decided before torch is imported.

attn shares its machine: a laptop with other work, a SLURM node whose allocation is smaller than the
machine, a sweep running trials side by side, DDP ranks on one host. Torch's defaults (one intra-op
thread per core of the whole machine, OpenMP threads that spin while they wait) make every such
neighbour slow down both. :func:`thread_plan` decides instead, from what the process may really use:

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
and docs/threads.md). The user's own settings win: ``threads=<n>`` in the config, then
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
from typing import Any

from attn.models.flops import config_forward_flops, train_flops

from .errors import ConfigError
from .machine import cpu_limits, env_int, visible_gpus
from .schema import parse_threads

# attn marks the OpenMP variables it set itself, so that its child processes (DDP ranks) do not
# take them for the user's own.
MARK = "ATTN_SET_"
# Training FLOPs of one step per useful intra-op thread (see the module docstring).
FLOPS_PER_THREAD = 5e7
# libgomp's spin before a waiting thread sleeps (see the module docstring).
SPIN_COUNT = 2000


@dataclass
class ThreadPlan:
    """What :func:`thread_plan` decided for this process, and why (recorded in ``results.json``)."""

    mode: str  # auto | threads | OMP_NUM_THREADS | torch
    threads: int | None  # torch intra-op threads; None = torch's default (mode torch)
    cpus: int  # CPUs this process may use, after the share among local ranks
    ranks: int  # local processes of this job that share the CPUs
    limits: dict[str, int] = field(default_factory=dict)  # every CPU limit found, by source
    wait_policy: str | None = None  # OMP_WAIT_POLICY in force
    spin_count: str | None = None  # GOMP_SPINCOUNT in force
    step_gflop: float | None = None  # estimated training GFLOP per step, None when unknown
    env_in_time: bool = True  # set before torch was imported (else OpenMP kept its own settings)
    requested: int | None = None  # what threads= or OMP_NUM_THREADS asked for, when above the CPUs

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def local_ranks(cfg: Any, env: Mapping[str, str]) -> int:
    """How many processes of this job run on this host and share its CPUs."""
    torchrun = env_int(env, "LOCAL_WORLD_SIZE")
    if torchrun:
        return torchrun
    if "SLURM_JOB_ID" in env and (env_int(env, "SLURM_NTASKS") or 1) > 1:
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
        return max(1, visible_gpus(env))
    return 1


def step_flops(cfg: Any) -> float | None:
    """Training FLOPs of one step of the configured encoder (3 x forward), or None when unknown.

    The encoder's count of ``attn bench`` on ``task.datamodule``'s batch size and length; a decoder
    or a speech front end is not counted. The config is not validated yet: what does not fit gives None.
    """
    batch = _get(cfg, "task.datamodule.batch_size")
    length = _get(cfg, "task.datamodule.max_len") or _get(cfg, "model.max_len")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (batch, length)):
        return None
    try:
        forward = config_forward_flops(cfg["model"], cfg["attention"], length)
        flops = train_flops(forward, batch)
    except Exception:  # a value validation will reject (e.g. model.d_model=abc)
        return None
    return flops if math.isfinite(flops) and flops > 0 else None


def _users(env: Mapping[str, str], key: str) -> str | None:
    """``env[key]`` if the user set it (not attn for one of its own child processes)."""
    value = env.get(key)
    if value is None or env.get(MARK + key) == value:
        return None
    return value


def thread_plan(
    cfg: Any, env: Mapping[str, str] | None = None, cgroup: int | bool | None = True
) -> ThreadPlan:
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
    # More threads than CPUs never helps, and 100000 of them exhaust memory (or crash OpenMP): capped.
    available, requested = min(limits.values()), None
    if threads > available:
        requested, threads = threads, available
    return ThreadPlan(mode, threads, cpus, ranks, limits, wait, spin, gflop, requested=requested)


def prepare(cfg: Any) -> ThreadPlan:
    """Plan this process's threads for ``cfg`` and put the plan into the environment (before torch).

    Raises the config's one-line error for a bad ``threads`` value.
    """
    try:
        p = apply_env(thread_plan(cfg))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if p.requested is not None:
        source = "threads" if p.mode == "threads" else "OMP_NUM_THREADS"
        print(
            f"attn: {source}={p.requested} is more than the {min(p.limits.values())} CPUs this process may"
            f" use; using {p.threads} threads",
            file=sys.stderr,
            flush=True,
        )
    return p


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
