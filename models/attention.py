"""Attention kinds behind one registry, one signature and one shared path, plus the multi-head block.

**A kind is its scores.** Most kinds differ only in how a query scores a key (FlexAttention's
``score_mod``); everything else is shared: the scale, the position bias, the padding, causal and
band masks, the temperature (fixed, learnable, adaptive, log-n, Scalable-Softmax), soft-capping, the
attention sink, the normaliser, dropout and the returned weights, and the fused kernel
(``scaled_dot_product_attention``) whenever the scores are a (scaled) dot product. Such a kind is
registered as

* a plain function ``scores(q, k, **params) -> [B, H, Lq, Lk]``, or
* an ``nn.Module`` class (built as ``cls(head_dim, n_heads, **params)``, each argument only if its
  ``__init__`` takes it) with a ``scores(q, k)`` method and no ``forward``. A subclass of
  :class:`DotProduct` scores ``query(q) . key(k)`` (identity by default), which the shared path may fuse.
  A class may also restrict the keys (``band(lq, lk, is_causal, device)``, a boolean mask), refine the
  scaled scores (``refine(logits, mask)``), or replace the normaliser (``normalise(logits, *,
  temperature, mask, is_causal)``, as sigmoid and stick-breaking attention do).

``@register_attention(name, params=(...), scale=...)``: ``params`` are the keyword parameters it takes
(``attention.params``); ``scale`` its default scale, a number or ``"sqrt"`` for ``1/sqrt(D)`` (1 unless
given; ``attention.scale`` overrides it). :func:`build_attention` wraps a score kind in
:class:`ScoredAttention`, the shared path, so every kind is called the same way::

    out, weights = fn(q, k, v, *, mask=None, is_causal=False, scale=None, temperature=1.0,
                      softmax="softmax", dropout_p=0.0, need_weights=False, position_bias=None,
                      softcap=None, sink=None)

with ``q: [B, H, Lq, D]``, ``k: [B, H, Lk, D]``, ``v: [B, H, Lk, Dv]``, ``out: [B, H, Lq, Dv]``,
``weights: [B, H, Lq, Lk]`` (``None`` unless ``need_weights``; before dropout). ``mask`` is boolean,
**True = attend**, broadcastable to ``[B, H, Lq, Lk]``; ``is_causal`` lets query ``i`` see keys
``j <= i`` (top-left aligned). A query row with no visible key yields a zero output and zero gradient.
The logits are ``z = cap(q.k * s) + position_bias`` (``cap(x) = C tanh(x / C)`` with ``softcap=C``,
Gemma 2's soft-capping); the weights are ``softmax(z / T)`` for the normaliser ``softmax`` names
(:mod:`attn.models.softmax`), a float or tensor temperature ``T`` dividing the logits; ``sink`` (a
logit per head, ``[1, H, 1, 1]``) adds a virtual key with a zero value to every row (learned attention
sinks, as in gpt-oss; ``softmax1`` is the sink fixed at 0), so a row may give most of its weight to
nothing. ``dropout_p`` applies to the weights; callers pass 0 in evaluation.

A kind that needs its own ``forward`` (one that forms no score matrix, or two) is registered with the
full signature and called as it is: ``linear`` and ``differential`` here.

Kinds (``list_attention()``), with ``s`` = the scale:

* ``dot``         ``q.k * s``, ``s = 1`` (Luong dot).
* ``scaled_dot``  ``q.k * s``, ``s = 1/sqrt(D)`` (Vaswani et al.).
* ``general``     ``q^T W k * s``, ``W`` a learned ``[D, D]`` per head, ``s = 1`` (Luong).
* ``additive``    ``u^T tanh(W q + U k) * s``, learned ``W, U: [D, A]``, ``u: [A]`` per head, ``s = 1``
  (Bahdanau); in query chunks so the ``[.., Lq, Lk, A]`` tensor never exists whole.
* ``local``       ``scaled_dot`` over keys with ``|i - j| < window`` (causal: ``0 <= i - j < window``).
* ``sigmoid``     ``w_ij = sigmoid(z_ij / T + b)``, ``s = 1/sqrt(D)``, ``b = -log Lk`` or, with
  ``bias="-log_n"``, ``-log n_i``, the keys query ``i`` sees (Ramapuram et al. 2024); rows are not
  normalised.
* ``qknorm``      ``g_h q/|q| . k/|k|``, a learned gain per head (QK-norm, Henry et al. 2020: cosine
  scores, so no logit grows with the width or the training).
* ``selective``   ``scaled_dot`` whose logits lose, for every head, what earlier queries selected away:
  ``F_ij = sum_{k<i} S_kj`` with ``S = relu`` of the first head's logits, the first token and the
  diagonal not selectable (Leviathan et al. 2024); causal only.
* ``stick_breaking`` ``A_ij = beta_ij prod_{j<k<i} (1 - beta_ik)``, ``beta = sigmoid(z / T)``, keys
  ``j < i``, in log space; what no key takes goes to the query's own value (Tan et al. 2024, as their
  reference code does); causal only, and no position encoding needed.
* ``linear``      ``phi(q)^T sum_j phi(k_j) v_j^T / phi(q)^T sum_j phi(k_j)``, ``phi = elu + 1`` on
  ``q * s / T`` and ``k`` (Katharopoulos et al.); ``O(L)`` memory, no weight matrix, key-padding masks.
* ``differential`` ``(softmax(Q1 K1^T / sqrt(D/2)) - lambda softmax(Q2 K2^T / sqrt(D/2))) V``, each head's
  output RMS-normalised and scaled by ``1 - lambda_init`` (Ye et al. 2025); the layer sets
  ``lambda_init``.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .positions import POSITIONS, alibi_bias, rope_rotate
from .softmax import (
    LearnableTemperature,
    ScalableSoftmax,
    adaptive_beta,
    check_temperature,
    get_softmax,
    logn_scale,
    visible_keys,
)

AttentionOutput = tuple[Tensor, Tensor | None]


@dataclass(frozen=True)
class Kind:
    """A registered kind: the object, its keyword parameters, whether its weights are a softmax-like
    normaliser's (variants, the adaptive temperature and sinks apply), whether it can return them,
    whether it is a score kind (the shared path) with its default scale, and whether it reads only
    earlier keys (causal tasks only)."""

    obj: Any
    params: frozenset[str]
    normalised: bool = True
    weights: bool = True
    scores: bool = True
    scale: float | str = 1.0
    causal: bool = False


_REGISTRY: dict[str, Kind] = {}
# Kept in step with the registry for the config checks: kinds whose weights rows sum to one through a
# softmax variant, and kinds that never form a weight matrix.
NORMALISED_KINDS: set[str] = set()
WEIGHTLESS_KINDS: set[str] = set()
BUILTIN_KINDS: frozenset[str] = frozenset()  # filled at the end of this module: plugins cannot redefine them
SHARED = ("fused",)  # a parameter of the shared path, accepted by every dot-product score kind
KIND_PARAMS: dict[str, frozenset[str]] = {}


def _is_score_kind(obj: Any) -> bool:
    """A class with ``scores`` and no ``forward`` of its own, or a function without a ``v`` parameter."""
    if isinstance(obj, type):
        return hasattr(obj, "scores") and obj.forward is nn.Module.forward
    return "v" not in inspect.signature(obj).parameters


def register_attention(
    name: str,
    params: tuple[str, ...] = (),
    *,
    normalised: bool = True,
    weights: bool = True,
    scale: float | str = 1.0,
    causal: bool = False,
) -> Callable:
    """Register an attention kind under ``name`` (decorator): a score function or class (see the module
    docstring), or a function or ``nn.Module`` class with the full signature.

    ``params``: the keyword parameters it takes beyond the common signature (``attention.params``).
    ``normalised``: its weights are a softmax-like normaliser's output (rows sum to one), so
    ``softmax=...`` variants, ``temperature=adaptive`` and ``softmax.sink`` apply. ``weights``: it can
    return its weight matrix (``need_weights=True``), which the diagnostics read. ``scale``: a score
    kind's default scale (a number, or ``"sqrt"`` for ``1/sqrt(D)``). ``causal``: it reads earlier keys
    only and refuses a bidirectional task. A built-in name cannot be registered again (``ValueError``); a
    plugin's own name can (the last registration wins).
    """
    if name in BUILTIN_KINDS:
        raise ValueError(
            f"attention kind {name!r} is built in and cannot be redefined; register another name"
        )

    def deco(obj: Any) -> Any:
        scores = _is_score_kind(obj)
        extra = SHARED if scores and isinstance(obj, type) and issubclass(obj, DotProduct) else ()
        _REGISTRY[name] = Kind(obj, frozenset((*params, *extra)), normalised, weights, scores, scale, causal)
        KIND_PARAMS[name] = _REGISTRY[name].params
        (NORMALISED_KINDS.add if normalised else NORMALISED_KINDS.discard)(name)
        (WEIGHTLESS_KINDS.discard if weights else WEIGHTLESS_KINDS.add)(name)
        return obj

    return deco


def list_attention() -> list[str]:
    """Names of the registered attention kinds, sorted."""
    return sorted(_REGISTRY)


def kind_info(name: str) -> Kind:
    """The registration of ``name``; ``ValueError`` listing valid names."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown attention kind {name!r}; valid choices: {', '.join(list_attention())}"
        ) from None


def get_attention(name: str) -> Any:
    """The function or class registered as ``name`` (call :func:`build_attention` for the callable with
    the common signature); ``ValueError`` listing valid names."""
    return kind_info(name).obj


def forms_weights(kind: str) -> bool:
    """Whether the kind can return its weight matrix (``need_weights=True``)."""
    return kind not in WEIGHTLESS_KINDS


def takes_position_bias(kind: str) -> bool:
    """Whether the kind adds a ``position_bias`` (ALiBi's) to its logits: every score kind, and a full
    kind with the keyword."""
    info = kind_info(kind)
    if info.scores:
        return True
    obj = info.obj
    params = inspect.signature(obj.forward if isinstance(obj, type) else obj).parameters
    return "position_bias" in params or bool(getattr(obj, "takes_position_bias", False))


TEMPERATURE_RULES = ("learnable", "adaptive", "logn", "ssmax")  # beside a fixed number > 0
SINKS = ("learned",)  # softmax.sink: a learned logit per head (null: none)


def check_positions(kind: str, positions: str, head_dim: int | None = None) -> None:
    """Reject a position encoding (or a head size) the kind cannot take, with one clear line."""
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
    check_head_dim = getattr(kind_info(kind).obj, "check_head_dim", None)
    if head_dim is not None and check_head_dim is not None:
        check_head_dim(head_dim)


def check_combination(
    kind: str,
    *,
    softmax: str = "softmax",
    dropout_p: float = 0.0,
    need_weights: bool = False,
    params: dict[str, Any] | None = None,
    sink: str | None = None,
    softcap: float | None = None,
    causal: bool | None = None,
    task: str = "this task",
) -> None:
    """Reject an impossible combination of kind, normaliser, parameters, sink, soft-capping and task
    direction (``causal``: whether ``task``'s self-attention is causal; None: not known) in one line."""
    info = kind_info(kind)
    get_softmax(softmax)
    params = dict(params or {})
    unknown = sorted(set(params) - info.params)
    if unknown:
        allowed = ", ".join(sorted(info.params)) or "none"
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
    if sink is not None:
        if sink not in SINKS:
            raise ValueError(f"softmax.sink={sink!r} is unknown; valid choices: {', '.join(SINKS)} (or null)")
        if kind not in NORMALISED_KINDS or not info.scores:
            raise ValueError(
                f"softmax.sink={sink} adds a key to a softmax over scores, which attention {kind!r} does not"
                " form; use a kind that scores keys and normalises them (scaled_dot, dot, general, ...)"
            )
        if softmax == "softmax1":
            raise ValueError(
                "softmax1 is the sink fixed at zero; for a learned sink use softmax=softmax"
                " softmax.sink=learned"
            )
    if softcap is not None:
        if isinstance(softcap, bool) or not isinstance(softcap, int | float) or not softcap > 0:
            raise ValueError(f"softmax.softcap={softcap!r} is invalid: a number > 0 (Gemma 2: 50), or null")
        if not info.scores:
            raise ValueError(
                f"softmax.softcap caps score logits, which attention {kind!r} does not form one by one"
            )
    if info.causal and causal is False:
        raise ValueError(
            f"attention {kind!r} reads only the keys before each query (causal), but {task} reads both ways;"
            " use a causal task (mqar, mqar_zoology, max_retrieval, selective_copy)"
        )
    check_params = getattr(info.obj, "check_params", None)
    if check_params is not None:
        check_params(**{k: v for k, v in params.items() if k not in SHARED})
    for key in ("hidden", "chunk_size", "chunk_elems"):
        if key in params and params[key] is not None and int(params[key]) < 1:
            raise ValueError(f"attention {kind!r}: {key} must be >= 1, got {params[key]!r}")


# --------------------------------------------------------------------------------------------
# masks


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


def _and(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    return b if a is None else (a if b is None else a & b)


# --------------------------------------------------------------------------------------------
# the shared path


class ScoredAttention(nn.Module):
    """The common signature around a score kind (see the module docstring): scale, soft-cap, refine,
    position bias, masks, temperature, sink, normaliser, dropout and weights, shared by every score
    kind; the fused kernel when the kind is a :class:`DotProduct` that keeps the softmax and nothing asks
    for more (weights, soft-capping, a refinement). ``fused``: None picks, False forces the reference
    path, True makes an impossible fused request an error."""

    def __init__(self, kind: Any, scale: float | str = 1.0, fused: bool | None = None) -> None:
        super().__init__()
        self.kind = kind  # a module (registered as a child, so its parameters train) or a function
        self.default_scale, self.fused = scale, fused

    def scale_for(self, head_dim: int, scale: float | None) -> float:
        if scale is not None:
            return float(scale)
        return 1.0 / math.sqrt(head_dim) if self.default_scale == "sqrt" else float(self.default_scale)

    def logits(
        self,
        q: Tensor,
        k: Tensor,
        *,
        mask: Tensor | None,
        is_causal: bool,
        scale: float | None,
        softcap: float | None,
        position_bias: Tensor | None,
    ) -> Tensor:
        """``cap(scores(q, k) * s)``, refined by the kind, plus the position bias."""
        s = self.scale_for(q.shape[-1], scale)
        kind = self.kind
        z = kind.scores(q, k) if hasattr(kind, "scores") else kind(q, k)
        if s != 1.0:
            z = z * s
        if softcap is not None:
            z = softcap * torch.tanh(z / softcap)
        if hasattr(kind, "refine"):
            z = kind.refine(z, mask=mask, is_causal=is_causal)
        return z if position_bias is None else z + position_bias

    def mask_for(self, q: Tensor, k: Tensor, mask: Tensor | None, is_causal: bool) -> Tensor | None:
        """Padding, causal and the kind's band together (None: every key)."""
        band = getattr(self.kind, "band", None)
        extra = band(q.shape[-2], k.shape[-2], is_causal, q.device) if band is not None else None
        return _and(_full_mask(mask, is_causal, q.shape[-2], k.shape[-2], q.device), extra)

    def weights(
        self,
        q: Tensor,
        k: Tensor,
        *,
        mask: Tensor | None = None,
        is_causal: bool = False,
        scale: float | None = None,
        temperature: float | Tensor = 1.0,
        softmax: str = "softmax",
        position_bias: Tensor | None = None,
        softcap: float | None = None,
        sink: Tensor | None = None,
    ) -> Tensor:
        """The attention weights ``[B, H, Lq, Lk]`` by the reference path."""
        check_temperature(temperature)
        m = self.mask_for(q, k, mask, is_causal)
        z = self.logits(
            q, k, mask=m, is_causal=is_causal, scale=scale, softcap=softcap, position_bias=position_bias
        )
        normalise = getattr(self.kind, "normalise", None)
        if normalise is not None:
            return normalise(z, temperature=temperature, mask=m, is_causal=is_causal)
        if sink is not None:  # a virtual key with a zero value: its logit joins every row, then is dropped
            b, h, lq, lk = z.shape[0], z.shape[1], z.shape[2], z.shape[3]
            z = torch.cat([z, sink.to(z.dtype).expand(b, h, lq, 1)], dim=-1)
            m = torch.cat([_expand(m, z, lk), torch.ones_like(z[..., :1], dtype=torch.bool)], dim=-1)
            return get_softmax(softmax)(z, dim=-1, temperature=temperature, mask=m)[..., :lk]
        return get_softmax(softmax)(z, dim=-1, temperature=temperature, mask=m)

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        dropout_p: float = 0.0,
        need_weights: bool = False,
        fused: bool | None = None,
        **common: Any,
    ) -> AttentionOutput:
        """The common signature: ``common`` are :meth:`weights`' keywords (mask, is_causal, scale,
        temperature, softmax, position_bias, softcap, sink). ``fused`` (this call's choice, else the one
        the kind was built with): None picks the fused kernel when it can, False forces the reference
        path, True makes an impossible request an error."""
        _check_inputs(q, k, v, common.get("mask"))
        fused = self.fused if fused is None else fused
        plain = (
            isinstance(self.kind, DotProduct) and common.get("softmax", "softmax") == "softmax"
            and common.get("softcap") is None and not hasattr(self.kind, "normalise")
            and not hasattr(self.kind, "refine")
        )  # fmt: skip
        if fused is True and not (plain and not need_weights):
            raise ValueError(
                "fused attention needs softmax=softmax, need_weights=False, no soft-cap, a dot-product kind"
            )
        if plain and not need_weights and fused is not False:
            return self._fused(q, k, v, dropout_p=dropout_p, **common), None
        w = self.weights(q, k, **common)
        dropped = F.dropout(w, p=dropout_p) if dropout_p > 0 else w
        return dropped @ v, (w if need_weights else None)

    def _fused(self, q: Tensor, k: Tensor, v: Tensor, *, dropout_p: float, **common: Any) -> Tensor:
        """``softmax((q' k'^T s + bias) / T) v`` by ``scaled_dot_product_attention``: the bias and the sink
        as a float mask (a sink is a zero key whose logit the mask carries, with a zero value); rows with no
        visible key attend everywhere and are zeroed."""
        mask, is_causal, scale = common.get("mask"), common.get("is_causal", False), common.get("scale")
        temperature, sink = common.get("temperature", 1.0), common.get("sink")
        position_bias = common.get("position_bias")
        check_temperature(temperature)
        q, k = self.kind.query(q), self.kind.key(k)
        s = self.scale_for(q.shape[-1], scale)
        if isinstance(temperature, Tensor):
            q, t = q / temperature, 1.0
        else:
            t = float(temperature)
        bias = None if position_bias is None else position_bias / temperature
        band = getattr(self.kind, "band", None)
        extra = band(q.shape[-2], k.shape[-2], is_causal, q.device) if band is not None else None
        if mask is None and extra is None and bias is None and sink is None:
            return F.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout_p, is_causal=is_causal, scale=s / t
            )
        m = _and(_full_mask(mask, is_causal, q.shape[-2], k.shape[-2], q.device), extra)
        if sink is not None:  # a zero key and value whose logit, the sink's, the float mask carries
            lk = k.shape[-2]
            k = torch.cat([k, k.new_zeros(*k.shape[:-2], 1, k.shape[-1])], dim=-2)
            v = torch.cat([v, v.new_zeros(*v.shape[:-2], 1, v.shape[-1])], dim=-2)
            rows = torch.broadcast_shapes((*q.shape[:-1], lk), *([] if bias is None else [bias.shape]))[:-1]
            base = q.new_zeros(*rows, lk) if bias is None else bias.to(q.dtype).expand(*rows, lk)
            bias = torch.cat([base, (sink.to(q.dtype) / temperature).expand(*rows, 1)], dim=-1)
            if m is not None:
                m = torch.cat([m.expand(*rows, lk), m.new_ones(*rows, 1)], dim=-1)
        if m is None:  # a bias and nothing masked
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout_p, scale=s / t
            )
        row_any = m.any(dim=-1, keepdim=True)
        keep = m | ~row_any  # rows with no visible key: attend everywhere, then zero them
        if bias is not None:
            keep = torch.where(
                keep, bias.to(q.dtype), torch.tensor(float("-inf"), dtype=q.dtype, device=q.device)
            )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout_p, scale=s / t)
        return out * row_any


def _expand(m: Tensor | None, z: Tensor, lk: int) -> Tensor:
    """``m`` (or every key) broadcast to ``z``'s rows and ``lk`` keys."""
    shape = (*z.shape[:-1], lk)
    return torch.ones(shape, dtype=torch.bool, device=z.device) if m is None else m.expand(shape)


class DotProduct(nn.Module):
    """Base of the score kinds whose score is ``query(q) . key(k)``: the shared path may fuse them."""

    def query(self, q: Tensor) -> Tensor:
        return q

    def key(self, k: Tensor) -> Tensor:
        return k

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        return self.query(q) @ self.key(k).transpose(-2, -1)


# --------------------------------------------------------------------------------------------
# the score kinds


@register_attention("dot", scale=1.0)
class Dot(DotProduct):
    """Luong dot attention: ``score = q.k``."""


@register_attention("scaled_dot", scale="sqrt")
class ScaledDot(DotProduct):
    """Scaled dot-product attention: ``score = q.k / sqrt(D)``."""


@register_attention("local", params=("window",), scale="sqrt")
class Local(DotProduct):
    """Sliding-window attention: scaled dot product over keys with ``|i - j| < window`` (causal: the
    window looks back only, ``0 <= i - j < window``)."""

    def __init__(self, window: int = 8) -> None:
        super().__init__()
        self.check_params(window)
        self.window = window

    @staticmethod
    def check_params(window: Any = 8, **_: Any) -> None:
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ValueError(f"attention 'local' needs an integer window >= 1, got {window!r}")

    def band(self, lq: int, lk: int, is_causal: bool, device: Any) -> Tensor:
        return band_mask(lq, lk, self.window, causal=is_causal, device=device)


@register_attention("general", scale=1.0)
class General(DotProduct):
    """Luong general (bilinear) attention: ``score = q^T W k`` with a learned ``W`` per head; ``W`` starts
    at the identity, so the kind starts out as ``dot`` attention."""

    def __init__(self, head_dim: int, n_heads: int = 1) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(head_dim).repeat(n_heads, 1, 1))

    def query(self, q: Tensor) -> Tensor:
        return torch.einsum("bhid,hde->bhie", q, self.weight)


@register_attention("additive", params=("hidden", "chunk_elems"), scale=1.0)
class Additive(nn.Module):
    """Bahdanau additive attention: ``score_ij = u^T tanh(W q_i + U k_j)`` per head.

    Queries are processed in chunks of at most ``chunk_elems`` elements of the ``[B, H, chunk, Lk, A]``
    hidden tensor, recomputed in the backward pass (activation checkpointing), so the extra memory beyond
    the ``[B, H, Lq, Lk]`` scores is bounded by a few times ``chunk_elems`` elements whatever the sequence
    lengths. The default (``None``) is 2**22 elements on the CPU and 2**26 on a GPU, where small chunks
    leave the device waiting for launches.
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
            parts.append(
                checkpoint(self._scores, chunk, uk, use_reentrant=False) if grad else self._scores(chunk, uk)
            )
        return torch.cat(parts, dim=2)


LOG_N = "-log_n"  # the sigmoid kind's bias per query: minus the log of the keys it sees


@register_attention("sigmoid", params=("bias",), normalised=False, scale="sqrt")
class Sigmoid(DotProduct):
    """Sigmoid attention: ``w_ij = sigmoid(z_ij / T + b)``, rows not normalised (Ramapuram et al., 2024).
    ``b = -log Lk`` by default; ``bias="-log_n"``: ``b_i = -log n_i``, ``n_i`` the keys query ``i`` sees
    (the paper's bias, without which sigmoid attention does not match softmax); a number: that bias."""

    def __init__(self, bias: float | str | None = None) -> None:
        super().__init__()
        self.check_params(bias)
        self.bias = bias

    @staticmethod
    def check_params(bias: Any = None, **_: Any) -> None:
        number = isinstance(bias, int | float) and not isinstance(bias, bool) and math.isfinite(bias)
        if bias is not None and bias != LOG_N and not number:
            raise ValueError(
                f"attention 'sigmoid': bias={bias!r} is invalid; a number, {LOG_N} or null (-log Lk)"
            )

    def normalise(
        self, logits: Tensor, *, temperature: float | Tensor, mask: Tensor | None, is_causal: bool
    ) -> Tensor:
        if self.bias == LOG_N:
            n = (_expand(mask, logits, logits.shape[-1])).sum(-1, keepdim=True).to(logits.dtype)
            b = -n.clamp_min(1.0).log()
        else:
            b = -math.log(logits.shape[-1]) if self.bias is None else float(self.bias)
        weights = torch.sigmoid(logits / temperature + b)
        return weights if mask is None else weights * mask


@register_attention("qknorm", params=("init",), scale=1.0)
class QKNorm(DotProduct):
    """QK-norm attention: ``score = g_h (q / |q|) . (k / |k|)``, cosine similarity times a learned gain per
    head (Henry et al. 2020, "Query-Key Normalization for Transformers"; Dehghani et al. 2023 normalise q
    and k the same way to keep logits from growing). ``g = exp(log_g)`` starts at ``init`` (10; Henry et
    al.'s rule ``log2(L^2 - L)`` gives 9.1 at MQAR's 24 tokens)."""

    def __init__(self, n_heads: int = 1, init: float = 10.0) -> None:
        super().__init__()
        self.check_params(init)
        self.log_g = nn.Parameter(torch.full((n_heads, 1, 1), math.log(float(init))))

    @staticmethod
    def check_params(init: Any = 10.0, **_: Any) -> None:
        if isinstance(init, bool) or not isinstance(init, int | float) or not 0 < init < 1e6:
            raise ValueError(f"attention 'qknorm': init={init!r} is invalid; the gain's start, a number > 0")

    def query(self, q: Tensor) -> Tensor:
        return F.normalize(q, dim=-1) * self.log_g.exp().to(q.dtype)

    def key(self, k: Tensor) -> Tensor:
        return F.normalize(k, dim=-1)


@register_attention("selective", scale="sqrt", causal=True)
class Selective(DotProduct):
    """Selective attention (Leviathan et al. 2024): scaled dot-product logits minus what earlier queries
    selected away. ``S = relu`` of the first head's (masked) logits, with the first key and the diagonal
    not selectable; ``F_ij = sum_{k<i} S_kj``; every head's logits lose ``F``. Causal only."""

    def refine(self, logits: Tensor, *, mask: Tensor | None, is_causal: bool) -> Tensor:
        lq, lk = logits.shape[-2:]
        if not is_causal:
            raise ValueError("attention 'selective' is causal: call it with is_causal=True")
        gate = logits[:, :1].relu()
        if mask is not None:
            gate = gate * _expand(mask, logits, lk)[:, :1]
        keep = torch.ones(lq, lk, dtype=logits.dtype, device=logits.device)
        keep[:, 0] = 0  # the first token stays readable
        keep = keep * (
            1 - torch.eye(lq, lk, dtype=logits.dtype, device=logits.device)
        )  # no query selects itself
        gate = gate * keep
        selected = F.pad(gate, (0, 0, 1, -1)).cumsum(dim=-2)  # what queries before i selected
        return logits - selected


@register_attention("stick_breaking", normalised=False, scale="sqrt", causal=True)
class StickBreaking(DotProduct):
    """Stick-breaking attention (Tan et al., ICLR 2025): ``beta_ij = sigmoid(z_ij / T)`` for keys ``j < i``,
    ``A_ij = beta_ij prod_{j<k<i} (1 - beta_ik)``: the nearest key takes its share first, in log space; the
    weight no key takes goes to the query's own value (the diagonal), as the authors' reference code does.
    No position encoding is needed: the order is in the product. Causal only."""

    def normalise(
        self, logits: Tensor, *, temperature: float | Tensor, mask: Tensor | None, is_causal: bool
    ) -> Tensor:
        lq, lk = logits.shape[-2:]
        if not is_causal:
            raise ValueError("attention 'stick_breaking' is causal: call it with is_causal=True")
        z = logits / temperature
        before = torch.ones(lq, lk, dtype=torch.bool, device=z.device).tril(-1)  # j < i
        seen = _expand(mask, z, lk) & before
        log_beta = F.logsigmoid(z).masked_fill(~seen, -math.inf)
        log_rest = F.logsigmoid(-z).masked_fill(~seen, 0.0)
        # sum over the keys k with j < k < i of log(1 - beta_ik): a reversed cumulative sum, less key j
        after = log_rest.flip(-1).cumsum(-1).flip(-1) - log_rest
        weights = (log_beta + after).exp()
        rest = (1 - weights.sum(-1, keepdim=True)).clamp_min(0)
        diagonal = torch.eye(lq, lk, dtype=z.dtype, device=z.device)
        if mask is not None:
            diagonal = diagonal * _expand(mask, z, lk)
        return weights + rest * diagonal


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
    chunk_size: int = 64,
    **options: Any,
) -> AttentionOutput:
    """Linear attention with ``phi(x) = elu(x) + 1`` (Katharopoulos et al., 2020).

    ``out_i = phi(q_i')^T S_i / phi(q_i')^T z_i`` with ``q' = q * s / T``, ``S_i = sum_j phi(k_j) v_j^T``
    and ``z_i = sum_j phi(k_j)`` over the visible keys ``j`` (all, or ``j <= i`` when causal).
    The causal form runs over chunks of ``chunk_size`` positions carrying the running sums, so
    memory grows linearly with the length. Masks must be key-padding masks (size 1 on the
    query axis). ``options`` are the rest of the common signature; only their defaults are possible.
    """
    _check_inputs(q, k, v, mask)
    # the rest of the common signature (softmax, dropout_p, need_weights): checked, none can apply
    check_combination("linear", params={"chunk_size": chunk_size}, **options)
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


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-5) -> Tensor:
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dimension (RMSNorm)."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def differential_lambda_init(layer: int) -> float:
    """``lambda_init = 0.8 - 0.6 exp(-0.3 (l - 1))`` for layer ``l`` (1-based; ``layer`` is 0-based)."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer)


@register_attention("differential", normalised=False)
class Differential(nn.Module):
    """Differential attention (Ye et al., ICLR 2025): the difference of two softmax maps cancels the
    attention both give to irrelevant keys.

    Each head's ``D`` query and key features are split in two halves (``D`` must be even), ``A_c =
    softmax(Q_c K_c^T / sqrt(D/2))`` with everything the shared path adds (temperature, position bias,
    masks), and ``out = RMSNorm((A_1 - lambda A_2) V) * (1 - lambda_init)`` with ``V`` the head's ``D``
    value features, RMSNorm over them with a learned gain shared by the heads; ``lambda = exp(lq1 . lk1) -
    exp(lq2 . lk2) + lambda_init`` with four learned ``D/2`` vectors (initialised N(0, 0.1)) and
    ``lambda_init = 0.8 - 0.6 exp(-0.3 (l - 1))`` for layer ``l``, as the authors' code does. The
    weights returned are ``A_1 - lambda A_2`` (rows sum to ``1 - lambda``; entries may be negative).
    """

    takes_position_bias = True  # passed on to both maps with the rest of the common signature

    def __init__(self, head_dim: int, n_heads: int = 1, layer: int = 0) -> None:
        super().__init__()
        self.check_head_dim(head_dim)
        half = head_dim // 2
        self.lambda_init = differential_lambda_init(layer)
        self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2 = (
            nn.Parameter(torch.randn(half) * 0.1) for _ in range(4)
        )
        self.norm = nn.Parameter(torch.ones(head_dim))  # RMSNorm's gain over a head's output
        self.component = ScoredAttention(ScaledDot(), "sqrt")

    @staticmethod
    def check_head_dim(head_dim: int) -> None:
        if head_dim % 2:
            raise ValueError(
                f"attention 'differential' splits each head's features in two: the head size {head_dim}"
                " must be even (model.d_model / model.n_heads)"
            )

    def lam(self) -> Tensor:
        """``lambda`` (a scalar tensor)."""
        one = torch.exp((self.lambda_q1 * self.lambda_k1).sum())
        two = torch.exp((self.lambda_q2 * self.lambda_k2).sum())
        return one - two + self.lambda_init

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        dropout_p: float = 0.0,
        need_weights: bool = False,
        **common: Any,
    ) -> AttentionOutput:
        """The common signature: ``common`` (mask, is_causal, scale, temperature, softmax, position_bias)
        goes to both softmax maps as it would to one."""
        _check_inputs(q, k, v, common.get("mask"))
        half = q.shape[-1] // 2
        one = self.component.weights(q[..., :half], k[..., :half], **common)
        two = self.component.weights(q[..., half:], k[..., half:], **common)
        weights = one - self.lam().to(q.dtype) * two
        dropped = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
        out = rms_norm(dropped @ v, self.norm.to(q.dtype)) * (1 - self.lambda_init)
        return out, (weights if need_weights else None)


BUILTIN_KINDS = frozenset(_REGISTRY)


def build_attention(
    kind: str, *, head_dim: int, n_heads: int = 1, layer: int = 0, **params: Any
) -> Callable[..., AttentionOutput]:
    """A callable with the common signature: a score kind inside :class:`ScoredAttention`, a full kind's
    module instance, or its function with ``params`` bound. A class gets ``head_dim``, ``n_heads`` and
    ``layer`` (0-based) where its ``__init__`` takes them."""
    info = kind_info(kind)
    check_combination(kind, params=params)
    obj = info.obj
    fused = params.pop("fused", None) if info.scores else None
    if isinstance(obj, type):
        takes = inspect.signature(obj.__init__).parameters
        given = {"head_dim": head_dim, "n_heads": n_heads, "layer": layer}
        built = obj(**{k: v for k, v in given.items() if k in takes}, **params)
    else:
        built = functools.partial(obj, **params) if params else obj
    return ScoredAttention(built, info.scale, fused) if info.scores else built


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

    ``sink="learned"``: a learned logit per head for a virtual key with a zero value (see the module
    docstring); ``softcap``: the logits' soft cap ``C`` (``C tanh(z / C)``); ``layer``: this block's index
    (0-based), for kinds that depend on it (``differential``).

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
        sink: str | None = None,
        softcap: float | None = None,
        layer: int = 0,
        **params: Any,
    ) -> None:
        super().__init__()
        if n_heads < 1 or d_model % n_heads:
            raise ValueError(f"n_heads={n_heads} must divide d_model={d_model}")
        n_kv_heads = n_kv_heads or n_heads
        if n_kv_heads < 1 or n_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads={n_kv_heads} must divide n_heads={n_heads}")
        check_combination(kind, softmax=softmax, dropout_p=dropout, params=params, sink=sink, softcap=softcap)
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
        self.attention = build_attention(kind, head_dim=self.head_dim, n_heads=n_heads, layer=layer, **params)
        self.softcap = softcap
        # softmax.sink=learned: one logit per head for a virtual key with a zero value (0 at the start:
        # softmax1's sink, then learned)
        self.sink = nn.Parameter(torch.zeros(n_heads)) if sink == "learned" else None
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

    def state_elements(self, length: int) -> int:
        """The elements this attention carries per sequence at inference after ``length`` tokens: its key
        and value cache ``2 * length * kv_dim`` (``local``: the last ``window`` positions only), or for
        ``linear`` its running sums ``S = sum phi(k) v^T`` and ``z = sum phi(k)``, ``n_kv_heads * (f * d_head
        + f)`` with ``f = d_head`` (elu + 1 keeps the width). A kind registered by a plugin counts as a
        full cache."""
        kv_dim = self.n_kv_heads * self.head_dim
        if self.kind == "linear":
            return self.n_kv_heads * (self.head_dim * self.head_dim + self.head_dim)
        window = getattr(getattr(self.attention, "kind", None), "window", None)
        if self.kind == "local" and window is not None:
            return 2 * min(window, length) * kv_dim
        return 2 * length * kv_dim

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
        extra: dict[str, Any] = {}
        if self.softcap is not None:
            extra["softcap"] = self.softcap
        if self.sink is not None:
            extra["sink"] = self.sink.view(1, -1, 1, 1)
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
