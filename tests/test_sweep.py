"""attn sweep: grid expansion, the manifest, trials in their own processes, failures, resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attn.runner.errors import ConfigError
from attn.runner.paths import group_options
from attn.runner.records import read_manifest, read_record
from attn.runner.sweep import expand, plan, resume_settings, start, trial_command

ATTN = str(Path(sys.executable).parent / "attn")


def attn(*args, cwd=None):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run([ATTN, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


# The smoke preset's fixed overrides, for grids of tiny trials.
TINY = [
    "model=small",
    "logger=csv",
    "baseline=false",
    "task.datamodule.n_train=256",
    "task.datamodule.n_val=64",
    "task.datamodule.n_test=64",
    "trainer.max_epochs=1",
]


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def manifest(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "sweep.json").read_text())


def test_expand_is_the_cartesian_product_in_grid_order():
    grid, trials = expand(["attention=dot,additive", "seed=range(3)", "model=small"])
    assert grid == {"attention": ["dot", "additive"], "seed": ["0", "1", "2"]}
    assert len(trials) == 6
    assert trials[0] == ["attention=dot", "seed=0", "model=small"]
    assert trials[-1] == ["attention=additive", "seed=2", "model=small"]


def test_later_values_of_a_key_win():
    grid, trials = expand(["seed=0,1", "softmax.temperature=0.5,1", "seed=7"])
    assert grid == {"softmax.temperature": ["0.5", "1"]}
    assert trials == [["seed=7", "softmax.temperature=0.5"], ["seed=7", "softmax.temperature=1"]]


def test_choice_sweeps_expand():
    grid, trials = expand(["softmax=choice(softmax,entmax15)"])
    assert grid == {"softmax": ["softmax", "entmax15"]} and len(trials) == 2


def test_presets_plan_and_command_line_values_override_them(tmp_path):
    assert {"first", "smoke", "temperature", "attention_kinds", "study"} <= set(group_options("sweep"))
    m, _ = plan(["sweep=smoke"], str(tmp_path / "s"))
    assert len(m["trials"]) == 4 and m["name"] == "smoke"
    m, _ = plan(["sweep=smoke", "softmax.temperature=1"], str(tmp_path / "s"))
    assert m["grid"] == {"attention": ["scaled_dot", "additive"]}
    assert all("softmax.temperature=1" in t["overrides"] for t in m["trials"])
    assert len(plan(["sweep=temperature"])[0]["trials"]) == 15
    # A preset may name its launcher; the command line wins (another launcher drops the preset's n_jobs).
    first = [plan(["sweep=first", *extra])[0] for extra in ([], ["launcher=basic"], ["n_jobs=1"])]
    assert [(m["launcher"], m["n_jobs"]) for m in first] == [("joblib", 2), ("basic", 1), ("joblib", 1)]
    assert len(first[0]["trials"]) == 6


@pytest.mark.slow  # composes and checks 336 trial configs (~30 s)
def test_the_large_presets_plan():
    assert len(plan(["sweep=attention_kinds"])[0]["trials"]) == 21
    study, _ = plan(["sweep=study"])
    assert len(study["trials"]) == 7 * 5 * 3 * 3


@pytest.mark.parametrize(
    "args, expected",
    [
        (["sweep=nope"], "unknown sweep 'nope'; valid choices: attention_kinds"),
        (["seed=0,1", "launcher=mpi"], "unknown launcher 'mpi'; valid choices: basic, joblib"),
        (["seed=0,1", "launcher=joblib", "n_jobs=0"], "n_jobs=0 is invalid"),
        (["seed=0,1", "n_jobs=2"], "use launcher=joblib n_jobs=2"),
        (["seed=1"], "nothing to sweep"),
        (["seed=0,1", "attention=foo"], "unknown attention 'foo'; valid choices: additive"),
        (["attention=linear", "softmax=softmax,sparsemax"], "attention 'linear' has no softmax normaliser"),
        (["seed=0,1", "trainer.max_epoch=3"], "did you mean 'max_epochs'"),
    ],
)
def test_bad_sweeps_are_rejected_before_anything_runs(args, expected, tmp_path):
    with pytest.raises(ConfigError) as e:
        plan(args, str(tmp_path / "s"))
    assert expected in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "s").exists()


def test_skip_invalid_drops_incompatible_combinations():
    m, skipped = plan(["attention=scaled_dot,linear", "softmax=softmax,sparsemax"], skip_invalid=True)
    assert [t["values"] for t in m["trials"]] == [
        {"attention": "scaled_dot", "softmax": "softmax"},
        {"attention": "scaled_dot", "softmax": "sparsemax"},
        {"attention": "linear", "softmax": "softmax"},
    ]
    assert len(skipped) == 1 and "sparsemax" in skipped[0]


def test_trials_share_a_wandb_group_and_carry_their_values_as_tags():
    m, _ = plan(["sweep=smoke", "name=mystudy"])
    cmd = trial_command(m.trials[3], m.name)
    assert cmd[:4] == [sys.executable, "-m", "attn.cli.main", "train"]
    assert "logger.group=mystudy" in cmd
    assert "logger.tags=['attention=additive','softmax.temperature=2']" in cmd
    # The command composes: the tags and group reach the trial's config.
    from attn.runner.config import load

    cfg = load(cmd[4:])
    assert cfg.logger.group == "mystudy"
    assert list(cfg.logger.tags) == ["attention=additive", "softmax.temperature=2"]


@pytest.mark.slow
def test_dry_run_prints_the_grid_and_writes_nothing(tmp_path):
    out = attn("sweep", "sweep=smoke", "seed=0,1", "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "sweep smoke: 8 trials over attention (2), softmax.temperature (2), seed (2)" in out.stdout
    assert len([ln for ln in out.stdout.splitlines() if ln.startswith("  0")]) == 8
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_smoke_sweep_end_to_end(tmp_path):
    out = attn("sweep", "sweep=smoke", "--dir", str(tmp_path / "s"), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[4/4] completed 4, failed 0" in out.stdout
    m = manifest(tmp_path / "s")
    assert [t["status"] for t in m["trials"]] == ["completed"] * 4
    dirs = {t["run_dir"] for t in m["trials"]}
    assert len(dirs) == 4
    for t in m["trials"]:
        assert not Path(t["run_dir"]).is_absolute()  # relative to the sweep: the sweep can move
        record = read_record(tmp_path / "s" / t["run_dir"] / "results.json")
        assert record["status"] == "completed" and record["run_dir"] == str(tmp_path / "s" / t["run_dir"])
        assert record["config"]["attention"]["kind"] == t["values"]["attention"]
        assert str(record["config"]["softmax"]["temperature"]) in {"0.5", "2.0"}
        assert record["config"]["logger"]["group"] == "smoke"
        assert t["wall_s"] > t["duration_s"] > 0
    # A second sweep in the same directory is refused, and resuming a finished sweep runs nothing.
    again = attn("sweep", "sweep=smoke", "--dir", str(tmp_path / "s"), cwd=tmp_path)
    assert again.returncode == 2 and "attn sweep --resume" in again.stderr
    done = attn("sweep", "--resume", str(tmp_path / "s"), cwd=tmp_path)
    assert done.returncode == 0 and "[" not in done.stdout and "4 completed" in done.stdout
    # Moved (or copied to a laptop), the sweep is still whole: resume runs nothing, report finds all.
    moved = tmp_path / "elsewhere" / "s"
    moved.parent.mkdir()
    (tmp_path / "s").rename(moved)
    done = attn("sweep", "--resume", str(moved), cwd=tmp_path)
    assert done.returncode == 0 and "4 completed" in done.stdout and "completed in" not in done.stdout
    assert not (tmp_path / "s").exists()
    rep = attn("report", str(moved), cwd=tmp_path)  # with figures (test_report.py reads them)
    assert rep.returncode == 0 and "4 runs read: 4 completed" in rep.stdout, rep.stdout + rep.stderr
    report = moved / "report"
    assert {"attention_additive.png", "attention_scaled_dot.png", "classification_learning_curves.png"} <= {
        p.name for p in report.iterdir()
    }
    assert "data:image/png;base64," in (report / "report.html").read_text()


@pytest.mark.slow
def test_failing_trial_is_recorded_and_the_others_complete_in_parallel(tmp_path):
    # optim.lr=1e30 diverges inside the run (a failed record); trainer=gpu without a GPU is refused
    # by the trial's own config check before it writes anything (exit 2, its line kept as the error).
    grid = ["optim.lr=3e-3,1e30", "seed=0,1", "launcher=joblib", "n_jobs=2"]
    if not torch_cuda_available():
        grid = ["optim.lr=3e-3,1e30", "trainer=cpu,gpu", "seed=0", "launcher=joblib", "n_jobs=2"]
    out = attn("sweep", *TINY, *grid, "--dir", str(tmp_path / "s"), cwd=tmp_path)
    assert out.returncode == 1
    m = manifest(tmp_path / "s")
    ok = [
        t for t in m["trials"] if float(t["values"]["optim.lr"]) < 1 and t["values"].get("trainer") != "gpu"
    ]
    assert [t["status"] for t in ok] == ["completed"] * len(ok) and ok
    bad = [t for t in m["trials"] if t not in ok]
    assert f"{len(bad)} trial(s) not completed" in out.stderr
    for t in bad:
        assert t["status"] == "failed" and t["error"] and "\n" not in t["error"]
        assert t["id"] in out.stderr
        if t["values"].get("trainer") == "gpu":
            assert "attn train exited with 2: error: trainer.accelerator=gpu needs a CUDA GPU" in t["error"]
            assert not (tmp_path / "s" / t["run_dir"] / "results.json").exists()
        else:
            assert read_record(tmp_path / "s" / t["run_dir"] / "results.json")["status"] == "failed"
            assert "TrainingDiverged" in t["error"]


@pytest.mark.slow
def test_resume_after_killing_the_sweep(tmp_path):
    sweep_dir = tmp_path / "s"
    cmd = [ATTN, "sweep", *TINY, "seed=0,1,2,3", "--dir", str(sweep_dir)]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True, **quiet)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            time.sleep(0.2)
            if not (sweep_dir / "sweep.json").exists():
                continue
            statuses = [t["status"] for t in manifest(sweep_dir)["trials"]]
            if statuses.count("completed") >= 1 and "running" in statuses:
                break
        else:
            pytest.fail("the sweep never reached a completed and a running trial")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and the trial in flight
        proc.wait()
    before = manifest(sweep_dir)
    completed = {t["id"]: t for t in before["trials"] if t["status"] == "completed"}
    killed = [t for t in before["trials"] if t["status"] == "running"]
    assert completed and len(killed) == 1
    stamps = {
        tid: (sweep_dir / t["run_dir"] / "results.json").stat().st_mtime_ns for tid, t in completed.items()
    }

    out = attn("sweep", "--resume", str(sweep_dir), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    after = manifest(sweep_dir)
    assert [t["status"] for t in after["trials"]] == ["completed"] * 4
    for tid, t in completed.items():  # completed trials untouched
        assert (sweep_dir / t["run_dir"] / "results.json").stat().st_mtime_ns == stamps[tid]
        assert next(a for a in after["trials"] if a["id"] == tid)["attempts"] == 1
    (redo,) = [a for a in after["trials"] if a["id"] == killed[0]["id"]]
    assert redo["attempts"] == 2
    # The killed attempt either resumed from its last checkpoint or, without one, was set aside.
    record = read_record(sweep_dir / redo["run_dir"] / "results.json")
    set_aside = (sweep_dir / "attempts" / f"{Path(redo['run_dir']).name}.1").is_dir()
    assert set_aside != ("resumed_from" in record)
    assert out.stdout.count("completed in") == 4 - len(completed)


def test_resume_keeps_the_grid(tmp_path):
    root = start([*TINY, "seed=0,1"], str(tmp_path / "s"), False)
    with pytest.raises(ConfigError, match="keeps the sweep's grid; cannot apply seed=5"):
        resume_settings(root, ["seed=5"])
    resume_settings(root, ["launcher=joblib", "n_jobs=2"])
    assert (manifest(root)["launcher"], manifest(root)["n_jobs"]) == ("joblib", 2)
    with pytest.raises(ConfigError, match="not a sweep directory"):
        read_manifest(tmp_path / "nothing")


def test_slurm_launcher_config_follows_the_trainer():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from attn.runner.paths import CONF_DIR

    overrides = ["sweep_dir=/tmp/s", "trial=0", "devices=4", "num_nodes=2", "gpus_per_node=4"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("launch", overrides=[*overrides, "hydra/launcher=slurm"], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"] == "hydra_plugins.attn.AttnSlurmLauncher"  # attn.runner.slurm registers it
    resolved = {k: OmegaConf.select(cfg, f"hydra.launcher.{k}") for k in ("nodes", "tasks_per_node")}
    assert resolved == {"nodes": 2, "tasks_per_node": 4}
    assert OmegaConf.select(cfg, "hydra.launcher.gpus_per_node") == 4
    assert OmegaConf.select(cfg, "hydra.launcher.max_num_timeout") == 3


def test_trial_dirs_follow_a_moved_sweep(tmp_path):
    from attn.runner.records import trial_dir

    root = tmp_path / "new"
    (root / "trials" / "000-x").mkdir(parents=True)
    assert trial_dir(root, "trials/000-x") == root.resolve() / "trials" / "000-x"
    # A manifest written with absolute paths, then moved: found by name under the new sweep directory.
    old = str(tmp_path / "old" / "trials" / "000-x")
    assert trial_dir(root, old) == root.resolve() / "trials" / "000-x"
    with pytest.raises(ValueError, match="outside"):  # a path elsewhere is never a trial's directory
        trial_dir(root, "/not/moved/999-y")


@pytest.mark.parametrize(
    "text, fault",
    [
        ('{"name": "s", "trials": [', "Expecting value"),
        ("[1, 2]", "not a JSON object"),
        ('{"name": "s", "launcher": "basic", "n_jobs": 1, "grid": {}}', "no trials"),
        (
            '{"name": "s", "launcher": "basic", "n_jobs": 1, "grid": {}, "trials": [{"id": "0"}]}',
            "trial 0 lacks",
        ),
    ],
)
def test_a_damaged_manifest_is_one_line_not_a_traceback(tmp_path, text, fault):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "sweep.json").write_text(text)
    out = attn("sweep", "--resume", str(tmp_path / "s"), cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert (
        line.startswith(f"error: {tmp_path / 's' / 'sweep.json'}: unreadable sweep manifest (")
        and fault in line
    )


def test_swept_values_with_quotes_survive_the_generated_overrides():
    from attn.runner.config import load

    m, _ = plan(['logger.project="it\'s",plain'])
    for trial in m.trials:
        cfg = load(trial_command(trial, m.name)[4:])  # what the trial's attn train will parse
        assert cfg.logger.project in ("it's", "plain")
        assert list(cfg.logger.tags) == [f"logger.project={trial.values['logger.project']}"]


@pytest.mark.slow
def test_sigterm_of_the_sweep_stops_its_trials_cleanly(tmp_path):
    """`kill <sweep>`: the running trial saves and records itself interrupted, no further trial starts,
    no trial process outlives the sweep, and --resume finishes the sweep from the saved state."""
    sweep_dir = tmp_path / "s"
    # 3 epochs of 64 batches: the signal lands inside training (after the first epoch's checkpoint)
    slow = ["model=small", "logger=csv", "baseline=false", "task.datamodule.n_train=4096",
            "trainer.max_epochs=3", "trainer.enable_progress_bar=false",
            "diagnostics.enabled=false"]  # fmt: skip
    cmd = [ATTN, "sweep", *slow, "seed=0,1", "--dir", str(sweep_dir)]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 240
    while time.time() < deadline:
        time.sleep(0.2)
        if (sweep_dir / "sweep.json").exists():
            t = manifest(sweep_dir)["trials"][0]
            if t.get("pid") and list((sweep_dir / t["run_dir"] / "checkpoints").glob("best-*.ckpt")):
                break
    else:
        proc.kill()
        pytest.fail("the first trial never reached its second epoch")
    trial_pid = manifest(sweep_dir)["trials"][0]["pid"]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-2000:]
    assert "sweep stopped by SIGTERM; finish it with: attn sweep --resume" in out
    with pytest.raises(ProcessLookupError):
        os.kill(trial_pid, 0)  # the trial process ended with the sweep
    first, second = manifest(sweep_dir)["trials"]
    record = read_record(sweep_dir / first["run_dir"] / "results.json")
    assert first["status"] == "interrupted" and record["status"] == "interrupted"
    assert "interrupted by SIGTERM at step" in record["error"]
    assert second["status"] == "pending" and not (sweep_dir / second["run_dir"]).exists()
    again = attn("sweep", "--resume", str(sweep_dir), cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    first, second = manifest(sweep_dir)["trials"]
    assert first["status"] == second["status"] == "completed"
    resumed = read_record(sweep_dir / first["run_dir"] / "results.json")
    assert resumed["resumed_from"].endswith("last.ckpt")
    assert [a["status"] for a in resumed["attempts"]] == ["interrupted", "completed"]


def test_dry_run_with_resume_runs_and_writes_nothing(tmp_path):
    """--dry-run --resume prints what the resume would run; it ran the missing trials before (issue 25),
    and on SLURM it would have submitted them."""
    from typer.testing import CliRunner

    from attn.cli.main import app

    root = start(["seed=0,1", "model=small"], str(tmp_path / "s"), False)
    before = (root / "sweep.json").read_text()
    out = CliRunner().invoke(
        app, ["sweep", "--resume", str(root), "--dry-run", "launcher=joblib", "n_jobs=2"]
    )
    assert out.exit_code == 0, out.output
    assert (
        "launcher joblib, n_jobs 2" in out.output
        and "--resume would run 2 of 2 trials: 000 001" in out.output
    )
    assert (root / "sweep.json").read_text() == before  # the settings were not written either
    assert not (root / "trials").exists() and not (root / ".sweep.lock").exists()


def test_values_that_compose_to_one_config_run_once():
    """temperature=1,1.0,1e0 and seed=0,0,1 are two trials, not nine; the rest are listed as skipped
    (issue 25: the copies ran and showed a spread of zero)."""
    m, skipped = plan(["softmax.temperature=1,1.0,1e0", "seed=0,0,1", "model=small"])
    assert [t.values for t in m.trials] == [
        {"softmax.temperature": "1", "seed": "0"}, {"softmax.temperature": "1", "seed": "1"},
    ]  # fmt: skip
    assert len(skipped) == 7 and all("the same configuration as trial 00" in s for s in skipped)
    again = "softmax.temperature=1.0 seed=1 model=small: the same configuration as trial 001, run once"
    assert skipped.count(again) == 2  # 1.0 and 1e0 (which Hydra reads as 1.0) with seed 1
