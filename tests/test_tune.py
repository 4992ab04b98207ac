"""Per-arm tuning (attn sweep --tune): the plan of both phases, selection on validation values only,
fresh final seeds, resume, --extend, the presets, and the report's tuning tables."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attn.runner import sweep as sweep_module
from attn.runner.collect import collect, tunings
from attn.runner.errors import ConfigError
from attn.runner.records import Record, read_manifest, trial_dir
from attn.runner.report import build, tuning_rows
from attn.runner.sweep import plan, plan_extend, start
from attn.runner.tune import FINAL, TUNE, parse_spec, phase, select, tuning_table

from .test_sweep import TINY

ATTN = str(Path(sys.executable).parent / "attn")
GRID = [*TINY, "attention=scaled_dot,linear", "seed=0,1"]
TUNE_LR = {"tune": ["optim.lr=1e-3,3e-3,1e-2"], "tune_seeds": "100,101"}


def tuned(tmp_path, args=GRID, tune=TUNE_LR):
    return start(list(args), str(tmp_path / "s"), False, dict(tune))


def fake_run(root, trial, monitor_value, test_value=0.5, status="completed"):
    """Write the record a trial would leave: its validation best and a test metric."""
    run_dir = trial_dir(root, trial.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = {} if status != "completed" else {"val/best_acc": monitor_value, "test/acc": test_value}
    seed = next((int(o.split("=")[1]) for o in trial.overrides if o.startswith("seed=")), 0)
    config = {
        "task": {"name": "classification"},
        "attention": {"kind": trial.values.get("attention")},
        "softmax": {"name": "softmax", "temperature": 1.0},
        "seed": seed,
    }
    Record(status=status, run_dir=str(run_dir), config=config, metrics=metrics, duration_s=1.0).write(
        run_dir / "results.json"
    )


def lr_of(trial):
    return trial.extra["candidate"]["optim.lr"]


# --------------------------------------------------------------------------------------------
# the plan


def test_plan_has_a_tuning_phase_per_arm_candidate_and_seed_then_the_final_seeds(tmp_path):
    m, _ = plan(GRID, str(tmp_path / "s"), tune=dict(TUNE_LR))
    tune = [t for t in m.trials if phase(t) == TUNE]
    final = [t for t in m.trials if phase(t) == FINAL]
    assert len(tune) == 2 * 3 * 2 and len(final) == 2 * 2
    assert m.trials.index(tune[-1]) < m.trials.index(final[0])  # tuning first
    assert {t.extra["arm"] for t in tune} == {"attention=scaled_dot", "attention=linear"}
    assert {o for t in tune for o in t.overrides if o.startswith("seed=")} == {"seed=100", "seed=101"}
    assert all(not any(o.startswith("optim.lr") for o in t.overrides) for t in final)  # filled in later
    assert all(t.run_dir.startswith("tune/") for t in tune) and all(
        t.run_dir.startswith("trials/") for t in final
    )
    assert {t.extra["monitor"] for t in m.trials} == {"val/best_acc"}  # a validation value, never a test one
    assert m.extra["tune"] == {"keys": {"optim.lr": ["0.001", "0.003", "0.01"]}, "seeds": ["100", "101"],
                               "search": "grid"}  # fmt: skip


@pytest.mark.parametrize(
    ("tune", "message"),
    [
        ({"tune": ["optim.lr=1e-3,1e-2"], "tune_seeds": "1,7"}, "tuning seed 1 is also a final seed"),
        ({"tune": ["optim.lr=1e-3,1e-2"], "tune_seeds": None}, "--tune needs --tune-seeds"),
        ({"tune": ["optim.lr=1e-3"], "tune_seeds": "9"}, "needs at least two distinct candidates"),
        ({"tune": ["optim.lr"], "tune_seeds": "9"}, "expected KEY=VALUES"),
        ({"tune": ["seed=1,2"], "tune_seeds": "9"}, "seeds are not tuned"),
        ({"tune": ["attention=scaled_dot,linear"], "tune_seeds": "9"}, "both swept and tuned"),
        ({"tune": ["optim.lr=1e-3,1e-2"], "tune_seeds": "a"}, "--tune-seeds=a is invalid"),
        ({"tune": [], "tune_seeds": "9"}, "--tune-seeds needs --tune"),
        (
            {"tune": ["optim.lr=1e-3,1e-2"], "tune_seeds": "9", "search": "random"},
            "valid choices: grid, optuna",
        ),
        (
            {"tune": ["optim.lr=1e-3,1e-2"], "tune_seeds": "9", "trials": 3},
            "--tune-trials needs --tune-search optuna",
        ),
        ({"tune": ["optim.nope=1,2"], "tune_seeds": "9"}, "optim.nope"),
    ],
)
def test_bad_tuning_is_one_line_before_anything_runs(tmp_path, tune, message):
    with pytest.raises(ConfigError, match=message) as e:
        plan(GRID, str(tmp_path / "s"), tune=tune)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "s").exists()


def test_a_preset_tunes_and_the_command_line_replaces_its_keys():
    spec = parse_spec([], None, preset={"tune": {"optim.lr": [1e-3, 1e-2]}, "tune_seeds": [7, 8]})
    assert spec.keys == {"optim.lr": ["0.001", "0.01"]} and spec.seeds == ["7", "8"]
    spec = parse_spec(["optim.lr=1e-4,1e-3"], "9", preset={"tune": {"optim.lr": "1,2"}, "tune_seeds": [7]})
    assert spec.keys == {"optim.lr": ["0.0001", "0.001"]} and spec.seeds == ["9"]


@pytest.mark.parametrize(
    "preset", ["mqar_kinds_tuned", "mqar_temperature_tuned", "hard_classification_tuned"]
)
def test_the_tuned_study_presets_compose(preset):
    m, _ = plan([f"sweep={preset}"])
    tune = [t for t in m.trials if phase(t) == TUNE]
    final = [t for t in m.trials if phase(t) == FINAL]
    arms = {t.extra["arm"] for t in final}
    lrs = [float(v) for v in m.extra["tune"]["keys"]["optim.lr"]]
    assert len(lrs) >= 3 and max(lrs) / min(lrs) >= 30  # at least 3 candidates spanning 30x
    assert len(tune) == len(arms) * len(lrs) * len(m.extra["tune"]["seeds"])
    assert len(final) == len(arms) * 5  # 5 final seeds per arm


# --------------------------------------------------------------------------------------------
# selection


def test_selection_is_the_argmax_of_the_mean_validation_value_and_ignores_a_planted_test_metric(tmp_path):
    root = tuned(tmp_path)
    m = read_manifest(root)
    wanted = {"attention=scaled_dot": "0.003", "attention=linear": "0.01"}
    for t in m.trials:
        if phase(t) != TUNE:
            continue
        good = lr_of(t) == wanted[t.extra["arm"]]
        # The test metric points the other way: a selection that read it would pick another lr.
        fake_run(root, t, monitor_value=0.9 if good else 0.6, test_value=0.1 if good else 0.99)
    table = tuning_table(m, root)
    assert select(table) == {arm: {"optim.lr": lr} for arm, lr in wanted.items()}
    # Recomputed from the records by hand: the arg-max of the mean over the tuning seeds.
    for arm, rows in table.items():
        means = {r["candidate"]["optim.lr"]: r["mean"] for r in rows}
        assert max(means, key=means.get) == wanted[arm]
        assert means[wanted[arm]] == pytest.approx(0.9)


def test_ties_go_to_the_earlier_candidate_and_a_failed_run_scores_as_a_failure(tmp_path):
    root = tuned(tmp_path)
    m = read_manifest(root)
    for t in m.trials:
        if phase(t) != TUNE:
            continue
        seed = t.overrides[-1]
        if t.extra["arm"] == "attention=scaled_dot":
            fake_run(root, t, 0.8)  # every candidate ties
        elif lr_of(t) == "0.01" and seed == "seed=101":
            fake_run(root, t, 0.0, status="failed")  # the best on the other seed, but diverged here
        else:
            fake_run(root, t, {"0.001": 0.5, "0.003": 0.7, "0.01": 0.99}[lr_of(t)])
    table = tuning_table(m, root)
    assert select(table) == {
        "attention=scaled_dot": {"optim.lr": "0.001"},
        "attention=linear": {"optim.lr": "0.003"},
    }
    failed = next(r for r in table["attention=linear"] if r["candidate"]["optim.lr"] == "0.01")
    assert failed["failed"] == 1 and failed["mean"] == -math.inf


def fake_launcher(values):
    """A stand-in for the Hydra launch of one phase: it 'runs' the phase's trials by writing records."""
    calls = []

    def launch_trials(root, only=None):
        calls.append(only)
        with sweep_module.locked_manifest(root) as m:
            for t in m.trials:
                if only is not None and phase(t) != only:
                    continue
                if only == FINAL:
                    assert any(o.startswith("optim.lr=") for o in t.overrides)  # selected before it runs
                fake_run(root, t, values(t))
                t.status = "completed"
        return read_manifest(root)

    return launch_trials, calls


def test_launch_tunes_selects_then_runs_the_final_seeds_and_keeps_the_selection(tmp_path, monkeypatch):
    root = tuned(tmp_path)
    launch_trials, calls = fake_launcher(
        lambda t: 0.9 if t.extra.get("candidate", {}).get("optim.lr") == "0.003" else 0.5
    )
    monkeypatch.setattr(sweep_module, "launch_trials", launch_trials)
    m = sweep_module.launch(root)
    assert calls == [TUNE, FINAL]
    assert m.extra["selected"] == {
        "attention=scaled_dot": {"optim.lr": "0.003"},
        "attention=linear": {"optim.lr": "0.003"},
    }
    final = [t for t in m.trials if phase(t) == FINAL]
    assert all(
        t.overrides[-1] == "optim.lr=0.003" and t.extra["selected"] == {"optim.lr": "0.003"} for t in final
    )
    # The final seeds are the grid's, disjoint from the tuning seeds.
    final_seeds = {o for t in final for o in t.overrides if o.startswith("seed=")}
    tune_seeds = {o for t in m.trials if phase(t) == TUNE for o in t.overrides if o.startswith("seed=")}
    assert final_seeds == {"seed=0", "seed=1"} and not final_seeds & tune_seeds
    # A resumed sweep does not select again (the tuning records may change; the choice does not).
    calls.clear()
    sweep_module.launch(root)
    assert calls == [FINAL]
    assert read_manifest(root).extra["selected"] == m.extra["selected"]


def test_an_unfinished_tuning_phase_does_not_select(tmp_path, monkeypatch):
    root = tuned(tmp_path)
    monkeypatch.setattr(sweep_module, "launch_trials", lambda root, only=None: read_manifest(root))
    m = sweep_module.launch(root)  # the tuning trials stay pending (an interrupted session)
    assert "selected" not in m.extra


def tuned_and_run(tmp_path, monkeypatch, best_lr):
    """A tuned sweep run to its end by the stand-in launcher, ``best_lr`` the best candidate of every arm."""
    root = tuned(tmp_path)
    launch_trials, _ = fake_launcher(
        lambda t: 0.9 if t.extra.get("candidate", {}).get("optim.lr") == best_lr else 0.5
    )
    monkeypatch.setattr(sweep_module, "launch_trials", launch_trials)
    sweep_module.launch(root)
    return root


# --------------------------------------------------------------------------------------------
# --extend


def test_extend_adds_exactly_the_new_seeds_per_arm_with_the_selected_values(tmp_path, monkeypatch):
    root = tuned_and_run(tmp_path, monkeypatch, best_lr="0.01")
    before = read_manifest(root)
    m, added = plan_extend(root, ["seed=1,2,3"])  # seed 1 is there already
    assert len(added) == 2 * 2
    assert {(t.values["attention"], t.values["seed"]) for t in added} == {
        (a, s) for a in ("scaled_dot", "linear") for s in ("2", "3")
    }
    assert all(t.overrides[-1] == "optim.lr=0.01" and phase(t) == FINAL for t in added)
    assert m.grid["seed"] == ["0", "1", "2", "3"]
    assert read_manifest(root).to_dict() == before.to_dict()  # a plan writes nothing
    with pytest.raises(ConfigError, match="tuning seed 100 is also a final seed"):
        plan_extend(root, ["seed=100"])
    with pytest.raises(ConfigError, match="cannot apply attention=dot"):
        plan_extend(root, ["seed=5", "attention=dot"])
    # Extended and launched: only the new trials run.
    sweep_module.extend_sweep(root, ["seed=2,3"])
    ran = []
    monkeypatch.setattr(
        sweep_module, "launch_trials",
        lambda root, only=None: ran.extend(t.id for t in read_manifest(root).trials
                                           if phase(t) == only and not sweep_module.trial_done(root, t)),
    )  # fmt: skip
    sweep_module.launch(root)
    assert sorted(ran) == sorted(t.id for t in added)


def test_extend_an_untuned_sweep(tmp_path):
    root = start([*TINY, "attention=scaled_dot,linear", "seed=0"], str(tmp_path / "s"), False)
    _, added = plan_extend(root, ["seed=range(1,3)"])
    assert [t.overrides[-1] for t in added] == ["seed=1", "seed=2", "seed=1", "seed=2"]
    assert [t.id for t in added] == ["002", "003", "004", "005"]


# --------------------------------------------------------------------------------------------
# the report


def test_the_report_leaves_tuning_runs_out_and_shows_the_tuning_table(tmp_path, monkeypatch):
    root = tuned_and_run(tmp_path, monkeypatch, best_lr="0.01")
    runs = collect(root)
    assert sum(r.phase == "tune" for r in runs) == 12
    rep = build(runs, tmp_path / "report", plots=False, tunings=tunings(root))
    assert len(rep.runs) == 4 and rep.tuning_runs == 12
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Tuning" in text and "optim.lr=0.01" in text
    assert "at the edge of its grid (0.001 … 0.01)" in text  # 0.01 is the last candidate
    rows, warnings = tuning_rows(tunings(root)[0])
    assert rows[0][2] == "mean val/best_acc, tuning seeds 100,101" and len(rows) == 1 + 2 * 3
    assert sum(r[-1] == "selected" for r in rows[1:]) == 2 and len(warnings) == 2
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["tuning"][0]["selected"]["attention=linear"] == {"optim.lr": "0.01"}


# --------------------------------------------------------------------------------------------
# end to end


def attn(*args):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run([ATTN, *args], capture_output=True, text=True, env=env, timeout=900)


def test_dry_run_prints_both_phases(tmp_path):
    from typer.testing import CliRunner

    from attn.cli.main import app

    def cli(*args):  # in process: the command's output and exit code, without a new Python each time
        return CliRunner().invoke(app, list(args))

    r = cli("sweep", *GRID, "--tune", "optim.lr=1e-3,3e-3,1e-2", "--tune-seeds", "100,101", "--dry-run")
    assert r.exit_code == 0, r.stderr
    assert "phase tune: 12 trials = 2 arms x candidates of optim.lr (3) x tuning seeds 100,101" in r.stdout
    assert "phase final: 4 trials" in r.stdout and "optim.lr=<selected>" in r.stdout
    r = cli("sweep", "--resume", str(tmp_path), "--tune", "optim.lr=1,2")
    assert r.exit_code == 2 and "--tune options apply to a new sweep" in r.stderr
    r = cli("sweep", *GRID, "--tune", "optim.lr=1e-3,1e-2", "--tune-seeds", "0")
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == [
        "error: tuning seed 0 is also a final seed; give --tune-seeds outside the final seeds (0, 1)"
    ]


@pytest.mark.slow
def test_a_tuned_sweep_runs_both_phases_and_extends(tmp_path):
    out = tmp_path / "s"
    r = attn("sweep", *TINY, "seed=0", "--tune", "optim.lr=1e-3,3e-2", "--tune-seeds", "7", "--dir", str(out),
             "launcher=joblib", "n_jobs=2")  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    m = read_manifest(out)
    assert [phase(t) for t in m.trials] == [TUNE, TUNE, FINAL] and set(m.extra["selected"]) == {"all"}
    tune = tuning_table(m, out)["all"]
    best = max(tune, key=lambda row: row["mean"])  # recomputed from the tuning trials' records
    assert m.extra["selected"]["all"] == best["candidate"]
    r = attn("sweep", "--extend", str(out), "seed=1")
    assert r.returncode == 0, r.stdout + r.stderr
    m = read_manifest(out)
    assert len(m.trials) == 4 and m.trials[-1].overrides[-2:] == [
        "seed=1",
        *[f"optim.lr={best['candidate']['optim.lr']}"],
    ]
    assert [t.extra.get("attempts", t.attempts) for t in m.trials] == [1, 1, 1, 1]  # nothing ran twice
    r = attn("report", str(out), "--no-plots")
    assert r.returncode == 0 and "tuning:" in r.stdout


# --------------------------------------------------------------------------------------------
# Optuna


OPTUNA = {"tune": ["optim.lr=interval(1e-4,1e-2)"], "tune_seeds": "100", "search": "optuna", "trials": 3,
          "log": ["optim.lr"]}  # fmt: skip


def optuna_launcher(stop_after=None):
    """Runs the pending tuning trials by writing records (the best validation value grows with lr)."""
    calls = []

    def launch_trials(root, only=None):
        calls.append(only)
        if stop_after is not None and len(calls) > stop_after:
            (Path(root) / sweep_module.STOP_FILE).write_text("SIGTERM")
            return read_manifest(root)
        with sweep_module.locked_manifest(root) as m:
            for t in m.trials:
                if phase(t) == only and not t.extra.get("told") and t.status != "completed":
                    lr = float(next(o for o in t.overrides if o.startswith("optim.lr=")).split("=")[1])
                    fake_run(root, t, 0.5 + 10 * lr)
                    t.status = "completed"
        return read_manifest(root)

    return launch_trials, calls


def test_optuna_gives_every_arm_the_same_budget_and_resumes(tmp_path, monkeypatch):
    root = tuned(tmp_path, tune=OPTUNA)
    m = read_manifest(root)
    assert [phase(t) for t in m.trials] == [FINAL] * 4  # candidates are proposed while it runs
    launch_trials, _ = optuna_launcher(stop_after=1)
    monkeypatch.setattr(sweep_module, "launch_trials", launch_trials)
    m = sweep_module.launch(root)  # one round, then stopped
    assert "selected" not in m.extra and len([t for t in m.trials if phase(t) == TUNE]) == 4
    (root / sweep_module.STOP_FILE).unlink()
    launch_trials, _ = optuna_launcher()
    monkeypatch.setattr(sweep_module, "launch_trials", launch_trials)
    m = sweep_module.launch(root)
    tune = [t for t in m.trials if phase(t) == TUNE]
    for arm in ("attention=scaled_dot", "attention=linear"):
        mine = [t for t in tune if t.extra["arm"] == arm]
        assert len({t.extra["optuna_trial"] for t in mine}) == 3  # the same budget, after a resume too
        lrs = [float(t.extra["candidate"]["optim.lr"]) for t in mine]
        assert all(1e-4 <= lr <= 1e-2 for lr in lrs)
        assert m.extra["selected"][arm] == {
            "optim.lr": mine[lrs.index(max(lrs))].extra["candidate"]["optim.lr"]
        }
    import optuna

    for journal in (root / "optuna").glob("*.journal"):
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
        (study,) = optuna.get_all_study_summaries(storage)
        trials = optuna.load_study(study_name=study.study_name, storage=storage).trials
        assert [t.state.name for t in trials] == ["COMPLETE"] * 3


@pytest.mark.parametrize(
    ("tune", "message"),
    [
        ({**OPTUNA, "trials": None}, "--tune-trials=None is invalid"),
        ({**OPTUNA, "trials": "x"}, "--tune-trials=x is invalid"),  # as the command line passes it
        ({**OPTUNA, "tune": ["optim.lr=interval(0,1e-2)"]}, "a log scale needs an interval above 0"),
        ({**OPTUNA, "log": ["optim.wd"]}, "--tune-log optim.wd: not a tuned key"),
        ({**OPTUNA, "tune": ["optim.lr=1e-3"], "log": []}, "Optuna needs a space"),
    ],
)
def test_bad_optuna_spaces_are_one_line(tmp_path, tune, message):
    with pytest.raises(ConfigError, match=message):
        plan(GRID, str(tmp_path / "s"), tune=tune)


def test_the_report_draws_a_forest_plot_with_the_selected_values_and_success_rates(tmp_path, monkeypatch):
    from attn.runner import figures

    root = tuned_and_run(tmp_path, monkeypatch, best_lr="0.01")
    runs = collect(root)
    for r in runs:  # a lottery: solved at 0.9
        r.config["task"]["solved_at"] = 0.9
        r.metrics["test/acc"] = 0.95 if r.get("seed") == 0 else 0.55
    rep = build(runs, tmp_path / "report", tunings=tunings(root))
    groups = rep.groups["classification"]
    rows = figures.forest_rows(groups, ("attention", "softmax", "temperature"), "test/acc")
    assert [r.label for r in rows] == [
        f"{k} / softmax / 1.0 (lr=0.01)  n=2" for k in (g.key[0] for g in groups)
    ]
    assert all(r.success[3] == "1/2" and sorted(r.values) == [0.55, 0.95] for r in rows)
    assert (tmp_path / "report" / "classification_test_acc_forest.png").stat().st_size > 1000


def test_short_runs_validate_four_times_an_epoch():
    from attn.runner.run import validation_interval

    assert validation_interval({"max_epochs": 1, "max_steps": -1}) == 0.25
    assert validation_interval({"max_epochs": 2, "max_steps": -1}) == 0.25
    assert validation_interval({"max_epochs": 3, "max_steps": -1}) == 1.0
    assert validation_interval({"max_epochs": 1, "max_steps": -1, "fast_dev_run": True}) == 1.0
    assert validation_interval({"max_epochs": 1, "max_steps": -1, "val_check_interval": 0.5}) == 0.5


@pytest.mark.slow
def test_an_optuna_tuned_sweep_runs_from_the_command_line(tmp_path):
    out = tmp_path / "s"
    search = ["--tune-log", "optim.lr", "--tune-search", "optuna", "--tune-trials", "2", "--tune-seeds", "7"]
    r = attn("sweep", *TINY, "seed=0", "--tune", "optim.lr=interval(1e-4,1e-2)", *search, "--dir", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    m = read_manifest(out)
    tune = [t for t in m.trials if phase(t) == TUNE]
    assert len(tune) == 2 and all(t.extra.get("told") for t in tune)
    assert all(1e-4 <= float(t.extra["candidate"]["optim.lr"]) <= 1e-2 for t in tune)
    assert (out / "optuna" / "all.journal").exists()
    final = next(t for t in m.trials if phase(t) == FINAL)
    assert final.status == "completed" and final.extra["selected"] == m.extra["selected"]["all"]


def test_tuning_runs_are_tagged_in_wandb_and_left_out_of_a_wandb_report(tmp_path):
    from attn.runner.collect import collect_wandb
    from attn.runner.sweep import trial_command

    m = read_manifest(tuned(tmp_path))
    tags = [next(a for a in trial_command(t, "s") if a.startswith("logger.tags=")) for t in m.trials]
    assert "'phase=tune'" in tags[0] and "'phase=final'" in tags[-1]

    class FakeRun:
        def __init__(self, i, tags):
            self.id, self.state, self.tags = f"r{i}", "finished", tags
            self.config = {
                "attention.kind": "dot",
                "softmax.name": "softmax",
                "softmax.temperature": 1.0,
                "task.name": "classification",
            }
            self.summary = {"test/acc": 0.9}

    class FakeApi:
        def runs(self, path, filters):
            return [FakeRun(0, ["phase=tune"]), FakeRun(1, ["phase=final"]), FakeRun(2, [])]

    runs = collect_wandb("me/attn", None, api=FakeApi())
    assert [r.phase for r in runs] == ["tune", "final", None]
    assert build(runs, tmp_path / "r", plots=False).tuning_runs == 1
