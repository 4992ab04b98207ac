"""Lightning module for sequence classification: loss, metrics and the optimiser schedule."""

from __future__ import annotations

import math
import random
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.aggregation import SumMetric
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassF1Score,
)

from .transformer import TextClassifier


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient: the run stops at that step."""


HINT = "lower optim.lr or raise softmax.temperature; trainer.detect_anomaly=true finds the operation"


class ClassificationModule(L.LightningModule):
    """Trains a :class:`TextClassifier` with cross-entropy, AdamW and warm-up + cosine decay.

    Logs ``{train,val,test}/loss`` (the negative log-likelihood) and ``{val,test}/acc``;
    the test split also gets macro-F1 (``test/f1``), the 15-bin expected calibration error
    (``test/ece``) and the number of examples scored (``test/examples``).
    """

    def __init__(
        self,
        vocab_size: int,
        n_classes: int,
        net: dict[str, Any],
        attention: dict[str, Any],
        lr: float = 3e-3,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_ratio: float = 0.05,
        min_lr_ratio: float = 0.05,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = TextClassifier(vocab_size, n_classes, attention=attention, **net)
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)
        self.warmup_ratio, self.min_lr_ratio = warmup_ratio, min_lr_ratio
        self._total_steps: int | None = None
        self.val_acc = MulticlassAccuracy(n_classes)
        self.test_metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(n_classes, average="micro"),
                "f1": MulticlassF1Score(n_classes, average="macro"),
                "ece": MulticlassCalibrationError(n_classes, n_bins=15, norm="l1"),
            },
            prefix="test/",
        )
        # Examples scored, summed over ranks: each test example counts once, under DDP too.
        self.test_examples = SumMetric()

    def forward(self, ids: Tensor) -> Tensor:
        return self.net(ids)[0]

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        ids, y = batch
        logits = self(ids)
        loss = F.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            where = f"at step {self.global_step} (epoch {self.current_epoch})"
            raise TrainingDiverged(f"non-finite loss ({loss.item()}) {where}; {HINT}")
        self.log("train/loss", loss, prog_bar=True)
        if self._logging_step():
            self.log("train/acc", (logits.argmax(-1) == y).float().mean(), prog_bar=True)
        return loss

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
                n for n, p in self.named_parameters() if p.grad is not None and not p.grad.isfinite().all()
            )
            where = f"at step {self.global_step} (epoch {self.current_epoch})"
            raise TrainingDiverged(f"non-finite gradient of {bad} {where}; {HINT}")
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

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        ids, y = batch
        logits = self(ids)
        self.val_acc(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), prog_bar=True, sync_dist=True)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        ids, y = batch
        logits = self(ids)
        self.test_metrics.update(F.softmax(logits, dim=-1), y)
        self.log("test/loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log_dict(self.test_metrics)
        self.test_examples.update(torch.tensor(float(len(y))))
        self.log("test/examples", self.test_examples)

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
