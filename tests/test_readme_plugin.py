"""The "Bring your own attention" example of docs/plugins.md, run as written outside the package, at a
smoke budget (``SMOKE`` appended to the train and sweep commands; the page states the written budget's
numbers, measured by hand)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"
SMOKE = " trainer.max_epochs=1 task.datamodule.n_train=1280 task.eval_lengths=[8] baseline=false"
BLOCK = re.compile(r"<!-- example: (?P<name>[^ ]+) -->\n```\w*\n(?P<body>.*?)```", re.S)


def example() -> tuple[dict[str, str], list[str]]:
    """The example's files ``{path: text}`` and its command lines, from docs/plugins.md."""
    blocks = {m["name"]: m["body"] for m in BLOCK.finditer(PAGE.read_text())}
    commands = [line for line in blocks.pop("commands").splitlines() if line.strip()]
    return blocks, commands


def test_the_example_is_in_the_readme():
    files, commands = example()
    assert set(files) == {
        "distance_attn.py", "myconf/attention/distance.yaml", "myconf/sweep/distance_vs_dot.yaml"
    }  # fmt: skip
    assert [c.split()[1] for c in commands] == ["train", "sweep", "report"]
    code = [line for line in files["distance_attn.py"].splitlines() if line.strip()]
    assert len(code) <= 6  # a score function: the docstring, an import, the decorator and 2 lines


@pytest.mark.slow
def test_the_readme_plugin_example_trains_sweeps_and_reports(tmp_path):
    files, commands = example()
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    bindir = str(Path(sys.executable).parent)  # the `attn` installed beside this Python
    env = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
        "ATTN_DISABLE_PLUGIN_AUTOLOAD": "1",
    }
    env.pop("ATTN_PLUGINS", None)
    env.pop("ATTN_CONFIG_DIR", None)
    for command in commands:
        if command.split()[1] in ("train", "sweep"):
            command += SMOKE
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900)  # fmt: skip
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        assert "skipped" not in done.stdout + done.stderr, done.stdout + done.stderr
    (run,) = [p for p in (tmp_path / "runs").iterdir() if "distance" in p.name]
    record = json.loads((run / "results.json").read_text())
    assert record["status"] == "completed" and record["config"]["attention"]["kind"] == "distance"
    assert record["config"]["model"]["positions"] == "alibi"
    assert record["provenance"]["plugins"][0]["file"] == str(tmp_path / "distance_attn.py")
    manifest = json.loads((tmp_path / "sweeps/distance/sweep.json").read_text())
    assert [t["status"] for t in manifest["trials"]] == ["completed"] * 4
    assert manifest["config_dirs"] == ["config/0"]  # the sweep's own copy of myconf
    summary = (tmp_path / "sweeps/distance/report/summary.csv").read_text()
    assert "distance" in summary and "scaled_dot" in summary
