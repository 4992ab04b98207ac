"""Subword tokenizers (task.tokenizer=bpe|unigram): trained on the training split only, round trip, reuse."""

from __future__ import annotations

import pytest

from attn.datamodules import subword
from attn.datamodules.parallel import ParallelTextDataModule
from attn.datamodules.subword import MARK, Subwords, join_pieces
from attn.runner.config import load
from attn.runner.errors import ConfigError

WORDS = "the cat sat on the mat while a dog ran after the red ball in the garden".split()
TRAIN = [WORDS[i : i + 6] for i in range(len(WORDS) - 6)] * 20


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_pieces_round_trip_and_unseen_words_of_seen_characters_are_known(kind):
    model = Subwords.train(kind, TRAIN, 40)
    vocab = model.vocabulary()
    assert vocab.tokens[:4] == ["<pad>", "<unk>", "<s>", "</s>"] and len(vocab) <= 40
    for words in (["the", "cat", "sat"], ["garden", "dogma", "trained", "matter"]):  # the second: unseen
        pieces = model.split(words)
        assert join_pieces(pieces) == words
        assert "<unk>" not in pieces and 1 not in vocab.encode(pieces)
        assert sum(p.startswith(MARK) for p in pieces) == len(words)  # one word start per word
    assert (
        model.split(["<s>", "cat", "</s>"])[0] == "<s>" and model.split(["<s>", "cat", "</s>"])[-1] == "</s>"
    )
    assert "<unk>" in model.split(["zyx"])  # characters never seen in training have no piece


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_training_is_deterministic_and_the_saved_model_is_the_same(kind, tmp_path):
    a, b = Subwords.train(kind, TRAIN, 40), Subwords.train(kind, TRAIN, 40)
    assert a.tokenizer.to_str() == b.tokenizer.to_str()  # every DDP rank trains the same model
    a.save(tmp_path / "tokenizer.json")
    c = Subwords.load(tmp_path / "tokenizer.json")
    assert c.vocabulary().tokens == a.vocabulary().tokens and c.split(WORDS) == a.split(WORDS)


def write_corpus(root):
    train = [f"the {w} sat on the mat\tle {w} assis sur le tapis" for w in ("cat", "dog", "rat", "bat")] * 30
    test = ["the bandit sat on the mat\tle zèbre assis sur le tapis", "the gnat sat\tle moucheron assis"]
    (root / "train.tsv").write_text("\n".join(train) + "\n")
    (root / "test.tsv").write_text("\n".join(test) + "\n")
    return str(root / "train.tsv"), str(root / "test.tsv")


def test_the_subword_model_sees_the_training_split_only(tmp_path, monkeypatch):
    train, test = write_corpus(tmp_path)
    seen: list[list[str]] = []
    real = Subwords.train

    def spy(kind, sentences, vocab_size):
        sentences = list(sentences)
        seen.extend(sentences)
        return real(kind, sentences, vocab_size)

    monkeypatch.setattr(Subwords, "train", staticmethod(spy))
    dm = ParallelTextDataModule(train=train, test=test, val_fraction=0.1, min_count=1, max_len=16)
    dm.set_tokenizer("bpe", 60)
    dm.prepare_splits()
    words = {w for s in seen for w in s}
    assert "bandit" not in words and "gnat" not in words and "zèbre" not in words
    assert len(seen) == 2 * len(dm.splits["train"])  # both sides of the training pairs; val held out
    # unseen test words of seen characters are pieces, not <unk>; "è" never occurs in training
    src, tgt = dm.datasets["test"].tensors[:2]
    assert 1 not in src.tolist()[0] and 1 not in src.tolist()[1]
    assert 1 in tgt.tolist()[0]
    assert dm.module_kwargs()["subword"] is True and dm.src_vocab is dm.tgt_vocab


def test_a_resumed_run_reuses_its_saved_tokenizer(tmp_path, monkeypatch):
    train, test = write_corpus(tmp_path)
    dm = ParallelTextDataModule(train=train, test=test, min_count=1, max_len=40)
    dm.set_tokenizer("unigram", 50, run_dir=str(tmp_path))
    dm.prepare_splits()
    assert (tmp_path / "tokenizer.json").is_file()  # saved as soon as trained: other ranks read it

    def refuse(*args, **kwargs):
        raise AssertionError("a resumed run must not train its tokenizer again")

    monkeypatch.setattr(Subwords, "train", staticmethod(refuse))
    again = ParallelTextDataModule(train=train, test=test, min_count=1, max_len=40)
    again.set_tokenizer("unigram", 50, run_dir=str(tmp_path))
    again.prepare_splits()
    assert again.src_vocab.tokens == dm.src_vocab.tokens


def test_word_level_stays_the_default_and_unchanged(tmp_path):
    train, test = write_corpus(tmp_path)
    dm = ParallelTextDataModule(train=train, test=test, min_count=1, max_len=16)
    dm.prepare_splits()
    assert dm.subwords is None and "subword" not in dm.module_kwargs()
    assert dm.splits["train"][0][0][0] == "the"


def test_translation_decodes_pieces_to_text():
    from attn.models.translation import TranslationModule

    pieces = ["<pad>", "<unk>", "<s>", "</s>", f"{MARK}hel", "lo", f"{MARK},", f"{MARK}world", f"{MARK}!"]
    module = TranslationModule(
        10, pieces, 8, net={"d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 8},
        attention={"kind": "scaled_dot"}, subword=True,
    )  # fmt: skip
    import torch

    assert module._text(torch.tensor([4, 5, 6, 7, 8, 3, 0])) == "hello, world!"


def test_tokenizer_settings_are_checked():
    with pytest.raises(
        ConfigError, match=r"task\.tokenizer='sentencepiece' is unknown; valid choices: word, bpe"
    ):
        load(["task.tokenizer=sentencepiece"])
    with pytest.raises(ConfigError, match=r"task\.vocab_size=2 is invalid"):
        load(["task.tokenizer=bpe", "task.vocab_size=2"])
    with pytest.raises(ConfigError, match=r"unknown config key 'task\.tokenizer'"):
        load(["task=mqar", "task.tokenizer=bpe"])
    assert load(["task=translation"]).task.tokenizer == "word"


@pytest.mark.parametrize("task", ["classification", "translation"])
def test_a_subword_run_trains_and_saves_its_tokenizer(task, fast, tmp_path):
    from attn.runner.run import run

    sizes = ["task.datamodule.n_train=256", "task.datamodule.n_val=32", "task.datamodule.n_test=32"]
    extra = ["task.datamodule.max_len=40", "model.max_len=40"] if task == "translation" else []
    cfg = load([*fast, *sizes, *extra, f"task={task}", "task.tokenizer=bpe", "task.vocab_size=120",
                "trainer.max_epochs=1"])  # fmt: skip
    record, exc = run(cfg)
    assert exc is None and record.status == "completed", record.error
    run_dir = record.run_dir
    model = Subwords.load(f"{run_dir}/{subword.TOKENIZER_FILE}")
    assert len(model.vocabulary()) <= 120


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_text_round_trips_through_pieces(kind):
    from attn.datamodules.vocab import detokenize, tokenize

    text = "the cat's mat (red) sat, after a dog-ran garden!"
    model = Subwords.train(kind, TRAIN + [tokenize(text)] * 5, 60)
    words = tokenize(text)
    assert detokenize(join_pieces(model.split(words))) == detokenize(words) == text


def test_the_report_draws_a_subword_runs_attention_over_its_pieces(fast, tmp_path):
    from attn.runner.collect import collect
    from attn.runner.report import build
    from attn.runner.run import run

    sizes = ["task.datamodule.n_train=256", "task.datamodule.n_val=32", "task.datamodule.n_test=32"]
    record, exc = run(load([*fast, *sizes, "task.tokenizer=bpe", "task.vocab_size=60", "trainer.max_epochs=1",
                            f"runs_root={tmp_path / 'runs'}"]))  # fmt: skip
    assert exc is None, record.error
    seen = {}
    import attn.runner.plots as plots

    real = plots.attention_heatmap

    def spy(layers, pooling, tokens, title, path):
        seen["tokens"] = tokens
        return real(layers, pooling, tokens, title, path)

    plots.attention_heatmap = spy
    try:
        build(collect(str(tmp_path / "runs")), tmp_path / "report", plots=True)
    finally:
        plots.attention_heatmap = real
    assert any(t.startswith(subword.MARK) for t in seen["tokens"])  # pieces, as the model read them
