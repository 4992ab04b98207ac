"""What produced a run: code version, libraries, host, command line, SLURM job (``results.json``)."""

from __future__ import annotations

import hashlib
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = ("torch", "lightning", "hydra-core", "omegaconf", "torchmetrics", "wandb", "numpy", "sacrebleu")
SLURM_VARS = {
    "job_id": "SLURM_JOB_ID",
    "array_job_id": "SLURM_ARRAY_JOB_ID",
    "array_task_id": "SLURM_ARRAY_TASK_ID",
    "restart_count": "SLURM_RESTART_COUNT",
    "nodelist": "SLURM_JOB_NODELIST",
}
SOURCE = Path(__file__).resolve().parent.parent  # the package root (the repository in a checkout)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(SOURCE), *args], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state() -> dict[str, Any] | None:
    """``{"commit", "dirty", "diff_sha1"}`` of the source tree attn runs from; ``None`` outside a git
    checkout (an installed wheel). ``diff_sha1`` hashes ``git diff HEAD`` (tracked files) when dirty."""
    if not (SOURCE / ".git").exists():
        return None
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None
    status = _git("status", "--porcelain", "--untracked-files=no") or ""
    dirty = bool(status.strip())
    diff = _git("diff", "HEAD", "--binary") if dirty else None
    return {
        "commit": commit.strip(),
        "dirty": dirty,
        "diff_sha1": hashlib.sha1(diff.encode()).hexdigest() if diff else None,
    }


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """The record's ``provenance``: attn's version and git state, Python and library versions, host,
    the command line and working directory, and the SLURM job (``None`` outside SLURM)."""
    slurm = {key: os.environ[var] for key, var in SLURM_VARS.items() if var in os.environ}
    return {
        "attn": _version("attn"),
        "git": git_state(),
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "host": socket.gethostname(),
        "command": list(sys.argv if argv is None else argv),
        "cwd": os.getcwd(),
        "slurm": slurm or None,
    }
