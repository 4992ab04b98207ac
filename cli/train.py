"""``attn train``: one Lightning fit + test of a composed config, recorded in its run directory.

Interrupts: the first SIGINT or SIGTERM finishes the current batch, saves ``checkpoints/last.ckpt``
and ends the run as ``interrupted`` (exit 130 / 143); a second one exits at once. SIGUSR1 and SIGUSR2
(a scheduler's warning before a time limit or preemption) do the same and, in a SLURM job, requeue it
(submitit's trials: submitit requeues on USR2); repeats of them are ignored. ``attn train
resume=<run dir>`` continues such a run from its last checkpoint, in the same directory and W&B run; a
SLURM job that SLURM restarts (``SLURM_RESTART_COUNT`` > 0) does so by itself.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .records import (
    RUN_DIR_ENV,
    DirLock,
    RunRecord,
    flatten,
    is_rank_zero,
    previous_attempts,
    read_record,
    resolve_run_dir,
)
from .schema import ConfigError
from .threads import ThreadPlan, apply_torch
from .threads import plan as plan_threads

# Overrides that may change when a run is resumed; anything else would change the experiment.
RESUMABLE_KEYS = ("trainer.max_epochs", "trainer.enable_progress_bar", "logger.mode", "threads")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # save after this batch; the second one exits at once
WARNING_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)  # a scheduler's warning: save after this batch, requeue


class RunInterrupted(Exception):
    """The run was stopped by a signal after saving its state."""

    def __init__(self, signum: int, step: int, saved: bool = True) -> None:
        self.signum, self.step, self.saved = signum, step, saved
        where = f"at step {step}" if saved else f"while testing, after step {step}"
        super().__init__(f"interrupted by {signal.Signals(signum).name} {where}")


@dataclass
class Resume:
    """What ``attn train resume=<run dir>`` continues from."""

    run_dir: Path
    checkpoint: Path
    wandb_id: str | None
    step: int | None = None  # the checkpoint's global step


# Lines from libraries that a user cannot act on: device banners, product tips, the checkpoint each
# test loads. Warnings about the user's own run (too few batches to log, slow data loading) stay.
_NOISE = (
    "GPU available:", "TPU available:", "HPU available:", "💡 Tip:", "LOCAL_RANK:",
    "Restoring states from the checkpoint path", "Loaded model weights from the checkpoint",
)  # fmt: skip


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_NOISE)


def quiet_third_party() -> None:
    """Silence library output a user cannot act on (see ``_NOISE``), the srun hint (attn chooses the
    run's launch itself), and deprecations inside Lightning and torch."""
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda",
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system")
    warnings.filterwarnings("ignore", message=r".*weights_only")


def _wandb_mode(cfg: DictConfig) -> str:
    """W&B mode: ``WANDB_MODE`` from the environment wins over ``logger.mode``."""
    return os.environ.get("WANDB_MODE") or cfg.logger.mode


def _build_loggers(
    cfg: DictConfig, run_dir: Path, flat_config: dict[str, Any], wandb_id: str | None = None
) -> list:
    from lightning.pytorch.loggers import CSVLogger

    kind = cfg.logger.kind
    loggers: list = []
    if kind in ("csv", "wandb"):
        loggers.append(CSVLogger(save_dir=str(run_dir), name="csv", version=""))
    if kind == "wandb" and _wandb_mode(cfg) != "disabled":
        os.environ.setdefault("WANDB_SILENT", "true")
        from lightning.pytorch.loggers import WandbLogger

        wandb_logger = WandbLogger(
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            group=cfg.logger.group,
            tags=list(cfg.logger.tags),
            name=run_dir.name,
            save_dir=str(run_dir),
            mode=_wandb_mode(cfg),
            **({"id": wandb_id, "resume": "allow"} if wandb_id else {}),
        )
        # Lightning always passes W&B's deprecated `anonymous` setting, which makes W&B warn on every run.
        getattr(wandb_logger, "_wandb_init", {}).pop("anonymous", None)
        loggers.append(wandb_logger)
    for logger in loggers:
        logger.log_hyperparams(flat_config)
    return loggers


def _attention_kwargs(cfg: DictConfig) -> dict[str, Any]:
    params = {k: v for k, v in OmegaConf.to_container(cfg.attention.params).items() if v is not None}
    return {
        "kind": cfg.attention.kind,
        "scale": cfg.attention.scale,
        "softmax": cfg.softmax.name,
        "temperature": cfg.softmax.temperature,
        "temperature_init": cfg.softmax.temperature_init,
        **params,
    }


def _baseline(dm: Any) -> dict[str, float]:
    """The order-blind baseline of the task, fitted on its train split and scored on test."""
    from attn.models.baseline import (
        bag_of_frames,
        bow_logistic_regression,
        logistic_regression,
        sequence_bow_accuracy,
    )

    train, test = dm.datasets["train"].tensors, dm.datasets["test"].tensors
    if train[1].dim() == 2:  # sequence tasks: the prefix's token counts at each target position
        return {"test/bow_acc": sequence_bow_accuracy(train, test, dm.vocab_size)}
    if hasattr(dm, "vocab_size"):  # text: token counts
        return {"test/bow_acc": bow_logistic_regression(train[:2], test[:2], dm.vocab_size, dm.n_classes)}
    if train[0].dim() == 3 and train[0].is_floating_point():  # speech: feature frames
        xy = [(bag_of_frames(split[0]), split[1]) for split in (train, test)]
        return {"test/bof_acc": logistic_regression(xy[0], xy[1], dm.n_classes)}
    return {}


def _chance(dm: Any) -> dict[str, float]:
    """The task's chance level: the one the task states, else the accuracy of always predicting the
    test split's majority class."""
    import torch

    if hasattr(dm, "chance"):
        return {"test/chance_acc": float(dm.chance)}
    labels = dm.datasets["test"].tensors[1]
    counts = torch.bincount(labels.flatten().long())
    return {"test/chance_acc": float(counts.max()) / max(1, labels.numel())}


def _finish_wandb(exit_code: int, preempted: bool = False) -> None:
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        if preempted:
            wandb.run.mark_preempting()  # W&B shows the run as preempted, expecting a resume
        wandb.finish(exit_code=exit_code)


def _signal_stop_callback(record: RunRecord):
    """A Lightning callback that turns SIGINT/SIGTERM into a clean stop (see the module docstring)."""
    import lightning as L

    class SignalStop(L.Callback):
        def __init__(self) -> None:
            self.signum: int | None = None
            self.previous: dict[int, Any] = {}

        def install(self) -> None:
            for sig in (*STOP_SIGNALS, *WARNING_SIGNALS):
                self.previous.setdefault(sig, signal.getsignal(sig))
                signal.signal(sig, self._handle)

        def restore(self) -> None:
            for sig, handler in self.previous.items():
                signal.signal(sig, handler)
            self.previous = {}

        def _handle(self, signum: int, _frame: Any) -> None:
            if record.finished:  # the record is written: nothing is left to save
                os._exit(128 + signum)
            if signum in WARNING_SIGNALS and self.signum is not None:
                return  # a repeated warning (SLURM signals every process of the job, submitit forwards it)
            if signum in STOP_SIGNALS and self.signum in STOP_SIGNALS:  # the second stop: exit at once
                name = signal.Signals(signum).name
                record.finish("interrupted", f"{name} twice: exited at once", 128 + signum)
                os._exit(128 + signum)
            first = self.signum is None
            self.signum = signum
            name = signal.Signals(signum).name
            if first and is_rank_zero():  # one line per job, not one per DDP rank
                again = "SIGINT or SIGTERM" if signum in WARNING_SIGNALS else name
                print(
                    f"\nattn: {name} received; stopping after this batch ({again} again exits at once)",
                    file=sys.stderr,
                    flush=True,
                )

        # Lightning registers its own SIGTERM handler when a stage starts; ours replaces it there.
        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.install()

        def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.install()

        def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            stop = self.signum is not None
            if trainer.world_size > 1:  # every rank stops after the same batch, whichever got the signal
                stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
            if stop:
                if self.signum is None:  # another rank was signalled
                    self.signum = signal.SIGTERM
                self.stop(trainer, save=True)

        # A signal during validation inside fit waits for the next training batch, so that the
        # checkpoint holds a consistent loop state; during the final test there is nothing to save.
        def on_test_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            if self.signum is not None:
                self.stop(trainer, save=False)

        def stop(self, trainer: L.Trainer, save: bool) -> None:
            assert self.signum is not None
            if save:  # mid-epoch state: model, optimiser, schedule, loop progress, loader position
                trainer.save_checkpoint(Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt")
            raise RunInterrupted(self.signum, trainer.global_step, saved=save)

    return SignalStop()


def build_data_and_module(cfg: DictConfig) -> tuple[Any, Any]:
    """The task's LightningDataModule (set up for fitting) and LightningModule, from ``cfg``."""
    from hydra.utils import instantiate

    dm = instantiate(cfg.task.datamodule, _convert_="all")
    dm.setup("fit")
    # A datamodule tells its module about the data (vocabularies, classes); classification's is the default.
    data = (
        dm.module_kwargs()
        if hasattr(dm, "module_kwargs")
        else {"vocab_size": dm.vocab_size, "n_classes": dm.n_classes}
    )
    module = instantiate(
        cfg.task.module,
        _convert_="all",
        **data,
        net=OmegaConf.to_container(cfg.model),
        attention=_attention_kwargs(cfg),
        **OmegaConf.to_container(cfg.optim),
    )
    return dm, module


def _device_info(trainer: Any) -> dict[str, Any]:
    """Where the run trains: device and its name, precision, strategy, world size, DDP backend."""
    import torch

    from .schema import cpu_name

    root = trainer.strategy.root_device
    dist = torch.distributed
    initialised = dist.is_available() and dist.is_initialized()
    backend = (
        str(dist.get_backend()) if initialised else getattr(trainer.strategy, "_process_group_backend", None)
    )
    info: dict[str, Any] = {
        "device": str(root),
        "name": torch.cuda.get_device_name(root) if root.type == "cuda" else cpu_name(),
        "precision": str(trainer.precision),
        "strategy": type(trainer.strategy).__name__,
        "world_size": trainer.world_size,
        "backend": backend,
        "torch": torch.__version__,
    }
    if root.type == "cuda":
        info["cuda"] = torch.version.cuda
    return info


def _check_trained(trainer: Any, module: Any) -> None:
    """A fit that ended without an error trained every step it was asked for: Lightning ends an epoch
    on a ``StopIteration`` from anywhere, which would otherwise pass for a completed run."""
    expected = getattr(module, "_total_steps", None)  # set when training starts (AttnModule)
    if trainer.fast_dev_run or expected is None or trainer.global_step >= expected:
        return
    raise RuntimeError(
        f"training ended after {trainer.global_step} of {expected} steps without an error (a StopIteration"
        " inside a hook?): the run is not complete"
    )


def fit_and_test(
    cfg: DictConfig, run_dir: Path, record: RunRecord, stopper: Any, resume: Resume | None = None
) -> dict[str, float]:
    """Seed, build the data and model, fit, test the best checkpoint; returns the test metrics."""
    import lightning as L

    from .checkpoints import (
        AtomicCheckpointIO,
        RunCheckpoint,
        config_digest,
        keep_history,
        metric_history,
    )

    quiet_third_party()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    container = OmegaConf.to_container(cfg, resolve=True)
    dm, module = build_data_and_module(cfg)
    module.attn_config = container  # stored in every checkpoint: a resume checks it against config.yaml
    record.data["config_sha1"] = config_digest(container, RESUMABLE_KEYS)
    dm.save(str(run_dir))
    history = metric_history(run_dir, resume.step) if resume and record.write else []
    if resume is not None:  # the directory is meant to be there: its metric rows are kept (keep_history)
        warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    flat = {**flatten(container), **flatten({"provenance": record.data.get("provenance") or {}})}
    loggers = _build_loggers(cfg, run_dir, flat, resume.wandb_id if resume else None)
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger" and record.write:
            record.data["wandb_id"] = logger.experiment.id
    keep_history(loggers, history)  # the earlier attempts' metric rows stay in csv/metrics.csv
    checkpoint = RunCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        filename="best-{epoch}-{step}",
        monitor=cfg.task.monitor,
        mode=cfg.task.monitor_mode,
        save_last=True,
    )
    from attn.models.training import SampleEfficiency

    floor = float(getattr(dm, "chance", 0.0))  # where the validation metric starts: chance, or 0
    if hasattr(dm, "n_classes") and not hasattr(dm, "chance") and "test" in getattr(dm, "datasets", {}):
        floor = _chance(dm)["test/chance_acc"]
    efficiency = SampleEfficiency(cfg.task.monitor, cfg.task.monitor_mode, floor)
    callbacks: list = [checkpoint, stopper, efficiency]
    if cfg.diagnostics.enabled:
        from attn.models.diagnostics import AttentionDiagnostics

        callbacks.append(AttentionDiagnostics(cfg.diagnostics.batches, cfg.diagnostics.images))
    plugins: list = [AtomicCheckpointIO()]
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    if SLURMEnvironment.detect():  # attn saves and requeues on USR1 itself: no hpc_ckpt_*.ckpt files
        plugins.append(SLURMEnvironment(auto_requeue=False))
    trainer = L.Trainer(
        **OmegaConf.to_container(cfg.trainer),
        logger=loggers or False,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        plugins=plugins,
    )
    record.data["device"] = _device_info(trainer)
    trainer.fit(module, datamodule=dm, ckpt_path=str(resume.checkpoint) if resume else None)
    record.data["device"] = _device_info(trainer)  # the process group exists now (DDP)
    _check_trained(trainer, module)
    best = checkpoint.best_model_path or None
    tested = trainer.test(module, datamodule=dm, ckpt_path="best" if best else None, verbose=False)
    metrics = {k: float(v) for k, v in (tested[0] if tested else {}).items()}
    bad = next((f"{k}={v}" for k, v in metrics.items() if not math.isfinite(v)), None)
    if bad:
        raise RuntimeError(f"test metrics are not finite ({bad}): the trained model is not usable")
    if checkpoint.best_model_score is not None:
        metrics[f"best_{cfg.task.monitor}".replace("best_val/", "val/best_")] = float(
            checkpoint.best_model_score
        )
    metrics["train/epochs"] = float(trainer.current_epoch)
    metrics["train/steps"] = float(trainer.global_step)
    if not trainer.fast_dev_run:
        metrics.update(efficiency.result())
    if hasattr(dm, "n_classes") or hasattr(dm, "chance"):  # classification and sequence tasks
        metrics.update(_chance(dm))
        if cfg.baseline and trainer.is_global_zero:
            metrics.update(_baseline(dm))
    lengths = cfg.task.get("eval_lengths")
    if lengths and trainer.is_global_zero:
        from attn.models.sequence import evaluate_at_lengths

        data = {n: dm.at_length(n) for n in sorted({dm.length, *lengths})}
        metrics.update(evaluate_at_lengths(module.net, data, dm.batch_size))
    record.data["best_checkpoint"] = best
    record.data["predictions"] = getattr(module, "prediction_info", None)
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.summary.update(metrics)
    return metrics


def run(
    cfg: DictConfig, resume: Resume | None = None, threads: ThreadPlan | None = None
) -> tuple[dict[str, Any], BaseException | None]:
    """Run ``cfg`` in its own run directory; the written record (any status) and the error, if any.

    ``threads`` is the plan made before torch was imported (``attn train``); without one (a call from
    Python) the plan is made here and only torch's thread count follows it.
    ``OSError`` escapes when the run directory cannot be created or the record cannot be written,
    ``RunDirBusy`` when another live process holds the run directory's lock.
    """
    previous = os.environ.get(RUN_DIR_ENV)
    if resume is not None:
        os.environ[RUN_DIR_ENV] = str(resume.run_dir)
    try:
        run_dir = resolve_run_dir(cfg.runs_root, cfg.name)
    finally:
        _restore_env(previous)
    rank0 = is_rank_zero()  # other DDP ranks train but write no config or record
    run_dir.mkdir(parents=True, exist_ok=True)
    # One writer per run directory: a second run or resume of it stops here, before touching anything.
    lock = DirLock(run_dir).acquire() if rank0 else None
    try:
        return _run_locked(cfg, run_dir, rank0, resume, threads, previous)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(
    cfg: DictConfig,
    run_dir: Path,
    rank0: bool,
    resume: Resume | None,
    threads: ThreadPlan | None,
    previous: str | None,
) -> tuple[dict[str, Any], BaseException | None]:
    if rank0:
        from .checkpoints import remove_partial_checkpoints

        remove_partial_checkpoints(run_dir)
    if resume is None and rank0:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    attempts: list[dict[str, Any]] = []
    if resume is not None:
        try:
            attempts = previous_attempts(read_record(run_dir / "results.json"))
        except ValueError:
            attempts = []  # no record (killed before it) or a corrupt one: its attempts are unknown
    record = RunRecord(run_dir, OmegaConf.to_container(cfg, resolve=True), write=rank0, attempts=attempts)
    from .provenance import provenance

    record.data["provenance"] = provenance()
    threads = threads or plan_threads(cfg, os.environ)
    apply_torch(threads)
    record.data["threads"] = threads.as_dict()
    if resume is not None:
        record.data["resumed_from"] = str(resume.checkpoint)
    stopper = _signal_stop_callback(record)
    os.environ[RUN_DIR_ENV] = str(run_dir)  # DDP ranks started by this run find the same directory
    try:
        record.data["metrics"] = fit_and_test(cfg, run_dir, record, stopper, resume)
    except RunInterrupted as e:
        record.data["metrics"]["train/steps"] = float(e.step)
        _finish_wandb(128 + e.signum, preempted=True)
        saved = "checkpoint saved" if e.saved else "training had finished"
        line = f"{e}; {saved}, resume with: attn train resume={run_dir}"
        return record.finish("interrupted", line, 128 + e.signum), e
    except (KeyboardInterrupt, SystemExit) as e:  # a signal before training started or outside our hooks
        code = 128 + (stopper.signum or signal.SIGINT)
        _finish_wandb(code)
        name = signal.Signals(stopper.signum or signal.SIGINT).name
        return record.finish("interrupted", f"interrupted by {name} before a checkpoint", code), e
    except Exception as e:
        _finish_wandb(1)
        text = str(e).strip()
        line = f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__
        return record.finish("failed", line), e
    finally:
        if stopper.signum is None:  # after a signal, a second one must still exit at once
            stopper.restore()
        _restore_env(previous)
    _finish_wandb(0)
    if rank0:  # Lightning's SLURM auto-requeue of earlier versions saved these; the run no longer needs them
        for stale in run_dir.glob("hpc_ckpt_*.ckpt"):
            stale.unlink(missing_ok=True)
    return record.finish("completed"), None


def _restore_env(previous: str | None) -> None:
    if previous is None:
        os.environ.pop(RUN_DIR_ENV, None)
    else:
        os.environ[RUN_DIR_ENV] = previous


def exit_code(record: dict[str, Any], exc: BaseException | None) -> int:
    """The process exit code for a finished run: 0, 1 (failed), 130 (SIGINT) or 143 (SIGTERM)."""
    if record["status"] == "completed":
        return 0
    if record["status"] == "interrupted":
        return 128 + exc.signum if isinstance(exc, RunInterrupted) else 130
    return 1


def prepare_resume(
    run_dir: str, overrides: list[str], before_validate: Callable[[DictConfig], object] | None = None
) -> tuple[DictConfig, Resume]:
    """The saved config of ``run_dir`` with the allowed ``overrides``, and where to resume from.

    Overrides that would change the experiment are refused with a ``ConfigError`` naming them;
    ``before_validate`` is called as in :func:`attn.cli.config.load`.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from .schema import validate

    root = Path(run_dir).resolve()
    config_path, checkpoint = root / "config.yaml", root / "checkpoints" / "last.ckpt"
    if not config_path.exists():
        raise ConfigError(f"resume={run_dir}: not a run directory (no config.yaml)")
    if not checkpoint.exists():
        raise ConfigError(f"resume={run_dir}: no checkpoints/last.ckpt to resume from")
    try:
        status = read_record(root / "results.json")["status"]
    except ValueError:
        status = None  # no record or a corrupt one: the checkpoint decides
    if status == "completed":
        raise ConfigError(f"resume={run_dir}: the run already completed; start a new run instead")
    cfg = OmegaConf.load(config_path)
    step = _check_trained_config(root, checkpoint, OmegaConf.to_container(cfg, resolve=True))
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
    wandb_id = None
    try:
        wandb_id = read_record(root / "results.json").get("wandb_id")
    except ValueError:
        pass
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
    from .slurm import restart_count

    if restart_count() < 1 or os.environ.get(RUN_DIR_ENV):
        return None
    root = resolve_run_dir(cfg.runs_root, cfg.name)
    if not (root / "checkpoints" / "last.ckpt").exists() or not (root / "config.yaml").exists():
        return None
    try:
        if read_record(root / "results.json")["status"] == "completed":
            return None
    except ValueError:
        pass  # killed before its record: the checkpoint decides
    saved, resume = prepare_resume(str(root), [], before_validate)
    from .checkpoints import config_changes

    changes = config_changes(
        OmegaConf.to_container(saved, resolve=True), OmegaConf.to_container(cfg, resolve=True), RESUMABLE_KEYS
    )
    if changes:
        raise ConfigError(
            f"SLURM restarted this job, but its command line no longer gives the experiment in {root}:"
            f" {', '.join(changes)}; resume it with attn train resume={root} or start a new job"
        )
    return saved, resume


def job_to_requeue(exc: BaseException | None) -> str | None:
    """The SLURM job to requeue after a run that a scheduler's warning signal stopped (and that saved its
    state): this job, on rank 0, unless the signal was submitit's own (submitit requeues then)."""
    from .slurm import job_id, submitit_signal

    if not (isinstance(exc, RunInterrupted) and exc.signum in WARNING_SIGNALS and exc.saved):
        return None
    if not is_rank_zero() or exc.signum == submitit_signal():
        return None
    return job_id()


def _check_trained_config(root: Path, checkpoint: Path, saved: dict[str, Any]) -> int | None:
    """The checkpoint's global step, after checking that ``config.yaml`` is the config that trained it
    (``ConfigError`` naming every changed key otherwise). Checkpoints of older versions hold no config."""
    import torch

    from .checkpoints import CONFIG_KEY, config_changes

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
    step = ckpt.get("global_step")
    return int(step) if isinstance(step, int) else None
