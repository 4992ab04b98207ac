"""The README and docs/ stay true: their commands match CI and compose, their examples run and print the
stated values."""

import contextlib
import io
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
PAGES = sorted((REPO / "docs").glob("*.md"))
DOCS = README + "".join(p.read_text() for p in PAGES)  # the README and every docs/ page


def _bash_blocks(text: str = README) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


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
    block = re.search(r"```python\n(import torch\n.*?)```", DOCS, flags=re.S).group(1)
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
    documented = re.search(rf"\$ attn train {re.escape(override)}\n(error: .*)\n", DOCS).group(1)
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


def _documented(program: str) -> list[str]:
    """The arguments of every ``attn <program>`` line in a code block of the README and docs/ that a reader
    can run as written: no placeholder (``<run dir>``, ``...``), no line continuation, no flag but
    ``--dir``, no files or config directories of their own (the plugin example has its own test)."""
    found = []
    for block in re.findall(r"```[\w-]*\n(.*?)```", DOCS, flags=re.S):
        for line in block.splitlines():
            line = re.sub(r"^\$ ", "", line.split("  #")[0].strip()).split(" && ")[0]
            if not re.match(rf"^attn {program}\b", line) or line.endswith("\\"):
                continue
            args = shlex.split(line)[2:]
            if any("<" in a or a == "..." or "data/" in a for a in args):
                continue
            if any(a.startswith("--") and a != "--dir" for a in args):
                continue
            if "--dir" in args:
                del args[args.index("--dir") : args.index("--dir") + 2]
            found.append(" ".join(args))
    return sorted(set(found))


def test_the_docs_show_commands():
    assert len(_documented("train")) >= 10 and len(_documented("sweep")) >= 8


@pytest.mark.parametrize("args", _documented("train"))
def test_every_documented_train_command_composes(args, monkeypatch):
    """``attn train ARGS`` as the docs show it composes and validates (or fails with the error line the
    docs print beside it)."""
    import attn.runner.schema as schema
    from attn.runner.config import load
    from attn.runner.errors import ConfigError

    monkeypatch.setattr(schema, "cpu_has_bf16", lambda: True)  # composition, not this machine's CPU
    printed = re.search(rf"\$ attn train {re.escape(args)}\n(error: .*)\n", DOCS)
    if printed:
        with pytest.raises(ConfigError):
            load(shlex.split(args))
    else:
        load(shlex.split(args))


@pytest.mark.parametrize("args", _documented("sweep"))
def test_every_documented_sweep_command_plans(args):
    """``attn sweep ARGS`` as the docs show it plans: every trial composes (what ``--dry-run`` checks)."""
    from attn.runner.sweep import plan

    manifest, _ = plan(shlex.split(args))
    assert manifest.trials
