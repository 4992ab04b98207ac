"""What every attn LightningModule shares: AdamW with warm-up + cosine decay, divergence checks,
random states in checkpoints (exact resume), and cheap per-step logging."""

from __future__ import annotations

import math
import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch import Tensor

SCHEDULES = ("cosine", "constant", "rsqrt")


def warmup_cosine(
    step: int, warmup: int, total: int, min_ratio: float = 0.0, schedule: str = "cosine"
) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio``
    (``schedule="cosine"``), 1 to the end (``"constant"``) or ``sqrt(warmup / step)`` (``"rsqrt"``, the
    inverse square root of Vaswani et al. and of Long Range Arena's ``constant * linear_warmup *
    rsqrt_decay``: LRA's rate 0.05 with 1,000 warm-up steps is ``lr = 0.05 / sqrt(1000)`` here)."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    if schedule == "constant":
        return 1.0
    if schedule == "rsqrt":
        return math.sqrt(max(1, warmup) / max(step, 1))
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient: the run stops at that step."""


HINT = "lower optim.lr or raise softmax.temperature; trainer.detect_anomaly=true finds the operation"


def decays(name: str, p: Tensor) -> bool:
    """Whether AdamW's weight decay applies to parameter ``name``: to weight matrices (projections, score
    weights), not to biases and gains (one dimension), embeddings, or a scalar per head (``[H, 1, 1]``: a
    learned temperature's ``log_t``, Scalable-Softmax's ``log_s``), which decay would pull towards
    ``exp(0) = 1`` rather than towards where they started."""
    return p.dim() >= 2 and "embed" not in name and any(size > 1 for size in p.shape[1:])


class AttnModule(L.LightningModule):
    """Base of attn's task modules; subclasses build ``self.net`` and the steps and pass the
    optimiser settings (the ``optim`` config group) on as keyword arguments."""

    def __init__(
        self,
        lr: float = 3e-3,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_ratio: float = 0.05,
        min_lr_ratio: float = 0.05,
        schedule: str = "cosine",
        warmup_steps: int | None = None,
    ) -> None:
        super().__init__()
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)
        self.warmup_ratio, self.min_lr_ratio = warmup_ratio, min_lr_ratio
        self.schedule, self.warmup_steps = schedule, warmup_steps
        self._total_steps: int | None = None

    def check_loss(self, loss: Tensor) -> None:
        """Stop on a non-finite training loss, naming the step."""
        if not torch.isfinite(loss):
            where = f"at step {self.global_step} (epoch {self.current_epoch})"
            raise TrainingDiverged(f"non-finite loss ({loss.item()}) {where}; {HINT}")

    def _gather_predictions(self) -> dict[str, Any]:
        """Gather the test predictions (every rank calls this) into ``self.prediction_text`` on rank 0;
        returns ``{"path": <file relative to the run directory>}`` there (``None`` elsewhere)."""
        self.prediction_text = self._predictions.gather(self._trainer)
        return {"path": PredictionTable.PATH if self.prediction_text is not None else None}

    def _logging_step(self) -> bool:
        """Per-step extras are logged only on the steps the loggers write (``self.log`` costs ~0.7 ms)."""
        trainer = self._trainer
        return trainer is None or self.global_step % max(1, trainer.log_every_n_steps) == 0

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Stops on a non-finite gradient (before clipping could hide it); logs the gradient norm."""
        grads = [p.grad.detach() for p in self.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        if not torch.isfinite(norm):
            bad = next(
                (n for n, p in self.named_parameters() if p.grad is not None and not p.grad.isfinite().all()),
                None,
            )
            where = f"at step {self.global_step} (epoch {self.current_epoch})"
            dtype = str(grads[0].dtype).removeprefix("torch.")
            what = (
                f"non-finite gradient of {bad}"
                if bad
                else f"gradient norm overflows {dtype} (every gradient is finite, their norm is not)"
            )
            raise TrainingDiverged(f"{what} {where}; {HINT}")
        if self._logging_step():
            self.log("train/grad_norm", norm)

    attn_config: dict[str, Any] | None = None  # the resolved run config, set by attn train
    attn_files: dict[str, str] | None = None  # SHA-1 of the run's files a resume reads back (tokenizer.json)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Random-number states, so that a resumed run draws what the uninterrupted one would; and the
        config that trained the weights (``attn_config``) and the hashes of the files it read from its run
        directory (``attn_files``), which a resume checks."""
        if self.attn_config is not None:
            checkpoint["attn_config"] = self.attn_config
        if self.attn_files:
            checkpoint["attn_files"] = dict(self.attn_files)
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        checkpoint["rng_states"] = {  # plain types and tensors: loadable with weights_only=True
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if states:
            torch.set_rng_state(states["torch"])
            random.setstate(states["python"])
            kind, keys, pos, has_gauss, gauss = states["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with ``weight_decay`` on the weight matrices only (:func:`decays`), the schedule per step."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (decay if decays(name, p) else no_decay).append(p)
        # One fused kernel for every parameter (CPU and GPU): a fifth of the per-tensor loop's time on the
        # tiny models (0.19 against 0.9-1.1 ms a step, AMD EPYC, 2 threads). With float16 AMP the grad scaler
        # unscales inside a fused step, which Lightning's gradient clipping refuses: the multi-tensor loop.
        precision = str(getattr(self._trainer, "precision", "32-true")) if self._trainer is not None else ""
        impl = {"foreach": True} if precision.startswith("16") else {"fused": True}
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
            betas=self.betas,
            **impl,
        )
        # The schedule's length is known once the training loader exists (see on_train_start);
        # asking Lightning for it here would build the loader before a checkpoint is restored.
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self._lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _lr_factor(self, step: int) -> float:
        if self._total_steps is None:
            return 1.0  # placeholder until on_train_start sets the schedule's length
        warmup = (
            self.warmup_steps if self.warmup_steps is not None else int(self.warmup_ratio * self._total_steps)
        )
        return warmup_cosine(step, warmup, self._total_steps, self.min_lr_ratio, self.schedule)

    def on_train_start(self) -> None:
        """Fix the schedule's length and set the learning rate of the current step."""
        self._total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        for config in self.trainer.lr_scheduler_configs:
            sched = config.scheduler
            for group, base in zip(sched.optimizer.param_groups, sched.base_lrs, strict=True):
                group["lr"] = base * self._lr_factor(sched.last_epoch)


class SampleEfficiency(L.Callback):
    """Records how fast the validation metric got where it ended: ``val/steps_to_{p}pct``, the first
    training step at which ``monitor`` was at least ``p`` % of the way from ``floor`` to its final value.

    ``floor`` is the task's chance level (0 when unknown, e.g. BLEU); ``mode="min"`` metrics count the
    way down. The resolution is the validation interval. Nothing is recorded when the final value is
    not past the floor (nothing was learned). The history is kept in checkpoints, so resumed runs
    count from their start.
    """

    def __init__(
        self, monitor: str, mode: str = "max", floor: float = 0.0, fractions: tuple[float, ...] = (0.5, 0.9)
    ) -> None:
        super().__init__()
        self.monitor, self.mode, self.floor, self.fractions = monitor, mode, floor, tuple(fractions)
        self.history: list[tuple[int, float]] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None:
            return
        self.history.append((int(trainer.global_step), float(value)))

    def result(self) -> dict[str, float]:
        """``{val/steps_to_{p}pct: step}`` for each fraction (empty when nothing was learned)."""
        if not self.history:
            return {}
        sign = 1.0 if self.mode == "max" else -1.0
        final = self.history[-1][1]
        gain = sign * (final - self.floor)
        if not math.isfinite(gain) or gain <= 0:
            return {}
        out = {}
        for f in self.fractions:
            target = self.floor + sign * f * gain
            step = next(s for s, v in self.history if sign * (v - target) >= -1e-12)
            out[f"val/steps_to_{round(100 * f)}pct"] = float(step)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [tuple(h) for h in state_dict.get("history", [])]


class StopAt(EarlyStopping):
    """Stops training once the validation ``monitor`` reaches ``threshold`` (at or past it; Zoology's
    rule: validation accuracy 0.99), never for a lack of improvement; ``step`` is the training step it
    stopped at (None while it has not). Lightning's :class:`EarlyStopping` with a stopping threshold and
    no patience limit; its state is in every checkpoint, so a resumed run stops where an uninterrupted one
    would."""

    def __init__(self, monitor: str, mode: str, threshold: float) -> None:
        super().__init__(
            monitor=monitor, mode=mode, stopping_threshold=threshold, patience=2**31, check_finite=False,
            check_on_train_epoch_end=False, verbose=False,
        )  # fmt: skip
        self.threshold = threshold
        self.step: int | None = None

    def _evaluate_stopping_criteria(self, current: Tensor) -> tuple[bool, str | None]:
        """Reached (>= for ``max``, <= for ``min``: Lightning's threshold compares strictly)."""
        reached = bool(current >= self.threshold) if self.mode == "max" else bool(current <= self.threshold)
        reason = f"{self.monitor} = {float(current):.6g} reached {self.threshold:g}"
        return reached, reason if reached else None

    def _run_early_stopping_check(self, trainer: L.Trainer) -> None:
        stop_before = trainer.should_stop
        super()._run_early_stopping_check(trainer)
        if trainer.should_stop and not stop_before and self.step is None:
            self.step = int(trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "step": self.step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.step = state_dict.get("step")


class PredictionTable:
    """Collects per-example test predictions on every rank and gathers them, in example order, into one
    tab-separated table (header first) on rank 0; the runner writes it to ``<run dir>/predictions/test.tsv``,
    so that every test metric can be recomputed by an independent tool.

    Evaluation shards give rank ``r`` of ``W`` the examples ``r, r + W, ...``; ``add`` numbers the rows
    the same way.
    """

    PATH = "predictions/test.tsv"  # relative to the run directory

    def __init__(self, header: list[str]) -> None:
        self.header = ["index", *header]
        self.rows: list[list[Any]] = []
        self.seen = 0

    def add(self, trainer: Any, rows: list[list[Any]]) -> None:
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        for row in rows:
            self.rows.append([rank + world * self.seen, *row])
            self.seen += 1

    def gather(self, trainer: Any) -> str | None:
        """The rows of every rank as the table's text, on rank 0 (a collective: every rank calls it);
        ``None`` on the other ranks or without a trainer."""
        rows = self.rows
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in part]
        if trainer is None or not trainer.is_global_zero:
            return None
        clean = str.maketrans({"\t": " ", "\n": " ", "\r": " "})  # class names too may hold them
        lines = ["\t".join(h.translate(clean) for h in self.header)]
        for row in sorted(rows, key=lambda r: r[0]):
            cells = (f"{v:.6g}" if isinstance(v, float) else str(v).translate(clean) for v in row)
            lines.append("\t".join(cells))
        return "\n".join(lines) + "\n"
