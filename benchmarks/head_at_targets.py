"""The next-token head at the target positions only, against over every position (issue 33), as one table.

Run by hand, with nothing else running:  python benchmarks/head_at_targets.py [--threads 2]

Zoology's MQAR models have a vocabulary of 8,192 tokens and a width of 64-512; the head
(``d_model x vocabulary``) over every position is most of a training step's work, where the loss reads the
query positions only (4 of 64 tokens at Zoology's (64, 4)). Per setting: one training step (forward,
cross-entropy, backward) of ``attn.models.sequence.SequenceModel`` as ``model=zoology`` builds it, with
the head over every position and then at the target positions only, timed in this run; the median of the
middle 80% of steps after a warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from attn.models.sequence import IGNORE, SequenceModel


def step_ms(net: SequenceModel, ids: torch.Tensor, y: torch.Tensor, at_targets: bool, steps: int) -> float:
    times = []
    asked = y != IGNORE
    for i in range(steps + 5):
        t0 = time.perf_counter()
        if at_targets:
            logits, _ = net(ids, at=asked)
            loss = F.cross_entropy(logits, y[asked])
        else:
            logits, _ = net(ids)
            loss = F.cross_entropy(logits.transpose(1, 2), y, ignore_index=IGNORE)
        loss.backward()
        net.zero_grad(set_to_none=True)
        if i >= 5:
            times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    cut = len(times) // 10
    return statistics.median(times[cut : len(times) - cut])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, vocabulary 8192")
    print("| length, pairs | d_model | all positions ms | targets only ms | ratio |")
    print("|---|---|---|---|---|")
    for (length, pairs), d in [((64, 4), 64), ((64, 4), 128), ((128, 8), 64), ((128, 8), 256)]:
        net = SequenceModel(8192, d_model=d, n_layers=2, n_heads=1, mlp_ratio=0, max_len=length,
                            positions="learned", tie_embeddings=True, padding=False)  # fmt: skip
        ids = torch.randint(0, 8192, (args.batch, length))
        y = torch.full((args.batch, length), IGNORE)
        where = torch.rand(args.batch, length - 2 * pairs).argsort(1)[:, :pairs] + 2 * pairs
        y.scatter_(1, where, torch.randint(4096, 8192, (args.batch, pairs)))
        full = step_ms(net, ids, y, False, args.steps)
        part = step_ms(net, ids, y, True, args.steps)
        print(f"| ({length}, {pairs}) | {d} | {full:.1f} | {part:.1f} | {part / full:.2f} |")


if __name__ == "__main__":
    main()
