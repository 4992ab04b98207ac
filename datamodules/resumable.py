"""Loaders that resume mid-epoch exactly and shard across DDP ranks without repeating examples.

Training: the order of epoch ``e`` is a permutation seeded by ``(seed, e)`` alone, cut into
global batches of ``batch_size``; under DDP each rank takes its slice of every global batch, so
one and several processes see the same global batches (and, with gradients averaged, train
alike). The loader's ``state_dict`` (saved by Lightning in every checkpoint) records the epoch and
how many of its batches were trained; after a restore the next pass skips them.

Evaluation: rank ``r`` of ``W`` reads examples ``r, r + W, r + 2W, ...``: every example is counted
exactly once, with no padding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochSeededBatchSampler(Sampler[list[int]]):
    """Batches of a permutation seeded by ``(seed, epoch)``: this rank's slice of each global batch."""

    def __init__(self, n: int, seed: int, batch_size: int, rank: int = 0, world: int = 1) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world size {world}")
        self.n, self.seed, self.batch_size, self.rank, self.world = n, seed, batch_size, rank, world
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches already trained)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Continue ``epoch`` after its first ``batches_done`` batches (the next pass only)."""
        self.epoch = epoch  # Lightning creates the first iterator before it calls set_epoch
        self._resume = (epoch, batches_done)

    def global_batches(self, epoch: int) -> list[list[int]]:
        """The global batches of ``epoch`` (a last batch smaller than the world size is dropped)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        batches = [order[i : i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        return [b for b in batches if len(b) >= self.world]

    def _slice(self, batch: list[int]) -> list[int]:
        k, extra = divmod(len(batch), self.world)
        start = self.rank * k + min(self.rank, extra)
        return batch[start : start + k + (self.rank < extra)]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.global_batches(self.epoch)
        if self._resume is not None and self._resume[0] == self.epoch:
            batches = batches[self._resume[1] :]
            self._resume = None
        for batch in batches:
            yield self._slice(batch)

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (rest >= self.world)


class ShardSampler(Sampler[int]):
    """Examples ``rank, rank + world, ...`` in order: each example on exactly one rank."""

    def __init__(self, n: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


class ResumableLoader(DataLoader):
    """The training ``DataLoader``, with the ``state_dict``/``load_state_dict`` Lightning checkpoints.

    ``progress()`` returns how many batches of the current epoch have been trained (Lightning's
    batch progress), read when a checkpoint is saved.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        progress: Callable[[], int],
        rank: int = 0,
        world: int = 1,
        **kwargs: Any,
    ) -> None:
        self.batches = EpochSeededBatchSampler(len(dataset), seed, batch_size, rank, world)  # type: ignore[arg-type]
        super().__init__(dataset, batch_sampler=self.batches, **kwargs)
        self._progress = progress

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.batches.epoch, "batches_done": int(self._progress())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        if done >= len(self.batches):  # saved after the epoch's last batch (e.g. at validation end)
            epoch, done = epoch + 1, 0
        self.batches.resume_at(epoch, done)


def distributed(trainer: Any) -> tuple[int, int]:
    """``(global rank, world size)`` of a Lightning trainer, ``(0, 1)`` without one."""
    if trainer is None:
        return 0, 1
    return int(trainer.global_rank), int(trainer.world_size)


def train_loader(dataset: Dataset, batch_size: int, seed: int, trainer: Any, **kwargs: Any) -> DataLoader:
    """The resumable, rank-sliced training loader for ``trainer`` (or for no trainer)."""
    rank, world = distributed(trainer)

    def progress() -> int:
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed if trainer is not None else 0

    return ResumableLoader(dataset, batch_size, seed, progress, rank, world, **kwargs)


def eval_loader(dataset: Dataset, batch_size: int, trainer: Any, **kwargs: Any) -> DataLoader:
    """An in-order evaluation loader; under DDP each rank reads its own shard, nothing repeated."""
    rank, world = distributed(trainer)
    sampler = ShardSampler(len(dataset), rank, world)  # type: ignore[arg-type]
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
