"""The diagnostic tasks (mqar, max_retrieval, selective_copy), length evaluation, sample efficiency,
adaptive temperature and the shared encoder."""

import math
from pathlib import Path

import pytest
import torch

from attn.datamodules.diagnostic import (
    IGNORE,
    MaxRetrievalDataModule,
    MQARDataModule,
    SelectiveCopyDataModule,
)
from attn.runner.config import load
from attn.runner.errors import ConfigError
from attn.runner.run import run

SMALL = {"n_train": 300, "n_val": 50, "n_test": 60}
TASKS = {
    "mqar": MQARDataModule,
    "max_retrieval": MaxRetrievalDataModule,
    "selective_copy": SelectiveCopyDataModule,
}


def _rows(t: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(r.tolist()) for r in t}


@pytest.mark.parametrize("cls", TASKS.values(), ids=TASKS.keys())
def test_generation_is_deterministic_by_seed(cls):
    a, b, c = cls(seed=1, **SMALL), cls(seed=1, **SMALL), cls(seed=2, **SMALL)
    for dm in (a, b, c):
        dm.prepare_splits()
    for split in ("train", "val", "test"):
        assert torch.equal(a.datasets[split].tensors[0], b.datasets[split].tensors[0])
        assert torch.equal(a.datasets[split].tensors[1], b.datasets[split].tensors[1])
    assert not torch.equal(a.datasets["train"].tensors[0], c.datasets["train"].tensors[0])
    assert torch.equal(a.at_length(a.length * 2).tensors[0], b.at_length(b.length * 2).tensors[0])


@pytest.mark.parametrize(
    "dm",
    [
        MQARDataModule(pairs=2, keys=3, values=3, n_train=60, n_val=20, n_test=20),  # 108 sequences exist
        MaxRetrievalDataModule(items=2, priorities=4, classes=2, n_train=60, n_val=20, n_test=20),
        SelectiveCopyDataModule(span=4, copies=2, data_tokens=3, n_train=40, n_val=10, n_test=10),
    ],
    ids=TASKS.keys(),
)
def test_splits_are_disjoint_even_when_collisions_are_likely(dm):
    dm.prepare_splits()
    train = _rows(dm.datasets["train"].tensors[0])
    for split in ("val", "test"):
        assert not train & _rows(dm.datasets[split].tensors[0]), split
    assert len(dm.datasets["val"]) == 20 if not isinstance(dm, SelectiveCopyDataModule) else 10


def test_mqar_targets_are_the_bound_values():
    dm = MQARDataModule(pairs=5, **SMALL)
    ids, targets = dm.generate(50, 5, torch.Generator().manual_seed(0))
    assert ids.shape == (50, 15)
    for row, tgt in zip(ids.tolist(), targets.tolist(), strict=True):
        bound = dict(zip(row[0:10:2], row[1:10:2], strict=True))
        assert len(bound) == 5 and all(1 <= k <= 64 for k in bound)  # distinct keys from the key range
        assert sorted(row[10:]) == sorted(bound)  # every key queried once
        assert tgt[:10] == [IGNORE] * 10
        assert tgt[10:] == [bound[k] for k in row[10:]]


def test_max_retrieval_target_is_the_class_of_the_highest_priority():
    dm = MaxRetrievalDataModule(items=6, priorities=20, classes=3, **SMALL)
    ids, targets = dm.generate(80, 6, torch.Generator().manual_seed(0))
    for row, tgt in zip(ids.tolist(), targets.tolist(), strict=True):
        items, query = row[:-1], row[-1]
        assert query == dm.query
        prio = [(t - 1) // 3 for t in items]
        assert len(set(prio)) == 6
        best = items[prio.index(max(prio))]
        assert tgt[:-1] == [IGNORE] * 6 and tgt[-1] == dm.query + 1 + (best - 1) % 3


def test_selective_copy_targets_are_the_data_in_order():
    dm = SelectiveCopyDataModule(span=12, copies=4, data_tokens=6, **SMALL)
    ids, targets = dm.generate(40, 12, torch.Generator().manual_seed(0))
    for row, tgt in zip(ids.tolist(), targets.tolist(), strict=True):
        data = [t for t in row[:12] if t != 1]
        assert len(data) == 4 and len(set(data)) == 4 and row[12] == 2
        assert row[13:] == data[:-1]  # teacher forcing: the copy so far
        assert tgt[12:] == data and tgt[:12] == [IGNORE] * 12


@pytest.mark.parametrize(
    ("cls", "kw", "chance"),
    [
        (MQARDataModule, {"values": 8}, 1 / 8),
        (MaxRetrievalDataModule, {"classes": 4}, 1 / 4),
        (SelectiveCopyDataModule, {"data_tokens": 10}, 1 / 10),
    ],
    ids=TASKS.keys(),
)
def test_chance_level_is_stated_and_matches_the_answers(cls, kw, chance):
    dm = cls(n_train=4000, n_val=10, n_test=10, **kw)
    dm.prepare_splits()
    assert dm.chance == pytest.approx(chance)
    y = dm.datasets["train"].tensors[1]
    y = y[y != IGNORE]
    majority = torch.bincount(y).max().item() / len(y)
    assert majority == pytest.approx(chance, abs=0.25 * chance)  # answers are uniform: no better guess


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["task=mqar", "task.datamodule.max_len=96", "task.eval_lengths=[8,40]"],
            "task.eval_lengths=40 needs sequences of 120 tokens",
        ),
        (["task=mqar", "task.eval_lengths=[100]"], "pairs must be an integer in [1, 64]"),
        (["task=max_retrieval", "task.datamodule.items=0"], "task.datamodule.items=0 is invalid"),
        (["task=classification", "task.eval_lengths=[8]"], "task.eval_lengths"),
        (["+task.eval_lengths=[8]"], "task=classification has no variable length"),
        (["softmax.temperature=adaptive", "attention=linear"], "adaptive needs softmax=softmax"),
        (["softmax.temperature=adaptive", "softmax=sparsemax"], "adaptive needs softmax=softmax"),
    ],
)
def test_bad_settings_are_one_line_config_errors(overrides, message):
    with pytest.raises(ConfigError) as e:
        load(overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("task", [*TASKS, "mqar_zoology"])
def test_fast_dev_run_of_each_task(task, fast):
    record, exc = run(load([*fast, f"task={task}", "trainer.fast_dev_run=true", "task.eval_lengths=[]"]))
    assert exc is None and record["status"] == "completed", record["error"]
    assert 0.0 <= record["metrics"]["test/acc"] <= 1.0


@pytest.mark.parametrize("kind", ["scaled_dot", "linear"])
def test_length_evaluation_records_metric_and_entropy_at_each_length(kind, fast):
    overrides = [*fast, "task=max_retrieval", f"attention={kind}", "task.eval_lengths=[4,16,32]",
                 "task.datamodule.items=8", "trainer.max_epochs=1", "baseline=true"]  # fmt: skip
    cfg = load(overrides)
    record, exc = run(cfg)
    assert exc is None, record["error"]
    m = record["metrics"]
    assert (f"test/entropy@4/l{cfg.model.n_layers}" in m) is False
    for n in (4, 8, 16, 32):  # the eval lengths and the training length
        assert 0.0 <= m[f"test/acc@{n}"] <= 1.0
        for layer in range(cfg.model.n_layers):
            key = f"test/entropy@{n}/l{layer}"
            if kind == "linear":
                assert key not in m  # linear attention forms no weights
            else:
                assert 0.0 <= m[key] <= math.log(n + 1) + 1e-6  # at most uniform over the visible items
    if kind == "scaled_dot":  # more items to spread over: the first layer's rows get flatter
        assert m["test/entropy@32/l0"] > m["test/entropy@4/l0"]
    assert m["test/acc@8"] == pytest.approx(m["test/acc"])  # the training length is the test split
    assert m["test/chance_acc"] == pytest.approx(0.25)
    assert 0.0 <= m["test/bow_acc"] <= 1.0


@pytest.mark.slow  # trains for a minute or more: an end-to-end result
def test_mqar_separates_softmax_from_linear_attention(fast):
    """Zoology's gap, reproduced in miniature (the full-size numbers are in the README's Findings)."""
    common = [*fast, "task=mqar", "task.datamodule.pairs=4", "task.datamodule.keys=16",
              "task.datamodule.values=16", "task.datamodule.n_train=4096", "trainer.max_epochs=6",
              "task.eval_lengths=[]", "model=transformer"]  # fmt: skip
    soft, _ = run(load([*common, "attention=scaled_dot"]))
    lin, _ = run(load([*common, "attention=linear"]))
    assert soft["metrics"]["test/acc"] > 0.9
    assert lin["metrics"]["test/acc"] < soft["metrics"]["test/acc"] - 0.3


def test_report_plots_metric_and_entropy_against_length(tmp_path):
    from attn.runner import plots
    from attn.runner.aggregate import Group
    from attn.runner.figures import length_panels
    from attn.runner.stats import Stat

    def stat(mean):
        return Stat([mean - 0.01, mean, mean + 0.01])

    groups = []
    for kind, acc in (("scaled_dot", 0.9), ("sigmoid", 0.6)):
        stats = {}
        for n in (8, 16, 32):
            stats[f"test/acc@{n}"] = stat(acc * 8 / n)
            stats[f"test/entropy@{n}/l0"] = stat(math.log(n))
            stats[f"test/entropy@{n}/l1"] = stat(0.5)
        groups.append(Group("max_retrieval", (kind, "softmax", 1.0), [], stats, None, chance=0.25))
    panels = length_panels(groups, "test/acc")
    assert [label for label, _ in panels] == [
        "test/acc", "attention entropy (nats), layer 0", "attention entropy (nats), layer 1",
    ]  # fmt: skip
    half = 4.302653 * 0.01 / math.sqrt(3)  # the 95% t-interval of 3 seeds with std 0.01
    assert panels[0][1]["scaled_dot / softmax / 1.0"][1] == pytest.approx((16, 0.45, half, half), rel=1e-5)
    path = plots.metric_vs_length(panels, "test/acc", 0.25, tmp_path / "len.png", "lengths")
    assert path.stat().st_size > 10_000
    assert length_panels(groups[:1], "test/f1") == []  # no such metric: nothing to draw


def test_sample_efficiency_counts_the_way_from_chance_to_final():
    from attn.models.training import SampleEfficiency

    s = SampleEfficiency("val/acc", "max", floor=0.25)
    s.history = [(100, 0.25), (200, 0.5), (300, 0.9), (400, 0.95), (500, 1.0)]
    # 50 % of the way from 0.25 to 1.0 is 0.625 (step 300); 90 % is 0.925 (step 400)
    assert s.result() == {"val/steps_to_50pct": 300.0, "val/steps_to_90pct": 400.0}
    lower = SampleEfficiency("val/loss", "min", floor=2.0)
    lower.history = [(10, 1.8), (20, 1.0), (30, 0.2)]
    assert lower.result() == {"val/steps_to_50pct": 20.0, "val/steps_to_90pct": 30.0}
    flat = SampleEfficiency("val/acc", "max", floor=0.5)
    flat.history = [(10, 0.5), (20, 0.49)]
    assert flat.result() == {}  # nothing learned: nothing to time
    restored = SampleEfficiency("val/acc", floor=0.25)
    restored.load_state_dict(s.state_dict())
    assert restored.result() == s.result()


def test_adaptive_beta_follows_its_formula():
    from attn.models.softmax import ADAPTIVE_POLY, adaptive_beta

    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(50, 40, dtype=torch.float64) * torch.linspace(0, 6, 50)[:, None], -1)
    beta = adaptive_beta(probs)
    for p, b in zip(probs, beta[:, 0], strict=True):
        h = -sum(float(x) * math.log(float(x)) for x in p if x > 0)
        poly = sum(c * h ** (4 - i) for i, c in enumerate(ADAPTIVE_POLY))
        expected = max(poly, 1.0) if h > 0.5 else 1.0
        assert float(b) == pytest.approx(expected, rel=1e-12)
    assert (beta > 1).any() and (beta == 1).any()  # both branches are exercised
    assert adaptive_beta(torch.zeros(2, 5)).eq(1).all()  # a row with no weight is left alone


@pytest.mark.parametrize("kind", ["scaled_dot", "additive"])
def test_adaptive_temperature_in_attention(kind):
    from attn.models.attention import MultiHeadAttention
    from attn.models.softmax import adaptive_beta

    torch.manual_seed(0)
    params = {"hidden": 8} if kind == "additive" else {}
    mha = MultiHeadAttention(16, 2, kind, temperature="adaptive", **params).double()
    plain = MultiHeadAttention(16, 2, kind, **params).double()
    plain.load_state_dict(mha.state_dict())
    x = torch.randn(3, 30, 16, dtype=torch.float64) * 0.3
    mask = torch.ones(3, 30, dtype=torch.bool)
    mask[1, 10:] = False
    m = mask[:, None, None, :]
    mha.train(), plain.train()
    assert torch.allclose(mha(x, mask=m)[0], plain(x, mask=m)[0])  # training: T = 1
    mha.eval(), plain.eval()
    _, w1 = plain(x, mask=m, need_weights=True)
    beta = adaptive_beta(w1)
    assert (beta > 1).any()
    out, w = mha(x, mask=m, need_weights=True)
    # the reference: the same attention at temperature 1/beta, row by row, in float64
    q, k, v = mha.qkv_proj(x).split(16, dim=-1)
    q, k, v = (t.view(3, 30, 2, 8).transpose(1, 2) for t in (q, k, v))
    ref, ref_w = mha.attention(q, k, v, mask=m, temperature=1.0 / beta, need_weights=True)
    assert torch.allclose(w, ref_w, atol=1e-12)
    assert torch.allclose(out, mha.out_proj(ref.transpose(1, 2).reshape(3, 30, 16)), atol=1e-12)
    assert not torch.isnan(out).any()
    mask[2] = False  # a fully masked row, and padding: finite outputs and gradients
    x.requires_grad_(True)
    out = mha(x, mask=m)[0]
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    xs = x[:, :8].detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: mha(t, mask=m[..., :8])[0], (xs,), eps=1e-6, atol=1e-5)


def test_every_task_model_composes_the_one_encoder():
    from attn.models.seq2seq import Seq2SeqTransformer
    from attn.models.sequence import SequenceModel
    from attn.models.speech import SpeechClassifier
    from attn.models.transformer import Encoder, TextClassifier

    net = {"d_model": 32, "n_layers": 3, "n_heads": 4, "mlp_ratio": 2, "max_len": 40}
    models = [
        TextClassifier(50, 2, **net),
        SpeechClassifier(20, 5, **net),
        Seq2SeqTransformer(50, 60, **net),
        SequenceModel(50, **net),
    ]
    sizes = set()
    for model in models:
        assert isinstance(model.encoder, Encoder) and len(model.encoder.blocks) == 3
        sizes.add(sum(p.numel() for p in model.encoder.parameters()))
    assert len(sizes) == 1  # one stack, built from one config
    assert models[3].encoder.causal and not models[0].encoder.causal


def test_sequence_model_is_causal():
    from attn.models.sequence import SequenceModel

    torch.manual_seed(0)
    net = SequenceModel(30, d_model=16, n_layers=2, n_heads=2, max_len=20).eval()
    ids = torch.randint(1, 30, (2, 12))
    changed = ids.clone()
    changed[:, 8:] = torch.randint(1, 30, (2, 4))
    a, b = net(ids)[0], net(changed)[0]
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-6)  # the future does not leak into the past
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_presets_of_the_diagnostic_tasks_compose(tmp_path):
    for name in Path(__file__).parents[1].joinpath("conf/task").glob("*.yaml"):
        if name.stem in (*TASKS, "mqar_zoology"):
            cfg = load([f"task={name.stem}"])
            assert cfg.model.max_len >= cfg.task.datamodule.max_len


@pytest.mark.parametrize(
    ("preset", "trials", "skipped"),
    [
        ("mqar_kinds", 18, 0),
        ("max_retrieval_temperature", 21, 3),
        ("hard_tasks", 36, 0),
        ("length_generalisation", 48, 0),
    ],
)
def test_study_presets_plan_within_their_budget(preset, trials, skipped):
    from attn.runner.sweep import plan

    manifest, skips = plan([f"sweep={preset}"])
    assert len(manifest["trials"]) == trials and len(skips) == skipped
    assert manifest["launcher"] == "joblib" and manifest["n_jobs"] == 2
    seeds = {t["values"]["seed"] for t in manifest["trials"]}
    assert seeds == {"0", "1", "2"}
    assert all("adaptive" not in " ".join(t["overrides"]) or "entmax15" not in " ".join(t["overrides"])
               for t in manifest["trials"])  # fmt: skip


def _polarity(clause: list[str]) -> int:
    from attn.datamodules.contrast import POSITIVE

    adjective = next(w for w in reversed(clause) if w not in ("and",))
    return int((adjective in POSITIVE) != ("not" in clause))


def test_hard_classification_adds_distractors_and_keeps_the_rule():
    from attn.datamodules.contrast import CONTRAST, generate

    plain, hard = generate(300, 5), generate(300, 5, distractors=3)
    assert max(len(t) for t, _ in hard) > max(len(t) for t, _ in plain) + 15
    for tokens, label in hard:
        cut = next(i for i, w in enumerate(tokens) if w in CONTRAST)
        after = tokens[cut + 1 :]
        clause = after[: after.index("and")] if "and" in after else after
        assert _polarity(clause) == label, " ".join(tokens)
        assert tokens.count("and") >= 3
    cfg = load(["experiment=hard_classification"])
    assert cfg.task.name == "classification_hard" and cfg.task.datamodule.distractors == 2
    with pytest.raises(ConfigError, match="distractors"):
        load(["task.datamodule.distractors=-1"])


def test_hard_translation_draws_from_a_billion_numbers_without_listing_them():
    import random

    from attn.datamodules.numbers import NumberTranslationDataModule as Numbers

    big = Numbers(max_number=10**9, max_len=32, n_train=40, n_val=10, n_test=10, seed=3)
    big.prepare_splits()  # a list of 10^9 numbers would need ~8 GB and be killed
    drawn = [n for split in big.numbers.values() for n in split]
    assert len(set(drawn)) == 60 and max(drawn) > 10**6
    small = Numbers(max_number=1000, n_train=40, n_val=10, n_test=10, seed=3)
    small.prepare_splits()  # below the limit: the shuffle every earlier measurement used
    order = list(range(1000))
    random.Random(3).shuffle(order)
    assert small.numbers["test"] == order[:10] and small.numbers["train"] == order[20:60]


def test_hard_translation_and_speech_presets():
    from attn.datamodules.keywords import SPEECH_COMMANDS

    tr = load(["experiment=hard_translation"])
    assert tr.task.name == "translation_hard" and tr.task.datamodule.max_number == 10**9
    sp = load(["experiment=hard_speech"])
    assert sp.task.name == "speech_hard" and tuple(sp.task.datamodule.keywords) == SPEECH_COMMANDS
    assert len(SPEECH_COMMANDS) == 35 and list(sp.task.datamodule.snr_db) == [-5, 10]
    with pytest.raises(ConfigError, match=r"snr_db=\[10, 5\] is invalid"):
        load(["task=speech", "task.datamodule.snr_db=[10,5]"])


@pytest.mark.skipif(__import__("shutil").which("espeak-ng") is None, reason="espeak-ng not installed (apt)")
def test_lower_snr_adds_more_noise():
    import numpy as np

    from attn.datamodules.keywords import Utterance, synthesise

    u = Utterance("yes", "en-us", "m1", 7)
    quiet = synthesise(u, 16000, 16000, noise=False)
    ratios = []
    for snr in (20.0, 0.0):
        noisy = synthesise(u, 16000, 16000, noise=True, snr_db=(snr, snr))
        ratios.append(float(np.mean((noisy - quiet) ** 2)))
    assert ratios[1] > 50 * ratios[0]  # 20 dB apart: 100x the noise power


def test_empty_eval_lengths_keep_the_training_length_and_words_are_refused(fast):
    """task.eval_lengths=[] tests the training length only (it dropped it before); a value that is no
    list of whole numbers is one line, not the letters of a word read as lengths (issue 25)."""
    overrides = [*fast, "task=max_retrieval", "task.datamodule.items=8", "trainer.max_epochs=1"]
    record, exc = run(load([*overrides, "task.eval_lengths=[]"]))
    assert exc is None, record["error"]
    assert [k for k in record["metrics"] if k.startswith("test/acc@")] == ["test/acc@8"]
    for bad in ("eight", "[8,x]", "8"):
        with pytest.raises(ConfigError, match=r"task\.eval_lengths=.* is invalid: must be a list of whole"):
            load([*overrides, f"task.eval_lengths={bad}"])


def test_zoology_generator_is_zoologys_mqar():
    """task=mqar_zoology: distinct keys and values, each key queried once at an even slot of the query
    region drawn from a power law, its bound value the target, filler elsewhere (issue 25: the task
    claimed Zoology's MQAR but drew values with replacement and put the queries right after the pairs)."""
    dm = MQARDataModule(generator="zoology", pairs=8, n_train=2000, n_val=10, n_test=10, max_len=64)
    ids, targets = dm.generate(2000, 8, torch.Generator().manual_seed(0))
    assert ids.shape == (2000, 64) and dm.tokens(8) == 64
    keys, values = ids[:, 0:16:2], ids[:, 1:16:2]
    assert all(len(set(r.tolist())) == 8 for r in keys) and all(len(set(r.tolist())) == 8 for r in values)
    assert ((keys >= 1) & (keys <= 64)).all() and ((values > 64) & (values <= 128)).all()
    asked = targets != IGNORE
    assert (asked.sum(1) == 8).all() and not asked[:, :16].any()
    where = asked.nonzero()[:, 1] - 16
    assert (where % 2 == 0).all()  # queries at even offsets of the region, as Zoology places them
    for row in range(50):  # every key queried once, and the target is its value
        bound = dict(zip(keys[row].tolist(), values[row].tolist(), strict=True))
        queried = {ids[row, c].item(): targets[row, c].item() for c in asked[row].nonzero().flatten()}
        assert queried == bound
    slots = where.float() / 2
    assert slots.mean() < 0.8 * (24 - 1) / 2  # the power law puts queries near the pairs (uniform: 11.5)
    uniform = MQARDataModule(generator="zoology", power_a=1.0, n_train=10, n_val=10, n_test=10, max_len=64)
    flat = (uniform.generate(2000, 8, torch.Generator().manual_seed(0))[1] != IGNORE).nonzero()[:, 1]
    assert ((flat - 16) / 2).float().mean() == pytest.approx(11.5, abs=0.5)
    with pytest.raises(ValueError, match=r"generator='zoo' is unknown; valid choices: attn, zoology"):
        MQARDataModule(generator="zoo")
    for bad in (0, -1, 1.5, "abc"):
        with pytest.raises(ValueError, match=r"task\.datamodule\.power_a=.* is invalid: must be in \(0, 1\]"):
            MQARDataModule(generator="zoology", power_a=bad)


def test_order_blind_ceilings_of_the_two_mqar_generators():
    """The best guess without order is a most frequent value of the sequence: E[max count] / pairs,
    0.172 for attn's 8 pairs of 64 values drawn with replacement; 1/8 for Zoology's distinct values."""
    g = torch.Generator().manual_seed(1)
    for generator, ceiling in (("attn", 0.172), ("zoology", 0.125)):
        dm = MQARDataModule(generator=generator, n_train=10, n_val=10, n_test=10, max_len=64)
        ids, _ = dm.generate(20000, 8, g)
        values = ids[:, 1:16:2]
        most = torch.stack([torch.bincount(r, minlength=129).max() for r in values]).float()
        assert (most.mean() / 8).item() == pytest.approx(ceiling, abs=0.003), generator


def test_sequence_baseline_reaches_the_order_blind_optimum_of_selective_copying():
    """Raw counts gave 0.031, below chance 1/16; with seen-once indicators the baseline reaches
    H_8 / 8 = 0.340, the accuracy of copying a data token not yet copied (issue 25)."""
    from attn.models.baseline import sequence_bow_accuracy

    dm = SelectiveCopyDataModule(n_train=4000, n_val=10, n_test=1000)
    dm.setup("fit")
    acc = sequence_bow_accuracy(dm.datasets["train"].tensors, dm.datasets["test"].tensors, dm.vocab_size)
    optimum = sum(1 / k for k in range(1, 9)) / 8
    assert optimum == pytest.approx(0.3397, abs=1e-4) and acc == pytest.approx(optimum, abs=0.03)
