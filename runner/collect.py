"""Reading runs for the report: every run record under a directory (and the sweep trials that never wrote
one), or a W&B project through its public API, as :class:`Run` s."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .records import MANIFEST, RESULTS, Record, load_manifest, read_record, trial_dir

PHASES = ("tune", "final")  # the phases of a tuned sweep's trials
# Short names for config keys (``--group-by attention``).
ALIASES = {
    "attention": "attention.kind",
    "softmax": "softmax.name",
    "temperature": "softmax.temperature",
    "task": "task.name",
    "model": "model.d_model",
}


@dataclass
class Run:
    """One run as the report sees it."""

    run_dir: str
    status: str  # completed | failed | interrupted | missing | corrupt | no record
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    duration_s: float | None = None
    error: str | None = None
    origin: dict[str, str] = field(default_factory=dict)  # code version, libraries, device, host
    best_checkpoint: str | None = None  # as recorded (the run directory may have moved since)
    phase: str | None = None  # "tune" (a tuning trial: not a result) or "final" in a tuned sweep
    tuned: dict[str, str] = field(default_factory=dict)  # a final trial's values selected by tuning
    arm: str | None = None  # a tuned sweep's arm (its manifest's), tuning and final trials alike
    candidate: dict[str, str] = field(default_factory=dict)  # a tuning trial's candidate values

    def get(self, path: str) -> Any:
        """A config value by dotted path (aliases allowed); ``None`` when absent."""
        node: Any = self.config
        for part in ALIASES.get(path, path).split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node


def origin(record: Record) -> dict[str, str]:
    """What produced a record, as short strings: ``code`` (attn version, git commit, dirty diff hash),
    ``torch``, ``lightning``, ``device`` (name, precision) and ``host``; unknown parts are absent."""
    prov = record.extra.get("provenance") if isinstance(record.extra.get("provenance"), dict) else {}
    device = record.extra.get("device") if isinstance(record.extra.get("device"), dict) else {}
    libs = prov.get("libraries") if isinstance(prov.get("libraries"), dict) else {}
    git = prov.get("git") if isinstance(prov.get("git"), dict) else {}
    out: dict[str, str] = {}
    if prov.get("attn") or git:
        code = str(prov.get("attn") or "?")
        if git.get("commit"):
            code += f" @ {str(git['commit'])[:10]}"
            if git.get("dirty"):
                code += f" + diff {str(git.get('diff_sha1') or '?')[:8]}"
        out["code"] = code
    for lib in ("torch", "lightning"):
        if libs.get(lib):
            out[lib] = str(libs[lib])
    if device.get("name") or device.get("device"):
        out["device"] = f"{device.get('name') or device.get('device')} ({device.get('precision', '?')})"
    if prov.get("host"):
        out["host"] = str(prov["host"])
    return out


def _run(path: Path) -> Run:
    """The run of one ``results.json``; a damaged one is a ``corrupt`` run naming the file, and so is a
    completed one with a metric that is not a finite number (nan, inf: no completed run writes one)."""
    run_dir = str(path.parent.resolve())
    try:
        record = read_record(path)
    except ValueError as e:
        return Run(run_dir, "corrupt", error=str(e))
    bad = next((f"{k}={v}" for k, v in record.metrics.items() if not math.isfinite(v)), None)
    if bad and record.status == "completed":
        return Run(run_dir, "corrupt", error=f"{path}: a completed record with a non-finite metric ({bad})")
    return Run(
        run_dir=run_dir,
        status=record.status,
        config=record.config,
        metrics=record.metrics,
        duration_s=record.duration_s,
        error=record.error,
        origin=origin(record),
        best_checkpoint=record.best_checkpoint,
        phase=record_phase(record),
    )


def record_phase(record: Record) -> str | None:
    """A run's tuned-sweep phase as its own record says it (``phase``, or the ``phase=...`` W&B tag that
    sweeps have given their trials): a tuning run copied out of its sweep is still a tuning run."""
    phase = record.extra.get("phase")
    if phase in PHASES:
        return str(phase)
    tags = ((record.config.get("logger") or {}) if isinstance(record.config, dict) else {}).get("tags")
    found = [t.split("=", 1)[1] for t in tags or [] if isinstance(t, str) and t.startswith("phase=")]
    return found[-1] if found and found[-1] in PHASES else None


def _find(root: Path, names: tuple[str, ...]) -> dict[str, list[Path]]:
    """Every file called one of ``names`` under ``root``, by name, in path order, following symbolic links
    to directories (a run directory linked into a folder is part of it), each real directory once."""
    found: dict[str, list[Path]] = {name: [] for name in names}
    seen = set()
    for top, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:  # a link back up, or a second link to one directory
            dirs[:] = []
            continue
        seen.add(real)
        for name in names:
            if name in files:
                found[name].append(Path(top) / name)
    return {name: sorted(paths) for name, paths in found.items()}


def collect(root: str | Path) -> list[Run]:
    """Every run under ``root``: its ``results.json`` files and the sweep trials that never wrote one.

    Directories of set-aside attempts (``attempts/``) are superseded by their re-runs and skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such directory")
    runs: dict[str, Run] = {}
    files = _find(root, (RESULTS, "config.yaml", MANIFEST))
    for path in files[RESULTS]:
        if "attempts" in path.relative_to(root).parts:
            continue
        run = _run(path)
        runs[run.run_dir] = run
    # A run killed before its first record still has the config.yaml written when it started.
    for path in files["config.yaml"]:
        parts = path.relative_to(root).parts
        run_dir = str(path.parent.resolve())
        if "attempts" in parts or ".hydra" in parts or run_dir in runs:
            continue
        if (path.parent / "checkpoints").is_dir() or (path.parent / "csv").is_dir():
            runs[run_dir] = Run(run_dir, "no record", error="no results.json (killed before it was written?)")
    for manifest_path in files[MANIFEST]:
        try:
            manifest = load_manifest(manifest_path, strict=False)
        except ConfigError as e:
            runs[str(manifest_path)] = Run(str(manifest_path.parent), "corrupt", error=str(e))
            continue
        for problem in manifest.problems:
            where = f"{manifest_path}: {problem}"
            runs[where] = Run(where, "corrupt", error=where)
        for t in manifest.trials:
            run_dir = str(trial_dir(manifest_path.parent, t.run_dir).resolve())
            if run_dir not in runs or runs[run_dir].status == "no record":
                runs[run_dir] = Run(run_dir, "missing", error=t.error or "no results.json")
            if t.extra.get("phase") in PHASES:
                run = runs[run_dir]
                run.phase = run.phase or t.extra["phase"]
                run.tuned = tuned_values(run, t.extra.get("selected"))
                run.arm = f"{manifest_path.parent.resolve()}:{t.extra.get('arm')}"  # arms of one sweep
                run.candidate = dict(t.extra.get("candidate") or {})
    return list(runs.values())


def tuned_values(run: Run, selected: Any) -> dict[str, str]:
    """A final run's tuned values as its own config records them (what it trained at); the manifest's
    ``selected`` only names the keys, and gives the values of a run without a config (not run yet)."""
    if not isinstance(selected, dict):
        return {}
    return {str(k): str(run.get(k)) if run.get(k) is not None else str(v) for k, v in selected.items()}


@dataclass
class Tuning:
    """The tuning phase of one tuned sweep, as its manifest records it: what was tuned (``spec``: keys,
    candidates, tuning seeds, search), on which value (``monitor``), and per arm the tuning table and
    the selection (empty until the sweep has selected)."""

    sweep_dir: str
    spec: dict[str, Any]
    monitor: str
    table: dict[str, list[dict[str, Any]]]
    selected: dict[str, dict[str, str]]


def tunings(root: str | Path) -> list[Tuning]:
    """Every tuned sweep under ``root`` (sweep directories with ``tune`` in their manifest)."""
    out = []
    for path in _find(Path(root), (MANIFEST,))[MANIFEST]:
        try:
            m = load_manifest(path, strict=False)
        except ConfigError:
            continue  # collect() lists it as corrupt
        if not isinstance(m.extra.get("tune"), dict):
            continue
        monitor = next((str(t.extra["monitor"]) for t in m.trials if "monitor" in t.extra), "?")
        table = m.extra.get("tuning") if isinstance(m.extra.get("tuning"), dict) else {}
        selected = m.extra.get("selected") if isinstance(m.extra.get("selected"), dict) else {}
        out.append(Tuning(str(path.parent.resolve()), m.extra["tune"], monitor, table, selected))
    return out


def collect_wandb(path: str, group: str | None, api: Any = None) -> list[Run]:
    """Runs of the W&B project ``entity/project`` (optionally one group) through the public API."""
    if api is None:
        import wandb

        try:
            api = wandb.Api(timeout=20)
        except Exception as e:  # no credentials, no network
            raise ConfigError(f"cannot reach W&B for {path}: {str(e).splitlines()[0]}") from e
    filters = {"group": group} if group else {}
    try:
        found = list(api.runs(path, filters=filters))
    except Exception as e:
        raise ConfigError(f"cannot read W&B runs of {path}: {str(e).splitlines()[0]}") from e
    runs = []
    for r in found:
        config = _unflatten({k: v for k, v in dict(r.config).items() if not k.startswith("_")})
        summary = dict(r.summary)
        metrics = {k: float(v) for k, v in summary.items() if "/" in k and isinstance(v, int | float)}
        status = (
            "completed"
            if r.state == "finished"
            else ("failed" if r.state in ("crashed", "failed") else r.state)
        )
        run = Run(f"wandb:{path}/{r.id}", status, config, metrics, summary.get("_runtime"))
        tags = set(getattr(r, "tags", None) or [])
        run.phase = "tune" if "phase=tune" in tags else ("final" if "phase=final" in tags else None)
        runs.append(run)
    return runs


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out
