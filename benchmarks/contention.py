"""Runs next to other work: wall time as shipped (torch's threads) and with attn's thread policy.

Run by hand, on an otherwise idle machine:
    python benchmarks/contention.py [--repeats 1] [--only default,d256] [--scenes alone,...] [--no-sweep]

For the default classification run (60 training batches, as in issue 17) and the d256/L256 model, it
times ``attn train`` from start to exit:

* alone;
* next to 1 and 2 busy processes (a pure-Python CPU loop each, started and stopped here);
* two identical runs started at once (the mean of the two);

once with ``threads=torch`` (torch's own defaults: every core, OpenMP threads that spin: attn before
its thread policy) and once with ``threads=auto`` (the policy), interleaved, so that each ratio is
against a baseline measured in the same run. Then the sweep benchmark's 8 trials with
``launcher=joblib n_jobs=2`` and ``launcher=basic`` under both settings. Prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from attn.runner.machine import cpu_name

ATTN = shutil.which("attn") or str(Path(sys.executable).parent / "attn")
COMMON = ["logger=none", "baseline=false", "diagnostics.enabled=false", "trainer.enable_progress_bar=false"]
MODELS = {
    "default": ["trainer.max_epochs=1", "trainer.limit_train_batches=60"],
    "d256": [
        "model.d_model=256", "task.datamodule.max_len=256", "task.datamodule.batch_size=16",
        "trainer.max_epochs=1", "trainer.limit_train_batches=20", "trainer.limit_val_batches=5",
        "trainer.limit_test_batches=5",
    ],
}  # fmt: skip
POLICIES = {"as shipped": "threads=torch", "attn policy": "threads=auto"}
SCENES = ("alone", "+1 busy", "+2 busy", "2 at once")
SWEEP_GRID = ["attention=scaled_dot,additive", "softmax.temperature=0.5,2", "seed=0,1"]
SWEEP_FIXED = [
    "model=small", "logger=csv", "baseline=false", "task.datamodule.n_train=1024", "trainer.max_epochs=2",
]  # fmt: skip


def _env() -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    for key in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "ATTN_CPUS", "ATTN_RUN_DIR"):
        env.pop(key, None)  # measure the policies, not this shell's settings
    return env


def _busy(n: int) -> list[subprocess.Popen]:
    loop = "while True:\n    pass"
    return [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(n)]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
        p.wait()


def _train(args: list[str], n: int, cwd: str) -> list[float]:
    """Start ``n`` identical runs at once; each one's wall seconds from start to exit."""
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [ATTN, "train", *args], cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        for _ in range(n)
    ]
    walls = []
    for p in procs:
        _, err = p.communicate()
        walls.append(time.perf_counter() - t0)
        if p.returncode != 0:
            raise SystemExit(f"attn train {' '.join(args)} failed:\n{err.decode()[-2000:]}")
    return walls


def _threads_of(cwd: str) -> str:
    """The thread plan the last run recorded."""
    record = sorted(Path(cwd).glob("runs/*/results.json"), key=os.path.getmtime)[-1]
    plan = json.loads(record.read_text()).get("threads") or {}
    return str(plan.get("threads") or "torch")


def scene(model: str, policy: str, name: str, cwd: str) -> tuple[float, str]:
    args = [*COMMON, *MODELS[model], POLICIES[policy]]
    busy = _busy({"+1 busy": 1, "+2 busy": 2}.get(name, 0))
    try:
        time.sleep(0.5 if busy else 0)  # let the busy loops start
        walls = _train(args, 2 if name == "2 at once" else 1, cwd)
    finally:
        _stop(busy)
    return statistics.mean(walls), _threads_of(cwd)


def sweep(launcher: list[str], policy: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        subprocess.run(
            [ATTN, "sweep", *SWEEP_GRID, *SWEEP_FIXED, POLICIES[policy], *launcher, "--dir", f"{tmp}/s"],
            check=True,
            stdout=subprocess.DEVNULL,
            env=_env(),
        )
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1, help="median of this many runs per cell")
    ap.add_argument("--only", default="default,d256", help="comma-separated: default, d256")
    ap.add_argument("--scenes", default=",".join(SCENES), help=f"comma-separated: {', '.join(SCENES)}")
    ap.add_argument("--no-sweep", action="store_true")
    args = ap.parse_args()
    cpus = len(os.sched_getaffinity(0))
    model_name = cpu_name() or platform.processor()
    print(f"{model_name}, {cpus} CPUs, Python {platform.python_version()}; wall s from start to exit")
    print("as shipped = threads=torch (torch's defaults); policy = threads=auto, [n] its threads")
    print(f"{'model':<8} {'scene':<10} {'as shipped (x alone)':>21} {'policy (x alone)':>21}")
    with tempfile.TemporaryDirectory() as cwd:
        for model in args.only.split(","):
            alone: dict[str, float] = {}
            for name in [s for s in SCENES if s in args.scenes.split(",")]:
                cells: dict[str, float] = {}
                threads = ""
                for policy in POLICIES:
                    runs = [scene(model, policy, name, cwd) for _ in range(args.repeats)]
                    cells[policy] = statistics.median(r[0] for r in runs)
                    threads = runs[-1][1] if policy == "attn policy" else threads
                alone = dict(cells) if name == "alone" else alone
                ratio = {p: f"({cells[p] / alone[p]:.2f}x)" if alone else "" for p in POLICIES}
                print(
                    f"{model:<8} {name:<10} {cells['as shipped']:>13.1f} {ratio['as shipped']:>7}"
                    f" {cells['attn policy']:>9.1f} [{threads}] {ratio['attn policy']:>7}",
                    flush=True,
                )
    if args.no_sweep:
        return
    print(f"\nsweep: 8 trials ({' '.join(SWEEP_GRID)}), 2 epochs each; wall s")
    for launcher in (["launcher=basic"], ["launcher=joblib", "n_jobs=2"]):
        walls = {policy: sweep(launcher, policy) for policy in POLICIES}
        print(
            f"{' '.join(launcher):<25} threads=torch {walls['as shipped']:>6.1f}"
            f"   threads=auto {walls['attn policy']:>6.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
