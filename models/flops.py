"""Analytic FLOP counts of the encoder blocks, in plain arithmetic (no torch), so that the CPU thread
policy can use them before torch is imported; :meth:`attn.models.transformer.Encoder.flops_per_sequence`
gives the same count for a built model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def encoder_forward_flops(
    *,
    d_model: int,
    n_layers: int,
    n_heads: int,
    mlp_ratio: int,
    length: int,
    kind: str,
    n_kv_heads: int | None = None,
    hidden: int | None = None,
) -> float:
    """Forward FLOPs of one sequence of ``length`` positions through the encoder blocks.

    Per block, with width ``d``, heads ``h``, head width ``k = d / h``, key/value width ``d_kv``,
    MLP ratio ``r`` and sequence length ``L`` (a multiply-add counts 2):

    * projections: ``2 L d (d + 2 d_kv)`` (fused QKV) + ``2 L d^2`` (output)
    * MLP: ``4 r L d^2``
    * attention, by kind: dot-product kinds (``dot``, ``scaled_dot``, ``general``, ``local``,
      ``sigmoid``) ``4 L^2 d`` (scores and weighted sum; ``general`` adds ``2 L d k``; ``local``
      is computed densely, so it is counted densely); ``additive`` ``4 L d A + 3 L^2 h A + 2 L^2 d``
      (``A`` the tanh width ``hidden``, default ``k``); ``linear`` ``4 L d k + 4 L d``.

    Embedding lookups, normalisation, pooling and the classifier head are left out (under 1%).
    """
    d, h, r, n = d_model, n_heads, mlp_ratio, length
    k = d // h
    d_kv = (n_kv_heads or h) * k
    proj = 2 * n * d * (d + 2 * d_kv) + 2 * n * d * d
    mlp = 4 * r * n * d * d
    if kind == "additive":
        a = hidden or k
        attn = 4 * n * d * a + 3 * n * n * h * a + 2 * n * n * d
    elif kind == "linear":
        attn = 4 * n * d * k + 4 * n * d
    else:
        attn = 4 * n * n * d + (2 * n * d * k if kind == "general" else 0)
    return float(n_layers * (proj + mlp + attn))


def config_forward_flops(model: Mapping[str, Any], attention: Mapping[str, Any], length: int) -> float:
    """:func:`encoder_forward_flops` of the ``model`` and ``attention`` config groups (mappings, e.g. the
    composed config's nodes); a missing or mistyped value raises (``KeyError``, ``TypeError``)."""
    return encoder_forward_flops(
        d_model=model["d_model"], n_layers=model["n_layers"], n_heads=model["n_heads"],
        mlp_ratio=model["mlp_ratio"], length=length, kind=str(attention.get("kind", "scaled_dot")),
        n_kv_heads=model.get("n_kv_heads"), hidden=(attention.get("params") or {}).get("hidden"),
    )  # fmt: skip


def train_flops(forward_flops_per_sequence: float, batch: int) -> float:
    """Training FLOPs of one step of ``batch`` sequences: three times the forward pass (forward +
    backward)."""
    return 3 * batch * forward_flops_per_sequence
