"""Where things are: the config tree and its groups, run directories, and the environment variables
attn's processes pass to each other. Standard library only: the bottom of the engine."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # the packaged Hydra config tree
# The config groups a user picks an option of (``group=option``), in the order ``--help`` lists them.
GROUPS = (
    "task", "model", "attention", "softmax", "precision", "optim", "trainer", "logger", "experiment", "debug",
)  # fmt: skip
RUN_DIR_ENV = "ATTN_RUN_DIR"  # a run's directory, given by a sweep to its trials and by a run to its ranks
CPUS_ENV = "ATTN_CPUS"  # the CPUs a sweep gives one trial
PHASE_ENV = "ATTN_SWEEP_PHASE"  # a tuned sweep's phase of a trial (tune, final): recorded in results.json
# The user's config directories (``--config-dir``; several joined by os.pathsep), searched after ``conf/``.
CONFIG_DIR_ENV = "ATTN_CONFIG_DIR"


def config_dirs() -> list[Path]:
    """The user's config directories (``ATTN_CONFIG_DIR``, set by ``--config-dir``), absolute."""
    raw = os.environ.get(CONFIG_DIR_ENV, "")
    return [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]


def group_options(group: str) -> list[str]:
    """The option names of a config group (the YAML files in ``conf/<group>/`` and in the user's config
    directories' ``<group>/``, those of a subdirectory as ``sub/name``: ``experiment=recall/full_d64``);
    ``sweep`` lists the sweep presets."""
    found = set()
    for root in (CONF_DIR, *config_dirs()):
        base = root / group
        found |= {p.relative_to(base).with_suffix("").as_posix() for p in base.rglob("*.yaml")}
    return sorted(found)


def find_option(group: str, option: str) -> Path | None:
    """The YAML file of ``group=option``: the packaged one, else the first user directory's."""
    for root in (CONF_DIR, *config_dirs()):
        path = root / group / f"{option}.yaml"
        if path.is_file():
            return path
    return None


def short_name(name: str) -> str:
    """``name`` made safe for a directory: letters, digits, ``.``, ``_`` and ``-``, at most 60 chars."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:60] or "run"


def values_name(values: dict[str, str]) -> str:
    """A trial directory's name from its values: ``attention=linear,d_model=64`` made safe (last part of
    each dotted key)."""
    return short_name(",".join(f"{k.split('.')[-1]}={v}" for k, v in values.items()))


def now_iso() -> str:
    """The current time, ISO 8601 with time zone."""
    return datetime.now(UTC).astimezone().isoformat(timespec="seconds")


def resolve_run_dir(runs_root: str, name: str) -> Path:
    """The run directory: ``$ATTN_RUN_DIR`` if set; in a SLURM job ``<runs_root>/slurm-<job id>-<name>``;
    else ``<runs_root>/<timestamp>-<name>``.

    The caller exports the chosen path as ``ATTN_RUN_DIR`` for the duration of the run, so that
    processes the run starts (DDP ranks) resolve the same directory.
    """
    env = os.environ.get(RUN_DIR_ENV)
    slurm_job = os.environ.get("SLURM_JOB_ID")
    if env:
        path = Path(env)
    elif slurm_job and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        # Every task of a SLURM job (and the job after a requeue) must agree without talking.
        array = os.environ.get("SLURM_ARRAY_TASK_ID")
        job = f"{slurm_job}_{array}" if array else slurm_job
        path = Path(runs_root) / f"slurm-{job}-{short_name(name)}"
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(runs_root) / f"{stamp}-{short_name(name)}"
        n = 1
        while path.exists():
            n += 1
            path = Path(runs_root) / f"{stamp}-{short_name(name)}-{n}"
    return path.resolve()
