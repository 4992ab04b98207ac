"""Test defaults: W&B disabled, runs written under a temporary directory, never the network."""

import json
import os
import resource
import sys
import tempfile
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]  # tests/test_suite_speed.py runs a small session of its own

os.environ["WANDB_MODE"] = "disabled"
os.environ["WANDB_SILENT"] = "true"
os.environ.pop("ATTN_RUN_DIR", None)
# Hugging Face libraries never touch the network; their caches and attn's feature cache live in a
# directory of this test session (shared by its tests, so eSpeak synthesis runs once per config).
_SESSION = tempfile.mkdtemp(prefix="attn-tests-")
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=f"{_SESSION}/hf",
                  ATTN_CACHE_DIR=f"{_SESSION}/cache")  # fmt: skip

# Tiny, fast settings shared by the in-process training tests.
FAST = [
    "logger=none",
    "model=small",
    "task.datamodule.n_train=256",
    "task.datamodule.n_val=64",
    "task.datamodule.n_test=64",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "baseline=false",
    "threads=1",  # one thread per run: pytest-xdist runs one worker per core
]


def pytest_runtest_setup(item):
    """One torch thread per test process: pytest-xdist runs one worker per core, and torch's default of a
    thread per core in every worker oversubscribes the cores (in-process tests then crawl: 2 s alone,
    27 s beside another worker). A run's own ``threads`` setting still applies inside ``run``."""
    torch = sys.modules.get("torch")  # not imported here for a test that does not need it
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture
def fast() -> list[str]:
    """Overrides for a seconds-long training run."""
    return list(FAST)


@pytest.fixture(scope="session")
def fast_overrides() -> list[str]:
    """:func:`fast` for fixtures of a wider scope."""
    return list(FAST)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ATTN_RUN_DIR", raising=False)
    yield


@pytest.fixture
def hub_repo(tmp_path):
    """Writes a local Hugging Face data set repository in the hub's parquet layout (README configs,
    ``<config>/<split>-00000-of-00001.parquet`` with the features in the parquet metadata) and
    returns its path, which ``datasets.load_dataset`` reads like a hub id."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")

    def make(name: str, config: str, features, splits: dict[str, dict[str, list]]) -> str:
        root = tmp_path / name
        lines = ["---", "configs:", f"- config_name: {config}", "  data_files:"]
        for split, columns in splits.items():
            (root / config).mkdir(parents=True, exist_ok=True)
            table = pa.table({k: pa.array(v) for k, v in columns.items()})
            meta = {"huggingface": json.dumps({"info": {"features": features.to_dict()}})}
            pq.write_table(
                table.replace_schema_metadata(meta), root / config / f"{split}-00000-of-00001.parquet"
            )
            lines += [f"  - split: {split}", f"    path: {config}/{split}-*"]
        Path(root / "README.md").write_text("\n".join([*lines, "---", ""]))
        return str(root)

    return make


# --------------------------------------------------------------------------------------------
# The fast subset stays fast: a test that is not marked ``slow`` (or ``slurm``) and works longer than
# SLOW_LIMIT_S seconds of CPU (its own process and the child processes it waited for), or waits longer
# than WAIT_FACTOR times that in wall time, fails the session, listed with both times. The aim is ~10 s
# (a test that trains for longer is an end-to-end test: mark it slow); CPU time, not wall time, because
# the wall time of the same test grows several-fold on a loaded CI machine (2 s alone, 27 s beside
# another worker and the cluster's jobs) while the work it does stays what it is. ATTN_SLOW_LIMIT_S
# overrides the limit (0: no check).
SLOW_LIMIT_S = float(os.environ.get("ATTN_SLOW_LIMIT_S", "20"))
WAIT_FACTOR = 3
_unmarked_slow: list[tuple[str, float, float]] = []


def _cpu_s() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    before = _cpu_s()
    yield
    item.user_properties.append(("cpu_s", _cpu_s() - before))  # travels with the report (pytest-xdist)


def pytest_collection_modifyitems(config, items):
    """The longest tests first (the SLURM group, then the end-to-end ones marked slow), so that pytest-xdist
    does not start the cluster's serial group last and leave the other workers idle at the end."""
    rank = {"slurm": 0, "slow": 1}
    items.sort(key=lambda item: min((rank[m.name] for m in item.iter_markers() if m.name in rank), default=2))


def pytest_runtest_logreport(report):
    if report.when != "call" or SLOW_LIMIT_S <= 0 or {"slow", "slurm"} & set(report.keywords):
        return
    cpu = dict(report.user_properties).get("cpu_s", 0.0)
    if cpu > SLOW_LIMIT_S or report.duration > WAIT_FACTOR * SLOW_LIMIT_S:
        _unmarked_slow.append((report.nodeid, cpu, report.duration))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _unmarked_slow:
        wall = WAIT_FACTOR * SLOW_LIMIT_S
        title = f"tests over {SLOW_LIMIT_S:g} s of CPU (or {wall:g} s of wall time) not marked slow"
        terminalreporter.section(title)
        for nodeid, cpu, took in sorted(_unmarked_slow, key=lambda x: -x[1]):
            terminalreporter.write_line(f"{cpu:7.1f} s CPU {took:7.1f} s wall  {nodeid}")


def pytest_sessionfinish(session, exitstatus):
    if _unmarked_slow and session.exitstatus == 0:
        session.exitstatus = 1  # an unmarked slow test fails the run (see the section above)
