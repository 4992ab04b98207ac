"""What a newcomer reads (issue 35): progress that knows the parallelism, rows best first with the best
marked, runs.csv naming phases and selected values, lengths in numeric order, whole steps, the tuning runs
left out counted in the terminal too, paths relative to where the user stands."""

from __future__ import annotations

import csv
import time

import pytest

from attn.runner.aggregate import aggregate_with_verdicts
from attn.runner.collect import Run
from attn.runner.records import Manifest, Trial
from attn.runner.stats import metric_order


def test_the_eta_divides_by_the_launchers_parallelism(capsys):
    from attn.runner.sweep import _print_progress

    trials = [Trial(f"{i:03d}", [], {}, f"trials/{i:03d}") for i in range(10)]
    m = Manifest("s", "joblib", 2, {}, trials, extra={"session_started_unix": time.time() - 20})
    for t in trials[:2]:  # two trials of 20 s each, run side by side: 20 s of wall time so far
        t.status, t.extra["wall_s"] = "completed", 20.0
    _print_progress(m, trials[0])
    _print_progress(m, trials[1])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].endswith("about 0:01:20 left")  # 8 trials of 20 s, 2 at a time
    assert lines[0].endswith("about 0:01:20 left")  # already right after the first (was 0:02:40)
    assert "elapsed 0:00:2" in lines[-1]


def test_candidates_halved_out_count_as_finished(capsys):
    """A tuning candidate dropped by successive halving never runs again: the counter and the ETA count
    it as done (before, a finished sweep ended on "[56/72] ..., about 0:13:04 left")."""
    from attn.runner.sweep import _print_progress

    trials = [Trial(f"{i:03d}", [], {}, f"trials/{i:03d}") for i in range(4)]
    m = Manifest("s", "joblib", 2, {}, trials, extra={"session_started_unix": time.time() - 20})
    for t in trials[:2]:  # halved out at a third of the budget
        t.status, t.extra["wall_s"], t.extra["halted"] = "paused", 10.0, 1 / 3
    for t in trials[2:]:
        t.status, t.extra["wall_s"] = "completed", 30.0
    _print_progress(m, trials[3])
    line = capsys.readouterr().out.strip()
    assert line.startswith("[4/4] completed 2, failed 0, halved out 2 |")
    assert line.endswith("about 0:00:00 left")


def _run(kind: str, seed: int, acc: float, steps: float = 300.0) -> Run:
    config = {"task": {"name": "t"}, "seed": seed, "attention": {"kind": kind},
              "softmax": {"name": "softmax", "temperature": 1.0}}  # fmt: skip
    return Run(f"/r/{kind}-{seed}", "completed", config, {"test/acc": acc, "val/steps_to_90pct": steps})


def test_rows_come_best_first_and_the_best_mean_is_marked_when_nothing_is_separated():
    from attn.runner.report import table_rows

    runs = [_run("a_low", s, v) for s, v in enumerate((0.5, 0.6, 0.7))]
    runs += [_run("z_high", s, v) for s, v in enumerate((0.55, 0.65, 0.75))]
    groups, _ = aggregate_with_verdicts(runs, "test/acc", ("attention",))
    assert [g.key[0] for g in groups["t"]] == ["z_high", "a_low"]
    rows = table_rows(groups["t"], ("attention",), ["test/acc", "val/steps_to_90pct"])
    assert rows[1][-1].startswith("best mean (not separated from the rest)")
    assert rows[2][-1].startswith("≈ best")
    assert rows[0][1:3] == ["n", "seeds"] and rows[1][2] == "0,1,2"
    assert rows[1][4] == "300 ± 0 [300, 300]"  # steps are whole numbers


def test_a_group_separated_from_the_best_says_so():
    from attn.runner.report import table_rows

    runs = [_run("good", s, v) for s, v in enumerate((0.98, 0.99, 0.985))]
    runs += [_run("poor", s, v) for s, v in enumerate((0.30, 0.31, 0.305))]
    groups, _ = aggregate_with_verdicts(runs, "test/acc", ("attention",))
    rows = table_rows(groups["t"], ("attention",), ["test/acc"])
    assert rows[1][-1].startswith("best") and rows[2][-1].startswith("worse than best (p=")


def test_lengths_sort_as_numbers():
    names = ["test/acc@128", "test/acc@16", "test/acc@8", "test/entropy@16/l1", "test/entropy@16/l0"]
    assert sorted(names, key=metric_order) == [
        "test/acc@8", "test/acc@16", "test/acc@128", "test/entropy@16/l0", "test/entropy@16/l1"
    ]  # fmt: skip


def test_runs_csv_names_phase_and_selected_values_and_the_terminal_counts_tuning_runs(tmp_path, capsys):
    from attn.cli.show import print_report
    from attn.runner.report import build

    finals = []
    for kind in ("a", "b"):
        for s in (0, 1, 2):
            r = _run(kind, s, 0.8 + 0.01 * s)
            r.phase, r.tuned, r.arm = "final", {"optim.lr": "0.001"}, f"/s:{kind}"
            finals.append(r)
    tuning = []
    for kind in ("a", "b"):
        for lr in ("0.001", "0.01"):
            r = _run(kind, 100, 0.7)
            r.run_dir = f"/s/tune/{kind}-{lr}"
            r.phase, r.candidate, r.arm = "tune", {"optim.lr": lr}, f"/s:{kind}"
            tuning.append(r)
    rep = build([*finals, *tuning], tmp_path, group_by=("attention",), formats=("csv",), plots=False)
    rows = list(csv.DictReader(open(tmp_path / "runs.csv")))
    assert len(rows) == 10 and {r["phase"] for r in rows} == {"final", "tune"}
    assert {r["selected"] for r in rows if r["phase"] == "final"} == {"optim.lr=0.001"}
    assert {r["selected"] for r in rows if r["phase"] == "tune"} == {"optim.lr=0.001", "optim.lr=0.01"}
    print_report(rep, ("attention",))
    assert "6 runs read: 6 completed; 4 tuning runs left out (never results)" in capsys.readouterr().out


def test_paths_are_shown_relative_to_where_the_user_stands(tmp_path, monkeypatch):
    from attn.runner.report import shown_path

    monkeypatch.chdir(tmp_path)
    assert shown_path(tmp_path / "sweeps" / "x") == "sweeps/x"
    assert shown_path("/elsewhere/x") == "/elsewhere/x"


@pytest.mark.parametrize("n", [2])
def test_no_probability_from_two_runs(n):
    """P(best>) with its interval needs enough runs: two per group print 'n too small', never [1.00, 1.00]."""
    from attn.runner.report import table_rows

    runs = [_run("a", s, 0.9 + 0.01 * s) for s in range(n)] + [_run("b", s, 0.5 + 0.01 * s) for s in range(n)]
    groups, _ = aggregate_with_verdicts(runs, "test/acc", ("attention",))
    text = " ".join(" ".join(r) for r in table_rows(groups["t"], ("attention",), ["test/acc"]))
    assert "[1.00, 1.00]" not in text and "n too small" in text


def test_attn_report_reads_several_folders_as_one(tmp_path):
    """``attn report A B``: the runs of both, each once (a folder given twice counts once), the report
    written into the first folder beside its own report."""
    from typer.testing import CliRunner

    from attn.cli.main import app
    from attn.datamodules.files import write_json_atomic

    for folder, kind in (("a", "scaled_dot"), ("b", "linear")):
        for seed in range(3):
            run_dir = tmp_path / folder / f"{kind}-{seed}"
            run_dir.mkdir(parents=True)
            config = {"task": {"name": "t"}, "attention": {"kind": kind}, "seed": seed,
                      "softmax": {"name": "softmax", "temperature": 1.0}}  # fmt: skip
            acc = (0.9 if kind == "scaled_dot" else 0.6) + 0.01 * seed
            record = {"status": "completed", "run_dir": str(run_dir), "config": config,
                      "metrics": {"test/acc": acc}, "best_checkpoint": None, "error": None,
                      "started": "2026-12-07T00:00:00+00:00", "finished": "2026-12-07T00:00:10+00:00",
                      "duration_s": 10.0}  # fmt: skip
            write_json_atomic(run_dir / "results.json", record)
    out = CliRunner().invoke(
        app, ["report", str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "a"), "--no-plots"]
    )
    assert out.exit_code == 0, out.output
    assert "6 runs read: 6 completed" in out.output and "best: scaled_dot" in out.output
    assert (tmp_path / "a" / "report-combined" / "summary.csv").is_file()
    assert not (tmp_path / "a" / "report").exists()


def test_a_narrow_terminal_gets_one_record_per_group_with_no_value_cut(tmp_path):
    from typer.testing import CliRunner

    from attn.cli.main import app
    from attn.datamodules.files import write_json_atomic

    for kind, base in (("scaled_dot", 0.9), ("linear", 0.6)):
        for seed in range(3):
            run_dir = tmp_path / "runs" / f"{kind}-{seed}"
            run_dir.mkdir(parents=True)
            config = {"task": {"name": "t"}, "attention": {"kind": kind}, "seed": seed,
                      "softmax": {"name": "softmax", "temperature": 1.0}}  # fmt: skip
            record = {"status": "completed", "run_dir": str(run_dir), "config": config,
                      "metrics": {"test/acc": base + 0.01 * seed}, "best_checkpoint": None, "error": None,
                      "started": "2026-12-07T00:00:00+00:00", "finished": "2026-12-07T00:00:10+00:00",
                      "duration_s": 10.0}  # fmt: skip
            write_json_atomic(run_dir / "results.json", record)
    out = CliRunner().invoke(app, ["report", str(tmp_path / "runs"), "--no-plots"], env={"COLUMNS": "80"})
    assert out.exit_code == 0, out.output
    record = next(line for line in out.output.splitlines() if line.startswith("- attention: scaled_dot"))
    assert "test/acc mean ± std [95% CI]: 0.9100 ± 0.0100 [0.8852, 0.9348]" in record
    assert "vs best: best" in record
    assert "…" not in out.output  # no header cut
