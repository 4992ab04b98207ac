"""Plugins: the user's modules that register attention kinds or softmax variants before a config is checked.

A plugin is any module whose import calls :func:`attn.models.attention.register_attention` or
:func:`attn.models.softmax.register_softmax`. attn imports, in this order:

1. the modules named by the config key ``plugins`` (``attn train plugins=[my_attn]``): a module name
   importable from ``sys.path`` or the current directory, or the path of a ``.py`` file;
2. those in the environment variable ``ATTN_PLUGINS`` (comma-separated, same forms);
3. the modules of the installed ``attn.plugins`` entry points (``[project.entry-points."attn.plugins"]``
   in the plugin's ``pyproject.toml``), unless ``ATTN_DISABLE_PLUGIN_AUTOLOAD`` is set.

A plugin that cannot be imported (or that redefines a built-in name) is one :class:`ConfigError` line
naming it and its error. What was loaded (module, file, version, how) goes to the run's provenance.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import ConfigError

PLUGINS_ENV = "ATTN_PLUGINS"
NO_AUTOLOAD_ENV = "ATTN_DISABLE_PLUGIN_AUTOLOAD"
ENTRY_POINT_GROUP = "attn.plugins"
_LOADED: dict[str, dict[str, Any]] = {}  # plugin as named -> what provenance records


def env_plugins() -> list[str]:
    """The plugins named in ``ATTN_PLUGINS`` (comma-separated)."""
    return [p.strip() for p in os.environ.get(PLUGINS_ENV, "").split(",") if p.strip()]


def _is_file(name: str) -> bool:
    return name.endswith(".py") or "/" in name or os.sep in name


def canonical(name: str) -> str:
    """A plugin as it is recorded: a file as its absolute path, a module by its name."""
    return str(Path(name).expanduser().resolve()) if _is_file(name) else name


def _version(module: ModuleType) -> str | None:
    version = getattr(module, "__version__", None)
    if isinstance(version, str):
        return version
    top = module.__name__.split(".")[0]
    for dist in metadata.packages_distributions().get(top, []):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _import(name: str) -> ModuleType:
    if _is_file(name):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        module_name = f"attn_plugin_{path.stem}"
        if module_name in sys.modules and getattr(sys.modules[module_name], "__file__", None) == str(path):
            return sys.modules[module_name]
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path} as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
        return module
    cwd = os.getcwd()
    if cwd not in sys.path:  # like `python -m`: a module beside the user finds itself
        sys.path.insert(0, cwd)
    return importlib.import_module(name)


def _fail(what: str, e: BaseException) -> ConfigError:
    text = str(e).strip().splitlines()
    return ConfigError(f"plugin {what} cannot be imported: {type(e).__name__}: {text[0] if text else ''}")


def load_plugin(name: str, via: str) -> dict[str, Any]:
    """Import one plugin (a module name or a ``.py`` path); ``ConfigError`` in one line if it fails."""
    key = canonical(name)
    if key in _LOADED:
        return _LOADED[key]
    try:
        module = _import(key)
    except (Exception, SystemExit) as e:  # a plugin's error of any kind is the user's to fix: one line
        raise _fail(repr(name), e) from e
    info = {
        "name": key, "module": module.__name__, "file": getattr(module, "__file__", None),
        "version": _version(module), "via": via,
    }  # fmt: skip
    _LOADED[key] = info
    return info


@functools.lru_cache(maxsize=8)
def _scan(search_path: tuple[str, ...]) -> tuple[metadata.EntryPoint, ...]:
    """The installed ``attn.plugins`` entry points (a scan of every distribution: once per ``sys.path``)."""
    return tuple(sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name))


def _entry_points() -> tuple[metadata.EntryPoint, ...]:
    if os.environ.get(NO_AUTOLOAD_ENV):
        return ()
    return _scan(tuple(sys.path))


def load_plugins(configured: list[str] | None = None) -> list[str]:
    """Import the plugins of the config, of ``ATTN_PLUGINS`` and of the entry points; returns the config's
    and the environment's plugins (canonical, in order, once each) for the run's config."""
    named: list[str] = []
    for via, names in (("config", configured or []), ("env", env_plugins())):
        for name in names:
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(
                    f"plugins={configured!r} is invalid: must be a list of module names or .py paths"
                )
            load_plugin(name.strip(), via)
            if canonical(name.strip()) not in named:
                named.append(canonical(name.strip()))
    for ep in _entry_points():
        key = f"entry point {ep.name}"
        if key in _LOADED:
            continue
        try:
            module = importlib.import_module(ep.module)
            if ep.attr:
                ep.load()
        except (Exception, SystemExit) as e:
            raise _fail(f"{ep.name!r} (entry point {ep.value} of group {ENTRY_POINT_GROUP})", e) from e
        _LOADED[key] = {
            "name": ep.name, "module": ep.module, "file": getattr(module, "__file__", None),
            "version": ep.dist.version if ep.dist is not None else _version(module), "via": "entry point",
        }  # fmt: skip
    return named


def loaded_plugins(named: list[str] | None = None) -> list[dict[str, Any]]:
    """What this process has loaded, ``{"name", "module", "file", "version", "via"}`` per plugin: the
    entry points and, of the others, those in ``named`` (a config's ``plugins``; None: all)."""
    return [
        info for key, info in _LOADED.items() if info["via"] == "entry point" or named is None or key in named
    ]
