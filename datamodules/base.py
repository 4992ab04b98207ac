"""What attn's datamodules share: three encoded splits and the loaders over them."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, TensorDataset

from . import subword
from .resumable import eval_loader, train_loader
from .vocab import Vocabulary


def check_sizes(path: str, sizes: dict[str, object], low: int = 1) -> None:
    """Raise ``ValueError`` (one line naming the key) unless every size is an integer >= ``low``: the
    config-time check that keeps a zero or negative size from failing late (a division, a torch error)."""
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{path}.{key}={value!r} is invalid: must be an integer >= {low}")


class SplitDataModule(L.LightningDataModule):
    """A datamodule whose ``prepare_splits`` fills ``self.datasets`` with ``train``, ``val`` and ``test``.

    Subclasses set ``batch_size``, ``seed`` and ``num_workers``. Training batches come from the
    resumable, rank-sliced loader; evaluation reads each rank's shard in order.
    """

    datasets: dict[str, TensorDataset]
    batch_size: int
    seed: int
    num_workers: int

    def prepare_splits(self) -> None:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        self.prepare_splits()

    def _workers(self) -> dict:
        return {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0}

    def train_dataloader(self) -> DataLoader:
        data = self.datasets["train"]
        return train_loader(data, self.batch_size, self.seed, self.trainer, **self._workers())

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self.datasets["val"], self.batch_size, self.trainer, **self._workers())

    def test_dataloader(self) -> DataLoader:
        return eval_loader(self.datasets["test"], self.batch_size, self.trainer, **self._workers())


class TextDataModule(SplitDataModule):
    """A :class:`SplitDataModule` of text: words, or subword pieces of a model trained on the training split
    (``task.tokenizer``; the runner calls :meth:`set_tokenizer` before the splits are prepared)."""

    tokenizer: str = "word"
    subword_vocab: int = 8000
    run_dir: str | None = None  # a resumed run reads its tokenizer.json from here
    subwords: subword.Subwords | None = None

    def set_tokenizer(self, kind: str = "word", vocab_size: int = 8000, run_dir: str | None = None) -> None:
        """Use ``kind`` (``word``, ``bpe``, ``unigram``) with ``vocab_size`` pieces; ``run_dir``: the run's
        directory, whose ``tokenizer.json`` (a resumed run) is used instead of training a new model."""
        if kind not in subword.TOKENIZERS:
            raise ValueError(
                f"task.tokenizer={kind!r} is unknown; valid choices: {', '.join(subword.TOKENIZERS)}"
            )
        self.tokenizer, self.subword_vocab, self.run_dir = kind, vocab_size, run_dir

    def subword_vocabulary(self, train: list[list[str]]) -> Vocabulary | None:
        """With a subword tokenizer: its model, trained on ``train`` (the training split's words) or read
        from the run directory, and the vocabulary of its pieces; ``None`` for words."""
        if self.tokenizer == "word":
            return None
        self.subwords = subword.fit(self.tokenizer, train, self.subword_vocab, self.run_dir)
        return self.subwords.vocabulary()

    def pieces(self, words: list[str]) -> list[str]:
        """The tokens of ``words``: themselves, or their subword pieces."""
        return words if self.subwords is None else self.subwords.split(words)

    def save_tokenizer(self, run_dir: str) -> None:
        """Write the subword model (``tokenizer.json``) next to the run's checkpoints."""
        if self.subwords is not None:
            self.subwords.save(f"{run_dir}/{subword.TOKENIZER_FILE}")


class TokenClassificationDataModule(TextDataModule):
    """A :class:`TextDataModule` for classification over one vocabulary (``self.vocab``) into the classes
    ``self.labels`` (known once the splits are prepared)."""

    vocab: Vocabulary | None
    labels: list[str] | None

    def vocabulary(
        self, train: list[list[str]], min_count: int = 1, max_size: int | None = None
    ) -> Vocabulary:
        """The vocabulary of the training split's words (``min_count``, ``max_size``), or of the pieces of a
        subword model trained on them."""
        pieces = self.subword_vocabulary(train)
        return Vocabulary.build(train, min_count, max_size) if pieces is None else pieces

    def as_pieces(self, examples: list[tuple[list[str], int]], max_len: int) -> list[tuple[list[str], int]]:
        """Examples of words as examples of subword pieces, cut to ``max_len`` (unchanged for words)."""
        if self.subwords is None:
            return examples
        return [(self.pieces(words)[:max_len] or [subword.UNK], label) for words, label in examples]

    @property
    def n_classes(self) -> int:
        return len(self.label_names)

    @property
    def label_names(self) -> list[str]:
        self.prepare_splits()
        assert self.labels is not None
        return list(self.labels)

    @property
    def vocab_size(self) -> int:
        self.prepare_splits()
        assert self.vocab is not None
        return len(self.vocab)

    def save(self, run_dir: str) -> None:
        """Write the vocabulary (and the subword model) next to the run's checkpoints."""
        if self.vocab is not None:
            self.vocab.save(f"{run_dir}/vocab.json")
        self.save_tokenizer(run_dir)


class PairDataModule(TextDataModule):
    """A :class:`TextDataModule` of (source, target) token pairs with one vocabulary per side (a subword
    model is joint: trained on both sides, one vocabulary for both)."""

    src_vocab: Vocabulary | None
    tgt_vocab: Vocabulary | None
    max_len: int

    def module_kwargs(self) -> dict:
        """What the translation module needs to know about the data."""
        self.prepare_splits()
        assert self.src_vocab is not None and self.tgt_vocab is not None
        return {
            "src_vocab_size": len(self.src_vocab),
            "tgt_tokens": list(self.tgt_vocab.tokens),
            "max_target_len": self.max_len,
            **({"subword": True} if self.subwords is not None else {}),
        }

    def joint_vocabulary(self, train: list[tuple[list[str], list[str]]]) -> Vocabulary | None:
        """With a subword tokenizer: one model trained on both sides of the training pairs, and its
        vocabulary (for both sides); ``None`` for words."""
        return self.subword_vocabulary([side for pair in train for side in pair])

    def save(self, run_dir: str) -> None:
        """Write both vocabularies (and the subword model) next to the run's checkpoints."""
        if self.src_vocab is not None and self.tgt_vocab is not None:
            self.src_vocab.save(f"{run_dir}/vocab.src.json")
            self.tgt_vocab.save(f"{run_dir}/vocab.tgt.json")
        self.save_tokenizer(run_dir)
