"""An encoder-decoder transformer (pre-norm) whose every attention comes from the registry.

Encoder: self-attention over the source (padding masked). Decoder: causal self-attention, then
**cross-attention** from the target positions to the encoder's output (``attention=additive``
gives Bahdanau-style cross-attention), then the MLP. Decoding: greedy or beam search.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import MultiHeadAttention
from .transformer import Encoder, feed_forward


class DecoderBlock(nn.Module):
    """``x + SelfAttn_causal(LN(x))``, ``x + CrossAttn(LN(x), memory)``, ``x + MLP(LN(x))`` (no MLP at
    ``mlp_ratio=0``)."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        mlp_ratio: int,
        dropout: float,
        attention: dict[str, Any],
        layer: int = 0,
    ) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.self_attn = MultiHeadAttention(d_model, n_heads, layer=layer, **attention)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, cross=True, layer=layer, **attention)
        self.mlp = feed_forward(d_model, mlp_ratio, dropout)
        self.ln3 = nn.LayerNorm(d_model) if self.mlp is not None else None
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor, memory_mask: Tensor) -> Tensor:
        x = x + self.drop(self.self_attn(self.ln1(x), is_causal=True)[0])
        x = x + self.drop(self.cross_attn(self.ln2(x), memory, mask=memory_mask)[0])
        return x if self.mlp is None else x + self.mlp(self.ln3(x))


class Seq2SeqTransformer(nn.Module):
    """Source ids ``[B, Ls]`` and target-input ids ``[B, Lt]`` -> next-token logits ``[B, Lt, V]``.

    The source side is the shared :class:`~attn.models.transformer.Encoder`; the decoder stacks
    :class:`DecoderBlock` s of the same width. ``net`` holds the ``model`` config group.
    """

    def __init__(
        self, src_vocab_size: int, tgt_vocab_size: int, *, attention: dict[str, Any] | None = None, **net: Any
    ) -> None:
        super().__init__()
        d_model, n_layers = net.get("d_model", 64), net.get("n_layers", 2)
        block = {"mlp_ratio": net.get("mlp_ratio", 4), "dropout": net.get("dropout", 0.0)}
        decoder_attention = {
            **(attention or {}),
            "n_kv_heads": net.get("n_kv_heads"),
            "dropout": net.get("attn_dropout", 0.0),
            "positions": net.get("positions", "sinusoidal"),
        }
        self.src_embed = nn.Embedding(src_vocab_size, d_model, padding_idx=0)
        self.tgt_embed = nn.Embedding(tgt_vocab_size, d_model, padding_idx=0)
        self.encoder = Encoder(attention=attention, **net)
        self.decoder = nn.ModuleList(
            DecoderBlock(d_model, net.get("n_heads", 4), attention=decoder_attention, layer=i, **block)
            for i in range(n_layers)
        )
        self.ln_dec = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, tgt_vocab_size)

    @property
    def max_len(self) -> int:
        return self.encoder.max_len

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder output ``[B, Ls, d]`` and the source key mask ``[B, 1, 1, Ls]`` (True = token)."""
        keep = src != 0
        memory, _ = self.encoder(self.src_embed(src), keep)
        return memory, keep[:, None, None, :]

    def decode(self, tgt_in: Tensor, memory: Tensor, memory_mask: Tensor) -> Tensor:
        """Next-token logits for every target position."""
        x = self.encoder.embed_positions(self.tgt_embed(tgt_in))
        for block in self.decoder:
            x = block(x, memory, memory_mask)
        return self.head(self.ln_dec(x))

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        return self.decode(tgt_in, *self.encode(src))

    @torch.no_grad()
    def greedy(self, src: Tensor, bos: int, eos: int, max_len: int) -> Tensor:
        """Greedy decoding: ``[B, <= max_len]`` ids after ``<s>``, padded with 0 after ``</s>``."""
        memory, mask = self.encode(src)
        out = torch.full((src.shape[0], 1), bos, dtype=torch.long, device=src.device)
        done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
        for _ in range(max_len - 1):
            nxt = self.decode(out, memory, mask)[:, -1].argmax(-1)
            nxt = torch.where(done, torch.zeros_like(nxt), nxt)
            out = torch.cat([out, nxt[:, None]], dim=1)
            done |= nxt == eos
            if bool(done.all()):
                break
        return out[:, 1:]

    @torch.no_grad()
    def beam_search(self, src: Tensor, bos: int, eos: int, max_len: int, beam: int) -> Tensor:
        """Beam search, one source at a time, length-normalised log-probability; ids as in :meth:`greedy`."""
        results = []
        for i in range(src.shape[0]):
            memory, mask = self.encode(src[i : i + 1])
            beams: list[tuple[float, list[int]]] = [(0.0, [bos])]
            finished: list[tuple[float, list[int]]] = []
            for _ in range(max_len - 1):
                seqs = torch.tensor([s for _, s in beams], device=src.device)
                logp = F.log_softmax(self.decode(seqs, memory.expand(len(beams), -1, -1), mask)[:, -1], -1)
                candidates = []
                for (score, seq), row in zip(beams, logp, strict=True):
                    top = row.topk(beam)
                    candidates += [(score + v.item(), [*seq, t.item()]) for v, t in zip(*top, strict=True)]
                candidates.sort(key=lambda c: c[0], reverse=True)
                beams = []
                for score, seq in candidates:
                    (finished if seq[-1] == eos else beams).append((score, seq))
                    if len(beams) == beam:
                        break
                if len(finished) >= beam or not beams:
                    break
            pool = finished or beams
            best = max(pool, key=lambda c: c[0] / (len(c[1]) - 1))[1][1:]
            results.append(torch.tensor(best + [0] * (max_len - 1 - len(best)), device=src.device))
        return torch.stack(results)
