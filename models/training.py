"""What every attn LightningModule shares: AdamW with warm-up + cosine decay, divergence checks,
random states in checkpoints (exact resume), and cheap per-step logging."""

from __future__ import annotations

import math
import random
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient: the run stops at that step."""


HINT = "lower optim.lr or raise softmax.temperature; trainer.detect_anomaly=true finds the operation"


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
    ) -> None:
        super().__init__()
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)
        self.warmup_ratio, self.min_lr_ratio = warmup_ratio, min_lr_ratio
        self._total_steps: int | None = None

    def check_loss(self, loss: Tensor) -> None:
        """Stop on a non-finite training loss, naming the step."""
        if not torch.isfinite(loss):
            where = f"at step {self.global_step} (epoch {self.current_epoch})"
            raise TrainingDiverged(f"non-finite loss ({loss.item()}) {where}; {HINT}")

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

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Random-number states, so that a resumed run draws what the uninterrupted one would."""
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
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 and "embed" not in name else no_decay).append(p)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
            betas=self.betas,
        )
        # The schedule's length is known once the training loader exists (see on_train_start);
        # asking Lightning for it here would build the loader before a checkpoint is restored.
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self._lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _lr_factor(self, step: int) -> float:
        if self._total_steps is None:
            return 1.0  # placeholder until on_train_start sets the schedule's length
        warmup = int(self.warmup_ratio * self._total_steps)
        return warmup_cosine(step, warmup, self._total_steps, self.min_lr_ratio)

    def on_train_start(self) -> None:
        """Fix the schedule's length and set the learning rate of the current step."""
        self._total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        for config in self.trainer.lr_scheduler_configs:
            sched = config.scheduler
            for group, base in zip(sched.optimizer.param_groups, sched.base_lrs, strict=True):
                group["lr"] = base * self._lr_factor(sched.last_epoch)
