"""Typed schemas of the config groups and the checks that run right after composition.

Each group is merged onto its dataclass, so a wrong type (``trainer.max_epochs=abc``) fails with
the key and the value; range and combination checks follow. ``_target_`` nodes are checked
against the annotations of the class they build.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from attn.datamodules.subword import TOKENIZERS

from .errors import ConfigError
from .machine import cpu_has_bf16
from .plugins import load_plugins
from .stats import metric_range

# optim.schedule: the schedules of attn.models.training.warmup_cosine (a test checks they agree)
SCHEDULES = ("cosine", "constant", "rsqrt")

THREADS_CHOICES = "'auto', 'torch' or an integer >= 1"
# The largest subword vocabulary: 4x the largest of today's language models (Gemma's 256,000 pieces); the
# tokenizers library aborts the process (a Rust panic, no Python error) at ~1e9.
MAX_VOCAB = 2**20


@dataclass
class ModelSchema:
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: Optional[int] = None  # noqa: UP045 (OmegaConf needs Optional)
    mlp_ratio: int = 4
    max_len: int = 64
    positions: str = "sinusoidal"
    dropout: float = 0.0
    attn_dropout: float = 0.0
    tie_embeddings: bool = False


@dataclass
class AttentionSchema:
    kind: str = "scaled_dot"
    scale: Optional[float] = None  # noqa: UP045
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class SoftmaxSchema:
    name: str = "softmax"
    temperature: Any = 1.0
    temperature_init: float = 1.0
    sink: Optional[str] = None  # noqa: UP045
    softcap: Optional[float] = None  # noqa: UP045


@dataclass
class OptimSchema:
    lr: float = 3e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.05
    schedule: str = "cosine"
    warmup_steps: Optional[int] = None  # noqa: UP045


@dataclass
class TrainerSchema:
    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    max_epochs: int = 10
    max_steps: int = -1
    gradient_clip_val: Optional[float] = 1.0  # noqa: UP045
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 10
    check_val_every_n_epoch: int = 1
    val_check_interval: Any = None  # null: 4 validations an epoch in runs of 1-2 epochs, else one
    stop_at: Optional[float] = None  # noqa: UP045 (attn's: stop once task.monitor reaches it)
    pause_at: Optional[float] = None  # noqa: UP045 (attn's: pause after this share of the steps)
    deterministic: bool = False
    detect_anomaly: bool = False
    fast_dev_run: Any = False
    overfit_batches: Any = 0.0
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    profiler: Optional[str] = None  # noqa: UP045
    enable_progress_bar: bool = True
    enable_model_summary: bool = False
    use_distributed_sampler: bool = False


@dataclass
class LoggerSchema:
    kind: str = "wandb"
    mode: str = "offline"
    project: str = "attn"
    entity: Optional[str] = None  # noqa: UP045
    group: Optional[str] = None  # noqa: UP045
    tags: list[str] = field(default_factory=list)


@dataclass
class DiagnosticsSchema:
    enabled: bool = True
    batches: int = 2
    images: bool = True


GROUP_SCHEMAS = {
    "model": ModelSchema,
    "attention": AttentionSchema,
    "softmax": SoftmaxSchema,
    "optim": OptimSchema,
    "trainer": TrainerSchema,
    "logger": LoggerSchema,
    "diagnostics": DiagnosticsSchema,
}
LOGGER_KINDS = ("wandb", "csv", "none")
WANDB_MODES = ("offline", "online", "disabled")


def _typed(cfg: DictConfig) -> DictConfig:
    """Merge every group onto its schema; raise ``ConfigError`` naming a mistyped key."""
    from omegaconf.errors import OmegaConfBaseException

    for group, schema in GROUP_SCHEMAS.items():
        if not isinstance(cfg.get(group), DictConfig):
            raise ConfigError(f"config group {group!r} is required and cannot be removed")
        try:
            merged = OmegaConf.merge(OmegaConf.structured(schema), cfg[group])
        except OmegaConfBaseException as e:
            key = f"{group}.{e.key}" if getattr(e, "key", None) else group
            value = getattr(e, "value", None)
            msg = str(e).splitlines()[0]
            raise ConfigError(f"{key}={value!r} is invalid: {msg}") from None
        with _open(cfg):
            cfg[group] = merged
    return cfg


class _open:
    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def __enter__(self) -> None:
        OmegaConf.set_struct(self.cfg, False)

    def __exit__(self, *exc: object) -> None:
        OmegaConf.set_struct(self.cfg, True)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_annotation(path: str, value: Any, hint: Any) -> None:
    """Raise ``ConfigError`` unless ``value`` fits the simple type ``hint`` (int/float/bool/str/Optional)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                _check_annotation(path, value, arg)
                return
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if errors else ConfigError(f"{path}={value!r} is invalid")
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: _number(value),
        bool: isinstance(value, bool),
        str: isinstance(value, str),
    }.get(hint, True)
    if not ok:
        raise ConfigError(f"{path}={value!r} is invalid: expected {hint.__name__}")


def _check_target(path: str, node: DictConfig) -> None:
    """Check the values of a ``_target_`` node against the annotations of what it builds."""
    target = node.get("_target_")
    module, _, name = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise ConfigError(f"{path}._target_={target!r} cannot be imported") from None
    if hasattr(obj, "check_config"):  # a class's own checks of its settings (e.g. valid languages)
        try:
            obj.check_config(path, OmegaConf.to_container(node, resolve=True))
        except ValueError as e:
            raise ConfigError(str(e)) from None
    for key in getattr(obj, "PATH_KEYS", ()):
        value = node.get(key)
        if value is not None and not Path(str(value)).is_file():
            raise ConfigError(f"{path}.{key}={value}: no such file")
    hints = typing.get_type_hints(obj.__init__)
    params = inspect.signature(obj.__init__).parameters
    for key, value in node.items():
        if key == "_target_" or key not in params:
            continue
        if key in hints:
            _check_annotation(f"{path}.{key}", value, hints[key])


def parse_threads(value: Any) -> str | int:
    """``threads`` from the config: ``'auto'``, ``'torch'`` or an int >= 1; ``ValueError`` otherwise."""
    if isinstance(value, str) and value.strip() in ("auto", "torch"):
        return value.strip()
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(f"threads={value!r} is invalid: must be {THREADS_CHOICES}")


def _check_precision(tr: DictConfig) -> None:
    precision = str(tr.precision)
    valid = ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "64-true")
    if precision not in valid:
        raise ConfigError(f"trainer.precision={precision!r} is unknown; valid choices: {', '.join(valid)}")
    if precision.startswith("bf16") and tr.accelerator == "cpu" and cpu_has_bf16() is False:
        raise ConfigError(
            f"precision={precision}: this CPU has no native bfloat16 (no avx512_bf16/amx_bf16), so bf16 would"
            " be emulated and slow; use precision=32"
        )
    if precision == "16-mixed" and tr.accelerator == "cpu":
        raise ConfigError("trainer.precision=16-mixed needs a GPU; on the CPU use precision=32 or bf16-mixed")


def check_devices(cfg: DictConfig) -> None:
    """The devices the trainer asks for exist on this machine (``attn train``/``attn bench`` only: a
    sweep's trials are checked where they run, which for a cluster is not the submitting host)."""
    tr = cfg.trainer
    if tr.accelerator not in ("gpu", "cuda"):
        return
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have == 0:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ConfigError(
            f"trainer.accelerator={tr.accelerator} needs a CUDA GPU, but torch {torch.__version__} ({build})"
            " sees none; use trainer=cpu, or trainer=ddp, which falls back to the CPU"
        )
    devices = tr.devices
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > have:
        raise ConfigError(
            f"trainer.devices={devices} but this machine has {have} GPU(s); use trainer.devices<={have}"
        )


def _check_finite(node: Any, path: str = "") -> None:
    """Every float in the config is finite: nan and inf are never a setting."""
    if isinstance(node, DictConfig):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in node.items_ex(resolve=False))
    else:
        items = ((f"{path}[{i}]", v) for i, v in enumerate(node))
    for where, value in items:
        if isinstance(value, DictConfig | ListConfig):
            _check_finite(value, where)
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}={value} is invalid: must be a finite number")


def _check_tokenizer(task: DictConfig) -> None:
    """``task.tokenizer`` and ``task.vocab_size`` of the text tasks (other tasks have neither)."""
    if "tokenizer" not in task:
        return
    if task.tokenizer not in TOKENIZERS:
        raise ConfigError(
            f"task.tokenizer={task.tokenizer!r} is unknown; valid choices: {', '.join(TOKENIZERS)}"
        )
    size = task.get("vocab_size")
    if not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= MAX_VOCAB:
        raise ConfigError(
            f"task.vocab_size={size!r} is invalid: must be an integer from 8 to {MAX_VOCAB:,} (the subword"
            " vocabulary, with its 4 special tokens)"
        )


def _check_optim(optim: DictConfig) -> None:
    """Ranges of the optimiser settings (non-finite values are refused before, by _check_finite)."""
    if optim.lr <= 0:
        raise ConfigError(f"optim.lr={optim.lr!r} is invalid: must be a finite number > 0")
    betas = list(optim.betas)
    if len(betas) != 2 or not all(_number(b) and 0 <= b < 1 for b in betas):
        raise ConfigError(f"optim.betas={betas} is invalid: must be two numbers in [0, 1)")
    if optim.weight_decay < 0:
        raise ConfigError(f"optim.weight_decay={optim.weight_decay} is invalid: must be >= 0")
    for key in ("warmup_ratio", "min_lr_ratio"):
        if not 0 <= optim[key] <= 1:
            raise ConfigError(f"optim.{key}={optim[key]} is invalid: must be in [0, 1]")
    if optim.schedule not in SCHEDULES:
        raise ConfigError(
            f"optim.schedule={optim.schedule!r} is unknown; valid choices: {', '.join(SCHEDULES)}"
        )
    if optim.warmup_steps is not None and optim.warmup_steps < 0:
        raise ConfigError(f"optim.warmup_steps={optim.warmup_steps} is invalid: must be >= 0 (or null)")


def _load_plugins(cfg: DictConfig) -> None:
    """Import the plugins (config key, ``ATTN_PLUGINS``, entry points); the config records the first two."""
    configured = cfg.get("plugins")
    if configured is not None and not (
        isinstance(configured, ListConfig) and all(isinstance(p, str) and p.strip() for p in configured)
    ):
        shown = OmegaConf.to_container(configured) if isinstance(configured, ListConfig) else configured
        raise ConfigError(
            f"plugins={shown!r} is invalid: must be a list of module names or .py paths,"
            " e.g. plugins=[my_attn]"
        )
    named = load_plugins(list(configured or []))
    if "plugins" in cfg or named:
        with _open(cfg):
            cfg.plugins = named


def _task_causal(cfg: DictConfig) -> bool | None:
    """Whether the task's self-attention is causal (its module's ``CAUSAL``); None when it does not say."""
    return _module_says(cfg, "CAUSAL")


def _check_window(cfg: DictConfig, data_class: Any) -> None:
    """A local attention's window must be shorter than the task's training sequences (else it is full
    attention under another name); checked where the data module says its length in tokens."""
    window = cfg.attention.params.get("window") if cfg.attention.kind == "local" else None
    if not isinstance(window, int) or not hasattr(data_class, "train_tokens"):
        return
    params = {
        k: v for k, v in OmegaConf.to_container(cfg.task.datamodule, resolve=True).items() if k != "_target_"
    }
    try:
        tokens = data_class(**params).train_tokens
    except (TypeError, ValueError):
        return  # the data module's own check says what is wrong
    if window > tokens:
        raise ConfigError(
            f"attention.params.window={window} is longer than task={cfg.task.name}'s training sequences"
            f" ({tokens} tokens): local attention would be full attention; valid: 1 .. {tokens}"
        )


def _module_says(cfg: DictConfig, attribute: str) -> Any:
    """The task module's class attribute ``attribute``; None when it does not say."""
    target = str((cfg.task.get("module") or {}).get("_target_", ""))
    module, _, name = target.rpartition(".")
    try:
        return getattr(getattr(importlib.import_module(module), name, None), attribute, None)
    except ImportError:
        return None


@functools.cache
def _note_once(line: str) -> None:
    """Print ``line`` to stderr once per process (a sweep validates every trial's config)."""
    print(line, file=sys.stderr, flush=True)


def validate(cfg: DictConfig) -> DictConfig:
    """Types, ranges and combinations of a composed config; ``ConfigError`` on the first problem."""
    cfg = _typed(cfg)
    # The registries import torch: only here, after the caller's before_validate hook has put the thread
    # settings in place (OpenMP reads them once, when torch loads it; see attn.runner.threads).
    from attn.models.attention import (
        NORMALISED_KINDS,
        TEMPERATURE_RULES,
        check_combination,
        check_positions,
        list_attention,
    )
    from attn.models.softmax import list_softmax

    _load_plugins(cfg)  # their kinds and normalisers are valid from here on
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise ConfigError(f"seed={cfg.seed!r} is invalid: expected int")
    if not 0 <= cfg.seed < 2**32:
        raise ConfigError(f"seed={cfg.seed} is invalid: must be in [0, 2**32 - 1] (numpy's seed range)")
    _check_finite(cfg)
    if "threads" in cfg:
        try:
            cfg.threads = parse_threads(cfg.threads)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    kind, sm = cfg.attention.kind, cfg.softmax.name
    if kind not in list_attention():
        raise ConfigError(
            f"attention.kind={kind!r} is unknown; valid choices: {', '.join(list_attention())}"
            " (a kind of your own: load its module with plugins=[module])"
        )
    if sm not in list_softmax():
        raise ConfigError(
            f"softmax.name={sm!r} is unknown; valid choices: {', '.join(list_softmax())}"
            " (a variant of your own: load its module with plugins=[module])"
        )
    t = cfg.softmax.temperature
    named = TEMPERATURE_RULES
    if t not in named and not (_number(t) and math.isfinite(t) and t > 0):
        raise ConfigError(
            f"softmax.temperature={t!r} is invalid: must be a number > 0 or one of {', '.join(named)}"
        )
    if t == "adaptive" and (sm != "softmax" or kind not in NORMALISED_KINDS):
        raise ConfigError(
            f"softmax.temperature=adaptive needs softmax=softmax and an attention kind that normalises its"
            f" weights ({', '.join(sorted(NORMALISED_KINDS))}); got attention={kind}, softmax={sm}"
        )
    if t not in named:
        cfg.softmax.temperature = float(t)  # 2 and 2.0 are one temperature in records and reports
    if not (math.isfinite(cfg.softmax.temperature_init) and cfg.softmax.temperature_init > 0):
        raise ConfigError(f"softmax.temperature_init={cfg.softmax.temperature_init!r} must be > 0")
    m = cfg.model
    for key in ("dropout", "attn_dropout"):
        if not 0.0 <= m[key] < 1.0:
            raise ConfigError(f"model.{key}={m[key]!r} is invalid: must be in [0, 1)")
    for key in ("d_model", "n_layers", "n_heads", "mlp_ratio", "max_len"):
        low = 0 if key == "mlp_ratio" else 1  # mlp_ratio=0: blocks without an MLP
        if m[key] < low:
            raise ConfigError(f"model.{key}={m[key]!r} is invalid: must be >= {low}")
    if m.tie_embeddings and not _module_says(cfg, "TIES_EMBEDDINGS"):
        raise ConfigError(
            f"model.tie_embeddings=true needs a task that predicts its own tokens (task={cfg.task.name} does"
            " not); valid with the diagnostic sequence tasks"
        )
    if m.d_model % m.n_heads:
        raise ConfigError(f"model.n_heads={m.n_heads} does not divide model.d_model={m.d_model}")
    if m.n_kv_heads is not None and (m.n_kv_heads < 1 or m.n_heads % m.n_kv_heads):
        raise ConfigError(f"model.n_kv_heads={m.n_kv_heads} does not divide model.n_heads={m.n_heads}")
    params = {k: v for k, v in OmegaConf.to_container(cfg.attention.params).items() if v is not None}
    try:
        check_combination(
            kind, softmax=sm, dropout_p=m.attn_dropout, params=params, sink=cfg.softmax.sink,
            softcap=cfg.softmax.softcap, causal=_task_causal(cfg), task=f"task={cfg.task.name}",
        )  # fmt: skip
        check_positions(kind, m.positions, m.d_model // m.n_heads)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.logger.kind not in LOGGER_KINDS:
        raise ConfigError(
            f"logger.kind={cfg.logger.kind!r} is unknown; valid choices: {', '.join(LOGGER_KINDS)}"
        )
    if cfg.logger.mode not in WANDB_MODES:
        raise ConfigError(
            f"logger.mode={cfg.logger.mode!r} is unknown; valid choices: {', '.join(WANDB_MODES)}"
        )
    tr = cfg.trainer
    _check_precision(tr)
    if tr.max_epochs < -1 or tr.max_epochs == 0:
        raise ConfigError(f"trainer.max_epochs={tr.max_epochs} is invalid: must be >= 1 (or -1)")
    if tr.max_steps < -1 or tr.max_steps == 0:  # 0 steps would train nothing and still 'complete'
        raise ConfigError(f"trainer.max_steps={tr.max_steps} is invalid: must be >= 1 (or -1, no limit)")
    vci = tr.get("val_check_interval")
    if vci is not None and not (_number(vci) and (0 < vci <= 1 or (float(vci).is_integer() and vci >= 1))):
        raise ConfigError(
            f"trainer.val_check_interval={vci!r} is invalid: a fraction of an epoch in (0, 1], a number of"
            " training batches >= 1, or null (4 validations an epoch in runs of 1-2 epochs, else one)"
        )
    if tr.stop_at is not None:
        low, high = metric_range(str(cfg.task.monitor))
        if not low <= tr.stop_at <= high:
            raise ConfigError(
                f"trainer.stop_at={tr.stop_at} is outside the range of {cfg.task.monitor} ({low:g} to"
                f" {high:g}): give the validation value that counts a run as solved (Zoology: 0.99), or null"
            )
    if tr.pause_at is not None and not 0 < tr.pause_at < 1:
        raise ConfigError(
            f"trainer.pause_at={tr.pause_at} is invalid: a share of the run's training steps in (0, 1),"
            " or null"
        )
    for stage in ("train", "val", "test"):
        limit = tr[f"limit_{stage}_batches"]
        if _number(limit) and limit <= 0:  # no batches: nothing trained, validated or tested
            raise ConfigError(
                f"trainer.limit_{stage}_batches={limit} is invalid: must be > 0 (a fraction of the batches,"
                " or a number of them), or null for all"
            )
    if cfg.diagnostics.batches < 0:
        raise ConfigError(f"diagnostics.batches={cfg.diagnostics.batches} is invalid: must be >= 0")
    _check_optim(cfg.optim)
    dm = cfg.task.get("datamodule")
    if isinstance(dm, DictConfig):
        for key, low in (("batch_size", 1), ("num_workers", 0)):
            value = dm.get(key)
            if _number(value) and value < low:  # the type is checked against the datamodule below
                raise ConfigError(f"task.datamodule.{key}={value!r} is invalid: must be an integer >= {low}")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} is required: set it on the command line, e.g. {missing[0]}=<value>")
    solved_at = cfg.task.get("solved_at")
    if solved_at is not None and not (_number(solved_at) and math.isfinite(solved_at)):
        raise ConfigError(f"task.solved_at={solved_at!r} is invalid: must be a number (the main test metric's"
                          " value that counts a run as solved) or null")  # fmt: skip
    if solved_at is not None:
        # the task's main test metric: task.metric where it is set (translation: test/bleu), else the test
        # value of its monitor (val/acc -> test/acc)
        metric = str(cfg.task.get("metric") or "test/" + str(cfg.task.monitor).split("/", 1)[-1])
        low, high = metric_range(metric)
        if not low <= solved_at <= high:
            raise ConfigError(
                f"task.solved_at={solved_at!r} is outside the range of {metric} ({low:g} to {high:g}):"
                " give the value of the main test metric that counts a run as solved, or null"
            )
    for key in ("eval_adaptive", "eval_logn"):
        if not isinstance(cfg.task.get(key, False), bool):
            raise ConfigError(f"task.{key}={cfg.task[key]!r} is invalid: must be true or false")
    lengths = cfg.task.get("eval_lengths")
    if lengths is not None and not (
        isinstance(lengths, ListConfig)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in lengths)
    ):
        shown = OmegaConf.to_container(lengths) if isinstance(lengths, ListConfig) else lengths
        raise ConfigError(
            f"task.eval_lengths={shown!r} is invalid: must be a list of whole numbers, e.g. [8,16,32],"
            " or null"
        )
    _check_tokenizer(cfg.task)
    for key, node in cfg.task.items():
        if isinstance(node, DictConfig) and "_target_" in node:
            _check_target(f"task.{key}", node)
    target = str(cfg.task.datamodule.get("_target_", ""))
    module, _, name = target.rpartition(".")
    data_class = getattr(importlib.import_module(module), name, None)
    variable = hasattr(data_class, "at_length")
    _check_window(cfg, data_class)
    if t == "logn" and not variable:
        _note_once(
            f"note: temperature=logn multiplies the logits by max(1, ln n / ln L), L the training length;"
            f" task={cfg.task.name} never shows a query more than L keys, so this run is the T = 1 run"
        )
    if lengths:
        if not variable:
            raise ConfigError(
                f"task.eval_lengths={list(lengths)}: task={cfg.task.name} has no variable length; it applies"
                " to mqar, max_retrieval and selective_copy"
            )
    if cfg.model.max_len < cfg.task.datamodule.get("max_len", 0):
        raise ConfigError(
            f"model.max_len={cfg.model.max_len} is shorter than task.datamodule.max_len="
            f"{cfg.task.datamodule.max_len}: the model could not read the longest sequences"
        )
    return cfg
