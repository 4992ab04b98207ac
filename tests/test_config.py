"""Config composition: every group option composes and validates; bad input gives one clear line."""

import pytest

from attn.runner.config import load
from attn.runner.errors import ConfigError
from attn.runner.paths import GROUPS, group_options

NON_OPTIONAL = [g for g in GROUPS if g not in ("experiment", "debug")]


def test_defaults_compose():
    cfg = load([])
    assert cfg.attention.kind == "scaled_dot" and cfg.softmax.name == "softmax"
    assert cfg.logger.kind == "wandb" and cfg.logger.mode == "offline"
    assert cfg.trainer.accelerator == "cpu"
    assert cfg.model.max_len == cfg.task.datamodule.max_len


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in group_options(g)])
def test_every_group_option_composes(group, option, tmp_path, monkeypatch):
    import attn.runner.schema as schema

    # Composition, not this machine's CPU: bf16 presets compose as on a CPU with native bfloat16
    # (test_distributed.py tests the refusal on a CPU without it).
    monkeypatch.setattr(schema, "cpu_has_bf16", lambda: True)
    overrides = [f"{group}={option}"]
    if (group, option) in (("task", "text_files"), ("task", "translation_files")):
        for split in ("train", "test"):
            (tmp_path / f"{split}.tsv").write_text("pos\tgood\nneg\tbad\n")
            overrides.append(f"task.datamodule.{split}={tmp_path / f'{split}.tsv'}")
    if (group, option) == ("task", "speech_folder"):
        overrides.append(f"task.datamodule.path={tmp_path}")
    if (group, option) == ("task", "fortunes"):  # the files of Debian's `fortunes` package, in its format
        for topic in ("computers", "politics", "science", "songs-poems", "work"):
            (tmp_path / topic).write_text("a quotation\n%\nanother one\n%\n")
        overrides.append(f"task.datamodule.path={tmp_path}")
    if group == "softmax" and option != "softmax":
        overrides.append("attention=scaled_dot")
    if (group, option) in (
        ("attention", "selective"),
        ("attention", "stick_breaking"),
        ("model", "zoology"),
    ) or option in (
        "modern_selective",
        "modern_stick_breaking",
    ):  # causal-only kinds and tied embeddings: a causal task
        overrides.append("task=mqar")
    if option.startswith("zoology/len"):  # Zoology's data settings: its task
        overrides.append("task=mqar_zoology")
    cfg = load(overrides)
    if group == "attention":
        assert cfg.attention.kind == option
    if group == "softmax":
        assert cfg.softmax.name == option


def test_experiment_overrides_groups_and_values():
    cfg = load(["experiment=bahdanau_cold"])
    assert cfg.attention.kind == "additive" and cfg.softmax.temperature == 0.5
    assert cfg.name == "bahdanau-cold"


def test_typed_values():
    cfg = load(
        ["trainer.max_epochs=3", "softmax.temperature=0.25", "seed=7", "softmax.temperature=learnable"]
    )
    assert cfg.trainer.max_epochs == 3 and isinstance(cfg.trainer.max_epochs, int)
    assert cfg.softmax.temperature == "learnable" and cfg.seed == 7


BAD = [
    ("attention=foo", "unknown attention 'foo'", "valid choices: additive, differential, dot, general"),
    ("softmax=softmax2", "unknown softmax 'softmax2'", "valid choices: entmax15, softmax, softmax1"),
    ("task=vision", "unknown task 'vision'", "valid choices: ag_news, classification, fortunes"),
    ("trainer.max_epoch=3", "unknown config key 'trainer.max_epoch'", "did you mean 'max_epochs'"),
    ("atention=dot", "unknown config key 'atention'", "did you mean 'attention'"),
    ("model.d_modle=3", "unknown config key 'model.d_modle'", "valid keys under 'model'"),
    ("trainer.max_epochs=abc", "trainer.max_epochs='abc'", "Integer"),
    ("trainer.val_check_interval=abc", "trainer.val_check_interval='abc' is invalid", "fraction of an epoch"),
    ("trainer.val_check_interval=0", "trainer.val_check_interval=0 is invalid", "or null"),
    ("trainer.val_check_interval=2.5", "trainer.val_check_interval=2.5 is invalid", "training batches >= 1"),
    ("model.n_layers=1.5", "model.n_layers=1.5", "Integer"),
    ("softmax.temperature=0", "softmax.temperature=0", "> 0 or one of learnable, adaptive, logn, ssmax"),
    ("softmax.temperature=-2", "softmax.temperature=-2", "> 0"),
    ("softmax.temperature=hot", "softmax.temperature='hot'", "> 0"),
    ("model.dropout=1.0", "model.dropout=1.0", "[0, 1)"),
    ("model.n_heads=3", "model.n_heads=3 does not divide model.d_model=64", ""),
    ("model.n_kv_heads=3", "model.n_kv_heads=3 does not divide model.n_heads=4", ""),
    ("attention=local attention.params.window=0", "window >= 1", "got 0"),
    ("attention=linear softmax=sparsemax", "softmax='sparsemax' cannot apply", "linear"),
    ("attention=linear model.attn_dropout=0.1", "no weights to drop", ""),
    ("softmax=sparsemax attention.params.fused=true", "fused attention needs softmax=softmax", ""),
    ("logger.mode=sometimes", "logger.mode='sometimes'", "offline, online, disabled"),
    ("task.datamodule.batch_size=abc", "task.datamodule.batch_size='abc'", "expected int"),
    ("seed=abc", "seed='abc'", "expected int"),
    ("optim.lr=-1", "optim.lr=-1", "> 0"),
    ("attention=", "attention= needs an option", "valid choices: additive, differential, dot"),
    ("seed=-1", "seed=-1 is invalid", "[0, 2**32 - 1]"),
    ("seed=4294967296", "seed=4294967296 is invalid", "[0, 2**32 - 1]"),
    ("task.datamodule.batch_size=0", "task.datamodule.batch_size=0 is invalid", ">= 1"),
    ("task=translation task.datamodule.batch_size=-3", "task.datamodule.batch_size=-3", ">= 1"),
    ("task.datamodule.num_workers=-1", "task.datamodule.num_workers=-1 is invalid", ">= 0"),
    ("optim.betas=[2,3]", "optim.betas=[2.0, 3.0] is invalid", "two numbers in [0, 1)"),
    ("optim.betas=[0.9]", "optim.betas=[0.9] is invalid", "two numbers"),
    ("optim.weight_decay=-1", "optim.weight_decay=-1.0 is invalid", ">= 0"),
    ("optim.warmup_ratio=2", "optim.warmup_ratio=2.0 is invalid", "[0, 1]"),
    ("optim.weight_decay=nan", "optim.weight_decay=nan is invalid", "finite"),
    ("model.dropout=nan", "model.dropout=nan is invalid", "finite"),
    ("trainer.gradient_clip_val=inf", "trainer.gradient_clip_val=inf is invalid", "finite"),
    ("+attention.params.x=-inf", "attention.params.x=-inf is invalid", "finite"),
    ("x=[", "cannot parse override 'x=['", ""),
    ("+trainer.max_epochs=3", "already exists", "trainer.max_epochs=3"),
    (
        "model.positions=learnt",
        "model.positions='learnt' is unknown",
        "sinusoidal, learned, none, rope, alibi",
    ),
    ("task.tokenizer=chars", "task.tokenizer='chars' is unknown", "word, bpe, unigram"),
    ("task.tokenizer=bpe task.vocab_size=abc", "task.vocab_size='abc' is invalid", "from 8 to"),
    ("task=mqar task.solved_at=high", "task.solved_at='high' is invalid", "a number"),
    ("task=mqar task.solved_at=1.5", "task.solved_at=1.5 is outside the range of test/acc", "(0 to 1)"),
    ("task=mqar task.solved_at=-3", "task.solved_at=-3 is outside the range of test/acc", "null"),
    ("task=translation task.solved_at=101", "task.solved_at=101 is outside", "test/bleu (0 to 100)"),
    ("task.tokenizer=bpe task.vocab_size=1000000000", "vocab_size=1000000000 is invalid", "8 to 1,048,576"),
    ("task=mqar task.eval_adaptive=maybe", "task.eval_adaptive='maybe' is invalid", "true or false"),
    ("plugins=3", "plugins=3 is invalid", "plugins=[my_attn]"),
    (
        "plugins=[attn_no_such_module]",
        "plugin 'attn_no_such_module' cannot be imported",
        "ModuleNotFoundError",
    ),
]


def test_solved_at_is_checked_against_the_tasks_main_metric():
    assert load(["task=translation", "task.solved_at=50"]).task.solved_at == 50  # BLEU, 0-100
    assert load(["task=mqar", "task.solved_at=0.5"]).task.solved_at == 0.5


@pytest.mark.parametrize("overrides, first, second", BAD)
def test_bad_overrides_one_line(overrides, first, second):
    with pytest.raises(ConfigError) as info:
        load(overrides.split())
    msg = str(info.value)
    assert "\n" not in msg
    assert first in msg and second in msg


def test_gpu_trainer_is_checked_against_the_machine(monkeypatch):
    import torch

    from attn.runner.schema import check_devices

    gpu = load(["trainer=gpu"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^trainer.accelerator=gpu needs a CUDA GPU, .* use trainer=cpu"):
        check_devices(gpu)
    check_devices(load(["trainer=cpu"]))
    check_devices(load(["trainer=ddp"]))  # devices=auto: the CPU when there is no GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_devices(gpu)
    with pytest.raises(ConfigError, match=r"^trainer.devices=2 but this machine has 1 GPU\(s\)"):
        check_devices(load(["trainer=gpu", "trainer.devices=2"]))


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["task=mqar", "task.datamodule.values=0"], "task.datamodule.values=0"),
        (["task=mqar", "task.datamodule.values=-3"], "task.datamodule.values=-3"),
        (["task=mqar", "task.datamodule.keys=0"], "task.datamodule.keys=0"),
        (["task=max_retrieval", "task.datamodule.classes=0"], "task.datamodule.classes=0"),
        (["task=max_retrieval", "task.datamodule.priorities=-1"], "task.datamodule.priorities=-1"),
        (["task=selective_copy", "task.datamodule.data_tokens=0"], "task.datamodule.data_tokens=0"),
        (["task=selective_copy", "task.datamodule.copies=-1"], "task.datamodule.copies=-1"),
        (["task=mqar", "task.datamodule.n_val=-2"], "task.datamodule.n_val=-2"),
        (["task=translation", "task.datamodule.n_train=0"], "task.datamodule.n_train=0"),
        (["task=translation", "task.datamodule.max_number=0"], "task.datamodule.max_number=0"),
        (
            ["task=translation", "task.datamodule.n_train=20000"],
            "do not fit below task.datamodule.max_number",
        ),
        (["trainer.max_steps=0"], "trainer.max_steps=0 is invalid: must be >= 1"),
        (["trainer.limit_test_batches=0"], "trainer.limit_test_batches=0 is invalid: must be > 0"),
        (["trainer.limit_train_batches=0.0"], "trainer.limit_train_batches=0.0 is invalid: must be > 0"),
    ],
)
def test_sizes_that_would_divide_by_zero_or_fail_late_are_one_line(overrides, named):
    """Zero and negative sizes stop at config time with the key named (issue 25: values=0 was a
    ZeroDivisionError, keys=0 a message about pairs, negative sizes failed late in torch; max_steps=0 and
    limit_test_batches=0 trained or tested nothing and recorded 'completed')."""
    with pytest.raises(ConfigError) as e:
        load(overrides)
    assert named in str(e.value) and "\n" not in str(e.value)


def test_composing_group_choices_once_gives_hydras_composition():
    """compose() composes each combination of group choices once and applies the value overrides with
    Hydra's own override step: the same config as Hydra's full composition, for every trial of the study
    presets and for overrides of every form."""
    from omegaconf import OmegaConf

    from attn.runner.config import _compose_raw, _quote_numeric_option, compose
    from attn.runner.sweep import expand, load_preset

    cases = [
        ["task=mqar", "seed=3", "attention=local", "attention.params.window=3"],
        ["precision=32", "trainer.max_epochs=2", "+foo=1", "~diagnostics.images"],
        ["experiment=modern_sink", "task=mqar", "optim.lr=0.003", "++trainer.stop_at=0.99"],
        ["task=translation", "attention=additive", "softmax=entmax15", "softmax.temperature=learnable"],
        ["model.positions=alibi", "task=mqar", "task.eval_lengths=[8,16]", "name=${task.name}-x"],
    ]
    for preset in ("hard_tasks", "mqar_kinds", "modern_kinds_tuned", "length_generalisation"):
        p = load_preset(preset)
        _, trials = expand([*p["overrides"], *(f"{k}={v}" for k, v in p["grid"].items())])
        cases += trials[:: max(1, len(trials) // 6)]
    for overrides in cases:
        fast = OmegaConf.to_container(compose(overrides))
        full = OmegaConf.to_container(_compose_raw([_quote_numeric_option(o) for o in overrides]))
        assert fast == full, overrides
