"""Text classification from a Hugging Face data set: ``imdb``, ``ag_news``, ``sst2`` (presets in
``conf/task/``) or any data set with a text column and a label column.

The word vocabulary is built on the training split only and saved with the run (``vocab.json``);
texts longer than ``max_len`` tokens are cut to their first ``max_len`` tokens.
"""

from __future__ import annotations

import random

from .base import TokenClassificationDataModule
from .contrast import encode
from .hub import HubDataError, label_names, load_split
from .vocab import Vocabulary, tokenize

Example = tuple[list[str], int]


class HubTextDataModule(TokenClassificationDataModule):
    """Classification data read with ``datasets.load_dataset(hub_id, hub_config)``."""

    def __init__(
        self,
        hub_id: str,
        hub_config: str | None = None,
        hub_revision: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        train_split: str = "train",
        val_split: str | None = None,
        test_split: str = "test",
        val_fraction: float = 0.1,
        max_train: int | None = None,
        max_len: int = 256,
        min_count: int = 2,
        max_vocab: int = 30000,
        lowercase: bool = True,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.hub = {"id": hub_id, "config": hub_config, "revision": hub_revision}
        self.columns = (text_column, label_column)
        self.split_names = {"train": train_split, "val": val_split, "test": test_split}
        self.val_fraction, self.max_train = val_fraction, max_train
        self.max_len, self.min_count, self.max_vocab, self.lowercase = (
            max_len,
            min_count,
            max_vocab,
            lowercase,
        )
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.labels: list[str] = []
        self.vocab: Vocabulary | None = None
        self.splits: dict[str, list[Example]] = {}
        self.datasets: dict = {}

    def _read(self, split: str) -> list[Example]:
        text_col, label_col = self.columns
        ds = load_split(self.hub["id"], self.hub["config"], split, self.hub["revision"])
        names = label_names(ds, label_col)
        if text_col not in ds.column_names:
            raise HubDataError(
                f"{self.hub['id']}: no text column {text_col!r} (task.datamodule.text_column); columns: "
                f"{', '.join(ds.column_names)}"
            )
        if not self.labels:
            self.labels = names or sorted({str(v) for v in ds[label_col]})
        index = {name: i for i, name in enumerate(self.labels)}
        rows = []
        for i, (text, label) in enumerate(zip(ds[text_col], ds[label_col], strict=True)):
            if names is not None:
                if not 0 <= label < len(names):  # e.g. SST-2's test split: label -1, no gold labels
                    raise HubDataError(
                        f"{self.hub['id']} split {split!r} row {i}: label {label} is not a class (an"
                        f" unlabelled split?); choose another with task.datamodule.test_split / val_split"
                    )
                label = names[label]
            if str(label) not in index:
                raise HubDataError(
                    f"{self.hub['id']} split {split!r} row {i}: label {label!r} not seen in training"
                )
            tokens = tokenize(str(text), self.lowercase)[: self.max_len] or ["<unk>"]
            rows.append((tokens, index[str(label)]))
        if not rows:
            raise HubDataError(f"{self.hub['id']}: split {split!r} is empty")
        return rows

    def prepare_splits(self) -> None:
        """Read the splits, build the vocabulary on train, encode (idempotent)."""
        if self.splits:
            return
        train = self._read(self.split_names["train"])
        rng = random.Random(self.seed)
        if self.split_names["val"]:
            val = self._read(self.split_names["val"])
        else:
            rng.shuffle(train)
            n_val = max(1, int(self.val_fraction * len(train)))
            val, train = train[:n_val], train[n_val:]
        if self.max_train is not None and len(train) > self.max_train:
            train = rng.sample(train, self.max_train)
        self.splits = {"train": train, "val": val, "test": self._read(self.split_names["test"])}
        self.vocab = self.vocabulary([t for t, _ in train], self.min_count, self.max_vocab)
        self.datasets = {
            k: encode(self.as_pieces(v, self.max_len), self.vocab, self.max_len)
            for k, v in self.splits.items()
        }
