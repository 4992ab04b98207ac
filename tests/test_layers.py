"""The package's layers import downward only, and no modules import each other in a circle.

Every import of every module is walked, those inside functions included: commands (``attn.cli``) ->
the engine (``attn.runner``, in the layers of its ``__init__``) -> the models (``attn.models``) -> the
data (``attn.datamodules``, which a model may use, e.g. to detokenize, but never the other way round).
A module that has no layer fails too, so a new file has to be placed.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository root is the package ``attn``
PACKAGES = ("cli", "runner", "models", "datamodules")
ENGINE_LAYERS = (
    ("paths", "errors", "machine", "provenance", "records"),
    ("plugins", "schema", "config", "stats", "tune"),
    ("threads", "checkpoints", "collect", "optuna_search"),
    ("signals", "resume", "aggregate", "plots"),
    ("run", "slurm", "figures"),
    ("bench", "sweep", "report"),
)
DATA, MODELS = 1, 2
ENGINE = MODELS + 1  # the engine's first layer
COMMANDS = ENGINE + len(ENGINE_LAYERS)


def modules(root: Path) -> dict[str, Path]:
    """``{module name: file}`` of the package at ``root`` (its root ``__init__.py`` is ``attn``)."""
    found = {"attn": root / "__init__.py"}
    for package in PACKAGES:
        for path in sorted((root / package).glob("*.py")):
            name = f"attn.{package}" if path.stem == "__init__" else f"attn.{package}.{path.stem}"
            found[name] = path
    return found


def layer(module: str) -> int | None:
    """The layer of a module: 0 the root package, 1 data, 2 models, then the engine's, then the commands."""
    parts = module.split(".")
    if module == "attn":
        return 0
    if parts[1] == "datamodules":
        return DATA
    if parts[1] == "models":
        return MODELS
    if parts[1] == "cli":
        return COMMANDS
    if module == "attn.runner":
        return ENGINE
    return next((ENGINE + i for i, names in enumerate(ENGINE_LAYERS) if parts[2] in names), None)


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file (inside functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" for a in node.names] + [module]
        else:
            continue
        for target in targets:
            while target and target not in known:  # ``from attn.runner import run`` names a module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph(root: Path) -> dict[str, set[str]]:
    mods = modules(root)
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import circles (strongly connected components of more than one module), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def problems(edges: dict[str, set[str]]) -> list[str]:
    """Every layer violation and import circle, one line each."""
    out = [f"{m} has no layer: add it to ENGINE_LAYERS here and to attn/runner/__init__.py" for m in edges
           if layer(m) is None]  # fmt: skip
    for a, targets in sorted(edges.items()):
        for b in sorted(targets):
            la, lb = layer(a), layer(b)
            if la is None or lb is None:
                continue
            if lb > la:
                out.append(f"upward import: {a} (layer {la}) imports {b} (layer {lb})")
    out += [f"import circle: {' -> '.join(c)}" for c in circles(edges)]
    return out


def test_every_import_goes_down_and_none_goes_round():
    edges = graph(ROOT)
    assert len(edges) > 40 and "attn.runner.run" in edges and "attn.cli.main" in edges
    assert problems(edges) == []


def test_the_commands_are_a_small_part_of_the_package():
    lines = {name: len(path.read_text().splitlines()) for name, path in modules(ROOT).items()}
    cli = sum(n for name, n in lines.items() if name.startswith("attn.cli"))
    assert cli <= sum(lines.values()) / 4, (cli, sum(lines.values()))


def _copy(tmp_path: Path) -> Path:
    copy = tmp_path / "attn"
    for package in ("", *PACKAGES):
        (copy / package).mkdir(parents=True, exist_ok=True)
        for path in (ROOT / package).glob("*.py"):
            shutil.copy(path, copy / package / path.name)
    return copy


def test_a_planted_upward_import_and_circle_are_found(tmp_path):
    copy = _copy(tmp_path)
    assert problems(graph(copy)) == []
    with (copy / "runner" / "paths.py").open("a") as f:  # inside a function, as a dodge would be
        f.write("\n\ndef _later():\n    from attn.cli.main import app\n\n    return app\n")
    found = problems(graph(copy))
    assert "upward import: attn.runner.paths (layer 3) imports attn.cli.main (layer 9)" in found
    assert any(p.startswith("import circle: ") and "attn.runner.paths" in p for p in found)


def test_a_planted_circle_inside_one_layer_is_found(tmp_path):
    copy = _copy(tmp_path)
    with (copy / "runner" / "schema.py").open("a") as f:
        f.write("\n\ndef _later():\n    from . import config\n\n    return config\n")
    assert problems(graph(copy)) == ["import circle: attn.runner.config -> attn.runner.schema"]


def test_data_importing_a_model_and_a_new_module_without_a_layer_are_found(tmp_path):
    copy = _copy(tmp_path)
    (copy / "datamodules" / "peek.py").write_text("from attn.models.flops import train_flops\n")
    (copy / "runner" / "extra.py").write_text('"""A new engine module."""\n')
    found = problems(graph(copy))
    assert "upward import: attn.datamodules.peek (layer 1) imports attn.models.flops (layer 2)" in found
    assert any(p.startswith("attn.runner.extra has no layer") for p in found)
