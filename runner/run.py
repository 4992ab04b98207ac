"""The run behind ``attn train``: one Lightning fit and test of a validated config, recorded in its run
directory (``results.json``, ``config.yaml``, checkpoints, metrics, predictions).

:func:`run` takes the run directory's lock and turns every ending (completed, failed, interrupted by a
signal) into a written record; :func:`fit_and_test` seeds, builds the data and module
(:func:`build_data_and_module`), the loggers, callbacks and trainer (``build_*``), fits, tests the best
checkpoint and collects the metrics. Signals: :mod:`attn.runner.signals`; resume and SLURM restarts:
:mod:`attn.runner.resume`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from attn.datamodules.files import cache_root, write_json_atomic, write_text_atomic
from attn.models.baseline import (
    bag_of_frames,
    bow_logistic_regression,
    logistic_regression,
    sequence_bow_accuracy,
)
from attn.models.diagnostics import AttentionDiagnostics
from attn.models.sequence import evaluate_at_lengths
from attn.models.training import PredictionTable, SampleEfficiency, StopAt

from .checkpoints import (
    AtomicCheckpointIO,
    RunCheckpoint,
    RunPaused,
    keep_history,
    metric_history,
    remove_partial_checkpoints,
)
from .errors import ConfigError
from .machine import cpu_name, is_rank_zero
from .paths import PHASE_ENV, RUN_DIR_ENV, config_dirs, resolve_run_dir
from .plugins import loaded_plugins
from .provenance import provenance
from .records import (
    RESULTS,
    DirLock,
    Record,
    RunRecord,
    config_digest,
    file_digests,
    flatten,
    read_record,
    record_status,
)
from .resume import RESUMABLE_KEYS, Resume
from .signals import RunInterrupted, SignalStop
from .threads import ThreadPlan, apply_torch, thread_plan

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


# --------------------------------------------------------------------------------------------
# builders


def _attention_kwargs(cfg: DictConfig, train_len: int | None = None) -> dict[str, Any]:
    """The attention settings every MultiHeadAttention gets; ``train_len``: the training sequence length
    (for ``temperature=logn|ssmax``; default ``model.max_len``)."""
    params = {k: v for k, v in OmegaConf.to_container(cfg.attention.params).items() if v is not None}
    return {
        "train_len": train_len or cfg.model.max_len,
        "kind": cfg.attention.kind,
        "scale": cfg.attention.scale,
        "softmax": cfg.softmax.name,
        "temperature": cfg.softmax.temperature,
        "temperature_init": cfg.softmax.temperature_init,
        "sink": cfg.softmax.get("sink"),
        "softcap": cfg.softmax.get("softcap"),
        **params,
    }


def build_data_and_module(cfg: DictConfig, run_dir: Path | None = None) -> tuple[Any, Any]:
    """The task's LightningDataModule (set up for fitting) and LightningModule, from ``cfg``; ``run_dir``
    holds what a resumed run reuses (its subword model)."""
    dm = instantiate(cfg.task.datamodule, _convert_="all")
    if "tokenizer" in cfg.task:  # text tasks: words, or subwords trained on the training split
        dm.set_tokenizer(cfg.task.tokenizer, cfg.task.vocab_size, str(run_dir) if run_dir else None)
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
        attention=_attention_kwargs(cfg, getattr(dm, "train_tokens", None)),
        **OmegaConf.to_container(cfg.optim),
    )
    return dm, module


def wandb_mode(cfg: DictConfig) -> str:
    """W&B mode: ``WANDB_MODE`` from the environment wins over ``logger.mode``."""
    return os.environ.get("WANDB_MODE") or cfg.logger.mode


def build_loggers(
    cfg: DictConfig, run_dir: Path, flat_config: dict[str, Any], wandb_id: str | None = None
) -> list:
    """The run's loggers (``logger.kind``: CSV, and W&B unless disabled), with the config logged."""
    kind = cfg.logger.kind
    loggers: list = []
    if kind in ("csv", "wandb"):
        loggers.append(CSVLogger(save_dir=str(run_dir), name="csv", version=""))
    if kind == "wandb" and wandb_mode(cfg) != "disabled":
        os.environ.setdefault("WANDB_SILENT", "true")
        from lightning.pytorch.loggers import WandbLogger  # imports wandb: only when it logs

        wandb_logger = WandbLogger(
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            group=cfg.logger.group,
            tags=list(cfg.logger.tags),
            name=run_dir.name,
            save_dir=str(run_dir),
            mode=wandb_mode(cfg),
            **({"id": wandb_id, "resume": "allow"} if wandb_id else {}),
        )
        # Lightning always passes W&B's deprecated `anonymous` setting, which makes W&B warn on every run.
        getattr(wandb_logger, "_wandb_init", {}).pop("anonymous", None)
        loggers.append(wandb_logger)
    for logger in loggers:
        logger.log_hyperparams(flat_config)
    return loggers


class WritePredictions(L.Callback):
    """Writes the test predictions a task module gathered (``prediction_text``, rank 0) to
    ``<run dir>/predictions/test.tsv``."""

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        text = getattr(pl_module, "prediction_text", None)
        if text is not None and trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / PredictionTable.PATH
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, text)


def build_callbacks(cfg: DictConfig, run_dir: Path, dm: Any, stopper: SignalStop) -> list:
    """Checkpoints (best by ``task.monitor`` and last), the signal stop, sample efficiency, the
    predictions writer and, when enabled, the attention diagnostics."""
    checkpoint = RunCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        filename="best-{epoch}-{step}",
        monitor=cfg.task.monitor,
        mode=cfg.task.monitor_mode,
        save_last=True,
        pause_at=cfg.trainer.get("pause_at"),
    )
    floor = float(getattr(dm, "chance", 0.0))  # where the validation metric starts: chance, or 0
    if hasattr(dm, "n_classes") and not hasattr(dm, "chance") and "test" in getattr(dm, "datasets", {}):
        floor = _chance(dm)["test/chance_acc"]
    efficiency = SampleEfficiency(cfg.task.monitor, cfg.task.monitor_mode, floor)
    callbacks: list = [checkpoint, stopper, efficiency, WritePredictions()]
    if cfg.trainer.get("stop_at") is not None:
        callbacks.append(StopAt(cfg.task.monitor, cfg.task.monitor_mode, float(cfg.trainer.stop_at)))
    if cfg.diagnostics.enabled:
        callbacks.append(AttentionDiagnostics(cfg.diagnostics.batches, cfg.diagnostics.images))
    return callbacks


SHORT_RUN_EPOCHS = 2  # runs of at most this many epochs validate 4 times an epoch (learning curves)


def validation_interval(trainer: dict[str, Any]) -> float | int:
    """``trainer.val_check_interval``; when null, 0.25 (4 validations an epoch) for a run of 1-2 epochs
    (so that its learning curve has points), else 1.0 (once an epoch)."""
    given = trainer.get("val_check_interval")
    if given is not None:
        return given
    short = 0 < trainer.get("max_epochs", 0) <= SHORT_RUN_EPOCHS and trainer.get("max_steps", -1) == -1
    plain = not trainer.get("fast_dev_run") and not trainer.get("overfit_batches")
    return 0.25 if short and plain else 1.0


ATTN_TRAINER_KEYS = ("stop_at", "pause_at")  # attn's, not Lightning's (build_callbacks uses them)


def lightning_trainer_kwargs(trainer_cfg: DictConfig) -> dict[str, Any]:
    """``cfg.trainer`` as keyword arguments of ``lightning.Trainer`` (attn's own keys left out)."""
    kwargs = OmegaConf.to_container(trainer_cfg)
    for own in ATTN_TRAINER_KEYS:
        kwargs.pop(own, None)
    return kwargs


def build_trainer(cfg: DictConfig, run_dir: Path, loggers: list, callbacks: list) -> L.Trainer:
    """The Lightning trainer of ``cfg.trainer``, saving checkpoints atomically."""
    plugins: list = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():  # attn saves and requeues on USR1 itself: no hpc_ckpt_*.ckpt files
        plugins.append(SLURMEnvironment(auto_requeue=False))
    kwargs = lightning_trainer_kwargs(cfg.trainer)
    kwargs["val_check_interval"] = validation_interval(kwargs)
    return L.Trainer(
        **kwargs,
        logger=loggers or False,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        plugins=plugins,
    )


# --------------------------------------------------------------------------------------------
# fit and test


def _device_info(trainer: Any) -> dict[str, Any]:
    """Where the run trains: device and its name, precision, strategy, world size, DDP backend."""
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


def _check_trained(trainer: Any, module: Any, stopped: int | None) -> None:
    """A fit that ended without an error trained every step it was asked for, or up to where
    ``trainer.stop_at`` stopped it (``stopped``): Lightning ends an epoch on a ``StopIteration`` from
    anywhere, which would otherwise pass for a completed run."""
    expected = getattr(module, "_total_steps", None)  # set when training starts (AttnModule)
    if stopped is not None:
        expected = stopped
    if trainer.fast_dev_run or expected is None or trainer.global_step >= expected:
        return
    raise RuntimeError(
        f"training ended after {trainer.global_step} of {expected} steps without an error (a StopIteration"
        " inside a hook?): the run is not complete"
    )


# The sequence baseline's features (5 per token) times its classes (the tokens): 2,048 tokens fit;
# Zoology's 8,192 would need 335 million weights and, for the features, more memory than 24 GiB.
BASELINE_MAX_WEIGHTS = 25_000_000


def _baseline(dm: Any) -> dict[str, float]:
    """The order-blind baseline of the task, fitted on its train split and scored on test."""
    train, test = dm.datasets["train"].tensors, dm.datasets["test"].tensors
    if train[1].dim() == 2:  # sequence tasks: the prefix's token counts at each target position
        weights = 5 * dm.vocab_size * dm.vocab_size  # its features x classes
        if weights > BASELINE_MAX_WEIGHTS:
            print(
                f"note: no order-blind baseline (test/bow_acc): with {dm.vocab_size} tokens its logistic"
                f" regression would have {weights:,} weights (at most {BASELINE_MAX_WEIGHTS:,})",
                file=sys.stderr,
                flush=True,
            )
            return {}
        return {"test/bow_acc": sequence_bow_accuracy(train, test, dm.vocab_size)}
    if hasattr(dm, "vocab_size"):  # text: token counts
        return {"test/bow_acc": bow_logistic_regression(train[:2], test[:2], dm.vocab_size, dm.n_classes)}
    if train[0].dim() == 3 and train[0].is_floating_point():  # speech: feature frames
        xy = [(bag_of_frames(split[0]), split[1]) for split in (train, test)]
        return {"test/bof_acc": logistic_regression(xy[0], xy[1], dm.n_classes)}
    return {}


# The order-blind baseline depends on the data only: one fit per data set (task, data settings, seed,
# tokenizer), kept in the cache, serves every arm and temperature trained on it. Bumped when _baseline
# changes what it computes, so an older cache entry is never read as a newer baseline.
BASELINE_VERSION = 2
DATA_NEUTRAL = ("batch_size", "num_workers", "eval_lengths")  # datamodule keys that leave the data alone


def baseline_key(cfg: DictConfig) -> str:
    """The cache key of a run's baseline: a hash of its data (see ``BASELINE_VERSION``)."""
    data = OmegaConf.to_container(cfg.task.datamodule, resolve=True)
    data = {k: v for k, v in data.items() if k not in DATA_NEUTRAL}
    words = {k: cfg.task.get(k) for k in ("name", "tokenizer", "vocab_size")}
    text = json.dumps([BASELINE_VERSION, data, words], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def cached_baseline(cfg: DictConfig, dm: Any) -> dict[str, float]:
    """:func:`_baseline` of the run's data, read from ``<cache>/baselines/<key>.json`` when an earlier run
    on the same data fitted it, else fitted and stored there. A cache entry that does not read as a dict of
    numbers is fitted again. Only data that follow from the config alone are cached (a data module's
    ``GENERATED``): a file or hub data set may change under the same settings."""
    if not getattr(dm, "GENERATED", False):
        return _baseline(dm)
    path = cache_root() / "baselines" / f"{baseline_key(cfg)}.json"
    try:
        found = json.loads(path.read_text())
        if isinstance(found, dict) and found and all(isinstance(v, float) for v in found.values()):
            return found
    except (OSError, ValueError):
        pass
    result = _baseline(dm)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, result)
    except OSError:  # an unwritable cache costs the next run a refit, nothing more
        pass
    return result


def bytes_per_element(cfg: DictConfig) -> int:
    """Bytes of one activation (a cached key or value) at the run's precision: 2 under 16-bit mixed
    precision (autocast computes the projections in 16 bits), 8 at 64, else 4."""
    precision = str(cfg.trainer.get("precision", "32"))
    return 2 if precision.startswith(("16", "bf16")) else 8 if precision.startswith("64") else 4


def _chance(dm: Any) -> dict[str, float]:
    """The task's chance level: the one the task states, else the accuracy of always predicting the
    test split's majority class."""
    if hasattr(dm, "chance"):
        return {"test/chance_acc": float(dm.chance)}
    labels = dm.datasets["test"].tensors[1]
    counts = torch.bincount(labels.flatten().long())
    return {"test/chance_acc": float(counts.max()) / max(1, labels.numel())}


def fit_and_test(
    cfg: DictConfig, run_dir: Path, record: RunRecord, stopper: SignalStop, resume: Resume | None = None
) -> dict[str, float]:
    """Seed, build the data and model, fit, test the best checkpoint; returns the test metrics."""
    quiet_third_party()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    container = OmegaConf.to_container(cfg, resolve=True)
    dm, module = build_data_and_module(cfg, run_dir)
    module.attn_config = container  # stored in every checkpoint: a resume checks it against config.yaml
    extra = record.data.extra
    extra["config_sha1"] = config_digest(container, RESUMABLE_KEYS)
    dm.save(str(run_dir))
    module.attn_files = file_digests(run_dir)  # and the files it reads back (a subword model)
    history = metric_history(run_dir, resume.step) if resume and record.write else []
    if resume is not None:  # the directory is meant to be there: its metric rows are kept (keep_history)
        warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    flat = {**flatten(container), **flatten({"provenance": extra.get("provenance") or {}})}
    loggers = build_loggers(cfg, run_dir, flat, resume.wandb_id if resume else None)
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger" and record.write:
            extra["wandb_id"] = logger.experiment.id
    keep_history(loggers, history)  # the earlier attempts' metric rows stay in csv/metrics.csv
    callbacks = build_callbacks(cfg, run_dir, dm, stopper)
    checkpoint, efficiency = callbacks[0], callbacks[2]
    trainer = build_trainer(cfg, run_dir, loggers, callbacks)
    extra["device"] = _device_info(trainer)
    trainer.fit(module, datamodule=dm, ckpt_path=str(resume.checkpoint) if resume else None)
    extra["device"] = _device_info(trainer)  # the process group exists now (DDP)
    stop = next((c for c in callbacks if isinstance(c, StopAt)), None)
    _check_trained(trainer, module, stop.step if stop is not None else None)
    if stop is not None:  # where the run stopped (None: the threshold was never reached)
        extra["stop_at"] = {"monitor": stop.monitor, "threshold": stop.threshold, "step": stop.step}
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
            metrics.update(cached_baseline(cfg, dm))
    encoder = getattr(module.net, "encoder", None)
    if hasattr(dm, "train_tokens") and hasattr(encoder, "state_elements"):  # the causal sequence tasks
        metrics["state_bytes"] = float(encoder.state_elements(dm.train_tokens) * bytes_per_element(cfg))
    lengths = cfg.task.get("eval_lengths")  # [] still tests the training length
    if lengths is not None and hasattr(dm, "at_length") and trainer.is_global_zero:
        data = {n: dm.at_length(n) for n in sorted({dm.length, *lengths})}
        adaptive = bool(cfg.task.get("eval_adaptive", False))
        logn = bool(cfg.task.get("eval_logn", False))
        metrics.update(evaluate_at_lengths(module.net, data, dm.batch_size, adaptive=adaptive, logn=logn))
    record.data.best_checkpoint = best
    extra["predictions"] = getattr(module, "prediction_info", None)
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.summary.update(metrics)
    return metrics


# --------------------------------------------------------------------------------------------
# the run and its record


def run(
    cfg: DictConfig, resume: Resume | None = None, threads: ThreadPlan | None = None
) -> tuple[Record, BaseException | None]:
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
        if resume is None:
            _refuse_reuse(run_dir, rank0)
        return _run_locked(cfg, run_dir, rank0, resume, threads, previous)
    finally:
        if lock is not None:
            lock.release()


def _refuse_reuse(run_dir: Path, rank0: bool) -> None:
    """A new run never reuses a directory that holds a run (its record, or the config.yaml of one killed
    before its record): ``ConfigError`` naming ``resume=`` and how to get a directory of its own. (Rank 0
    writes config.yaml before the other DDP ranks start, so only it looks at that file.)"""
    status = record_status(run_dir)
    if (run_dir / RESULTS).exists() or (rank0 and (run_dir / "config.yaml").exists()):
        what = f"a {status} run" if status else "a run (no readable record)"
        raise ConfigError(
            f"run directory {run_dir} already holds {what}; nothing was overwritten. Continue an interrupted"
            f" run with attn train resume={run_dir}, or give this run a directory of its own (another"
            " ATTN_RUN_DIR, or name=<name>: in a SLURM job every attn train needs its own name)"
        )


def _start_record(
    cfg: DictConfig, run_dir: Path, rank0: bool, resume: Resume | None, threads: ThreadPlan
) -> RunRecord:
    """The record of this attempt (earlier attempts kept on a resume), with what produced it."""
    attempts: list[dict[str, Any]] = []
    if resume is not None:
        try:
            attempts = read_record(run_dir / RESULTS).attempts
        except ValueError:
            attempts = []  # no record (killed before it) or a corrupt one: its attempts are unknown
    record = RunRecord(run_dir, OmegaConf.to_container(cfg, resolve=True), write=rank0, attempts=attempts)
    record.data.extra["provenance"] = {**provenance(), **_user_code(cfg)}
    record.data.extra["threads"] = threads.as_dict()
    if os.environ.get(
        PHASE_ENV
    ):  # a trial of a tuned sweep: a tuning run is never a result, wherever it lies
        record.data.extra["phase"] = os.environ[PHASE_ENV]
    if resume is not None:
        record.data.extra["resumed_from"] = str(resume.checkpoint)
    return record


def _user_code(cfg: DictConfig) -> dict[str, Any]:
    """The plugins of this run and the user's config directories, when there are any."""
    found: dict[str, Any] = {}
    used = loaded_plugins(list(cfg.get("plugins") or []))
    if used:
        found["plugins"] = used
    if config_dirs():
        found["config_dirs"] = [str(p) for p in config_dirs()]
    return found


def _run_locked(
    cfg: DictConfig,
    run_dir: Path,
    rank0: bool,
    resume: Resume | None,
    threads: ThreadPlan | None,
    previous: str | None,
) -> tuple[Record, BaseException | None]:
    if rank0:
        remove_partial_checkpoints(run_dir)
        if resume is None:
            write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    threads = threads or thread_plan(cfg, os.environ)
    apply_torch(threads)
    record = _start_record(cfg, run_dir, rank0, resume, threads)
    stopper = SignalStop(record)
    os.environ[RUN_DIR_ENV] = str(run_dir)  # DDP ranks started by this run find the same directory
    try:
        record.data.metrics = fit_and_test(cfg, run_dir, record, stopper, resume)
    except RunPaused as e:  # trainer.pause_at: saved and stopped by plan; resume= goes on
        record.data.metrics["train/steps"] = float(e.step)
        if e.best is not None:  # what a tuning phase compares candidates by, so far
            record.data.metrics[f"best_{cfg.task.monitor}".replace("best_val/", "val/best_")] = e.best
        record.data.extra["paused"] = {"step": e.step, "share": e.share}
        _finish_wandb(0, preempted=True)
        return record.finish("interrupted", f"{e}; resume with: attn train resume={run_dir}", 0), e
    except RunInterrupted as e:
        record.data.metrics["train/steps"] = float(e.step)
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


def _finish_wandb(exit_code: int, preempted: bool = False) -> None:
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        if preempted:
            wandb.run.mark_preempting()  # W&B shows the run as preempted, expecting a resume
        wandb.finish(exit_code=exit_code)


def _restore_env(previous: str | None) -> None:
    if previous is None:
        os.environ.pop(RUN_DIR_ENV, None)
    else:
        os.environ[RUN_DIR_ENV] = previous
