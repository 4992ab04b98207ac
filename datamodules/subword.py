"""Subword tokenizers (BPE, unigram) trained with Hugging Face ``tokenizers`` on a training split's words.

The text datamodules split text into words first (:func:`attn.datamodules.vocab.tokenize`); with
``task.tokenizer=bpe`` or ``unigram`` a subword model learned from the training split's words then splits
each word into pieces, the first piece of a word marked with ``▁`` (SentencePiece's convention), so an
unseen word made of seen characters becomes known pieces instead of ``<unk>``. The pieces form the
vocabulary (:class:`Vocabulary`, ids 0-3: ``<pad> <unk> <s> </s>``); :func:`join_pieces` turns pieces back
into words, which :func:`~attn.datamodules.vocab.detokenize` turns into text.

* ``bpe``: byte-pair encoding (Sennrich et al., 2016): merges the most frequent adjacent pair until the
  vocabulary has ``vocab_size`` entries (fewer if the training words run out of pairs).
* ``unigram``: the unigram language model (Kudo, 2018): prunes a large seed vocabulary down to
  ``vocab_size`` by likelihood; splits a word into its most probable pieces.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from .files import write_text_atomic
from .vocab import BOS, EOS, PAD, UNK, Vocabulary

TOKENIZERS = ("word", "bpe", "unigram")
SPECIALS = (PAD, UNK, BOS, EOS)  # ids 0..3 in this order: <pad> stays 0 and <unk> 1, as for words
MARK = "\u2581"  # "▁": the first piece of a word
TOKENIZER_FILE = "tokenizer.json"


class Subwords:
    """A trained subword model: words -> pieces, and its piece vocabulary."""

    def __init__(self, tokenizer: object) -> None:
        self.tokenizer = tokenizer

    @classmethod
    def train(cls, kind: str, sentences: Iterable[list[str]], vocab_size: int) -> Subwords:
        """Train a ``kind`` (``bpe`` or ``unigram``) model of at most ``vocab_size`` pieces on ``sentences``
        (lists of words); deterministic for the same sentences."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if kind == "bpe":
            tokenizer = Tokenizer(models.BPE(unk_token=UNK))
            trainer = trainers.BpeTrainer(
                vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False
            )
        elif kind == "unigram":
            tokenizer = Tokenizer(models.Unigram())
            trainer = trainers.UnigramTrainer(
                vocab_size=vocab_size, special_tokens=list(SPECIALS), unk_token=UNK, show_progress=False
            )
        else:
            raise ValueError(f"tokenizer={kind!r} is unknown; valid choices: {', '.join(TOKENIZERS)}")
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=MARK, prepend_scheme="always")
        tokenizer.decoder = decoders.Metaspace(replacement=MARK, prepend_scheme="always")
        tokenizer.train_from_iterator((" ".join(s) for s in sentences), trainer=trainer)
        if kind == "unigram":  # pieces of equal score come out in hash order: sort them, so ids agree
            data = json.loads(tokenizer.to_str())
            pieces = data["model"]["vocab"]
            n = len(SPECIALS)
            data["model"]["vocab"] = pieces[:n] + sorted(pieces[n:], key=lambda p: (-p[1], p[0]))
            tokenizer = Tokenizer.from_str(json.dumps(data))
        return cls(tokenizer)

    @classmethod
    def load(cls, path: str | Path) -> Subwords:
        """A model saved by :meth:`save`."""
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: str | Path) -> None:
        """Write the model as ``tokenizers`` JSON (``tokenizer.json``)."""
        write_text_atomic(path, self.tokenizer.to_str())

    def split(self, words: list[str]) -> list[str]:
        """The pieces of ``words`` (``<s>``/``</s>`` kept whole); what the model cannot form is ``<unk>``."""
        pieces: list[str] = []
        run: list[str] = []
        for w in [*words, None]:
            if w is None or w in (BOS, EOS):
                if run:
                    ids = self.tokenizer.encode(run, is_pretokenized=True, add_special_tokens=False).ids
                    pieces += [self.tokenizer.id_to_token(i) for i in ids]
                    run = []
                if w is not None:
                    pieces.append(w)
            else:
                run.append(w)
        return pieces

    def vocabulary(self) -> Vocabulary:
        """The pieces in id order (``<pad> <unk> <s> </s>`` first)."""
        vocab = self.tokenizer.get_vocab()
        tokens = sorted(vocab, key=vocab.__getitem__)
        if tuple(tokens[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"subword model: special tokens {tokens[:4]}, expected {list(SPECIALS)}")
        return Vocabulary(tokens)


def join_pieces(pieces: Iterable[str]) -> list[str]:
    """The words of subword pieces: a piece starting with ``▁`` starts a word, the others continue it."""
    words: list[str] = []
    for p in pieces:
        if p.startswith(MARK) or not words:
            words.append(p.removeprefix(MARK))
        else:
            words[-1] += p
    return [w for w in words if w]


def fit(kind: str, sentences: list[list[str]], vocab_size: int, run_dir: str | None = None) -> Subwords:
    """The subword model of a run: the one saved in ``run_dir`` (by a resumed run's first attempt, or by
    another DDP rank of this run), else one trained on ``sentences`` (the training split only) and saved
    there. One process trains while the others wait on a lock, so every rank uses the same pieces (the
    library breaks ties between equal counts in no fixed order)."""
    if not run_dir:
        return Subwords.train(kind, sentences, vocab_size)
    import fcntl

    saved = Path(run_dir) / TOKENIZER_FILE
    saved.parent.mkdir(parents=True, exist_ok=True)
    with open(saved.parent / ".tokenizer.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if saved.is_file():
            return Subwords.load(saved)
        model = Subwords.train(kind, sentences, vocab_size)
        model.save(saved)
        return model


def unknown_rate(ids: Iterable[Iterable[int]]) -> float:
    """The share of ``<unk>`` (id 1) among the non-padding ids."""
    total = unk = 0
    for row in ids:
        for i in row:
            if i != 0:
                total += 1
                unk += i == 1
    return unk / max(1, total)
