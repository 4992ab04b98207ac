"""Position encodings (RoPE, ALiBi, none) and length-scaled temperatures (logn, ssmax) against plain float64
references: formulas, masks, fully masked rows, fused against reference, gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from attn.models.attention import MultiHeadAttention, build_attention, check_positions
from attn.models.positions import alibi_bias, alibi_slopes, rope_rotate
from attn.models.softmax import ScalableSoftmax, logn_scale, visible_keys
from attn.runner.config import load
from attn.runner.errors import ConfigError

D64 = torch.float64


def rope_reference(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """RoFormer's rotation written out: each pair (2i, 2i+1) at position m times a 2 x 2 rotation."""
    out = torch.empty_like(x)
    length, dim = x.shape[-2], x.shape[-1]
    for m in range(length):
        for i in range(dim // 2):
            a = m * base ** (-2 * i / dim)
            c, s = math.cos(a), math.sin(a)
            x0, x1 = x[..., m, 2 * i], x[..., m, 2 * i + 1]
            out[..., m, 2 * i] = c * x0 - s * x1
            out[..., m, 2 * i + 1] = s * x0 + c * x1
    return out


def test_rope_matches_the_rotation_and_scores_depend_on_the_offset_only():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 8, dtype=D64)
    assert torch.allclose(rope_rotate(x), rope_reference(x), atol=1e-12)
    q, k = torch.randn(8, dtype=D64), torch.randn(8, dtype=D64)
    seq_q, seq_k = q.expand(12, 8).clone(), k.expand(12, 8).clone()  # the same vectors at every position
    scores = rope_rotate(seq_q) @ rope_rotate(seq_k).T  # [m, n]
    for shift in (1, 3):  # q_m . k_n == q_{m+s} . k_{n+s}
        assert torch.allclose(scores[:-shift, :-shift], scores[shift:, shift:], atol=1e-10)
    assert torch.allclose(rope_rotate(x).norm(dim=-1), x.norm(dim=-1))  # a rotation keeps lengths
    with pytest.raises(ValueError, match="must be even"):
        rope_rotate(torch.randn(1, 1, 3, 5))


@pytest.mark.parametrize(
    "heads, slopes",
    [
        (2, [2**-4, 2**-8]),
        (4, [2**-2, 2**-4, 2**-6, 2**-8]),
        (8, [2.0**-h for h in range(1, 9)]),
        (6, [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]),  # the paper's rule when H is not a power of two
    ],
)
def test_alibi_slopes_are_the_papers(heads, slopes):
    assert torch.allclose(alibi_slopes(heads).double(), torch.tensor(slopes, dtype=D64))


def test_alibi_bias_is_minus_slope_times_distance():
    bias = alibi_bias(4, 3, 5)
    m = alibi_slopes(4)
    for h in range(4):
        for i in range(3):
            for j in range(5):
                assert bias[h, i, j] == pytest.approx(-float(m[h]) * abs(i - j))


def plain_attention(q, k, v, bias, mask, factor=None):
    """softmax(q.k / sqrt(D) * factor + bias) v in float64 (the factor scales q.k, never the position bias),
    masked keys at -inf, empty rows zero."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if factor is not None:
        scores = scores * factor
    scores = scores + bias
    scores = scores.masked_fill(~mask, float("-inf"))
    rows = mask.any(-1, keepdim=True)
    w = torch.softmax(scores.masked_fill(~rows, 0.0), dim=-1) * rows
    return w @ v, w


def masks(lq: int, lk: int) -> torch.Tensor:
    keep = torch.ones(2, 1, 1, lk, dtype=torch.bool)
    keep[1, ..., 3:] = False
    keep[1, ..., :] = keep[1] & (torch.arange(lk) < 3)
    return keep


@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("causal", [False, True])
def test_alibi_in_scaled_dot_matches_the_plain_formula_with_masks(fused, causal):
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 4, 6, 8, dtype=D64) for _ in range(3))
    keep = masks(6, 6)
    keep[0, ..., :] = False  # a fully masked batch row: zero output, no NaN
    bias = alibi_bias(4, 6, 6).double()
    full = keep & (torch.ones(6, 6, dtype=torch.bool).tril() if causal else True)
    ref, w_ref = plain_attention(q, k, v, bias, full)
    out, _ = build_attention("scaled_dot", head_dim=q.shape[-1])(
        q, k, v, mask=keep, is_causal=causal, fused=fused, position_bias=bias
    )
    assert torch.allclose(out, ref, atol=1e-10) and torch.isfinite(out).all()
    _, w = build_attention("scaled_dot", head_dim=q.shape[-1])(
        q, k, v, mask=keep, is_causal=causal, need_weights=True, position_bias=bias
    )
    assert torch.allclose(w, w_ref, atol=1e-12)


def test_alibi_with_a_temperature_divides_the_whole_logit_fused_or_not():
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, 2, 5, 4, dtype=D64) for _ in range(3))
    bias = alibi_bias(2, 5, 5).double()
    t = torch.tensor([0.5, 2.0], dtype=D64)[:, None, None]
    # a fixed temperature divides q.k and the bias alike: softmax((q.k / sqrt(D) + b) / T)
    ref, _ = plain_attention(q, k, v, bias / t, torch.ones(5, 5, dtype=torch.bool), factor=1 / t)
    for fused in (None, False):
        out, _ = build_attention("scaled_dot", head_dim=q.shape[-1])(
            q, k, v, temperature=t, fused=fused, position_bias=bias
        )
        assert torch.allclose(out, ref, atol=1e-10)


def test_visible_keys_count_padding_and_causality():
    keep = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)[:, None, None, :]
    n = visible_keys(keep, True, 4, 4)
    assert n[..., 0].squeeze(1).tolist() == [[1, 2, 3, 4], [1, 2, 2, 2]]
    assert visible_keys(None, False, 3, 7).flatten().tolist() == [7, 7, 7]
    assert visible_keys(keep, False, 2, 4)[..., 0].squeeze(1).tolist() == [[4, 4], [2, 2]]


def test_logn_and_ssmax_follow_their_formulas():
    n = torch.tensor([1.0, 2.0, 8.0, 16.0, 64.0], dtype=D64)
    assert torch.allclose(
        logn_scale(n, 16), torch.tensor([1, 1, 1, 1, math.log(64) / math.log(16)], dtype=D64)
    )
    ss = ScalableSoftmax(3, 16).double()
    factor = ss(n[None, None, :, None])
    assert factor.shape == (1, 3, 5, 1)
    expected = torch.tensor([math.log(2), math.log(2), math.log(8), math.log(16), math.log(64)]) / math.log(
        16
    )
    assert torch.allclose(factor[0, 0, :, 0], expected.double())  # 1 at the training length 16
    with pytest.raises(ValueError, match="training length"):
        ScalableSoftmax(2, 1)


@pytest.mark.parametrize("rule", ["logn", "ssmax"])
@pytest.mark.parametrize("fused", [None, False])
def test_length_scaled_temperature_in_the_block_matches_the_formula(rule, fused):
    torch.manual_seed(3)
    mha = MultiHeadAttention(16, 4, "scaled_dot", temperature=rule, train_len=3, fused=fused).double()
    if rule == "ssmax":
        with torch.no_grad():
            mha.ssmax.log_s.copy_(torch.tensor([0.1, -0.3, 0.2, 0.0], dtype=D64)[:, None, None])
    x = torch.randn(2, 6, 16, dtype=D64)
    keep = masks(6, 6)
    out, _ = mha(x, mask=keep, is_causal=True)
    # the same block by hand
    q, k, v = mha.qkv_proj(x).split([16, 16, 16], dim=-1)
    q, k, v = (t.view(2, 6, 4, 4).transpose(1, 2) for t in (q, k, v))
    full = keep & torch.ones(6, 6, dtype=torch.bool).tril()
    n = full.sum(-1, keepdim=True).double()
    if rule == "logn":
        factor = (n.clamp_min(1).log() / math.log(3)).clamp_min(1)
    else:
        factor = mha.ssmax.log_s.exp() * n.clamp_min(2).log()
    ref, _ = plain_attention(q, k, v, torch.zeros(()), full, factor)
    ref = mha.out_proj(ref.transpose(1, 2).reshape(2, 6, 16))
    assert torch.allclose(out, ref, atol=1e-10) and torch.isfinite(out).all()


@pytest.mark.parametrize("rule", ["logn", "ssmax"])
@pytest.mark.parametrize("fused", [None, False])
def test_length_scaled_temperature_scales_q_k_and_leaves_alibi_alone(rule, fused):
    """Issue 32 §20: with ALiBi, log-n (and Scalable-Softmax) multiply q.k only, as Qwen's rule scales the
    query; the ALiBi slopes keep their steepness at every length."""
    torch.manual_seed(6)
    kwargs = {"temperature": rule, "train_len": 3, "positions": "alibi", "fused": fused}
    mha = MultiHeadAttention(8, 2, "scaled_dot", **kwargs).double()
    x = torch.randn(2, 12, 8, dtype=D64)
    out, _ = mha(x, is_causal=True)
    q, k, v = mha.qkv_proj(x).split([8, 8, 8], dim=-1)
    q, k, v = (t.view(2, 12, 2, 4).transpose(1, 2) for t in (q, k, v))
    full = torch.ones(12, 12, dtype=torch.bool).tril()
    n = full.sum(-1, keepdim=True).double()
    if rule == "logn":
        factor = (n.log() / math.log(3)).clamp_min(1)
    else:
        factor = mha.ssmax.log_s.exp() * n.clamp_min(2).log()
    ref, _ = plain_attention(q, k, v, alibi_bias(2, 12, 12).double(), full, factor)
    ref = mha.out_proj(ref.transpose(1, 2).reshape(2, 12, 8))
    assert torch.allclose(out, ref, atol=1e-10)
    scaled_bias, _ = plain_attention(q, k, v, alibi_bias(2, 12, 12).double() * factor, full, factor)
    assert not torch.allclose(out, mha.out_proj(scaled_bias.transpose(1, 2).reshape(2, 12, 8)), atol=1e-6)


def test_logn_is_scored_from_a_t1_checkpoint_and_equals_a_logn_model():
    """A temperature=logn model is the T = 1 model (the factor is 1 up to the training length): scoring a
    T = 1 model with the logn rule (task.eval_logn) gives what the logn model gives."""
    from torch.utils.data import TensorDataset

    from attn.models.sequence import SequenceModel, evaluate_at_lengths

    torch.manual_seed(0)
    ids = torch.randint(1, 20, (8, 24))
    data = {n: TensorDataset(ids[:, :n], ids[:, :n].roll(1, dims=1)) for n in (12, 24)}
    net = {"d_model": 16, "n_layers": 2, "n_heads": 2, "max_len": 24, "positions": "alibi"}
    plain = SequenceModel(20, **net, attention={"kind": "scaled_dot", "temperature": 1.0, "train_len": 12})
    logn = SequenceModel(20, **net, attention={"kind": "scaled_dot", "temperature": "logn", "train_len": 12})
    logn.load_state_dict(plain.state_dict())
    scored = evaluate_at_lengths(plain, data, logn=True)
    direct = evaluate_at_lengths(logn, data)
    for length in (12, 24):
        assert scored[f"test/logn_acc@{length}"] == direct[f"test/acc@{length}"]
        assert scored[f"test/logn_entropy@{length}/l1"] == pytest.approx(direct[f"test/entropy@{length}/l1"])
    assert scored["test/logn_acc@12"] == scored["test/acc@12"]  # the same model up to the training length
    assert scored["test/logn_entropy@24/l1"] != scored["test/entropy@24/l1"]
    assert all(m.rule is None for m in plain.modules() if hasattr(m, "rule"))  # switched back


@pytest.mark.parametrize(
    "kind, positions, temperature",
    [
        ("scaled_dot", "alibi", "ssmax"),
        ("scaled_dot", "rope", "logn"),
        ("additive", "alibi", 1.0),
        ("sigmoid", "alibi", "logn"),
        ("linear", "rope", "ssmax"),
        ("local", "alibi", 1.0),
        ("general", "rope", "ssmax"),
    ],
)
def test_gradcheck_through_the_block(kind, positions, temperature):
    torch.manual_seed(4)
    params = {"window": 2} if kind == "local" else {}
    mha = MultiHeadAttention(8, 2, kind, positions=positions, temperature=temperature, train_len=3, **params)
    mha = mha.double()
    x = torch.randn(2, 4, 8, dtype=D64, requires_grad=True)
    keep = torch.ones(2, 1, 1, 4, dtype=torch.bool)
    keep[1, ..., 2:] = False
    assert torch.autograd.gradcheck(lambda t: mha(t, mask=keep, is_causal=True)[0], (x,), atol=1e-6)


@pytest.mark.parametrize("softmax", ["softmax1", "sparsemax", "entmax15"])
def test_every_normaliser_takes_the_length_scaled_temperatures(softmax):
    torch.manual_seed(5)
    for rule in ("logn", "ssmax"):
        mha = MultiHeadAttention(8, 2, "scaled_dot", softmax=softmax, temperature=rule, train_len=2).double()
        _, w = mha(torch.randn(2, 7, 8, dtype=D64), is_causal=True, need_weights=True)
        assert torch.isfinite(w).all() and torch.all(w.triu(1) == 0)


def test_rope_and_alibi_leave_cross_attention_alone():
    mha = MultiHeadAttention(8, 2, "scaled_dot", positions="alibi", cross=True)
    assert mha.positions == "none"


def test_impossible_position_combinations_are_one_line_config_errors():
    with pytest.raises(ValueError, match="attention 'linear' has none to add it to"):
        check_positions("linear", "alibi")
    with pytest.raises(ConfigError, match=r"positions=alibi .* attention 'linear'"):
        load(["attention=linear", "model.positions=alibi"])
    with pytest.raises(ConfigError, match="head size 3 must be even"):
        load(["model.d_model=12", "model.n_heads=4", "model.positions=rope"])
    with pytest.raises(ConfigError, match=r"model\.positions='learnt' is unknown; valid choices: sinusoidal"):
        load(["model.positions=learnt"])
    cfg = load(["task=mqar", "model.positions=alibi", "softmax.temperature=ssmax"])
    assert cfg.model.positions == "alibi" and cfg.softmax.temperature == "ssmax"


def test_sinusoidal_stays_the_default_and_adds_the_same_table():
    from attn.models.positions import sinusoidal_positions
    from attn.models.transformer import Encoder

    enc = Encoder(d_model=16, n_heads=2, max_len=10)
    x = torch.zeros(1, 4, 16)
    assert torch.equal(enc.embed_positions(x), sinusoidal_positions(10, 16)[:4][None])
    assert torch.equal(Encoder(d_model=16, n_heads=2, max_len=10, positions="rope").embed_positions(x), x)
    assert load([]).model.positions == "sinusoidal"
