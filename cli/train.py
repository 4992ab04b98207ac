"""``attn train``: one Lightning fit + test of a composed config, recorded in its run directory."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .records import RUN_DIR_ENV, RunRecord, resolve_run_dir


def _wandb_mode(cfg: DictConfig) -> str:
    """W&B mode: ``WANDB_MODE`` from the environment wins over ``logger.mode``."""
    return os.environ.get("WANDB_MODE") or cfg.logger.mode


def _build_loggers(cfg: DictConfig, run_dir: Path, flat_config: dict[str, Any]) -> list:
    from lightning.pytorch.loggers import CSVLogger

    kind = cfg.logger.kind
    loggers: list = []
    if kind in ("csv", "wandb"):
        loggers.append(CSVLogger(save_dir=str(run_dir), name="csv", version=""))
    if kind == "wandb" and _wandb_mode(cfg) != "disabled":
        os.environ.setdefault("WANDB_SILENT", "true")
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(
            WandbLogger(
                project=cfg.logger.project,
                entity=cfg.logger.entity,
                group=cfg.logger.group,
                tags=list(cfg.logger.tags),
                name=run_dir.name,
                save_dir=str(run_dir),
                mode=_wandb_mode(cfg),
            )
        )
    for logger in loggers:
        logger.log_hyperparams(flat_config)
    return loggers


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


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


def _baseline(dm: Any) -> float:
    from attn.models.baseline import bow_logistic_regression

    train, test = dm.datasets["train"].tensors, dm.datasets["test"].tensors
    return bow_logistic_regression(train, test, dm.vocab_size, dm.n_classes)


def _finish_wandb(failed: bool) -> None:
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)


def fit_and_test(cfg: DictConfig, run_dir: Path, record: RunRecord) -> dict[str, float]:
    """Seed, build the data and model, fit, test the best checkpoint; returns the test metrics."""
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ModelCheckpoint

    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    container = OmegaConf.to_container(cfg, resolve=True)
    dm = instantiate(cfg.task.datamodule, _convert_="all")
    dm.setup("fit")
    dm.save(str(run_dir))
    module = instantiate(
        cfg.task.module,
        _convert_="all",
        vocab_size=dm.vocab_size,
        n_classes=dm.n_classes,
        net=OmegaConf.to_container(cfg.model),
        attention=_attention_kwargs(cfg),
        **OmegaConf.to_container(cfg.optim),
    )
    loggers = _build_loggers(cfg, run_dir, _flatten(container))
    checkpoint = ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        filename="best-{epoch}-{step}",
        monitor=cfg.task.monitor,
        mode=cfg.task.monitor_mode,
        save_last=True,
    )
    callbacks: list = [checkpoint]
    if cfg.diagnostics.enabled:
        from attn.models.diagnostics import AttentionDiagnostics

        callbacks.append(AttentionDiagnostics(cfg.diagnostics.batches, cfg.diagnostics.images))
    trainer = L.Trainer(
        **OmegaConf.to_container(cfg.trainer),
        logger=loggers or False,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
    )
    trainer.fit(module, datamodule=dm)
    if trainer.interrupted:
        raise KeyboardInterrupt
    best = checkpoint.best_model_path or None
    tested = trainer.test(module, datamodule=dm, ckpt_path="best" if best else None, verbose=False)
    metrics = {k: float(v) for k, v in (tested[0] if tested else {}).items()}
    if checkpoint.best_model_score is not None:
        metrics[f"best_{cfg.task.monitor}".replace("best_val/", "val/best_")] = float(
            checkpoint.best_model_score
        )
    metrics["train/epochs"] = float(trainer.current_epoch)
    metrics["train/steps"] = float(trainer.global_step)
    if cfg.baseline and trainer.is_global_zero:
        metrics["test/bow_acc"] = _baseline(dm)
    record.data["best_checkpoint"] = best
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.summary.update(metrics)
            record.data["wandb_id"] = logger.experiment.id
    return metrics


def run(cfg: DictConfig) -> tuple[dict[str, Any], BaseException | None]:
    """Run ``cfg`` in its own run directory; the written record (any status) and the error, if any."""
    run_dir = resolve_run_dir(cfg.runs_root, cfg.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    record = RunRecord(run_dir, OmegaConf.to_container(cfg, resolve=True))
    previous = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir)  # DDP ranks started by this run find the same directory
    try:
        record.data["metrics"] = fit_and_test(cfg, run_dir, record)
    except KeyboardInterrupt as e:
        _finish_wandb(failed=True)
        return record.finish("interrupted", "interrupted by the user"), e
    except Exception as e:
        _finish_wandb(failed=True)
        text = str(e).strip()
        line = f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__
        return record.finish("failed", line), e
    finally:
        if previous is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous
    _finish_wandb(failed=False)
    return record.finish("completed"), None
