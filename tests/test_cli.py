"""The installed `attn` command, run as a user would, in subprocesses."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_BESIDE = Path(sys.executable).parent / "attn"  # the attn installed with this interpreter
ATTN = str(_BESIDE) if _BESIDE.exists() else shutil.which("attn")
REPO = Path(__file__).resolve().parent.parent


def attn(*args, env=None, cwd=None):
    full_env = {**os.environ, "WANDB_MODE": "disabled", **(env or {})}
    return subprocess.run([ATTN, *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=300)


def test_help_lists_commands():
    out = attn("--help")
    assert out.returncode == 0
    for cmd in ("train", "sweep", "report"):
        assert cmd in out.stdout


def test_cli_import_is_light():
    code = (
        "import sys, attn.cli.main; "
        "heavy = [m for m in ('torch', 'lightning', 'wandb', 'hydra', 'omegaconf') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_installed_package_layout(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import attn, attn.models.attention, attn.cli.main; print(attn.__file__)"
    ok = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stderr
    assert Path(ok.stdout.strip()).parent == REPO or "site-packages" in ok.stdout
    for generic in ("models", "cli", "datamodules", "conf"):
        bad = subprocess.run(
            [sys.executable, "-c", f"import {generic}"], capture_output=True, text=True, cwd=tmp_path, env=env
        )
        assert bad.returncode != 0 and "ModuleNotFoundError" in bad.stderr, generic


def test_cfg_job_prints_config():
    out = attn("train", "attention=additive", "softmax.temperature=0.5", "--cfg", "job")
    assert out.returncode == 0
    assert "kind: additive" in out.stdout and "temperature: 0.5" in out.stdout


@pytest.mark.parametrize(
    "override, expected",
    [
        ("attention=foo", "unknown attention 'foo'; valid choices: additive, differential, dot"),
        ("trainer.max_epoch=3", "unknown config key 'trainer.max_epoch'"),
        ("trainer.max_epochs=abc", "trainer.max_epochs='abc' is invalid"),
        ("softmax.temperature=0", "softmax.temperature=0 is invalid"),
    ],
)
def test_bad_input_exit_2_one_line_no_traceback(override, expected):
    out = attn("train", override)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_debug_flag_shows_traceback():
    out = attn("train", "attention=foo", "--debug")
    assert out.returncode == 2 and "Traceback" in out.stderr


@pytest.mark.slow
def test_fast_dev_run_end_to_end(tmp_path):
    out = attn("train", "debug=fast_dev_run", "logger=none", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    (results,) = tmp_path.glob("runs/*/results.json")
    record = json.loads(results.read_text())
    assert record["status"] == "completed" and "test/acc" in record["metrics"]
    assert record["run_dir"] in out.stdout.replace("\n", "")
    steps = int(record["metrics"]["train/steps"])  # counters print as integers, not 1.0000
    assert re.search(rf"train/steps\s*│\s*{steps}\s*│", out.stdout), out.stdout
    assert f"{steps}.0000" not in out.stdout
    umask = os.umask(0)
    os.umask(umask)
    assert results.stat().st_mode & 0o777 == 0o666 & ~umask  # records readable like other files


def test_metric_text_prints_counters_as_integers():
    from attn.cli.show import metric_text

    assert metric_text("test/examples", 2000.0) == "2000"
    assert metric_text("train/steps", 630.0) == "630"
    assert metric_text("test/acc", 1.0) == "1.0000"  # a rate stays a rate
    assert metric_text("test/loss", 0.25) == "0.2500"


@pytest.mark.slow
def test_failed_run_exits_nonzero_with_record(tmp_path):
    args = ["logger=none", "model=small", "task.datamodule.n_train=256", "trainer.max_epochs=1"]
    out = attn("train", *args, "optim.lr=1e30", "baseline=false", cwd=tmp_path)  # diverges in the run
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in out.stderr
    (results,) = tmp_path.glob("runs/*/results.json")
    record = json.loads(results.read_text())
    assert record["status"] == "failed" and record["error"]


@pytest.mark.slow
def test_wandb_offline_writes_run_files(tmp_path, fast):
    run_dir = tmp_path / "run"
    args = [a for a in fast if not a.startswith("logger=")] + ["logger=wandb"]
    out = attn("train", *args, env={"WANDB_MODE": "offline", "ATTN_RUN_DIR": str(run_dir)}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "completed" and record["wandb_id"]
    assert list((run_dir / "wandb").glob(f"offline-run-*-{record['wandb_id']}"))
    assert (run_dir / "csv" / "metrics.csv").is_file()
    # Nothing a user cannot act on: device banners, product tips, W&B's deprecated-setting warning.
    for noise in ("GPU available", "TPU available", "litlogger", "anonymous setting", "Restoring states"):
        assert noise not in out.stdout + out.stderr, noise


def test_run_dir_path_is_printed_on_one_line(monkeypatch, capsys):
    from attn.cli.show import print_summary

    monkeypatch.setenv("COLUMNS", "40")
    path = "/a/rather/long/runs/20261127-050041-classification-scaled_dot-softmax-T1.0"
    print_summary({"status": "completed", "metrics": {"test/acc": 0.5}, "run_dir": path, "duration_s": 1.0})
    assert f"run dir: {path}  (1.0 s)" in capsys.readouterr().out.splitlines()


def test_help_lists_the_config_options_and_presets():
    from typer.testing import CliRunner

    from attn.cli.main import app

    runner = CliRunner()
    train = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "300"}).output
    kinds = "additive, differential, dot, general, linear, local, qknorm, scaled_dot, selective, sigmoid"
    for line in (f"attention: {kinds}, stick_breaking",
                 "precision: 32, bf16-mixed", "trainer: cpu, ddp, ddp_cpu, ddp_fork, gpu",
                 "+key=value", "resume=<run dir>"):  # fmt: skip
        assert line in train, line
    assert str(Path(__file__).resolve().parent.parent / "conf") in train
    sweep = runner.invoke(app, ["sweep", "--help"], env={"COLUMNS": "300"}).output
    presets = (
        "attention_kinds, first, hard_classification_tuned, hard_tasks, length_generalisation, listops_lra,"
        " listops_small, max_retrieval_temperature, modern_kinds_tuned, mqar_kinds, mqar_kinds_tuned,"
        " mqar_temperature_tuned, recall_vs_state, smoke, study, temperature, zoology_figure2,"
        " zoology_figure2_full"
    )
    assert presets in " ".join(sweep.replace("│", " ").split())
    bench = runner.invoke(app, ["bench", "--help"], env={"COLUMNS": "300"}).output
    assert "resume=" not in bench and "softmax: entmax15, softmax, softmax1, sparsemax" in bench
