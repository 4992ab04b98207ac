"""Continuing a run: ``attn train resume=<run dir>``, a SLURM job that SLURM restarted, and the requeue
after a scheduler's warning signal.

``resume=`` continues an interrupted run from its last checkpoint, in the same directory and W&B run;
only the keys in :data:`RESUMABLE_KEYS` may change. A SLURM job that SLURM restarts
(``SLURM_RESTART_COUNT`` > 0) does so by itself, and a plain job stopped by USR1/USR2 requeues itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from . import threads
from .config import load
from .errors import ConfigError
from .machine import restart_count
from .paths import RUN_DIR_ENV, resolve_run_dir
from .records import CONFIG_KEY, FILES_KEY, RESULTS, config_changes, file_digests, read_record, record_status
from .schema import check_devices, validate
from .threads import ThreadPlan

# Overrides that may change when a run is resumed; anything else would change the experiment.
RESUMABLE_KEYS = (
    "trainer.max_epochs", "trainer.enable_progress_bar", "trainer.pause_at", "logger.mode", "threads",
)  # fmt: skip


@dataclass
class Resume:
    """What ``attn train resume=<run dir>`` continues from."""

    run_dir: Path
    checkpoint: Path
    wandb_id: str | None
    step: int | None = None  # the checkpoint's global step


def prepare_resume(
    run_dir: str, overrides: list[str], before_validate: Callable[[DictConfig], object] | None = None
) -> tuple[DictConfig, Resume]:
    """The saved config of ``run_dir`` with the allowed ``overrides``, and where to resume from.

    Overrides that would change the experiment are refused with a ``ConfigError`` naming them;
    ``before_validate`` is called as in :func:`attn.runner.config.load`.
    """
    root = Path(run_dir).resolve()
    config_path, checkpoint = root / "config.yaml", root / "checkpoints" / "last.ckpt"
    if not config_path.exists():
        raise ConfigError(f"resume={run_dir}: not a run directory (no config.yaml)")
    if not checkpoint.exists():
        raise ConfigError(f"resume={run_dir}: no checkpoints/last.ckpt to resume from")
    status = record_status(root)  # None: no record or a corrupt one, the checkpoint decides
    if status == "completed":
        raise ConfigError(f"resume={run_dir}: the run already completed; start a new run instead")
    cfg = OmegaConf.load(config_path)
    step = check_trained_config(root, checkpoint, OmegaConf.to_container(cfg, resolve=True))
    refused = []
    for o in OverridesParser.create().parse_overrides(overrides=overrides):
        key = o.get_key_element()
        value = o.value()
        if key in RESUMABLE_KEYS:
            OmegaConf.update(cfg, key, value, merge=False)
        elif OmegaConf.select(cfg, key, default=object()) != value:
            refused.append(o.input_line)
    if refused:
        raise ConfigError(
            f"resume keeps the saved experiment; cannot apply {' '.join(refused)}"
            f" (allowed on resume: {', '.join(RESUMABLE_KEYS)})"
        )
    try:
        wandb_id = read_record(root / RESULTS).wandb_id
    except ValueError:
        wandb_id = None
    if before_validate is not None:
        before_validate(cfg)
    return validate(cfg), Resume(root, checkpoint, wandb_id, step)


def slurm_restart(
    cfg: DictConfig, before_validate: Callable[[DictConfig], object] | None = None
) -> tuple[DictConfig, Resume] | None:
    """In a job that SLURM restarted (``SLURM_RESTART_COUNT`` > 0: ``scontrol requeue``, preemption, a
    node failure): the run its first start began, to be resumed as ``resume=`` would, when that run
    saved a checkpoint and did not complete; else None. ``ConfigError`` when the job's command line no
    longer describes the saved experiment. (A sweep's trials are resumed by ``attn sweep`` itself.)"""
    if restart_count() < 1 or os.environ.get(RUN_DIR_ENV):
        return None
    root = resolve_run_dir(cfg.runs_root, cfg.name)
    if not (root / "checkpoints" / "last.ckpt").exists() or not (root / "config.yaml").exists():
        return None
    if record_status(root) == "completed":  # (None: killed before its record, the checkpoint decides)
        return None
    saved, resume = prepare_resume(str(root), [], before_validate)
    changes = config_changes(
        OmegaConf.to_container(saved, resolve=True), OmegaConf.to_container(cfg, resolve=True), RESUMABLE_KEYS
    )
    if changes:
        raise ConfigError(
            f"SLURM restarted this job, but its command line no longer gives the experiment in {root}:"
            f" {', '.join(changes)}; resume it with attn train resume={root} or start a new job"
        )
    return saved, resume


def check_trained_config(root: Path, checkpoint: Path, saved: dict[str, Any]) -> int | None:
    """The checkpoint's global step, after checking that ``config.yaml`` is the config that trained it
    (``ConfigError`` naming every changed key otherwise). Checkpoints of older versions hold no config."""
    import torch  # only when resuming: attn train's config checks run before torch is imported

    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # any unreadable checkpoint is one line for the user
        what = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        raise ConfigError(f"resume={root}: {checkpoint.name} cannot be read ({what})") from None
    trained = ckpt.get(CONFIG_KEY)
    if isinstance(trained, dict):
        changes = config_changes(trained, saved, RESUMABLE_KEYS)
        if changes:
            raise ConfigError(
                f"resume={root}: config.yaml is not the config that trained {checkpoint.name}: "
                f"{', '.join(changes)}; restore it or start a new run"
            )
    files = ckpt.get(FILES_KEY)
    if isinstance(files, dict):  # checkpoints of older versions hold no hashes
        now = file_digests(root)
        changed = sorted(name for name, digest in files.items() if now.get(name) != digest)
        if changed:
            raise ConfigError(
                f"resume={root}: {', '.join(changed)} is not the file that trained {checkpoint.name} (its"
                " SHA-1 differs, or it is gone); restore it or start a new run"
            )
    step = ckpt.get("global_step")
    return int(step) if isinstance(step, int) else None


@dataclass
class Prepared:
    """What one ``attn train`` runs: the validated config, the run it continues (``resume=`` or a SLURM
    restart), and the thread plan made before torch was imported."""

    config: DictConfig
    resume: Resume | None
    threads: ThreadPlan | None
    slurm_restarted: bool = False  # SLURM restarted this job, and it resumes its run


def prepare(args: list[str], print_only: bool = False, follow_restarts: bool = True) -> Prepared:
    """The run that ``attn train ARGS`` asks for; ``ConfigError`` with one line for bad input.

    ``resume=<run dir>`` among ``args`` continues that run; in a job that SLURM restarted the run it
    began is continued by itself (unless not ``follow_restarts``: ``attn bench``). ``print_only``
    (``--cfg job``): compose only, no devices or restarts.
    """
    resume_dir = next((a.split("=", 1)[1] for a in args if a.startswith("resume=")), None)
    args = [a for a in args if not a.startswith("resume=")]
    plans: list[ThreadPlan] = []  # the thread plan, decided before validation imports torch

    def plan_threads(cfg: DictConfig) -> None:
        plans.append(threads.prepare(cfg))

    resume, restarted = None, False
    if resume_dir is not None:
        conf, resume = prepare_resume(resume_dir, args, before_validate=plan_threads)
    else:
        conf = load(args, before_validate=plan_threads)
        if "SLURM_RESTART_COUNT" in os.environ and follow_restarts and not print_only:
            found = slurm_restart(conf, before_validate=plan_threads)
            if found is not None:
                (conf, resume), restarted = found, True
    if not print_only:
        check_devices(conf)
    return Prepared(conf, resume, plans[-1] if plans else None, restarted)
