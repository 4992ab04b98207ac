"""Translation of numbers written out in words, generated offline with ``num2words``.

``4321`` gives the pair "four thousand , three hundred and twenty - one" ->
"quatre mille trois cent vingt et un" (English -> French by default; any ``num2words`` language
works on either side). Word order, agreement ("quatre-vingts" vs "quatre-vingt-un") and lengths
differ between the languages, so the model has to align, not copy. Each number is in exactly one
split (a permutation of ``0 .. max_number - 1`` seeded by ``seed``).
"""

from __future__ import annotations

import random
import re

import torch
from torch.utils.data import TensorDataset

from .base import PairDataModule, check_sizes
from .vocab import BOS, EOS, Vocabulary


def tokenize(text: str) -> list[str]:
    """Lower-case words, with hyphens and commas as tokens of their own."""
    return re.sub(r"([-,])", r" \1 ", text.lower()).split()


def spell(n: int, lang: str) -> str:
    """``n`` written out in ``lang``."""
    from num2words import num2words

    return num2words(n, lang=lang)


def encode_pairs(
    pairs: list[tuple[list[str], list[str]]], src: Vocabulary, tgt: Vocabulary, max_len: int
) -> TensorDataset:
    """Padded source ids ``[N, max_len]`` and target ids ``<s> ... </s>`` ``[N, max_len]``."""
    x = torch.zeros(len(pairs), max_len, dtype=torch.long)
    y = torch.zeros(len(pairs), max_len, dtype=torch.long)
    for i, (s, t) in enumerate(pairs):
        x[i, : len(s)] = torch.tensor(src.encode(s))
        y[i, : len(t) + 2] = torch.tensor(tgt.encode([BOS, *t, EOS]))
    return TensorDataset(x, y)


# Up to this many numbers, the splits come from a shuffle of all of them (as every measured default did);
# above it, from random.sample, which never builds the list.
SHUFFLE_LIMIT = 10_000_000


class NumberTranslationDataModule(PairDataModule):
    """Numbers in words, ``source`` -> ``target`` language, disjoint train/val/test numbers."""

    def __init__(
        self,
        source: str = "en",
        target: str = "fr",
        max_number: int = 10000,
        n_train: int = 7000,
        n_val: int = 500,
        n_test: int = 1000,
        max_len: int = 24,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.check_config(
            "task.datamodule",
            {"source": source, "target": target, "max_number": max_number, "n_train": n_train, "n_val": n_val,
             "n_test": n_test, "max_len": max_len},
        )  # fmt: skip
        self.source, self.target, self.max_number = source, target, max_number
        self.sizes = {"test": n_test, "val": n_val, "train": n_train}
        self.max_len, self.batch_size, self.seed, self.num_workers = max_len, batch_size, seed, num_workers
        self.splits: dict[str, list[tuple[list[str], list[str]]]] = {}
        self.numbers: dict[str, list[int]] = {}
        self.datasets: dict[str, TensorDataset] = {}
        self.src_vocab: Vocabulary | None = None
        self.tgt_vocab: Vocabulary | None = None

    @staticmethod
    def check_config(path: str, node: dict) -> None:
        """Both languages must be ones ``num2words`` writes, every size >= 1, and the three splits must
        fit below ``max_number``; ``ValueError`` names the bad value."""
        from num2words import CONVERTER_CLASSES

        defaults = {"max_number": 10000, "n_train": 7000, "n_val": 500, "n_test": 1000, "max_len": 24}
        sizes = {key: node.get(key, default) for key, default in defaults.items()}
        check_sizes(path, sizes)
        total = sizes["n_train"] + sizes["n_val"] + sizes["n_test"]
        if total > sizes["max_number"]:
            raise ValueError(
                f"{path}.n_train + n_val + n_test = {total} numbers do not fit below"
                f" {path}.max_number={sizes['max_number']}"
            )
        for key in ("source", "target"):
            lang = node.get(key)
            if lang not in CONVERTER_CLASSES:
                choices = ", ".join(sorted(CONVERTER_CLASSES))
                raise ValueError(
                    f"{path}.{key}={lang!r} is not a num2words language; valid choices: {choices}"
                )

    def prepare_splits(self) -> None:
        """Spell out the numbers of each split and build the vocabularies (idempotent)."""
        if self.splits:
            return
        rng, total = random.Random(self.seed), sum(self.sizes.values())
        if self.max_number <= SHUFFLE_LIMIT:  # the original draw: a shuffle of every number
            order = list(range(self.max_number))
            rng.shuffle(order)
        else:  # a list of every number below 10^9 would take gigabytes: draw only the ones used
            order = rng.sample(range(self.max_number), total)
        start = 0
        for name, size in self.sizes.items():
            self.numbers[name] = order[start : start + size]
            start += size
        words = {
            name: [(tokenize(spell(n, self.source)), tokenize(spell(n, self.target))) for n in numbers]
            for name, numbers in self.numbers.items()
        }
        joint = self.joint_vocabulary(words["train"])  # subwords: one model of both sides of train
        unit = "tokens" if joint is None else "subword pieces"
        for name, pairs in words.items():
            pairs = [(self.pieces(s), self.pieces(t)) for s, t in pairs]
            for i, (s, t) in enumerate(pairs):
                if max(len(s), len(t) + 2) > self.max_len:  # the target also carries <s> and </s>
                    raise ValueError(
                        f"{name} example {i} ({self.numbers[name][i]}) has {max(len(s), len(t) + 2)} {unit}"
                        f" with <s> and </s>, more than task.datamodule.max_len={self.max_len}"
                    )
            self.splits[name] = pairs
        if joint is not None:
            self.src_vocab = self.tgt_vocab = joint
        else:
            self.src_vocab = Vocabulary.build(s for s, _ in self.splits["train"])
            self.tgt_vocab = Vocabulary.build([[BOS, EOS], *(t for _, t in self.splits["train"])])
        self.datasets = {
            k: encode_pairs(v, self.src_vocab, self.tgt_vocab, self.max_len) for k, v in self.splits.items()
        }
