"""Lightning module for sequence classification: loss, metrics and the optimiser schedule."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection
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


class ClassificationModule(L.LightningModule):
    """Trains a :class:`TextClassifier` with cross-entropy, AdamW and warm-up + cosine decay.

    Logs ``{train,val,test}/loss`` (the negative log-likelihood) and ``{val,test}/acc``;
    the test split also gets macro-F1 (``test/f1``) and the 15-bin expected calibration error
    (``test/ece``).
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
        self.val_acc = MulticlassAccuracy(n_classes)
        self.test_metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(n_classes, average="micro"),
                "f1": MulticlassF1Score(n_classes, average="macro"),
                "ece": MulticlassCalibrationError(n_classes, n_bins=15, norm="l1"),
            },
            prefix="test/",
        )

    def forward(self, ids: Tensor) -> Tensor:
        return self.net(ids)[0]

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        ids, y = batch
        logits = self(ids)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(-1) == y).float().mean()
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", acc, prog_bar=True)
        return loss

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
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self.warmup_ratio * total)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine(step, warmup, total, self.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
