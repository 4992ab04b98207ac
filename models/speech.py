"""Keyword spotting: a convolutional front end that subsamples the feature frames, the shared encoder
(registry attention), attention pooling and a softmax over the keywords; SpecAugment masking."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .classification import ClassificationModule
from .training import AttnModule
from .transformer import AttentionPooling, Encoder


class SpecAugment(nn.Module):
    """Zeroes ``freq_masks`` random bands of up to ``freq_width`` features and ``time_masks`` random
    spans of up to ``time_width`` frames per example (Park et al., 2019), in training mode only.
    Features are normalised per utterance, so zero is the utterance mean."""

    def __init__(
        self, freq_masks: int = 2, freq_width: int = 8, time_masks: int = 2, time_width: int = 10
    ) -> None:
        super().__init__()
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width

    @staticmethod
    def _spans(batch: int, size: int, count: int, width: int, device: torch.device) -> Tensor:
        """``[batch, size]`` bool, True inside ``count`` random spans of width ``0 .. width``."""
        pos = torch.arange(size, device=device)
        hit = torch.zeros(batch, size, dtype=torch.bool, device=device)
        for _ in range(count):
            w = torch.randint(0, width + 1, (batch, 1), device=device)
            start = (torch.rand(batch, 1, device=device) * (size - w + 1)).long()
            hit |= (pos >= start) & (pos < start + w)
        return hit

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``[B, T, F]`` with the masked cells set to 0."""
        if not self.training:
            return x
        b, t, f = x.shape
        freq = self._spans(b, f, self.freq_masks, min(self.freq_width, f), x.device)
        time = self._spans(b, t, self.time_masks, min(self.time_width, t), x.device)
        return x.masked_fill(freq[:, None, :] | time[:, :, None], 0.0)


class SpeechClassifier(nn.Module):
    """Frames ``[B, T, n_features]`` -> two stride-2 convolutions (``T/4`` frames of ``d_model``) ->
    :class:`~attn.models.transformer.Encoder` -> attention pooling -> class logits. ``net`` holds the
    ``model`` config group; its ``max_len`` counts input frames."""

    def __init__(
        self, n_features: int, n_classes: int, *, attention: dict[str, Any] | None = None, **net: Any
    ) -> None:
        super().__init__()
        d_model = net.get("d_model", 64)
        self.max_len = net.pop("max_len", 101)
        self.front = nn.Sequential(
            nn.Conv1d(n_features, d_model, kernel_size=5, stride=2, padding=2),
            nn.GELU(),
            nn.Conv1d(d_model, d_model, kernel_size=5, stride=2, padding=2),
            nn.GELU(),
        )
        self.encoder = Encoder(attention=attention, max_len=self.frames(self.max_len), **net)
        self.pool = AttentionPooling(d_model)
        self.head = nn.Linear(d_model, n_classes)

    @staticmethod
    def frames(n: int) -> int:
        """Frames left of ``n`` after the two stride-2 convolutions."""
        for _ in range(2):
            n = (n - 1) // 2 + 1
        return n

    def padding_mask(self, x: Tensor) -> Tensor:
        """``[B, T/4]`` True for every subsampled frame (clips are fixed-length; padding is silence)."""
        return torch.ones(x.shape[0], self.frames(x.shape[1]), dtype=torch.bool, device=x.device)

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, list[Tensor | None]]:
        """Logits ``[B, n_classes]`` and, per layer, the attention weights (``None`` unless asked)."""
        if x.shape[1] > self.max_len:
            raise ValueError(f"{x.shape[1]} frames exceed model.max_len={self.max_len}")
        h = self.front(x.transpose(1, 2)).transpose(1, 2)
        keep = self.padding_mask(x)
        h, weights = self.encoder(h, keep, need_weights=need_weights)
        pooled, pool_w = self.pool(h, keep)
        return self.head(pooled), [*weights, pool_w[:, None, None, :]] if need_weights else weights


class SpeechModule(ClassificationModule):
    """Trains a :class:`SpeechClassifier`; metrics and logged names as :class:`ClassificationModule`.

    ``spec_augment`` (``None`` = off) holds :class:`SpecAugment`'s settings, applied to training batches.
    """

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        net: dict[str, Any],
        attention: dict[str, Any],
        spec_augment: dict[str, int] | None = None,
        **optim: Any,
    ) -> None:
        AttnModule.__init__(self, **optim)
        self.save_hyperparameters()
        self.net = SpeechClassifier(n_features, n_classes, attention=attention, **net)
        self.augment = SpecAugment(**spec_augment) if spec_augment else nn.Identity()
        self.init_metrics(n_classes)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return super().training_step((self.augment(x), y), batch_idx)
