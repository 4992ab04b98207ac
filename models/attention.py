"""Attention kinds behind one registry and one signature, plus the multi-head block.

Every attention function (or module, for kinds whose scores carry parameters) is called as::

    out, weights = fn(q, k, v, *, mask=None, is_causal=False, scale=None, temperature=1.0,
                      softmax="softmax", dropout_p=0.0, need_weights=False, **params)

with ``q: [B, H, Lq, D]``, ``k: [B, H, Lk, D]``, ``v: [B, H, Lk, Dv]``, ``out: [B, H, Lq, Dv]`` and
``weights: [B, H, Lq, Lk]`` (or ``None`` unless ``need_weights``). ``mask`` is boolean, **True =
attend**, broadcastable to ``[B, H, Lq, Lk]``; ``is_causal`` lets query ``i`` see keys ``j <= i``
(top-left aligned, as in ``torch.nn.functional.scaled_dot_product_attention``). A query row
with no visible key yields a zero output and zero gradient. ``temperature`` (a float > 0, or a
positive tensor broadcastable to the scores) divides the scores before masking and
normalisation; ``softmax`` names a normaliser from :mod:`attn.models.softmax`. ``dropout_p``
applies to the weights; callers pass 0 in evaluation. Returned weights are before dropout.

Kinds (``list_attention()``), with ``s`` = ``scale``:

* ``dot``         ``score = q.k * s``, ``s = 1`` by default (Luong dot).
* ``scaled_dot``  ``score = q.k * s``, ``s = 1/sqrt(D)`` by default (Vaswani et al.).
* ``general``     ``score = q^T W k * s``, ``W`` a learned ``[D, D]`` per head, ``s = 1`` (Luong).
* ``additive``    ``score = u^T tanh(W q + U k) * s``, learned ``W, U: [D, A]``, ``u: [A]`` per head
  (Bahdanau); evaluated in query chunks so the ``[.., Lq, Lk, A]`` tensor never exists whole.
* ``local``       ``scaled_dot`` restricted to a band: ``|i - j| < window`` (causal:
  ``0 <= i - j < window``).
* ``linear``      ``out_i = phi(q_i)^T sum_j phi(k_j) v_j^T / phi(q_i)^T sum_j phi(k_j)`` with
  ``phi(x) = elu(x) + 1`` applied to ``q * s / T`` and ``k`` (Katharopoulos et al.); ``O(L)`` memory.
  No normaliser and no weight matrix: only ``softmax="softmax"``, no ``need_weights``, no dropout,
  key-padding masks only.
* ``sigmoid``     ``w_ij = sigmoid(q.k * s / T + b)``, ``s = 1/sqrt(D)``, ``b = -log(Lk)`` by default,
  ``out = w v``: rows are not normalised, so no softmax variant applies.

``dot``, ``scaled_dot``, ``general`` and ``local`` use the fused kernel
(``scaled_dot_product_attention`` with ``scale = s / T``) whenever the normaliser is the plain
softmax and no weights are requested; ``fused=False`` forces the reference path and
``fused=True`` makes an impossible fused request an error.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .softmax import LearnableTemperature, adaptive_beta, check_temperature, get_softmax

AttentionOutput = tuple[Tensor, Tensor | None]
_REGISTRY: dict[str, Callable[..., AttentionOutput] | type[nn.Module]] = {}
# Keyword parameters each kind accepts beyond the common signature.
KIND_PARAMS: dict[str, frozenset[str]] = {}
# Kinds that produce normalised weights (a softmax variant applies to them).
NORMALISED_KINDS = {"dot", "scaled_dot", "general", "additive", "local"}


def register_attention(name: str, params: tuple[str, ...] = ()) -> Callable:
    """Register an attention function or ``nn.Module`` class under ``name`` (decorator)."""

    def deco(obj):
        _REGISTRY[name] = obj
        KIND_PARAMS[name] = frozenset(params)
        return obj

    return deco


def list_attention() -> list[str]:
    """Names of the registered attention kinds, sorted."""
    return sorted(_REGISTRY)


def get_attention(name: str) -> Callable[..., AttentionOutput] | type[nn.Module]:
    """The function or module class registered as ``name``; ``ValueError`` listing valid names."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown attention kind {name!r}; valid choices: {', '.join(list_attention())}"
        ) from None


def check_combination(
    kind: str,
    *,
    softmax: str = "softmax",
    dropout_p: float = 0.0,
    need_weights: bool = False,
    params: dict[str, Any] | None = None,
) -> None:
    """Reject an impossible combination of kind, normaliser and parameters with one clear line."""
    get_attention(kind)
    get_softmax(softmax)
    params = dict(params or {})
    unknown = sorted(set(params) - KIND_PARAMS[kind])
    if unknown:
        allowed = ", ".join(sorted(KIND_PARAMS[kind])) or "none"
        raise ValueError(f"attention {kind!r} takes no parameter {unknown[0]!r}; valid: {allowed}")
    if kind not in NORMALISED_KINDS and softmax != "softmax":
        raise ValueError(
            f"attention {kind!r} has no softmax normaliser, so softmax={softmax!r} cannot apply; "
            "use softmax=softmax"
        )
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"attention dropout must be in [0, 1), got {dropout_p!r}")
    if kind == "linear" and need_weights:
        raise ValueError("attention 'linear' never forms a weight matrix; need_weights=True is impossible")
    if kind == "linear" and dropout_p > 0:
        raise ValueError(f"attention 'linear' has no weights to drop; dropout {dropout_p} must be 0")
    if params.get("fused") is True and softmax != "softmax":
        raise ValueError(f"fused attention needs softmax=softmax, got softmax={softmax!r}")
    if params.get("fused") is True and need_weights:
        raise ValueError("fused attention cannot return weights; set fused=null or need_weights=False")
    if kind == "local":
        window = params.get("window")
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ValueError(f"attention 'local' needs an integer window >= 1, got {window!r}")
    for key in ("hidden", "chunk_size", "chunk_elems"):
        if key in params and params[key] is not None and int(params[key]) < 1:
            raise ValueError(f"attention {kind!r}: {key} must be >= 1, got {params[key]!r}")


# --------------------------------------------------------------------------------------------
# shared pieces


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"q, k, v must be [B, H, L, D]; got shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"q/k feature sizes or k/v lengths differ: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if mask is not None and mask.dtype != torch.bool:
        raise ValueError(f"mask must be boolean (True = attend), got dtype {mask.dtype}")


def causal_mask(lq: int, lk: int, device: torch.device | None = None) -> Tensor:
    """``[Lq, Lk]`` boolean mask, True where key ``j <= i`` (top-left aligned)."""
    return torch.ones(lq, lk, dtype=torch.bool, device=device).tril()


def band_mask(
    lq: int, lk: int, window: int, *, causal: bool = False, device: torch.device | None = None
) -> Tensor:
    """``[Lq, Lk]`` boolean mask of a sliding window: ``|i - j| < window`` (causal: ``0 <= i - j``)."""
    i = torch.arange(lq, device=device).unsqueeze(1)
    j = torch.arange(lk, device=device).unsqueeze(0)
    d = i - j
    keep = d.abs() < window
    return keep & (d >= 0) if causal else keep


def _full_mask(mask: Tensor | None, is_causal: bool, lq: int, lk: int, device) -> Tensor | None:
    if is_causal:
        c = causal_mask(lq, lk, device)
        return c if mask is None else mask & c
    return mask


def _mix(
    scores: Tensor,
    v: Tensor,
    mask: Tensor | None,
    temperature: float | Tensor,
    softmax: str,
    dropout_p: float,
    need_weights: bool,
) -> AttentionOutput:
    """Normalise scores into weights and take the weighted sum of the values."""
    weights = get_softmax(softmax)(scores, dim=-1, temperature=temperature, mask=mask)
    dropped = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    return dropped @ v, (weights if need_weights else None)


def _dot_product(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float,
    mask: Tensor | None,
    is_causal: bool,
    temperature: float | Tensor,
    softmax: str,
    dropout_p: float,
    need_weights: bool,
    fused: bool | None,
) -> AttentionOutput:
    """``softmax(q k^T * scale / T) v``: fused kernel where possible, reference path otherwise."""
    check_temperature(temperature)
    can_fuse = softmax == "softmax" and not need_weights
    if fused is True and not can_fuse:
        raise ValueError("fused attention needs softmax=softmax and need_weights=False")
    if can_fuse and fused is not False:
        if isinstance(temperature, Tensor):
            q, t = q / temperature, 1.0
        else:
            t = float(temperature)
        s = scale / t
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=is_causal, scale=s)
            return out, None
        m = _full_mask(mask, is_causal, q.shape[-2], k.shape[-2], q.device)
        # Rows with no visible key: let them attend everywhere, then zero them.
        row_any = m.any(dim=-1, keepdim=True)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=m | ~row_any, dropout_p=dropout_p, scale=s)
        return out * row_any, None
    scores = (q @ k.transpose(-2, -1)) * scale
    m = _full_mask(mask, is_causal, q.shape[-2], k.shape[-2], q.device)
    return _mix(scores, v, m, temperature, softmax, dropout_p, need_weights)


# --------------------------------------------------------------------------------------------
# the kinds


@register_attention("dot", params=("fused",))
def dot_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    temperature: float | Tensor = 1.0,
    softmax: str = "softmax",
    dropout_p: float = 0.0,
    need_weights: bool = False,
    fused: bool | None = None,
) -> AttentionOutput:
    """Luong dot attention: ``weights = softmax(q.k * s / T)``, ``s = 1`` unless given."""
    _check_inputs(q, k, v, mask)
    return _dot_product(
        q, k, v, scale=1.0 if scale is None else scale, mask=mask, is_causal=is_causal,
        temperature=temperature, softmax=softmax, dropout_p=dropout_p,
        need_weights=need_weights, fused=fused,
    )  # fmt: skip


@register_attention("scaled_dot", params=("fused",))
def scaled_dot_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    temperature: float | Tensor = 1.0,
    softmax: str = "softmax",
    dropout_p: float = 0.0,
    need_weights: bool = False,
    fused: bool | None = None,
) -> AttentionOutput:
    """Scaled dot-product attention: ``weights = softmax(q.k / (T sqrt(D)))``."""
    _check_inputs(q, k, v, mask)
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return _dot_product(
        q, k, v, scale=s, mask=mask, is_causal=is_causal, temperature=temperature,
        softmax=softmax, dropout_p=dropout_p, need_weights=need_weights, fused=fused,
    )  # fmt: skip


@register_attention("local", params=("window", "fused"))
def local_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    temperature: float | Tensor = 1.0,
    softmax: str = "softmax",
    dropout_p: float = 0.0,
    need_weights: bool = False,
    window: int = 8,
    fused: bool | None = None,
) -> AttentionOutput:
    """Sliding-window attention: scaled dot product over keys with ``|i - j| < window``.

    With ``is_causal`` the window looks back only: ``0 <= i - j < window``.
    """
    _check_inputs(q, k, v, mask)
    if window < 1:
        raise ValueError(f"local attention needs window >= 1, got {window}")
    band = band_mask(q.shape[-2], k.shape[-2], window, causal=is_causal, device=q.device)
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return _dot_product(
        q, k, v, scale=s, mask=band if mask is None else mask & band, is_causal=False,
        temperature=temperature, softmax=softmax, dropout_p=dropout_p,
        need_weights=need_weights, fused=fused,
    )  # fmt: skip


@register_attention("general", params=("fused",))
class GeneralAttention(nn.Module):
    """Luong general (bilinear) attention: ``score = q^T W k * s`` with a learned ``W`` per head.

    ``W`` starts at the identity, so the kind starts out as ``dot`` attention; ``s = 1`` unless given.
    """

    def __init__(self, head_dim: int, n_heads: int = 1, fused: bool | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(head_dim).repeat(n_heads, 1, 1))
        self.fused = fused

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        mask: Tensor | None = None,
        is_causal: bool = False,
        scale: float | None = None,
        temperature: float | Tensor = 1.0,
        softmax: str = "softmax",
        dropout_p: float = 0.0,
        need_weights: bool = False,
    ) -> AttentionOutput:
        _check_inputs(q, k, v, mask)
        qw = torch.einsum("bhid,hde->bhie", q, self.weight)
        return _dot_product(
            qw, k, v, scale=1.0 if scale is None else scale, mask=mask, is_causal=is_causal,
            temperature=temperature, softmax=softmax, dropout_p=dropout_p,
            need_weights=need_weights, fused=self.fused,
        )  # fmt: skip


@register_attention("additive", params=("hidden", "chunk_elems"))
class AdditiveAttention(nn.Module):
    """Bahdanau additive attention: ``score_ij = u^T tanh(W q_i + U k_j) * s`` per head, ``s = 1``.

    Queries are processed in chunks of at most ``chunk_elems`` elements of the
    ``[B, H, chunk, Lk, A]`` hidden tensor, recomputed in the backward pass (activation
    checkpointing), so the extra memory beyond the ``[B, H, Lq, Lk]`` scores is bounded by a few
    times ``chunk_elems`` elements whatever the sequence lengths. The default (``None``) is 2**22
    elements on the CPU and 2**26 on a GPU, where small chunks leave the device waiting for launches.
    """

    def __init__(
        self, head_dim: int, n_heads: int = 1, hidden: int | None = None, chunk_elems: int | None = None
    ) -> None:
        super().__init__()
        a = hidden or head_dim
        self.w_q = nn.Parameter(torch.randn(n_heads, head_dim, a) / math.sqrt(head_dim))
        self.w_k = nn.Parameter(torch.randn(n_heads, head_dim, a) / math.sqrt(head_dim))
        self.u = nn.Parameter(torch.randn(n_heads, a) / math.sqrt(a))
        self.chunk_elems = chunk_elems

    def _scores(self, wq: Tensor, uk: Tensor) -> Tensor:
        h = torch.tanh(wq.unsqueeze(3) + uk.unsqueeze(2))  # [B, H, c, Lk, A]
        return torch.einsum("bhija,ha->bhij", h, self.u)

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        """Unnormalised scores ``[B, H, Lq, Lk]``."""
        wq = torch.einsum("bhid,hda->bhia", q, self.w_q)
        uk = torch.einsum("bhjd,hda->bhja", k, self.w_k)
        b, h, lq, a = wq.shape
        per_query = max(1, b * h * uk.shape[-2] * a)
        budget = self.chunk_elems or (2**26 if wq.is_cuda else 2**22)
        step = max(1, budget // per_query)
        if step >= lq:
            return self._scores(wq, uk)
        grad = torch.is_grad_enabled() and (wq.requires_grad or uk.requires_grad)
        parts = []
        for start in range(0, lq, step):
            chunk = wq[:, :, start : start + step]
            if grad:
                parts.append(checkpoint(self._scores, chunk, uk, use_reentrant=False))
            else:
                parts.append(self._scores(chunk, uk))
        return torch.cat(parts, dim=2)

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        mask: Tensor | None = None,
        is_causal: bool = False,
        scale: float | None = None,
        temperature: float | Tensor = 1.0,
        softmax: str = "softmax",
        dropout_p: float = 0.0,
        need_weights: bool = False,
    ) -> AttentionOutput:
        _check_inputs(q, k, v, mask)
        scores = self.scores(q, k)
        if scale is not None:
            scores = scores * scale
        m = _full_mask(mask, is_causal, q.shape[-2], k.shape[-2], q.device)
        return _mix(scores, v, m, temperature, softmax, dropout_p, need_weights)


def _elu1(x: Tensor) -> Tensor:
    return F.elu(x) + 1.0


@register_attention("linear", params=("chunk_size",))
def linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    temperature: float | Tensor = 1.0,
    softmax: str = "softmax",
    dropout_p: float = 0.0,
    need_weights: bool = False,
    chunk_size: int = 64,
) -> AttentionOutput:
    """Linear attention with ``phi(x) = elu(x) + 1`` (Katharopoulos et al., 2020).

    ``out_i = phi(q_i')^T S_i / phi(q_i')^T z_i`` with ``q' = q * s / T``, ``S_i = sum_j phi(k_j) v_j^T``
    and ``z_i = sum_j phi(k_j)`` over the visible keys ``j`` (all, or ``j <= i`` when causal).
    The causal form runs over chunks of ``chunk_size`` positions carrying the running sums, so
    memory grows linearly with the length. Masks must be key-padding masks (size 1 on the
    query axis).
    """
    _check_inputs(q, k, v, mask)
    check_combination(
        "linear", softmax=softmax, dropout_p=dropout_p, need_weights=need_weights,
        params={"chunk_size": chunk_size},
    )  # fmt: skip
    check_temperature(temperature)
    s = 1.0 if scale is None else scale
    fq = _elu1(q * s / temperature)
    fk = _elu1(k)
    if mask is not None:
        if mask.dim() < 2 or mask.shape[-2] != 1:
            raise ValueError(
                f"linear attention takes key-padding masks only (shape [..., 1, Lk]), got {tuple(mask.shape)}"
            )
        keep = mask.transpose(-2, -1).to(fk.dtype)  # [..., Lk, 1]
        fk = fk * keep
    if not is_causal:
        kv = fk.transpose(-2, -1) @ v  # [B, H, D, Dv]
        z = fk.sum(dim=-2, keepdim=True).transpose(-2, -1)  # [B, H, D, 1]
        num, den = fq @ kv, fq @ z
    else:
        nums, dens = [], []
        b, h, lq, d = fq.shape
        state = fq.new_zeros(b, h, d, v.shape[-1])
        z = fq.new_zeros(b, h, d, 1)
        lk = fk.shape[-2]
        for start in range(0, lq, chunk_size):
            stop = start + chunk_size
            qc = fq[:, :, start:stop]
            kc, vc = fk[:, :, start:stop], v[:, :, start:stop]
            a = (qc @ kc.transpose(-2, -1)) * causal_mask(qc.shape[-2], kc.shape[-2], q.device)
            nums.append(qc @ state + a @ vc)
            dens.append(qc @ z + a.sum(dim=-1, keepdim=True))
            if start < lk:
                state = state + kc.transpose(-2, -1) @ vc
                z = z + kc.sum(dim=-2, keepdim=True).transpose(-2, -1)
        num, den = torch.cat(nums, dim=2), torch.cat(dens, dim=2)
    # phi > 0, so den == 0 only where no key is visible; those rows (num == 0) give 0.
    den = torch.where(den > 0, den, torch.ones_like(den))
    return num / den, None


@register_attention("sigmoid", params=("bias",))
def sigmoid_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    temperature: float | Tensor = 1.0,
    softmax: str = "softmax",
    dropout_p: float = 0.0,
    need_weights: bool = False,
    bias: float | None = None,
) -> AttentionOutput:
    """Sigmoid attention: ``w_ij = sigmoid(q.k * s / T + b)``, ``b = -log(Lk)``, ``out = w v``.

    ``s = 1/sqrt(D)`` unless given. Rows are not normalised (Ramapuram et al., 2024).
    """
    _check_inputs(q, k, v, mask)
    check_combination("sigmoid", softmax=softmax, dropout_p=dropout_p, need_weights=need_weights)
    check_temperature(temperature)
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    b = -math.log(k.shape[-2]) if bias is None else bias
    weights = torch.sigmoid((q @ k.transpose(-2, -1)) * s / temperature + b)
    m = _full_mask(mask, is_causal, q.shape[-2], k.shape[-2], q.device)
    if m is not None:
        weights = weights * m
    dropped = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    return dropped @ v, (weights if need_weights else None)


def build_attention(
    kind: str, *, head_dim: int, n_heads: int = 1, **params: Any
) -> Callable[..., AttentionOutput]:
    """A callable with the common signature: a module instance, or the function with ``params`` bound."""
    obj = get_attention(kind)
    check_combination(kind, params=params)
    if isinstance(obj, type):
        return obj(head_dim, n_heads, **params)
    return functools.partial(obj, **params) if params else obj


# --------------------------------------------------------------------------------------------
# the multi-head block


class MultiHeadAttention(nn.Module):
    """Multi-head attention wrapping any registered kind per head, with grouped-query heads.

    ``x: [B, Lq, d_model]`` attends to ``context: [B, Lk, d_model]`` (``x`` itself for
    self-attention, where Q, K and V come from one fused projection). ``n_kv_heads`` < ``n_heads``
    shares each key/value head among ``n_heads / n_kv_heads`` query heads (GQA; 1 = MQA).
    ``temperature`` is a float > 0, ``"learnable"`` (one positive temperature per head) or
    ``"adaptive"``: ``T = 1`` in training; in evaluation each query row's logits are multiplied by
    :func:`~attn.models.softmax.adaptive_beta` of its ``T = 1`` weights (Veličković et al., 2024),
    which needs ``softmax="softmax"`` and a kind that normalises its weights.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        kind: str = "scaled_dot",
        *,
        n_kv_heads: int | None = None,
        softmax: str = "softmax",
        temperature: float | str = 1.0,
        temperature_init: float = 1.0,
        dropout: float = 0.0,
        scale: float | None = None,
        cross: bool = False,
        bias: bool = True,
        **params: Any,
    ) -> None:
        super().__init__()
        if n_heads < 1 or d_model % n_heads:
            raise ValueError(f"n_heads={n_heads} must divide d_model={d_model}")
        n_kv_heads = n_kv_heads or n_heads
        if n_kv_heads < 1 or n_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads={n_kv_heads} must divide n_heads={n_heads}")
        check_combination(kind, softmax=softmax, dropout_p=dropout, params=params)
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        kv_dim = n_kv_heads * self.head_dim
        self.cross = cross
        if cross:
            self.q_proj = nn.Linear(d_model, d_model, bias=bias)
            self.kv_proj = nn.Linear(d_model, 2 * kv_dim, bias=bias)
        else:
            self.qkv_proj = nn.Linear(d_model, d_model + 2 * kv_dim, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.kind, self.softmax, self.scale, self.dropout = kind, softmax, scale, dropout
        self.attention = build_attention(kind, head_dim=self.head_dim, n_heads=n_heads, **params)
        self.adaptive = temperature == "adaptive"
        if self.adaptive and (softmax != "softmax" or kind not in NORMALISED_KINDS):
            raise ValueError(
                f"temperature='adaptive' needs softmax='softmax' and a normalised kind "
                f"({', '.join(sorted(NORMALISED_KINDS))}); got kind={kind!r}, softmax={softmax!r}"
            )
        if self.adaptive:
            self.learned_temperature = None
            self.temperature = 1.0
        elif temperature == "learnable":
            self.learned_temperature: LearnableTemperature | None = LearnableTemperature(
                n_heads, temperature_init
            )
            self.temperature = 1.0
        else:
            check_temperature(temperature)
            self.learned_temperature = None
            self.temperature = float(temperature)

    def current_temperature(self) -> float | Tensor:
        """The temperature in use: a float, or the learned per-head tensor ``[H, 1, 1]``."""
        lt = self.learned_temperature
        return lt() if lt is not None else self.temperature

    def _heads(self, x: Tensor, n: int) -> Tensor:
        b, length, _ = x.shape
        return x.view(b, length, n, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
    ) -> AttentionOutput:
        """``(out [B, Lq, d_model], weights [B, H, Lq, Lk] | None)``; ``mask`` as for the kinds."""
        kv_dim = self.n_kv_heads * self.head_dim
        if self.cross:
            if context is None:
                raise ValueError("cross-attention needs a context")
            q = self.q_proj(x)
            k, v = self.kv_proj(context).split([kv_dim, kv_dim], dim=-1)
        else:
            q, k, v = self.qkv_proj(x).split([self.d_model, kv_dim, kv_dim], dim=-1)
        q, k, v = (
            self._heads(q, self.n_heads),
            self._heads(k, self.n_kv_heads),
            self._heads(v, self.n_kv_heads),
        )
        if self.n_kv_heads != self.n_heads:
            rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        temperature = self.current_temperature()
        if self.adaptive and not self.training:  # first pass at T = 1 gives each row's entropy
            _, w = self.attention(
                q, k, v, mask=mask, is_causal=is_causal, scale=self.scale, temperature=1.0,
                softmax=self.softmax, dropout_p=0.0, need_weights=True,
            )  # fmt: skip
            temperature = 1.0 / adaptive_beta(w)
        out, weights = self.attention(
            q, k, v, mask=mask, is_causal=is_causal, scale=self.scale,
            temperature=temperature, softmax=self.softmax,
            dropout_p=self.dropout if self.training else 0.0, need_weights=need_weights,
        )  # fmt: skip
        b, _, lq, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, lq, self.d_model)), weights
