"""Run directories and run records (``results.json``), written atomically.

``results.json`` keys are a stable contract read by ``attn report`` and by users' scripts::

    status, run_dir, config, metrics, best_checkpoint, started, finished, duration_s, error
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RUN_DIR_ENV = "ATTN_RUN_DIR"
STATUSES = ("completed", "failed", "interrupted")
RECORD_KEYS = (
    "status", "run_dir", "config", "metrics", "best_checkpoint", "started", "finished", "duration_s",
    "error",
)  # fmt: skip


def short_name(name: str) -> str:
    """``name`` made safe for a directory: letters, digits, ``.``, ``_`` and ``-``, at most 60 chars."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:60] or "run"


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


def now_iso() -> str:
    """The current time, ISO 8601 with time zone."""
    return datetime.now(UTC).astimezone().isoformat(timespec="seconds")


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename.

    The file gets the mode of any file this process creates (0644 under the usual umask), not the
    temporary file's 0600.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_rank_zero() -> bool:
    """Whether this process is rank 0 of its job (torchrun, SLURM, or Lightning's re-launched ranks)."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"]) == 0
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"]) == 0
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


class RunRecord:
    """Accumulates one run's record and writes it as ``<run_dir>/results.json`` (rank 0 only)."""

    def __init__(self, run_dir: Path, config: dict[str, Any], write: bool = True) -> None:
        self.run_dir, self.write = run_dir, write
        self.data: dict[str, Any] = {
            "status": "failed",
            "run_dir": str(run_dir),
            "config": config,
            "metrics": {},
            "best_checkpoint": None,
            "started": now_iso(),
            "finished": None,
            "duration_s": None,
            "error": None,
        }
        self._t0 = time.perf_counter()

    def finish(self, status: str, error: str | None = None) -> dict[str, Any]:
        """Set the final status, times and error line, write ``results.json``, return the record."""
        assert status in STATUSES, status
        self.data.update(
            status=status,
            error=error,
            finished=now_iso(),
            duration_s=round(time.perf_counter() - self._t0, 3),
        )
        if self.write:
            write_json_atomic(self.run_dir / "results.json", self.data)
        return self.data


def read_record(path: str | Path) -> dict[str, Any]:
    """Read a ``results.json``; ``ValueError`` naming the path if it is corrupt or incomplete."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable run record ({e})") from None
    missing = [k for k in RECORD_KEYS if k not in data] if isinstance(data, dict) else list(RECORD_KEYS)
    if missing:
        raise ValueError(f"{path}: run record lacks {', '.join(missing)}")
    return data
