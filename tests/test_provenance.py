"""Every number can be recomputed and says what produced it: test predictions in the run directory,
provenance and attempts in results.json, the report's provenance table and mixed-origin warning."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from attn.runner.config import load
from attn.runner.run import run


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.fixture(scope="module")
def classified(tmp_path_factory, fast_overrides):
    root = tmp_path_factory.mktemp("prov")
    record, exc = run(load([*fast_overrides, f"runs_root={root}"]))
    assert exc is None, exc
    return record


def test_classification_predictions_recompute_the_metrics(classified):
    m = classified["metrics"]
    path = Path(classified["run_dir"]) / classified["predictions"]["path"]
    rows = _rows(path)
    assert len(rows) == m["test/examples"] == 64
    assert [int(r["index"]) for r in rows] == list(range(64))
    probs = [[float(v) for k, v in r.items() if k.startswith("p_")] for r in rows]
    assert all(abs(sum(p) - 1) < 1e-4 for p in probs)
    names = [k[2:] for k in rows[0] if k.startswith("p_")]
    assert names == ["negative", "positive"]  # the task's class names
    assert all(
        r["predicted"] == names[max(range(2), key=p.__getitem__)] for r, p in zip(rows, probs, strict=True)
    )
    acc = sum(r["label"] == r["predicted"] for r in rows) / len(rows)
    assert acc == pytest.approx(m["test/acc"], abs=1e-9)


def test_sequence_task_predictions_recompute_accuracy(fast):
    record, exc = run(load([*fast, "task=mqar", "task.eval_lengths=[]", "trainer.max_epochs=1"]))
    assert exc is None, exc
    rows = _rows(Path(record["run_dir"]) / "predictions" / "test.tsv")
    assert len(rows) == 64
    right = sum(int(r["correct"]) for r in rows)
    total = sum(len(r["targets"].split()) for r in rows)
    assert total == 64 * 8 and right / total == pytest.approx(record["metrics"]["test/acc"], abs=1e-9)


def test_record_says_what_produced_it(classified, monkeypatch):
    import platform
    import socket

    import torch

    prov = classified["provenance"]
    assert prov["attn"] == "0.1.0" and prov["python"] == platform.python_version()
    assert prov["libraries"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert prov["host"] == socket.gethostname() and prov["slurm"] is None
    assert isinstance(prov["command"], list) and prov["cwd"]
    if (Path(__file__).parents[1] / ".git").exists():  # a checkout: the commit, and whether it was edited
        assert len(prov["git"]["commit"]) == 40 and isinstance(prov["git"]["dirty"], bool)
        assert (prov["git"]["diff_sha1"] is not None) == prov["git"]["dirty"]
    assert classified["attempts"][0]["status"] == "completed" and len(classified["attempts"]) == 1
    assert classified["total_duration_s"] == classified["duration_s"]
    from attn.runner.provenance import provenance

    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert provenance(["attn", "train"])["slurm"] == {"job_id": "77", "restart_count": "2"}


def test_git_state_of_a_dirty_tree(tmp_path, monkeypatch):
    import subprocess

    from attn.runner import provenance as p

    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = tmp_path / "src"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.email=a@b", "-c", "user.name=a"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "f.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "f.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    monkeypatch.setattr(p, "SOURCE", repo)
    clean = p.git_state()
    assert clean["dirty"] is False and clean["diff_sha1"] is None
    (repo / "f.py").write_text("x = 2\n")
    dirty = p.git_state()
    assert dirty["commit"] == clean["commit"] and dirty["dirty"] is True and len(dirty["diff_sha1"]) == 40
    (repo / "f.py").write_text("x = 3\n")
    assert p.git_state()["diff_sha1"] != dirty["diff_sha1"]  # another edit, another hash
    monkeypatch.setattr(p, "SOURCE", tmp_path)  # not a checkout (an installed wheel)
    assert p.git_state() is None


def test_report_shows_provenance_and_warns_on_mixed_versions(classified, tmp_path):
    from attn.runner.collect import collect
    from attn.runner.report import build

    root = tmp_path / "runs"
    for seed in (0, 1):
        target = root / f"run{seed}"
        shutil.copytree(classified["run_dir"], target)
    report = build(collect(root), tmp_path / "out", plots=False)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Provenance" in md and "0.1.0" in md and "warning" not in md
    assert json.loads((tmp_path / "out" / "report.json").read_text())["warnings"] == []
    path = root / "run1" / "results.json"
    record = json.loads(path.read_text())
    record["provenance"]["libraries"]["torch"] = "1.0.0"
    path.write_text(json.dumps(record))
    build(collect(root), tmp_path / "out2", plots=False)
    warnings = json.loads((tmp_path / "out2" / "report.json").read_text())["warnings"]
    assert len(warnings) == 1 and "compares runs of 2 code versions" in warnings[0]
    assert "1.0.0" in warnings[0]
    assert report.groups  # the report itself still aggregates


def test_prediction_table_keeps_one_line_per_row_whatever_the_labels():
    """Class names with a tab or a newline (they become the p_<class> columns) no longer break the
    header of predictions/test.tsv (issue 25); cells were already cleaned."""
    from types import SimpleNamespace

    from attn.models.training import PredictionTable

    trainer = SimpleNamespace(global_rank=0, world_size=1, is_global_zero=True)
    table = PredictionTable(["label", "predicted", "p_left\tright", "p_up\ndown"])
    table.add(trainer, [["left\tright", "up\ndown", 0.25, 0.75]])
    lines = table.gather(trainer).splitlines()
    assert lines == ["index\tlabel\tpredicted\tp_left right\tp_up down", "0\tleft right\tup down\t0.25\t0.75"]
