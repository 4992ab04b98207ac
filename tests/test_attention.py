"""Attention kinds: float64 references written plainly, masks, gradients, fused paths, the chapter."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attn.models.attention import (
    MultiHeadAttention,
    band_mask,
    build_attention,
    check_combination,
    get_attention,
    list_attention,
)
from attn.models.softmax import get_softmax

KINDS = ["dot", "scaled_dot", "general", "additive", "local", "linear", "sigmoid"]
# issue 34's additions (tests/test_modern_attention.py) beside the classic seven
ALL_KINDS = [*KINDS, "differential", "qknorm", "selective", "stick_breaking"]
NORMALISED = ["dot", "scaled_dot", "general", "additive", "local"]
SHAPES = [  # B, H, Lq, Lk, D
    (2, 3, 5, 7, 6),
    (1, 1, 4, 4, 5),
    (1, 2, 9, 3, 8),
    (3, 2, 6, 6, 3),
]
PARAMS = {"local": {"window": 3}, "linear": {"chunk_size": 4}}


def make(kind, shape, dtype=torch.float64, seed=0):
    """Inputs and the attention callable (modules get random, not identity, parameters)."""
    b, h, lq, lk, d = shape
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g, dtype=dtype) for n in (lq, lk, lk))
    fn = build_attention(kind, head_dim=d, n_heads=h, **PARAMS.get(kind, {}))
    if isinstance(fn, torch.nn.Module):
        fn = fn.to(dtype)
        with torch.no_grad():
            for p in fn.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) / math.sqrt(d))
    return q, k, v, fn


def reference(kind, fn, q, k, v, mask, causal, temperature, softmax="softmax", scale=None):
    """Plain float64 loops over batch, head and query; returns (out, weights)."""
    b, h, lq, d = q.shape
    lk = k.shape[2]
    fn = getattr(fn, "kind", fn)  # a score kind's parameters live on the kind inside the shared path
    out = torch.zeros(b, h, lq, v.shape[-1], dtype=torch.float64)
    weights = torch.zeros(b, h, lq, lk, dtype=torch.float64)
    full = torch.ones(b, h, lq, lk, dtype=torch.bool) if mask is None else mask.expand(b, h, lq, lk)
    if causal:
        full = full & torch.ones(lq, lk, dtype=torch.bool).tril()
    if kind == "local":
        full = full & band_mask(lq, lk, 3, causal=causal)
    for bi in range(b):
        for hi in range(h):
            for i in range(lq):
                visible = [j for j in range(lk) if full[bi, hi, i, j]]
                if not visible:
                    continue
                qi = q[bi, hi, i].double()
                if kind == "linear":
                    phi = lambda x: torch.where(x > 0, x + 1, torch.exp(x))  # noqa: E731
                    fq = phi(qi / temperature)
                    num = sum(fq.dot(phi(k[bi, hi, j])) * v[bi, hi, j] for j in visible)
                    den = sum(fq.dot(phi(k[bi, hi, j])) for j in visible)
                    out[bi, hi, i] = num / den
                    continue
                s = {}
                for j in visible:
                    kj = k[bi, hi, j].double()
                    if kind == "dot":
                        s[j] = qi.dot(kj) * (1.0 if scale is None else scale)
                    elif kind in ("scaled_dot", "local"):
                        s[j] = qi.dot(kj) / math.sqrt(d)
                    elif kind == "sigmoid":
                        s[j] = qi.dot(kj) / math.sqrt(d)
                    elif kind == "general":
                        s[j] = qi @ fn.weight[hi].double() @ kj
                    elif kind == "additive":
                        hid = torch.tanh(qi @ fn.w_q[hi].double() + kj @ fn.w_k[hi].double())
                        s[j] = fn.u[hi].double().dot(hid)
                if kind == "sigmoid":
                    w = {j: torch.sigmoid(s[j] / temperature - math.log(lk)) for j in visible}
                else:
                    z = torch.stack([s[j] for j in visible]) / temperature
                    p = get_softmax(softmax)(z) if softmax != "softmax" else torch.softmax(z, -1)
                    w = dict(zip(visible, p, strict=True))
                for j in visible:
                    weights[bi, hi, i, j] = w[j]
                    out[bi, hi, i] += w[j] * v[bi, hi, j]
    return out, weights


def test_registry():
    from attn.models.attention import BUILTIN_KINDS

    assert sorted(BUILTIN_KINDS) == sorted(ALL_KINDS)  # plugins' kinds of other tests may be registered too
    assert set(ALL_KINDS) <= set(list_attention())
    with pytest.raises(ValueError, match=r"unknown attention kind 'flash'; valid choices: additive"):
        get_attention("flash")
    assert isinstance(get_attention("general"), type) and isinstance(get_attention("additive"), type)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("causal", [False, True])
def test_float32_matches_float64_reference(kind, shape, causal):
    q, k, v, fn = make(kind, shape, seed=sum(shape))
    b, _h, _lq, lk, _d = shape
    pad = torch.rand(b, 1, 1, lk, generator=torch.Generator().manual_seed(3)) > 0.3
    pad[..., 0] = True
    for mask in (None, pad):
        ref_out, ref_w = reference(kind, fn, q, k, v, mask, causal, temperature=0.7)
        fn32 = fn.float() if isinstance(fn, torch.nn.Module) else fn
        need = kind != "linear"
        out, w = fn32(
            q.float(), k.float(), v.float(), mask=mask, is_causal=causal, temperature=0.7, need_weights=need
        )
        torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-5)
        if need:
            torch.testing.assert_close(w.double(), ref_w, rtol=1e-5, atol=1e-5)
        if isinstance(fn, torch.nn.Module):
            fn.double()


@pytest.mark.parametrize("kind", ["dot", "scaled_dot", "general", "additive", "local"])
@pytest.mark.parametrize("softmax", ["softmax1", "sparsemax", "entmax15"])
def test_softmax_variants_match_reference(kind, softmax):
    q, k, v, fn = make(kind, (2, 2, 4, 6, 5), seed=11)
    mask = torch.ones(1, 1, 1, 6, dtype=torch.bool)
    mask[..., 4:] = False
    ref_out, ref_w = reference(kind, fn, q, k, v, mask, False, temperature=0.5, softmax=softmax)
    out, w = fn(q, k, v, mask=mask, temperature=0.5, softmax=softmax, need_weights=True)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(w, ref_w)


@pytest.mark.parametrize("kind", KINDS)
def test_fully_masked_rows_zero_output_and_gradient(kind):
    q, k, v, fn = make(kind, (2, 2, 4, 5, 3), seed=5)
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    mask[1] = False  # the whole second batch element sees no key
    out, _ = fn(q, k, v, mask=mask)
    assert not torch.isnan(out).any()
    assert (out[1] == 0).all()
    out.sum().backward()
    for t in (q, k, v):
        assert not torch.isnan(t.grad).any()
    assert (q.grad[1] == 0).all() and (k.grad[1] == 0).all() and (v.grad[1] == 0).all()


@pytest.mark.parametrize("kind", NORMALISED)
def test_fully_masked_query_rows_fused_and_reference(kind):
    q, k, v, fn = make(kind, (1, 2, 4, 4, 3), seed=2)
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    mask[..., 2, :] = False  # query 2 sees nothing
    q = q.clone().requires_grad_()
    for need in (False, True):
        out, _ = fn(q, k, v, mask=mask, need_weights=need)
        assert (out[..., 2, :] == 0).all() and not torch.isnan(out).any()
        (g,) = torch.autograd.grad(out.sum(), q)
        assert (g[..., 2, :] == 0).all() and not torch.isnan(g).any()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck(kind, causal):
    q, k, v, fn = make(kind, (1, 2, 4, 5, 3), seed=9)
    mask = torch.ones(1, 1, 1, 5, dtype=torch.bool)
    mask[..., 3] = False
    inputs = tuple(t.clone().requires_grad_() for t in (q, k, v))

    def f(q, k, v):
        return fn(q, k, v, mask=mask, is_causal=causal, temperature=0.8)[0]

    assert torch.autograd.gradcheck(f, inputs)
    if isinstance(fn, torch.nn.Module) and list(fn.parameters()):  # and the kind's own parameters
        params = list(fn.parameters())

        def g(*ps):
            with torch.nn.utils.stateless._reparametrize_module(
                fn, dict(zip(dict(fn.named_parameters()), ps, strict=True))
            ):
                return f(*(t.detach() for t in inputs))

        assert torch.autograd.gradcheck(g, tuple(p.detach().clone().requires_grad_() for p in params))


@pytest.mark.parametrize("kind", ["dot", "scaled_dot", "general", "local"])
def test_fused_path_equals_reference_path(kind):
    q, k, v, fn = make(kind, (2, 2, 6, 6, 4), seed=4)
    mask = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(0)) > 0.3
    for causal in (False, True):
        fused, none = fn(q, k, v, mask=mask, is_causal=causal, temperature=0.6)
        assert none is None
        ref, w = fn(q, k, v, mask=mask, is_causal=causal, temperature=0.6, need_weights=True)
        torch.testing.assert_close(fused, ref)
        assert w is not None


def test_fused_uses_sdpa_with_temperature_in_scale(monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("scale"))
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    q = k = v = torch.randn(1, 1, 3, 16)
    build_attention("scaled_dot", head_dim=q.shape[-1])(q, k, v, temperature=2.0)
    build_attention("dot", head_dim=q.shape[-1])(q, k, v, temperature=4.0)
    build_attention("scaled_dot", head_dim=q.shape[-1])(
        q, k, v, softmax="sparsemax"
    )  # reference path: no call
    build_attention("scaled_dot", head_dim=q.shape[-1])(q, k, v, need_weights=True)  # reference path: no call
    assert calls == [pytest.approx(1 / (2.0 * 4)), pytest.approx(0.25)]


def test_fused_true_rejects_impossible_requests():
    q = k = v = torch.randn(1, 1, 3, 4)
    with pytest.raises(ValueError, match="fused attention needs softmax=softmax"):
        build_attention("scaled_dot", head_dim=q.shape[-1])(q, k, v, softmax="sparsemax", fused=True)
    with pytest.raises(ValueError, match="fused"):
        check_combination("scaled_dot", softmax="entmax15", params={"fused": True})


def test_tensor_temperature_fused_equals_reference():
    q, k, v, fn = make("scaled_dot", (2, 3, 5, 5, 4))
    t = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64).view(3, 1, 1)
    a, _ = fn(q, k, v, temperature=t)
    b, _ = fn(q, k, v, temperature=t, need_weights=True)
    torch.testing.assert_close(a, b)
    c, _ = fn(q[:, :1], k[:, :1], v[:, :1], temperature=0.5)
    torch.testing.assert_close(a[:, :1], c)


def test_chapter_worked_example():
    """SEED_NOTES error 1: X = [[1,0,1],[0,1,0],[1,1,0]], h = [1,1,1]."""
    x = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 0]], dtype=torch.float64)
    h = torch.tensor([1.0, 1, 1], dtype=torch.float64)
    q, kv = h.view(1, 1, 1, 3), x.view(1, 1, 3, 3)
    out, w = build_attention("dot", head_dim=q.shape[-1])(q, kv, kv, need_weights=True)
    torch.testing.assert_close(
        (kv @ q.transpose(-1, -2)).flatten(), torch.tensor([2.0, 1, 2], dtype=torch.float64)
    )
    e = math.e
    expected_w = torch.tensor([e**2, e, e**2], dtype=torch.float64) / (2 * e**2 + e)
    torch.testing.assert_close(w.flatten(), expected_w)
    torch.testing.assert_close(
        w.flatten(), torch.tensor([0.422319, 0.155362, 0.422319], dtype=torch.float64), atol=1e-6, rtol=0
    )
    ctx = torch.tensor([0.844638, 0.577681, 0.422319], dtype=torch.float64)
    torch.testing.assert_close(out.flatten(), ctx, atol=1e-6, rtol=0)
    fused, _ = build_attention("dot", head_dim=q.shape[-1])(q, kv, kv)
    torch.testing.assert_close(fused.flatten(), ctx, atol=1e-6, rtol=0)


def test_local_window_band():
    m = band_mask(5, 5, 2)
    assert m.tolist()[2] == [False, True, True, True, False]
    mc = band_mask(5, 5, 2, causal=True)
    assert mc.tolist()[2] == [False, True, True, False, False]
    with pytest.raises(ValueError, match="window >= 1"):
        check_combination("local", params={"window": 0})


def test_additive_chunking_matches_whole_and_bounds_memory():
    q, k, v, fn = make("additive", (2, 2, 33, 17, 4), dtype=torch.float32)
    q.requires_grad_()
    whole, _ = fn(q, k, v)
    (g_whole,) = torch.autograd.grad(whole.sum(), q)
    fn.kind.chunk_elems = 2 * 2 * 17 * 4 * 5  # 5 queries per chunk
    seen = []
    real = fn.kind._scores
    fn.kind._scores = lambda wq, uk: seen.append(wq.shape[2]) or real(wq, uk)
    chunked, _ = fn(q, k, v)
    (g_chunk,) = torch.autograd.grad(chunked.sum(), q)
    assert max(seen) == 5
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(g_chunk, g_whole)


def test_linear_causal_chunks_match_quadratic_form():
    q, k, v, _ = make("linear", (2, 2, 13, 13, 4))
    fn = get_attention("linear")
    a, _ = fn(q, k, v, is_causal=True, chunk_size=4)
    b, _ = fn(q, k, v, is_causal=True, chunk_size=64)
    torch.testing.assert_close(a, b)
    phi = lambda x: F.elu(x) + 1  # noqa: E731
    sim = (phi(q) @ phi(k).transpose(-1, -2)).tril()
    torch.testing.assert_close(a, (sim @ v) / sim.sum(-1, keepdim=True))


@pytest.mark.parametrize(
    "kind, kwargs, message",
    [
        ("linear", {"softmax": "sparsemax"}, "has no softmax normaliser"),
        ("sigmoid", {"softmax": "entmax15"}, "has no softmax normaliser"),
        ("linear", {"need_weights": True}, "never forms a weight matrix"),
        ("linear", {"dropout_p": 0.1}, "no weights to drop"),
        ("scaled_dot", {"dropout_p": 1.0}, "dropout must be in"),
        ("scaled_dot", {"params": {"window": 3}}, "takes no parameter 'window'"),
    ],
)
def test_incompatible_combinations_rejected(kind, kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_combination(kind, **kwargs)


def test_linear_rejects_non_key_padding_mask():
    q = k = v = torch.randn(1, 1, 3, 2)
    with pytest.raises(ValueError, match="key-padding masks only"):
        build_attention("linear", head_dim=q.shape[-1])(
            q, k, v, mask=torch.ones(1, 1, 3, 3, dtype=torch.bool)
        )


def test_bad_inputs():
    q = torch.randn(1, 1, 3, 4)
    with pytest.raises(ValueError, match="mask must be boolean"):
        build_attention("scaled_dot", head_dim=q.shape[-1])(q, q, q, mask=torch.ones(1, 1, 3, 3))
    with pytest.raises(ValueError, match=r"must be \[B, H, L, D\]"):
        build_attention("dot", head_dim=q.shape[-1])(q[0], q[0], q[0])
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got -1"):
        build_attention("scaled_dot", head_dim=q.shape[-1])(q, q, q, temperature=-1)


@pytest.mark.parametrize("kind", KINDS)
def test_multihead_block_gqa_and_learnable_temperature(kind):
    torch.manual_seed(0)
    params = PARAMS.get(kind, {})
    mha = MultiHeadAttention(16, 4, kind, n_kv_heads=2, temperature="learnable", **params)
    x = torch.randn(2, 7, 16)
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[0, ..., 5:] = False
    out, _ = mha(x, mask=mask, is_causal=True)
    assert out.shape == (2, 7, 16)
    out.sum().backward()
    assert mha.learned_temperature.log_t.grad is not None
    assert torch.isfinite(mha.learned_temperature.log_t.grad).all()
    cross = MultiHeadAttention(16, 4, kind, cross=True, **params)
    out, _ = cross(x[:, :3], x, mask=mask)
    assert out.shape == (2, 3, 16)


def test_multihead_gqa_equals_repeated_heads():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 4, "scaled_dot", n_kv_heads=1)
    x = torch.randn(1, 5, 8)
    out, _ = mha(x)
    q, k, v = mha.qkv_proj(x).split([8, 2, 2], dim=-1)
    q = q.view(1, 5, 4, 2).transpose(1, 2)
    k, v = (t.view(1, 5, 1, 2).transpose(1, 2).expand(1, 4, 5, 2) for t in (k, v))
    ref = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, 5, 8)
    torch.testing.assert_close(out, mha.out_proj(ref))


def test_multihead_rejects_bad_heads():
    with pytest.raises(ValueError, match="n_heads=3 must divide d_model=16"):
        MultiHeadAttention(16, 3)
    with pytest.raises(ValueError, match="n_kv_heads=3 must divide n_heads=4"):
        MultiHeadAttention(16, 4, n_kv_heads=3)


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(NORMALISED),
    softmax=st.sampled_from(["softmax", "softmax1", "sparsemax", "entmax15"]),
    b=st.integers(1, 2),
    h=st.integers(1, 3),
    lq=st.integers(1, 7),
    lk=st.integers(1, 7),
    d=st.integers(1, 6),
    t=st.floats(0.05, 10.0),
    causal=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_property_weights_rows_sum_to_one_or_zero(kind, softmax, b, h, lq, lk, d, t, causal, seed):
    q, k, v, fn = make(kind, (b, h, lq, lk, d), dtype=torch.float32, seed=seed)
    mask = torch.rand(b, 1, lq, lk, generator=torch.Generator().manual_seed(seed)) > 0.3
    out, w = fn(q, k, v, mask=mask, is_causal=causal, temperature=t, softmax=softmax, need_weights=True)
    assert not torch.isnan(out).any() and not torch.isnan(w).any()
    visible = mask.expand(b, h, lq, lk)
    if causal:
        visible = visible & torch.ones(lq, lk, dtype=torch.bool).tril()
    if kind == "local":
        visible = visible & band_mask(lq, lk, 3)
    expect = visible.any(-1).float()
    if softmax == "softmax1":
        assert (w.sum(-1) <= 1 + 1e-5).all() and (w.sum(-1)[expect == 0] == 0).all()
    else:
        torch.testing.assert_close(w.sum(-1), expect, atol=1e-5, rtol=0)
    assert (w[~visible] == 0).all()
