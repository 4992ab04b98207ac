"""What the commands print: the run summary, the sweep's grid, the report's tables (rich)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import typer

from attn.runner.stats import is_counter


def metric_text(key: str, value: object) -> str:
    """A metric's value as printed: counters as integers, other floats with 4 decimals."""
    if isinstance(value, float) and is_counter(key) and value.is_integer():
        return str(int(value))
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def print_summary(record: Mapping[str, Any]) -> None:
    """The metrics table of a finished ``attn train`` and its run directory."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"attn train: {record['status']}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in sorted(record["metrics"].items()):
        table.add_row(key, metric_text(key, value))
    console = Console(stderr=False)
    console.print(table)
    # Paths are never wrapped or marked up, so that they can be copied from the terminal.
    console.print(
        f"run dir: {record['run_dir']}  ({record['duration_s']:.1f} s)", soft_wrap=True, markup=False
    )


def print_grid(manifest: Any, skipped: list[str]) -> None:
    """``attn sweep --dry-run``: the grid, the launcher and every trial's overrides."""
    grid = ", ".join(f"{k} ({len(v)})" for k, v in manifest.grid.items()) or "no swept key"
    typer.echo(f"sweep {manifest.name}: {len(manifest.trials)} trials over {grid}")
    typer.echo(f"launcher {manifest.launcher}, n_jobs {manifest.n_jobs}")
    if manifest.launcher_overrides:
        typer.echo(f"launcher settings: {' '.join(manifest.launcher_overrides)}")
    tune = manifest.extra.get("tune")
    if not tune:
        for t in manifest.trials:
            typer.echo(f"  {t.id}  {' '.join(t.overrides)}")
    else:
        print_phases(manifest, tune)
    for s in skipped:
        typer.echo(f"  skipped  {s}")


def print_phases(manifest: Any, tune: dict[str, Any]) -> None:
    """The two phases of a tuned sweep: the tuning trials, then the final ones (their tuned values are
    filled in when the tuning phase has selected)."""
    tuning = [t for t in manifest.trials if t.extra.get("phase") == "tune"]
    final = [t for t in manifest.trials if t.extra.get("phase") == "final"]
    arms = len({t.extra.get("arm") for t in final})
    keys = ", ".join(
        f"{k} ({len(v)})" if tune["search"] == "grid" else f"{k} {v[0]}" for k, v in tune["keys"].items()
    )
    seeds = ",".join(tune["seeds"])
    if tune["search"] == "grid":
        typer.echo(
            f"phase tune: {len(tuning)} trials = {arms} arms x candidates of {keys} x tuning seeds {seeds}"
        )
        for t in tuning:
            typer.echo(f"  {t.id}  {' '.join(t.overrides)}")
    else:
        n = int(tune["trials"]) * arms * len(tune["seeds"])
        typer.echo(f"phase tune: {n} trials = {arms} arms x {tune['trials']} Optuna candidates of {keys}"
                   f" x tuning seeds {seeds} (proposed while it runs)")  # fmt: skip
    halving = tune.get("halving")
    if halving:
        steps = ", then ".join(f"{r['candidates']} at {r['share']:.3g}" for r in halving["rungs"])
        typer.echo(f"  successive halving (ETA {halving['eta']}): candidates per arm at a share of the"
                   f" budget: {steps}")  # fmt: skip
    selected = manifest.extra.get("selected")
    typer.echo(f"phase final: {len(final)} trials = {arms} arms x final seeds, at each arm's selected values")
    for t in final:
        fill = "" if selected else " " + " ".join(f"{k}=<selected>" for k in tune["keys"])
        typer.echo(f"  {t.id}  {' '.join(t.overrides)}{fill}")


NARROW = 120  # columns below which the report prints one record per group instead of a table


def print_report(rep: Any, group_by: tuple[str, ...]) -> None:
    """``attn report``'s tables and verdicts per task, warnings, and the runs that did not complete."""
    from rich.console import Console
    from rich.table import Table

    from attn.runner.aggregate import split_metrics
    from attn.runner.report import mixed_origins, shown_path, table_rows, task_lines, tuning_rows

    console = Console()
    for split, groups in rep.groups.items():
        own = rep.verdicts[split].split_keys if split in rep.verdicts else []
        rows = table_rows(groups, group_by, split_metrics(groups)[:1], own)
        if console.width < NARROW:  # a narrow terminal or a pipe: one record per group, no value cut
            console.print(f"task: {split}", style="bold", markup=False)
            for g, cells in zip(groups, rows[1:], strict=True):
                fields = [f"{h}: {c}" for h, c in zip(rows[0], cells, strict=True) if c not in ("", "–")]
                console.print("- " + "; ".join(fields), markup=False, soft_wrap=True,
                              style="bold green" if g.best else None)  # fmt: skip
        else:
            table = Table(title=f"task: {split}")
            for h in rows[0]:
                table.add_column(h)
            for g, cells in zip(groups, rows[1:], strict=True):
                table.add_row(*cells, style="bold green" if g.best else ("green" if g.tied else None))
            console.print(table)
        for line in task_lines(rep, split):
            console.print(line, markup=False, style="bold" if line.startswith("Verdict") else None)
    for t in rep.tunings:
        rows, warnings = tuning_rows(t)
        table = Table(title=f"tuning: {shown_path(t.sweep_dir)}")
        for h in rows[0]:
            table.add_column(h)
        for cells in rows[1:]:
            table.add_row(*cells, style="green" if cells[-1] else None)
        console.print(table)
        for w in warnings:
            console.print(w, markup=False, style="bold yellow", soft_wrap=True)
    for warning in mixed_origins(rep.groups):
        console.print(warning, markup=False, style="bold yellow", soft_wrap=True)
    for note in rep.notes:
        console.print(note, markup=False, soft_wrap=True)
    counts: dict[str, int] = {}
    for r in rep.runs:
        counts[r.status] = counts.get(r.status, 0) + 1
    left_out = f"; {rep.tuning_runs} tuning runs left out (never results)" if rep.tuning_runs else ""
    console.print(
        f"{len(rep.runs)} runs read: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + left_out
    )
    for r in rep.problems:
        console.print(f"  {r.status}: {r.run_dir}: {r.error or ''}", markup=False, soft_wrap=True)
