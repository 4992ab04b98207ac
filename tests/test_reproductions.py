"""What reproducing the field's reference results needs (issue 33): Zoology's MQAR (Figure 2) and its model,
ListOps as Long Range Arena generates it, the state an attention carries (Based, Figure 2), and the presets
that run them."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats as sps

from attn.datamodules.diagnostic import IGNORE, MQARDataModule
from attn.datamodules.listops import END, OPERATORS, ListOpsDataModule, evaluate, generate_tree, longest
from attn.runner.config import load
from attn.runner.errors import ConfigError
from attn.runner.run import run

# ------------------------------------------------------------------------------------------------
# Zoology's MQAR, Figure 2


def zoology_slots(space: int, pairs: int, power_a: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Query slots as Zoology's ``multiquery_ar`` draws them, written from its description: ``space`` slots,
    ``p(s) ~ power_a * s^(power_a - 1)`` for ``s = 1 .. space``, ``pairs`` of them without replacement."""
    p = power_a * np.arange(1, space + 1) ** (power_a - 1)
    p /= p.sum()
    return np.stack([rng.choice(space, size=pairs, replace=False, p=p) for _ in range(n)])


def test_zoology_figure2_data_is_zoologys_layout():
    """Vocabulary 8,192 split as Zoology splits it (keys 1..4095, values 4096..8191), 16 tokens per pair
    (4 pairs in 64 tokens), each key queried once at an even offset of the query region with its value the
    target one position on, zeros elsewhere in the region (random_non_queries=False), and the query slots
    distributed as Zoology's power law draws them."""
    dm = MQARDataModule(
        generator="zoology", vocab_size=8192, query_slots=7, filler="zero", pairs=4,
        n_train=10, n_val=10, n_test=10, max_len=64,
    )  # fmt: skip
    assert (dm.keys, dm.values, dm.vocab_size, dm.tokens(4)) == (4095, 4096, 8192, 64)
    assert dm.module_kwargs()["padding"] is False  # token 0 is Zoology's filler, not padding
    ids, targets = dm.generate(3000, 4, torch.Generator().manual_seed(0))
    keys, values = ids[:, 0:8:2], ids[:, 1:8:2]
    assert ((keys >= 1) & (keys <= 4095)).all() and ((values >= 4096) & (values <= 8191)).all()
    region, answers = ids[:, 8:], targets[:, 8:]
    asked = answers != IGNORE
    assert (asked.sum(1) == 4).all() and (targets[:, :8] == IGNORE).all()
    assert (region[~asked] == 0).all()  # the filler
    for row in range(100):
        bound = dict(zip(keys[row].tolist(), values[row].tolist(), strict=True))
        assert {
            region[row, c].item(): answers[row, c].item() for c in asked[row].nonzero().flatten()
        } == bound
    where = asked.nonzero()[:, 1]
    assert (where % 2 == 0).all()
    ours = (where // 2).numpy()
    theirs = zoology_slots(28, 4, 0.01, 3000, np.random.default_rng(0)).ravel()
    assert sps.ks_2samp(ours, theirs).pvalue > 0.01  # one distribution of query positions
    # Zoology's (512, 64): 3 slots per pair fill 512 tokens
    assert (
        MQARDataModule(generator="zoology", query_slots=3, vocab_size=8192, pairs=64, max_len=512).tokens(64)
        == 512
    )


def test_zoology_random_filler_and_the_attn_generator_are_unchanged():
    """The default filler is a random real token, and the draws of the existing settings did not move
    (drawing in blocks gives the numbers of one draw)."""
    dm = MQARDataModule(generator="zoology", n_train=10, n_val=10, n_test=10, max_len=64)
    ids, targets = dm.generate(500, 8, torch.Generator().manual_seed(3))
    filler = ids[:, 16:][targets[:, 16:] == IGNORE]
    assert (filler >= 1).all() and (filler < dm.vocab_size).all() and dm.module_kwargs().get("padding", True)
    g = torch.Generator().manual_seed(5)
    whole = torch.rand(300, 64, generator=g).argsort(dim=1)[:, :8]
    from attn.datamodules.diagnostic import _random_order

    assert torch.equal(_random_order(300, 64, torch.Generator().manual_seed(5), 8), whole)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["task.datamodule.vocab_size=16", "task.datamodule.pairs=8"],
            "pairs need distinct keys and distinct",
        ),
        (["task.datamodule.filler=noise"], "filler='noise' is unknown; valid choices: random, zero"),
        (["model.mlp_ratio=-1"], "model.mlp_ratio=-1 is invalid: must be >= 0"),
        (["optim.schedule=step"], "optim.schedule='step' is unknown; valid choices: cosine, constant, rsqrt"),
        (["optim.warmup_steps=-5"], "optim.warmup_steps=-5 is invalid"),
        (["model.positions=learnt"], "valid choices: sinusoidal, learned, none, rope, alibi"),
        (["attention=local", "attention.params.window=65"], "window=65 is longer than task=mqar_zoology's"),
        (["trainer.stop_at=1.5"], "trainer.stop_at=1.5"),
    ],
)
def test_bad_reproduction_settings_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        load(["task=mqar_zoology", *overrides])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_tied_embeddings_only_where_the_head_predicts_tokens():
    with pytest.raises(
        ConfigError, match=r"model\.tie_embeddings=true needs a task that predicts its own tokens"
    ):
        load(["model.tie_embeddings=true"])
    from attn.models.sequence import SequenceModel

    net = SequenceModel(50, d_model=16, n_layers=1, n_heads=1, max_len=8, tie_embeddings=True)
    assert net.head.weight is net.embed.weight and net.head.bias is None


def test_no_mlp_blocks_and_learned_positions():
    from attn.models.transformer import Encoder

    enc = Encoder(d_model=16, n_layers=2, n_heads=1, mlp_ratio=0, max_len=8, positions="learned")
    assert all(b.mlp is None and b.ln2 is None for b in enc.blocks)
    assert enc.position_embed.weight.shape == (8, 16)
    x = torch.randn(2, 5, 16)
    block = enc.blocks[0]
    a, _ = block.attn(block.ln1(x))
    assert torch.allclose(block(x)[0], x + a, atol=1e-6)  # x + Attn(LN(x)) and nothing after
    assert torch.allclose(enc.embed_positions(x), x + enc.position_embed.weight[:5])


def test_the_head_at_labelled_positions_is_the_full_head_there():
    """Logits, loss and gradients of the head computed at the target positions only equal the full head's
    read at those positions."""
    from attn.models.sequence import SequenceModel

    torch.manual_seed(0)
    net = SequenceModel(300, d_model=16, n_layers=2, n_heads=2, max_len=12, mlp_ratio=0).double()
    ids = torch.randint(1, 300, (4, 12))
    y = torch.full((4, 12), IGNORE)
    y[:, 7::2] = torch.randint(1, 300, (4, 3))
    asked = y != IGNORE
    full, _ = net(ids)
    loss_full = torch.nn.functional.cross_entropy(full.transpose(1, 2), y, ignore_index=IGNORE)
    grads_full = torch.autograd.grad(loss_full, list(net.parameters()), allow_unused=True)
    part, _ = net(ids, at=asked)
    assert torch.allclose(part, full[asked], atol=1e-12)
    loss_part = torch.nn.functional.cross_entropy(part, y[asked])
    grads_part = torch.autograd.grad(loss_part, list(net.parameters()), allow_unused=True)
    assert torch.allclose(loss_part, loss_full, atol=1e-12)
    for a, b in zip(grads_full, grads_part, strict=True):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-12)


def test_schedules():
    from attn.models.training import SCHEDULES, warmup_cosine
    from attn.runner.schema import SCHEDULES as CHECKED

    assert SCHEDULES == CHECKED
    assert warmup_cosine(500, 0, 1000, 0.0, "constant") == 1.0
    assert warmup_cosine(500, 0, 1000, 0.0, "cosine") == pytest.approx(0.5)
    assert warmup_cosine(99, 100, 1000, 0.0, "rsqrt") == pytest.approx(1.0)
    # LRA: 0.05 * min(1, s / 1000) * rsqrt(max(s, 1000)) = (0.05 / sqrt(1000)) * factor
    for step in (1000, 2500, 4999):
        lra = 0.05 / math.sqrt(max(step, 1000))
        assert 0.05 / math.sqrt(1000) * warmup_cosine(step, 1000, 5000, 0.0, "rsqrt") == pytest.approx(lra)


# ------------------------------------------------------------------------------------------------
# state per sequence (Based, Figure 2)


def test_state_elements_follow_the_formulas():
    from attn.models.attention import MultiHeadAttention

    d, h, length = 64, 4, 100
    full = MultiHeadAttention(d, h, "scaled_dot")
    gqa = MultiHeadAttention(d, h, "scaled_dot", n_kv_heads=2)
    local = MultiHeadAttention(d, h, "local", window=8)
    wide = MultiHeadAttention(d, h, "local", window=512)
    lin = MultiHeadAttention(d, h, "linear")
    assert full.state_elements(length) == 2 * length * d
    assert gqa.state_elements(length) == 2 * length * d // 2
    assert local.state_elements(length) == 2 * 8 * d and wide.state_elements(length) == 2 * length * d
    assert lin.state_elements(length) == h * (16 * 16 + 16) == lin.state_elements(10 * length)


def test_a_sequence_run_records_its_state_bytes(fast):
    record, exc = run(load([*fast, "task=mqar", "trainer.fast_dev_run=true", "task.eval_lengths=[]"]))
    assert exc is None, record["error"]
    # model=small: 1 layer, d_model 32; mqar: 8 pairs in 24 tokens; float32
    assert record["metrics"]["state_bytes"] == 2 * 24 * 32 * 4


def _group(kind: str, state: float, accs: list[float]):
    from attn.runner.aggregate import Group
    from attn.runner.collect import Run
    from attn.runner.stats import Stat

    runs = [
        Run(f"{kind}-{state}-{i}", "completed", {"attention": {"kind": kind}}, {}) for i in range(len(accs))
    ]
    stats = {"test/acc": Stat(accs), "state_bytes": Stat([state] * len(accs))}
    return Group("mqar", (f"{kind}-{state}",), runs, stats, None)


def test_recall_against_state_figure_numbers():
    from attn.runner.figures import recall_vs_state

    groups = [
        _group("local", 1024, [0.3, 0.4]),
        _group("local", 4096, [0.6, 0.7]),
        _group("scaled_dot", 16384, [1, 1]),
    ]
    lines = recall_vs_state(groups, "test/acc")
    assert [p[0] for p in lines["local"]] == [1024, 4096] and lines["scaled_dot"][0][:2] == (16384, 1)
    assert recall_vs_state(groups[:1], "test/acc") == {}  # one state size per kind: nothing to draw


# ------------------------------------------------------------------------------------------------
# ListOps


def independent_value(tokens: list[str]) -> int:
    """The value of a ListOps expression, computed another way: recursive descent over the tokens, with
    LRA's definitions (MED: numpy's median, then int; SM: the sum mod 10)."""
    ops = {
        "[MIN": min, "[MAX": max, "[MED": lambda a: int(np.median(a)), "[SM": lambda a: sum(a) % 10,
    }  # fmt: skip

    def parse(i: int) -> tuple[int, int]:  # the value starting at token i, and the index after it
        if tokens[i] not in ops:
            return int(tokens[i]), i + 1
        args, j = [], i + 1
        while tokens[j] != END:
            value, j = parse(j)
            args.append(value)
        return int(ops[tokens[i]](args)), j + 1

    value, end = parse(0)
    assert end == len(tokens)
    return value


def test_listops_labels_match_an_independent_evaluator():
    rng = random.Random(0)
    checked = 0
    while checked < 3000:
        tokens = generate_tree(rng, 6, 6)
        if len(tokens) > 1:
            assert evaluate(tokens) == independent_value(tokens), " ".join(tokens)
            checked += 1
    assert evaluate("[MED 1 2 7 8 ]".split()) == 4 and evaluate("[SM 9 9 [MAX 3 8 ] ]".split()) == 6


def test_listops_follows_lras_rules_and_keeps_the_brackets():
    dm = ListOpsDataModule(
        n_train=400, n_val=100, n_test=100, min_length=20, max_length=60, max_depth=4, max_args=5
    )
    dm.prepare_splits()
    texts = {name: {" ".join(t) for t, _ in rows} for name, rows in dm.splits.items()}
    assert (
        not texts["train"] & texts["val"]
        and not texts["train"] & texts["test"]
        and not texts["val"] & texts["test"]
    )
    for tokens, label in dm.splits["train"]:
        assert 20 <= len(tokens) <= 60 and label == evaluate(tokens)
        assert tokens.count(END) == sum(t in OPERATORS for t in tokens)  # every operator closed
        depth = deepest = 0
        for t in tokens:
            depth += t in OPERATORS
            depth -= t == END
            deepest = max(deepest, depth)
        assert deepest <= 3  # a node at max_depth 4 is a digit: operators at depths 1..3
    assert set(dm.vocab.tokens) == {"<pad>", "<unk>", *OPERATORS, END, *map(str, range(10))}
    again = ListOpsDataModule(
        n_train=400, n_val=100, n_test=100, min_length=20, max_length=60, max_depth=4, max_args=5
    )
    again.prepare_splits()
    assert again.splits == dm.splits  # deterministic by seed
    assert longest(4, 5) == 2 + 5 * (2 + 5 * (2 + 5 * 1))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task.datamodule.min_length=200", "task.datamodule.max_length=250", "task.datamodule.max_len=256"],
         "min_length=200 is out of reach: with max_depth=4 and max_args=5 an expression has at most 187"),
        (["task.datamodule.max_length=100"], "max_length=100 is more than task.datamodule.max_len=64"),
        (["task.datamodule.max_length=8"], "max_length=8 is invalid: must be an integer >= 16"),
        (["task.datamodule.max_args=1"], "max_args=1 is invalid: must be an integer >= 2"),
    ],
)  # fmt: skip
def test_listops_bad_lengths_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        load(["task=listops", *overrides])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_listops_run_writes_each_expression_beside_its_label_and_prediction(fast):
    record, exc = run(load([*fast, "task=listops", "trainer.max_epochs=1"]))
    assert exc is None and record["status"] == "completed", record["error"]
    path = Path(record["run_dir"]) / "predictions" / "test.tsv"
    rows = list(csv.DictReader(open(path), delimiter="\t"))
    assert len(rows) == 64 and {"text", "label", "predicted"} <= set(rows[0])
    for row in rows:
        assert evaluate(row["text"].split()) == int(row["label"])


# ------------------------------------------------------------------------------------------------
# presets


@pytest.mark.parametrize(
    ("preset", "trials"),
    [("recall_vs_state", 30), ("listops_lra", 9), ("zoology_figure2", 42), ("zoology_figure2_full", 112),
     ("listops_small", 45)],
)  # fmt: skip
def test_untuned_reproduction_presets_plan(preset, trials):
    from attn.runner.sweep import plan

    manifest, skips = plan([f"sweep={preset}"])
    assert len(manifest["trials"]) == trials and not skips


def test_listops_lra_is_lras_configuration():
    from attn.runner.sweep import plan

    manifest, _ = plan(["sweep=listops_lra"])
    cfg = load(manifest["trials"][0]["overrides"])
    dm, m, o = cfg.task.datamodule, cfg.model, cfg.optim
    assert (dm.min_length, dm.max_length, dm.max_depth, dm.max_args, dm.batch_size) == (500, 2000, 10, 10, 32)
    assert (m.n_layers, m.d_model, m.n_heads, m.mlp_ratio * m.d_model) == (6, 512, 8, 2048)
    assert (cfg.trainer.max_steps, o.warmup_steps, o.schedule) == (5000, 1000, "rsqrt")
    assert o.lr == pytest.approx(0.05 / math.sqrt(1000), rel=1e-3)


def test_one_listops_lra_trial_runs():
    """One trial of sweep=listops_lra with its model, on CPU, one batch (fast_dev_run), fewer and shorter
    expressions padded to 128 tokens (generating 96,000 of 500-2,000 tokens takes minutes, and one step of
    the 6 x 512 model at 2,000 tokens takes seconds on a CPU)."""
    from attn.runner.sweep import plan

    manifest, _ = plan(["sweep=listops_lra"])
    small = [
        "trainer=cpu", "precision=32", "logger=none", "baseline=false", "trainer.fast_dev_run=true",
        "task.datamodule.n_train=64", "task.datamodule.n_val=8", "task.datamodule.n_test=8",
        "task.datamodule.batch_size=2", "task.datamodule.min_length=60", "task.datamodule.max_length=120",
        "task.datamodule.max_len=128", "threads=1",
    ]  # fmt: skip
    record, exc = run(load([*manifest["trials"][0]["overrides"], *small]))
    assert exc is None and record["status"] == "completed", record["error"]
    assert json.dumps(record["metrics"])


def test_zoology_figure2_full_has_zoologys_numbers():
    from attn.runner.sweep import plan

    manifest, _ = plan(["sweep=zoology_figure2_full"])
    seen = set()
    for trial in manifest.trials:
        if trial.extra.get("phase") != "tune" or trial.extra["candidate"]["optim.lr"] != "0.01":
            continue
        cfg = load(trial.overrides)
        dm = cfg.task.datamodule
        seen.add((dm.max_len, dm.pairs, dm.batch_size, cfg.model.d_model))
        assert (dm.vocab_size, dm.filler, dm.n_train, dm.n_test, cfg.trainer.max_epochs) == (
            8192,
            "zero",
            100_000,
            3000,
            64,
        )
        assert (cfg.model.n_layers, cfg.model.n_heads, cfg.model.mlp_ratio, cfg.model.attn_dropout) == (
            2,
            1,
            0,
            0.1,
        )
        assert (cfg.optim.weight_decay, cfg.optim.schedule, cfg.trainer.stop_at) == (0.1, "cosine", 0.99)
    lengths = {(64, 4, 512), (128, 8, 512), (256, 16, 256), (512, 64, 128)}
    assert seen == {(*x, d) for x in lengths for d in (64, 128, 256, 512)}
    lrs = {t.extra["candidate"]["optim.lr"] for t in manifest.trials if t.extra.get("phase") == "tune"}
    assert sorted(float(v) for v in lrs) == pytest.approx(list(np.logspace(-4, -2, 4)), rel=1e-4)


@pytest.mark.slow
def test_one_zoology_figure2_full_trial_runs():
    """One trial of sweep=zoology_figure2_full (length 512, 64 pairs, width 512) on CPU, one batch of 4."""
    from attn.runner.sweep import plan

    manifest, _ = plan(["sweep=zoology_figure2_full"])
    trial = next(t for t in manifest.trials if t.values.get("experiment") == "zoology/len512"
                 and t.values.get("model.d_model") == "512" and t.extra.get("phase") == "tune")  # fmt: skip
    small = [
        "trainer=cpu", "logger=none", "trainer.fast_dev_run=true", "task.datamodule.n_train=64",
        "task.datamodule.n_val=8", "task.datamodule.n_test=8", "task.datamodule.batch_size=4",
    ]  # fmt: skip
    record, exc = run(load([*trial.overrides, *small]))
    assert exc is None and record["status"] == "completed", record["error"]
    assert record["metrics"]["state_bytes"] == 2 * (2 * 512 * 512) * 4  # 2 layers, 512 tokens, width 512


def test_no_baseline_where_its_regression_would_not_fit_in_memory(capsys):
    """Zoology's 8,192 tokens would make the sequence baseline's regression 335 million weights (its
    features alone took 23 GB and the kernel's OOM killer in a study): it is skipped with one line."""
    from types import SimpleNamespace

    from torch.utils.data import TensorDataset

    from attn.runner.run import _baseline

    data = TensorDataset(torch.zeros(4, 8, dtype=torch.long), torch.full((4, 8), IGNORE))
    dm = SimpleNamespace(datasets={"train": data, "test": data}, vocab_size=8192)
    assert _baseline(dm) == {}
    assert "no order-blind baseline (test/bow_acc): with 8192 tokens" in capsys.readouterr().err
