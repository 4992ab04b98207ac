"""The README stays true: its commands match CI, its example runs and prints the stated values."""

import contextlib
import io
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def test_readme_test_command_is_what_ci_runs():
    commands = [b.strip() for b in _bash_blocks() if ".venv/bin/pytest" in b and "pip install" in b]
    assert len(commands) == 1, commands
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert commands[0] in ci


def test_readme_run_command_installs_cpu_torch_and_trains():
    commands = [b.strip() for b in _bash_blocks() if b.strip().endswith("attn train")]
    assert len(commands) == 1, commands
    assert "pip install torch==2.13.0 -e ." in commands[0]


def test_readme_python_example_prints_the_corrected_values():
    block = re.search(r"```python\n(import torch\n.*?)```", README, flags=re.S).group(1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README.md", "exec"), {})
    numbers = [[float(x) for x in re.findall(r"-?\d+\.\d+", line)] for line in out.getvalue().splitlines()]
    # Every printed line must match the values written in the comment of the same print call.
    expected = [
        [float(x) for x in re.findall(r"\d+\.\d{6}", line.split("#", 1)[1])[: len(numbers[i])]]
        for i, line in enumerate(ln for ln in block.splitlines() if ln.startswith("print("))
    ]
    assert len(numbers) == len(expected) == 4
    for got, want in zip(numbers, expected, strict=True):
        assert len(want) == len(got) >= 3
        assert got == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("override", ["attention=foo", "trainer.max_epoch=3", "softmax.temperature=0"])
def test_readme_error_examples_are_what_attn_prints(override):
    documented = re.search(rf"\$ attn train {re.escape(override)}\n(error: .*)\n", README).group(1)
    from attn.runner.config import load
    from attn.runner.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        load([override])
    assert f"error: {e.value}" == documented


@pytest.mark.slow
def test_wheel_holds_only_the_attn_package(tmp_path):
    """`pip install .` puts `attn` (with its conf/*.yaml) into site-packages and no generic names."""
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("attn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"attn", wheel.name.split("-py")[0] + ".dist-info"}
    assert "attn/conf/config.yaml" in names and "attn/conf/attention/additive.yaml" in names
    assert "attn/models/attention.py" in names and "attn/cli/main.py" in names
    assert not any(n.startswith("attn/tests/") for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import attn.models.attention, attn.runner.config as c; c.load([]); print(attn.__file__)"
        "\nimport models"
    )
    env = {"PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    # Everything imports and composes from the wheel; only the generic `models` fails.
    assert out.returncode != 0 and "No module named 'models'" in out.stderr, out.stderr[-2000:]
    assert out.stdout.strip() == str(site / "attn" / "__init__.py")
