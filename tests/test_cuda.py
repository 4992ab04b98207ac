"""CUDA paths, skipped without a GPU: kinds on the GPU against the float64 CPU path, the fused path on
SDPA's flash and memory-efficient backends, bf16 autocast, and training with bf16 and with NCCL DDP.

The float64 CPU path is itself checked against plain loops in ``test_attention.py``; here each kind's
CUDA result is compared with it. CI has no GPU: these run on a GPU machine (``pytest -m cuda``).
"""

import math

import pytest
import torch

from attn.models.attention import MultiHeadAttention, build_attention
from attn.models.softmax import list_softmax
from attn.runner.config import load
from attn.runner.run import run

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device; run on a GPU machine"),
]

KINDS = ["dot", "scaled_dot", "general", "additive", "local", "linear", "sigmoid"]
NORMALISED = ["dot", "scaled_dot", "general", "additive", "local"]
PARAMS = {"local": {"window": 5}}


def _inputs(kind, b=2, h=4, lq=33, lk=40, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g, dtype=torch.float64) for n in (lq, lk, lk))
    fn = build_attention(kind, head_dim=d, n_heads=h, **PARAMS.get(kind, {}))
    if isinstance(fn, torch.nn.Module):
        fn = fn.double()
        with torch.no_grad():
            for p in fn.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) / math.sqrt(d))
    # Padding mask with one batch row whose last keys are hidden and one query row that sees nothing.
    mask = torch.ones(b, 1, lq, lk, dtype=torch.bool)
    mask[0, :, :, lk - 7 :] = False
    mask[1, :, 3, :] = False
    if kind == "linear":  # key padding only
        mask = torch.ones(b, 1, 1, lk, dtype=torch.bool)
        mask[0, :, :, lk - 7 :] = False
    return q, k, v, fn, mask


def _on(fn, device, dtype):
    if isinstance(fn, torch.nn.Module):
        import copy

        return copy.deepcopy(fn).to(device=device, dtype=dtype)
    return fn


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_float32_matches_float64_cpu(kind, causal):
    if kind == "linear" and causal:
        lq = lk = 40
    else:
        lq, lk = 33, 40
    q, k, v, fn, mask = _inputs(kind, lq=lq, lk=lk)
    ref, _ = fn(q, k, v, mask=mask, is_causal=causal, temperature=0.7)
    g = _on(fn, "cuda", torch.float32)
    qc, kc, vc = (t.to("cuda", torch.float32).requires_grad_() for t in (q, k, v))
    out, _ = g(qc, kc, vc, mask=mask.cuda(), is_causal=causal, temperature=0.7)
    torch.testing.assert_close(out.double().cpu(), ref, atol=2e-4, rtol=2e-4)
    out.square().sum().backward()
    for t in (qc, kc, vc):
        assert torch.isfinite(t.grad).all()


@pytest.mark.parametrize("softmax", list_softmax())
@pytest.mark.parametrize("kind", NORMALISED)
def test_cuda_softmax_variants_with_weights(kind, softmax):
    q, k, v, fn, mask = _inputs(kind)
    ref, ref_w = fn(q, k, v, mask=mask, softmax=softmax, temperature=0.5, need_weights=True)
    g = _on(fn, "cuda", torch.float32)
    out, w = g(*(t.to("cuda", torch.float32) for t in (q, k, v)), mask=mask.cuda(), softmax=softmax,
               temperature=0.5, need_weights=True)  # fmt: skip
    torch.testing.assert_close(out.double().cpu(), ref, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(w.double().cpu(), ref_w, atol=2e-5, rtol=2e-4)
    assert (w[1, :, 3] == 0).all()  # the query row that sees nothing: zero weights, no NaN


@pytest.mark.parametrize("causal", [False, True])
def test_fused_path_runs_on_the_flash_backend(causal):
    """With only the flash kernel allowed, attn's fused path (no mask, bf16) must still run."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v, fn, _ = _inputs("scaled_dot", lq=128, lk=128, d=64)
    ref, _ = fn(q, k, v, is_causal=causal, temperature=0.5)
    qc, kc, vc = (t.to("cuda", torch.bfloat16).requires_grad_() for t in (q, k, v))
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        out, _ = fn(qc, kc, vc, is_causal=causal, temperature=0.5, fused=True)
        out.float().square().sum().backward()
    torch.testing.assert_close(out.double().cpu(), ref, atol=3e-2, rtol=3e-2)
    assert all(torch.isfinite(t.grad).all() for t in (qc, kc, vc))


def test_fused_masked_path_runs_on_the_memory_efficient_backend():
    """Padding masks (flash takes none) go to the memory-efficient kernel, fully masked rows included."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v, fn, mask = _inputs("scaled_dot", lq=64, lk=64, d=64)
    ref, _ = fn(q, k, v, mask=mask, temperature=2.0)
    qc, kc, vc = (t.to("cuda", torch.float16).requires_grad_() for t in (q, k, v))
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
        out, _ = fn(qc, kc, vc, mask=mask.cuda(), temperature=2.0, fused=True)
        out.float().square().sum().backward()
    torch.testing.assert_close(out.double().cpu(), ref, atol=1e-2, rtol=1e-2)
    assert (out[1, :, 3] == 0).all()
    assert all(torch.isfinite(t.grad).all() for t in (qc, kc, vc))


@pytest.mark.parametrize("softmax", list_softmax())
@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_block_close_to_float32(kind, softmax):
    if kind in ("linear", "sigmoid") and softmax != "softmax":
        pytest.skip(f"{kind} has no softmax normaliser")
    torch.manual_seed(0)
    block = MultiHeadAttention(128, 4, kind, softmax=softmax, temperature=0.8, **PARAMS.get(kind, {}))
    block = block.cuda()
    x = torch.randn(4, 50, 128, device="cuda")
    pad = torch.ones(4, 1, 1, 50, dtype=torch.bool, device="cuda")
    pad[0, ..., 40:] = False
    ref, _ = block(x, mask=pad, is_causal=kind != "linear")
    xb = x.clone().requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, _ = block(xb, mask=pad, is_causal=kind != "linear")
    assert out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    assert torch.isfinite(xb.grad).all()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in block.parameters())
    err = (out.float() - ref).norm() / ref.norm()
    assert err < 3e-2, f"bf16 relative error {err:.3g}"


FAST = [
    "logger=none", "model=small", "task.datamodule.n_train=512", "task.datamodule.n_val=128",
    "task.datamodule.n_test=128", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
    "baseline=false",
]  # fmt: skip


@pytest.mark.parametrize("kind", ["scaled_dot", "additive"])
def test_train_on_gpu_with_bf16(kind):
    record, exc = run(load([*FAST, "trainer=gpu", "precision=bf16-mixed", f"attention={kind}"]))
    assert exc is None, exc
    assert record["status"] == "completed"
    assert record["device"]["device"].startswith("cuda") and record["device"]["precision"] == "bf16-mixed"
    assert record["metrics"]["train/steps"] > 0 and math.isfinite(record["metrics"]["test/loss"])


def test_ddp_on_gpu_uses_nccl():
    record, exc = run(load([*FAST, "trainer=ddp", "trainer.devices=1"]))
    assert exc is None, exc
    assert record["status"] == "completed"
    assert record["device"]["backend"] == "nccl", record["device"]
    assert record["device"]["strategy"] == "DDPStrategy"
