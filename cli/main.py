"""The ``attn`` command: ``train``, ``sweep``, ``report``, ``bench``.

Each command parses its arguments, calls the engine (:mod:`attn.runner`) and prints. Only Typer and
the engine's paths are imported here; Hydra, torch, Lightning and W&B load inside the commands, so
``attn --help`` answers at once.
"""

from __future__ import annotations

import os
import sys
import traceback
from enum import StrEnum
from typing import Annotated

import typer

from attn.runner.errors import ConfigError, RunDirBusy
from attn.runner.machine import is_rank_zero, requeue
from attn.runner.paths import CONF_DIR, CONFIG_DIR_ENV, GROUPS, config_dirs, group_options
from attn.runner.records import DirLock, read_manifest

from .show import print_grid, print_report, print_summary

app = typer.Typer(
    help="Experiment runner for attention mechanisms and the softmax.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _use_config_dirs(dirs: list[str] | None) -> None:
    """``--config-dir``: the user's config directories, for this process and the ones it starts."""
    if dirs:
        os.environ[CONFIG_DIR_ENV] = os.pathsep.join(os.path.abspath(os.path.expanduser(d)) for d in dirs)


def _config_dirs_in_argv(argv: list[str]) -> list[str]:
    """The ``--config-dir`` values of a command line (read before Typer parses it, for ``--help``)."""
    found = []
    for i, a in enumerate(argv):
        if a == "--config-dir" and i + 1 < len(argv):
            found.append(argv[i + 1])
        elif a.startswith("--config-dir="):
            found.append(a.split("=", 1)[1])
    return found


_use_config_dirs(_config_dirs_in_argv(sys.argv))  # `attn train --config-dir DIR --help` lists DIR's options


def _options(group: str) -> str:
    return ", ".join(group_options(group)) or "-"


def _groups_epilog() -> str:
    """The config groups and their options, read from the config tree (one paragraph each)."""
    where = ", ".join(str(p) for p in (CONF_DIR, *config_dirs()))
    lines = [f"Config groups and their options (from {where}); pick one with group=option:"]
    lines += [f"{g}: {_options(g)}" for g in GROUPS]
    lines.append(
        "Any key: key=value (e.g. trainer.max_epochs=3); a key the config lacks: +key=value; the whole"
        " composed config: --cfg job."
    )
    return "\n\n".join(lines)


CONFIG_DIR_HELP = (
    "Your own config directory (DIR/attention/mine.yaml, DIR/sweep/my_study.yaml, ...): its options join the"
    f" packaged ones; repeatable; also {CONFIG_DIR_ENV}."
)
ConfigDirs = Annotated[
    list[str] | None, typer.Option("--config-dir", help=CONFIG_DIR_HELP, show_default=False)
]
COMMON_HELP = (
    "Hydra overrides, e.g. attention=additive softmax.temperature=0.5 trainer.max_epochs=8 seed=7. "
    "threads=auto|<n>|torch sets the CPU threads (auto: the CPUs this process may use, see docs/threads.md)."
)
BENCH_HELP = (
    "Hydra overrides of the configuration to measure, e.g. model.d_model=256 task.datamodule.batch_size=32"
    " precision=bf16-mixed. threads=auto|<n>|torch sets the CPU threads (docs/threads.md)."
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


@app.command(context_settings={"ignore_unknown_options": True}, epilog=_groups_epilog())
def train(
    overrides: Annotated[list[str] | None, typer.Argument(help=OVERRIDES_HELP, show_default=False)] = None,
    cfg: Annotated[CfgPart | None, typer.Option("--cfg", help="Print the composed config and exit.")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False,
    config_dir: ConfigDirs = None,
) -> None:
    """Train and test one configuration; writes a run directory with results.json."""
    from attn.runner.resume import prepare  # Hydra and the config schemas: not for --help

    _use_config_dirs(config_dir)
    try:
        prepared = prepare(list(overrides or []), print_only=cfg is not None)
    except ConfigError as e:
        _fail(str(e), 2, e, debug)
    if cfg is not None:
        from omegaconf import OmegaConf

        typer.echo(OmegaConf.to_yaml(prepared.config), nl=False)
        return
    resume = prepared.resume
    if prepared.slurm_restarted and resume is not None and is_rank_zero():
        times = os.environ["SLURM_RESTART_COUNT"]
        typer.echo(
            f"attn: SLURM restarted this job ({times}x); resuming {resume.run_dir} from step {resume.step}",
            err=True,
        )
    from attn.runner.run import run  # torch loads here, after the thread settings are in place
    from attn.runner.signals import exit_code, job_to_requeue

    try:
        record, exc = run(prepared.config, resume, prepared.threads)
    except RunDirBusy as e:  # another live run or resume owns the run directory
        _fail(str(e), 1, e, debug)
    except ConfigError as e:  # the run directory holds another run
        _fail(str(e), 2, e, debug)
    except OSError as e:  # the run directory or its record cannot be written (permissions, disk full)
        _fail(f"cannot write the run directory: {e}", 1, e, debug)
    code = exit_code(record.status, exc)
    if record.status == "completed":
        if is_rank_zero():  # the other DDP ranks stay quiet
            print_summary(record)
        return
    if not is_rank_zero():  # rank 0 tells the user
        raise typer.Exit(code)
    typer.echo(f"run dir: {record.run_dir}", err=True)
    if record.extra.get("paused"):  # trainer.pause_at: stopped by plan, not an error
        typer.echo(f"attn: {record.error}", err=True)
        raise typer.Exit(0)
    job = job_to_requeue(exc)
    if job is not None:  # printed first: the requeue ends this process with SIGTERM
        typer.echo(f"error: {record.error}", err=True)
        typer.echo(f"attn: requeueing SLURM job {job}; it resumes from its checkpoint when it starts again",
                   err=True)  # fmt: skip
        failed = requeue(job)
        if failed:
            typer.echo(f"attn: could not requeue SLURM job {job}: {failed}", err=True)
        raise typer.Exit(code)
    _fail(record.error or record.status, code, exc, debug and record.status == "failed")


SWEEP_HELP = (
    "Sweep settings and trial overrides in Hydra's sweep syntax, e.g. sweep=temperature, "
    "attention=scaled_dot,additive softmax.temperature=0.5,1,2 seed=range(3), launcher=joblib n_jobs=2. "
    f"Presets (sweep=, from {', '.join(str(p / 'sweep') for p in (CONF_DIR, *config_dirs()))}):"
    f" {_options('sweep')}. "
    "Launchers: basic (default, one after another), joblib, submitit_local, slurm."
)


TUNE_HELP = (
    "Tune KEY per arm (an arm: the swept values but the seed) before the final seeds run, e.g. --tune"
    " optim.lr=1e-4,1e-3,1e-2 (Optuna: --tune 'optim.lr=interval(1e-4,1e-2)'); repeatable. Selection: the"
    " best mean over the tuning seeds of the task's best validation value."
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
    config_dir: ConfigDirs = None,
    tune: Annotated[list[str] | None, typer.Option("--tune", help=TUNE_HELP, show_default=False)] = None,
    tune_seeds: Annotated[
        str | None,
        typer.Option(
            "--tune-seeds",
            help="Seeds of the tuning phase, e.g. 100,101 (never final seeds).",
            show_default=False,
        ),
    ] = None,
    tune_search: Annotated[
        str | None,
        typer.Option(
            "--tune-search",
            help="grid (default: every candidate) or optuna (seeded TPE).",
            show_default=False,
        ),
    ] = None,
    tune_trials: Annotated[
        str | None,  # checked by the engine: one line for a bad value
        typer.Option(
            "--tune-trials", help="Optuna candidates per arm (the same for every arm).", show_default=False
        ),
    ] = None,
    tune_log: Annotated[
        list[str] | None,
        typer.Option("--tune-log", help="A tuned key Optuna samples on a log scale.", show_default=False),
    ] = None,
    tune_halving: Annotated[
        str | None,  # checked by the engine: one line for a bad value
        typer.Option(
            "--tune-halving",
            help="Successive halving: every candidate trains a share of the budget first, the best 1/ETA per"
            " arm go on (resumed from their checkpoints), up to the full budget, e.g. --tune-halving 3.",
            show_default=False,
            metavar="ETA",
        ),
    ] = None,
    extend: Annotated[
        str | None,
        typer.Option(
            "--extend",
            help="Add trials for new seeds (seed=3,4,5) to this sweep and run them.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run a grid of `attn train` trials, each in its own process and run directory; resumable."""
    _use_config_dirs(config_dir)
    from attn.runner.sweep import (
        SWEEP_LOCK,
        extend_sweep,
        launch,
        lock_sweep,
        open_existing,
        plan,
        plan_extend,
        plan_resume,
        replace_config_dirs,
        resume_settings,
        start,
        stopped,
        summary,
    )

    tuning = {"tune": list(tune or []), "tune_seeds": tune_seeds, "search": tune_search,
              "trials": tune_trials, "log": list(tune_log or []), "halving": tune_halving}  # fmt: skip
    lock: DirLock | None = None
    try:
        if resume is not None and extend is not None:
            raise ConfigError(
                "--resume and --extend: give one (--extend also finishes the sweep's other trials)"
            )
        if (resume is not None or extend is not None) and any(v for k, v in tuning.items()):
            raise ConfigError("--tune options apply to a new sweep; a sweep's tuning stays as it was planned")
        if resume is not None or extend is not None:
            open_existing(resume if resume is not None else extend, bool(config_dir))
        if extend is not None and dry_run:
            manifest, added = plan_extend(extend, list(args or []))
            print_grid(manifest, [])
            typer.echo(
                f"--extend would add {len(added)} trials: " + (" ".join(t.id for t in added) or "none")
            )
            return
        if resume is not None and dry_run:  # a dry run never runs (or submits, or writes) anything
            manifest, todo = plan_resume(resume, list(args or []))
            print_grid(manifest, [])
            typer.echo(f"--resume would run {len(todo)} of {len(manifest.trials)} trials: "
                       + (" ".join(t.id for t in todo) or "none"))  # fmt: skip
            return
        if resume is not None or extend is not None:
            root = resume if resume is not None else extend
            # One sweep process per sweep directory: a second --resume stops here, trials untouched.
            lock = lock_sweep(root, finishing=extend is None)
            if lock is None:  # read-only and complete: nothing to run
                line, _ = summary(read_manifest(root))
                typer.echo(
                    f"{line}; nothing to run (the sweep directory is read-only): attn report {root} --out DIR"
                )
                return
            if config_dir:
                copies = replace_config_dirs(root)
                typer.echo(
                    f"sweep dir: {root}: its trials compose with --config-dir from now on"
                    f" (copied to {', '.join(copies)})"
                )
            if extend is not None:
                added = extend_sweep(root, list(args or []))
                typer.echo(f"sweep dir: {root}: added {len(added)} trials ({' '.join(t.id for t in added)})")
            else:
                resume_settings(root, list(args or []))
        else:
            if dry_run:
                manifest, skipped = plan(list(args or []), out, skip_invalid, tuning)
                print_grid(manifest, skipped)
                return
            root = start(list(args or []), out, skip_invalid, tuning)
            lock = DirLock(root, SWEEP_LOCK, "sweep directory").acquire()
            typer.echo(f"sweep dir: {root}")
            for line in read_manifest(root).skipped:  # duplicates of the grid, and with --skip-invalid
                typer.echo(f"  skipped  {line}")
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
            typer.echo(f"  {t.id} {t.status}: {' '.join(t.overrides)}: {t.error}", err=True)
        _fail(f"{len(failed)} trial(s) not completed; re-run them with: attn sweep --resume {root}", 1)


@app.command()
def report(
    paths: Annotated[
        list[str] | None,
        typer.Argument(
            help="Sweep or runs directories, read as one (default: runs).",
            show_default=False,
            metavar="[DIR]...",
        ),
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
    plugins: Annotated[
        str | None,
        typer.Option(
            "--plugins",
            help="Plugins to import (module names or .py paths, comma-separated; also ATTN_PLUGINS) so that"
            " the heatmaps of their attention kinds can be drawn. A record never makes attn import anything.",
            show_default=False,
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False,
) -> None:
    """Summarise runs (of one or several directories, read as one): per task, mean ± std and 95% CI over
    seeds per configuration, best marked."""
    from attn.runner.collect import collect, collect_wandb, tunings
    from attn.runner.plugins import load_plugins
    from attn.runner.report import build  # matplotlib, torch (heatmaps): not for --help

    try:
        load_plugins([p.strip() for p in (plugins or "").split(",") if p.strip()])  # only what the user gave
        tuned = []
        if wandb_path:
            runs = collect_wandb(wandb_path, group)
            target = out or f"report-{wandb_path.replace('/', '-')}"
        else:
            roots = list(dict.fromkeys(paths or ["runs"]))
            runs, seen = [], set()
            for root in roots:
                found = collect(root)
                if not found:
                    raise ConfigError(f"{root}: no runs found (no results.json or sweep.json under it)")
                runs += [r for r in found if r.run_dir not in seen]  # a folder given twice counts once
                seen |= {r.run_dir for r in found}
                tuned += tunings(root)
            # several folders: the report goes into the first, beside (not over) its own report
            target = out or (f"{roots[0]}/report" if len(roots) == 1 else f"{roots[0]}/report-combined")
        settings = {
            "metric": metric, "formats": tuple(f.strip() for f in formats.split(",") if f.strip()),
            "group_by": tuple(g.strip() for g in group_by.split(",") if g.strip()), "split_by": split_by,
            "plots": not no_plots, "tunings": tuned,
        }  # fmt: skip
        unwritten = None
        try:
            rep = build(runs, target, **settings)
        except OSError as e:
            if out is not None:  # the user's own output directory: they asked for files there
                raise
            unwritten, rep = f"{target} ({e.strerror or e})", build(runs, None, **settings)
    except ConfigError as e:
        _fail(str(e), 2, e, debug)
    except OSError as e:  # an unwritable or full output directory
        _fail(f"cannot write the report: {e}", 1, e, debug)
    except KeyboardInterrupt:  # each file is written whole or not at all
        _fail("attn report interrupted; the files it had written are complete, the others are not there", 130)
    print_report(rep, tuple(g.strip() for g in group_by.split(",") if g.strip()))
    if unwritten:
        typer.echo(f"report: no files written: cannot write {unwritten}; give --out DIR for the files")
    else:
        typer.echo(f"report: {target}")


@app.command(context_settings={"ignore_unknown_options": True}, epilog=_groups_epilog())
def bench(
    overrides: Annotated[list[str] | None, typer.Argument(help=BENCH_HELP, show_default=False)] = None,
    steps: Annotated[int, typer.Option("--steps", help="Measured training steps per loop.")] = 30,
    warmup: Annotated[int, typer.Option("--warmup", help="Steps run before measuring.")] = 5,
    matmul_n: Annotated[int, typer.Option("--matmul-n", help="Matrix size of the peak measurement.")] = 2048,
    rounds: Annotated[int, typer.Option("--rounds", help="Interleaved rounds; the best median counts.")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False,
    config_dir: ConfigDirs = None,
) -> None:
    """Measure matmul peak, training throughput and MFU, and Lightning's overhead over a plain loop."""
    import json

    _use_config_dirs(config_dir)
    from attn.runner.resume import prepare

    try:
        if steps < 1 or warmup < 0 or matmul_n < 1 or rounds < 1:
            raise ConfigError(
                f"--steps={steps}, --warmup={warmup}, --matmul-n={matmul_n}, --rounds={rounds}:"
                " need >= 1, >= 0, >= 1, >= 1"
            )
        args = list(overrides or [])
        if any(a.startswith("resume=") for a in args):
            raise ConfigError("attn bench measures a new run; resume= applies to attn train only")
        prepared = prepare(
            args, follow_restarts=False
        )  # the thread plan is decided before validation imports torch
        from attn.runner.bench import bench as run_bench
        from attn.runner.bench import check, table

        result = run_bench(
            prepared.config, steps=steps, warmup=warmup, matmul_n=matmul_n, rounds=rounds,
            threads=prepared.threads,
        )  # fmt: skip
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
