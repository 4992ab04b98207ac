"""Lightning module for sequence classification: loss, metrics and the optimiser schedule."""

from __future__ import annotations

from typing import Any

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

from .training import AttnModule, PredictionTable
from .transformer import TextClassifier


class ClassificationModule(AttnModule):
    """Trains a :class:`TextClassifier` with cross-entropy, AdamW and warm-up + cosine decay.

    Logs ``{train,val,test}/loss`` (the negative log-likelihood) and ``{val,test}/acc``;
    the test split also gets macro-F1 (``test/f1``), the 15-bin expected calibration error
    (``test/ece``) and the number of examples scored (``test/examples``); every test example's label,
    prediction and class probabilities (and its text, where the data module gives ``prediction_text``) go
    to ``predictions/test.tsv`` in the run directory.
    """

    CAUSAL = False  # its self-attention: every token reads every other

    def __init__(
        self,
        vocab_size: int,
        n_classes: int,
        net: dict[str, Any],
        attention: dict[str, Any],
        **optim: Any,
    ) -> None:
        super().__init__(**optim)
        self.save_hyperparameters()
        self.net = TextClassifier(vocab_size, n_classes, attention=attention, **net)
        self.init_metrics(n_classes)

    def init_metrics(self, n_classes: int) -> None:
        """Validation accuracy and the test metrics (accuracy, macro-F1, 15-bin ECE, examples)."""
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
        self.check_loss(loss)
        if self._logging_step():  # the logger writes only these steps: logging every step costs ~0.7 ms each
            self.log("train/loss", loss, prog_bar=True)
            self.log("train/acc", (logits.argmax(-1) == y).float().mean(), prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        ids, y = batch
        logits = self(ids)
        self.val_acc(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), prog_bar=True, sync_dist=True)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def on_test_epoch_start(self) -> None:
        dm = getattr(self._trainer, "datamodule", None)
        names = getattr(dm, "label_names", None) or getattr(dm, "classes", None)
        n = self.test_metrics["acc"].num_classes
        self._names = [str(c) for c in names] if names and len(names) == n else [str(i) for i in range(n)]
        self._text = getattr(dm, "prediction_text", None)  # a generated task's input as text (ListOps)
        text = ["text"] if self._text else []
        self._predictions = PredictionTable([*text, "label", "predicted", *[f"p_{c}" for c in self._names]])

    def on_test_epoch_end(self) -> None:
        self.prediction_info = self._gather_predictions()

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        ids, y = batch
        logits = self(ids)
        probs = F.softmax(logits, dim=-1)
        if hasattr(self, "_predictions"):
            names = self._names
            pairs = zip(y.tolist(), probs.float(), strict=True)
            rows = [[names[t], names[int(p.argmax())], *p.tolist()] for t, p in pairs]
            if self._text:
                rows = [[self._text(x), *row] for x, row in zip(ids.tolist(), rows, strict=True)]
            self._predictions.add(self._trainer, rows)
        self.test_metrics.update(probs, y)
        self.log("test/loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log_dict(self.test_metrics)
        self.test_examples.update(torch.tensor(float(len(y))))
        self.log("test/examples", self.test_examples)
