"""The pre-norm transformer encoder every task model shares, attention pooling and the text classifier.

Every attention in it goes through :class:`attn.models.attention.MultiHeadAttention`, so the
attention kind, the softmax variant and the temperature are chosen by configuration.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import MultiHeadAttention, build_attention
from .flops import encoder_forward_flops
from .positions import sinusoidal_positions


def feed_forward(d_model: int, mlp_ratio: int, dropout: float) -> nn.Sequential | None:
    """A block's MLP: ``Linear(d, r d)``, GELU, ``Linear(r d, d)``, dropout; ``None`` at ``mlp_ratio=0``
    (attention-only blocks, as Zoology's MQAR models)."""
    if mlp_ratio == 0:
        return None
    return nn.Sequential(
        nn.Linear(d_model, mlp_ratio * d_model),
        nn.GELU(),
        nn.Linear(mlp_ratio * d_model, d_model),
        nn.Dropout(dropout),
    )


class Block(nn.Module):
    """Pre-norm transformer block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))`` (none at mlp_ratio 0)."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        mlp_ratio: int,
        dropout: float,
        attention: dict[str, Any],
        layer: int = 0,
    ) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_heads, layer=layer, **attention)
        self.mlp = feed_forward(d_model, mlp_ratio, dropout)
        self.ln2 = nn.LayerNorm(d_model) if self.mlp is not None else None
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, is_causal: bool = False, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        a, w = self.attn(self.ln1(x), mask=mask, is_causal=is_causal, need_weights=need_weights)
        x = x + self.drop(a)
        return (x if self.mlp is None else x + self.mlp(self.ln2(x))), w


class AttentionPooling(nn.Module):
    """Pools ``[B, L, d]`` to ``[B, d]`` with a learned query: ``softmax(q.x_i / sqrt(d))``-weighted sum."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(d_model) / math.sqrt(d_model))
        self.attend = build_attention("scaled_dot", head_dim=d_model)

    def forward(self, x: Tensor, pad_mask: Tensor) -> tuple[Tensor, Tensor]:
        q = self.query.expand(x.shape[0], 1, 1, -1)
        out, w = self.attend(
            q, x.unsqueeze(1), x.unsqueeze(1), mask=pad_mask[:, None, None, :], need_weights=True
        )
        return out[:, 0, 0], w[:, 0, 0]


class Encoder(nn.Module):
    """The block stack every task model composes: positions, dropout, ``n_layers`` pre-norm
    :class:`Block` s of registry attention and a final LayerNorm, built from the ``model`` config.
    ``positions`` (:mod:`attn.models.positions`): ``sinusoidal`` and ``learned`` add their table here;
    ``rope`` and ``alibi`` act in every attention; ``none`` gives no position at all.

    ``forward(x [B, L, d], keep [B, L] | None)`` returns ``[B, L, d]`` and, per layer, the attention
    weights (``None`` unless asked). ``causal`` lets position ``i`` see only positions ``<= i``.
    """

    def __init__(
        self,
        *,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        n_kv_heads: int | None = None,
        mlp_ratio: int = 4,
        max_len: int = 64,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        attention: dict[str, Any] | None = None,
        causal: bool = False,
        positions: str = "sinusoidal",
        tie_embeddings: bool = False,  # the model config's, for a next-token head (models.sequence); not here
    ) -> None:
        super().__init__()
        attention = {**(attention or {}), "n_kv_heads": n_kv_heads, "dropout": attn_dropout,
                     "positions": positions}  # fmt: skip
        self.d_model, self.max_len, self.causal, self.position_kind = d_model, max_len, causal, positions
        self.shape = {"d_model": d_model, "n_layers": n_layers, "n_heads": n_heads, "mlp_ratio": mlp_ratio,
                      "n_kv_heads": n_kv_heads, "kind": attention.get("kind", "scaled_dot"),
                      "hidden": attention.get("hidden")}  # fmt: skip
        table = (
            sinusoidal_positions(max_len, d_model) if positions == "sinusoidal" else torch.zeros(0, d_model)
        )
        self.register_buffer("positions", table, persistent=False)
        self.position_embed = nn.Embedding(max_len, d_model) if positions == "learned" else None
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, mlp_ratio, dropout, attention, layer=i) for i in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d_model)

    def flops_per_sequence(self, length: int) -> float:
        """Forward FLOPs of one sequence of ``length`` positions through the blocks
        (:func:`attn.models.flops.encoder_forward_flops`, where the count is documented)."""
        return encoder_forward_flops(length=length, **self.shape)

    def state_elements(self, length: int) -> int:
        """Elements the self-attention of every block carries per sequence at inference after ``length``
        tokens (:meth:`attn.models.attention.MultiHeadAttention.state_elements`), summed over layers."""
        return sum(block.attn.state_elements(length) for block in self.blocks)

    def embed_positions(self, x: Tensor) -> Tensor:
        """``x + positions`` (sinusoidal or learned; else ``x``), then dropout; refuses sequences longer
        than ``model.max_len``."""
        if x.shape[1] > self.max_len:
            raise ValueError(f"sequence length {x.shape[1]} exceeds model.max_len={self.max_len}")
        if self.position_kind == "sinusoidal":
            x = x + self.positions[: x.shape[1]]
        elif self.position_embed is not None:
            x = x + self.position_embed.weight[: x.shape[1]]
        return self.drop(x)

    def forward(
        self, x: Tensor, keep: Tensor | None = None, need_weights: bool = False
    ) -> tuple[Tensor, list[Tensor | None]]:
        """Encoded ``[B, L, d]`` of embedded inputs ``x`` (``keep``: True at real positions)."""
        h = self.embed_positions(x)
        mask = keep[:, None, None, :] if keep is not None else None
        weights = []
        for block in self.blocks:
            h, w = block(h, mask=mask, is_causal=self.causal, need_weights=need_weights)
            weights.append(w)
        return self.ln_f(h), weights


class TextClassifier(nn.Module):
    """Token embedding + :class:`Encoder` + attention pooling + linear head.

    ``forward`` returns class logits ``[B, n_classes]``; the softmax over classes lives in the loss
    (cross-entropy) and in :meth:`predict_proba`. ``net`` holds the ``model`` config group.
    """

    def __init__(
        self, vocab_size: int, n_classes: int, *, attention: dict[str, Any] | None = None, **net: Any
    ) -> None:
        super().__init__()
        d_model = net.get("d_model", 64)
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=0)
        self.encoder = Encoder(attention=attention, **net)
        self.pool = AttentionPooling(d_model)
        self.head = nn.Linear(d_model, n_classes)

    @property
    def max_len(self) -> int:
        return self.encoder.max_len

    def padding_mask(self, ids: Tensor) -> Tensor:
        """``[B, L]`` True at real tokens, False at padding (id 0)."""
        return ids != 0

    def forward(self, ids: Tensor, need_weights: bool = False) -> tuple[Tensor, list[Tensor | None]]:
        """Logits ``[B, n_classes]`` and, per layer, the attention weights (``None`` unless asked);
        with ``need_weights`` the pooling weights ``[B, 1, 1, L]`` come last."""
        pad = self.padding_mask(ids)
        h, weights = self.encoder(self.embed(ids), pad, need_weights=need_weights)
        pooled, pool_w = self.pool(h, pad)
        return self.head(pooled), [*weights, pool_w[:, None, None, :]] if need_weights else weights

    @torch.no_grad()
    def predict_proba(self, ids: Tensor) -> Tensor:
        """Class probabilities ``softmax(logits)`` ``[B, n_classes]``."""
        return F.softmax(self(ids)[0], dim=-1)
