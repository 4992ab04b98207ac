"""The attention kinds as they were before issue 34 made a kind its score function: a frozen copy of
``models/attention.py`` at that commit (its own registry, untouched by attn's), kept so that the tests can
show the rewritten kinds give the same numbers in float64. Not imported by attn itself."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from attn.models.positions import POSITIONS, alibi_bias, rope_rotate
from attn.models.softmax import (
    LearnableTemperature,
    ScalableSoftmax,
    adaptive_beta,
    check_temperature,
    get_softmax,
    logn_scale,
    visible_keys,
)

AttentionOutput = tuple[Tensor, Tensor | None]
_REGISTRY: dict[str, Callable[..., AttentionOutput] | type[nn.Module]] = {}
# Keyword parameters each kind accepts beyond the common signature.
KIND_PARAMS: dict[str, frozenset[str]] = {}
# Kinds that produce normalised weights (rows sum to one: a softmax variant, the adaptive temperature and
# the entropy diagnostics apply to them), and kinds that never form a weight matrix (no need_weights).
NORMALISED_KINDS: set[str] = set()
WEIGHTLESS_KINDS: set[str] = set()
BUILTIN_KINDS: frozenset[str] = frozenset()  # filled at the end of this module: plugins cannot redefine them


def register_attention(
    name: str, params: tuple[str, ...] = (), *, normalised: bool = True, weights: bool = True
) -> Callable:
    """Register an attention function or ``nn.Module`` class under ``name`` (decorator).

    ``params``: the keyword parameters it takes beyond the common signature (``attention.params``).
    ``normalised``: its weights are a softmax-like normaliser's output (rows sum to one), so
    ``softmax=...`` variants and ``temperature=adaptive`` apply. ``weights``: it can return its weight
    matrix (``need_weights=True``), which the diagnostics read. A built-in name cannot be registered
    again (``ValueError``); a plugin's own name can (the last registration wins).
    """
    if name in BUILTIN_KINDS:
        raise ValueError(
            f"attention kind {name!r} is built in and cannot be redefined; register another name"
        )

    def deco(obj):
        _REGISTRY[name] = obj
        KIND_PARAMS[name] = frozenset(params)
        (NORMALISED_KINDS.add if normalised else NORMALISED_KINDS.discard)(name)
        (WEIGHTLESS_KINDS.discard if weights else WEIGHTLESS_KINDS.add)(name)
        return obj

    return deco


def list_attention() -> list[str]:
    """Names of the registered attention kinds, sorted."""
    return sorted(_REGISTRY)


def forms_weights(kind: str) -> bool:
    """Whether the kind can return its weight matrix (``need_weights=True``)."""
    return kind not in WEIGHTLESS_KINDS


def takes_position_bias(kind: str) -> bool:
    """Whether the kind adds a ``position_bias`` (ALiBi's) to its logits: it has the keyword."""
    obj = get_attention(kind)
    return "position_bias" in inspect.signature(obj.forward if isinstance(obj, type) else obj).parameters


TEMPERATURE_RULES = ("learnable", "adaptive", "logn", "ssmax")  # beside a fixed number > 0


def check_positions(kind: str, positions: str, head_dim: int | None = None) -> None:
    """Reject a position encoding the kind cannot take, with one clear line."""
    if positions not in POSITIONS:
        raise ValueError(f"model.positions={positions!r} is unknown; valid choices: {', '.join(POSITIONS)}")
    if positions == "alibi" and not takes_position_bias(kind):
        why = "it forms no q.k logits" if not forms_weights(kind) else "it takes no position_bias"
        raise ValueError(
            f"positions=alibi adds a bias to the attention logits, but attention {kind!r} has none to add it"
            f" to ({why}); use positions=sinusoidal, none or rope"
        )
    if positions == "rope" and head_dim is not None and head_dim % 2:
        raise ValueError(f"positions=rope rotates pairs of features: the head size {head_dim} must be even")


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
    if not forms_weights(kind) and need_weights:
        raise ValueError(f"attention {kind!r} never forms a weight matrix; need_weights=True is impossible")
    if not forms_weights(kind) and dropout_p > 0:
        raise ValueError(f"attention {kind!r} has no weights to drop; dropout {dropout_p} must be 0")
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
    position_bias: Tensor | None = None,
) -> AttentionOutput:
    """``softmax((q k^T * scale + position_bias) / T) v``: fused kernel where possible (the bias as a float
    mask), reference path otherwise."""
    check_temperature(temperature)
    can_fuse = softmax == "softmax" and not need_weights
    if fused is True and not can_fuse:
        raise ValueError("fused attention needs softmax=softmax and need_weights=False")
    if can_fuse and fused is not False:
        if isinstance(temperature, Tensor):
            q, t = q / temperature, 1.0
            bias = None if position_bias is None else position_bias / temperature
        else:
            t = float(temperature)
            bias = None if position_bias is None else position_bias / t
        s = scale / t
        if mask is None and bias is None:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=is_causal, scale=s)
            return out, None
        m = _full_mask(mask, is_causal, q.shape[-2], k.shape[-2], q.device)
        if m is None:  # a bias and nothing masked
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout_p, scale=s
            )
            return out, None
        # Rows with no visible key: let them attend everywhere, then zero them.
        row_any = m.any(dim=-1, keepdim=True)
        keep = m | ~row_any
        if bias is not None:
            keep = torch.where(
                keep, bias.to(q.dtype), torch.tensor(float("-inf"), dtype=q.dtype, device=q.device)
            )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout_p, scale=s)
        return out * row_any, None
    scores = (q @ k.transpose(-2, -1)) * scale
    if position_bias is not None:
        scores = scores + position_bias
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
    position_bias: Tensor | None = None,
) -> AttentionOutput:
    """Luong dot attention: ``weights = softmax(q.k * s / T)``, ``s = 1`` unless given."""
    _check_inputs(q, k, v, mask)
    return _dot_product(
        q, k, v, scale=1.0 if scale is None else scale, mask=mask, is_causal=is_causal,
        temperature=temperature, softmax=softmax, dropout_p=dropout_p,
        need_weights=need_weights, fused=fused, position_bias=position_bias,
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
    position_bias: Tensor | None = None,
) -> AttentionOutput:
    """Scaled dot-product attention: ``weights = softmax(q.k / (T sqrt(D)))``."""
    _check_inputs(q, k, v, mask)
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return _dot_product(
        q, k, v, scale=s, mask=mask, is_causal=is_causal, temperature=temperature,
        softmax=softmax, dropout_p=dropout_p, need_weights=need_weights, fused=fused,
        position_bias=position_bias,
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
    position_bias: Tensor | None = None,
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
        need_weights=need_weights, fused=fused, position_bias=position_bias,
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
        position_bias: Tensor | None = None,
    ) -> AttentionOutput:
        _check_inputs(q, k, v, mask)
        qw = torch.einsum("bhid,hde->bhie", q, self.weight)
        return _dot_product(
            qw, k, v, scale=1.0 if scale is None else scale, mask=mask, is_causal=is_causal,
            temperature=temperature, softmax=softmax, dropout_p=dropout_p,
            need_weights=need_weights, fused=self.fused, position_bias=position_bias,
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
        position_bias: Tensor | None = None,
    ) -> AttentionOutput:
        _check_inputs(q, k, v, mask)
        scores = self.scores(q, k)
        if scale is not None:
            scores = scores * scale
        if position_bias is not None:
            scores = scores + position_bias
        m = _full_mask(mask, is_causal, q.shape[-2], k.shape[-2], q.device)
        return _mix(scores, v, m, temperature, softmax, dropout_p, need_weights)


def _elu1(x: Tensor) -> Tensor:
    return F.elu(x) + 1.0


@register_attention("linear", params=("chunk_size",), normalised=False, weights=False)
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


@register_attention("sigmoid", params=("bias",), normalised=False)
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
    position_bias: Tensor | None = None,
) -> AttentionOutput:
    """Sigmoid attention: ``w_ij = sigmoid((q.k * s + position_bias) / T + b)``, ``b = -log(Lk)``,
    ``out = w v``.

    ``s = 1/sqrt(D)`` unless given. Rows are not normalised (Ramapuram et al., 2024).
    """
    _check_inputs(q, k, v, mask)
    check_combination("sigmoid", softmax=softmax, dropout_p=dropout_p, need_weights=need_weights)
    check_temperature(temperature)
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    b = -math.log(k.shape[-2]) if bias is None else bias
    scores = (q @ k.transpose(-2, -1)) * s
    if position_bias is not None:
        scores = scores + position_bias
    weights = torch.sigmoid(scores / temperature + b)
    m = _full_mask(mask, is_causal, q.shape[-2], k.shape[-2], q.device)
    if m is not None:
        weights = weights * m
    dropped = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    return dropped @ v, (weights if need_weights else None)


BUILTIN_KINDS = frozenset(_REGISTRY)


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
    ``temperature`` is a float > 0, ``"learnable"`` (one positive temperature per head),
    ``"adaptive"``: ``T = 1`` in training; in evaluation each query row's logits are multiplied by
    :func:`~attn.models.softmax.adaptive_beta` of its ``T = 1`` weights (Veličković et al., 2024),
    which needs ``softmax="softmax"`` and a kind that normalises its weights; ``"logn"``: the logits of a
    query that sees ``n`` keys are multiplied by :func:`~attn.models.softmax.logn_scale` (``max(1, ln n /
    ln L)``); ``"ssmax"``: by :class:`~attn.models.softmax.ScalableSoftmax` (``s_h ln n``, ``s_h``
    learned). ``n`` counts the keys the padding and causal masks leave to each query; ``L`` is
    ``train_len``, the training sequence length. Both factors scale the content logits ``q.k`` only: a
    position bias (ALiBi) is added unscaled, as Qwen's log-n attention scales the query alone. For
    sparsemax and entmax15 a larger factor also shrinks the support (fewer keys get any weight).

    ``positions``: ``"rope"`` rotates q and k by position (:func:`~attn.models.positions.rope_rotate`),
    ``"alibi"`` adds :func:`~attn.models.positions.alibi_bias` to the logits, in self-attention; the
    additive encodings (``"sinusoidal"``, ``"none"``) live in the encoder and change nothing here.
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
        positions: str = "sinusoidal",
        train_len: int | None = None,
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
        check_positions(kind, positions, self.head_dim)
        self.positions = "none" if cross else positions  # two sequences: no relative position between them
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
        self.rule = temperature if temperature in ("logn", "ssmax") else None
        if self.rule is not None and (train_len is None or train_len < 2):
            raise ValueError(f"temperature={temperature!r} needs the training length (train_len >= 2)")
        self.train_len = train_len
        self.ssmax = ScalableSoftmax(n_heads, train_len) if self.rule == "ssmax" else None
        if self.adaptive or self.rule is not None:
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
        if self.positions == "rope":
            q, k = rope_rotate(q), rope_rotate(k)
        if self.n_kv_heads != self.n_heads:
            rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        extra = {}
        if self.positions == "alibi":
            extra["position_bias"] = alibi_bias(self.n_heads, q.shape[-2], k.shape[-2], q.device).to(q.dtype)
        temperature = self.current_temperature()
        if self.rule is not None:  # the logits times a factor of the visible keys: T = 1 / factor
            n = visible_keys(mask, is_causal, q.shape[-2], k.shape[-2], q.device)
            factor = self.ssmax(n) if self.ssmax is not None else logn_scale(n, self.train_len)
            temperature = 1.0 / factor.to(q.dtype)
            if (
                "position_bias" in extra
            ):  # the factor scales q.k only (Qwen's logn rule), never ALiBi's slopes:
                extra["position_bias"] = extra["position_bias"] * temperature  # the kind divides it by T
        if self.adaptive and not self.training:  # first pass at T = 1 gives each row's entropy
            _, w = self.attention(
                q, k, v, mask=mask, is_causal=is_causal, scale=self.scale, temperature=1.0,
                softmax=self.softmax, dropout_p=0.0, need_weights=True, **extra,
            )  # fmt: skip
            temperature = 1.0 / adaptive_beta(w)
        out, weights = self.attention(
            q, k, v, mask=mask, is_causal=is_causal, scale=self.scale,
            temperature=temperature, softmax=self.softmax,
            dropout_p=self.dropout if self.training else 0.0, need_weights=need_weights, **extra,
        )  # fmt: skip
        b, _, lq, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, lq, self.d_model)), weights
