"""The record store: the one owner of every file format attn reads back.

* ``results.json``, a run's record (:class:`Record`). Its keys are a stable contract read by
  ``attn report`` and by users' scripts::

      status, run_dir, config, metrics, best_checkpoint, started, finished, duration_s, error

  and, after those, ``provenance`` (what produced the run), ``attempts`` (start, end, duration, status,
  error, steps and exit code of every attempt, resumed ones included), ``total_duration_s``,
  ``config_sha1``, ``device``, ``threads``, ``predictions`` (the test predictions file), ``wandb_id``
  and, for a resumed run, ``resumed_from``.
* ``sweep.json``, a sweep's manifest (:class:`Manifest` of :class:`Trial` s): the grid, and per trial its
  overrides, run directory, status and error line.
* ``csv/metrics.csv``, a run's logged metric history (:func:`read_metrics`).

Each has one tolerant reader (a value of the wrong type reads as absent, a damaged file is one line
naming it) and one atomic writer; the directory locks that keep two writers apart live here too.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from attn.datamodules.files import write_json_atomic

from .errors import ConfigError, RunDirBusy
from .paths import now_iso

STATUSES = ("completed", "failed", "interrupted")
RECORD_KEYS = (
    "status", "run_dir", "config", "metrics", "best_checkpoint", "started", "finished", "duration_s",
    "error",
)  # fmt: skip
RESULTS = "results.json"
CONFIG_KEY = "attn_config"  # the resolved config stored in every checkpoint
FILES_KEY = "attn_files"  # in every checkpoint: SHA-1 of the run's files that a resume reads back
READ_BACK = ("tokenizer.json",)  # a run directory's files a resumed run reads instead of rebuilding
MANIFEST = "sweep.json"
STOP_FILE = ".stopping"  # in a sweep directory: the sweep was told to stop, no further trial starts


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as ``{"a.b.c": value}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_digest(config: dict[str, Any], ignore: tuple[str, ...]) -> str:
    """SHA-1 of the resolved config without the keys in ``ignore`` (those a resume may change)."""
    flat = {k: v for k, v in flatten(config).items() if not k.startswith(ignore)}
    return hashlib.sha1(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()


def file_digests(run_dir: str | Path) -> dict[str, str]:
    """SHA-1 of each of a run directory's :data:`READ_BACK` files that exists."""
    out = {}
    for name in READ_BACK:
        path = Path(run_dir) / name
        if path.is_file():
            out[name] = hashlib.sha1(path.read_bytes()).hexdigest()
    return out


def config_changes(trained: dict[str, Any], now: dict[str, Any], ignore: tuple[str, ...]) -> list[str]:
    """``key (trained -> now)`` for every key whose value differs, outside ``ignore``."""
    a, b = flatten(trained), flatten(now)
    keys = sorted(k for k in set(a) | set(b) if not k.startswith(ignore) and a.get(k) != b.get(k))
    return [f"{k} ({a.get(k, 'absent')!r} -> {b.get(k, 'absent')!r})" for k in keys]


class _JsonView(Mapping):
    """Read access to a record as its JSON form (``record["status"]``, ``list(record)``)."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


# --------------------------------------------------------------------------------------------
# results.json


@dataclass(eq=False)
class Record(_JsonView):
    """One run's record, ``results.json``: the contract keys typed, every other key in ``extra``
    (in the order written). Reads like its JSON (``record["metrics"]``)."""

    status: str
    run_dir: str
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    best_checkpoint: str | None = None
    started: str | None = None
    finished: str | None = None
    duration_s: float | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the contract keys in order, then ``extra``."""
        core = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**core, **self.extra}

    @classmethod
    def from_dict(cls, data: Any, where: str = "record") -> Record:
        """A record from its JSON form; ``ValueError`` naming ``where`` when it is not one, or when its
        metrics are not a mapping. Other values of the wrong type (a hand-edited file) read as absent, and
        the metrics keep only their numbers."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: unreadable run record (not a JSON object)")
        missing = [k for k in RECORD_KEYS if k not in data]
        if missing:
            raise ValueError(f"{where}: run record lacks {', '.join(missing)}")
        raw = data["metrics"]
        if not isinstance(raw, dict):  # a run's numbers that cannot be read are no completed run's numbers
            raise ValueError(f"{where}: run record's metrics is not a JSON object ({type(raw).__name__})")
        return cls(
            status=str(data["status"]),
            run_dir=str(data["run_dir"]),
            config=data["config"] if isinstance(data["config"], dict) else {},
            metrics={str(k): float(v) for k, v in raw.items() if _number(v)},
            best_checkpoint=data["best_checkpoint"] if isinstance(data["best_checkpoint"], str) else None,
            started=_str_or_none(data["started"]),
            finished=_str_or_none(data["finished"]),
            duration_s=float(data["duration_s"]) if _number(data["duration_s"]) else None,
            error=_str_or_none(data["error"]),
            extra={k: v for k, v in data.items() if k not in RECORD_KEYS},
        )

    @property
    def attempts(self) -> list[dict[str, Any]]:
        """Every attempt of the run; a record written before attempts were recorded counts as one."""
        attempts = self.extra.get("attempts")
        if isinstance(attempts, list) and all(isinstance(a, dict) for a in attempts):
            return attempts
        keys = ("started", "finished", "duration_s", "status", "error")
        return [{**{k: getattr(self, k) for k in keys}, "steps": self.metrics.get("train/steps")}]

    @property
    def wandb_id(self) -> str | None:
        value = self.extra.get("wandb_id")
        return value if isinstance(value, str) else None

    def write(self, path: str | Path) -> None:
        """Write the record to ``path`` atomically."""
        write_json_atomic(path, self.to_dict())


def read_record(path: str | Path) -> Record:
    """Read a ``results.json``; ``ValueError`` naming the path if it is corrupt or incomplete."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable run record ({e})") from None
    return Record.from_dict(data, str(path))


def record_status(run_dir: str | Path) -> str | None:
    """The status a run directory's record gives; None without a readable record."""
    try:
        return read_record(Path(run_dir) / RESULTS).status
    except ValueError:
        return None


class RunRecord:
    """Accumulates one run's :class:`Record` and writes it as ``<run_dir>/results.json`` (rank 0 only)."""

    def __init__(
        self, run_dir: Path, config: dict[str, Any], write: bool = True, attempts: list[dict] | None = None
    ) -> None:
        self.run_dir, self.write = run_dir, write
        self.previous = list(attempts or [])  # earlier attempts of a resumed run
        self.data = Record(status="failed", run_dir=str(run_dir), config=config, started=now_iso())
        self._t0 = time.perf_counter()
        self.finished = False  # set once the final record is written

    def finish(self, status: str, error: str | None = None, exit_code: int | None = None) -> Record:
        """Set the final status, times and error line, write ``results.json``, return the record.
        ``exit_code`` is the process's (default 0 completed, 1 failed, 130 interrupted)."""
        assert status in STATUSES, status
        d = self.data
        d.status, d.error, d.finished = status, error, now_iso()
        d.duration_s = round(time.perf_counter() - self._t0, 3)
        attempt = {key: getattr(d, key) for key in ("started", "finished", "duration_s", "status", "error")}
        if exit_code is None:
            exit_code = {"completed": 0, "failed": 1}.get(status, 130)
        steps = d.metrics.get("train/steps")
        attempts = [*self.previous, {**attempt, "steps": steps, "exit": exit_code}]
        d.extra["attempts"] = attempts
        d.extra["total_duration_s"] = round(sum(a.get("duration_s") or 0.0 for a in attempts), 3)
        if self.write:
            d.write(self.run_dir / RESULTS)
        self.finished = True
        return d


def read_metrics(run_dir: str | Path) -> list[dict[str, str]]:
    """The rows of a run's ``csv/metrics.csv`` (Lightning's CSV logger), empty when there is none."""
    try:
        with (Path(run_dir) / "csv" / "metrics.csv").open(newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error):
        return []


# --------------------------------------------------------------------------------------------
# locks


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


# --------------------------------------------------------------------------------------------
# sweep.json

TRIAL_KEYS = ("id", "overrides", "values", "run_dir", "status", "attempts")
MANIFEST_KEYS = ("name", "launcher", "n_jobs", "grid", "trials")


@dataclass(eq=False)
class Trial:
    """One trial of a sweep: its overrides and swept values, its run directory (relative to the sweep
    directory), status, error line and attempts; ``extra`` holds what launching it added (start and end
    times, pid and host, SLURM job and restarts)."""

    id: str
    overrides: list[str]
    values: dict[str, str]
    run_dir: str
    status: str = "pending"
    error: str | None = None
    attempts: int = 0
    devices: Any = 1
    num_nodes: int = 1
    accelerator: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    ORDER = ("id", "overrides", "values", "run_dir", "devices", "num_nodes", "accelerator", "status",
             "error", "attempts")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in self.ORDER}, **self.extra}

    def update(self, **values: Any) -> None:
        """Set fields (or ``extra`` keys) by name."""
        for key, value in values.items():
            if key in self.ORDER:
                setattr(self, key, value)
            else:
                self.extra[key] = value

    @property
    def number(self) -> int:
        """The trial's id as a number (ids are zero-padded strings)."""
        return int(self.id)

    @classmethod
    def from_dict(cls, data: Any, index: int, strict: bool = True) -> Trial:
        """A trial from its JSON form; ``ValueError`` naming the first missing key. Not ``strict`` (the
        report): only ``run_dir`` is needed, the rest takes defaults."""
        if strict:
            lacking = TRIAL_KEYS if not isinstance(data, dict) else [k for k in TRIAL_KEYS if k not in data]
            if lacking:
                raise ValueError(f"trial {index} lacks {lacking[0]}")
        if not isinstance(data, dict) or not isinstance(data.get("run_dir"), str):
            raise ValueError(f"trial {index} has no run_dir")
        core = {k: data[k] for k in cls.ORDER if k in data}
        core.setdefault("id", str(index))
        core.setdefault("overrides", [])
        core.setdefault("values", {})
        return cls(**core, extra={k: v for k, v in data.items() if k not in cls.ORDER})


@dataclass(eq=False)
class Manifest(_JsonView):
    """A sweep's ``sweep.json``: its name, launcher, grid and trials; ``extra`` holds the rest (the command,
    times, the progress of the current session). Reads like its JSON."""

    name: str
    launcher: str
    n_jobs: int
    grid: dict[str, list[str]]
    trials: list[Trial]
    launcher_overrides: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # damaged trials (tolerant reads only), not written

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, **{k: self.extra[k] for k in ("command", "created") if k in self.extra},
            "launcher": self.launcher, "n_jobs": self.n_jobs, "launcher_overrides": self.launcher_overrides,
            "grid": self.grid, "skipped": self.skipped, "trials": [t.to_dict() for t in self.trials],
            **{k: v for k, v in self.extra.items() if k not in ("command", "created")},
        }  # fmt: skip

    def trial(self, tid: str | int) -> Trial:
        """The trial with id ``tid`` (``"007"`` and ``7`` are one trial)."""
        return next(t for t in self.trials if t.number == int(tid))

    def counts(self) -> dict[str, int]:
        """How many trials have each status."""
        counts = {"completed": 0, "failed": 0, "interrupted": 0, "running": 0, "pending": 0}
        for t in self.trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        return counts

    @classmethod
    def from_dict(cls, data: Any, strict: bool = True) -> Manifest:
        """A manifest from its JSON form; ``ValueError`` naming the fault. Not ``strict`` (the report):
        only a list of trials is needed, and a damaged trial is left out and named in ``problems``."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        missing = [k for k in (MANIFEST_KEYS if strict else ("trials",)) if k not in data]
        if missing or not isinstance(data["trials"], list):
            raise ValueError(f"no {missing[0] if missing else 'list of trials'}")
        trials, problems = [], []
        for i, t in enumerate(data["trials"]):
            try:
                trials.append(Trial.from_dict(t, i, strict))
            except ValueError as e:
                if strict:
                    raise
                problems.append(str(e))
        own = (*MANIFEST_KEYS, "launcher_overrides", "skipped")
        return cls(
            name=str(data.get("name", "sweep")), launcher=str(data.get("launcher", "basic")),
            n_jobs=data.get("n_jobs", 1), grid=data.get("grid") or {}, trials=trials,
            launcher_overrides=list(data.get("launcher_overrides") or []),
            skipped=list(data.get("skipped") or []), extra={k: v for k, v in data.items() if k not in own},
            problems=problems,
        )  # fmt: skip

    def write(self, path: str | Path) -> None:
        """Write the manifest to ``path`` atomically."""
        write_json_atomic(path, self.to_dict())


def load_manifest(path: str | Path, strict: bool = True) -> Manifest:
    """``sweep.json`` at ``path``, parsed and checked; ``ConfigError`` naming the file and the fault.

    A manifest is data: every trial's ``run_dir`` must resolve (symbolic links followed) to a folder inside
    the sweep directory (:func:`trial_dir`). ``strict``: a manifest with one that does not is refused in
    one line, before anything is moved or written; not ``strict`` (the report): that trial is left out
    and named in ``problems``."""
    try:
        m = Manifest.from_dict(json.loads(Path(path).read_text()), strict)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable sweep manifest ({e}); restore it or start a new sweep") from e
    kept = []
    for t in m.trials:
        try:
            trial_dir(Path(path).parent, t.run_dir)
        except ValueError as e:
            if strict:
                raise ConfigError(
                    f"{path}: trial {t.id}: {e}; restore the manifest or start a new sweep"
                ) from None
            m.problems.append(f"trial {t.id}: {e}")
            continue
        kept.append(t)
    m.trials = kept
    return m


def read_manifest(sweep_dir: str | Path) -> Manifest:
    """The manifest of a sweep directory; ``ConfigError`` if there is none or it is damaged."""
    path = Path(sweep_dir) / MANIFEST
    if not path.exists():
        raise ConfigError(f"{sweep_dir}: not a sweep directory (no {MANIFEST})")
    return load_manifest(path)


@contextlib.contextmanager
def locked_manifest(sweep_dir: str | Path) -> Iterator[Manifest]:
    """Read-modify-write ``sweep.json`` under an exclusive lock; written atomically on exit."""
    path = Path(sweep_dir) / MANIFEST
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = load_manifest(path)
        yield manifest
        manifest.extra["updated"] = now_iso()
        manifest.write(path)


def inside(root: str | Path, path: str | Path, what: str) -> Path:
    """``path`` (relative to ``root``, or absolute) as a folder strictly inside ``root``, symbolic links
    followed; ``ValueError`` naming ``what`` otherwise. A path read from a record is data: it may name its
    own directory's contents, never a folder elsewhere (``/etc``, ``..``, a link out)."""
    base = Path(root).resolve()
    target = (base / path).resolve()
    if target == base or base not in target.parents:
        raise ValueError(f"{what} {str(path)!r} resolves to {target}, outside {base}")
    return target


def trial_dir(sweep_dir: str | Path, run_dir: str) -> Path:
    """A trial's run directory from its ``run_dir`` in the manifest, relative to the sweep directory;
    ``ValueError`` when it resolves outside the sweep directory (:func:`inside`).

    Manifests written before paths were relative hold absolute paths; when such a sweep has been moved,
    the trial's directory is looked up under the sweep directory by its name.
    """
    root = Path(sweep_dir).resolve()
    path = Path(run_dir)
    if path.is_absolute():
        moved = root / "trials" / path.name
        path = moved if not path.exists() and moved.exists() else path
    return inside(root, path, "run_dir")
