"""The ``attn`` command: ``train``, ``sweep``, ``report``.

Only Typer is imported here; Hydra, torch, Lightning and W&B load inside the commands, so
``attn --help`` answers at once.
"""

from __future__ import annotations

import os
import sys
import traceback
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Experiment runner for attention mechanisms and the softmax.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

CONF = Path(__file__).resolve().parent.parent / "conf"  # the config tree (read, not imported, here)
GROUPS = ("task", "model", "attention", "softmax", "precision", "optim", "trainer", "logger",
          "experiment", "debug")  # fmt: skip


def _options(group: str) -> str:
    return ", ".join(sorted(p.stem for p in (CONF / group).glob("*.yaml"))) or "-"


def _groups_epilog() -> str:
    """The config groups and their options, read from the config tree (one paragraph each)."""
    lines = [f"Config groups and their options (from {CONF}); pick one with group=option:"]
    lines += [f"{g}: {_options(g)}" for g in GROUPS]
    lines.append(
        "Any key: key=value (e.g. trainer.max_epochs=3); a key the config lacks: +key=value; the whole"
        " composed config: --cfg job."
    )
    return "\n\n".join(lines)


COMMON_HELP = (
    "Hydra overrides, e.g. attention=additive softmax.temperature=0.5 trainer.max_epochs=8 seed=7. "
    "threads=auto|<n>|torch sets the CPU threads (auto: the CPUs this process may use, see README)."
)
OVERRIDES_HELP = COMMON_HELP + (
    " resume=<run dir> continues an interrupted run (only trainer.max_epochs and threads may change)."
)


class CfgPart(StrEnum):
    job = "job"


def _debug_enabled(debug: bool) -> bool:
    return debug or os.environ.get("HYDRA_FULL_ERROR") == "1"


def _fail(message: str, code: int, exc: BaseException | None = None, debug: bool = False) -> None:
    if exc is not None and _debug_enabled(debug):
        traceback.print_exception(exc)
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _metric_text(key: str, value: object) -> str:
    from .report import is_counter  # counters print as integers

    if isinstance(value, float) and is_counter(key) and value.is_integer():
        return str(int(value))
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _print_summary(record: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"attn train: {record['status']}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in sorted(record["metrics"].items()):
        table.add_row(key, _metric_text(key, value))
    console = Console(stderr=False)
    console.print(table)
    # Paths are never wrapped or marked up, so that they can be copied from the terminal.
    console.print(
        f"run dir: {record['run_dir']}  ({record['duration_s']:.1f} s)", soft_wrap=True, markup=False
    )


@app.command(context_settings={"ignore_unknown_options": True}, epilog=_groups_epilog())
def train(
    overrides: Annotated[list[str] | None, typer.Argument(help=OVERRIDES_HELP, show_default=False)] = None,
    cfg: Annotated[CfgPart | None, typer.Option("--cfg", help="Print the composed config and exit.")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False,
) -> None:
    """Train and test one configuration; writes a run directory with results.json."""
    from omegaconf import OmegaConf

    from . import threads
    from .config import load
    from .schema import ConfigError, check_devices

    args = list(overrides or [])
    resume_dir = next((a.split("=", 1)[1] for a in args if a.startswith("resume=")), None)
    args = [a for a in args if not a.startswith("resume=")]
    resume = None
    plans: list = []  # the thread plan, decided before validation imports torch

    def prepare(c) -> None:
        plans.append(threads.prepare(c))

    try:
        if resume_dir is not None:
            from .train import prepare_resume

            conf, resume = prepare_resume(resume_dir, args, before_validate=prepare)
        else:
            conf = load(args, before_validate=prepare)
            if "SLURM_RESTART_COUNT" in os.environ and cfg is None:
                from .train import slurm_restart

                restarted = slurm_restart(conf, before_validate=prepare)
                if restarted is not None:
                    conf, resume = restarted
                    from .records import is_rank_zero

                    if is_rank_zero():
                        typer.echo(
                            f"attn: SLURM restarted this job ({os.environ['SLURM_RESTART_COUNT']}x); resuming"
                            f" {resume.run_dir} from step {resume.step}",
                            err=True,
                        )
        if cfg is None:
            check_devices(conf)
    except ConfigError as e:
        _fail(str(e), 2, e, debug)
    if cfg is not None:
        typer.echo(OmegaConf.to_yaml(conf), nl=False)
        return
    from .records import RunDirBusy
    from .train import exit_code, run

    try:
        record, exc = run(conf, resume, plans[-1] if plans else None)
    except RunDirBusy as e:  # another live run or resume owns the run directory
        _fail(str(e), 1, e, debug)
    except OSError as e:  # the run directory or its record cannot be written (permissions, disk full)
        _fail(f"cannot write the run directory: {e}", 1, e, debug)
    from .records import is_rank_zero
    from .train import job_to_requeue

    if record["status"] == "completed":
        if is_rank_zero():  # the other DDP ranks stay quiet
            _print_summary(record)
        return
    if not is_rank_zero():  # rank 0 tells the user
        raise typer.Exit(exit_code(record, exc))
    typer.echo(f"run dir: {record['run_dir']}", err=True)
    job = job_to_requeue(exc)
    if job is not None:  # printed first: the requeue ends this process with SIGTERM
        typer.echo(f"error: {record['error']}", err=True)
        typer.echo(f"attn: requeueing SLURM job {job}; it resumes from its checkpoint when it starts again",
                   err=True)  # fmt: skip
        from .slurm import requeue

        failed = requeue(job)
        if failed:
            typer.echo(f"attn: could not requeue SLURM job {job}: {failed}", err=True)
        raise typer.Exit(exit_code(record, exc))
    _fail(record["error"], exit_code(record, exc), exc, debug and record["status"] == "failed")


SWEEP_HELP = (
    "Sweep settings and trial overrides in Hydra's sweep syntax, e.g. sweep=temperature, "
    "attention=scaled_dot,additive softmax.temperature=0.5,1,2 seed=range(3), launcher=joblib n_jobs=2. "
    f"Presets (sweep=, from {CONF / 'sweep'}): {_options('sweep')}. "
    "Launchers: basic (default, one after another), joblib, submitit_local, slurm."
)


@app.command(context_settings={"ignore_unknown_options": True})
def sweep(
    args: Annotated[list[str] | None, typer.Argument(help=SWEEP_HELP, show_default=False)] = None,
    resume: Annotated[
        str | None, typer.Option("--resume", help="Finish the sweep in this directory.", show_default=False)
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the grid and exit.")] = False,
    out: Annotated[
        str | None, typer.Option("--dir", help="Sweep directory (default sweeps/<time>-<name>).")
    ] = None,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Drop incompatible combinations instead of failing.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False,
) -> None:
    """Run a grid of `attn train` trials, each in its own process and run directory; resumable."""
    from .records import DirLock, RunDirBusy
    from .schema import ConfigError
    from .sweep import SWEEP_LOCK, launch, plan, read_manifest, resume_settings, start, stopped, summary

    lock: DirLock | None = None
    try:
        if resume is not None:
            read_manifest(resume)
            # One sweep process per sweep directory: a second --resume stops here, trials untouched.
            lock = DirLock(resume, SWEEP_LOCK, "sweep directory").acquire()
            resume_settings(resume, list(args or []))
            root = resume
        else:
            if dry_run:
                manifest, skipped = plan(list(args or []), out, skip_invalid)
                _print_grid(manifest, skipped)
                return
            root = start(list(args or []), out, skip_invalid)
            lock = DirLock(root, SWEEP_LOCK, "sweep directory").acquire()
            typer.echo(f"sweep dir: {root}")
        manifest = launch(root)
        signal_name = stopped(root)
    except ConfigError as e:
        _fail(str(e), 2, e, debug)
    except RunDirBusy as e:
        _fail(str(e), 1, e, debug)
    except KeyboardInterrupt:
        _fail(f"sweep interrupted; finish it with: attn sweep --resume {root}", 130)
    finally:
        if lock is not None:
            lock.release()
    line, failed = summary(manifest)
    typer.echo(line)
    if signal_name:
        _fail(f"sweep stopped by {signal_name}; finish it with: attn sweep --resume {root}", 143)
    if failed:
        for t in failed:
            typer.echo(f"  {t['id']} {t['status']}: {' '.join(t['overrides'])}: {t['error']}", err=True)
        _fail(f"{len(failed)} trial(s) not completed; re-run them with: attn sweep --resume {root}", 1)


def _print_grid(manifest: dict, skipped: list[str]) -> None:
    grid = ", ".join(f"{k} ({len(v)})" for k, v in manifest["grid"].items())
    typer.echo(f"sweep {manifest['name']}: {len(manifest['trials'])} trials over {grid}")
    typer.echo(f"launcher {manifest['launcher']}, n_jobs {manifest['n_jobs']}")
    if manifest.get("launcher_overrides"):
        typer.echo(f"launcher settings: {' '.join(manifest['launcher_overrides'])}")
    for t in manifest["trials"]:
        typer.echo(f"  {t['id']}  {' '.join(t['overrides'])}")
    for s in skipped:
        typer.echo(f"  skipped  {s}")


@app.command()
def report(
    path: Annotated[
        str | None, typer.Argument(help="A sweep or runs directory (default: runs).", show_default=False)
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            "--metric",
            help="Metric that ranks configurations (default: test/acc; tasks without it: test/bleu).",
            show_default=False,
        ),
    ] = None,
    formats: Annotated[str, typer.Option("--format", help="Comma-separated: md, html, csv.")] = "md,html,csv",
    group_by: Annotated[
        str,
        typer.Option("--group-by", help="Config keys that define a configuration (aliases or dotted paths)."),
    ] = "attention,softmax,temperature",
    split_by: Annotated[
        str, typer.Option("--split-by", help="Config key with one table per value.")
    ] = "task",
    out: Annotated[
        str | None,
        typer.Option("--out", help="Output directory (default: <path>/report).", show_default=False),
    ] = None,
    wandb_path: Annotated[
        str | None, typer.Option("--wandb", help="Read runs from W&B: entity/project.", show_default=False)
    ] = None,
    group: Annotated[
        str | None, typer.Option("--group", help="W&B group (sweep name) with --wandb.", show_default=False)
    ] = None,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Tables only.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False,
) -> None:
    """Summarise runs: per task, mean ± std and 95% CI over seeds per configuration, best marked."""
    from .report import build, collect, collect_wandb
    from .schema import ConfigError

    try:
        if wandb_path:
            runs = collect_wandb(wandb_path, group)
            target = out or f"report-{wandb_path.replace('/', '-')}"
        else:
            root = path or "runs"
            runs = collect(root)
            if not runs:
                raise ConfigError(f"{root}: no runs found (no results.json or sweep.json under it)")
            target = out or f"{root}/report"
        rep = build(
            runs, target, metric=metric, formats=tuple(f.strip() for f in formats.split(",") if f.strip()),
            group_by=tuple(g.strip() for g in group_by.split(",") if g.strip()), split_by=split_by,
            plots=not no_plots,
        )  # fmt: skip
    except ConfigError as e:
        _fail(str(e), 2, e, debug)
    except OSError as e:  # an unwritable or full output directory
        _fail(f"cannot write the report: {e}", 1, e, debug)
    _print_report(rep, tuple(g.strip() for g in group_by.split(",") if g.strip()))
    typer.echo(f"report: {target}")


def _print_report(rep, group_by: tuple[str, ...]) -> None:
    from rich.console import Console
    from rich.table import Table

    from .report import mixed_origins, split_metrics, table_rows, task_lines

    console = Console()
    for split, groups in rep.groups.items():
        own = rep.verdicts[split].split_keys if split in rep.verdicts else []
        rows = table_rows(groups, group_by, split_metrics(groups)[:1], own)
        table = Table(title=f"task: {split}")
        for h in rows[0]:
            table.add_column(h)
        for g, cells in zip(groups, rows[1:], strict=True):
            table.add_row(*cells, style="bold green" if g.best else ("green" if g.tied else None))
        console.print(table)
        for line in task_lines(rep, split):
            console.print(line, markup=False, style="bold" if line.startswith("Verdict") else None)
    for warning in mixed_origins(rep.groups):
        console.print(warning, markup=False, style="bold yellow", soft_wrap=True)
    counts: dict[str, int] = {}
    for r in rep.runs:
        counts[r.status] = counts.get(r.status, 0) + 1
    console.print(f"{len(rep.runs)} runs read: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for r in rep.problems:
        console.print(f"  {r.status}: {r.run_dir}: {r.error or ''}", markup=False, soft_wrap=True)


@app.command(context_settings={"ignore_unknown_options": True}, epilog=_groups_epilog())
def bench(
    overrides: Annotated[list[str] | None, typer.Argument(help=COMMON_HELP, show_default=False)] = None,
    steps: Annotated[int, typer.Option("--steps", help="Measured training steps per loop.")] = 30,
    warmup: Annotated[int, typer.Option("--warmup", help="Steps run before measuring.")] = 5,
    matmul_n: Annotated[int, typer.Option("--matmul-n", help="Matrix size of the peak measurement.")] = 2048,
    rounds: Annotated[int, typer.Option("--rounds", help="Interleaved rounds; the best median counts.")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False,
) -> None:
    """Measure matmul peak, training throughput and MFU, and Lightning's overhead over a plain loop."""
    import json

    from . import threads
    from .bench import bench as run_bench
    from .bench import check, table
    from .config import load
    from .schema import ConfigError, check_devices

    try:
        if steps < 1 or warmup < 0 or matmul_n < 1 or rounds < 1:
            raise ConfigError(
                f"--steps={steps}, --warmup={warmup}, --matmul-n={matmul_n}, --rounds={rounds}:"
                " need >= 1, >= 0, >= 1, >= 1"
            )
        plans: list = []  # the thread plan, decided before validation imports torch
        conf = load(list(overrides or []), before_validate=lambda c: plans.append(threads.prepare(c)))
        check_devices(conf)
        result = run_bench(
            conf, steps=steps, warmup=warmup, matmul_n=matmul_n, rounds=rounds, threads=plans[-1]
        )
        check(result)
    except ConfigError as e:
        _fail(str(e), 2, e, debug)
    except Exception as e:  # anything else: one line, like attn train
        text = str(e).strip()
        _fail(f"{type(e).__name__}: {text.splitlines()[0] if text else ''}", 1, e, debug)
    typer.echo(json.dumps(result, indent=2) if as_json else table(result))


def main() -> None:  # pragma: no cover - console entry for `python -m attn.cli.main`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
