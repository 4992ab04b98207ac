"""A training loader that resumes mid-epoch exactly: the same batches, in the same order.

The shuffle of epoch ``e`` is a permutation seeded by ``(seed, e)`` alone, so it does not depend on
how many epochs ran in this process. The loader's ``state_dict`` (saved by Lightning in every
checkpoint) records the epoch and how many of its batches were trained; after a restore the next
pass over that epoch skips them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochSeededSampler(Sampler[int]):
    """Indices of a permutation seeded by ``(seed, epoch)``; can start after ``k`` batches once."""

    def __init__(self, n: int, seed: int, batch_size: int) -> None:
        self.n, self.seed, self.batch_size = n, seed, batch_size
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches already trained)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Continue ``epoch`` after its first ``batches_done`` batches (the next pass only)."""
        self.epoch = epoch  # Lightning creates the first iterator before it calls set_epoch
        self._resume = (epoch, batches_done)

    def permutation(self, epoch: int) -> list[int]:
        """The order of epoch ``epoch``."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[int]:
        order = self.permutation(self.epoch)
        if self._resume is not None and self._resume[0] == self.epoch:
            order = order[self._resume[1] * self.batch_size :]
            self._resume = None
        return iter(order)

    def __len__(self) -> int:
        return self.n


class ResumableLoader(DataLoader):
    """A shuffling ``DataLoader`` with the ``state_dict``/``load_state_dict`` Lightning checkpoints.

    ``progress()`` returns how many batches of the current epoch have been trained (Lightning's
    batch progress), read when a checkpoint is saved.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        progress: Callable[[], int],
        sampler: Sampler | None = None,
        **kwargs: Any,
    ) -> None:
        # Lightning re-creates the loader with its own ``sampler`` for overfit_batches and DDP; the
        # epoch-seeded order (and exact mid-epoch resume) applies when it does not.
        self.epoch_sampler = EpochSeededSampler(len(dataset), seed, batch_size)  # type: ignore[arg-type]
        kwargs.pop("shuffle", None)
        super().__init__(dataset, batch_size=batch_size, sampler=sampler or self.epoch_sampler, **kwargs)
        self._progress = progress

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch_sampler.epoch, "batches_done": int(self._progress())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch_sampler.resume_at(int(state["epoch"]), int(state["batches_done"]))
