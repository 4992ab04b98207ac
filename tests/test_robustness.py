"""Runs that survive: signals, exact resume, divergence, bad data, bad input, corrupt records."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from attn.cli.main import app
from attn.runner.config import load
from attn.runner.errors import ConfigError
from attn.runner.records import read_record
from attn.runner.resume import prepare_resume
from attn.runner.run import run


def _bad_overrides() -> list:
    """The bad-override table of test_config.py (tests are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_attn_test_config", Path(__file__).with_name("test_config.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BAD


ATTN = str(Path(sys.executable).parent / "attn")
# Long enough (about 0.5 s per epoch of model=small here, 4 epochs) for a signal to land inside training.
SIGNALLED = [
    "model=small", "logger=csv", "baseline=false", "diagnostics.enabled=false",
    "task.datamodule.n_train=4096", "task.datamodule.n_test=512", "trainer.max_epochs=4",
    "trainer.enable_progress_bar=false",
]  # fmt: skip


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background test runner may ignore SIGINT


def start(run_dir: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled", "ATTN_RUN_DIR": str(run_dir)}
    return subprocess.Popen(
        [ATTN, "train", *SIGNALLED, *args], env=env, preexec_fn=_default_sigint,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def wait_for_training(run_dir: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until the first epoch's checkpoint exists: the run is then inside epoch 1."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if list((run_dir / "checkpoints").glob("best-*.ckpt")):
            time.sleep(0.3)
            return
        time.sleep(0.05)
    pytest.fail(f"training never reached epoch 1: {proc.communicate()[0][-2000:]}")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("full") / "run"
    proc = start(run_dir)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-2000:]
    return read_record(run_dir / "results.json")["metrics"]


def test_every_stopping_signal_has_its_exit_code():
    from attn.runner.signals import RunInterrupted, exit_code

    for sig, code in [
        (signal.SIGINT, 130),
        (signal.SIGTERM, 143),
        (signal.SIGUSR1, 138),
        (signal.SIGUSR2, 140),
    ]:
        assert exit_code("interrupted", RunInterrupted(sig, 7, saved=True)) == code


@pytest.mark.slow
@pytest.mark.xdist_group("signals")  # one worker: the two share the module's uninterrupted run
@pytest.mark.parametrize(
    # One signal of each kind end to end: the user's (SIGINT) and a scheduler's warning before a time limit
    # (SIGUSR1, sbatch --signal). The same path for SIGTERM is run end to end by test_sweep.py (kill of a
    # sweep) and test_slurm.py (scontrol requeue), for SIGUSR2 by test_slurm.py (submitit's time-out).
    "sig, code",
    [(signal.SIGINT, 130), (signal.SIGUSR1, 138)],
)
def test_signal_saves_stops_and_resume_matches_uninterrupted(tmp_path, uninterrupted, sig, code):
    run_dir = tmp_path / "run"
    proc = start(run_dir)
    wait_for_training(run_dir, proc)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, out[-2000:]
    assert "Traceback" not in out
    record = read_record(run_dir / "results.json")
    assert record["status"] == "interrupted"
    step = int(record["metrics"]["train/steps"])
    assert 0 < step < uninterrupted["train/steps"]
    assert f"interrupted by {sig.name} at step {step}" in record["error"]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == step

    env = {**os.environ, "WANDB_MODE": "disabled"}
    resumed = subprocess.run([ATTN, "train", f"resume={run_dir}"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = read_record(run_dir / "results.json")
    assert final["status"] == "completed" and final["resumed_from"].endswith("last.ckpt")
    attempts = final["attempts"]  # both attempts, with the total time
    assert [a["status"] for a in attempts] == ["interrupted", "completed"]
    assert [a["exit"] for a in attempts] == [code, 0]
    assert attempts[0]["steps"] == step and attempts[1]["steps"] == uninterrupted["train/steps"]
    assert final["total_duration_s"] == pytest.approx(sum(a["duration_s"] for a in attempts), abs=1e-3)
    assert final["duration_s"] == attempts[1]["duration_s"] < final["total_duration_s"]
    for key, value in uninterrupted.items():
        assert final["metrics"][key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.slow
def test_second_sigint_exits_at_once(tmp_path):
    run_dir = tmp_path / "run"
    # Two batches of 2048 per epoch: a batch takes long enough to signal twice inside it.
    proc = start(run_dir, "model=transformer", "trainer.max_epochs=50", "task.datamodule.batch_size=2048")
    wait_for_training(run_dir, proc)
    proc.send_signal(signal.SIGINT)
    for line in proc.stdout:
        if "SIGINT received" in line:
            break
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130 and time.time() - t0 < 5
    assert "twice" in read_record(run_dir / "results.json")["error"]


def test_resume_refuses_changes_to_the_experiment(train_run):
    run_dir = Path(train_run["run_dir"])
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    record = json.loads((run_dir / "results.json").read_text())
    record["status"] = "interrupted"  # pretend it was cut short
    (run_dir / "results.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"cannot apply attention=additive softmax.temperature=2 "):
        prepare_resume(str(run_dir), ["attention=additive", "softmax.temperature=2", "trainer.max_epochs=9"])
    cfg, resume = prepare_resume(str(run_dir), ["trainer.max_epochs=9", "seed=0"])  # same seed: fine
    assert cfg.trainer.max_epochs == 9 and resume.checkpoint.name == "last.ckpt"
    (run_dir / "results.json").write_text('{"status": "inter')  # truncated: the checkpoint decides
    prepare_resume(str(run_dir), [])


def test_resume_refuses_completed_and_foreign_directories(train_run, tmp_path):
    with pytest.raises(ConfigError, match="already completed"):
        prepare_resume(train_run["run_dir"], [])
    with pytest.raises(ConfigError, match="not a run directory"):
        prepare_resume(str(tmp_path), [])


@pytest.fixture
def train_run(fast) -> dict:
    record, exc = run(load(fast))
    assert exc is None
    return record


def test_divergence_fails_at_the_step_with_a_hint(fast):
    record, _ = run(load([*fast, "optim.lr=1e30"]))
    assert record["status"] == "failed"
    assert record["error"].startswith("TrainingDiverged: non-finite loss (nan) at step ")
    assert "lower optim.lr or raise softmax.temperature" in record["error"]
    assert "\n" not in record["error"]


def test_non_finite_gradient_is_named():
    from attn.models.classification import ClassificationModule
    from attn.models.training import TrainingDiverged

    net = {"d_model": 8, "n_layers": 1, "n_heads": 2, "max_len": 8}
    module = ClassificationModule(20, 2, net=net, attention={"kind": "scaled_dot"})
    for p in module.parameters():
        p.grad = torch.zeros_like(p)
    module.net.head.weight.grad[0, 0] = float("inf")
    with pytest.raises(TrainingDiverged, match=r"non-finite gradient of net.head.weight at step 0"):
        module.on_before_optimizer_step(None)


# --------------------------------------------------------------------------------------------
# bad input through the real command: exit code, one line, no traceback


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def bad_data_cases(d: Path) -> list[tuple[list[str], int, str]]:
    """(overrides, exit code, expected text of the error line) for files with one problem each."""
    rows = "".join(f"{'pos' if i % 2 else 'neg'}\tthe film was fine {i}\n" for i in range(40))
    good = _write(d / "good.tsv", rows)
    files = {
        "empty.tsv": "",
        "label.tsv": "pos\ta\nneg\tb\nmeh\tc\n",
        "tab.tsv": "pos\ta\nno tab here\n",
        "long.tsv": "pos\t" + "w " * 99 + "\nneg\tb\n",
        "x.jsonl": '{"text": "a"}\n',
        "one.tsv": "pos\ta\npos\tb\n",
        "data.xml": "<pos>a</pos>\n",
    }
    paths = {name: _write(d / name, text) for name, text in files.items()}
    task = ["task=text_files", f"task.datamodule.test={good}"]

    def train(name: str) -> list[str]:
        return [*task, f"task.datamodule.train={paths.get(name, d / name)}"]

    mixed = ["task=text_files", f"task.datamodule.train={good}", f"task.datamodule.test={paths['label.tsv']}"]
    return [
        (train("missing.tsv"), 2, "missing.tsv: no such file"),
        (["task=text_files", f"task.datamodule.train={good}"], 2, "task.datamodule.test is required"),
        (train("empty.tsv"), 1, "empty.tsv: no examples (empty split)"),
        (mixed, 1, "label.tsv:3: label 'meh' is not a class; valid choices: neg, pos"),
        (train("tab.tsv"), 1, "tab.tsv:2: expected 'label<TAB>text'"),
        (train("long.tsv"), 1, "long.tsv:1: 99 tokens, more than task.datamodule.max_len=64"),
        (train("x.jsonl"), 1, "x.jsonl:1: expected a JSON object with 'text' and 'label'"),
        (train("one.tsv"), 1, "one class only ('pos'); need at least two"),
        (train("data.xml"), 1, "unknown format '.xml'; valid choices: .tsv, .csv, .jsonl"),
        ([*train("label.tsv"), "task.datamodule.labels=[a,b]"], 1, "label.tsv:1: label 'pos' is not a class"),
        ([*train("tab.tsv"), "model.max_len=8"], 2, "model.max_len=8 is shorter"),
        (["runs_root=/etc/hostname/runs"], 1, "cannot write the run directory"),
        *([] if torch.cuda.is_available() else [(["trainer=gpu"], 2, "accelerator=gpu needs a CUDA GPU")]),
    ]


def test_bad_input_table_exit_code_one_line_no_traceback(tmp_path):
    cases = [(o.split(), 2, first) for o, first, _ in _bad_overrides()] + bad_data_cases(tmp_path)
    assert len(cases) >= 20
    runner = CliRunner()
    quick = ["logger=none", "baseline=false", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]
    for overrides, code, expected in cases:
        result = runner.invoke(app, ["train", *quick, *overrides])
        stderr = result.stderr
        lines = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
        assert result.exit_code == code, (overrides, result.exit_code, stderr[-1500:])
        assert len(lines) == 1 and expected in lines[0], (overrides, stderr[-1500:])
        assert "Traceback" not in stderr + result.stdout, overrides


def test_corrupt_sweep_record_is_reported_and_rerun(tmp_path, capsys):
    from attn.runner.records import read_manifest
    from attn.runner.sweep import start, trial_done

    root = start(["model=small", "seed=0,1"], str(tmp_path / "s"), False)
    trial = read_manifest(root).trials[0]
    (root / trial.run_dir).mkdir(parents=True)
    (root / trial.run_dir / "results.json").write_text('{"status": "completed", "run_')  # cut mid-write
    assert not trial_done(root, trial, warn=True)
    err = capsys.readouterr().err
    assert "results.json: unreadable run record" in err and "trial 000 runs again" in err


# --------------------------------------------------------------------------------------------
# never "completed" when the result is wrong


def test_gradient_norm_overflow_is_a_divergence_not_the_end_of_the_data():
    from attn.models.classification import ClassificationModule
    from attn.models.training import TrainingDiverged

    net = {"d_model": 8, "n_layers": 1, "n_heads": 2, "max_len": 8}
    module = ClassificationModule(20, 2, net=net, attention={"kind": "scaled_dot"})
    for p in module.parameters():
        p.grad = torch.full_like(p, 1e30)  # every entry finite, every per-tensor norm overflows
    with pytest.raises(TrainingDiverged, match=r"gradient norm overflows float32 \(every gradient is finite"):
        module.on_before_optimizer_step(None)


@pytest.mark.parametrize("name", ["sparsemax", "entmax15"])
def test_sparse_normalisers_give_nan_rows_not_index_errors_beyond_the_dtype(name):
    from attn.models.softmax import get_softmax

    scores = torch.tensor([[0.5, 1.0, -2.0], [0.1, 0.2, 0.3]])
    out = get_softmax(name)(scores, temperature=1e-300)  # z / T is inf in float32
    assert out.shape == scores.shape and torch.isnan(out).any()  # the run then stops on its NaN loss


@pytest.mark.parametrize(
    "softmax, temperature",
    [("softmax", "1e-30"), ("entmax15", "1e-45"), ("sparsemax", "1e-45")],
)
def test_extreme_temperature_stops_with_the_divergence_line(fast, softmax, temperature):
    """softmax at T = 1e-30: a non-finite gradient; the sparse normalisers at 1e-45: z / T is inf."""
    overrides = [f"softmax={softmax}", f"softmax.temperature={temperature}", "trainer.max_epochs=1",
                 "trainer.limit_train_batches=5"]  # fmt: skip
    record, _ = run(load([*fast, *overrides]))
    assert record["status"] == "failed", record["metrics"]
    assert record["error"].startswith("TrainingDiverged: "), record["error"]
    assert "lower optim.lr or raise softmax.temperature" in record["error"]


@pytest.mark.parametrize("softmax", ["entmax15", "sparsemax"])
def test_sparse_normalisers_at_a_tiny_temperature_are_hard_attention(fast, softmax):
    """At T = 1e-30 sparsemax and 1.5-entmax are the argmax of each row, exactly: masked entries stay out of
    the support at any scale (issue 25), so the gradient through the logits is zero, not an overflow, and
    the run completes (it stopped as diverged before only because masked entries joined the support)."""
    overrides = [f"softmax={softmax}", "softmax.temperature=1e-30", "trainer.max_epochs=1",
                 "trainer.limit_train_batches=5"]  # fmt: skip
    record, exc = run(load([*fast, *overrides]))
    assert exc is None and record["status"] == "completed", record["error"]
    assert all(math.isfinite(v) for v in record["metrics"].values())


def test_fewer_steps_than_asked_is_not_completed(fast, monkeypatch):
    from attn.models.training import AttnModule

    original = AttnModule.on_before_optimizer_step

    def stop_early(self, optimizer):
        if self.global_step == 2:
            raise StopIteration  # what Lightning takes for the end of the data
        original(self, optimizer)

    monkeypatch.setattr(AttnModule, "on_before_optimizer_step", stop_early)
    record, _ = run(load(fast))
    assert record["status"] == "failed"
    assert "training ended after 2 of 8 steps without an error" in record["error"]


def test_non_finite_test_metrics_are_not_completed(fast, monkeypatch):
    import lightning as L

    monkeypatch.setattr(L.Trainer, "test", lambda self, *a, **k: [{"test/acc": 0.5, "test/loss": math.nan}])
    record, _ = run(load(fast))
    assert record["status"] == "failed"
    assert "test metrics are not finite (test/loss=nan)" in record["error"]


def test_a_stop_on_an_epochs_last_batch_waits_for_its_validation(tmp_path):
    """Saved after an epoch's last training batch, a run would resume with that epoch done and never
    validate it (a SLURM requeue once hit that window: epoch 3 was missing from metrics.csv). The stop
    waits one batch there; on any other batch it saves and stops at once."""
    from types import SimpleNamespace

    from attn.runner.records import RunRecord
    from attn.runner.signals import RunInterrupted, SignalStop

    saved = []

    def trainer(last: bool) -> SimpleNamespace:
        progress = SimpleNamespace(is_last_batch=last)
        return SimpleNamespace(
            world_size=1, global_step=128, default_root_dir=str(tmp_path), save_checkpoint=saved.append,
            fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
        )  # fmt: skip

    stop = SignalStop(RunRecord(tmp_path, {}, write=False))
    stop.signum = signal.SIGTERM
    stop.on_train_batch_end(trainer(last=True))
    assert saved == []  # the epoch's validation runs first
    with pytest.raises(RunInterrupted, match="interrupted by SIGTERM at step 128"):
        stop.on_train_batch_end(trainer(last=False))
    assert saved == [tmp_path / "checkpoints" / "last.ckpt"]
