"""attn report: statistics against hand-computed values, problem runs, output files, HTML rendering."""

import json
import math
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from attn.cli.records import write_json_atomic
from attn.cli.report import Run, Stat, aggregate, build, collect, collect_wandb, lower_is_better
from attn.cli.schema import ConfigError

T_975_DF2 = 4.302652729911275  # Student t quantile, 0.975, 2 degrees of freedom (from tables)
SCORES = {  # (attention, temperature) -> test/acc over seeds 0, 1, 2
    ("scaled_dot", 1.0): [0.80, 0.82, 0.84],  # best: mean 0.82, std 0.02
    ("additive", 1.0): [0.81, 0.83, 0.79],  # mean 0.81: not significantly worse (tied)
    ("linear", 1.0): [0.70, 0.71, 0.72],  # clearly worse
    ("scaled_dot", 4.0): [0.60],  # one seed only
}


def fake_run(root: Path, name: str, attention: str, temperature: float, seed: int, acc: float, **kw) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    record = {
        "status": kw.get("status", "completed"),
        "run_dir": str(run_dir),
        "config": {
            "task": {"name": kw.get("task", "classification")},
            "attention": {"kind": attention},
            "softmax": {"name": "softmax", "temperature": temperature},
            "seed": seed,
        },
        "metrics": kw.get("metrics", {"test/acc": acc, "test/ece": 1 - acc})
        if kw.get("status", "completed") == "completed"
        else {},
        "best_checkpoint": None,
        "started": "2026-11-26T00:00:00+00:00",
        "finished": "2026-11-26T00:00:10+00:00",
        "duration_s": 10.0 + seed,
        "error": kw.get("error"),
    }
    write_json_atomic(run_dir / "results.json", record)
    return run_dir


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    root = tmp_path / "sweep"
    for (attention, temperature), values in SCORES.items():
        for seed, acc in enumerate(values):
            fake_run(root / "trials", f"{attention}-{temperature}-{seed}", attention, temperature, seed, acc)
    fake_run(root / "trials", "crashed", "additive", 4.0, 0, 0.0, status="failed", error="RuntimeError: boom")
    (root / "trials" / "corrupt").mkdir()
    (root / "trials" / "corrupt" / "results.json").write_text('{"status": "compl')  # truncated mid-write
    manifest = {"trials": [{"id": "099", "run_dir": str(root / "trials" / "never-ran"), "error": None}]}
    (root / "sweep.json").write_text(json.dumps(manifest))
    return root


def test_stat_matches_hand_computed_values():
    s = Stat([0.80, 0.82, 0.84])
    assert s.mean == pytest.approx(0.82, abs=1e-12)
    assert s.std == pytest.approx(0.02, abs=1e-12)
    half = T_975_DF2 * 0.02 / math.sqrt(3)
    assert s.ci == pytest.approx((0.82 - half, 0.82 + half), abs=1e-9)
    one = Stat([0.6])
    assert one.n == 1 and math.isnan(one.std) and all(math.isnan(c) for c in one.ci)


def test_best_and_statistically_tied_groups(runs_dir):
    runs = collect(runs_dir)
    (groups,) = aggregate(runs, "test/acc").values()
    by_key = {(g.key[0], g.key[2]): g for g in groups}
    assert by_key[("scaled_dot", 1.0)].best
    assert [g.best for g in groups].count(True) == 1
    additive = by_key[("additive", 1.0)]
    # Welch's t for equal variances and sizes: t = 0.01 / sqrt(2 * 0.02**2 / 3), df = 4.
    t_stat = 0.01 / math.sqrt(2 * 0.02**2 / 3)
    from scipy.stats import t

    assert additive.p_value == pytest.approx(2 * t.sf(t_stat, 4), rel=1e-6)
    assert additive.tied and additive.p_value > 0.5
    linear = by_key[("linear", 1.0)]
    assert not linear.tied and linear.p_value < 0.01
    single = by_key[("scaled_dot", 4.0)]
    assert not single.tied and math.isnan(single.p_value)  # one seed: no test, no claim
    assert by_key[("scaled_dot", 1.0)].duration == pytest.approx(11.0)


def test_lower_is_better_metrics_pick_the_smallest(runs_dir):
    assert lower_is_better("test/ece") and lower_is_better("val/loss") and not lower_is_better("test/acc")
    (groups,) = aggregate(collect(runs_dir), "test/ece").values()
    (best,) = [g for g in groups if g.best]
    assert (best.key[0], best.key[2]) == ("scaled_dot", 1.0)


def test_problem_runs_are_listed_not_dropped(runs_dir):
    runs = collect(runs_dir)
    status = {Path(r.run_dir).name: r.status for r in runs}
    assert status["crashed"] == "failed"
    assert status["corrupt"] == "corrupt"
    assert status["never-ran"] == "missing"
    assert sum(s == "completed" for s in status.values()) == 10
    corrupt = next(r for r in runs if r.status == "corrupt")
    assert "corrupt/results.json" in corrupt.error


def test_report_files(runs_dir):
    rep = build(collect(runs_dir), runs_dir / "report", metric="test/acc", command="attn report sweep")
    out = runs_dir / "report"
    for name in ("report.md", "report.html", "runs.csv", "summary.csv", "report.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "classification_test_acc_vs_T.png").exists()
    assert (out / "classification_ece_vs_T.png").exists()
    md = (out / "report.md").read_text()
    assert "13 runs read (10 completed, 1 corrupt, 1 failed, 1 missing)" in md
    assert "`attn report sweep`" in md
    assert "0.8200 ± 0.0200 [0.7703, 0.8697]" in md  # scaled_dot at T=1
    assert "RuntimeError: boom" in md and "never-ran" in md and "corrupt" in md
    data = json.loads((out / "report.json").read_text())
    best = [g for g in data["tasks"]["classification"] if g["best"]]
    assert best[0]["attention"] == "scaled_dot" and best[0]["metrics"]["test/acc"]["n"] == 3
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("task,attention,softmax,temperature,metric,n,mean,std,ci_low,ci_high")
    assert len(rep.problems) == 3


def test_bad_report_requests(runs_dir, tmp_path):
    with pytest.raises(
        ConfigError, match="metric 'test/bleu' is in no completed run; valid choices: test/acc"
    ):
        build(collect(runs_dir), tmp_path / "r", metric="test/bleu")
    with pytest.raises(ConfigError, match=r"--group-by 'attn\.kind' is in no run's config; use a dotted"):
        build(collect(runs_dir), tmp_path / "r", group_by=("attn.kind",))
    with pytest.raises(ConfigError, match="unknown report format 'pdf'"):
        build(collect(runs_dir), tmp_path / "r", formats=("pdf",))
    with pytest.raises(ConfigError, match="no such directory"):
        collect(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no runs found"):
        build(collect(tmp_path / "empty"), tmp_path / "r")


def test_wandb_runs_through_the_public_api_shape():
    class FakeRun:
        def __init__(self, i, state, acc):
            self.id, self.state = f"r{i}", state
            self.config = {"attention.kind": "dot", "softmax.temperature": 0.5, "task.name": "classification"}
            self.summary = {"test/acc": acc, "_runtime": 12.0, "_step": 3}

    class FakeApi:
        def runs(self, path, filters):
            assert path == "me/attn" and filters == {"group": "study"}
            return [FakeRun(0, "finished", 0.9), FakeRun(1, "crashed", 0.1)]

    runs = collect_wandb("me/attn", "study", api=FakeApi())
    assert [r.status for r in runs] == ["completed", "failed"]
    assert runs[0].get("attention") == "dot" and runs[0].metrics == {"test/acc": 0.9}
    assert isinstance(runs[0], Run) and runs[0].duration_s == 12.0


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(
    _chromium() is None, reason="needs chromium (apt-get install chromium); .ci/run installs it"
)
def test_html_renders_in_headless_chromium(runs_dir, tmp_path):
    build(collect(runs_dir), runs_dir / "report", command="attn report sweep")
    png = tmp_path / "page.png"
    out = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={png}",
            "--window-size=1200,1600",
            (runs_dir / "report" / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", head[16:24]) == (1200, 1600)
    assert "Uncaught" not in out.stderr


@pytest.mark.slow
def test_report_end_to_end_on_the_smoke_sweep(tmp_path):
    import os
    import sys

    attn = str(Path(sys.executable).parent / "attn")
    env = {**os.environ, "WANDB_MODE": "disabled"}
    sweep = subprocess.run(
        [attn, "sweep", "sweep=smoke", "--dir", "s"], cwd=tmp_path, env=env, capture_output=True
    )
    assert sweep.returncode == 0, sweep.stderr
    out = subprocess.run([attn, "report", "s"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "4 runs read: 4 completed" in out.stdout
    report = tmp_path / "s" / "report"
    assert {"attention_additive.png", "attention_scaled_dot.png", "classification_learning_curves.png"} <= {
        p.name for p in report.iterdir()
    }
    assert "data:image/png;base64," in (report / "report.html").read_text()


def test_tasks_without_the_metric_are_ranked_by_their_own(runs_dir, tmp_path):
    for seed, (dot, additive) in enumerate([(90.0, 95.0), (91.0, 96.0), (92.0, 97.0)]):
        for kind, bleu in (("dot", dot), ("additive", additive)):
            metrics = {"test/bleu": bleu, "test/chrf": bleu - 5, "test/loss": 1.0}
            fake_run(
                runs_dir / "trials",
                f"mt-{kind}-{seed}",
                kind,
                1.0,
                seed,
                0.0,
                task="translation",
                metrics=metrics,
            )
    rep = build(collect(runs_dir), tmp_path / "r", formats=("md",), plots=False)
    assert rep.metrics[0] == "test/acc"
    best = {split: [g for g in gs if g.best] for split, gs in rep.groups.items()}
    assert best["classification"][0].key[0] == "scaled_dot" and best["classification"][0].metric == "test/acc"
    assert best["translation"][0].key[0] == "additive" and best["translation"][0].metric == "test/bleu"
    md = (tmp_path / "r" / "report.md").read_text()
    translation = md[md.index("## task: translation") :]
    assert translation.splitlines()[2].startswith("| attention | softmax | temperature | n | test/bleu mean")
    assert "test/acc" not in translation.splitlines()[2]
    with pytest.raises(ConfigError, match="metric 'test/f1' is in no completed run"):
        build(collect(runs_dir), tmp_path / "r2", metric="test/f1", plots=False)
