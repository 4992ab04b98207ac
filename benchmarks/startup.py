"""Start-up: `attn --help`, a fast_dev_run from start to exit, and the import time per package.

Run by hand:  python benchmarks/startup.py [--repeats 5]

Import times come from ``python -X importtime`` on the fast_dev_run: the cumulative time of each
top-level import, grouped by package (a package imported inside another is counted there).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ATTN = shutil.which("attn") or str(Path(sys.executable).parent / "attn")
FAST = ["train", "debug=fast_dev_run", "logger=none"]


def wall(cmd: list[str], repeats: int, cwd: str) -> float:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def import_times(cwd: str) -> list[tuple[str, float]]:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-X", "importtime", "-m", "attn.cli.main", *FAST]
    err = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=True).stderr
    totals: collections.Counter[str] = collections.Counter()
    for line in err.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( +)(\S+)", line)
        if m and len(m[2]) == 1:  # imported at the top level, not from within another package
            totals[m[3].split(".")[0]] += int(m[1])
    return [(name, us / 1e6) for name, us in totals.most_common(8)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'command':<48} {'median s':>9}")
        print(f"{'attn --help':<48} {wall([ATTN, '--help'], args.repeats, tmp):>9.2f}")
        fast = wall([ATTN, *FAST], max(1, args.repeats // 2), tmp)
        print(f"{'attn ' + ' '.join(FAST):<48} {fast:>9.2f}")
        print()
        print(f"{'package (import time in the fast_dev_run)':<48} {'s':>9}")
        for name, seconds in import_times(tmp):
            print(f"{name:<48} {seconds:>9.2f}")
        print("wandb imported with logger=none:", "no" if "wandb" not in dict(import_times(tmp)) else "yes")


if __name__ == "__main__":
    main()
