"""``attn sweep``: a grid of ``attn train`` trials, recorded in a resumable sweep directory.

The grid is written in Hydra's sweep syntax (``a=1,2``, ``range()``, ``choice()``, ``glob()``) and
expanded with Hydra's override parser. Trials are launched through a Hydra multirun over trial
ids, so Hydra's launchers do the scheduling: ``basic`` (one after another), ``joblib`` (parallel on
this machine), ``submitit_local`` and ``slurm`` (hydra-submitit-launcher). Each trial runs
``attn train`` in a fresh process with ``ATTN_RUN_DIR`` set to its own directory.

The sweep directory holds ``sweep.json``, the manifest: the grid, and per trial its overrides, run
directory, status and error line, rewritten atomically under a lock whenever a trial starts or ends.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from attn.datamodules.files import write_text_atomic

from .config import check_config_dirs, load
from .errors import ConfigError
from .machine import available_cpus
from .paths import (
    CONF_DIR,
    CONFIG_DIR_ENV,
    CPUS_ENV,
    PHASE_ENV,
    RUN_DIR_ENV,
    config_dirs,
    find_option,
    group_options,
    now_iso,
    short_name,
    values_name,
)
from .plugins import PLUGINS_ENV, canonical, env_plugins
from .records import (
    MANIFEST,
    STOP_FILE,
    DirLock,
    Manifest,
    Trial,
    config_digest,
    inside,
    locked_manifest,
    read_manifest,
    read_record,
    record_status,
    trial_dir,
)
from .slurm import forward_preemption, queue_states, register_launcher
from .tune import (
    FINAL,
    NOT_RUN,
    TUNE,
    TuneSpec,
    apply_selection,
    arm_name,
    as_overrides,
    at_budget,
    base_overrides,
    check_seeds,
    lean_overrides,
    parse_spec,
    paused_share,
    phase,
    promote,
    recorded_selection,
    seed_of,
    spec_of,
    tuning_open,
    waiting,
)

LAUNCHERS = {
    "basic": "basic",
    "joblib": "joblib",
    "submitit_local": "submitit_local",
    "slurm": "slurm",
}
# Sweep-level settings given as key=value on the command line (everything else goes to the trials).
SWEEP_KEYS = ("sweep", "launcher", "n_jobs", "name")
TUNE_PRESET_KEYS = ("tune", "tune_seeds", "tune_search", "tune_trials", "tune_log", "tune_halving")
# Display-only settings every trial gets unless the grid sets them.
TRIAL_DEFAULTS = ("trainer.enable_progress_bar=false",)


# --------------------------------------------------------------------------------------------
# the grid


def load_preset(name: str) -> dict[str, Any]:
    """A sweep preset: ``{"name", "grid": {key: sweep string}, "overrides": [...], "settings": {...},
    "skip_invalid": bool}`` and its tuning (``tune: {key: values}``, ``tune_seeds``, ``tune_search``,
    ``tune_trials``, ``tune_log``: see :mod:`attn.runner.tune`); ``settings`` holds the preset's default
    ``launcher``/``n_jobs`` (the command line wins); ``skip_invalid: true`` drops the grid's impossible
    combinations (listed as skipped)."""
    path = find_option("sweep", name)
    if path is None:
        raise ConfigError(f"unknown sweep {name!r}; valid choices: {', '.join(group_options('sweep'))}")
    try:
        data = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as e:  # a YAML or OmegaConf error in the user's own preset: one line naming the file
        raise ConfigError(f"sweep={name}: {path} cannot be read: {' '.join(str(e).split())[:300]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"sweep={name}: {path} must hold a mapping (name, grid, overrides, ...)")
    grid = {str(k): _sweep_string(v) for k, v in (data.get("grid") or {}).items()}
    settings = {k: str(data[k]) for k in ("launcher", "n_jobs") if data.get(k) is not None}
    return {
        "name": data.get("name", name),
        "grid": grid,
        "overrides": list(data.get("overrides") or []),
        "settings": settings,
        "skip_invalid": bool(data.get("skip_invalid", False)),
        **{k: data[k] for k in TUNE_PRESET_KEYS if data.get(k) is not None},
    }


def _sweep_string(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def split_args(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """Separate sweep-level ``key=value`` settings (``sweep``, ``launcher``, ``hydra.launcher.<key>``, ...)
    from trial overrides. A leading ``+`` on a launcher setting is dropped: they are all passed to Hydra
    with ``++`` (add or replace), so keys inside the launcher's dicts need no ``+`` either."""
    settings: dict[str, str] = {}
    rest: list[str] = []
    for a in args:
        key, eq, value = a.partition("=")
        if eq and (key in SWEEP_KEYS or key.lstrip("+").startswith(LAUNCHER_PREFIX)):
            settings[key.lstrip("+")] = value
        else:
            rest.append(a)
    return settings, rest


LAUNCHER_PREFIX = "hydra.launcher."
# Numeric launcher settings that may be 0 (every other one, a memory, a time, a count, must be >= 1).
LAUNCHER_COUNTS_FROM_ZERO = ("max_num_timeout", "signal_delay_s", "verbose")
# Launcher keys that attn sets itself from the sweep and its trials (n_jobs=, trainer.devices, ...).
OWN_LAUNCHER_KEYS = {
    "n_jobs": "n_jobs=<n>",
    "nodes": "trainer.num_nodes",
    "tasks_per_node": "trainer.devices",
    "gpus_per_node": "trainer.devices with a GPU trainer",
}


def _launcher_schema(launcher: str) -> Any:
    """The structured config of a launcher's ``hydra.launcher`` node (None for ``basic``)."""
    if launcher == "basic":
        return None
    if launcher == "joblib":
        from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf

        return JobLibLauncherConf
    from hydra_plugins.hydra_submitit_launcher import config

    return config.LocalQueueConf if launcher == "submitit_local" else config.SlurmQueueConf


def launcher_overrides(launcher: str, settings: dict[str, str]) -> list[str]:
    """The ``hydra.launcher.<key>=<value>`` settings checked against the launcher's own keys and types:
    ``ConfigError`` in one line naming the bad key and the valid ones, or the bad value."""
    from omegaconf.errors import OmegaConfBaseException

    given = {k[len(LAUNCHER_PREFIX) :]: v for k, v in settings.items() if k.startswith(LAUNCHER_PREFIX)}
    if not given:
        return []
    schema = _launcher_schema(launcher)
    if schema is None:
        raise ConfigError(
            f"launcher=basic has no settings; {LAUNCHER_PREFIX}{next(iter(given))} needs launcher="
            "joblib, submitit_local or slurm"
        )
    import dataclasses

    valid = sorted(f.name for f in dataclasses.fields(schema) if not f.name.startswith("_"))
    for key in given:
        top = key.split(".")[0]
        if top in OWN_LAUNCHER_KEYS:
            raise ConfigError(
                f"{LAUNCHER_PREFIX}{key} is set by attn from {OWN_LAUNCHER_KEYS[top]}; give that instead"
            )
        if top not in valid:
            raise ConfigError(
                f"unknown launcher setting {LAUNCHER_PREFIX}{key} for launcher={launcher}; valid keys: "
                + ", ".join(k for k in valid if k not in OWN_LAUNCHER_KEYS)
            )
    for key, value in given.items():  # the launcher's types: a bad value is named with its key
        try:
            merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist([f"{key}={value}"]))
        except OmegaConfBaseException as e:
            why = str(e).strip().splitlines()[0]
            raise ConfigError(
                f"{LAUNCHER_PREFIX}{key}={value} is invalid for launcher={launcher}: {why}"
            ) from None
        number = OmegaConf.select(merged, key)
        low = 0 if key in LAUNCHER_COUNTS_FROM_ZERO else 1
        if isinstance(number, int | float) and not isinstance(number, bool) and number < low:
            raise ConfigError(
                f"{LAUNCHER_PREFIX}{key}={value} is invalid for launcher={launcher}: must be >= {low}"
            )
    return [f"{LAUNCHER_PREFIX}{k}={v}" for k, v in given.items()]


def expand(overrides: list[str]) -> tuple[dict[str, list[str]], list[list[str]]]:
    """Hydra sweep overrides -> (``{swept key: values}``, the trials' override lists, in grid order).

    Later overrides of the same key replace earlier ones, so command-line values beat a preset's.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides=overrides)
    except HydraException as e:
        raise ConfigError(f"cannot parse the sweep: {str(e).strip().splitlines()[0]}") from e
    by_key: dict[str, Any] = {}
    for o in parsed:
        by_key[o.get_key_element()] = o  # the last one of a key wins, in first-seen order
    grid: dict[str, list[str]] = {}
    axes: list[list[str]] = []
    for key, o in by_key.items():
        if o.is_sweep_override():
            values = list(o.sweep_string_iterator())
            if not values:
                raise ConfigError(f"{o.input_line}: the sweep over {key} has no values")
            grid[key] = values
            axes.append([f"{key}={v}" for v in values])
        else:
            axes.append([o.input_line])
    return grid, [list(t) for t in itertools.product(*axes)]


def trial_values(overrides: list[str], grid: dict[str, list[str]]) -> dict[str, str]:
    """The swept ``key: value`` pairs of one trial."""
    values = {}
    for o in overrides:
        key, _, value = o.partition("=")
        if key in grid:
            values[key] = value
    return values


def plan(
    args: list[str],
    sweep_dir: str | None = None,
    skip_invalid: bool = False,
    tune: dict[str, Any] | None = None,
) -> tuple[Manifest, list[str]]:
    """Build (not write) the manifest for ``attn sweep ARGS``; every trial's config is validated.

    ``tune``: the tuning options of the command line (the arguments of :func:`attn.runner.tune.parse_spec`
    but the preset). Returns the manifest and the list of skipped combinations (with ``skip_invalid``).
    Raises :class:`ConfigError` with one line for bad input.
    """
    settings, rest = split_args(args)
    preset = load_preset(settings["sweep"]) if "sweep" in settings else {"name": "sweep", "grid": {}}
    defaults = dict(preset.get("settings", {}))
    skip_invalid = skip_invalid or preset.get("skip_invalid", False)
    if "launcher" in settings:  # another launcher from the command line: the preset's n_jobs was for its own
        defaults.pop("n_jobs", None)
    settings = {**defaults, **settings}  # the command line wins over the preset
    launcher = settings.get("launcher", "basic")
    if launcher not in LAUNCHERS:
        raise ConfigError(f"unknown launcher {launcher!r}; valid choices: {', '.join(LAUNCHERS)}")
    n_jobs = _positive_int("n_jobs", settings.get("n_jobs", "2" if launcher == "joblib" else "1"))
    if launcher == "basic" and n_jobs != 1:
        raise ConfigError(f"n_jobs={n_jobs} needs a parallel launcher; use launcher=joblib n_jobs={n_jobs}")
    hydra_settings = launcher_overrides(launcher, settings)
    name = settings.get("name") or preset["name"]
    grid_args = [f"{k}={v}" for k, v in preset["grid"].items()]
    spec = parse_spec(**(tune or {"tune": [], "tune_seeds": None}), preset=preset)
    grid, trials = expand([*preset.get("overrides", []), *grid_args, *rest])
    if spec is not None:
        both = [k for k in spec.keys if k in grid]
        if both:
            raise ConfigError(f"{both[0]} is both swept and tuned; sweep it or tune it")
    elif not grid:
        raise ConfigError("nothing to sweep: give sweep=<preset> or a key with values, e.g. seed=0,1,2")
    probe = sample_candidate(spec)  # the final trials are checked with it
    finals, skipped = [], []
    seen: dict[str, int] = {}  # config digest -> the trial that runs it
    stamp = f"{datetime.now():%Y%m%d-%H%M%S}"
    root = (Path(sweep_dir) if sweep_dir else Path("sweeps") / f"{stamp}-{short_name(name)}").resolve()
    for overrides in trials:
        try:
            cfg = load([*overrides, *as_overrides(probe)])
        except ConfigError as e:
            if skip_invalid:
                skipped.append(f"{' '.join(overrides)}: {e}")
                continue
            raise ConfigError(f"trial {' '.join(overrides)}: {e} (or pass --skip-invalid)") from e
        # Values that compose to one config (temperature=1,1.0,1e0; seed=0,0,1) are one trial, run once.
        digest = config_digest(OmegaConf.to_container(cfg, resolve=True), ("name",))
        if digest in seen:
            skipped.append(
                f"{' '.join(overrides)}: the same configuration as trial #{seen[digest]}, run once"
            )
            continue
        seen[digest] = len(finals)
        finals.append((overrides, trial_values(overrides, grid), cfg))
    if not finals:
        raise ConfigError("every combination of the grid is invalid; see --dry-run --skip-invalid")
    planned = [(o, v, c, {}) for o, v, c in finals]
    if spec is not None:
        check_seeds(spec, sorted({str(c.seed) for _, _, c in finals}, key=int))
        planned = [*tuning_trials(spec, finals), *((o, v, c, {"phase": FINAL}) for o, v, c in finals)]
    width = max(3, len(str(len(planned) - 1)))
    first = len(planned) - len(finals)  # the id of the first final trial (after the tuning trials)
    skipped = [_renumber(line, first, width) for line in skipped]
    entries = []
    for i, (overrides, values, cfg, info) in enumerate(planned):
        tid = f"{i:0{width}d}"
        shown = {**values, **info.get("candidate", {})}
        if info.get("phase") == TUNE:
            shown["seed"] = info["seed"]
        slug = values_name(shown)
        folder = "tune" if info.get("phase") == TUNE else "trials"
        extra_info = {k: v for k, v in info.items() if k != "seed"}
        if spec is not None:
            extra_info.update(arm=arm_name(values), **monitor_of(cfg))
            if info.get("phase") == FINAL and spec.search == "optuna":  # what its arm's candidates skip
                extra_info["tuning_overrides"] = lean_overrides(cfg)
        entries.append(
            Trial(
                id=tid,
                overrides=overrides,
                values=values,
                run_dir=f"{folder}/{tid}-{slug}",  # relative to the sweep directory: it can move
                devices=cfg.trainer.devices,
                num_nodes=cfg.trainer.num_nodes,
                accelerator=cfg.trainer.accelerator,
                extra=extra_info,
            )
        )
    extra = {"command": " ".join(["attn", "sweep", *args]), "created": now_iso(), "sweep_dir": str(root)}
    if spec is not None:
        extra["tune"] = spec.to_dict()
    if config_dirs():  # the trials compose with the same user configs and plugins, wherever they run
        extra["config_dirs"] = [str(p) for p in config_dirs()]
    if env_plugins():
        extra["env_plugins"] = [canonical(p) for p in env_plugins()]
    manifest = Manifest(
        name=name, launcher=launcher, n_jobs=n_jobs, grid=grid, trials=entries,
        launcher_overrides=hydra_settings, skipped=skipped, extra=extra,
    )  # fmt: skip
    return manifest, skipped


def _renumber(line: str, first: int, width: int) -> str:
    """A skipped line's ``trial #<i>`` (the i-th final trial) as that trial's id."""
    head, mark, tail = line.rpartition("as trial #")
    if not mark:
        return line
    index, _, rest = tail.partition(",")
    return f"{head}as trial {first + int(index):0{width}d},{rest}"


def sample_candidate(spec: TuneSpec | None) -> dict[str, str]:
    """A candidate to check the final trials with before anything runs (the grid's first; for Optuna,
    the low end of each space, which is checked on the way)."""
    if spec is None:
        return {}
    if spec.search == "grid":
        return spec.candidates()[0]
    from .optuna_search import low_end

    return low_end(spec)


def monitor_of(cfg: Any) -> dict[str, str]:
    """The value tuning selects on: the best validation value of the task's monitor (``val/best_acc``),
    and whether higher or lower is better. A monitor outside ``val/`` is refused: selection never reads
    a test metric."""
    monitor = str(cfg.task.monitor)
    if not monitor.startswith("val/"):
        raise ConfigError(f"task.monitor={monitor}: tuning selects on a validation metric (val/...)")
    return {"monitor": "val/best_" + monitor[len("val/") :], "mode": str(cfg.task.monitor_mode)}


def tuning_trials(spec: TuneSpec, finals: list[tuple[list[str], dict[str, str], Any]]) -> list[tuple]:
    """The tuning phase of a grid search: per arm (in grid order), per candidate, per tuning seed, a trial
    of the arm's overrides with the candidate and the seed; each checked like the grid's trials."""
    if spec.search != "grid":
        return []  # Optuna proposes its candidates while the tuning phase runs
    arms: dict[str, tuple[list[str], dict[str, str], list[str]]] = {}
    for overrides, values, cfg in finals:
        arms.setdefault(arm_name(values), (base_overrides(overrides), values, lean_overrides(cfg)))
    out = []
    for base, values, lean in arms.values():
        arm_values = {k: v for k, v in values.items() if k != "seed"}
        for candidate in spec.candidates():
            for seed in spec.seeds:
                overrides = [*base, *as_overrides(candidate), f"seed={seed}", *lean]
                try:
                    cfg = load(overrides)
                except ConfigError as e:
                    raise ConfigError(f"tuning trial {' '.join(overrides)}: {e}") from e
                info = {"phase": TUNE, "candidate": candidate, "seed": seed}
                if spec.halving:  # successive halving: every candidate first trains the first rung's share
                    info["budget"] = spec.rungs()[0]["share"]
                out.append((overrides, arm_values, cfg, info))
    return out


def trial_environment(m: Manifest, root: Path) -> dict[str, str]:
    """The environment a trial inherits from its sweep: the sweep's copies of the user's config directories
    (``--config-dir``, see :func:`copy_config_dirs`) and exactly the plugins of ``ATTN_PLUGINS`` when the
    sweep was created (none: empty), whatever the environment of this process holds."""
    dirs = [str(config_copy(root, d)) for d in m.extra.get("config_dirs") or []]
    return {CONFIG_DIR_ENV: os.pathsep.join(dirs), PLUGINS_ENV: ",".join(m.extra.get("env_plugins") or [])}


CONFIG_COPIES = "config"  # in a sweep directory: the copies of the user's config directories


def config_copy(root: Path, recorded: str) -> Path:
    """A config directory the manifest records, which must be the sweep's own copy (``config/<i>``);
    ``ConfigError`` otherwise (a manifest written before the copies, or edited)."""
    try:
        return inside(root, recorded, "config directory")
    except ValueError as e:
        raise ConfigError(
            f"{root / MANIFEST}: {e}; resume with --config-dir DIR to give the config directory again"
        ) from None


def copy_config_dirs(root: Path) -> list[str]:
    """Copy the YAML files of the user's config directories (``--config-dir``) into ``<sweep>/config/<i>``
    and return those copies relative to the sweep: the sweep's trials compose with them, so the sweep runs
    as planned wherever the originals go (and a manifest names no folder outside its sweep)."""
    import shutil

    copies = []
    base = root / CONFIG_COPIES
    taken = {p.name for p in base.iterdir()} if base.is_dir() else set()
    n = 0
    for source in config_dirs():
        while str(n) in taken:
            n += 1
        dest = base / str(n)
        taken.add(str(n))
        for path in sorted(p for depth in ("*.yaml", "*/*.yaml", "*/*/*.yaml") for p in source.glob(depth)):
            target = dest / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        dest.mkdir(parents=True, exist_ok=True)
        copies.append(f"{CONFIG_COPIES}/{n}")
    return copies


def _positive_int(key: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"{key}={value} is invalid: must be a whole number >= 1")
    return n


# --------------------------------------------------------------------------------------------
# the manifest


SWEEP_LOCK = ".sweep.lock"  # held by the attn sweep process for its whole life


def trial_done(sweep_dir: str | Path, trial: Trial, warn: bool = False) -> bool:
    """Whether the trial's ``results.json`` says completed (the run directory is the truth).

    A corrupt record counts as not completed; with ``warn`` it is reported with its path.
    """
    path = trial_dir(sweep_dir, trial.run_dir) / "results.json"
    if not path.exists():
        return False
    try:
        return read_record(path).status == "completed"
    except ValueError as e:
        if warn:
            print(f"warning: {e}; trial {trial.id} runs again", file=sys.stderr, flush=True)
        return False


# --------------------------------------------------------------------------------------------
# one trial (runs inside a Hydra launcher's job)


def trial_command(trial: Trial, sweep_name: str) -> list[str]:
    """The ``attn train`` command line of a trial: its overrides, the display defaults, and its W&B group
    (the sweep's name) and tags (its swept values) unless it sets them itself."""
    keys = {o.partition("=")[0].lstrip("+~") for o in trial.overrides}
    extra = [d for d in TRIAL_DEFAULTS if d.partition("=")[0] not in keys]
    if "logger.group" not in keys:
        extra.append(f"logger.group={sweep_name}")
    tags = {**trial.values, **({"phase": trial.extra["phase"]} if trial.extra.get("phase") else {})}
    if "logger.tags" not in keys and tags:  # a tuned sweep's tuning runs are tagged phase=tune in W&B
        quoted = (f"{k}={v}".replace("\\", "\\\\").replace("'", "\\'") for k, v in tags.items())
        listed = ",".join(f"'{t}'" for t in quoted)  # Hydra's quoted strings: \\ and \' escaped
        extra.append(f"logger.tags=[{listed}]")
    return [sys.executable, "-m", "attn.cli.main", "train", *trial.overrides, *extra]


def attempt_command(trial: Trial, sweep_name: str, resume: Path | None) -> list[str]:
    """The command of one attempt of a trial: :func:`trial_command`, or with ``resume`` the continuation of
    the interrupted run there (a requeued SLURM job, a paused halving candidate); a trial with a
    successive-halving ``budget`` trains to that share of its steps and pauses (``trainer.pause_at``)."""
    cmd = trial_command(trial, sweep_name)
    if resume is not None:
        cmd = [*cmd[:4], f"resume={resume}"]
    if trial.extra.get("budget"):
        share = float(trial.extra["budget"])
        cmd.append(f"trainer.pause_at={share!r}" if share < 1 else "trainer.pause_at=null")
    return cmd


def _resumable(run_dir: Path) -> bool:
    """An attempt that was interrupted (or killed) after saving ``checkpoints/last.ckpt``."""
    if not (run_dir / "checkpoints" / "last.ckpt").exists() or not (run_dir / "config.yaml").exists():
        return False
    status = record_status(run_dir)
    return status is None or status == "interrupted"  # no record (killed) or a corrupt one: the checkpoint


def _set_aside(run_dir: Path, sweep_dir: Path, attempt: int) -> None:
    """Move an unfinished trial's directory to ``attempts/`` so that the re-run starts clean."""
    if run_dir.exists():
        dest = sweep_dir / "attempts" / f"{run_dir.name}.{attempt}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        run_dir.rename(dest)


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no output"
    return lines[-1][:500] if lines else "no output"


def wait_for_live_attempt(root: Path, tid: str | int) -> None:
    """A trial whose previous attempt still runs (an orphan of a killed sweep) is never started twice:
    wait until that process ends (it holds its run directory's lock until then)."""
    trial = read_manifest(root).trial(tid)
    lock = DirLock(trial_dir(root, trial.run_dir))
    if lock.held_elsewhere():
        print(f"trial {trial.id}: its previous attempt ({lock.holder()}) is still running; waiting for it",
              flush=True)  # fmt: skip
        lock.acquire(wait=True)
        lock.release()


def run_trial(sweep_dir: str, tid: str | int, cpus: int | None) -> str:
    """Run one trial as ``attn train`` in a child process; returns its final status.

    ``cpus``: the trial's share of this machine's CPUs (``ATTN_CPUS``), from which the trial's
    thread policy (:mod:`attn.runner.threads`) picks its threads; None leaves it every CPU it may use.
    """
    root = Path(sweep_dir).resolve()
    rank = int(os.environ.get("SLURM_PROCID", "0"))  # submitit runs the job once per SLURM task
    if (root / STOP_FILE).exists():  # the sweep was stopped: trials not yet started stay pending
        return "pending"
    if rank == 0:
        wait_for_live_attempt(root, tid)
    with locked_manifest(root) as m:
        trial = m.trial(tid)
        run_dir = trial_dir(root, trial.run_dir)
        if trial_done(root, trial):
            trial.status = "completed"
            return "completed"
        resume = _resumable(run_dir)
        if rank == 0:
            trial.attempts += 1
            if not resume:
                _set_aside(run_dir, root, trial.attempts - 1)
            trial.update(status="running", started=now_iso(), error=None)
            # How often SLURM restarted this job: the sweep reports a requeue when this grows.
            if "SLURM_JOB_ID" in os.environ:
                trial.extra["slurm_restarts"] = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        sweep_name, inherited = m.name, trial_environment(m, root)
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **inherited, RUN_DIR_ENV: str(run_dir)}
    env.pop(PHASE_ENV, None)
    if phase(trial):
        env[PHASE_ENV] = str(phase(trial))
    if cpus:
        env[CPUS_ENV] = str(cpus)
    t0 = time.perf_counter()
    log = run_dir / ("train.log" if rank == 0 else f"train.rank{rank}.log")
    status, error = "failed", None
    interrupted = False
    with open(log, "a" if resume else "w") as out:
        cmd = attempt_command(trial, sweep_name, run_dir if resume else None)
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        with _preemption(proc) as after_preemption:
            try:
                if rank == 0:  # where the sweep finds its live trials (to forward a SIGTERM to them)
                    with locked_manifest(root) as m:
                        m.trial(tid).update(pid=proc.pid, host=socket.gethostname())
                proc.wait()
            except KeyboardInterrupt:  # the terminal's Ctrl-C reached the trial too: let it save and stop
                interrupted = True
                try:
                    proc.wait()
                except KeyboardInterrupt:  # a second Ctrl-C: the trial exits at once as well
                    proc.kill()
                    proc.wait()
    code = proc.returncode
    wall = time.perf_counter() - t0
    if rank != 0:
        after_preemption()
        return "completed" if code == 0 else "failed"
    # results.json is the truth: a run that completed stays completed even if its process was
    # then stopped during teardown (e.g. by the Ctrl-C that also stops the sweep).
    try:
        record = read_record(run_dir / "results.json")
        status, error, duration = record.status, record.error, record.duration_s
        if paused_share(record) is not None:  # paused at its budget by plan (successive halving)
            status = "paused"
    except ValueError:  # no record: killed before it could write one, or it crashed hard
        status, duration = _without_record(code), None
        error = f"attn train exited with {code}: {_last_line(log)}"
        if status == "interrupted":
            error = f"attn train was stopped from outside (exit {code}) before it wrote its record; resumable"
    with locked_manifest(root) as m:
        trial = m.trial(tid)
        trial.update(
            status=status, error=error, finished=now_iso(), wall_s=round(wall, 3), duration_s=duration
        )
        _print_progress(m, trial)
    if interrupted or code in (-signal.SIGINT, 130):
        raise KeyboardInterrupt
    after_preemption()  # submitit's time-out signal: now that the trial has saved, submitit requeues the job
    return status


# Signals that stop a process from outside (a user, the OOM killer, a scheduler): the trial did not fail,
# it was interrupted, and --resume continues it from its last checkpoint. Any other death is a crash.
OUTSIDE_STOPS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def _without_record(code: int) -> str:
    """The status of a trial whose ``attn train`` left no record: ``interrupted`` when a signal from
    outside ended it (``kill -9`` too: exit -9, or 128 + 9 through a shell), else ``failed``."""
    signum = -code if code < 0 else code - 128 if code > 128 else 0
    return "interrupted" if signum in OUTSIDE_STOPS else "failed"


@contextlib.contextmanager
def _preemption(proc: subprocess.Popen) -> Iterator[Any]:
    """Inside a SLURM job (submitit): the scheduler's warning signals go on to the trial (see
    :func:`attn.runner.slurm.forward_preemption`); elsewhere nothing changes."""
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        with forward_preemption(proc) as after:
            yield after
    else:
        yield lambda: None


def _halved_out(manifest: Manifest) -> set[str]:
    """The ids of the tuning candidates that successive halving dropped: done at their share of the budget."""
    return {t.id for t in manifest.trials if t.extra.get("halted") is not None}


def _print_progress(manifest: Manifest, trial: Trial) -> None:
    """``[k/N] ... | elapsed <since this process launched the sweep>, about <eta> left``: the ETA is the mean
    wall time of the trials this launch finished, times the trials left, over the launcher's parallelism."""
    c = manifest.counts()
    total = len(manifest.trials)
    halved = len(_halved_out(manifest))
    finished = c["completed"] + c["failed"] + halved
    elapsed = time.time() - manifest.extra.get("session_started_unix", time.time())
    this_session = manifest.extra.get("session_finished", 0) + 1
    manifest.extra["session_finished"] = this_session
    wall = manifest.extra.get("session_wall_s", 0.0) + float(trial.extra.get("wall_s") or 0.0)
    manifest.extra["session_wall_s"] = wall
    parallel = max(1, int(manifest.n_jobs)) if manifest.launcher != "basic" else 1
    eta = wall / this_session * (total - finished) / parallel
    line = (
        f"[{finished}/{total}] completed {c['completed']}, failed {c['failed']}"
        + (f", halved out {halved}" if halved else "")
        + f" | trial {trial.id} {trial.status} in {trial.extra['wall_s']:.1f} s"
        + f" | elapsed {_hms(elapsed)}, about {_hms(eta)} left"
    )
    print(line, flush=True)


_STARTED: dict[str, float] = {}  # sweep directory -> when this process first launched it


def _hms(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# --------------------------------------------------------------------------------------------
# launching: a Hydra multirun over trial ids


def _launch_job(cfg: Any) -> str:
    """The Hydra task function: one trial."""
    return run_trial(cfg.sweep_dir, int(cfg.trial), cfg.cpus)


def trial_cpus(launcher: str, n_jobs: int, n_trials: int) -> int | None:
    """Each trial's share of the CPUs this sweep may use, when trials run side by side here."""
    if launcher == "joblib":
        at_once = min(n_jobs, n_trials)
    elif launcher == "submitit_local":  # submitit's local executor starts every job at once
        at_once = n_trials
    else:  # basic: one at a time; slurm: the allocation of each job sets its CPUs
        return None
    return max(1, available_cpus() // max(1, at_once))


def launch(sweep_dir: str | Path) -> Manifest:
    """Run every trial of the sweep that is not completed, through the manifest's Hydra launcher.

    A tuned sweep runs its tuning phase, selects per arm (:func:`attn.runner.tune.apply_selection`) and
    then runs its final phase: two launches, so a cluster's final array starts when the tuning array has
    ended. Once made, the selection stays: a resumed sweep only finishes the final phase.
    """
    root = Path(sweep_dir).resolve()
    (root / STOP_FILE).unlink(missing_ok=True)  # a stop of an earlier session does not carry over
    m = read_manifest(root)
    spec = spec_of(m)
    if spec is None:
        return launch_trials(root)
    if tuning_open(m):
        if spec.search == "optuna":
            from .optuna_search import run_search

            run_search(root, spec, launch_trials)
        else:
            launch_trials(root, TUNE)
        while True:  # successive halving: close each rung, continue the candidates it keeps
            m = read_manifest(root)
            if waiting(m, root) or (root / STOP_FILE).exists():  # stopped: select when every trial has ended
                return m
            with locked_manifest(root) as m:
                lines = promote(m, root)
            if not lines:
                break
            for line in lines:
                print(line, flush=True)
            launch_trials(root, TUNE)
        with locked_manifest(root) as m:
            restored = recorded_selection(m)
            chosen, unselected = apply_selection(m, root)
            table, monitor = m.extra["tuning"], next(t.extra["monitor"] for t in m.trials if phase(t) == TUNE)
        for arm, candidate in chosen.items():
            print(selection_line(arm, candidate, table.get(arm, []), monitor, arm in restored), flush=True)
        for arm, why in unselected.items():
            print(
                f"nothing selected for {arm}: {why}; its final trials do not run", file=sys.stderr, flush=True
            )
    return launch_trials(root, FINAL)


def selection_line(
    arm: str, candidate: dict[str, str], rows: list[dict[str, Any]], monitor: str, restored: bool
) -> str:
    """``selected for <arm>: <values> (<monitor>, mean over the tuning seeds: <candidate score>, ...)``."""
    scores = []
    for r in rows:
        value = "failed" if r.get("mean") is None else f"{r['mean']:.4f}"
        mark = " <-" if r["candidate"] == candidate else ""
        scores.append(f"{' '.join(f'{v}' for v in r['candidate'].values())}: {value}{mark}")
    how = (
        "restored from its final trials' own values" if restored else f"{monitor}, mean over the tuning seeds"
    )
    return f"selected for {arm}: {' '.join(as_overrides(candidate))} ({how}: {'; '.join(scores)})"


def launch_trials(sweep_dir: str | Path, only: str | None = None) -> Manifest:
    """Run the trials of the sweep (of one phase: ``only``) that are not completed, through the
    manifest's Hydra launcher."""
    import hydra
    from hydra.core.global_hydra import GlobalHydra

    root = Path(sweep_dir).resolve()
    with locked_manifest(root) as m:
        todo = []
        for t in m.trials:
            if (
                (only is not None and phase(t) != only)
                or t.extra.get(NOT_RUN)
                or t.extra.get("halted") is not None
            ):
                continue  # another phase, an arm that selected nothing, a candidate halving dropped
            if t.extra.get("told") and (not t.extra.get("budget") or t.status == "failed"):
                continue  # an Optuna candidate its study knows (halving continues the ones it keeps)
            if trial_done(root, t, warn=True):
                t.status = "completed"
            elif t.extra.get("budget") and at_budget(root, t):
                t.status = "paused"  # trained to its share of the budget (successive halving)
            else:
                t.status = "pending" if t.status != "failed" else "failed"
                todo.append(str(t.number))
        # elapsed counts from this process's first launch of the sweep (a tuned sweep's phases are launches)
        m.extra["session_started_unix"] = _STARTED.setdefault(str(Path(root).resolve()), time.time())
        m.extra["session_finished"], m.extra["session_wall_s"] = 0, 0.0
        launcher, n_jobs = m.launcher, int(m.n_jobs)
        extra = list(m.launcher_overrides)
        first = m.trials[0]
        shape = {(t.devices, t.num_nodes, t.accelerator) for t in m.trials}
    if not todo:
        return read_manifest(root)
    if launcher == "slurm" and len(shape) > 1:
        raise ConfigError("launcher=slurm needs one trainer.devices/num_nodes/accelerator for all trials")
    cpus = trial_cpus(launcher, n_jobs, len(todo))
    devices = first.devices if isinstance(first.devices, int) else 1
    gpus = devices if first.accelerator in ("gpu", "cuda") else None
    argv = [
        "attn-sweep",
        "--multirun",
        f"trial={','.join(todo)}",
        f"sweep_dir={root}",
        f"cpus={cpus if cpus else 'null'}",
        f"devices={devices}",
        f"num_nodes={first.num_nodes}",
        f"gpus_per_node={gpus if gpus else 'null'}",
        f"hydra/launcher={LAUNCHERS[launcher]}",
    ]
    if launcher == "joblib":
        argv.append(f"hydra.launcher.n_jobs={n_jobs}")
    argv += [f"++{o}" for o in extra]  # ++: also keys inside the launcher's dicts (additional_parameters)
    if launcher == "slurm":
        if queue_states() is None:
            raise ConfigError(
                "launcher=slurm: no SLURM cluster answers here (squeue failed); run attn sweep where sbatch"
                " and squeue work, e.g. on the cluster's login node"
            )
        register_launcher()
    main = hydra.main(config_path=str(CONF_DIR), config_name="launch", version_base="1.3")(_launch_job)
    GlobalHydra.instance().clear()
    saved = sys.argv
    sys.argv = argv
    previous = signal.signal(signal.SIGTERM, _stop_handler(root))
    try:
        main()
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.argv = saved
        GlobalHydra.instance().clear()
    _report_refusal(root)
    return read_manifest(root)


def _report_refusal(root: Path) -> None:
    """A sweep whose jobs the scheduler refused ends in one line (``ConfigError``). When none of its
    trials ever started, its manifest is removed, so that the corrected command runs with the same
    ``--dir``; otherwise ``--resume`` with corrected launcher settings submits the refused trials."""
    if "refused" not in read_manifest(root).extra:  # the usual end: nothing to rewrite
        return
    with locked_manifest(root) as m:
        why = m.extra.pop("refused")
        fresh = all(t.attempts == 0 and "slurm_job" not in t.extra for t in m.trials)
    if fresh:
        (root / MANIFEST).unlink(missing_ok=True)
        raise ConfigError(
            f"sbatch refused the sweep's jobs: {why}; nothing was submitted, and {root} holds no sweep:"
            " correct the setting and run the same command again"
        )
    raise ConfigError(
        f"sbatch refused the sweep's jobs: {why}; the refused trials are marked 'refused': submit them with"
        f" attn sweep --resume {root} and corrected launcher settings (e.g. hydra.launcher.partition=...)"
    )


def _stop_handler(root: Path) -> Any:
    """SIGTERM of the sweep: start no further trial and pass the signal on to the running trials of this
    host, which save their state and record themselves as interrupted. (Ctrl-C in a terminal reaches
    the trials directly, so SIGINT is not passed on: a trial would take it as the second one.)"""

    def handle(signum: int, _frame: Any) -> None:
        write_text_atomic(root / STOP_FILE, f"{signal.Signals(signum).name} {now_iso()}\n")
        print("attn sweep: SIGTERM received; stopping the running trials (they save their state)",
              file=sys.stderr, flush=True)  # fmt: skip
        try:
            trials = read_manifest(root).trials  # no lock: the handler may interrupt its holder
        except ConfigError:
            return
        host = socket.gethostname()
        for t in trials:
            pid = t.extra.get("pid")
            if t.status == "running" and t.extra.get("host") == host and isinstance(pid, int):
                if _runs_trial(pid, root, t):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGTERM)

    return handle


def _runs_trial(pid: int, root: Path, trial: Trial) -> bool:
    """Whether process ``pid`` is this trial's ``attn train`` (its ``ATTN_RUN_DIR`` is the trial's run
    directory): a pid read from the manifest is data, and only the trial's own process is ever signalled."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        run_dir = trial_dir(root, trial.run_dir)
    except (OSError, ValueError):
        return False
    return f"{RUN_DIR_ENV}={run_dir}".encode() in environ


def stopped(sweep_dir: str | Path) -> str | None:
    """The signal that stopped the sweep's last session (``SIGTERM``), clearing the mark; else None."""
    path = Path(sweep_dir) / STOP_FILE
    if not path.exists():
        return None
    text = path.read_text().split()
    path.unlink(missing_ok=True)
    return text[0] if text else "SIGTERM"


def start(
    args: list[str], sweep_dir: str | None, skip_invalid: bool, tune: dict[str, Any] | None = None
) -> Path:
    """Plan the sweep, write its directory and manifest; returns the directory."""
    manifest, _ = plan(args, sweep_dir, skip_invalid, tune)
    root = Path(manifest.extra.pop("sweep_dir"))  # not recorded: the manifest's own directory is the sweep's
    if (root / MANIFEST).exists():
        raise ConfigError(f"{root} already holds a sweep; resume it with attn sweep --resume {root}")
    root.mkdir(parents=True, exist_ok=True)
    if config_dirs():
        manifest.extra["config_dirs"] = copy_config_dirs(root)
    manifest.write(root / MANIFEST)
    return root


def _apply_resume_settings(m: Manifest, args: list[str]) -> None:
    """``launcher=``, ``n_jobs=`` and ``hydra.launcher.<key>=`` of ``--resume`` applied to ``m`` (earlier
    launcher settings stay unless given again; another launcher drops them); anything else is an error."""
    settings, rest = split_args(args)
    allowed = ("launcher", "n_jobs")
    bad = rest + [
        f"{k}={v}" for k, v in settings.items() if k not in allowed and not k.startswith(LAUNCHER_PREFIX)
    ]
    if bad:
        raise ConfigError(f"--resume keeps the sweep's grid; cannot apply {' '.join(bad)}")
    if not settings:
        return
    launcher = settings.get("launcher", m.launcher)
    if launcher not in LAUNCHERS:
        raise ConfigError(f"unknown launcher {launcher!r}; valid choices: {', '.join(LAUNCHERS)}")
    # The launcher settings of the first session stay unless given again (another launcher: dropped).
    before = m.launcher_overrides
    kept = dict(o.split("=", 1) for o in before) if launcher == m.launcher else {}
    merged = {**kept, **{k: v for k, v in settings.items() if k.startswith(LAUNCHER_PREFIX)}}
    m.launcher_overrides = launcher_overrides(launcher, merged)
    m.launcher = launcher
    m.n_jobs = _positive_int("n_jobs", settings.get("n_jobs", str(m.n_jobs)))


def lock_sweep(sweep_dir: str | Path, finishing: bool) -> DirLock | None:
    """The lock held by the one ``attn sweep`` process of a sweep directory. A directory that cannot be
    written (a read-only mount, no permission) is one line, except when ``finishing`` (``--resume``) a
    sweep whose every trial has completed: nothing is left to run, and None is returned."""
    root = Path(sweep_dir).resolve()
    try:
        return DirLock(root, SWEEP_LOCK, "sweep directory").acquire()
    except OSError as e:
        m = read_manifest(root)
        if finishing and all(trial_done(root, t) for t in m.trials):
            return None
        raise ConfigError(
            f"cannot write the sweep directory {root} ({e.strerror or e}): --resume and --extend need it"
            f" writable; attn report {root} --out DIR reads it as it is"
        ) from None


def open_existing(sweep_dir: str | Path, config_dir_given: bool) -> Manifest:
    """Check an existing sweep before ``--resume``/``--extend`` touches it; returns its manifest.

    Its manifest must name only its own folders (:func:`attn.runner.records.load_manifest`), and the code
    its trials load must be code the user gives now: a manifest never decides what is imported, so the
    plugins it names (``ATTN_PLUGINS`` at creation, ``plugins=`` in its trials' overrides) must be in this
    process's ``ATTN_PLUGINS``; a tuned sweep's final trials must agree with its selection. Its config
    directories are its own copies (``config/<i>``), used for every config composed from here on, unless
    ``--config-dir`` was given again (see :func:`replace_config_dirs`). ``ConfigError`` in one line
    otherwise."""
    root = Path(sweep_dir).resolve()
    m = read_manifest(root)
    recorded_selection(m)  # a selection that its final trials contradict is refused here
    named = [*(m.extra.get("env_plugins") or []), *_override_plugins(m)]
    given = {canonical(p) for p in env_plugins()}
    missing = list(dict.fromkeys(p for p in named if canonical(str(p)) not in given))
    if missing:
        shown = ",".join(map(str, missing))
        raise ConfigError(
            f"{root / MANIFEST} names plugins {shown}; attn imports a plugin only when you give it, never"
            f" because a file names it: resume with {PLUGINS_ENV}={shown}"
        )
    if not config_dir_given and m.extra.get("config_dirs"):
        dirs = [str(config_copy(root, d)) for d in m.extra["config_dirs"]]
        os.environ[CONFIG_DIR_ENV] = os.pathsep.join(dirs)
    return m


def _override_plugins(m: Manifest) -> list[str]:
    """The plugins the trials' overrides name (``plugins=[a,b]``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    found: list[str] = []
    parser = OverridesParser.create()
    for t in m.trials:
        for o in t.overrides:
            if o.partition("=")[0].lstrip("+~") != "plugins":
                continue
            try:
                value = parser.parse_override(o).value()
            except Exception:  # a value Hydra cannot parse names nothing it would load
                continue
            found += [str(v) for v in (value if isinstance(value, list) else [value])]
    return found


def replace_config_dirs(sweep_dir: str | Path) -> list[str]:
    """``--config-dir`` with ``--resume``/``--extend``: copy the given directories into the sweep and record
    them as the ones its trials compose with from now on (the earlier ones stay listed in
    ``config_dirs_given``); returns the copies."""
    root = Path(sweep_dir).resolve()
    check_config_dirs()  # each exists and adds options only
    with locked_manifest(root) as m:
        copies = copy_config_dirs(root)
        m.extra.setdefault("config_dirs_given", []).append(
            {"dirs": [str(p) for p in config_dirs()], "copies": copies, "at": now_iso()}
        )
        m.extra["config_dirs"] = copies
    os.environ[CONFIG_DIR_ENV] = os.pathsep.join(str(root / c) for c in copies)
    return copies


def resume_settings(sweep_dir: str | Path, args: list[str]) -> None:
    """Apply the settings given with ``--resume`` to the sweep's manifest (see ``_apply_resume_settings``;
    a bad one raises before anything is written)."""
    if args:
        with locked_manifest(sweep_dir) as m:
            _apply_resume_settings(m, args)


def plan_resume(sweep_dir: str | Path, args: list[str]) -> tuple[Manifest, list[Trial]]:
    """What ``attn sweep --resume DIR ARGS`` would run, without running or writing anything
    (``--dry-run``): the manifest with the settings applied in memory, and the trials not completed."""
    m = read_manifest(sweep_dir)
    _apply_resume_settings(m, args)
    return m, [t for t in m.trials if not trial_done(sweep_dir, t)]


def summary(manifest: Manifest) -> tuple[str, list[Trial]]:
    """One line of counts and per-trial overhead, and the trials that did not complete."""
    c = manifest.counts()
    # A tuning trial that failed once the selection is made is a result of tuning (scored as a failure).
    closed = spec_of(manifest) is not None and not tuning_open(manifest)
    halved = _halved_out(manifest)
    failed = [
        t
        for t in manifest.trials
        if t.status != "completed" and t.id not in halved and not (closed and phase(t) == TUNE)
    ]
    overheads = [
        t.extra["wall_s"] - t.extra["duration_s"]
        for t in manifest.trials
        if t.extra.get("wall_s") is not None and t.extra.get("duration_s") is not None
    ]
    line = f"sweep {manifest.name}: {c['completed']} completed, "
    line += f"{len(halved)} halved out (successive halving), " if halved else ""
    line += f"{len(failed)} not completed"
    line += f" of {len(manifest.trials)} trials"
    if overheads:
        mean = sum(overheads) / len(overheads)
        line += f"; per-trial overhead {mean:.1f} s (process start, imports, teardown)"
    lost = [
        t
        for t in manifest.trials
        if closed and phase(t) == TUNE and t.status != "completed" and t.id not in halved
    ]
    if lost:
        line += f"; {len(lost)} tuning trial(s) failed and scored as failures in the selection"
    return line, failed


# --------------------------------------------------------------------------------------------
# more seeds for an existing sweep

# What a trial added by --extend inherits from the trials of its arm.
ARM_KEYS = ("phase", "arm", "monitor", "mode", "selected")


def _extend(m: Manifest, args: list[str]) -> list[Trial]:
    """Add to ``m`` a trial per arm and new seed of ``seed=VALUES`` (with the arm's selected values in a
    tuned sweep); seeds an arm already has are not added again. Launcher settings apply as with
    ``--resume``; anything else is an error."""
    settings, rest = split_args(args)
    seeds = [a for a in rest if a.partition("=")[0] == "seed"]
    other = [a for a in rest if a not in seeds]
    if other or not seeds:
        given = " ".join(other) or "no seed=VALUES"
        raise ConfigError(f"--extend adds seeds (seed=3,4,5) to the sweep's arms; cannot apply {given}")
    _apply_resume_settings(m, [f"{k}={v}" for k, v in settings.items()])
    grid, combos = expand(seeds)
    new = grid.get("seed") or [combos[0][0].partition("=")[2]]
    if not all(s.isdigit() for s in new):
        raise ConfigError(f"{seeds[-1]} is invalid: seeds are whole numbers >= 0")
    new = [str(int(s)) for s in new]
    spec = spec_of(m)
    if spec is not None:
        check_seeds(spec, new)
    tuned = tuple(spec.keys) if spec is not None else ()
    pool = [t for t in m.trials if phase(t) != TUNE]
    default = str(load(base_overrides(pool[0].overrides, tuned)).seed)
    arms: dict[tuple[str, ...], Trial] = {}
    have: dict[tuple[str, ...], set[str]] = {}
    for t in pool:
        base = tuple(base_overrides(t.overrides, tuned))
        arms.setdefault(base, t)
        have.setdefault(base, set()).add(str(int(seed_of(t, default))))
    width = len(m.trials[0].id)
    added: list[Trial] = []
    for base, first in arms.items():
        for seed in new:
            if seed in have[base]:
                continue
            selected = first.extra.get("selected") or {}
            overrides = [*base, f"seed={seed}", *as_overrides(selected)]
            probe = {} if selected or spec is None else sample_candidate(spec)
            try:
                cfg = load([*overrides, *as_overrides(probe)])
            except ConfigError as e:
                raise ConfigError(f"trial {' '.join(overrides)}: {e}") from e
            values = {**first.values, "seed": seed}
            tid = f"{len(m.trials) + len(added):0{width}d}"
            slug = values_name(values)
            added.append(
                Trial(
                    id=tid, overrides=overrides, values=values, run_dir=f"trials/{tid}-{slug}",
                    devices=cfg.trainer.devices, num_nodes=cfg.trainer.num_nodes,
                    accelerator=cfg.trainer.accelerator,
                    extra={k: first.extra[k] for k in ARM_KEYS if k in first.extra},
                )
            )  # fmt: skip
    m.trials.extend(added)
    known = m.grid.get("seed") or sorted(set().union(*have.values()), key=int)
    m.grid["seed"] = sorted({*known, *new}, key=int)
    m.extra.setdefault("extended", []).append(
        {"seeds": new, "trials": [t.id for t in added], "at": now_iso()}
    )
    return added


def plan_extend(sweep_dir: str | Path, args: list[str]) -> tuple[Manifest, list[Trial]]:
    """What ``attn sweep --extend DIR seed=...`` would add, without writing anything (``--dry-run``)."""
    m = read_manifest(sweep_dir)
    return m, _extend(m, args)


def extend_sweep(sweep_dir: str | Path, args: list[str]) -> list[Trial]:
    """Add the trials of new seeds to a sweep's manifest (see :func:`plan_extend`); returns them."""
    with locked_manifest(sweep_dir) as m:
        return _extend(m, args)
