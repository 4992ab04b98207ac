"""``attn bench``: how close training runs to the machine's limit, measured on the machine itself.

Three measurements in one process, same model, same data, same number of steps:

1. the matmul peak: median FLOP/s of a large square matrix product (float32, and bf16 where the
   hardware has it);
2. a plain PyTorch training loop (no Lightning): median step time, split into data / forward /
   backward / optimizer, tokens per second, achieved FLOP/s and its share of the peak (MFU);
3. the same training through Lightning's ``Trainer`` with attn's module: median step time and the
   ratio to the plain loop (attn's and Lightning's overhead).

FLOPs are counted analytically (see :func:`train_flops_per_step`); tokens are sequence positions
(``batch x max_len``), padding included, because that is what the model computes on.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from attn.models.flops import config_forward_flops, train_flops

from .errors import ConfigError
from .machine import cpu_has_bf16, cpu_name
from .run import build_data_and_module, lightning_trainer_kwargs, quiet_third_party
from .threads import ThreadPlan, apply_torch, describe, thread_plan


def _sync(device: Any) -> None:
    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dtype: str = "float32", n: int = 2048, repeats: int = 7, device: str = "cpu") -> float:
    """Median FLOP/s of an ``n x n`` by ``n x n`` product (``2 n^3`` FLOPs) after one warm-up."""
    dt = getattr(torch, dtype)
    a = torch.randn(n, n, device=device).to(dt)
    b = torch.randn(n, n, device=device).to(dt)
    times = []
    for i in range(repeats + 1):
        _sync(a.device)
        t0 = time.perf_counter()
        a @ b
        _sync(a.device)
        if i:
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def forward_flops_per_sequence(model: DictConfig, attention: DictConfig, length: int) -> float:
    """Forward FLOPs of one sequence through the configured encoder blocks
    (:func:`attn.models.flops.encoder_forward_flops`, where the count is documented)."""
    return config_forward_flops(model, attention, length)


def train_flops_per_step(cfg: DictConfig, batch: int, length: int) -> float:
    """Training FLOPs of one step: three times the forward pass (forward + backward)."""
    return train_flops(forward_flops_per_sequence(cfg.model, cfg.attention, length), batch)


def _batches(dm: Any) -> Any:
    """An endless iterator over the training loader."""
    while True:
        yield from dm.train_dataloader()


def plain_loop(cfg: DictConfig, steps: int, warmup: int, device: str = "cpu") -> dict[str, float]:
    """Median per-step times of a hand-written loop: data, forward, backward, optimizer, total."""
    L.seed_everything(cfg.seed, verbose=False)
    dm, module = build_data_and_module(cfg)
    net = module.net.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    clip = cfg.trainer.gradient_clip_val
    it = _batches(dm)
    parts: dict[str, list[float]] = {"data": [], "forward": [], "backward": [], "optimizer": [], "step": []}
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled="bf16" in str(cfg.trainer.precision))
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        ids, y = next(it)
        ids, y = ids.to(device), y.to(device)
        _sync(device)
        t1 = time.perf_counter()
        with autocast:
            loss = F.cross_entropy(net(ids)[0], y)
        _sync(device)
        t2 = time.perf_counter()
        loss.backward()
        _sync(device)
        t3 = time.perf_counter()
        if clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        t4 = time.perf_counter()
        if i >= warmup:
            for key, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0), strict=True):
                parts[key].append(value)
    return {k: statistics.median(v) for k, v in parts.items()}


def lightning_loop(cfg: DictConfig, steps: int, warmup: int) -> dict[str, float]:
    """Median step time (batch start to batch start, data included) of the same training in Lightning."""
    L.seed_everything(cfg.seed, verbose=False)
    dm, module = build_data_and_module(cfg)
    starts: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            starts.append(time.perf_counter())

        def on_train_end(self, *args: Any) -> None:
            starts.append(time.perf_counter())

    trainer_cfg = lightning_trainer_kwargs(cfg.trainer)
    trainer_cfg.update(
        max_steps=warmup + steps, max_epochs=-1, limit_val_batches=0, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, logger=False, num_sanity_val_steps=0,
    )  # fmt: skip
    for key in ("fast_dev_run", "overfit_batches", "profiler", "limit_train_batches", "limit_test_batches"):
        trainer_cfg.pop(key, None)
    trainer = L.Trainer(**trainer_cfg, callbacks=[Clock()])
    trainer.fit(module, datamodule=dm)
    steps_times = [b - a for a, b in itertools.pairwise(starts)][warmup:]
    return {"step": statistics.median(steps_times)}


def bench(
    cfg: DictConfig,
    steps: int = 30,
    warmup: int = 5,
    matmul_n: int = 2048,
    rounds: int = 2,
    threads: ThreadPlan | None = None,
) -> dict[str, Any]:
    """Every measurement of ``attn bench`` as one JSON-ready dictionary.

    ``threads``: the plan made before torch was imported (see :mod:`attn.runner.threads`).
    """
    quiet_third_party()

    threads = threads or thread_plan(cfg)
    apply_torch(threads)

    target = str(cfg.task.module._target_)
    if not target.endswith(".ClassificationModule"):  # the FLOP count models the text classifier
        raise ConfigError(
            f"attn bench measures text classification tasks; task={cfg.task.name} ({target}) is not"
            " supported yet; valid choices: classification, fortunes, text_files, imdb, ag_news, sst2"
        )
    device = "cuda" if cfg.trainer.accelerator in ("gpu", "cuda") else "cpu"
    batch, length = cfg.task.datamodule.batch_size, cfg.task.datamodule.max_len
    peaks = {"float32": matmul_peak("float32", matmul_n, device=device)}
    bf16 = device == "cuda" or bool(cpu_has_bf16())
    if bf16:
        peaks["bfloat16"] = matmul_peak("bfloat16", matmul_n, device=device)
    peak = peaks["bfloat16"] if "bf16" in str(cfg.trainer.precision) and bf16 else peaks["float32"]
    # Interleaved rounds, the best median of each: a shared machine's noise only ever slows a round down.
    plains, lights = [], []
    for _ in range(rounds):
        plains.append(plain_loop(cfg, steps, warmup, device))
        lights.append(lightning_loop(cfg, steps, warmup))
    plain = min(plains, key=lambda r: r["step"])
    light = min(lights, key=lambda r: r["step"])
    flops = train_flops_per_step(cfg, batch, length)
    tokens = batch * length
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else (cpu_name() or "cpu"),
        "threads": torch.get_num_threads(),
        "thread_plan": threads.as_dict(),
        "torch": torch.__version__,
        "model": {
            "attention": cfg.attention.kind,
            "softmax": cfg.softmax.name,
            "d_model": cfg.model.d_model,
            "n_layers": cfg.model.n_layers,
            "n_heads": cfg.model.n_heads,
            "batch": batch,
            "max_len": length,
            "precision": str(cfg.trainer.precision),
        },
        "steps": steps,
        "warmup": warmup,
        "rounds": rounds,
        "matmul_peak_flops": peaks,
        "train_flops_per_step": flops,
        "plain": {
            **{f"{k}_s": v for k, v in plain.items()},
            "tokens_per_s": tokens / plain["step"],
            "flops_per_s": flops / plain["step"],
            "mfu": flops / plain["step"] / peak,
            "data_share": plain["data"] / plain["step"],
        },
        "lightning": {
            "step_s": light["step"],
            "tokens_per_s": tokens / light["step"],
            "flops_per_s": flops / light["step"],
            "mfu": flops / light["step"] / peak,
        },
        "lightning_over_plain": light["step"] / plain["step"],
    }
    return result


def numbers(obj: Any) -> list[float]:
    """Every number in a nested result, finite or not (what :func:`check` checks)."""
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in numbers(v)]
    if isinstance(obj, bool):
        return []
    if isinstance(obj, int | float):
        return [float(obj)]
    return []


def table(result: dict[str, Any]) -> str:
    """The human-readable summary of :func:`bench`."""
    m, p, lt = result["model"], result["plain"], result["lightning"]
    peak = ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in result["matmul_peak_flops"].items())
    lines = [
        f"device {result['device']}, {result['threads']} threads, torch {result['torch']}",
        describe(ThreadPlan(**result["thread_plan"])),
        f"matmul peak: {peak}",
        f"model: {m['attention']} attention, {m['softmax']}, d_model {m['d_model']}, {m['n_layers']} layers,"
        f" {m['n_heads']} heads, batch {m['batch']} x {m['max_len']} positions, {m['precision']}",
        f"training FLOPs per step: {result['train_flops_per_step'] / 1e9:.2f} GFLOP"
        f" (median of {result['steps']} steps after {result['warmup']} warm-up, best of {result['rounds']}"
        " interleaved rounds)",
        "",
        f"{'loop':<10} {'step ms':>9} {'tokens/s':>10} {'GFLOP/s':>9} {'MFU':>7}",
        *(
            f"{name:<10} {r['step_s'] * 1e3:>9.2f} {r['tokens_per_s']:>10.0f} {r['flops_per_s'] / 1e9:>9.2f}"
            f" {r['mfu']:>7.1%}"
            for name, r in (("plain", p), ("lightning", lt))
        ),
        "",
        f"lightning / plain step time: {result['lightning_over_plain']:.3f}x",
        "plain step split: "
        + ", ".join(
            f"{k} {p[f'{k}_s'] * 1e3:.2f} ms ({p[f'{k}_s'] / p['step_s']:.0%})"
            for k in ("data", "forward", "backward", "optimizer")
        ),
    ]
    return "\n".join(lines)


def check(result: dict[str, Any]) -> None:
    """Raise if any number in the result is not finite and positive."""
    bad = [x for x in numbers(result) if not (math.isfinite(x) and x > 0)]
    if bad:
        raise ValueError(f"attn bench produced non-finite or non-positive numbers: {bad[:5]}")
