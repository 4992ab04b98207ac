"""Plugins (config key, ATTN_PLUGINS, entry points) and the user's config directories (--config-dir)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from attn.models.attention import (
    NORMALISED_KINDS,
    check_combination,
    forms_weights,
    list_attention,
    register_attention,
)
from attn.runner import plugins
from attn.runner.config import load
from attn.runner.errors import ConfigError
from attn.runner.paths import CONFIG_DIR_ENV, group_options

FAST = ["logger=none", "model=small", "trainer.max_epochs=1", "baseline=false"]

# A kind written the way the README shows: its own module, outside the package.
PLUGIN = """
import torch
from attn.models.attention import register_attention
from attn.models.softmax import get_softmax


@register_attention("{name}", params=("gain",){flags})
def attend(q, k, v, *, mask=None, is_causal=False, scale=None, temperature=1.0, softmax="softmax",
           dropout_p=0.0, need_weights=False, gain=1.0):
    scores = gain * torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(k, dim=-1).mT
    if is_causal:
        causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        mask = causal if mask is None else mask & causal
    weights = get_softmax(softmax)(scores, dim=-1, temperature=temperature, mask=mask)
    return weights @ v, (weights if need_weights else None)
"""


def write_plugin(where: Path, module: str, name: str, flags: str = "") -> Path:
    path = where / f"{module}.py"
    path.write_text(PLUGIN.format(name=name, flags=flags))
    return path


@pytest.fixture(autouse=True)
def _no_env_plugins(monkeypatch):
    monkeypatch.delenv(plugins.PLUGINS_ENV, raising=False)
    monkeypatch.delenv(CONFIG_DIR_ENV, raising=False)
    monkeypatch.setenv(plugins.NO_AUTOLOAD_ENV, "1")  # installed entry points stay out unless a test asks


def test_a_plugin_kind_is_valid_everywhere_once_loaded(tmp_path):
    write_plugin(tmp_path, "plug_everywhere", "plug_cos_a")
    with pytest.raises(ConfigError, match=r"plug_cos_a.*unknown.*plugins=\[module\]"):
        load([*FAST, "attention.kind=plug_cos_a"])
    cfg = load(
        [*FAST, "plugins=[plug_everywhere]", "attention.kind=plug_cos_a", "+attention.params.gain=5.0"]
    )
    assert cfg.plugins == ["plug_everywhere"]
    assert "plug_cos_a" in list_attention() and "plug_cos_a" in NORMALISED_KINDS
    check_combination("plug_cos_a", softmax="sparsemax", params={"gain": 2.0})
    with pytest.raises(ValueError, match="takes no parameter 'window'"):
        check_combination("plug_cos_a", params={"window": 2})
    info = next(p for p in plugins.loaded_plugins() if p["name"] == "plug_everywhere")
    assert info["file"] == str(tmp_path / "plug_everywhere.py") and info["via"] == "config"
    # adaptive temperature and diagnostics apply to a normalised kind that forms weights
    load([*FAST, "plugins=[plug_everywhere]", "attention.kind=plug_cos_a", "softmax.temperature=adaptive"])


def test_a_plugin_trains_in_process_with_every_task_path(tmp_path):
    from attn.runner.run import run

    write_plugin(tmp_path, "plug_train", "plug_cos_t")
    cfg = load([
        *FAST, "plugins=[plug_train]", "attention.kind=plug_cos_t", "task=mqar", "task.datamodule.n_train=64",
        "task.datamodule.n_val=16", "task.datamodule.n_test=16", "task.eval_lengths=[8,16]",
    ])  # fmt: skip
    record, exc = run(cfg)
    assert exc is None and record.status == "completed", record.error
    assert any(k.startswith("test/entropy@16") for k in record.metrics)  # diagnostics read its weights
    assert record.extra["provenance"]["plugins"][0]["module"] == "plug_train"


def test_flags_say_what_a_kind_is(tmp_path):
    write_plugin(tmp_path, "plug_flags", "plug_raw", flags=", normalised=False, weights=False")
    cfg = load([*FAST, "plugins=[plug_flags]", "attention.kind=plug_raw"])
    assert cfg.attention.kind == "plug_raw"
    assert not forms_weights("plug_raw") and "plug_raw" not in NORMALISED_KINDS
    with pytest.raises(ConfigError, match="has no softmax normaliser"):
        load([*FAST, "plugins=[plug_flags]", "attention.kind=plug_raw", "softmax=sparsemax"])
    with pytest.raises(ConfigError, match="temperature=adaptive needs"):
        load([*FAST, "plugins=[plug_flags]", "attention.kind=plug_raw", "softmax.temperature=adaptive"])
    with pytest.raises(ValueError, match="never forms a weight matrix"):
        check_combination("plug_raw", need_weights=True)


def test_a_plugin_from_a_file_path_and_from_the_environment(tmp_path, monkeypatch):
    sub = tmp_path / "elsewhere"
    sub.mkdir()
    path = write_plugin(sub, "plug_by_path", "plug_path_kind")
    cfg = load([*FAST, f"plugins=[{path}]", "attention.kind=plug_path_kind"])
    assert cfg.plugins == [str(path)]
    write_plugin(tmp_path, "plug_env", "plug_env_kind")
    monkeypatch.setenv(plugins.PLUGINS_ENV, "plug_env")
    cfg = load([*FAST, "attention.kind=plug_env_kind"])
    assert cfg.plugins == ["plug_env"]  # the config records it: a resume or a trial needs it again


def test_an_entry_point_plugin_loads_unless_autoload_is_off(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    write_plugin(site, "plug_ep_module", "plug_ep_kind")
    info = site / "attn_plug_ep-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: attn-plug-ep\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text("[attn.plugins]\nplug_ep = plug_ep_module\n")
    monkeypatch.syspath_prepend(str(site))
    load([*FAST])
    assert "plug_ep_kind" not in list_attention()  # ATTN_DISABLE_PLUGIN_AUTOLOAD is set by the fixture
    monkeypatch.delenv(plugins.NO_AUTOLOAD_ENV)
    cfg = load([*FAST, "attention.kind=plug_ep_kind"])
    assert cfg.plugins == []  # installed plugins load anyway: the config does not list them
    found = next(p for p in plugins.loaded_plugins() if p["via"] == "entry point" and p["name"] == "plug_ep")
    assert found["version"] == "1.2.3" and found["module"] == "plug_ep_module"


def test_a_plugin_cannot_redefine_a_built_in():
    with pytest.raises(ValueError, match="'scaled_dot' is built in"):
        register_attention("scaled_dot")(lambda *a, **k: None)
    from attn.models.softmax import register_softmax

    with pytest.raises(ValueError, match="'sparsemax' is built in"):
        register_softmax("sparsemax")(lambda *a, **k: None)


def _attn(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, plugins.NO_AUTOLOAD_ENV: "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "attn.cli.main", *args], cwd=cwd, capture_output=True, text=True, env=full,
        timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_broken_unknown_and_redefining_plugins_are_one_line_errors(tmp_path):
    (tmp_path / "plug_broken.py").write_text("raise RuntimeError('half written')\n")
    (tmp_path / "plug_again.py").write_text(
        "from attn.models.attention import register_attention\n"
        "register_attention('scaled_dot')(lambda *a, **k: None)\n"
    )
    for name, expected in (
        ("plug_broken", "error: plugin 'plug_broken' cannot be imported: RuntimeError: half written"),
        ("plug_missing", "error: plugin 'plug_missing' cannot be imported: ModuleNotFoundError: No module"),
        (
            "plug_again",
            "error: plugin 'plug_again' cannot be imported: ValueError: attention kind 'scaled_dot'",
        ),
    ):
        done = _attn("train", f"plugins=[{name}]", cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), done.stderr
    done = _attn("train", "plugins=[]", "attention=cosine", cwd=tmp_path)
    assert done.returncode == 2 and "unknown attention 'cosine'" in done.stderr


def make_config_dir(root: Path) -> Path:
    conf = root / "myconf"
    (conf / "attention").mkdir(parents=True)
    (conf / "sweep").mkdir()
    (conf / "attention" / "plug_cfg_option.yaml").write_text(
        "kind: plug_cfg_kind\nscale: null\nparams:\n  gain: 4.0\n"
    )
    (conf / "sweep" / "plug_study.yaml").write_text(
        textwrap.dedent("""\
        name: plug_study
        overrides:
          - plugins=[plug_cfg]
          - logger=none
        grid:
          attention: [plug_cfg_option, scaled_dot]
          seed: [0, 1]
        """)
    )
    return conf


def test_config_dir_options_compose_and_sweep_presets_plan(tmp_path, monkeypatch):
    from attn.runner.records import read_manifest
    from attn.runner.sweep import plan, start, trial_environment

    write_plugin(tmp_path, "plug_cfg", "plug_cfg_kind")
    conf = make_config_dir(tmp_path)
    monkeypatch.setenv(CONFIG_DIR_ENV, str(conf))
    assert "plug_cfg_option" in group_options("attention") and "plug_study" in group_options("sweep")
    cfg = load([*FAST, "plugins=[plug_cfg]", "attention=plug_cfg_option"])
    assert cfg.attention.kind == "plug_cfg_kind" and cfg.attention.params.gain == 4.0
    monkeypatch.setenv(plugins.PLUGINS_ENV, "plug_cfg")
    manifest, _ = plan(["sweep=plug_study"])
    assert len(manifest.trials) == 4
    root = start(["sweep=plug_study"], str(tmp_path / "s"), False)  # the trials use the sweep's own copy
    assert trial_environment(read_manifest(root), root) == {
        CONFIG_DIR_ENV: str(root / "config" / "0"), plugins.PLUGINS_ENV: "plug_cfg"
    }  # fmt: skip
    monkeypatch.delenv(CONFIG_DIR_ENV)
    with pytest.raises(ConfigError, match="unknown attention 'plug_cfg_option'"):
        load([*FAST, "attention=plug_cfg_option"])


def test_config_dir_that_is_missing_or_shadows_a_packaged_option_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="no such directory"):
        load(FAST)
    conf = tmp_path / "shadow"
    (conf / "attention").mkdir(parents=True)
    (conf / "attention" / "scaled_dot.yaml").write_text("kind: dot\n")
    monkeypatch.setenv(CONFIG_DIR_ENV, str(conf))
    with pytest.raises(ConfigError, match=r"attention/scaled_dot.yaml has the name of the option"):
        load(FAST)


@pytest.mark.slow
def test_config_dir_options_are_listed_in_help(tmp_path):
    conf = make_config_dir(tmp_path)
    for command in ("train", "sweep"):
        done = _attn(command, "--config-dir", str(conf), "--help", cwd=tmp_path, env={"COLUMNS": "400"})
        assert done.returncode == 0, done.stderr
        wanted = "plug_cfg_option" if command == "train" else "plug_study"
        assert wanted in done.stdout and str(conf) in done.stdout
        plain = _attn(command, "--help", cwd=tmp_path, env={"COLUMNS": "400"})
        assert wanted not in plain.stdout


def test_plugin_weights_match_a_float64_reference(tmp_path):
    write_plugin(tmp_path, "plug_ref", "plug_ref_kind")
    plugins.load_plugin("plug_ref", "test")
    from attn.models.attention import MultiHeadAttention

    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2, "plug_ref_kind", gain=3.0).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    _, w = mha(x, need_weights=True, is_causal=True)
    assert torch.allclose(w.sum(-1), torch.ones_like(w.sum(-1)))
    assert torch.all(w.triu(1) == 0)
