"""Training throughput: `attn bench` on the default model and on larger ones, as one table.

Run by hand:  python benchmarks/training.py [--steps 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ATTN = shutil.which("attn") or str(Path(sys.executable).parent / "attn")
LARGE = ["model.d_model=256", "task.datamodule.max_len=256", "task.datamodule.batch_size=16"]
CONFIGS = {
    "default (d64, L32, B64)": [],
    "d256, L256, B16": LARGE,
    "d256, L256, B16, linear": [*LARGE, "attention=linear"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    env = {**os.environ, "WANDB_MODE": "disabled"}
    header = f"{'config':<28} {'plain ms':>9} {'light ms':>9} {'light/plain':>11} {'MFU':>6} {'data':>6}"
    print(header)
    print("-" * len(header))
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in CONFIGS.items():
            steps = args.steps if not overrides else max(5, args.steps // 5)
            cmd = [
                ATTN,
                "bench",
                "--json",
                "--steps",
                str(steps),
                "--rounds",
                str(args.rounds),
                "logger=none",
            ]
            out = subprocess.run(
                [*cmd, *overrides], cwd=tmp, env=env, capture_output=True, text=True, check=True
            )
            result = json.loads(out.stdout)
            p, lt, ratio = result["plain"], result["lightning"], result["lightning_over_plain"]
            print(
                f"{name:<28} {p['step_s'] * 1e3:>9.1f} {lt['step_s'] * 1e3:>9.1f} {ratio:>11.3f}"
                f" {p['mfu']:>6.1%} {p['data_share']:>6.1%}"
            )
    peak = result["matmul_peak_flops"]["float32"] / 1e9
    print(f"\nMFU of the plain loop against the measured float32 matmul peak ({peak:.0f} GFLOP/s),")
    print(f"{result['threads']} threads; data = the data share of the plain loop's step time")


if __name__ == "__main__":
    main()
