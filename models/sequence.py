"""Causal sequence models for the diagnostic tasks: the shared encoder run causally and a next-token head,
trained on the positions that carry a target; accuracy over those positions, and what the attention
does there, at the training length and at every ``task.eval_lengths`` length."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.aggregation import SumMetric
from torchmetrics.classification import MulticlassAccuracy

from .attention import NORMALISED_KINDS, MultiHeadAttention, forms_weights
from .diagnostics import attention_stats, sink_rate
from .training import AttnModule, PredictionTable
from .transformer import Encoder

IGNORE = -100


class SequenceModel(nn.Module):
    """Token embedding + causal :class:`~attn.models.transformer.Encoder` + linear head over the
    vocabulary: ``ids [B, L]`` -> logits ``[B, L, V]``. ``net`` holds the ``model`` config group
    (``tie_embeddings``: the head is the token embedding, without bias, as Zoology's models);
    ``padding=False`` makes token 0 an ordinary token (Zoology's filler) instead of padding."""

    def __init__(
        self, vocab_size: int, *, attention: dict[str, Any] | None = None, padding: bool = True, **net: Any
    ) -> None:
        super().__init__()
        d_model = net.get("d_model", 64)
        tie = net.pop("tie_embeddings", False)
        self.padding = padding
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=0 if padding else None)
        self.encoder = Encoder(attention=attention, causal=True, **net)
        self.head = nn.Linear(d_model, vocab_size, bias=not tie)
        if tie:
            self.head.weight = self.embed.weight

    def padding_mask(self, ids: Tensor) -> Tensor:
        """``[B, L]`` True at real tokens, False at padding (id 0; none without ``padding``)."""
        return ids != 0 if self.padding else torch.ones_like(ids, dtype=torch.bool)

    def forward(
        self, ids: Tensor, need_weights: bool = False, at: Tensor | None = None
    ) -> tuple[Tensor, list[Tensor | None]]:
        """Logits ``[B, L, V]`` (with ``at``, a ``[B, L]`` mask: ``[n, V]`` at its ``n`` True positions
        only, in row-major order: the head over a large vocabulary is most of a small model's cost)
        and, per layer, the attention weights (``None`` unless asked)."""
        keep = self.padding_mask(ids)
        h, weights = self.encoder(self.embed(ids), None if bool(keep.all()) else keep, need_weights)
        return self.head(h if at is None else h[at]), weights


class SequenceModule(AttnModule):
    """Trains a :class:`SequenceModel` with cross-entropy on the target positions (``IGNORE`` elsewhere).

    Logs ``{train,val,test}/loss``, ``{val,test}/acc`` (accuracy over target positions), ``test/seq_acc``
    (sequences with every target right), ``test/examples`` (sequences scored) and ``test/targets`` (target
    positions scored: the count behind ``test/acc``); each test sequence's
    target and predicted tokens go to ``predictions/test.tsv``. ``chance`` is the
    task's chance accuracy, used by the sample-efficiency record.
    """

    CAUSAL = True  # its self-attention: a position reads only the ones before it
    TIES_EMBEDDINGS = True  # its head predicts its input tokens: model.tie_embeddings is allowed

    def __init__(
        self,
        vocab_size: int,
        net: dict[str, Any],
        attention: dict[str, Any],
        chance: float = 0.0,
        padding: bool = True,
        **optim: Any,
    ) -> None:
        super().__init__(**optim)
        self.save_hyperparameters()
        self.chance = chance
        self.net = SequenceModel(vocab_size, attention=attention, padding=padding, **net)
        self.val_acc = MulticlassAccuracy(vocab_size, average="micro", ignore_index=IGNORE)
        self.test_acc = MulticlassAccuracy(vocab_size, average="micro", ignore_index=IGNORE)
        self.test_seq = SumMetric()
        self.test_examples = SumMetric()
        self.test_targets = SumMetric()

    def _scored(self, ids: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Logits ``[n, V]`` and targets ``[n]`` at the ``n`` target positions (the only ones the loss and
        the metrics read)."""
        asked = y != IGNORE
        logits, _ = self.net(ids, at=asked)
        return logits, y[asked]

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        logits, y = self._scored(*batch)
        loss = F.cross_entropy(logits, y)
        self.check_loss(loss)
        if self._logging_step():  # the logger writes only these steps: logging every step costs ~0.7 ms each
            self.log("train/loss", loss, prog_bar=True)
            self.log("train/acc", (logits.argmax(-1) == y).float().mean(), prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        ids = batch[0]
        logits, y = self._scored(*batch)
        self.val_acc(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), prog_bar=True, sync_dist=True, batch_size=len(ids))
        self.log("val/acc", self.val_acc, prog_bar=True, batch_size=len(ids))

    def on_test_epoch_start(self) -> None:
        self._predictions = PredictionTable(["targets", "predicted", "correct"])

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        ids, targets = batch
        asked = targets != IGNORE
        logits, y = self._scored(ids, targets)
        predicted = torch.full_like(targets, IGNORE)
        predicted[asked] = logits.argmax(-1)
        if hasattr(self, "_predictions"):
            rows = []
            for t, p, a in zip(targets.tolist(), predicted.tolist(), asked.tolist(), strict=True):
                pairs = [(x, z) for x, z, on in zip(t, p, a, strict=True) if on]
                rows.append([" ".join(str(x) for x, _ in pairs), " ".join(str(z) for _, z in pairs),
                             sum(x == z for x, z in pairs)])  # fmt: skip
            self._predictions.add(self._trainer, rows)
        self.test_acc(logits, y)
        right = (predicted == targets) | ~asked
        self.test_seq.update(right.all(dim=1).float().sum())
        self.test_examples.update(torch.tensor(float(len(ids))))
        self.test_targets.update(asked.sum().float())
        self.log("test/loss", F.cross_entropy(logits, y), sync_dist=True, batch_size=len(ids))
        self.log("test/acc", self.test_acc, batch_size=len(ids))

    def on_test_epoch_end(self) -> None:
        if hasattr(self, "_predictions"):
            self.prediction_info = self._gather_predictions()
        n = self.test_examples.compute()
        self.log("test/seq_acc", self.test_seq.compute() / n.clamp_min(1))
        self.log("test/examples", n)
        self.log("test/targets", self.test_targets.compute())
        self.test_seq.reset()
        self.test_examples.reset()
        self.test_targets.reset()


def can_score_adaptive(net: nn.Module) -> bool:
    """Whether every attention of ``net`` was trained at the fixed temperature 1 with the plain softmax
    over normalised weights: the models the adaptive rule (Veličković et al., 2024) is defined on."""
    layers = [m for m in net.modules() if isinstance(m, MultiHeadAttention)]
    return bool(layers) and all(
        m.softmax == "softmax" and m.kind in NORMALISED_KINDS and m.rule is None
        and m.learned_temperature is None and m.temperature == 1.0
        for m in layers
    )  # fmt: skip


def _set_adaptive(net: nn.Module, on: bool) -> None:
    for m in net.modules():
        if isinstance(m, MultiHeadAttention):
            m.adaptive = on


def _set_rule(net: nn.Module, rule: str | None) -> None:
    for m in net.modules():
        if isinstance(m, MultiHeadAttention):
            m.rule = rule


@torch.no_grad()
def evaluate_at_lengths(
    net: nn.Module,
    datasets: dict[int, Any],
    batch_size: int = 256,
    metric: str = "test/acc",
    adaptive: bool = False,
    logn: bool = False,
) -> dict[str, float]:
    """Accuracy over target positions and, per layer, what the attention does, at each length.

    ``datasets`` maps a length to a ``TensorDataset`` of ``(ids, targets)``. Returns ``{metric}@{L}``,
    ``test/targets@{L}`` (the target positions scored) and, per layer, over the attention rows of the target
    positions: ``test/entropy@{L}/l{layer}`` (nats) and ``test/max_weight@{L}/l{layer}`` (a row's largest
    weight), averaged over heads and examples, and ``test/sink_rate@{L}/l{layer}``, the share of heads whose
    mean weight on the first token exceeds 0.3 (Gu et al. 2025); kinds that form no weights (``linear``)
    give none of these. They describe the model; the report never ranks them.
    With ``adaptive`` (and a model :func:`can_score_adaptive`), the same checkpoint is scored again with
    the adaptive temperature in every layer: ``test/adaptive_acc@{L}`` and
    ``test/adaptive_entropy@{L}/l{layer}``, paired with the plain scores example by example. With ``logn``,
    likewise with log-n scaling (``max(1, ln n / ln L)`` on ``q.k``): ``test/logn_acc@{L}``. A model
    trained at ``T = 1`` is the model a ``temperature=logn`` run trains (the factor is 1 up to the training
    length), so this scores the logn rule without training it twice.
    """
    out = _evaluate(net, datasets, batch_size, metric, "test/entropy")
    if adaptive and can_score_adaptive(net):
        _set_adaptive(net, True)
        try:
            out.update(_evaluate(net, datasets, batch_size, "test/adaptive_acc", "test/adaptive_entropy"))
        finally:
            _set_adaptive(net, False)
    if logn and can_score_adaptive(net):
        _set_rule(net, "logn")
        try:
            out.update(_evaluate(net, datasets, batch_size, "test/logn_acc", "test/logn_entropy"))
        finally:
            _set_rule(net, None)
    return out


def _evaluate(net: nn.Module, datasets: dict[int, Any], batch_size: int, metric: str, entropy_name: str):
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    kind = net.encoder.blocks[0].attn.kind
    out: dict[str, float] = {}
    prefix = entropy_name[: -len("entropy")]  # test/, test/adaptive_, test/logn_
    for length, data in sorted(datasets.items()):
        ids_all, y_all = data.tensors
        right = total = 0
        sums: list[dict[str, Tensor]] = [{} for _ in net.encoder.blocks]  # per layer: per-head sums
        for start in range(0, len(ids_all), batch_size):
            ids = ids_all[start : start + batch_size].to(device)
            y = y_all[start : start + batch_size].to(device)
            asked = y != IGNORE
            logits, weights = net(ids, need_weights=forms_weights(kind), at=asked)
            right += int((logits.argmax(-1) == y[asked]).sum())
            total += int(asked.sum())
            for layer, w in enumerate(weights):
                if w is not None:
                    for stat, per_head in attention_stats(w, asked).items():
                        sums[layer][stat] = sums[layer].get(stat, 0) + per_head.cpu() * len(ids)
        out[f"{metric}@{length}"] = right / max(1, total)
        out[f"test/targets@{length}"] = float(total)  # the count behind the rate (the report's floor)
        for layer, stats in enumerate(sums):
            if stats:
                mean = {k: v / len(ids_all) for k, v in stats.items()}
                out[f"{entropy_name}@{length}/l{layer}"] = float(mean["entropy"].mean())
                out[f"{prefix}max_weight@{length}/l{layer}"] = float(mean["max_weight"].mean())
                out[f"{prefix}sink_rate@{length}/l{layer}"] = sink_rate(mean["first_weight"])
    net.train(was_training)
    return out
