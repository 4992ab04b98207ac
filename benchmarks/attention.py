"""Attention kernels: forward and forward+backward time, peak memory, ratio to torch SDPA.

Run by hand:  python benchmarks/attention.py [--lengths 128 512 2048] [--threads 2] [--no-memory]

Times are medians over repeats after one warm-up; "x sdpa" divides by the time of calling
``torch.nn.functional.scaled_dot_product_attention`` directly on the same inputs in the same run.
Peak memory is the growth of the peak resident set (VmHWM, reset before the call) of a fresh
child process that runs one forward+backward of that kind on inputs it has already built
(glibc's mmap threshold fixed at 128 KiB, so the resident set follows the live tensors).
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


def make(kind: str, b: int, h: int, length: int, d: int):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, length, d, generator=g, requires_grad=True) for _ in range(3))
    if kind == "sdpa":
        fn = sdpa
    elif kind == "naive":
        fn = naive
    else:
        fn = build_attention(kind, head_dim=d, n_heads=h, **PARAMS.get(kind, {}))
    return fn, (q, k, v)


def timed(fn, inputs, backward: bool, repeats: int) -> float:
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        out, _ = fn(*inputs)
        if backward:
            out.sum().backward()
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048])
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--kinds", nargs="+", default=KINDS)
    ap.add_argument("--no-memory", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, H={args.heads}, D={args.dim}, float32, CPU")
    print("B = 8 for L <= 512, B = 1 for longer; median of", args.repeats, "repeats after a warm-up")
    header = f"{'L':>5} {'B':>2} {'kind':<11} {'fwd ms':>9} {'fwd+bwd ms':>11} {'x sdpa':>7} {'peak MiB':>9}"
    print(header)
    print("-" * len(header))
    for length in args.lengths:
        b = 8 if length <= 512 else 1
        base = None
        for kind in args.kinds:
            fn, inputs = make(kind, b, args.heads, length, args.dim)
            reps = 1 if (kind == "additive" and length > 512) else args.repeats
            fwd = timed(fn, inputs, backward=False, repeats=reps)
            both = timed(fn, inputs, backward=True, repeats=reps)
            if kind == "sdpa":
                base = both
            ratio = f"{both / base:.2f}" if base else "-"
            mem = "-" if args.no_memory else f"{peak_mib(kind, b, args.heads, length, args.dim):.0f}"
            print(f"{length:>5} {b:>2} {kind:<11} {fwd * 1e3:>9.2f} {both * 1e3:>11.2f} {ratio:>7} {mem:>9}")


if __name__ == "__main__":
    main()
