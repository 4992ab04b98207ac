"""The embedded default task: generated contrastive reviews, where word order decides the label.

Each example is a short review of two clauses joined by a contrast word, for example::

    the plot was not dull but honestly the acting was awful      -> negative

Each clause says ``the <noun> was [not] <adjective>``; the two clauses always have opposite
polarity, and the label is the polarity of the clause *after* the contrast word (``not`` flips
an adjective). Half the reviews open with an expectation (``i expected the plot to be fresh
and ...``) whose adjective is random and irrelevant. Every review therefore holds one clause of
each polarity: a bag of words sees the same counts for both labels and stays at chance, while a
model that relates ``not`` to the next adjective and the adjectives to the position of the
contrast word solves it. Generated offline, deterministic per seed, with no sentence shared
between the splits.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from torch.utils.data import TensorDataset

from .base import TokenClassificationDataModule
from .vocab import Vocabulary

POSITIVE = (
    "good great excellent brilliant superb wonderful delightful charming moving clever "
    "gripping stunning fresh witty elegant"
).split()
NEGATIVE = (
    "bad awful terrible dull boring weak clumsy bland tedious messy lazy shallow forgettable stale painful"
).split()
NOUNS = (
    "plot acting script cast ending music pacing dialogue camera story direction soundtrack "
    "humour premise finale editing"
).split()
CONTRAST = ("but", "yet", "however", "still")
ADVERBS = ("really", "quite", "rather", "truly", "fairly", "very")
FILLERS = ("honestly", "overall", "frankly", "admittedly", "sadly", "luckily", "i think")
EXPECT = ("i expected the {} to be", "they said the {} would be", "i heard the {} was")
LABELS = ("negative", "positive")


def _clause(rng: random.Random, polarity: int) -> list[str]:
    negated = rng.random() < 0.5
    words = POSITIVE if polarity != negated else NEGATIVE  # 'not' flips the adjective's polarity
    clause = ["the", rng.choice(NOUNS), "was"]
    if rng.random() < 0.4:
        clause.append(rng.choice(ADVERBS))
    if negated:
        clause.append("not")
    clause.append(rng.choice(words))
    if rng.random() < 0.3:
        clause = rng.choice(FILLERS).split() + clause
    return clause


def generate(n: int, seed: int, distractors: int = 0) -> list[tuple[list[str], int]]:
    """``n`` examples ``(tokens, label)``, label 1 = positive; deterministic for ``seed``.

    ``distractors`` > 0 puts that many clauses of random polarity, each joined by ``and``, in front
    (the label stays the polarity of the clause right after the contrast word).
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.randrange(2)
        tokens = [*_clause(rng, 1 - label), rng.choice(CONTRAST), *_clause(rng, label)]
        if rng.random() < 0.5:  # a distractor: an expectation whose adjective says nothing
            lead = rng.choice(EXPECT).format(rng.choice(NOUNS)).split()
            tokens = [*lead, rng.choice(POSITIVE + NEGATIVE), "and", *tokens]
        for _ in range(distractors):  # earlier opinions, joined by "and", before the contrast
            tokens = [*_clause(rng, rng.randrange(2)), "and", *tokens]
        out.append((tokens, label))
    return out


def encode(examples: Sequence[tuple[list[str], int]], vocab: Vocabulary, max_len: int) -> TensorDataset:
    """Token ids padded to ``max_len`` (pad id 0) and labels, as a ``TensorDataset``."""
    ids = torch.zeros(len(examples), max_len, dtype=torch.long)
    labels = torch.empty(len(examples), dtype=torch.long)
    for i, (tokens, label) in enumerate(examples):
        if len(tokens) > max_len:
            raise ValueError(f"example {i} has {len(tokens)} tokens, more than max_len={max_len}")
        ids[i, : len(tokens)] = torch.tensor(vocab.encode(tokens))
        labels[i] = label
    return TensorDataset(ids, labels)


class ContrastDataModule(TokenClassificationDataModule):
    """Generated contrastive reviews (binary sentiment decided by clause order and negation)."""

    GENERATED = True  # its data follow from its config alone (a cached baseline of it stays right)

    def __init__(
        self,
        n_train: int = 4000,
        n_val: int = 1000,
        n_test: int = 2000,
        max_len: int = 32,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
        distractors: int = 0,
    ) -> None:
        super().__init__()
        if distractors < 0:
            raise ValueError(f"task.datamodule.distractors must be >= 0, got {distractors}")
        self.distractors = distractors
        for key, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
            if value < 1:
                raise ValueError(f"task.datamodule.{key} must be >= 1, got {value}")
        self.n_train, self.n_val, self.n_test = n_train, n_val, n_test
        self.max_len, self.batch_size, self.seed = max_len, batch_size, seed
        self.num_workers = num_workers
        self.labels = list(LABELS)
        self.vocab: Vocabulary | None = None
        self.splits: dict[str, list[tuple[list[str], int]]] = {}
        self.datasets: dict[str, TensorDataset] = {}

    @staticmethod
    def check_config(path: str, node: dict) -> None:
        """Split sizes >= 1, distractors >= 0; ``ValueError`` names the bad value."""
        for key, low in (("n_train", 1), ("n_val", 1), ("n_test", 1), ("distractors", 0)):
            value = node.get(key, low)
            if isinstance(value, int) and not isinstance(value, bool) and value < low:
                raise ValueError(f"{path}.{key}={value} is invalid: must be >= {low}")

    def prepare_splits(self) -> None:
        """Generate the three splits (idempotent); test and val drop any train sentence."""
        if self.splits:
            return
        train = generate(self.n_train, self.seed * 1000 + 1, self.distractors)
        seen = {" ".join(t) for t, _ in train}
        splits = {"train": train}
        for offset, (name, n) in enumerate((("val", self.n_val), ("test", self.n_test)), start=2):
            rows = [
                ex
                for ex in generate(n * 2, self.seed * 1000 + offset, self.distractors)
                if " ".join(ex[0]) not in seen
            ]
            splits[name] = rows[:n]
            seen.update(" ".join(t) for t, _ in splits[name])
        self.splits = splits
        self.vocab = self.vocabulary([t for t, _ in train])
        self.datasets = {
            k: encode(self.as_pieces(v, self.max_len), self.vocab, self.max_len) for k, v in splits.items()
        }
