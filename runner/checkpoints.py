"""Checkpoints that survive crashes and moves: atomic writes, paths rebased to the run directory, the
config that trained them, and the metric history kept across resumes. Imported when a run starts
(it imports Lightning)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from attn.datamodules.files import atomic_write

from .records import read_metrics

PARTIAL = ".*.ckpt.*.tmp"  # what an interrupted atomic save leaves (attn.datamodules.files.atomic_write)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in its own directory, flushes it to disk, then renames
    it over the target: a crash mid-write never leaves a truncated ``last.ckpt`` (whatever file system
    ``$TMPDIR`` is on), and a failed write removes its temporary file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            super().save_checkpoint(checkpoint, path, storage_options)  # refuses them, as Lightning does
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda f: torch.save(checkpoint, f))


def remove_partial_checkpoints(run_dir: Path) -> list[Path]:
    """Delete the temporary files of checkpoint writes that were killed (``kill -9``, power loss); call
    only while holding the run directory's lock."""
    found = sorted((run_dir / "checkpoints").glob(PARTIAL)) if (run_dir / "checkpoints").is_dir() else []
    for path in found:
        path.unlink(missing_ok=True)
    return found


class RunPaused(Exception):
    """The run reached its ``trainer.pause_at`` share of the training steps and stopped after saving."""

    def __init__(self, step: int, share: float, best: float | None) -> None:
        self.step, self.share, self.best = step, share, best  # best: the monitor's best value so far
        super().__init__(f"paused at step {step} (trainer.pause_at={share:g} of the training steps)")


class RunCheckpoint(ModelCheckpoint):
    """:class:`ModelCheckpoint` whose restored paths follow the run directory (a run directory that was
    moved or copied resumes against its own checkpoints, never the original's), and whose ``last.ckpt``
    is refreshed after every validation: Lightning 2.6 refreshes it only when a best checkpoint was
    saved in the same step, which would make a resume repeat every epoch since the last improvement.

    ``pause_at`` (a share of the run's training steps, ``trainer.pause_at``): after the first validation
    at or past that step, once ``last.ckpt`` holds it, the run stops (:class:`RunPaused`); resumed, it goes
    on as if it had never stopped (successive halving continues the candidates it keeps this way).
    """

    def __init__(self, *args: Any, pause_at: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pause_at = pause_at

    @property
    def state_key(self) -> str:
        """The key of Lightning's own ModelCheckpoint, so that checkpoints written by either restore."""
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)

    def _refresh_last(self, trainer: Any) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._maybe_pause(trainer)  # last.ckpt holds this step now (saved here, or with a best one)

    def _maybe_pause(self, trainer: Any) -> None:
        if self.pause_at is None or trainer.sanity_checking or trainer.should_stop or trainer.fast_dev_run:
            return
        total = int(trainer.estimated_stepping_batches)
        if trainer.global_step >= math.ceil(self.pause_at * total) and trainer.global_step < total:
            best = float(self.best_model_score) if self.best_model_score is not None else None
            raise RunPaused(int(trainer.global_step), self.pause_at, best)

    # Lightning saves in one of these two hooks (at train epoch end when validation ends each epoch);
    # last.ckpt is refreshed in the same one, after the best checkpoints.
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:
            state_dict = rebase(state_dict, old, self.dirpath)
        super().load_state_dict(state_dict)


def rebase(state: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """``ModelCheckpoint`` state with every path under ``old`` moved under ``new``."""

    def move(path: Any) -> Any:
        if isinstance(path, str) and path and Path(path).parent == Path(old):
            return str(Path(new) / Path(path).name)
        return path

    out = {k: move(v) for k, v in state.items()}
    out["dirpath"] = new
    if isinstance(state.get("best_k_models"), dict):
        out["best_k_models"] = {move(k): v for k, v in state["best_k_models"].items()}
    return out


def metric_history(run_dir: Path, up_to_step: int | None) -> list[dict[str, str]]:
    """The rows of ``csv/metrics.csv`` logged at or before ``up_to_step`` (all when ``None``)."""
    rows = read_metrics(run_dir)

    def step(row: dict[str, str]) -> float:
        try:
            return float(row.get("step") or "nan")
        except ValueError:
            return float("nan")

    return [r for r in rows if up_to_step is None or step(r) <= up_to_step]


def keep_history(loggers: list[Any], rows: list[dict[str, str]]) -> None:
    """Put the earlier attempts' rows back in front of what the CSV logger writes (Lightning's CSV
    writer deletes an existing ``metrics.csv`` when it starts)."""
    if not rows:
        return
    for logger in loggers:
        if type(logger).__name__ == "CSVLogger":
            writer = logger.experiment
            old = [{k: v for k, v in r.items() if v not in ("", None)} for r in rows]
            writer.metrics = old + writer.metrics
            writer.save()
