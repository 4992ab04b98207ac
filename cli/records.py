"""Run directories and run records (``results.json``), written atomically.

``results.json`` keys are a stable contract read by ``attn report`` and by users' scripts::

    status, run_dir, config, metrics, best_checkpoint, started, finished, duration_s, error

and, after those, ``provenance`` (what produced the run), ``attempts`` (start, end, duration, status,
error, steps and exit code of every attempt, resumed ones included), ``total_duration_s``,
``config_sha1``, ``device``, ``threads``, ``predictions`` (the test predictions file) and, for a resumed
run, ``resumed_from``.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
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


class RunDirBusy(RuntimeError):
    """Another live process holds the lock of a run (or sweep) directory."""


class DirLock:
    """An exclusive lock on a directory: ``<dir>/<name>`` locked with ``fcntl.lockf`` (POSIX record
    locks, which NFS carries to the server), holding the holder's pid, host and start time.

    The kernel releases the lock when its process ends, however it ends (``kill -9`` included), so a
    stale lock file of a dead process never blocks; the file itself stays and only says who held it.
    """

    def __init__(self, directory: str | Path, name: str = ".lock", what: str = "run directory") -> None:
        self.path = Path(directory) / name
        self.what = what
        self.fd: int | None = None

    def holder(self) -> str:
        """Who holds (or last held) the lock, as written in the lock file."""
        try:
            pid, host, since = self.path.read_text().split()[:3]
        except (OSError, ValueError):
            return "another process"
        return f"pid {pid} on {host} (since {since})"

    def acquire(self, wait: bool = False) -> DirLock:
        """Take the lock; ``RunDirBusy`` naming the holder when it is held and ``wait`` is false."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError:
            os.close(fd)
            raise RunDirBusy(
                f"{self.what} {self.path.parent} is in use by {self.holder()}; wait for it or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()} {now_iso()}\n".encode())
        self.fd = fd
        return self

    def held_elsewhere(self) -> bool:
        """Whether another live process holds the lock now (without taking it)."""
        if not self.path.exists():
            return False
        try:
            self.acquire()
        except RunDirBusy:
            return True
        self.release()
        return False

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_rank_zero() -> bool:
    """Whether this process is rank 0 of its job (torchrun, SLURM, or Lightning's re-launched ranks)."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"]) == 0
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"]) == 0
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


class RunRecord:
    """Accumulates one run's record and writes it as ``<run_dir>/results.json`` (rank 0 only)."""

    def __init__(
        self, run_dir: Path, config: dict[str, Any], write: bool = True, attempts: list[dict] | None = None
    ) -> None:
        self.run_dir, self.write = run_dir, write
        self.previous = list(attempts or [])  # earlier attempts of a resumed run
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
        self.finished = False  # set once the final record is written

    def finish(self, status: str, error: str | None = None, exit_code: int | None = None) -> dict[str, Any]:
        """Set the final status, times and error line, write ``results.json``, return the record.
        ``exit_code`` is the process's (default 0 completed, 1 failed, 130 interrupted)."""
        assert status in STATUSES, status
        self.data.update(
            status=status,
            error=error,
            finished=now_iso(),
            duration_s=round(time.perf_counter() - self._t0, 3),
        )
        steps = self.data["metrics"].get("train/steps")
        attempt = {key: self.data[key] for key in ("started", "finished", "duration_s", "status", "error")}
        if exit_code is None:
            exit_code = {"completed": 0, "failed": 1}.get(status, 130)
        self.data["attempts"] = [*self.previous, {**attempt, "steps": steps, "exit": exit_code}]
        self.data["total_duration_s"] = round(
            sum(a.get("duration_s") or 0.0 for a in self.data["attempts"] if isinstance(a, dict)), 3
        )
        if self.write:
            write_json_atomic(self.run_dir / "results.json", self.data)
        self.finished = True
        return self.data


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as ``{"a.b.c": value}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def previous_attempts(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The attempts a record holds; a record written before attempts were recorded counts as one."""
    attempts = record.get("attempts")
    if isinstance(attempts, list) and all(isinstance(a, dict) for a in attempts):
        return attempts
    metrics = record.get("metrics") if isinstance(record.get("metrics"), dict) else {}
    keys = ("started", "finished", "duration_s", "status", "error")
    return [{**{k: record.get(k) for k in keys}, "steps": metrics.get("train/steps")}]


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
