"""Text classification from your own files: TSV (``label<TAB>text``), CSV with a header naming
``text`` and ``label`` columns, or JSON Lines (``{"text": ..., "label": ...}``), one example per
line (CSV: per record), whitespace tokens.

Every problem with the data is found before training starts and reported in one line that names
the file and the line: a missing or unreadable file, an empty split, a label outside the classes,
a sentence longer than ``max_len`` (unless ``truncate``).
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Iterator
from pathlib import Path

from .base import TokenClassificationDataModule
from .contrast import encode
from .vocab import Vocabulary

Example = tuple[list[str], int]


class DataError(ValueError):
    """Unusable data; the message names the file and the line."""


def read_examples(path: str | Path, lowercase: bool = True) -> list[tuple[list[str], str, int]]:
    """``(tokens, raw label, line number)`` per non-empty line of a ``.tsv``, ``.csv`` or ``.jsonl`` file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix not in (".tsv", ".csv", ".jsonl"):
        raise DataError(f"{path}: unknown format {path.suffix!r}; valid choices: .tsv, .csv, .jsonl")
    if path.suffix == ".csv":
        try:
            content = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of a label
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: unreadable ({e})") from None
        return _read_csv(path, content, lowercase)  # (the csv module refuses fields over 128 KiB)
    rows = []
    for number, line in _lines(path):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        if path.suffix == ".tsv":
            label, sep, text = line.partition("\t")
            if not sep:
                raise DataError(f"{path}:{number}: expected 'label<TAB>text'")
        else:
            try:
                obj = json.loads(line)
                text, label = obj["text"], obj["label"]
            except (ValueError, KeyError, TypeError):
                raise DataError(f"{path}:{number}: expected a JSON object with 'text' and 'label'") from None
        rows.append((*_example(path, number, text, label, lowercase), number))
    if not rows:
        raise DataError(f"{path}: no examples (empty split)")
    return rows


MAX_LINE_BYTES = 16 * 2**20  # a longer line is refused: reading it whole would take its size many times


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(number, text)`` of each line, read one at a time with at most :data:`MAX_LINE_BYTES` in memory.

    Lines end at "\\n" only: str.splitlines would also split at form feeds and Unicode line separators
    inside a field, and misnumber every later line."""
    try:
        with path.open("rb") as f:
            number = 0
            while True:
                raw = f.readline(MAX_LINE_BYTES + 1)
                if not raw:
                    return
                number += 1
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    raise DataError(
                        f"{path}:{number}: a line longer than {MAX_LINE_BYTES // 2**20} MiB;"
                        " split or shorten it"
                    )
                if number == 1:  # a byte-order mark is not part of the first label
                    raw = raw.removeprefix(b"\xef\xbb\xbf")
                yield number, raw.decode("utf-8").removesuffix("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable ({e})") from None


def _example(path: Path, number: int, text: object, label: object, lowercase: bool) -> tuple[list[str], str]:
    """Tokens and label of one record; a null or empty label or text is an error naming the line."""
    if label is None or isinstance(label, dict | list) or not str(label).strip():
        raise DataError(f"{path}:{number}: no label (got {json.dumps(label)})")
    if not isinstance(text, str):
        raise DataError(f"{path}:{number}: text must be a string (got {json.dumps(text)})")
    tokens = (text.lower() if lowercase else text).split()
    if not tokens:
        raise DataError(f"{path}:{number}: empty text")
    return tokens, str(label).strip()


def _read_csv(path: Path, content: str, lowercase: bool) -> list[tuple[list[str], str, int]]:
    reader = csv.DictReader(io.StringIO(content, newline=""))
    columns = reader.fieldnames or []
    if "text" not in columns or "label" not in columns:
        raise DataError(
            f"{path}:1: the header must name 'text' and 'label' columns; found: {', '.join(columns)}"
        )
    rows = []
    try:
        for record in reader:
            number = reader.line_num
            text, label = record.get("text"), record.get("label")
            if text is None or label is None:
                raise DataError(f"{path}:{number}: missing the 'text' or 'label' field")
            rows.append((*_example(path, number, text, label, lowercase), number))
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: {e}") from None
    if not rows:
        raise DataError(f"{path}: no examples (empty split)")
    return rows


class TextFileDataModule(TokenClassificationDataModule):
    """Classification data from ``train`` / ``val`` / ``test`` files (``val`` may be held out of train)."""

    PATH_KEYS = ("train", "val", "test")  # checked for existence when the config is validated

    def __init__(
        self,
        train: str,
        test: str,
        val: str | None = None,
        labels: list[str] | None = None,
        val_fraction: float = 0.1,
        max_len: int = 64,
        truncate: bool = False,
        lowercase: bool = True,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.paths = {"train": train, "val": val, "test": test}
        self.labels = [str(x) for x in labels] if labels else None
        self.val_fraction, self.max_len, self.truncate = val_fraction, max_len, truncate
        self.lowercase, self.batch_size, self.seed, self.num_workers = (
            lowercase,
            batch_size,
            seed,
            num_workers,
        )
        self.vocab: Vocabulary | None = None
        self.splits: dict[str, list[Example]] = {}
        self.datasets: dict = {}

    def _labelled(self, rows: list[tuple[list[str], str, int]], path: str) -> list[Example]:
        assert self.labels is not None
        index = {name: i for i, name in enumerate(self.labels)}
        out = []
        for tokens, label, number in rows:
            if label not in index:
                choices = ", ".join(self.labels)
                raise DataError(f"{path}:{number}: label {label!r} is not a class; valid choices: {choices}")
            if len(tokens) > self.max_len:
                if not self.truncate:
                    raise DataError(
                        f"{path}:{number}: {len(tokens)} tokens, more than task.datamodule.max_len="
                        f"{self.max_len} (raise it, or set task.datamodule.truncate=true)"
                    )
                tokens = tokens[: self.max_len]
            out.append((tokens, index[label]))
        return out

    def prepare_splits(self) -> None:
        """Read, check and encode the splits (idempotent)."""
        if self.splits:
            return
        raw = {k: read_examples(p, self.lowercase) for k, p in self.paths.items() if p}
        if self.labels is None:
            self.labels = sorted({label for _, label, _ in raw["train"]}, key=_label_order)
        if len(self.labels) < 2:
            raise DataError(f"{self.paths['train']}: one class only ({self.labels[0]!r}); need at least two")
        splits = {k: self._labelled(rows, str(self.paths[k])) for k, rows in raw.items()}
        if "val" not in splits:
            rows = splits["train"]
            order = list(range(len(rows)))
            random.Random(self.seed).shuffle(order)
            n_val = max(1, int(self.val_fraction * len(rows)))
            if n_val >= len(rows):
                raise DataError(f"{self.paths['train']}: too few examples to hold out a validation split")
            splits["val"] = [rows[i] for i in order[:n_val]]
            splits["train"] = [rows[i] for i in order[n_val:]]
        self.splits = splits
        self.vocab = self.vocabulary([t for t, _ in splits["train"]])
        self.datasets = {
            k: encode(self.as_pieces(v, self.max_len), self.vocab, self.max_len) for k, v in splits.items()
        }


def _label_order(label: str) -> tuple[int, int | str]:
    return (0, int(label)) if label.lstrip("-").isdigit() else (1, label)
