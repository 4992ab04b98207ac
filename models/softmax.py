"""Normalisers that turn attention scores into weights: softmax and its variants.

Every normaliser has one signature::

    fn(scores, dim=-1, *, temperature=1.0, mask=None) -> probs

``temperature`` divides the scores *before* masking: ``fn(z, temperature=T) == fn(z / T)``.
It is a positive float or a positive tensor broadcastable to ``scores`` (a learnable temperature,
see :class:`LearnableTemperature`). ``mask`` is boolean, ``True`` = keep, broadcastable to
``scores``; masked entries get probability exactly zero, and a row with no kept entry gives all
zeros (no NaN, forward or backward).

Registered normalisers (``list_softmax()``):

* ``softmax``:   ``s_k = exp(z_k) / sum_j exp(z_j)``. Jacobian ``J = diag(s) - s s^T``, so the
  backward pass is ``dz = s * (g - <g, s>)``; with temperature,
  ``ds/dT = -(1/T^2) s * (z - <s, z>)``.
* ``softmax1``:  softmax off by one, ``s_k = exp(z_k) / (1 + sum_j exp(z_j))``: an implicit extra
  logit fixed at zero, so a row may put (almost) no weight anywhere.
* ``sparsemax``: Euclidean projection of ``z`` onto the probability simplex (Martins & Astudillo,
  2016), ``s = max(z - tau, 0)`` with ``tau`` chosen so that ``sum(s) = 1``: exact zeros.
* ``entmax15``:  1.5-entmax (Peters et al., 2019), ``s = max(z/2 - tau, 0)^2`` with ``sum(s) = 1``:
  sparse like sparsemax, smoother like softmax.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

Normaliser = Callable[..., Tensor]
_REGISTRY: dict[str, Normaliser] = {}
BUILTIN_NORMALISERS: frozenset[str] = frozenset()  # filled below the built-ins: plugins cannot redefine them


def register_softmax(name: str) -> Callable[[Normaliser], Normaliser]:
    """Register a normaliser under ``name`` (decorator); a built-in name is refused (``ValueError``)."""
    if name in BUILTIN_NORMALISERS:
        raise ValueError(
            f"softmax variant {name!r} is built in and cannot be redefined; register another name"
        )

    def deco(fn: Normaliser) -> Normaliser:
        _REGISTRY[name] = fn
        return fn

    return deco


def list_softmax() -> list[str]:
    """Names of the registered normalisers, sorted."""
    return sorted(_REGISTRY)


def get_softmax(name: str) -> Normaliser:
    """The normaliser registered as ``name``; ``ValueError`` listing the valid names otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown softmax variant {name!r}; valid choices: {', '.join(list_softmax())}"
        ) from None


def check_temperature(temperature: float | Tensor) -> None:
    """Raise ``ValueError`` unless ``temperature`` is finite and > 0.

    Tensors that require grad (a learnable temperature) are positive by construction and are not
    inspected, to keep the hot path free of host synchronisation.
    """
    if isinstance(temperature, Tensor):
        if temperature.requires_grad:
            return
        ok = bool(torch.isfinite(temperature).all() and (temperature > 0).all())
        shown = temperature.detach().flatten()[:4].tolist()
    else:
        try:
            value = float(temperature)
        except (TypeError, ValueError):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}") from None
        ok = math.isfinite(value) and value > 0
        shown = temperature
    if not ok:
        raise ValueError(f"temperature must be a finite number > 0, got {shown!r}")


def _prepare(scores: Tensor, temperature: float | Tensor) -> Tensor:
    check_temperature(temperature)
    if isinstance(temperature, Tensor) or temperature != 1.0:
        scores = scores / temperature
    return scores


def _row_any(mask: Tensor, dim: int) -> Tensor:
    return mask.any(dim=dim, keepdim=True)


@register_softmax("softmax")
def softmax(
    scores: Tensor, dim: int = -1, *, temperature: float | Tensor = 1.0, mask: Tensor | None = None
) -> Tensor:
    """Softmax ``exp(z_k / T) / sum_j exp(z_j / T)`` over ``dim``, masked entries excluded."""
    z = _prepare(scores, temperature)
    if mask is None:
        return torch.softmax(z, dim=dim)
    # A finite fill keeps fully masked rows NaN-free; multiplying by the mask zeroes them.
    z = z.masked_fill(~mask, torch.finfo(z.dtype).min)
    return torch.softmax(z, dim=dim) * mask


@register_softmax("softmax1")
def softmax1(
    scores: Tensor, dim: int = -1, *, temperature: float | Tensor = 1.0, mask: Tensor | None = None
) -> Tensor:
    """Softmax with an implicit zero logit: ``exp(z_k/T) / (1 + sum_j exp(z_j/T))``."""
    z = _prepare(scores, temperature)
    if mask is not None:
        z = z.masked_fill(~mask, torch.finfo(z.dtype).min)
    # Shift by max(z, 0) so that both exp(z - m) and the implicit exp(0 - m) stay in range.
    m = z.amax(dim=dim, keepdim=True).clamp(min=0).detach()
    e = torch.exp(z - m)
    out = e / (torch.exp(-m) + e.sum(dim=dim, keepdim=True))
    return out if mask is None else out * mask


def _to_last(x: Tensor, dim: int) -> Tensor:
    return x if dim in (-1, x.dim() - 1) else x.transpose(dim, -1)


def _fill_below_support(z: Tensor, mask: Tensor | None, gap: float) -> Tensor:
    """Shift each row by its largest unmasked entry and put the masked entries at ``-gap``: below the
    support at any scale. (Filling ``rowmax - gap`` without the shift rounds back to ``rowmax`` once
    ``|z|`` outgrows the dtype's resolution, ~1e8 in float32, and lets masked entries into the support.)
    The normalisers are shift-invariant, so the output and its gradient are those of the unshifted row."""
    if mask is None:
        return z
    mask = mask.expand_as(z)
    kept_max = z.masked_fill(~mask, float("-inf")).amax(dim=-1, keepdim=True)
    kept_max = torch.where(torch.isfinite(kept_max), kept_max, torch.zeros_like(kept_max))
    shifted = z - kept_max.detach()
    return torch.where(mask, shifted, torch.full_like(shifted, -gap))


class _Sparsemax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor) -> Tensor:  # type: ignore[override]
        # Shifted by the row max (tau shifts with it): the cumulative sums below then add values near
        # 0, not large logits whose float32 sums lose the differences that decide the support.
        z = z - z.amax(dim=-1, keepdim=True)
        zs, _ = torch.sort(z, dim=-1, descending=True)
        k = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
        cumsum = zs.cumsum(dim=-1)
        support = (1 + k * zs) > cumsum  # true for the first k* entries
        # At least 1: a row the dtype cannot hold (inf from z / T) gets NaN weights, which the run stops
        # on as a non-finite loss, instead of an index error here.
        k_star = support.sum(dim=-1, keepdim=True).clamp(min=1)
        tau = (cumsum.gather(-1, k_star - 1) - 1) / k_star.to(z.dtype)
        out = torch.clamp(z - tau, min=0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # type: ignore[override]
        (out,) = ctx.saved_tensors
        s = (out > 0).to(g.dtype)
        mean = (g * s).sum(dim=-1, keepdim=True) / s.sum(dim=-1, keepdim=True)
        return s * (g - mean)


class _Entmax15(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor) -> Tensor:  # type: ignore[override]
        # Shifted by the row max (tau shifts with it): the running variance below then works on values
        # near 0, not on large logits where mean_sq - mean^2 cancels in float32.
        x = (z - z.amax(dim=-1, keepdim=True)) / 2
        xs, _ = torch.sort(x, dim=-1, descending=True)
        n = x.shape[-1]
        k = torch.arange(1, n + 1, device=z.device, dtype=z.dtype)
        mean = xs.cumsum(dim=-1) / k
        mean_sq = (xs * xs).cumsum(dim=-1) / k
        delta = (1 - k * (mean_sq - mean * mean)) / k
        tau = mean - torch.sqrt(torch.clamp(delta, min=0))
        k_star = (tau <= xs).sum(dim=-1, keepdim=True).clamp(min=1)  # >= 1: see _Sparsemax
        tau_star = tau.gather(-1, k_star - 1)
        out = torch.clamp(x - tau_star, min=0) ** 2
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # type: ignore[override]
        (out,) = ctx.saved_tensors
        r = out.sqrt()
        dz = g * r
        q = dz.sum(dim=-1, keepdim=True) / r.sum(dim=-1, keepdim=True)
        return dz - q * r


def _sparse_normaliser(fn: type[torch.autograd.Function], gap: float) -> Normaliser:
    def normalise(
        scores: Tensor,
        dim: int = -1,
        *,
        temperature: float | Tensor = 1.0,
        mask: Tensor | None = None,
    ) -> Tensor:
        z = _to_last(_prepare(scores, temperature), dim)
        m = None if mask is None else _to_last(mask, dim)
        out = fn.apply(_fill_below_support(z, m, gap))
        if m is not None:
            out = out * m
        return _to_last(out, dim)

    return normalise


# Sparsemax zeroes every entry <= max(z) - 1; 1.5-entmax every entry <= max(z) - 2.
sparsemax = register_softmax("sparsemax")(_sparse_normaliser(_Sparsemax, gap=2.0))
sparsemax.__doc__ = "Sparsemax: projection of ``z / T`` onto the simplex, exact zeros."
entmax15 = register_softmax("entmax15")(_sparse_normaliser(_Entmax15, gap=3.0))
BUILTIN_NORMALISERS = frozenset(_REGISTRY)
entmax15.__doc__ = "1.5-entmax of ``z / T``: ``max(z/(2T) - tau, 0)^2``, exact zeros."


class LearnableTemperature(nn.Module):
    """A positive temperature per head, ``T = exp(log_t)``, shaped ``[H, 1, 1]`` for broadcasting."""

    def __init__(self, n_heads: int = 1, init: float = 1.0) -> None:
        super().__init__()
        check_temperature(init)
        self.log_t = nn.Parameter(torch.full((n_heads, 1, 1), math.log(init)))

    def forward(self) -> Tensor:
        return self.log_t.exp()


# Veličković et al. (2024), "softmax is not enough (for sharp out-of-distribution)": the degree-4
# polynomial (highest power first) fitted on their max-retrieval task, and the entropy above which it applies.
ADAPTIVE_POLY = (-0.037, 0.481, -2.3, 4.917, -1.791)
ADAPTIVE_MIN_ENTROPY = 0.5


def adaptive_beta(probs: Tensor, dim: int = -1) -> Tensor:
    """The adaptive inverse temperature of each row of ``probs`` (a softmax output), differentiable.

    With the row's Shannon entropy ``H = -sum_k p_k log p_k`` (nats),
    ``beta = max(p(H), 1)`` if ``H > 0.5`` else ``1``, where
    ``p(H) = -0.037 H^4 + 0.481 H^3 - 2.3 H^2 + 4.917 H - 1.791``. Multiplying the logits by ``beta``
    (temperature ``1 / beta``) sharpens rows that have dispersed; rows with no weight get ``beta = 1``.
    Returns ``beta`` with ``dim`` kept as size 1.
    """
    h = -(probs * probs.clamp_min(torch.finfo(probs.dtype).tiny).log()).sum(dim=dim, keepdim=True)
    poly = torch.zeros_like(h)
    for c in ADAPTIVE_POLY:
        poly = poly * h + c
    return torch.where(h > ADAPTIVE_MIN_ENTROPY, poly.clamp_min(1.0), torch.ones_like(h))


def visible_keys(mask: Tensor | None, is_causal: bool, lq: int, lk: int, device=None) -> Tensor:
    """How many keys each query sees, ``[B | 1, H | 1, Lq, 1]`` (float): all ``Lk``, or those the boolean
    ``mask`` (True = attend, broadcastable to ``[B, H, Lq, Lk]``) and causality (``j <= i``) leave."""
    if mask is None and not is_causal:
        return torch.full((1, 1, lq, 1), float(lk), device=device)
    seen = torch.ones(1, 1, lq, lk, dtype=torch.bool, device=device)
    if is_causal:
        seen = seen & torch.ones(lq, lk, dtype=torch.bool, device=device).tril()
    if mask is not None:
        seen = seen & mask
    return seen.sum(dim=-1, keepdim=True).to(torch.get_default_dtype())


def logn_scale(n: Tensor, train_len: int) -> Tensor:
    """Log-n scaling (Chiang & Cholak, 2022; Qwen's ``logn`` attention): the logits of a query that sees
    ``n`` keys are multiplied by ``max(1, ln n / ln L)``, ``L`` the training length: nothing changes up to
    ``L``, and beyond it the logits grow as fast as ``ln n``, the growth that keeps a softmax over ``n``
    keys as sharp as it was over ``L``. Parameter-free."""
    if train_len < 2:
        raise ValueError(f"log-n scaling needs a training length >= 2, got {train_len}")
    return (n.clamp_min(1.0).log() / math.log(train_len)).clamp_min(1.0)


class ScalableSoftmax(nn.Module):
    """Scalable-Softmax (Nakanishi, 2025, "Scalable-Softmax is superior for attention"): the logits of a
    query that sees ``n`` keys are multiplied by ``s_h ln n``, ``s_h > 0`` learned per head
    (``s = exp(log_s)``), initialised to ``1 / ln L`` so that the factor is 1 at the training length
    ``L``. ``n`` is taken >= 2 (a single visible key gets all its weight whatever the factor)."""

    def __init__(self, n_heads: int, train_len: int) -> None:
        super().__init__()
        if train_len < 2:
            raise ValueError(f"Scalable-Softmax needs a training length >= 2, got {train_len}")
        self.log_s = nn.Parameter(torch.full((n_heads, 1, 1), -math.log(math.log(train_len))))

    def forward(self, n: Tensor) -> Tensor:
        """The factor ``s_h ln n``, ``[B | 1, H, Lq, 1]`` for ``n`` from :func:`visible_keys`."""
        return self.log_s.exp() * n.clamp_min(2.0).log()


def softmax_jacobian(s: Tensor) -> Tensor:
    """The softmax Jacobian ``diag(s) - s s^T`` for a probability vector ``s`` of shape [..., n]."""
    return torch.diag_embed(s) - s.unsqueeze(-1) * s.unsqueeze(-2)
