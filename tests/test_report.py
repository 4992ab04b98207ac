"""attn report: statistics against hand-computed values, problem runs, output files, HTML rendering."""

import json
import math
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from attn.datamodules.files import write_json_atomic
from attn.runner.aggregate import aggregate, aggregate_with_verdicts
from attn.runner.collect import Run, collect, collect_wandb
from attn.runner.errors import ConfigError
from attn.runner.report import build, task_lines
from attn.runner.stats import Stat, holm, lower_is_better, welch_p

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
            **kw.get("config", {}),
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
    assert not single.tied and single.p_value is None  # one seed: no test, no claim
    # Holm over the two comparisons: the smaller p doubled, the larger kept (never below the smaller).
    assert linear.rank().p_holm == pytest.approx(2 * linear.p_value)
    assert additive.rank().p_holm == pytest.approx(max(additive.p_value, 2 * linear.p_value))
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
def test_the_first_sweep_separates_two_kinds(tmp_path):
    """sweep=first, the README's first sweep: its report names a best group on 3 seeds (measured by hand:
    scaled_dot BLEU 98.90/98.16/98.55, sigmoid 76.49/69.09/64.83, Welch p = 0.014)."""
    import os
    import sys

    attn = str(Path(sys.executable).parent / "attn")
    env = {**os.environ, "WANDB_MODE": "disabled"}
    sweep = subprocess.run([attn, "sweep", "sweep=first", "--dir", "s"], cwd=tmp_path, env=env,
                           capture_output=True, text=True)  # fmt: skip
    assert sweep.returncode == 0, sweep.stdout[-2000:] + sweep.stderr[-2000:]
    rep = build(collect(tmp_path / "s"), tmp_path / "r", formats=("md",), plots=False)
    verdict = rep.verdicts["translation"]
    assert verdict.split_keys == [] and verdict.text.startswith("best: scaled_dot / softmax / 1.0"), verdict
    sigmoid = next(g for g in rep.groups["translation"] if g.key[0] == "sigmoid")
    assert sigmoid.stats["test/bleu"].n == 3 and sigmoid.rank().p_holm < 0.05


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
    header = next(line for line in translation.splitlines() if line.startswith("| attention"))
    assert header.startswith("| attention | softmax | temperature | n | seeds | test/bleu mean")
    assert "test/acc" not in header
    assert "Ranked by test/bleu (test/acc is not logged by this task)." in translation
    with pytest.raises(ConfigError, match="metric 'test/f1' is in no completed run"):
        build(collect(runs_dir), tmp_path / "r2", metric="test/f1", plots=False)


# --------------------------------------------------------------------------------------------
# a report that never overstates


def _groups(tmp_path, table, **kw):
    """Fake runs from ``{(attention, temperature): [acc per seed]}``; the task's groups and verdict."""
    for (attention, temperature), values in table.items():
        for seed, acc in enumerate(values):
            metrics = {"test/acc": acc, "test/ece": abs(0.9 - acc) / 3, "test/examples": 2000.0}
            metrics.update(kw.get("extra", {}))
            name = f"{attention}-{temperature}-{seed}"
            fake_run(tmp_path / "runs", name, attention, temperature, seed, acc, metrics=metrics)
    groups, verdicts = aggregate_with_verdicts(collect(tmp_path / "runs"), "test/acc")
    return groups["classification"], verdicts["classification"]


def test_runs_are_pooled_only_when_their_configs_are_equal(tmp_path):
    # Same attention/softmax/temperature, seed 0 everywhere, but different epochs, model sizes and a
    # debug preset: five different experiments, not five seeds of one.
    variants = [
        {"trainer": {"max_epochs": 3, "fast_dev_run": False}, "model": {"d_model": 64}},
        {"trainer": {"max_epochs": 10, "fast_dev_run": False}, "model": {"d_model": 64}},
        {"trainer": {"max_epochs": 10, "fast_dev_run": False}, "model": {"d_model": 128}},
        {"trainer": {"max_epochs": 10, "fast_dev_run": True}, "model": {"d_model": 64}},
    ]
    for i, extra in enumerate(variants):
        fake_run(tmp_path / "runs", f"v{i}", "scaled_dot", 1.0, 0, 0.6 + i / 10, config=extra)
    # Keys that cannot change a result do not split: run name, logger, threads, progress bar.
    for seed, logger in ((1, "csv"), (2, "wandb")):
        neutral = {
            **variants[1],
            "name": f"n{seed}",
            "logger": {"kind": logger},
            "threads": {"threads": seed},
        }
        neutral["trainer"] = {**neutral["trainer"], "enable_progress_bar": bool(seed % 2)}
        fake_run(tmp_path / "runs", f"n{seed}", "scaled_dot", 1.0, seed, 0.7, config=neutral)
    rep = build(collect(tmp_path / "runs"), tmp_path / "r", formats=("md", "csv"), plots=False)
    (groups,) = rep.groups.values()
    verdict = rep.verdicts["classification"]
    assert (
        verdict.split_keys
        == ["logger.kind", "model.d_model", "trainer.fast_dev_run", "trainer.max_epochs"][1:]
    )
    assert sorted(g.stats["test/acc"].n for g in groups) == [1, 1, 1, 3]
    assert not any(g.best for g in groups)  # three single runs and one group: nothing to compare
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Split on model.d_model, trainer.fast_dev_run, trainer.max_epochs: runs that differ" in md
    assert (
        "| attention | softmax | temperature | model.d_model | trainer.fast_dev_run | trainer.max_epochs |"
        in md
    )
    summary = (tmp_path / "r" / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("task,attention,softmax,temperature,model.d_model,trainer.fast_dev_run,")


def test_keys_that_follow_the_seed_are_pooled_with_it(tmp_path):
    # task.datamodule.seed: ${seed} resolves to the run's seed: seeds of one experiment, not a split.
    for seed, acc in enumerate([0.90, 0.92, 0.94]):
        data = {"task": {"name": "classification", "datamodule": {"seed": seed, "n_train": 4000}}}
        fake_run(tmp_path / "runs", f"s{seed}", "scaled_dot", 1.0, seed, acc, config=data)
    groups, verdicts = aggregate_with_verdicts(collect(tmp_path / "runs"), "test/acc")
    assert verdicts["classification"].split_keys == []
    assert [g.stats["test/acc"].n for g in groups["classification"]] == [3]
    # A data seed fixed apart from the model seed is a real difference.
    data = {"task": {"name": "classification", "datamodule": {"seed": 7, "n_train": 4000}}}
    fake_run(tmp_path / "runs", "fixed", "scaled_dot", 1.0, 3, 0.5, config=data)
    _, verdicts = aggregate_with_verdicts(collect(tmp_path / "runs"), "test/acc")
    assert verdicts["classification"].split_keys == ["task.datamodule.seed"]


def test_no_best_when_every_group_is_at_chance(tmp_path):
    table = {("scaled_dot", 1.0): [0.50, 0.53, 0.52], ("additive", 1.0): [0.49, 0.50, 0.50]}
    groups, verdict = _groups(tmp_path, table, extra={"test/chance_acc": 0.5})
    assert not any(g.best for g in groups)
    assert all(g.rank().at_chance for g in groups)
    assert verdict.text.startswith("every group is at chance level (test/acc 0.5000")


def test_no_best_when_no_group_differs(tmp_path):
    table = {("scaled_dot", 1.0): [0.80, 0.85, 0.75], ("additive", 1.0): [0.81, 0.79, 0.83]}
    groups, verdict = _groups(tmp_path, table)
    assert not any(g.best for g in groups)
    assert verdict.text.startswith(
        "no group differs from the one with the best mean (additive / softmax / 1.0"
    )
    assert "Holm-corrected over 1 comparison(s)" in verdict.text


def test_best_needs_two_seeds(tmp_path):
    groups, verdict = _groups(tmp_path, {("scaled_dot", 1.0): [0.95], ("additive", 1.0): [0.60]})
    assert not any(g.best for g in groups)
    assert verdict.text == "no group has 2 or more seeds of test/acc: nothing is ranked"


def test_a_separated_best_is_named(tmp_path):
    table = {("scaled_dot", 1.0): [0.95, 0.96, 0.97], ("additive", 1.0): [0.60, 0.62, 0.61]}
    groups, verdict = _groups(tmp_path, table, extra={"test/chance_acc": 0.5})
    (best,) = [g for g in groups if g.best]
    assert best.key[0] == "scaled_dot" and not best.rank().at_chance
    assert verdict.text.startswith("best: scaled_dot / softmax / 1.0 (test/acc 0.9600); 1 of 1 other group")


def test_zero_variance_groups_one_example_apart_are_not_significant():
    # [1, 1, 1] against [0.9995] * 3 on 2000 test examples: one example apart, no spread at all.
    a, b = Stat([1.0, 1.0, 1.0]), Stat([0.9995] * 3)
    assert math.isnan(welch_p(a, b))  # no resolution known: untestable, never "p = 0"
    p = welch_p(a, b, floor=1 / 2000)
    assert 0.05 < p < 1  # each std counted as one example: t = 1.22, df = 4
    assert p == pytest.approx(
        2 * __import__("scipy.stats").stats.t.sf(0.0005 / math.sqrt(2 * 0.0005**2 / 3), 4)
    )
    assert welch_p(a, Stat([1.0, 1.0, 1.0])) == 1.0


def test_zero_variance_groups_through_the_report(tmp_path):
    groups, verdict = _groups(
        tmp_path, {("scaled_dot", 1.0): [1.0, 1.0, 1.0], ("additive", 1.0): [0.9995] * 3}
    )
    additive = next(g for g in groups if g.key[0] == "additive")
    assert additive.tied and additive.p_value > 0.05
    assert not any(g.best for g in groups) and verdict.text.startswith("no group differs")


def test_holm_adjustment_by_hand():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm([0.02, math.nan, 0.5])
    assert adjusted[0] == pytest.approx(0.04) and math.isnan(adjusted[1]) and adjusted[2] == 0.5


def test_intervals_respect_the_metric_range(tmp_path):
    acc = Stat([0.99, 1.0, 1.0], (0.0, 1.0))
    assert acc.ci[1] == 1.0 and acc.ci[0] < 0.99
    ece = Stat([0.001, 0.02, 0.0], (0.0, 1.0))
    assert ece.ci[0] == 0.0
    groups, _ = _groups(tmp_path, {("scaled_dot", 1.0): [0.99, 1.0, 1.0]})
    lo, hi = groups[0].stats["test/acc"].ci
    assert 0.0 <= lo <= hi <= 1.0
    from attn.runner.stats import metric_range

    # metrics measured at an evaluation length keep their base metric's range; entropies are >= 0
    assert metric_range("test/acc@16") == (0.0, 1.0) and metric_range("test/bleu@32") == (0.0, 100.0)
    assert metric_range("test/entropy@16/l0")[0] == 0.0 and metric_range("val/steps_to_90pct")[0] == 0.0


def test_exact_match_is_a_rate():
    """test/exact (translation's exact-match share) follows the rate rules: an interval clipped to
    [0, 1] and a Welch floor of one test example (issue 25)."""
    from attn.runner.stats import metric_range, resolution

    assert metric_range("test/exact") == (0.0, 1.0) and metric_range("test/exact@16") == (0.0, 1.0)
    assert resolution("test/exact", [1000.0, 500.0]) == pytest.approx(1 / 500)
    assert Stat([0.99, 1.0, 1.0], metric_range("test/exact")).ci[1] == 1.0
    exact = Stat([1.0, 1.0, 1.0], metric_range("test/exact"))
    near = Stat([0.998, 0.998, 0.998], metric_range("test/exact"))
    # seeds that agree exactly: without the floor the difference of one example in 500 looked certain
    assert welch_p(exact, near, resolution("test/exact", [500.0])) > 0.05


def test_summary_csv_has_each_metrics_own_columns(tmp_path):
    table = {
        ("scaled_dot", 1.0): [0.95, 0.96, 0.97],
        ("additive", 1.0): [0.60, 0.62, 0.61],
        ("dot", 1.0): [0.7],
    }
    for (attention, temperature), values in table.items():
        for seed, acc in enumerate(values):
            ece = 0.05 + seed / 100 + (0.001 if attention == "additive" else 0.0)
            metrics = {"test/acc": acc, "test/ece": ece, "test/examples": 2000.0}
            fake_run(
                tmp_path / "runs", f"{attention}-{seed}", attention, temperature, seed, acc, metrics=metrics
            )
    build(collect(tmp_path / "runs"), tmp_path / "r", formats=("csv",), plots=False)
    import csv

    rows = list(csv.DictReader((tmp_path / "r" / "summary.csv").open()))
    get = {(r["attention"], r["metric"]): r for r in rows}
    acc, ece = get[("additive", "test/acc")], get[("additive", "test/ece")]
    assert float(acc["p_vs_best"]) < 0.01 and float(ece["p_vs_best"]) > 0.5  # each metric its own test
    assert (
        get[("scaled_dot", "test/acc")]["best"] == "True"
        and get[("scaled_dot", "test/ece")]["best"] == "False"
    )
    single = get[("dot", "test/acc")]
    assert single["std"] == single["ci_low"] == single["p_vs_best"] == ""  # n = 1: empty, not nan
    counter = get[("additive", "test/examples")]
    assert counter["std"] == counter["ci_low"] == "" and counter["best"] == "False"
    assert "nan" not in (tmp_path / "r" / "summary.csv").read_text()


def test_counters_and_chance_in_the_tables(tmp_path):
    table = {("scaled_dot", 1.0): [0.95, 0.96, 0.97], ("additive", 1.0): [0.60, 0.62, 0.61]}
    _groups(tmp_path, table, extra={"test/chance_acc": 0.5})
    build(collect(tmp_path / "runs"), tmp_path / "r", formats=("md",), plots=False)
    md = (tmp_path / "r" / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| attention"))
    assert "| test/examples |" in header and "test/examples mean" not in header
    assert "| chance |" in header and "test/chance_acc" not in header
    row = next(line for line in md.splitlines() if line.startswith("| additive"))
    assert "| 2000 |" in row and "| 0.5000 |" in row
    assert "clipped to the metric's range" in md and "Holm-corrected" in md


def test_console_table_shows_each_tasks_own_ranking_metric(runs_dir):
    from typer.testing import CliRunner

    from attn.cli.main import app

    for seed, (dot, additive) in enumerate([(90.0, 95.0), (91.0, 96.0), (92.0, 97.0)]):
        for kind, bleu in (("dot", dot), ("additive", additive)):
            metrics = {"test/bleu": bleu, "test/loss": 1.0}
            fake_run(runs_dir / "trials", f"mt-{kind}-{seed}", kind, 1.0, seed, 0.0, task="translation",
                     metrics=metrics)  # fmt: skip
    out = CliRunner().invoke(app, ["report", str(runs_dir), "--metric", "test/ece", "--no-plots"])
    assert out.exit_code == 0, out.output
    translation = out.output[out.output.index("task: translation") :]
    assert "test/bleu" in translation and "test/ece" not in translation.split("Ranked by")[0]
    assert "Ranked by test/bleu (test/ece is not logged by this task)." in translation
    assert "Verdict: best: additive" in translation


def test_report_on_an_empty_directory_names_it(tmp_path):
    from typer.testing import CliRunner

    from attn.cli.main import app

    (tmp_path / "empty").mkdir()
    out = CliRunner().invoke(app, ["report", str(tmp_path / "empty")])
    assert out.exit_code == 2
    expected = f"error: {tmp_path / 'empty'}: no runs found (no results.json or sweep.json under it)"
    assert expected in out.output


def test_hand_edited_records_are_read_defensively(runs_dir, tmp_path):
    from typer.testing import CliRunner

    from attn.cli.main import app

    path = fake_run(runs_dir / "trials", "edited", "dot", 1.0, 0, 0.7) / "results.json"
    record = json.loads(path.read_text())
    record.update(metrics=[0.7], duration_s="ten seconds", config="not a dict", error=42)
    path.write_text(json.dumps(record))
    # A run killed before its first results.json: its config.yaml and checkpoints are there.
    killed = runs_dir / "trials" / "killed"
    (killed / "checkpoints").mkdir(parents=True)
    (killed / "config.yaml").write_text("seed: 0\n")
    manifest = json.loads((runs_dir / "sweep.json").read_text())
    manifest["trials"].append({"id": "100"})  # a trial without run_dir
    (runs_dir / "sweep.json").write_text(json.dumps(manifest))
    runs = {Path(r.run_dir).name: r for r in collect(runs_dir)}
    edited = runs["edited"]  # metrics that are no mapping: not a completed run with its numbers dropped
    assert edited.status == "corrupt" and "metrics is not a JSON object (list)" in edited.error
    record.update(metrics={"test/acc": 0.7, "test/note": "n/a"})
    path.write_text(json.dumps(record))
    edited = {Path(r.run_dir).name: r for r in collect(runs_dir)}["edited"]
    assert edited.metrics == {"test/acc": 0.7} and edited.duration_s is None and edited.config == {}
    assert edited.status == "completed" and edited.error == "42"
    assert runs["killed"].status == "no record"
    assert any(r.status == "corrupt" and "trial 1 has no run_dir" in (r.error or "") for r in runs.values())
    out = CliRunner().invoke(app, ["report", str(runs_dir), "--no-plots", "--out", "/proc/attn-report"])
    assert out.exit_code == 1 and "error: cannot write the report: " in out.output
    assert "Traceback" not in out.output
    ok = CliRunner().invoke(app, ["report", str(runs_dir), "--no-plots", "--out", str(tmp_path / "r")])
    assert ok.exit_code == 0 and "no record: " in ok.output, ok.output


def test_copies_of_a_sweep_are_counted_once(runs_dir, tmp_path):
    """Three copies of one sweep under one folder are 3 seeds, not 9 (issue 25: the copies turned "no
    group differs" into "best"); the copies are set aside and named."""
    single = aggregate_with_verdicts(collect(runs_dir), "test/acc")
    root = tmp_path / "three"
    for copy in ("a", "b", "c"):
        shutil.copytree(runs_dir, root / copy)
    groups, verdicts = aggregate_with_verdicts(collect(root), "test/acc")
    (split,) = groups
    assert [g.stats["test/acc"].n for g in groups[split]] == [g.stats["test/acc"].n for g in single[0][split]]
    assert [g.p_value for g in groups[split]] == [g.p_value for g in single[0][split]]
    assert verdicts[split].text == single[1][split].text
    assert sum(len(g.duplicates) for g in groups[split]) == 2 * 10  # two extra copies of 10 completed runs
    rep = build(collect(root), tmp_path / "r", plots=False)
    line = next(t for t in task_lines(rep, split) if t.startswith("Set aside"))
    assert line.startswith("Set aside 20 duplicate run(s)") and str(root / "b") in line
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert len(data["verdicts"][split]["duplicates_set_aside"]) == 20


def test_ctrl_c_during_report_is_exit_130(runs_dir, monkeypatch):
    """Ctrl-C while the report is written ends the command with 130 and one line, never exit 0."""
    from typer.testing import CliRunner

    import attn.runner.report as report
    from attn.cli.main import app

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "build", interrupted)
    out = CliRunner().invoke(app, ["report", str(runs_dir)])
    assert out.exit_code == 130 and "error: attn report interrupted" in out.output


def test_symlinked_run_directories_are_read(runs_dir, tmp_path):
    """A run directory linked into the report's folder is part of it (it was skipped without a word)."""
    elsewhere = tmp_path / "elsewhere"
    fake_run(elsewhere, "linked", "dot", 1.0, 0, 0.5)
    (runs_dir / "trials" / "link").symlink_to(elsewhere / "linked", target_is_directory=True)
    (runs_dir / "loop").symlink_to(runs_dir, target_is_directory=True)  # a link back up: read once
    runs = collect(runs_dir)
    assert [r.run_dir for r in runs].count(str((elsewhere / "linked").resolve())) == 1
    assert len(runs) == len(collect(runs_dir)) == 13 + 1
