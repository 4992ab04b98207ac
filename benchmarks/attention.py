"""Attention kernels: forward and forward+backward time, peak memory, ratio to torch SDPA.

Run by hand:  python benchmarks/attention.py [--lengths 128 512 2048] [--threads 2] [--no-memory]
              python benchmarks/attention.py --device cuda --dtype bfloat16 --lengths 512 2048 8192

Times are medians over repeats after one warm-up; "x sdpa" divides by the time of calling
``torch.nn.functional.scaled_dot_product_attention`` directly on the same inputs in the same run.
Peak memory is the growth of the peak resident set (VmHWM, reset before the call) of a fresh
child process that runs one forward+backward of that kind on inputs it has already built
(glibc's mmap threshold fixed at 128 KiB, so the resident set follows the live tensors).
On CUDA, times are taken after ``torch.cuda.synchronize()`` and peak memory is the growth of
``torch.cuda.max_memory_allocated`` over one forward+backward in this process.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import statistics
import time

import torch
import torch.nn.functional as F

from attn.models.attention import build_attention

KINDS = ["sdpa", "naive", "dot", "scaled_dot", "general", "local", "additive", "linear", "sigmoid"]
PARAMS = {"local": {"window": 64}}


def naive(q, k, v, **_):
    """The textbook path: matmul, softmax, matmul."""
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return w @ v, None


def sdpa(q, k, v, **_):
    return F.scaled_dot_product_attention(q, k, v), None


def make(kind: str, b: int, h: int, length: int, d: int, device: str = "cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, length, d, generator=g).to(device, dtype).requires_grad_() for _ in range(3))
    if kind == "sdpa":
        fn = sdpa
    elif kind == "naive":
        fn = naive
    else:
        fn = build_attention(kind, head_dim=d, n_heads=h, **PARAMS.get(kind, {}))
        if isinstance(fn, torch.nn.Module):
            fn = fn.to(device, dtype)
    return fn, (q, k, v)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, inputs, backward: bool, repeats: int, device: str = "cpu") -> float:
    times = []
    for i in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        out, _ = fn(*inputs)
        if backward:
            out.float().sum().backward()
        _sync(device)
        if i:  # the first call is the warm-up
            times.append(time.perf_counter() - t0)
        for x in inputs:
            x.grad = None
    return statistics.median(times)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _child(kind, b, h, length, d, conn):
    torch.set_num_threads(1)
    fn, inputs = make(kind, b, h, length, d)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set (VmHWM) to the current one
    base = _status_kib("VmRSS")
    out, _ = fn(*inputs)
    out.sum().backward()
    conn.send(_status_kib("VmHWM") - base)


def peak_mib(kind, b, h, length, d) -> float:
    """Peak resident-memory growth of one forward+backward, in a fresh child process (Linux only).

    A fresh (spawned) process, because a forked one would reuse heap pages that the parent already
    holds resident and under-count; glibc's mmap threshold is fixed so that freed blocks leave the
    resident set.
    """
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_child, args=(kind, b, h, length, d, child))
    # Blocks over 128 KiB come from mmap and go back to the system when freed, so the resident set
    # tracks live tensors instead of glibc's heap high-water mark.
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
    try:
        p.start()
    finally:
        if saved is None:
            del os.environ["MALLOC_MMAP_THRESHOLD_"]
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = saved
    kib = parent.recv()
    p.join()
    return kib / 1024


def cuda_peak_mib(kind, b, h, length, d, dtype) -> float:
    """Growth of the CUDA allocator's peak over one forward+backward (inputs already built)."""
    fn, inputs = make(kind, b, h, length, d, "cuda", dtype)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out, _ = fn(*inputs)
    out.float().sum().backward()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048])
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--kinds", nargs="+", default=KINDS)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    print(f"torch {torch.__version__}, {where}, H={args.heads}, D={args.dim}, {args.dtype}")
    print("B = 8 for L <= 512, B = 1 for longer; median of", args.repeats, "repeats after a warm-up")
    header = f"{'L':>5} {'B':>2} {'kind':<11} {'fwd ms':>9} {'fwd+bwd ms':>11} {'x sdpa':>7} {'peak MiB':>9}"
    print(header)
    print("-" * len(header))
    for length in args.lengths:
        b = 8 if length <= 512 else 1
        base = None
        for kind in args.kinds:
            fn, inputs = make(kind, b, args.heads, length, args.dim, args.device, dtype)
            slow = kind == "additive" and length > 512 and args.device == "cpu"
            reps = 1 if slow else args.repeats
            fwd = timed(fn, inputs, backward=False, repeats=reps, device=args.device)
            both = timed(fn, inputs, backward=True, repeats=reps, device=args.device)
            if kind == "sdpa":
                base = both
            ratio = f"{both / base:.2f}" if base else "-"
            if args.no_memory:
                mem = "-"
            elif args.device == "cuda":
                mem = f"{cuda_peak_mib(kind, b, args.heads, length, args.dim, dtype):.0f}"
            else:
                mem = f"{peak_mib(kind, b, args.heads, length, args.dim):.0f}"
            print(f"{length:>5} {b:>2} {kind:<11} {fwd * 1e3:>9.2f} {both * 1e3:>11.2f} {ratio:>7} {mem:>9}")


if __name__ == "__main__":
    main()
