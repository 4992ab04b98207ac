"""Sweep launchers: wall time of the same grid one after another and in parallel (joblib).

Run by hand:  python benchmarks/sweep.py [--n-jobs 2] [--epochs 2]

Runs ``attn sweep`` twice on the same 8 small trials (launcher=basic, then launcher=joblib), each in
a fresh temporary directory, and prints the wall times, their ratio and the mean per-trial overhead
(trial wall time minus the run's own ``duration_s``: process start, imports, logger, teardown).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = ["attention=scaled_dot,additive", "softmax.temperature=0.5,2", "seed=0,1"]
FIXED = ["model=small", "logger=csv", "baseline=false", "task.datamodule.n_train=1024"]


def run(launcher: list[str], epochs: int) -> tuple[float, float]:
    attn = shutil.which("attn") or str(Path(sys.executable).parent / "attn")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        subprocess.run(
            [attn, "sweep", *GRID, *FIXED, f"trainer.max_epochs={epochs}", *launcher, "--dir", f"{tmp}/s"],
            check=True,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "WANDB_MODE": "disabled"},
        )
        wall = time.perf_counter() - t0
        trials = json.loads(Path(tmp, "s", "sweep.json").read_text())["trials"]
    overhead = sum(t["wall_s"] - t["duration_s"] for t in trials) / len(trials)
    return wall, overhead


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    print(f"8 trials ({' '.join(GRID)}), {args.epochs} epochs each, {os.cpu_count()} cores")
    print(f"{'launcher':<18} {'wall s':>8} {'x basic':>8} {'overhead s/trial':>17}")
    base, over = run(["launcher=basic"], args.epochs)
    print(f"{'basic':<18} {base:>8.1f} {1.0:>8.2f} {over:>17.2f}")
    wall, over = run(["launcher=joblib", f"n_jobs={args.n_jobs}"], args.epochs)
    print(f"{f'joblib n_jobs={args.n_jobs}':<18} {wall:>8.1f} {wall / base:>8.2f} {over:>17.2f}")


if __name__ == "__main__":
    main()
