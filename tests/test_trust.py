"""Nothing moved, run or trusted that the user did not ask for (issue 32): a manifest's paths stay inside
its sweep, a record never makes attn import a module, a tuned sweep neither repeats nor relabels work,
and the inputs that crashed or slipped through are one line. Every test here fails on the code before."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attn.runner import sweep as sweep_module
from attn.runner.collect import collect
from attn.runner.errors import ConfigError
from attn.runner.records import MANIFEST, Record, read_manifest, trial_dir
from attn.runner.report import build
from attn.runner.sweep import lock_sweep, open_existing, replace_config_dirs, start, summary
from attn.runner.tune import FINAL, TUNE, parse_spec, phase

from .test_sweep import TINY
from .test_tune import OPTUNA, fake_launcher, fake_run, optuna_launcher, tuned, tuned_and_run

ATTN = str(Path(sys.executable).parent / "attn")


def edit(root: Path, change) -> None:
    data = json.loads((root / MANIFEST).read_text())
    change(data)
    (root / MANIFEST).write_text(json.dumps(data))


# --------------------------------------------------------------------------------------------
# §1: a manifest's paths


@pytest.mark.parametrize("where", ["absolute", "dot", "dotdot", "link"])
def test_a_run_dir_outside_the_sweep_is_refused_before_anything_moves(tmp_path, where):
    root = start([*TINY, "seed=0,1"], str(tmp_path / "s"), False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    bad = {"absolute": str(foreign), "dot": ".", "dotdot": "..", "link": "trials/out"}[where]
    if where == "link":
        (root / "trials").mkdir()
        (root / "trials" / "out").symlink_to(foreign)

    def change(data):
        data["trials"][0].update(run_dir=bad, status="failed")

    edit(root, change)
    with pytest.raises(ConfigError, match=r"resolves to .* outside") as e:
        read_manifest(root)
    assert "\n" not in str(e.value) and "trial 000" in str(e.value)
    if where == "absolute":  # from the command line: one line, exit 2, nothing moved or written
        out = subprocess.run(
            [ATTN, "sweep", "--resume", str(root)], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert out.stderr.strip().count("\n") == 0 and "outside" in out.stderr
    assert (foreign / "precious.txt").read_text() == "keep me" and sorted(os.listdir(foreign)) == [
        "precious.txt"
    ]
    assert not (root / "attempts").exists() and not (root / ".sweep.lock").exists()


def test_the_report_lists_an_outside_run_dir_as_a_problem_and_reads_nothing_there(tmp_path):
    root = start([*TINY, "seed=0,1"], str(tmp_path / "s"), False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    edit(root, lambda d: d["trials"][0].update(run_dir=str(foreign)))
    runs = collect(root)
    assert not any(r.run_dir == str(foreign) for r in runs)
    assert any(r.status == "corrupt" and "outside" in (r.error or "") for r in runs)
    with pytest.raises(ValueError, match="outside"):
        trial_dir(root, "../x")


def test_a_pid_in_the_manifest_is_signalled_only_if_it_is_the_trials_process(tmp_path):
    root = start([*TINY, "seed=0,1"], str(tmp_path / "s"), False)
    trial = read_manifest(root).trials[0]
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    mine = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"],
        env={**os.environ, "ATTN_RUN_DIR": str(trial_dir(root, trial.run_dir))},
    )
    try:
        assert not sweep_module._runs_trial(
            other.pid, root, trial
        )  # a stranger (the manifest could name pid 1)
        assert not sweep_module._runs_trial(1, root, trial)
        assert sweep_module._runs_trial(mine.pid, root, trial)
    finally:
        other.kill()
        mine.kill()


# --------------------------------------------------------------------------------------------
# §2: the report imports nothing a record names


PAYLOAD = "from pathlib import Path\nPath({marker!r}).write_text('ran')\n"


def fake_classifier_run(run_dir: Path, kind: str, config_extra: dict, seed: int = 0) -> None:
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "best.ckpt").write_bytes(b"not a checkpoint")
    (run_dir / "vocab.json").write_text("[]")
    config = {"task": {"name": "classification", "datamodule": {"_target_": "payload_mod.DataModule"}},
              "attention": {"kind": kind}, "softmax": {"name": "softmax", "temperature": 1.0}, "seed": seed,
              **config_extra}  # fmt: skip
    Record(status="completed", run_dir=str(run_dir), config=config, metrics={"test/acc": 0.9 + seed / 100},
           best_checkpoint=str(run_dir / "checkpoints" / "best.ckpt"), duration_s=1.0).write(
        run_dir / "results.json"
    )  # fmt: skip


def test_the_report_never_imports_a_plugin_or_target_a_record_names(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "ran.txt"
    shared = tmp_path / "shared"
    for i in range(2):
        run_dir = shared / f"runA{i}"
        run_dir.mkdir(parents=True)
        (run_dir / "payload.py").write_text(PAYLOAD.format(marker=str(marker)))
        fake_classifier_run(run_dir, "mine", {"plugins": [str(run_dir / "payload.py")]}, seed=i)
    (tmp_path / "payload_mod.py").write_text(PAYLOAD.format(marker=str(marker)))  # a _target_ it names
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    rep = build(collect(shared), tmp_path / "report", plots=True)
    assert not marker.exists()
    assert any(
        "its kind 'mine' comes from" in n and "payload.py" in n and "--plugins" in n for n in rep.notes
    )
    assert rep.groups["classification"] and "mine" in (tmp_path / "report" / "report.md").read_text()
    # the same for a kind that is registered: its run's _target_ is not attn's, so nothing is rebuilt
    for i in range(2):
        fake_classifier_run(shared / f"runB{i}", "scaled_dot", {}, seed=i)
    build(collect(shared), tmp_path / "report2", plots=True)
    assert not marker.exists()


def test_the_report_imports_a_plugin_when_the_user_gives_it(tmp_path):
    marker = tmp_path / "ran.txt"
    (tmp_path / "given.py").write_text(PAYLOAD.format(marker=str(marker)))
    for i in range(2):
        fake_classifier_run(tmp_path / "runs" / f"r{i}", "scaled_dot", {}, seed=i)
    out = subprocess.run(
        [ATTN, "report", str(tmp_path / "runs"), "--no-plots", "--plugins", str(tmp_path / "given.py")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr and marker.read_text() == "ran"


# --------------------------------------------------------------------------------------------
# §3-§6: tuning


@pytest.mark.parametrize(
    ("given", "kept"),
    [(["optim.lr=1e-3,0.001,3e-3"], ["0.001", "0.003"]), (["softmax.temperature=1,1.0,2"], ["1", "2"])],
)
def test_duplicate_candidates_are_one_candidate(given, kept):
    assert next(iter(parse_spec(given, "9").keys.values())) == kept


@pytest.mark.parametrize("given", ["softmax.temperature=1,1.0", "optim.lr=1e-3,0.001"])
def test_a_tuning_list_of_one_value_is_refused(given):
    with pytest.raises(ConfigError, match=r"two distinct candidates .* names one value"):
        parse_spec([given], "9")


def test_a_lost_selection_is_restored_from_the_final_trials_not_made_again(tmp_path, monkeypatch, capsys):
    root = tuned_and_run(tmp_path, monkeypatch, best_lr="0.01")
    m = read_manifest(root)
    for t in m.trials:  # a tuning record now points elsewhere: a new selection would pick 0.001
        if phase(t) == TUNE:
            fake_run(root, t, 0.99 if t.extra["candidate"]["optim.lr"] == "0.001" else 0.1)
    edit(root, lambda d: [d.pop(k) for k in ("selected", "tuning")])
    launch_trials, _ = fake_launcher(lambda t: 0.5)
    monkeypatch.setattr(sweep_module, "launch_trials", launch_trials)
    m = sweep_module.launch(root)
    finals = [t for t in m.trials if phase(t) == FINAL]
    assert all(
        t.overrides.count("optim.lr=0.01") == 1 and "optim.lr=0.001" not in t.overrides for t in finals
    )
    assert all(t.extra["selected"] == {"optim.lr": "0.01"} for t in finals)
    assert set(map(json.dumps, m.extra["selected"].values())) == {json.dumps({"optim.lr": "0.01"})}
    assert "restored from its final trials' own values" in capsys.readouterr().out


def test_a_selection_that_disagrees_with_the_final_trials_is_refused(tmp_path, monkeypatch):
    root = tuned_and_run(tmp_path, monkeypatch, best_lr="0.01")
    edit(root, lambda d: d["selected"].update({"attention=linear": {"optim.lr": "0.003"}}))
    with pytest.raises(ConfigError, match="is not what its final trials carry"):
        open_existing(root, False)


def test_the_report_labels_a_final_run_with_what_it_trained_at(tmp_path, monkeypatch):
    root = tuned_and_run(tmp_path, monkeypatch, best_lr="0.01")
    for t in read_manifest(root).trials:
        if phase(t) == FINAL:  # the record's config says what the run trained at
            path = trial_dir(root, t.run_dir) / "results.json"
            data = json.loads(path.read_text())
            data["config"]["optim"] = {"lr": 0.01}
            path.write_text(json.dumps(data))
    edit(
        root,
        lambda d: [t.update(selected={"optim.lr": "0.003"}) for t in d["trials"] if t.get("phase") == FINAL],
    )
    runs = [r for r in collect(root) if r.phase == FINAL]
    assert runs and all(r.tuned == {"optim.lr": "0.01"} for r in runs)


def run_optuna(root, monkeypatch, stop_after=None):
    launch_trials, _ = optuna_launcher(stop_after=stop_after)
    monkeypatch.setattr(sweep_module, "launch_trials", launch_trials)
    m = sweep_module.launch(root)
    (root / sweep_module.STOP_FILE).unlink(missing_ok=True)
    return m


def candidates(m):
    out = {}
    for t in m.trials:
        if phase(t) == TUNE:
            out.setdefault(t.extra["arm"], {})[t.extra["optuna_trial"]] = t.extra["candidate"]["optim.lr"]
    return {arm: [c[n] for n in sorted(c)] for arm, c in out.items()}


def test_a_resumed_optuna_search_proposes_what_an_uninterrupted_one_would(tmp_path, monkeypatch):
    """§5: stopped after its first candidate and resumed, an arm gets the candidates an uninterrupted
    search gets: none repeated, none lost (the sampler replayed its first draws after a resume)."""
    whole = run_optuna(tuned(tmp_path / "a", tune=OPTUNA), monkeypatch)
    root = tuned(tmp_path / "b", tune=OPTUNA)
    run_optuna(root, monkeypatch, stop_after=1)
    resumed = run_optuna(root, monkeypatch)
    assert candidates(resumed) == candidates(whole)
    for lrs in candidates(resumed).values():
        assert len(lrs) == 3 and len(set(lrs)) == 3


@pytest.mark.parametrize("damage", ["missing", "cut"])
def test_a_damaged_journal_is_rebuilt_from_the_manifest(tmp_path, monkeypatch, capsys, damage):
    root = tuned(tmp_path, tune=OPTUNA)
    run_optuna(root, monkeypatch, stop_after=2)
    for journal in (root / "optuna").glob("*.journal"):
        if damage == "missing":
            journal.unlink()
        else:
            journal.write_bytes(journal.read_bytes()[:-40])
    m = run_optuna(root, monkeypatch)
    assert "selected" in m.extra and all(len(lrs) == 3 for lrs in candidates(m).values())
    assert "study was rebuilt from the" in capsys.readouterr().out
    import optuna

    for journal in (root / "optuna").glob("*.journal"):
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
        (study,) = optuna.get_all_study_summaries(storage)
        trials = optuna.load_study(study_name=study.study_name, storage=storage).trials
        assert [t.state.name for t in trials] == ["COMPLETE"] * 3


@pytest.mark.parametrize(("code", "status"), [(-9, "interrupted"), (137, "interrupted"), (-15, "interrupted"),
                                              (1, "failed"), (-11, "failed"), (2, "failed")])  # fmt: skip
def test_a_trial_killed_from_outside_is_interrupted_not_failed(code, status):
    assert sweep_module._without_record(code) == status


def test_an_interrupted_tuning_trial_keeps_the_selection_waiting(tmp_path, monkeypatch):
    root = tuned(tmp_path)

    def launch_trials(root, only=None):
        with sweep_module.locked_manifest(root) as m:
            for i, t in enumerate(x for x in m.trials if phase(x) == only):
                if i == 0:
                    t.status = "interrupted"  # kill -9: no record
                else:
                    fake_run(root, t, 0.5)
                    t.status = "completed"
        return read_manifest(root)

    monkeypatch.setattr(sweep_module, "launch_trials", launch_trials)
    m = sweep_module.launch(root)
    assert "selected" not in m.extra and all(t.status == "pending" for t in m.trials if phase(t) == FINAL)


def test_an_arm_whose_every_candidate_failed_selects_nothing(tmp_path, monkeypatch, capsys):
    root = tuned(tmp_path)

    def value(t):
        return None if t.extra["arm"] == "attention=linear" else 0.5

    def launch_trials(root, only=None):
        with sweep_module.locked_manifest(root) as m:
            for t in m.trials:
                if phase(t) == only and not t.extra.get("not_run"):
                    failed = only == TUNE and value(t) is None
                    fake_run(root, t, 0.5, status="failed" if failed else "completed")
                    t.status = "failed" if failed else "completed"
        return read_manifest(root)

    monkeypatch.setattr(sweep_module, "launch_trials", launch_trials)
    m = sweep_module.launch(root)
    assert (
        list(m.extra["selected"]) == ["attention=scaled_dot"] and "attention=linear" in m.extra["unselected"]
    )
    linear = [t for t in m.trials if phase(t) == FINAL and t.extra["arm"] == "attention=linear"]
    assert all(t.status == "failed" and t.error.startswith("not run") for t in linear)
    assert all(not any(o.startswith("optim.lr") for o in t.overrides) for t in linear)
    assert "nothing selected for attention=linear: every one of its 3 tuning candidates failed" in (
        capsys.readouterr().err
    )
    _, failed = summary(m)
    assert {t.id for t in failed} == {t.id for t in linear}


# --------------------------------------------------------------------------------------------
# §7, §8: read-only sweeps, --config-dir on resume


def read_only(monkeypatch):
    def refuse(self, wait=False):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(sweep_module.DirLock, "acquire", refuse)


def test_a_read_only_sweep_is_one_line_and_a_complete_one_has_nothing_to_do(tmp_path, monkeypatch):
    root = tuned_and_run(tmp_path, monkeypatch, best_lr="0.01")
    read_only(monkeypatch)
    assert lock_sweep(root, finishing=True) is None  # complete: nothing to run
    with pytest.raises(ConfigError, match=r"cannot write the sweep directory .* \(Read-only file system\)"):
        lock_sweep(root, finishing=False)  # --extend would write
    (trial_dir(root, read_manifest(root).trials[-1].run_dir) / "results.json").unlink()
    with pytest.raises(ConfigError, match="--resume and --extend need it writable"):
        lock_sweep(root, finishing=True)


def test_the_cli_on_a_read_only_complete_sweep_prints_its_summary(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from attn.cli.main import app

    root = tuned_and_run(tmp_path, monkeypatch, best_lr="0.01")
    read_only(monkeypatch)
    result = CliRunner().invoke(app, ["sweep", "--resume", str(root)])
    assert result.exit_code == 0 and "nothing to run (the sweep directory is read-only)" in result.output


def user_configs(path: Path, temperature: float) -> Path:
    (path / "experiment").mkdir(parents=True)
    (path / "experiment" / "mine.yaml").write_text(
        f"# @package _global_\nsoftmax:\n  temperature: {temperature}\n"
    )
    return path


def test_a_sweep_composes_with_its_own_copy_of_the_config_dirs(tmp_path, monkeypatch):
    """§8: the trials use the sweep's copies, so a moved original breaks nothing; --config-dir on resume
    is accepted and recorded."""
    from attn.runner.config import load
    from attn.runner.paths import CONFIG_DIR_ENV

    original = user_configs(tmp_path / "mine", 0.5)
    monkeypatch.setenv(CONFIG_DIR_ENV, str(original))
    root = start([*TINY, "experiment=mine", "seed=0,1"], str(tmp_path / "s"), False)
    m = read_manifest(root)
    assert m.extra["config_dirs"] == ["config/0"] and (root / "config/0/experiment/mine.yaml").is_file()
    shutil.move(original, tmp_path / "moved")
    monkeypatch.delenv(CONFIG_DIR_ENV)
    open_existing(root, False)  # composes with the copies from here on
    assert load(m.trials[0].overrides).softmax.temperature == 0.5
    env = sweep_module.trial_environment(m, root)
    assert env[CONFIG_DIR_ENV] == str(root / "config" / "0")
    monkeypatch.setenv(CONFIG_DIR_ENV, str(user_configs(tmp_path / "new", 2.0)))
    assert replace_config_dirs(root) == ["config/1"]
    m = read_manifest(root)
    assert m.extra["config_dirs"] == ["config/1"] and m.extra["config_dirs_given"][0]["copies"] == [
        "config/1"
    ]
    assert load(m.trials[0].overrides).softmax.temperature == 2.0


def test_a_manifest_config_dir_outside_the_sweep_is_refused(tmp_path):
    root = start([*TINY, "seed=0,1"], str(tmp_path / "s"), False)
    edit(root, lambda d: d.update(config_dirs=[str(tmp_path)]))
    with pytest.raises(ConfigError, match=r"outside .* resume with --config-dir DIR"):
        open_existing(root, False)


def test_plugins_named_by_a_manifest_are_imported_only_when_given(tmp_path, monkeypatch):
    from attn.runner.plugins import PLUGINS_ENV

    root = start([*TINY, "seed=0,1"], str(tmp_path / "s"), False)
    payload = tmp_path / "evil.py"
    edit(root, lambda d: d.update(env_plugins=[str(payload)]))
    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    with pytest.raises(ConfigError, match=f"names plugins {payload}; .* resume with ATTN_PLUGINS="):
        open_existing(root, False)
    edit(
        root, lambda d: d.update(env_plugins=[]) or d["trials"][0]["overrides"].append("+plugins=[evil_mod]")
    )
    with pytest.raises(ConfigError, match="names plugins evil_mod"):
        open_existing(root, False)
    monkeypatch.setenv(PLUGINS_ENV, "evil_mod")
    open_existing(root, False)
    env = sweep_module.trial_environment(read_manifest(root), root)
    assert env[PLUGINS_ENV] == ""  # a trial gets exactly the sweep's own plugins, not this shell's


# --------------------------------------------------------------------------------------------
# §10, §11: a changed tokenizer, a malformed option file


def test_a_resume_refuses_a_tokenizer_that_did_not_train_the_checkpoint(tmp_path):
    import hashlib

    import torch

    from attn.runner.resume import check_trained_config

    (tmp_path / "tokenizer.json").write_text('{"model": {"vocab": {"a": 0, "b": 1}}}')
    digest = hashlib.sha1((tmp_path / "tokenizer.json").read_bytes()).hexdigest()
    ckpt = tmp_path / "last.ckpt"
    torch.save({"attn_config": {"seed": 0}, "attn_files": {"tokenizer.json": digest}, "global_step": 5}, ckpt)
    assert check_trained_config(tmp_path, ckpt, {"seed": 0}) == 5
    (tmp_path / "tokenizer.json").write_text('{"model": {"vocab": {"a": 1, "b": 0}}}')  # two ids swapped
    with pytest.raises(ConfigError, match=r"tokenizer\.json is not the file that trained last\.ckpt"):
        check_trained_config(tmp_path, ckpt, {"seed": 0})


def test_a_malformed_option_file_is_one_line_naming_it(tmp_path, monkeypatch):
    from attn.runner.config import load
    from attn.runner.paths import CONFIG_DIR_ENV

    (tmp_path / "c" / "attention").mkdir(parents=True)
    (tmp_path / "c" / "attention" / "mine.yaml").write_text("kind: [unclosed\n")
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "c"))
    with pytest.raises(ConfigError) as e:
        load(["attention=mine"])
    assert "\n" not in str(e.value) and "attention/mine.yaml, line 2: not valid YAML" in str(e.value)


# --------------------------------------------------------------------------------------------
# §14, §15: tuning runs wherever they lie, corrupt numbers


def test_a_copied_tuning_folder_is_never_pooled_as_results(tmp_path, monkeypatch):
    root = tuned_and_run(tmp_path, monkeypatch, best_lr="0.01")
    copy = tmp_path / "copied"
    shutil.copytree(root / "tune", copy / "tune")
    for path in (copy / "tune").rglob("results.json"):  # as attn train writes them now
        data = json.loads(path.read_text())
        data["phase"] = "tune"
        path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"the 12 runs found are tuning runs \(phase=tune\)"):
        build(collect(copy / "tune"), tmp_path / "r", plots=False)
    shutil.copytree(root / "trials", copy / "trials")
    rep = build(collect(copy), tmp_path / "r", plots=False)
    assert rep.tuning_runs == 12 and all(r.phase != TUNE for r in rep.runs)


def test_the_phase_tag_of_an_older_record_marks_a_tuning_run(tmp_path):
    run_dir = tmp_path / "runs" / "t"
    run_dir.mkdir(parents=True)
    config = {"task": {"name": "c"}, "seed": 100, "logger": {"tags": ["attention=linear", "phase=tune"]}}
    Record("completed", str(run_dir), config, {"test/acc": 0.5}).write(run_dir / "results.json")
    (run,) = collect(tmp_path / "runs")
    assert run.phase == TUNE


def test_non_finite_metrics_make_a_record_corrupt(tmp_path):
    for i, value in enumerate(["Infinity", "NaN", "0.5"]):
        run_dir = tmp_path / f"r{i}"
        run_dir.mkdir()
        record = {"status": "completed", "run_dir": str(run_dir), "config": {"task": {"name": "c"}},
                  "metrics": {"test/acc": 0}, "best_checkpoint": None, "started": None, "finished": None,
                  "duration_s": 1.0, "error": None}  # fmt: skip
        (run_dir / "results.json").write_text(
            json.dumps(record).replace('"test/acc": 0', f'"test/acc": {value}')
        )
    runs = {Path(r.run_dir).name: r for r in collect(tmp_path)}
    assert runs["r0"].status == runs["r1"].status == "corrupt" and runs["r2"].status == "completed"
    assert "non-finite metric (test/acc=inf)" in runs["r0"].error
