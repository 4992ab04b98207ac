"""A word-level vocabulary built from the training split and saved with the run."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from .files import write_json_atomic

PAD, UNK = "<pad>", "<unk>"
BOS, EOS = "<s>", "</s>"  # start and end of a target sentence (translation)
_WORD = re.compile(r"\w+|[^\w\s]")
_TAG = re.compile(r"<[^>]{0,20}>")  # markup such as IMDB's <br />


def tokenize(text: str, lowercase: bool = True) -> list[str]:
    """Words and punctuation marks of real text, markup tags removed."""
    text = _TAG.sub(" ", text)
    return _WORD.findall(text.lower() if lowercase else text)


def detokenize(tokens: list[str]) -> str:
    """Text from :func:`tokenize`'s tokens: no space before closing punctuation, after opening
    brackets, or around hyphens and apostrophes."""
    text = " ".join(tokens)
    text = re.sub(r" ([.,;:!?%)\]}])", r"\1", text)
    text = re.sub(r"([(\[{]) ", r"\1", text)
    return re.sub(r" ?([-']) ?", r"\1", text)


@dataclass
class Vocabulary:
    """Token <-> id mapping; id 0 is padding, id 1 stands for unseen tokens."""

    tokens: list[str] = field(default_factory=lambda: [PAD, UNK])

    def __post_init__(self) -> None:
        self.index = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def build(
        cls, sentences: Iterable[list[str]], min_count: int = 1, max_size: int | None = None
    ) -> Vocabulary:
        """Vocabulary of the tokens seen at least ``min_count`` times, most frequent first, at most
        ``max_size`` entries including ``<pad>`` and ``<unk>``."""
        counts = Counter(t for s in sentences for t in s)
        ordered = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
        if max_size is not None:
            ordered = ordered[: max(0, max_size - 2)]
        return cls([PAD, UNK, *ordered])

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: list[str]) -> list[int]:
        """Ids of ``tokens``; unseen tokens map to the ``<unk>`` id."""
        unk = self.index[UNK]
        return [self.index.get(t, unk) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of ``ids``, padding dropped."""
        return [self.tokens[i] for i in ids if i != 0]

    def save(self, path: str) -> None:
        """Write the vocabulary as JSON."""
        write_json_atomic(path, {"tokens": self.tokens}, indent=None)

    @classmethod
    def load(cls, path: str) -> Vocabulary:
        """Read a vocabulary written by :meth:`save`."""
        with open(path) as f:
            return cls(json.load(f)["tokens"])
