"""Compose the run configuration from the packaged ``conf/`` with Hydra's compose API.

Composition errors become one-line :class:`ConfigError` messages that name the bad value and the
valid choices; :func:`load` also runs the typed checks of :mod:`attn.runner.schema`.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError
from .paths import CONF_DIR, CONFIG_DIR_ENV, GROUPS, config_dirs, group_options
from .schema import validate


def check_config_dirs() -> list[str]:
    """The user's config directories as Hydra search-path entries; ``ConfigError`` for a directory that
    does not exist or a file that would shadow a packaged one (``attention/scaled_dot.yaml``)."""
    entries = []
    for root in config_dirs():
        if not root.is_dir():
            raise ConfigError(f"--config-dir {root}: no such directory ({CONFIG_DIR_ENV})")
        for path in sorted(p for depth in ("*.yaml", "*/*.yaml", "*/*/*.yaml") for p in root.glob(depth)):
            rel = path.relative_to(root)
            if (CONF_DIR / rel).is_file():
                what = (
                    f"the option {rel.parent}={rel.stem}"
                    if str(rel.parent) != "."
                    else "attn's primary config"
                )
                raise ConfigError(
                    f"--config-dir {root}: {rel} has the name of {what} in {CONF_DIR}; a user config adds"
                    " options and cannot replace attn's, so rename it"
                )
        entries.append("'file://" + str(root).replace("\\", "\\\\").replace("'", "\\'") + "'")
    return entries


def _compose_raw(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    search = check_config_dirs()
    if search:  # the user's groups and options beside the packaged ones (Hydra's search path)
        overrides = [f"hydra.searchpath=[{','.join(search)}]", *overrides]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="attn"):
        return compose(config_name="config", overrides=overrides)


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def _explain_key(bad: str, overrides: list[str]) -> str:
    """A message for an override whose key does not exist: the valid keys at that level."""
    parent, _, leaf = bad.rpartition(".")
    groups = [o for o in overrides if _key_of(o) in GROUPS and "." not in _key_of(o)]
    try:
        base = _compose_raw(groups)
    except Exception:
        base = _compose_raw([])
    node = OmegaConf.select(base, parent) if parent else base
    if isinstance(node, DictConfig):
        valid = sorted(str(k) for k in node.keys())
        if not parent:
            valid = sorted(set(valid) | set(GROUPS))
        where = f"under {parent!r}" if parent else "at the top level"
        return f"unknown config key {bad!r}{_suggest(leaf, valid)}; valid keys {where}: {', '.join(valid)}"
    return f"unknown config key {bad!r}"


def _unparseable(overrides: list[str]) -> str | None:
    """The first override that Hydra's parser rejects on its own."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_override(o)
        except HydraException:
            return o
    return None


def explain(exc: Exception, overrides: list[str]) -> str:
    """Turn a Hydra/OmegaConf composition error into one line naming the value and the choices."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    if isinstance(exc, OverrideParseException):
        first = str(exc).strip().splitlines()[0]
        return f"cannot parse override {_unparseable(overrides) or ' '.join(overrides)!r}: {first}"
    if isinstance(exc, MissingConfigException):
        missing = (exc.missing_cfg_file or "").lstrip("/")
        group, _, option = missing.partition("/")  # an option may sit in a subdirectory: recall/full_d64
        if group in GROUPS:
            choices = group_options(group)
            if not option:  # `attention=` with nothing after the '='
                return f"{group}= needs an option; valid choices: {', '.join(choices)}"
            return (
                f"unknown {group} {option!r}{_suggest(option, choices)}; valid choices: {', '.join(choices)}"
            )
        return str(exc).strip().splitlines()[0]
    if isinstance(exc, ConfigCompositionException):
        text = str(exc)
        for o in overrides:
            key = _key_of(o)
            if f"An item is already at '{key}'" in text:
                return f"config key {key!r} already exists; set it without the leading '+': {o.lstrip('+')}"
            if f"Could not override '{key}'" in text:
                return _explain_key(key, overrides)
        cause = exc.__cause__
        if cause is not None:
            return str(cause).strip().splitlines()[0]
        return text.strip().splitlines()[0]
    return str(exc).strip().splitlines()[0]


class _Compose(Exception):
    """The fast path cannot compose these overrides: Hydra's own composition does."""


@functools.lru_cache(maxsize=256)
def _composed_groups(groups: tuple[str, ...], search: tuple[str, ...]) -> DictConfig:
    """Hydra's composition of the config-group choices alone (``search``: the user's config directories
    as they are now, part of the key because they change what composes)."""
    return _compose_raw(list(groups))


def _compose_fast(overrides: list[str]) -> DictConfig:
    """Hydra's composition, without composing the same group choices twice: the group choices
    (``attention=local``) are composed once per process (cached), and the value overrides
    (``softmax.temperature=0.5``) are applied to a copy by Hydra's own override step, in order, as Hydra
    applies them after the defaults. Anything else (sweeps, ``+``/``~`` on groups, ``hydra.*``, packages)
    raises :class:`_Compose`."""
    import copy

    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides=overrides)
    groups, values = [], []
    for o in parsed:
        name = o.key_or_group
        if o.is_sweep_override() or o.package is not None or name.startswith("hydra") or "/" in name:
            raise _Compose
        if group_options(name):
            if o.is_add() or o.is_delete() or o.is_force_add():
                raise _Compose
            groups.append(o.input_line)
        else:
            values.append(o)
    cfg = copy.deepcopy(_composed_groups(tuple(groups), tuple(check_config_dirs())))
    ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
    return cfg


def compose(overrides: list[str]) -> DictConfig:
    """The composed (not yet validated) config for ``overrides``; ``ConfigError`` on bad input."""
    import yaml
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = [_quote_numeric_option(o) for o in overrides]
    try:
        return _compose_fast(overrides)
    except Exception:  # an unusual override, or bad input: Hydra composes (and words the error) itself
        pass
    try:
        return _compose_raw(overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise ConfigError(explain(e, overrides)) from e
    except yaml.YAMLError as e:  # an option file of the user's that is not YAML: one line naming it
        raise ConfigError(yaml_error(e)) from e


def yaml_error(e: Exception) -> str:
    """One line for a YAML file that cannot be parsed: the file, the line and what is wrong."""
    mark = getattr(e, "problem_mark", None)
    where = f"{mark.name}, line {mark.line + 1}" if mark is not None else "a config file"
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    return f"{where}: not valid YAML ({f'{context}: ' if context else ''}{what}); correct or remove the file"


def _quote_numeric_option(override: str) -> str:
    """``precision=32`` names the option ``32`` of a group; Hydra would read an int and refuse it."""
    key, eq, value = override.partition("=")
    if eq and key in GROUPS and value.replace(".", "", 1).isdigit():
        return f"{key}='{value}'"
    return override


def load(overrides: list[str], before_validate: Callable[[DictConfig], object] | None = None) -> DictConfig:
    """Compose, resolve and validate the config for ``overrides``.

    ``before_validate`` sees the resolved config before validation, which imports torch: the place
    to decide what must be settled before that (the thread settings, :mod:`attn.runner.threads`).
    """
    from omegaconf.errors import OmegaConfBaseException

    cfg = compose(overrides)
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot resolve the config: {str(e).splitlines()[0]}") from e
    if before_validate is not None:
        before_validate(cfg)
    return validate(cfg)
