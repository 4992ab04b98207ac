"""The README's "Bring your own attention" example, run exactly as written, outside the package."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"<!-- example: (?P<name>[^ ]+) -->\n```\w*\n(?P<body>.*?)```", re.S)


def example() -> tuple[dict[str, str], list[str]]:
    """The example's files ``{path: text}`` and its command lines, from the README."""
    blocks = {m["name"]: m["body"] for m in BLOCK.finditer(README.read_text())}
    commands = [line for line in blocks.pop("commands").splitlines() if line.strip()]
    return blocks, commands


def test_the_example_is_in_the_readme():
    files, commands = example()
    assert set(files) == {"cosine_attn.py", "myconf/attention/cosine.yaml", "myconf/sweep/cosine_vs_dot.yaml"}
    assert [c.split()[1] for c in commands] == ["train", "sweep", "report"]
    assert (
        len([line for line in files["cosine_attn.py"].splitlines() if line.strip()]) <= 35
    )  # the kind ~20, imports


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
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900)  # fmt: skip
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        assert "skipped" not in done.stdout + done.stderr, done.stdout + done.stderr
    (run,) = [p for p in (tmp_path / "runs").iterdir() if "cosine" in p.name]
    record = json.loads((run / "results.json").read_text())
    assert record["status"] == "completed" and record["config"]["attention"]["kind"] == "cosine"
    assert record["provenance"]["plugins"][0]["file"] == str(tmp_path / "cosine_attn.py")
    manifest = json.loads((tmp_path / "sweeps/cosine/sweep.json").read_text())
    assert [t["status"] for t in manifest["trials"]] == ["completed"] * 4
    assert manifest["config_dirs"] == [str(tmp_path / "myconf")]
    summary = (tmp_path / "sweeps/cosine/report/summary.csv").read_text()
    assert "cosine" in summary and "scaled_dot" in summary
    assert (tmp_path / "sweeps/cosine/report/attention_cosine.png").is_file()  # rebuilt from its checkpoint
