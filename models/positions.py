"""Position encodings: where a token is, told to the model (``model.positions``).

* ``sinusoidal`` (Vaswani et al., 2017): a fixed table ``[max_len, d]`` added to the token embeddings;
  positions beyond the training length are ones the model never saw.
* ``learned`` (GPT-2; Zoology's MQAR models): a trained table ``[max_len, d]`` added to the token embeddings;
  positions beyond the training length keep their initial random rows.
* ``none`` (NoPE; Kazemnejad et al., 2023): nothing; a causal model can still infer order from its mask.
* ``rope`` (Su et al., 2021, RoFormer): each pair ``(x_2i, x_2i+1)`` of a query or key at position ``m``
  is rotated by the angle ``m * theta_i``, ``theta_i = base^(-2i/D)``, so ``q_m . k_n`` depends on the
  offset ``m - n`` only (:func:`rope_rotate`).
* ``alibi`` (Press et al., 2022, "Train short, test long"): the bias ``-m_h |i - j|`` added to the logits of
  head ``h``, slopes ``m_h`` a geometric sequence starting at ``2^(-8/H)`` (:func:`alibi_slopes`).

RoPE and ALiBi act inside :class:`~attn.models.attention.MultiHeadAttention` on self-attention; a
cross-attention (decoder to encoder) relates two sequences, and gets neither.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

POSITIONS = ("sinusoidal", "learned", "none", "rope", "alibi")


def sinusoidal_positions(max_len: int, d_model: int) -> Tensor:
    """``[max_len, d_model]`` sinusoidal position encodings (Vaswani et al., 2017)."""
    pos = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(max_len, d_model)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: d_model // 2])
    return pe


def rope_rotate(x: Tensor, base: float = 10000.0) -> Tensor:
    """``x [..., L, D]`` (D even) with each pair ``(x_2i, x_2i+1)`` at position ``m`` rotated by
    ``m * base^(-2i/D)`` (RoFormer's interleaved pairs); computed in ``x``'s dtype."""
    length, dim = x.shape[-2], x.shape[-1]
    if dim % 2:
        raise ValueError(f"RoPE rotates pairs of features: the head size {dim} must be even")
    theta = base ** (-torch.arange(0, dim, 2, device=x.device, dtype=x.dtype) / dim)  # [D/2]
    angle = torch.arange(length, device=x.device, dtype=x.dtype)[:, None] * theta  # [L, D/2]
    cos, sin = angle.cos(), angle.sin()
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


def alibi_slopes(n_heads: int) -> Tensor:
    """The ALiBi slope of each head (Press et al., 2022): for ``H`` a power of two ``2^(-8h/H)``,
    ``h = 1..H``; otherwise those of the largest power of two below ``H``, then every other slope of twice
    that many, as in the paper's code."""

    def powers(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (h + 1) for h in range(n)]

    if n_heads & (n_heads - 1) == 0:
        return torch.tensor(powers(n_heads))
    low = 2 ** math.floor(math.log2(n_heads))
    return torch.tensor(powers(low) + powers(2 * low)[0::2][: n_heads - low])


def alibi_bias(n_heads: int, lq: int, lk: int, device: torch.device | None = None) -> Tensor:
    """``[H, Lq, Lk]``: ``-m_h |i - j|``, added to the logits (causal or not: masked keys get no weight
    whatever their bias)."""
    i = torch.arange(lq, device=device)[:, None]
    j = torch.arange(lk, device=device)[None, :]
    return -alibi_slopes(n_heads).to(device)[:, None, None] * (i - j).abs()
