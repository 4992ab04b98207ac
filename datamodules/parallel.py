"""Translation from real parallel text: local TSV files (``source<TAB>target`` per line) or a Hugging
Face data set with a ``translation`` column of ``{language: sentence}`` (``iwslt2017``, ``wmt14``).

Words and punctuation are the tokens (``vocab.tokenize``); one vocabulary per side is built on the
training split and saved with the run. Training and validation pairs longer than ``max_len`` are
dropped (counted in ``self.dropped``); test sources are cut to ``max_len`` tokens and BLEU/chrF are
scored against the untouched reference sentences (lower-cased when ``lowercase``).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from .base import PairDataModule
from .hub import HubDataError, load_split
from .numbers import encode_pairs
from .textfile import DataError
from .vocab import BOS, EOS, Vocabulary, tokenize

SOURCES = ("tsv", "hub")
Pair = tuple[str, str]


def read_tsv(path: str | Path) -> list[Pair]:
    """``(source, target)`` per non-empty line of a ``source<TAB>target`` file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    pairs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        src, sep, tgt = line.partition("\t")
        if not sep or not src.strip() or not tgt.strip():
            raise DataError(f"{path}:{number}: expected 'source<TAB>target' with both sides non-empty")
        pairs.append((src.strip(), tgt.strip()))
    if not pairs:
        raise DataError(f"{path}: no sentence pairs (empty split)")
    return pairs


class ParallelTextDataModule(PairDataModule):
    """Sentence pairs from TSV files (``source=tsv``) or a hub data set (``source=hub``)."""

    PATH_KEYS = ("train", "val", "test")

    def __init__(
        self,
        source: str = "tsv",
        train: str | None = None,
        val: str | None = None,
        test: str | None = None,
        hub_id: str | None = None,
        hub_config: str | None = None,
        hub_revision: str | None = None,
        src_lang: str = "de",
        tgt_lang: str = "en",
        train_split: str = "train",
        val_split: str | None = "validation",
        test_split: str = "test",
        val_fraction: float = 0.05,
        max_train: int | None = None,
        max_len: int = 64,
        lowercase: bool = True,
        min_count: int = 2,
        max_vocab: int = 16000,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.check_config(
            "task.datamodule", {"source": source, "train": train, "test": test, "hub_id": hub_id}
        )
        self.source, self.paths = source, {"train": train, "val": val, "test": test}
        self.hub = {"id": hub_id, "config": hub_config, "revision": hub_revision}
        self.langs = (src_lang, tgt_lang)
        self.split_names = {"train": train_split, "val": val_split, "test": test_split}
        self.val_fraction, self.max_train, self.max_len, self.lowercase = (
            val_fraction,
            max_train,
            max_len,
            lowercase,
        )
        self.min_count, self.max_vocab = min_count, max_vocab
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.splits: dict[str, list[tuple[list[str], list[str]]]] = {}
        self.references: list[str] = []
        self.dropped: dict[str, int] = {}
        self.datasets: dict[str, TensorDataset] = {}
        self.src_vocab: Vocabulary | None = None
        self.tgt_vocab: Vocabulary | None = None

    @staticmethod
    def check_config(path: str, node: dict) -> None:
        """A known source with what it needs; ``ValueError`` names the missing setting."""
        source = node.get("source")
        if source not in SOURCES:
            raise ValueError(f"{path}.source={source!r} is unknown; valid choices: {', '.join(SOURCES)}")
        needed = ("train", "test") if source == "tsv" else ("hub_id",)
        for key in needed:
            if not node.get(key):
                raise ValueError(f"{path}.{key} is required for source={source}")

    def _read(self, split: str) -> list[Pair]:
        if self.source == "tsv":
            return read_tsv(str(self.paths[split]))
        name = self.split_names[split]
        ds = load_split(str(self.hub["id"]), self.hub["config"], str(name), self.hub["revision"])
        if "translation" not in ds.column_names:
            raise HubDataError(
                f"{self.hub['id']}: no 'translation' column; columns: {', '.join(ds.column_names)}"
            )
        rows = ds["translation"]
        src, tgt = self.langs
        if rows and (src not in rows[0] or tgt not in rows[0]):
            raise HubDataError(
                f"{self.hub['id']}: languages {src!r} -> {tgt!r} (task.datamodule.src_lang/tgt_lang) not"
                f" in the data; valid choices: {', '.join(rows[0])}"
            )
        pairs = [(r[src], r[tgt]) for r in rows if r[src].strip() and r[tgt].strip()]
        if not pairs:
            raise HubDataError(f"{self.hub['id']}: split {name!r} has no sentence pairs")
        return pairs

    def prepare_splits(self) -> None:
        """Read, tokenize, build the vocabularies on train and encode (idempotent)."""
        if self.splits:
            return
        rng = random.Random(self.seed)
        raw = {"train": self._read("train")}
        has_val = self.paths["val"] if self.source == "tsv" else self.split_names["val"]
        if has_val:
            raw["val"] = self._read("val")
        else:
            rng.shuffle(raw["train"])
            n_val = max(1, int(self.val_fraction * len(raw["train"])))
            raw["val"], raw["train"] = raw["train"][:n_val], raw["train"][n_val:]
        if self.max_train is not None and len(raw["train"]) > self.max_train:
            raw["train"] = rng.sample(raw["train"], self.max_train)
        raw["test"] = self._read("test")
        fits = self.max_len - 2  # the target also carries <s> and </s>
        words = {
            split: [(tokenize(s, self.lowercase), tokenize(t, self.lowercase)) for s, t in raw[split]]
            for split in ("train", "val", "test")
        }
        joint = self.joint_vocabulary(words["train"])  # subwords: one model of both sides, on train only
        for split in ("train", "val"):
            pairs = [(self.pieces(s), self.pieces(t)) for s, t in words[split]]
            kept = [(s, t) for s, t in pairs if 0 < len(s) <= self.max_len and 0 < len(t) <= fits]
            if not kept:
                raise DataError(f"no {split} pair fits task.datamodule.max_len={self.max_len}; raise it")
            self.dropped[split] = len(pairs) - len(kept)
            self.splits[split] = kept
        self.splits["test"] = [
            (self.pieces(s)[: self.max_len], self.pieces(t)[:fits]) for s, t in words["test"]
        ]
        self.references = [t.lower() if self.lowercase else t for _, t in raw["test"]]
        if joint is not None:
            self.src_vocab = self.tgt_vocab = joint
        else:
            self.src_vocab = Vocabulary.build(
                (s for s, _ in self.splits["train"]), self.min_count, self.max_vocab
            )
            self.tgt_vocab = Vocabulary.build(
                [*[[BOS, EOS]] * self.min_count, *(t for _, t in self.splits["train"])],
                self.min_count,
                self.max_vocab,
            )
        self.datasets = {
            k: encode_pairs(v, self.src_vocab, self.tgt_vocab, self.max_len) for k, v in self.splits.items()
        }
        x, y = self.datasets["test"].tensors
        self.datasets["test"] = TensorDataset(x, y, torch.arange(len(x)))  # row -> reference sentence

    def test_references(self) -> list[str]:
        """The test split's reference sentences, by row."""
        self.prepare_splits()
        return list(self.references)
