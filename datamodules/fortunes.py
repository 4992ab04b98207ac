"""Real text offline: the topic of a quotation from the BSD ``fortune`` database, as shipped by Debian's
``fortunes`` package (``apt-get install fortunes``; ``/usr/share/games/fortunes``).

Each category file holds quotations separated by lines of ``%``. A quotation that appears in more
than one of the chosen categories is dropped; the rest are split per category into train / validation /
test by a seeded shuffle, so every split has every class in proportion.
"""

from __future__ import annotations

import random
from pathlib import Path

from .base import TokenClassificationDataModule
from .contrast import encode
from .textfile import DataError
from .vocab import Vocabulary, tokenize

DEFAULT_DIR = "/usr/share/games/fortunes"
DEFAULT_CATEGORIES = ("computers", "politics", "science", "songs-poems", "work")


def read_fortunes(path: str | Path) -> list[str]:
    """The quotations of one fortune file (``%``-separated), whitespace-normalised."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    entries, current = [], []
    for line in text.splitlines():
        if line.strip() == "%":
            entries.append(" ".join(" ".join(current).split()))
            current = []
        else:
            current.append(line)
    entries.append(" ".join(" ".join(current).split()))
    return [e for e in entries if e]


class FortuneDataModule(TokenClassificationDataModule):
    """Which ``categories`` file a quotation comes from (``path`` = the fortune directory)."""

    def __init__(
        self,
        path: str = DEFAULT_DIR,
        categories: list[str] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        max_len: int = 64,
        min_count: int = 2,
        lowercase: bool = True,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.path, self.labels = path, list(categories or DEFAULT_CATEGORIES)
        self.fractions = (val_fraction, test_fraction)
        self.max_len, self.min_count, self.lowercase = max_len, min_count, lowercase
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.vocab: Vocabulary | None = None
        self.splits: dict[str, list[tuple[list[str], int]]] = {}
        self.datasets: dict = {}

    @staticmethod
    def check_config(path: str, node: dict) -> None:
        """The directory and every category file must exist; the message says how to install them."""
        root = Path(str(node.get("path") or DEFAULT_DIR))
        if not root.is_dir():
            raise ValueError(
                f"{path}.path={root}: no such directory; install the quotations with `sudo apt-get install"
                f" fortunes` (Debian/Ubuntu) or point {path}.path at a fortune directory"
            )
        found = sorted(p.name for p in root.iterdir() if p.is_file() and "." not in p.name)
        for category in node.get("categories") or DEFAULT_CATEGORIES:
            if category not in found:
                raise ValueError(
                    f"{path}.categories: {category!r} is not a fortune file in {root}; valid choices:"
                    f" {', '.join(found)}"
                )

    def prepare_splits(self) -> None:
        """Read, de-duplicate, split per class and encode (idempotent)."""
        if self.splits:
            return
        self.check_config("task.datamodule", {"path": self.path, "categories": self.labels})
        by_class = [read_fortunes(Path(self.path) / c) for c in self.labels]
        seen: dict[str, int] = {}
        for entries in by_class:
            for e in set(entries):
                seen[e] = seen.get(e, 0) + 1
        rng = random.Random(self.seed)
        splits: dict[str, list[tuple[list[str], int]]] = {"train": [], "val": [], "test": []}
        for label, entries in enumerate(by_class):
            unique = sorted({e for e in entries if seen[e] == 1})
            rng.shuffle(unique)
            n_val, n_test = (max(1, int(f * len(unique))) for f in self.fractions)
            if n_val + n_test >= len(unique):
                raise DataError(
                    f"{self.path}/{self.labels[label]}: {len(unique)} quotations, too few to split"
                )
            parts = {
                "test": unique[:n_test],
                "val": unique[n_test : n_test + n_val],
                "train": unique[n_test + n_val :],
            }
            for split, texts in parts.items():
                splits[split] += [
                    (tokenize(t, self.lowercase)[: self.max_len] or ["<unk>"], label) for t in texts
                ]
        for rows in splits.values():
            rng.shuffle(rows)
        self.splits = splits
        self.vocab = self.vocabulary([t for t, _ in splits["train"]], self.min_count)
        self.datasets = {
            k: encode(self.as_pieces(v, self.max_len), self.vocab, self.max_len) for k, v in splits.items()
        }
