"""What attn's datamodules share: three encoded splits and the loaders over them."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, TensorDataset

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


class TokenClassificationDataModule(SplitDataModule):
    """A :class:`SplitDataModule` for classification over one word vocabulary (``self.vocab``) into the
    classes ``self.labels`` (known once the splits are prepared)."""

    vocab: Vocabulary | None
    labels: list[str] | None

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
        """Write the vocabulary next to the run's checkpoints."""
        if self.vocab is not None:
            self.vocab.save(f"{run_dir}/vocab.json")


class PairDataModule(SplitDataModule):
    """A :class:`SplitDataModule` of (source, target) token pairs with one vocabulary per side."""

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
        }

    def save(self, run_dir: str) -> None:
        """Write both vocabularies next to the run's checkpoints."""
        if self.src_vocab is not None and self.tgt_vocab is not None:
            self.src_vocab.save(f"{run_dir}/vocab.src.json")
            self.tgt_vocab.save(f"{run_dir}/vocab.tgt.json")
