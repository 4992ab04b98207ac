"""What one MQAR trial spends outside training, and what the cuts of issue 36 save, as one table.

Run by hand, with nothing else running:  python benchmarks/trial_cost.py [--epochs 1]

Rows, each timed in this run (old and new side by side, so the ratios are of one machine at one time):
1. a whole trial from the command line, `attn train task=mqar logger=none trainer.max_epochs=E`, as a final
   trial runs it (baseline and 1x-8x evaluations) and as a tuning trial runs it now (`baseline=false
   task.eval_lengths=[]`: selection reads validation only);
2. the order-blind baseline: fitted, against read from the cache (one fit per data set);
3. the 1x-8x length evaluation: the attention entropy over every row then masked (the old way, inlined
   below) against over the scored rows only;
4. the per-step work: the training step as before (train/loss logged every step, AdamW's per-tensor
   loop) against now (logged on the steps the logger writes, AdamW's fused kernel), on the default MQAR
   model, mean of the middle 80% of steps.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ATTN = shutil.which("attn") or str(Path(sys.executable).parent / "attn")


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def old_attention_stats(weights, query_mask):
    """attention_stats before issue 36: every row in float64, masked afterwards."""
    w = weights.detach().double().clamp_min(0)
    total = w.sum(-1, keepdim=True)
    valid = total.squeeze(-1) > 0
    valid = valid & query_mask[:, None, :]
    p = w / total.clamp_min(1e-300)
    entropy = -(p * p.clamp_min(1e-300).log()).sum(-1)
    n = valid.sum(dim=(0, 2)).clamp_min(1)
    return {"entropy": (entropy * valid).sum(dim=(0, 2)) / n}


def step_times(tmp: str, steps: int = 300) -> tuple[float, float]:
    """Mean seconds per training step (steps 50 on, no validation) of the default MQAR model, with the
    training step as before (train/loss logged every step) and as now; interleaved, best of 3 each."""
    import lightning as L
    import torch
    from lightning.pytorch.loggers import CSVLogger

    from attn.models.sequence import SequenceModule
    from attn.runner import run as run_module
    from attn.runner.config import load

    class EveryStep(SequenceModule):  # the training step and optimiser before issue 36
        def configure_optimizers(self):
            fused = torch.optim.AdamW

            def per_tensor(*args, fused=None, foreach=None, **kwargs):  # the per-tensor loop, as before
                return fused_cls(*args, **kwargs)

            fused_cls, torch.optim.AdamW = fused, per_tensor
            try:
                return super().configure_optimizers()
            finally:
                torch.optim.AdamW = fused

        def training_step(self, batch, batch_idx):
            ids, y = batch
            logits, _ = self.net(ids)
            loss = self._loss(logits, y)
            self.check_loss(loss)
            self.log("train/loss", loss, prog_bar=True)
            if self._logging_step():
                asked = y != -100
                self.log("train/acc", (logits.argmax(-1) == y)[asked].float().mean(), prog_bar=True)
            return loss

    class Clock(L.Callback):
        def __init__(self):
            self.t: list[float] = []

        def on_train_batch_end(self, *args):
            self.t.append(time.perf_counter())

    cfg = load(["task=mqar", "logger=csv", "baseline=false"])
    results: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(3):
        for name in ("before", "after"):
            dm, module = run_module.build_data_and_module(cfg)
            if name == "before":
                module.__class__ = EveryStep
            clock = Clock()
            trainer = L.Trainer(
                max_steps=steps, limit_val_batches=0, logger=CSVLogger(tmp), callbacks=[clock],
                enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                log_every_n_steps=10, gradient_clip_val=1.0,
            )  # fmt: skip
            trainer.fit(module, datamodule=dm)
            gaps = sorted(b - a for a, b in zip(clock.t[50:], clock.t[51:], strict=False))
            cut = len(gaps) // 10
            middle = gaps[cut : len(gaps) - cut]
            results[name].append(sum(middle) / len(middle))
    return min(results["before"]), min(results["after"])


def cli_trial(tmp: str, epochs: int, lean: bool) -> float:
    env = {**os.environ, "WANDB_MODE": "disabled", "ATTN_CACHE_DIR": f"{tmp}/cache-{lean}-{time.time()}"}
    args = [ATTN, "train", "task=mqar", "logger=none", f"trainer.max_epochs={epochs}",
            "trainer.enable_progress_bar=false"]  # fmt: skip
    if lean:
        args += ["baseline=false", "task.eval_lengths=[]"]
    t0 = time.perf_counter()
    subprocess.run(args, cwd=tmp, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()
    import torch

    from attn.models.diagnostics import attention_stats
    from attn.models.sequence import IGNORE
    from attn.runner import run as run_module
    from attn.runner.config import load

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        full, lean = cli_trial(tmp, args.epochs, False), cli_trial(tmp, args.epochs, True)
        rows.append((f"trial, {args.epochs} epoch(s): final vs tuning (lean)", full, lean))
        os.environ["ATTN_CACHE_DIR"] = f"{tmp}/cache"
        cfg = load(["task=mqar", "logger=none"])
        dm, module = run_module.build_data_and_module(cfg)
        fit = timed(lambda: run_module._baseline(dm))
        run_module.cached_baseline(cfg, dm)  # fills the cache
        rows.append(
            ("order-blind baseline: fit vs cache", fit, timed(lambda: run_module.cached_baseline(cfg, dm)))
        )
        net = module.net.eval()
        old = new = 0.0
        for n in cfg.task.eval_lengths:
            ids, y = dm.at_length(n).tensors
            with torch.no_grad():
                for s in range(0, len(ids), dm.batch_size):
                    _, weights = net(ids[s : s + dm.batch_size], need_weights=True)
                    asked = y[s : s + dm.batch_size] != IGNORE
                    for w in weights:
                        old += timed(lambda w=w, asked=asked: old_attention_stats(w, asked))
                        new += timed(lambda w=w, asked=asked: attention_stats(w, asked))
        rows.append(("length-eval entropy, 1x-8x: all rows vs scored rows", old, new))
        before, after = step_times(tmp)
        rows.append(("training step: per-tensor AdamW, log every step vs fused, logged steps", before, after))
    print(f"{'what':<58} {'before s':>9} {'after s':>9} {'after/before':>13}")
    for what, before, after in rows:
        print(f"{what:<58} {before:>9.2f} {after:>9.2f} {after / before:>13.3f}")
    print(f"\n{torch.get_num_threads()} threads, torch {torch.__version__}")


if __name__ == "__main__":
    main()
