"""Stop when solved (``trainer.stop_at``), pause at a share of the steps (``trainer.pause_at``) and successive
halving of the tuning phase (``attn sweep --tune-halving ETA``): budgets, promotion, selection only among
full-budget candidates, resume, and exact continuation of a paused run (issue 36 §2, §3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attn.runner import sweep as sweep_module
from attn.runner.config import load
from attn.runner.errors import ConfigError
from attn.runner.records import Record, read_manifest, read_metrics, read_record, trial_dir
from attn.runner.run import run
from attn.runner.sweep import attempt_command, plan
from attn.runner.tune import FINAL, TUNE, halving_rungs, parse_spec, phase

from .test_tune import GRID, TUNE_LR, tuned

# A tiny MQAR run: 10 steps an epoch, validated once an epoch, 4 epochs.
MQAR = [
    "task=mqar", "logger=csv", "model=small", "baseline=false", "task.eval_lengths=[]",
    "task.datamodule.n_train=640", "task.datamodule.n_val=128", "task.datamodule.n_test=128",
    "trainer.max_epochs=4", "trainer.enable_progress_bar=false", "diagnostics.enabled=false", "threads=1",
]  # fmt: skip


def train(tmp_path: Path, name: str, *overrides: str) -> Record:
    import os

    os.environ["ATTN_RUN_DIR"] = str(tmp_path / name)
    try:
        record, _ = run(load([*MQAR, *overrides]))
    finally:
        os.environ.pop("ATTN_RUN_DIR")
    return record


def test_stop_at_ends_the_run_at_the_first_validation_past_the_threshold(tmp_path):
    full = train(tmp_path, "full")
    curve = [
        (int(float(r["step"])), float(r["val/acc"]))
        for r in read_metrics(tmp_path / "full")
        if r.get("val/acc")
    ]
    threshold = curve[2][1]  # reached at the third validation at the latest
    first = 10 * next(i + 1 for i, (_, value) in enumerate(curve) if value >= threshold)  # 10 steps an epoch
    stopped = train(tmp_path, "stopped", f"trainer.stop_at={threshold!r}")
    assert (
        stopped.status == "completed"
        and stopped.metrics["train/steps"] == first < full.metrics["train/steps"]
    )
    assert stopped.extra["stop_at"] == {"monitor": "val/acc", "threshold": threshold, "step": first}
    assert (
        stopped.metrics["val/best_acc"] >= threshold and "test/acc" in stopped.metrics
    )  # tested on its best
    assert stopped.metrics["val/steps_to_90pct"] <= first
    never = train(tmp_path, "never", "trainer.stop_at=1.0")
    assert (
        never.extra["stop_at"]["step"] is None and never.metrics["train/steps"] == full.metrics["train/steps"]
    )


def test_a_paused_run_resumed_ends_as_the_uninterrupted_one(tmp_path):
    import os

    from attn.runner.resume import prepare_resume

    full = train(tmp_path, "full")
    paused = train(tmp_path, "paused", "trainer.pause_at=0.5")
    assert paused.status == "interrupted" and paused.extra["paused"] == {"step": 20, "share": 0.5}
    assert paused.metrics["train/steps"] == 20 and "val/best_acc" in paused.metrics
    cfg, resume = prepare_resume(str(tmp_path / "paused"), ["trainer.pause_at=null"])
    os.environ["ATTN_RUN_DIR"] = str(tmp_path / "paused")
    try:
        done, _ = run(cfg, resume)
    finally:
        os.environ.pop("ATTN_RUN_DIR")
    assert done.status == "completed" and [a["status"] for a in done.attempts] == ["interrupted", "completed"]
    for key in ("test/acc", "val/best_acc", "test/loss", "train/steps"):
        assert done.metrics[key] == pytest.approx(full.metrics[key], abs=1e-6)
    steps = [r["step"] for r in read_metrics(tmp_path / "paused") if r.get("val/acc")]
    assert len(steps) == len(set(steps)) == 4  # every validation once: no step trained twice


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.stop_at=1.5", "trainer.stop_at=1.5 is outside the range of val/acc (0 to 1)"),
        ("trainer.stop_at=-0.1", "trainer.stop_at=-0.1 is outside"),
        (
            "trainer.pause_at=1",
            "trainer.pause_at=1.0 is invalid: a share of the run's training steps in (0, 1)",
        ),
        ("trainer.pause_at=0", "trainer.pause_at=0.0 is invalid"),
    ],
)
def test_bad_stop_and_pause_values_are_one_line(override, message):
    with pytest.raises(ConfigError) as e:
        load(["task=mqar", override])
    assert message in str(e.value) and "\n" not in str(e.value)


# --------------------------------------------------------------------------------------------
# successive halving


@pytest.mark.parametrize(
    ("n", "eta", "shares", "counts"),
    [(4, 2, [0.25, 0.5, 1.0], [4, 2, 1]), (4, 3, [1 / 3, 1.0], [4, 2]),
     (9, 3, [1 / 9, 1 / 3, 1.0], [9, 3, 1]), (5, 2, [0.25, 0.5, 1.0], [5, 3, 2])],
)  # fmt: skip
def test_rungs_are_successive_halving(n, eta, shares, counts):
    rungs = halving_rungs(n, eta)
    assert [r["share"] for r in rungs] == pytest.approx(shares) and [r["candidates"] for r in rungs] == counts


@pytest.mark.parametrize(
    ("halving", "message"),
    [("1", "--tune-halving=1 is invalid"), ("x", "--tune-halving=x is invalid"),
     ("4", "--tune-halving=4 with 3 candidates per arm halves nothing")],
)  # fmt: skip
def test_bad_halving_is_one_line(halving, message):
    with pytest.raises(ConfigError, match=message):
        parse_spec(["optim.lr=1e-3,3e-3,1e-2"], "100", halving=halving)


HALVING = {**TUNE_LR, "halving": "2"}  # 3 candidates: 1/2 of the budget (3), then the full budget (2)


def halving_launcher(rung_scores, full_scores, stop_after=None):
    """Stands in for a launch: writes each waiting tuning trial's record as the run would leave it at its
    budget (paused with its best so far, or completed), ``rung_scores``/``full_scores`` by lr."""
    calls = []

    def launch_trials(root, only=None):
        calls.append(only)
        if stop_after is not None and len(calls) > stop_after:
            (Path(root) / sweep_module.STOP_FILE).write_text("SIGTERM")
            return read_manifest(root)
        with sweep_module.locked_manifest(root) as m:
            for t in m.trials:
                if phase(t) != only or t.extra.get("halted") is not None or t.status in ("completed",):
                    continue
                run_dir = trial_dir(root, t.run_dir)
                run_dir.mkdir(parents=True, exist_ok=True)
                lr = next(o for o in t.overrides if o.startswith("optim.lr=")).split("=")[1]
                budget = float(t.extra.get("budget") or 1.0)
                config = {"task": {"name": "c"}, "attention": {"kind": t.values.get("attention")},
                          "softmax": {"name": "softmax", "temperature": 1.0}, "seed": 0}  # fmt: skip
                if only == TUNE and budget < 1:
                    if t.status == "paused":
                        continue
                    record = Record("interrupted", str(run_dir), config, {"val/best_acc": rung_scores[lr]})
                    record.extra["paused"] = {"step": 10, "share": budget}
                    t.status = "paused"
                else:
                    metrics = {"val/best_acc": full_scores.get(lr, 0.5), "test/acc": 0.5}
                    record = Record("completed", str(run_dir), config, metrics)
                    t.status = "completed"
                record.write(run_dir / "results.json")
        return read_manifest(root)

    return launch_trials, calls


def test_halving_keeps_the_best_half_and_selects_only_among_full_budget_candidates(
    tmp_path, monkeypatch, capsys
):
    root = tuned(tmp_path, tune=HALVING)
    m = read_manifest(root)
    assert all(t.extra["budget"] == 0.5 for t in m.trials if phase(t) == TUNE)
    assert m.extra["tune"]["halving"] == {"eta": 2, "rungs": [{"share": 0.5, "candidates": 3},
                                                              {"share": 1.0, "candidates": 2}]}  # fmt: skip
    # at half the budget 0.01 leads, 0.001 is last; at the full budget 0.003 wins, and 0.001 would have
    # won had it gone on: it was dropped, so it is never selected
    launch_trials, calls = halving_launcher(
        {"0.001": 0.2, "0.003": 0.5, "0.01": 0.6}, {"0.001": 0.99, "0.003": 0.9, "0.01": 0.8}
    )
    monkeypatch.setattr(sweep_module, "launch_trials", launch_trials)
    m = sweep_module.launch(root)
    assert calls == [TUNE, TUNE, FINAL]
    assert set(json.dumps(v) for v in m.extra["selected"].values()) == {json.dumps({"optim.lr": "0.003"})}
    halted = {t.extra["candidate"]["optim.lr"] for t in m.trials if t.extra.get("halted") == 0.5}
    assert halted == {"0.001"}
    full = [t for t in m.trials if phase(t) == TUNE and t.extra.get("halted") is None]
    assert all(t.extra["budget"] == 1.0 for t in full)
    assert [e["kept"] for e in m.extra["halving"]] == [[{"optim.lr": "0.01"}, {"optim.lr": "0.003"}]] * 2
    out = capsys.readouterr().out
    assert (
        "halving attention=scaled_dot at 0.5 of the budget: 2 of 3 go on to 1: optim.lr=0.01; optim.lr=0.003"
        in out
    )
    rows = {r["candidate"]["optim.lr"]: r for r in m.extra["tuning"]["attention=linear"]}
    assert rows["0.001"]["halted"] == 0.5 and "halted" not in rows["0.003"]


def test_a_stopped_halving_resumes_at_its_rung_and_runs_nothing_twice(tmp_path, monkeypatch):
    root = tuned(tmp_path, tune=HALVING)
    scores = ({"0.001": 0.2, "0.003": 0.5, "0.01": 0.6}, {"0.003": 0.9, "0.01": 0.8})
    launch_trials, _ = halving_launcher(*scores, stop_after=1)
    monkeypatch.setattr(sweep_module, "launch_trials", launch_trials)
    m = sweep_module.launch(root)  # the first rung ran, then the sweep was stopped
    assert "selected" not in m.extra and all(t.status == "paused" for t in m.trials if phase(t) == TUNE)
    (root / sweep_module.STOP_FILE).unlink()
    launch_trials, calls = halving_launcher(*scores)
    monkeypatch.setattr(sweep_module, "launch_trials", launch_trials)
    m = sweep_module.launch(root)  # the promotion was made before the stop: only the kept ones run now
    assert calls == [TUNE, FINAL] and m.extra["selected"]["attention=linear"] == {"optim.lr": "0.003"}
    assert len(m.extra["halving"]) == 2  # one promotion per arm, not repeated by the resume


def test_a_halving_trial_pauses_at_its_budget_and_resumes_past_it(tmp_path):
    m, _ = plan(GRID, str(tmp_path / "s"), tune=HALVING)
    t = next(t for t in m.trials if phase(t) == TUNE)
    assert attempt_command(t, "s", None)[-1] == "trainer.pause_at=0.5"
    t.extra["budget"] = 1.0
    cmd = attempt_command(t, "s", tmp_path / "run")
    assert cmd[-2:] == [f"resume={tmp_path / 'run'}", "trainer.pause_at=null"]


@pytest.mark.slow
def test_a_halved_tuning_phase_end_to_end(tmp_path):
    """From the command line on tiny MQAR runs: every candidate pauses at half its steps, the kept one
    resumes (no step twice), the dropped one stays paused, and only full-budget candidates are selected."""
    import subprocess
    import sys

    attn = str(Path(sys.executable).parent / "attn")
    args = [attn, "sweep", *MQAR, "trainer.max_epochs=2", "seed=0,1", "--tune", "optim.lr=1e-3,1e-2",
            "--tune-seeds", "100", "--tune-halving", "2", "--dir", str(tmp_path / "s")]  # fmt: skip
    out = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    m = read_manifest(tmp_path / "s")
    tune = [t for t in m.trials if phase(t) == TUNE]
    (dropped,) = [t for t in tune if t.extra.get("halted") is not None]
    (kept,) = [t for t in tune if t.extra.get("halted") is None]
    record = read_record(trial_dir(tmp_path / "s", kept.run_dir) / "results.json")
    assert record.status == "completed" and [a["steps"] for a in record.attempts] == [10.0, 20.0]
    assert (
        read_record(trial_dir(tmp_path / "s", dropped.run_dir) / "results.json").extra["paused"]["step"] == 10
    )
    assert m.extra["selected"] == {"all": kept.extra["candidate"]}
    assert all(t.status == "completed" for t in m.trials if phase(t) == FINAL)
    assert "halving all at 0.5 of the budget: 1 of 2 go on to 1" in out.stdout
    # the dropped candidate is neither failed nor still to run (it read "1 tuning trial(s) failed")
    assert "3 completed, 1 halved out (successive halving), 0 not completed of 4 trials" in out.stdout
    assert "failed and scored" not in out.stdout and "[4/4]" in out.stdout
