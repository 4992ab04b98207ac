"""task=translation: the number data, the encoder-decoder's masks and decoders, BLEU end to end."""

from pathlib import Path

import pytest
import torch

from attn.datamodules.numbers import NumberTranslationDataModule, spell, tokenize
from attn.datamodules.vocab import detokenize
from attn.models.seq2seq import Seq2SeqTransformer
from attn.runner.config import load
from attn.runner.run import run

TINY_DATA = {"max_number": 400, "n_train": 250, "n_val": 30, "n_test": 60, "max_len": 24, "batch_size": 32}
KINDS = ["dot", "scaled_dot", "general", "additive", "local", "linear", "sigmoid"]


@pytest.mark.parametrize("lang", ["en", "fr", "de"])
def test_tokenize_round_trips_num2words(lang):
    for n in (0, 21, 71, 99, 180, 1999, 4321, 80, 81):
        text = spell(n, lang)
        assert detokenize(tokenize(text)) == text.lower()


def test_splits_are_disjoint_deterministic_and_shaped():
    a, b, c = (NumberTranslationDataModule(seed=s, **TINY_DATA) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.setup()
    sets = [set(a.numbers[k]) for k in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert [len(s) for s in sets] == [250, 30, 60]
    assert a.numbers == b.numbers and a.numbers["test"] != c.numbers["test"]
    x, y = a.datasets["train"].tensors
    assert x.shape == (250, 24) and y.shape == (250, 24)
    bos, eos = a.tgt_vocab.index["<s>"], a.tgt_vocab.index["</s>"]
    assert (y[:, 0] == bos).all() and ((y == eos).sum(1) == 1).all()
    from attn.runner.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"task.datamodule.target='xx' is not a num2words language; valid choices: "
    ):
        load(["task=translation", "task.datamodule.target=xx"])
    with pytest.raises(ValueError, match=r"do not fit below task\.datamodule\.max_number=400"):
        NumberTranslationDataModule(**{**TINY_DATA, "n_train": 390})


@pytest.mark.parametrize("kind", KINDS)
def test_decoder_never_sees_the_future(kind):
    torch.manual_seed(0)
    attention = {"kind": kind, **({"window": 3} if kind == "local" else {})}
    net = Seq2SeqTransformer(30, 20, d_model=16, n_layers=2, n_heads=2, max_len=12, attention=attention)
    net.eval()
    src = torch.randint(1, 30, (2, 7))
    src[1, 5:] = 0  # padding in the source
    tgt = torch.randint(1, 20, (2, 9))
    changed = tgt.clone()
    changed[:, 5:] = torch.randint(1, 20, (2, 4))
    a, b = net(src, tgt), net(src, changed)
    torch.testing.assert_close(a[:, :5], b[:, :5], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_beam_of_one_is_greedy():
    torch.manual_seed(1)
    net = Seq2SeqTransformer(30, 20, d_model=16, n_layers=1, n_heads=2, max_len=12).eval()
    src = torch.randint(1, 30, (3, 6))
    greedy = net.greedy(src, bos=2, eos=3, max_len=10)
    beam = net.beam_search(src, bos=2, eos=3, max_len=10, beam=1)
    width = greedy.shape[1]
    assert torch.equal(beam[:, :width], greedy) and not beam[:, width:].any()
    wide = net.beam_search(src, bos=2, eos=3, max_len=10, beam=4)
    assert wide.shape == (3, 9)


@pytest.mark.slow  # trains for a minute or more: an end-to-end result
def test_translation_learns_unseen_numbers(fast):
    overrides = [a for a in fast if not a.startswith(("task.", "model=", "trainer.max_epochs"))]
    data = [f"task.datamodule.{k}={v}" for k, v in {**TINY_DATA, "max_number": 3000, "n_train": 2400}.items()]
    record, exc = run(load([*overrides, "task=translation", *data, "trainer.max_epochs=4", "logger=csv"]))
    assert exc is None, exc
    m = record["metrics"]
    assert m["test/examples"] == 60
    assert m["test/bleu"] > 80 and m["test/chrf"] > 80, m  # numbers never seen in training
    assert 0 <= m["test/exact"] <= 1 and m["test/token_acc"] > 0.9
    # the hypotheses are kept: an independent tool recomputes the score from them
    import csv

    import sacrebleu

    path = Path(record["run_dir"]) / record["predictions"]["path"]
    with path.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert [int(r["index"]) for r in rows] == list(range(60))
    hyps, refs = [r["hypothesis"] for r in rows], [r["reference"] for r in rows]
    assert sacrebleu.corpus_bleu(hyps, [refs]).score == pytest.approx(m["test/bleu"], rel=1e-6)  # float32 log
    assert "nrefs:1" in record["predictions"]["sacrebleu"]["bleu"]


def test_beam_search_task_end_to_end(fast):
    overrides = [a for a in fast if not a.startswith(("task.", "trainer.max_epochs"))]
    data = [f"task.datamodule.{k}={v}" for k, v in TINY_DATA.items()]
    cfg = load([*overrides, "task=translation", *data, "task.module.beam=3", "debug=fast_dev_run"])
    record, exc = run(cfg)
    assert exc is None, exc
    assert {"test/bleu", "test/chrf", "test/exact", "test/token_acc"} <= set(record["metrics"])


@pytest.mark.parametrize("softmax", ["softmax1", "sparsemax", "entmax15", "learnable"])
def test_seq2seq_every_softmax_variant(softmax):
    torch.manual_seed(0)
    if softmax == "learnable":
        attention = {"kind": "scaled_dot", "temperature": "learnable"}
    else:
        attention = {"kind": "scaled_dot", "softmax": softmax, "temperature": 2.0}
    net = Seq2SeqTransformer(30, 20, d_model=16, n_layers=1, n_heads=2, max_len=12, attention=attention)
    src, tgt = torch.randint(1, 30, (2, 7)), torch.randint(1, 20, (2, 9))
    src[1, 4:] = 0
    logits = net(src, tgt)
    logits.sum().backward()
    assert logits.isfinite().all()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in net.parameters() if p.requires_grad)
