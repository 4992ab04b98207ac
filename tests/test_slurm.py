"""SLURM: launcher settings, the sweep's view of its jobs, restarts; and, marked ``slurm``, the same on a
real one-node cluster (``tests/slurm_cluster.sh start``; skipped with the reason when none answers)."""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from attn.runner import slurm
from attn.runner.config import load
from attn.runner.errors import ConfigError
from attn.runner.paths import CONF_DIR
from attn.runner.records import locked_manifest, read_manifest, read_record
from attn.runner.resume import Resume, slurm_restart
from attn.runner.run import run
from attn.runner.sweep import plan, resume_settings, start

ROOT = Path(__file__).resolve().parents[1]
ATTN = str(Path(sys.executable).parent / "attn")
TINY = ["model=small", "logger=csv", "baseline=false", "task.datamodule.n_train=128"]

# One cluster for the whole suite: its tests run one after another on one xdist worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("slurm")


# --------------------------------------------------------------------------------------------
# hydra.launcher.* settings


def _launcher_config(manifest: dict) -> dict:
    from hydra import compose, initialize_config_dir

    settings = [f"++{o}" for o in manifest["launcher_overrides"]]  # as attn.runner.sweep.launch passes them
    overrides = ["sweep_dir=/tmp/s", "trial=0", "hydra/launcher=slurm", *settings]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("launch", overrides=overrides, return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


def test_launcher_settings_reach_the_launcher():
    manifest, _ = plan(
        [
            "seed=0,1",
            "launcher=slurm",
            "hydra.launcher.partition=debug",
            "+hydra.launcher.mem_gb=2",
            "hydra.launcher.timeout_min=10",
            "hydra.launcher.additional_parameters={begin: now}",
        ]
    )
    assert all(not any(o.startswith(("hydra", "+hydra")) for o in t["overrides"]) for t in manifest["trials"])
    launcher = _launcher_config(manifest)
    assert (launcher["partition"], launcher["mem_gb"], launcher["timeout_min"]) == ("debug", 2, 10)
    assert launcher["additional_parameters"] == {"begin": "now"}
    assert launcher["_target_"] == slurm.PLUGIN_NAME
    # Defaults that fit a small node: the cluster's own partition, CPUs and memory per task.
    default = _launcher_config(plan(["seed=0,1", "launcher=slurm"])[0])
    assert (default["cpus_per_task"], default["mem_gb"], default["partition"]) == (None, None, None)
    assert default["tasks_per_node"] == default["nodes"] == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["hydra.launcher.partitoin=debug"],
            "unknown launcher setting hydra.launcher.partitoin for "
            "launcher=slurm; valid keys: account, additional_parameters, array_parallelism",
        ),
        (
            ["hydra.launcher.cpus_per_task=four"],
            "hydra.launcher.cpus_per_task=four is invalid for launcher=slurm: Value 'four'",
        ),
        (["hydra.launcher.tasks_per_node=2"], "is set by attn from trainer.devices; give that instead"),
        (["hydra.launcher.n_jobs=4", "launcher=joblib"], "set by attn from n_jobs=<n>"),
        (["hydra.launcher.partition=x", "launcher=basic"], "launcher=basic has no settings"),
        (
            ["hydra.launcher.mem_gb=-1"],
            "hydra.launcher.mem_gb=-1 is invalid for launcher=slurm: must be >= 1",
        ),
        (
            ["hydra.launcher.timeout_min=0"],
            "hydra.launcher.timeout_min=0 is invalid for launcher=slurm: must be",
        ),
        (
            ["hydra.launcher.signal_delay_s=-5"],
            "signal_delay_s=-5 is invalid for launcher=slurm: must be >= 0",
        ),
    ],
)
def test_launcher_setting_errors_are_one_line(tmp_path, args, message):
    launcher = [] if any(a.startswith("launcher=") for a in args) else ["launcher=slurm"]
    out = subprocess.run(
        [ATTN, "sweep", "seed=0,1", *launcher, *args, "--dry-run"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert message in out.stderr


def test_resume_keeps_or_replaces_launcher_settings(tmp_path):
    root = start(
        ["seed=0,1", "launcher=slurm", "hydra.launcher.partition=a", "hydra.launcher.mem_gb=2"],
        str(tmp_path / "s"),
        False,
    )
    resume_settings(root, ["hydra.launcher.partition=b"])
    assert read_manifest(root)["launcher_overrides"] == [
        "hydra.launcher.partition=b",
        "hydra.launcher.mem_gb=2",
    ]
    with pytest.raises(ConfigError, match=r"unknown launcher setting hydra\.launcher\.memgb"):
        resume_settings(root, ["hydra.launcher.memgb=2"])
    resume_settings(root, ["launcher=joblib"])  # another launcher: the SLURM settings do not apply
    assert read_manifest(root)["launcher_overrides"] == []


# --------------------------------------------------------------------------------------------
# the sweep's view of its jobs (squeue and sacct faked)


class FakeQueue:
    """``squeue`` answers from a script of states, one per look; ``sacct`` from ``final``."""

    def __init__(self, looks: list[dict[str, str]], final: dict[str, str]) -> None:
        self.looks, self.final, self.n = looks, final, 0

    def queue(self) -> dict[str, str]:
        look = self.looks[min(self.n, len(self.looks) - 1)]
        self.n += 1
        return dict(look)

    def state(self, job: str) -> str:
        return self.final.get(job, "GONE")


def _sweep(tmp_path, n: int = 3) -> Path:
    return start(
        [*TINY, f"seed={','.join(map(str, range(n)))}", "launcher=slurm"], str(tmp_path / "s"), False
    )


def _launcher(root: Path, monkeypatch, fake: FakeQueue) -> slurm.AttnSlurmLauncher:
    monkeypatch.setattr(slurm, "queue_states", fake.queue)
    monkeypatch.setattr(slurm, "final_state", fake.state)
    monkeypatch.setenv(slurm.POLL_ENV, "0")
    launcher = slurm.AttnSlurmLauncher()
    launcher.config = OmegaConf.create({"sweep_dir": str(root)})
    return launcher


def _set(root: Path, tid: int, **fields) -> None:
    with locked_manifest(root) as m:
        m.trials[tid].update(**fields)


def test_a_job_that_vanishes_ends_its_trial_and_a_requeued_one_is_waited_for(tmp_path, monkeypatch):
    root = _sweep(tmp_path)
    _set(root, 0, status="running")
    _set(root, 1, status="running")
    looks = [
        {"7_0": "RUNNING", "7_1": "RUNNING", "7_2": "PENDING"},
        {"7_0": "PENDING", "7_1": "RUNNING"},  # 7_0 requeued; 7_2 cancelled while pending (scancel)
        {"7_0": "RUNNING", "7_1": "RUNNING"},
        {"7_0": "RUNNING"},  # 7_1 killed without a record (e.g. kill -9 on the node, then CANCELLED)
        {"7_0": "RUNNING"},
        {},
    ]
    fake = FakeQueue(looks, {"7_1": "CANCELLED", "7_2": "CANCELLED"})
    launcher = _launcher(root, monkeypatch, fake)
    original = launcher._finished

    def finished(root, tid, job, total, done):
        if tid == "0":  # the requeued trial completed in its second attempt
            _set(root, 0, status="completed")
        return original(root, tid, job, total, done)

    monkeypatch.setattr(launcher, "_finished", finished)
    statuses = launcher._wait(root, {"0": "7_0", "1": "7_1", "2": "7_2"})
    assert statuses == {"0": "completed", "1": "interrupted", "2": "cancelled"}
    trials = read_manifest(root)["trials"]
    assert trials[2]["error"] == "SLURM job 7_2 ended CANCELLED before the trial started"
    assert trials[1]["error"].startswith("SLURM job 7_1 ended CANCELLED while the trial ran")


def test_final_state_finds_a_pending_array_task_in_its_arrays_remainder(monkeypatch):
    # What sacct printed here for an array whose task 2 was cancelled while pending: no record of its own
    # (and the controller had forgotten the jobs: scontrol answers nothing).
    sacct = "63_[0-2%3]|CANCELLED by 0\n63_0|COMPLETED\n63_1|COMPLETED\n"
    monkeypatch.setattr(slurm, "_run", lambda cmd: sacct if cmd[0] == "sacct" else None)
    assert [slurm.final_state(j) for j in ("63_0", "63_2", "63_7")] == ["COMPLETED", "CANCELLED", "GONE"]
    sacct = "70_[1,4-9:2]|CANCELLED by 0\n"
    assert [slurm.final_state(f"70_{t}") for t in (1, 6, 5)] == ["CANCELLED", "CANCELLED", "GONE"]
    # The controller still knows the job (seconds after the cancel, before sacct has a record): it decides.
    shown = "JobId=74 ArrayJobId=74 ArrayTaskId=2 JobName=sweep JobState=CANCELLED Reason=None"
    monkeypatch.setattr(slurm, "_run", lambda cmd: shown if cmd[0] == "scontrol" else "")
    assert slurm.final_state("74_2") == "CANCELLED"


def test_resume_adopts_live_jobs_instead_of_submitting_them_again(tmp_path, monkeypatch):
    root = _sweep(tmp_path, 2)
    _set(root, 0, slurm_job="7_0", status="completed")  # still running on the cluster, to be adopted
    _set(root, 1, slurm_job="7_1", status="completed")  # gone: submitted again
    fake = FakeQueue([{"7_0": "RUNNING"}, {"7_0": "RUNNING"}, {}], {})
    launcher = _launcher(root, monkeypatch, fake)
    submitted = []

    class Executor:
        def map_array(self, fn, *columns):
            submitted.extend(columns[0])
            return [type("Job", (), {"job_id": "9_0"})()]

    monkeypatch.setattr(launcher, "_executor", lambda: Executor())
    monkeypatch.setattr(launcher, "_finished", lambda root, tid, job, total, done: "completed")
    returns = launcher.launch([["trial=0"], ["trial=1"]], 0)
    assert submitted == [["trial=1"]]  # trial 0's job was still running: not submitted twice
    assert [r.return_value for r in returns] == ["completed", "completed"]
    assert [t["slurm_job"] for t in read_manifest(root)["trials"]] == ["7_0", "9_0"]


# --------------------------------------------------------------------------------------------
# a job that SLURM restarts


def test_a_slurm_restart_resumes_the_run_of_its_first_start(tmp_path, monkeypatch, fast):
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    monkeypatch.setenv("SLURM_JOB_NAME", "attn-test")
    overrides = [*fast, "logger=csv"]
    record, exc = run(load(overrides))
    run_dir = Path(record["run_dir"])
    assert exc is None and run_dir.name.startswith("slurm-4243-")
    data = record.to_dict()
    data["status"] = data["attempts"][0]["status"] = "interrupted"  # as if requeued mid-run
    (run_dir / "results.json").write_text(json.dumps(data))
    assert slurm_restart(load(overrides)) is None  # the first start: SLURM_RESTART_COUNT absent
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    cfg, resume = slurm_restart(load([*overrides, "trainer.max_epochs=3"]))  # max_epochs may change
    assert isinstance(resume, Resume) and resume.run_dir == run_dir and resume.step > 0
    with pytest.raises(ConfigError, match=r"no longer gives the experiment .*optim.lr"):
        slurm_restart(load([*overrides, "optim.lr=0.5"]))
    final, exc = run(cfg, resume)
    assert exc is None and final["status"] == "completed"
    assert final["resumed_from"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert [a["status"] for a in final["attempts"]] == ["interrupted", "completed"]


def test_only_rank_zero_says_it_was_interrupted(monkeypatch, capsys, tmp_path):
    from attn.runner.records import RunRecord
    from attn.runner.signals import SignalStop

    for rank, expected in ((1, 0), (0, 1)):
        monkeypatch.setenv("SLURM_NTASKS", "2")
        monkeypatch.setenv("SLURM_PROCID", str(rank))
        stop = SignalStop(RunRecord(tmp_path, {}, write=False))
        stop.handle(signal.SIGUSR1, None)
        stop.handle(signal.SIGUSR1, None)  # a repeat (SLURM signals every process of the job): ignored
        assert stop.signum == signal.SIGUSR1
        assert capsys.readouterr().err.count("SIGUSR1 received") == expected


def _fake_slurm(tmp_path: Path) -> dict[str, str]:
    """``sbatch`` that refuses every job as SLURM does for a partition it does not have, an empty
    ``squeue`` and an ``srun`` (submitit looks for it before it submits), first on PATH."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        "#!/bin/sh\necho 'sbatch: error: invalid partition specified: gpuu' >&2\n"
        "echo 'sbatch: error: Batch job submission failed: Invalid partition name specified' >&2\nexit 1\n"
    )
    (bin_dir / "squeue").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("sbatch", "squeue", "srun"):
        (bin_dir / tool).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "WANDB_MODE": "disabled"}


def test_a_refused_sbatch_is_one_line_and_blocks_no_retry(tmp_path):
    """sbatch refusing the array (a partition that does not exist) ends the sweep in one line, exit 2;
    a fresh sweep leaves no manifest, so the corrected command can run with the same --dir (issue 25:
    submitit's FailedJobError traceback, trials left pending)."""
    env = _fake_slurm(tmp_path)
    args = ["sweep", "seed=0,1", *TINY, "launcher=slurm", "hydra.launcher.partition=gpuu", "--dir", "s"]
    out = subprocess.run([ATTN, *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stdout[-2000:] + out.stderr[-2000:]
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: sbatch refused the sweep's jobs: sbatch: error: Batch job submission")
    assert "run the same command again" in line and not (tmp_path / "s" / "sweep.json").exists()
    start(["seed=0,1", *TINY], str(tmp_path / "s"), False)  # the retry is not blocked
    # A sweep that had submitted before keeps its manifest; the refused trials say what happened.
    with locked_manifest(tmp_path / "s") as m:
        m.trials[0].extra["slurm_job"] = "41_0"
    resumed = subprocess.run(
        [ATTN, "sweep", "--resume", "s", "launcher=slurm"], capture_output=True, text=True, cwd=tmp_path,
        env=env, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 2 and "attn sweep --resume" in resumed.stderr.strip().splitlines()[-1]
    trials = read_manifest(tmp_path / "s").trials
    assert [t.status for t in trials] == ["refused", "refused"]
    assert trials[0].error.startswith("sbatch refused the job: sbatch: error: Batch job submission failed")


# --------------------------------------------------------------------------------------------
# on a real cluster


@pytest.fixture(scope="module")
def cluster() -> None:
    """Skips (with the reason) unless a SLURM cluster answers with an idle or busy node."""
    if shutil.which("sinfo") is None:
        pytest.skip("no SLURM client here (tests/slurm_cluster.sh start installs and starts a local cluster)")
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0 or not re.search(r"idle|mixed|allocated", out.stdout):
        pytest.skip("no SLURM cluster answers (tests/slurm_cluster.sh start starts a local one)")


# Trials long enough to be signalled in the middle of training (40 epochs: 20-40 s on 2 cores).
SIGNALLED = [
    "model=small",
    "logger=csv",
    "baseline=false",
    "diagnostics.enabled=false",
    "task.datamodule.n_train=2048",
    "task.datamodule.n_val=128",
    "task.datamodule.n_test=256",
    "trainer.max_epochs=40",
    "trainer.enable_progress_bar=false",
]
SMALL_JOB = ["hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=20"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_", "ATTN_RUN_DIR"))}
    return {
        **env,
        "WANDB_MODE": "disabled",
        slurm.POLL_ENV: "2",
        "PATH": f"{Path(ATTN).parent}:{env['PATH']}",
    }


def _until(what: str, check, timeout: float = 300, every: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out waiting for {what}; queue: {slurm.queue_states()}")


def _finish(proc: subprocess.Popen, timeout: float = 900) -> str:
    """The sweep's output once it ends."""
    return proc.communicate(timeout=timeout)[0]


def _training(run_dir: Path) -> bool:
    """The run finished its first epoch (a checkpoint exists) and trains on."""
    return any((run_dir / "checkpoints").glob("best-*.ckpt"))


def _epochs(run_dir: Path) -> list[int]:
    with (run_dir / "csv" / "metrics.csv").open() as f:
        return [int(r["epoch"]) for r in csv.DictReader(f) if r.get("val/acc")]


def _readme_command(prefix: str) -> str:
    text = (ROOT / "docs" / "scaling.md").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith(prefix)]
    assert lines, f"docs/scaling.md has no command starting with {prefix!r}"
    return lines[0].split("  #")[0].strip()


def _sweep_in_background(root: Path, args: list[str]) -> subprocess.Popen:
    cmd = [ATTN, "sweep", *args, "--dir", str(root)]
    return subprocess.Popen(
        cmd, cwd=root.parent, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _trial(root: Path, tid: int) -> dict:
    return read_manifest(root)["trials"][tid]


def _job(root: Path, tid: int) -> str:
    return _until(
        f"trial {tid}'s job id",
        lambda: root.joinpath("sweep.json").exists() and _trial(root, tid).get("slurm_job"),
    )


@pytest.mark.slurm
@pytest.mark.slow
def test_the_readme_sweep_runs_on_the_cluster_and_reports(cluster, tmp_path):
    command = _readme_command("attn sweep sweep=smoke launcher=slurm")
    out = subprocess.run(
        [*command.split(), "--dir", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(),
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    manifest = read_manifest(tmp_path / "s")
    assert [t["status"] for t in manifest["trials"]] == ["completed"] * len(manifest["trials"])
    jobs = [t["slurm_job"] for t in manifest["trials"]]
    assert all(re.fullmatch(r"\d+_\d+", j) for j in jobs) and len(set(jobs)) == len(jobs)
    # The settings reached sbatch: the job asked for what the documented command gives.
    script = next((tmp_path / "s").rglob("*_submission.sh")).read_text()
    for key, value in re.findall(r"hydra\.launcher\.(\w+)=(\S+)", command):
        flag = {"cpus_per_task": "--cpus-per-task", "mem_gb": "--mem", "timeout_min": "--time"}.get(
            key, f"--{key}"
        )
        expected = {"mem_gb": f"{value}GB"}.get(key, value)
        assert f"#SBATCH {flag}={expected}" in script, (key, script)
    report = subprocess.run(
        [ATTN, "report", str(tmp_path / "s"), "--no-plots"], capture_output=True, text=True, env=_env()
    )
    assert report.returncode == 0, report.stderr[-2000:]
    assert (tmp_path / "s" / "report" / "report.md").exists()


@pytest.mark.slurm
@pytest.mark.slow
def test_requeued_signalled_and_cancelled_trials_end_as_documented(cluster, tmp_path):
    """USR1 and scontrol requeue: the trial saves, is requeued, resumes and completes, and the sweep waits
    for it; a trial cancelled while pending ends as cancelled; --resume completes it; nothing runs twice."""
    root = tmp_path / "s"
    grid = [*SIGNALLED, "seed=0,1,2", "launcher=slurm", *SMALL_JOB]
    proc = _sweep_in_background(root, grid)
    jobs = [_job(root, t) for t in range(3)]
    # Two CPUs: trials 0 and 1 run, trial 2 waits in the queue; cancelled there, it never starts.
    _until(
        "trials 0, 1 running and 2 pending",
        lambda: [slurm.queue_states().get(j) for j in jobs] == ["RUNNING", "RUNNING", "PENDING"],
    )
    subprocess.run(["scancel", jobs[2]], check=True)
    dirs = [root / _trial(root, t)["run_dir"] for t in range(3)]
    _until("trial 0 training", lambda: _training(dirs[0]))
    subprocess.run(["scancel", "--signal=USR1", jobs[0]], check=True)
    _until("trial 1 training", lambda: _training(dirs[1]))
    subprocess.run(["scontrol", "requeue", jobs[1]], check=True)
    out = _finish(proc)
    assert proc.returncode == 1, out[-4000:]
    assert "1 trial(s) not completed" in out and "was requeued" in out
    trials = read_manifest(root)["trials"]
    assert [t["status"] for t in trials] == ["completed", "completed", "cancelled"], out[-3000:]
    assert trials[2]["error"] == f"SLURM job {jobs[2]} ended CANCELLED before the trial started"
    for tid, first in ((0, "SIGUSR1"), (1, "SIGTERM")):
        record = read_record(dirs[tid] / "results.json")
        assert [a["status"] for a in record["attempts"]] == ["interrupted", "completed"], (
            tid,
            record["attempts"],
        )
        assert f"interrupted by {first} at step" in record["attempts"][0]["error"]
        assert record["resumed_from"].endswith("last.ckpt") and trials[tid]["attempts"] == 2
        epochs = _epochs(dirs[tid])
        assert epochs == sorted(set(epochs)) == list(range(40)), epochs  # every epoch once, none lost
        assert not list(dirs[tid].glob("hpc_ckpt_*.ckpt"))
        assert record["provenance"]["slurm"]["restart_count"] == "1"
    resumed = subprocess.run(
        [ATTN, "sweep", "--resume", str(root)], capture_output=True, text=True, env=_env(), timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert [t["status"] for t in read_manifest(root)["trials"]] == ["completed"] * 3


@pytest.mark.slurm
@pytest.mark.slow
def test_timeout_signal_requeues_and_scancel_interrupts(cluster, tmp_path):
    """submitit's time-out signal (USR2): the trial saves, submitit requeues, it completes. scancel
    (SIGTERM) of a running trial: interrupted, the sweep finishes, and --resume continues it."""
    root = tmp_path / "s"
    proc = _sweep_in_background(root, [*SIGNALLED, "seed=0,1", "launcher=slurm", *SMALL_JOB])
    jobs = [_job(root, t) for t in range(2)]
    dirs = [root / _trial(root, t)["run_dir"] for t in range(2)]
    _until("both trials training", lambda: _training(dirs[0]) and _training(dirs[1]))
    subprocess.run(["scancel", "--signal=USR2", jobs[0]], check=True)
    subprocess.run(["scancel", jobs[1]], check=True)
    out = _finish(proc)
    assert proc.returncode == 1, out[-4000:]
    trials = read_manifest(root)["trials"]
    assert [t["status"] for t in trials] == ["completed", "interrupted"], out[-3000:]
    first = read_record(dirs[0] / "results.json")
    assert [a["status"] for a in first["attempts"]] == ["interrupted", "completed"]
    assert "interrupted by SIGUSR2 at step" in first["attempts"][0]["error"]
    second = read_record(dirs[1] / "results.json")
    assert second["status"] == "interrupted" and "SIGTERM" in second["error"]
    steps = second["metrics"]["train/steps"]
    resumed = subprocess.run(
        [ATTN, "sweep", "--resume", str(root)], capture_output=True, text=True, env=_env(), timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    final = read_record(dirs[1] / "results.json")
    assert final["status"] == "completed" and final["attempts"][0]["steps"] == steps
    assert _epochs(dirs[1]) == list(range(40))


@pytest.mark.slurm
@pytest.mark.slow
def test_plain_train_job_resumes_after_usr1_and_requeue(cluster, tmp_path):
    """An sbatch job running attn train: USR1 saves and requeues it; scontrol requeue stops it; each
    restart (SLURM_RESTART_COUNT) resumes the same run directory from its checkpoint."""
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/bash\nsrun {ATTN} train {' '.join(SIGNALLED)}\n")
    sbatch = [
        "sbatch",
        "--parsable",
        "-n1",
        "-c1",
        "--mem=1G",
        "--requeue",
        "--open-mode=append",
        "-o",
        "job.out",
    ]
    out = subprocess.run([*sbatch, str(script)], capture_output=True, text=True, cwd=tmp_path, env=_env())
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split(";")[0]
    log = tmp_path / "job.out"
    run_dir = _until("the run directory", lambda: next((tmp_path / "runs").glob(f"slurm-{job}-*"), None))
    _until("training", lambda: _training(run_dir))
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    _until("restart 1", lambda: log.read_text().count("resuming") == 1)
    resumed = time.time()  # the second attempt trains on once it has saved an epoch of its own
    _until("training again", lambda: (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime > resumed)
    subprocess.run(["scontrol", "requeue", job], check=True)
    _until("restart 2", lambda: log.read_text().count("resuming") == 2)
    _until("the end", lambda: read_record(run_dir / "results.json")["status"] == "completed", timeout=600)
    record = read_record(run_dir / "results.json")
    assert [a["status"] for a in record["attempts"]] == ["interrupted", "interrupted", "completed"]
    assert "SIGUSR1" in record["attempts"][0]["error"] and "SIGTERM" in record["attempts"][1]["error"]
    assert (
        record["resumed_from"].endswith("last.ckpt") and record["provenance"]["slurm"]["restart_count"] == "2"
    )
    assert _epochs(run_dir) == list(range(40))  # every epoch once: the resumes kept the earlier rows
    assert [p.name for p in tmp_path.joinpath("runs").iterdir()] == [run_dir.name]  # one run directory
    text = log.read_text()
    assert text.count("SIGUSR1 received") == 1 and f"requeueing SLURM job {job}" in text
    assert "Previous log files" not in text and not list(run_dir.glob("hpc_ckpt_*.ckpt"))


@pytest.mark.slurm
@pytest.mark.slow
def test_two_task_ddp_job_is_one_run_with_the_single_process_metrics(cluster, tmp_path):
    small = [
        *SIGNALLED[:4],
        "task.datamodule.n_train=512",
        "task.datamodule.n_val=101",
        "task.datamodule.n_test=301",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
    ]
    single = subprocess.run([ATTN, "train", *small], capture_output=True, text=True, cwd=tmp_path, env=_env())
    assert single.returncode == 0, single.stderr[-2000:]
    (one,) = (tmp_path / "runs").iterdir()
    (tmp_path / "ddp").mkdir()
    cmd = [
        "srun",
        "-N1",
        "--ntasks-per-node=2",
        "-c1",
        "--mem-per-cpu=1G",
        ATTN,
        "train",
        *small,
        "trainer=ddp_cpu",
        "trainer.devices=2",
    ]
    ddp = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path / "ddp", env=_env(), timeout=600)
    assert ddp.returncode == 0, ddp.stdout[-2000:] + ddp.stderr[-2000:]
    assert ddp.stdout.count("attn train: completed") == 1
    (run_dir,) = (tmp_path / "ddp" / "runs").iterdir()
    assert run_dir.name.startswith("slurm-")
    a = read_record(one / "results.json")["metrics"]
    record = read_record(run_dir / "results.json")
    b = record["metrics"]
    assert a["test/examples"] == b["test/examples"] == 301 and a["train/steps"] == b["train/steps"]
    assert abs(a["test/acc"] - b["test/acc"]) <= 0.02 and abs(a["test/loss"] - b["test/loss"]) <= 0.02
    assert (record["device"]["world_size"], record["device"]["backend"]) == (2, "gloo")


@pytest.mark.slurm
@pytest.mark.slow
def test_a_tuned_sweep_submits_its_final_array_when_the_tuning_array_has_ended(cluster, tmp_path):
    tiny = [*TINY, "task.datamodule.n_val=64", "task.datamodule.n_test=64", "trainer.max_epochs=1"]
    args = [
        *tiny,
        "seed=0,1",
        "--tune",
        "optim.lr=1e-3,3e-2",
        "--tune-seeds",
        "7",
        "launcher=slurm",
        *SMALL_JOB,
    ]
    proc = _sweep_in_background(tmp_path / "s", args)
    out = _finish(proc)
    assert proc.returncode == 0, out[-3000:]
    m = read_manifest(tmp_path / "s")
    tune = [t for t in m.trials if t.extra.get("phase") == "tune"]
    final = [t for t in m.trials if t.extra.get("phase") == "final"]
    assert len(tune) == 2 and len(final) == 2 and set(m.extra["selected"]) == {"all"}
    arrays = (
        {t.extra["slurm_job"].split("_")[0] for t in tune},
        {t.extra["slurm_job"].split("_")[0] for t in final},
    )
    assert len(arrays[0]) == 1 and len(arrays[1]) == 1 and arrays[0] != arrays[1]  # two arrays
    assert min(t.extra["started"] for t in final) >= max(t.extra["finished"] for t in tune)
    assert all(t.overrides[-1] == f"optim.lr={m.extra['selected']['all']['optim.lr']}" for t in final)


@pytest.mark.slurm
@pytest.mark.slow
def test_successive_halving_on_the_cluster(cluster, tmp_path):
    """--tune-halving on SLURM: every candidate's job pauses at half the budget, the kept one is submitted
    again and resumes from its checkpoint (no step twice), the dropped one stays paused, the final array
    trains at the selection."""
    tiny = [*TINY, "task.datamodule.n_val=64", "task.datamodule.n_test=64", "trainer.max_epochs=2"]
    args = [*tiny, "seed=0", "--tune", "optim.lr=1e-3,3e-2", "--tune-seeds", "7", "--tune-halving", "2",
            "launcher=slurm", *SMALL_JOB]  # fmt: skip
    proc = _sweep_in_background(tmp_path / "s", args)
    out = _finish(proc)
    assert proc.returncode == 0, out[-3000:]
    m = read_manifest(tmp_path / "s")
    tune = [t for t in m.trials if t.extra.get("phase") == "tune"]
    (dropped,) = [t for t in tune if t.extra.get("halted") is not None]
    (kept,) = [t for t in tune if t.extra.get("halted") is None]
    record = json.loads((tmp_path / "s" / kept.run_dir / "results.json").read_text())
    steps = [a["steps"] for a in record["attempts"]]
    assert record["status"] == "completed" and len(steps) == 2 and steps[1] == 2 * steps[0]
    assert m.extra["selected"] == {"all": kept.extra["candidate"]}
    final = [t for t in m.trials if t.extra.get("phase") == "final"]
    assert len(final) == 1 and final[0].status == "completed"
    assert dropped.status != "completed"  # trained to half its budget, never to the end
