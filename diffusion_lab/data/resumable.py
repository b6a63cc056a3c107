"""The training data order as a pure function of (seed, epoch, position), so that a run resumed from
any checkpoint — mid-epoch included — sees exactly the batches, and the random augmentations, that
the uninterrupted run saw.

* ``EpochSeededSampler`` shuffles with a permutation drawn from (seed, epoch) alone and keeps rank
  r's share r::world_size; ``resume(epoch, start)`` makes its next pass over ``epoch`` begin at
  position ``start`` of that share.
* ``ResumableDataLoader`` is a DataLoader with ``state_dict``/``load_state_dict`` (Lightning's
  stateful-dataloader protocol: it saves the state in every checkpoint and loads it before the
  resumed epoch starts). The state is {epoch, batches served in that epoch}; loading it skips
  exactly those batches — by skipping their indices, so no item is read twice.
* Random augmentations (flips, dequantization noise) draw from a generator seeded per item with
  ``item_seed(seed, epoch, index)`` — the sampler hands the dataset (index, seed) pairs — instead of
  the process-global generator. An item's augmentation then depends on nothing else: not on the
  worker process that loads it, the number of processes, or where the run was resumed.

A new pass draws its worker seed from the loader's own generator, so loaders never touch the
global generator. Worker processes ignore SIGINT and SIGTERM (Ctrl-C reaches the whole process group): stopping is
the main process's business, which saves the position first and then shuts them down.

The position counts batches handed to the training loop. Lightning does not prefetch from a loader
whose length is known, so at every point where it saves a checkpoint (after a training batch, at
the end of an epoch or of validation) batches served = batches trained.
"""

from __future__ import annotations

import signal
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Sampler

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One round of SplitMix64 (Steele, Lea & Flood 2014): a bijective mix of a 64-bit integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of item ``index``'s random augmentation in ``epoch`` (a 63-bit integer)."""
    return _splitmix64(_splitmix64(_splitmix64(seed & _MASK64) ^ (epoch & _MASK64)) ^ (index & _MASK64)) >> 1


def item_generator(key: int | tuple[int, int]) -> tuple[int, torch.Generator | None]:
    """(index, generator) for a dataset key: an index, or an (index, seed) pair from the sampler
    (then a CPU generator seeded for this item; else None, i.e. the global generator)."""
    if isinstance(key, tuple):
        index, seed = key
        return int(index), torch.Generator().manual_seed(int(seed))
    return int(key), None


class IgnoreStopSignals:
    """A DataLoader ``worker_init_fn``: ignore SIGINT/SIGTERM in the worker, then call ``fn``."""

    def __init__(self, fn: Callable[[int], None] | None = None):
        self.fn = fn

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self.fn is not None:
            self.fn(worker_id)


class EpochSeededSampler(Sampler):
    """Shuffles with a permutation drawn from (seed, epoch) and keeps rank r's share r::world_size.

    Lightning calls ``set_epoch`` at the start of every epoch, so the order depends only on the epoch
    number — never on how many random numbers were drawn before. Drops the tail so that every rank
    sees the same number of samples. With ``item_seeds`` it yields (index, item_seed) pairs for
    datasets whose items are randomly augmented (see the module docstring)."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 item_seeds: bool = False):
        self.n, self.seed, self.shuffle, self.rank, self.world_size = n, seed, shuffle, rank, world_size
        self.item_seeds = item_seeds
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, start position) of the next pass

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume(self, epoch: int, start: int) -> None:
        """Begin the next pass over ``epoch`` at position ``start`` of this rank's share."""
        self.epoch = int(epoch)
        self._resume = (int(epoch), int(start))

    def next_start(self) -> int:
        """Where the next pass over the current epoch begins (0 unless resumed into it)."""
        return self._resume[1] if self._resume is not None and self._resume[0] == self.epoch else 0

    def order(self) -> list[int]:
        """This rank's share of the epoch's permutation."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        per_rank = self.n // self.world_size
        return order[self.rank : per_rank * self.world_size : self.world_size].tolist()

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        start = self.next_start()  # read at the first draw, after Lightning's set_epoch
        self._resume = None
        for i in self.order()[start:]:
            yield (i, item_seed(self.seed, self.epoch, i)) if self.item_seeds else i

    def __len__(self) -> int:
        return self.n // self.world_size


class ResumableDataLoader(DataLoader):
    """A DataLoader over an ``EpochSeededSampler`` whose position travels in the checkpoint.

    ``state_dict()`` = {"epoch", "batches"} (batches of that epoch already served);
    ``load_state_dict`` makes the next pass over that epoch skip them."""

    def __init__(self, *args: Any, **kwargs: Any):
        fn = kwargs.get("worker_init_fn")
        kwargs["worker_init_fn"] = fn if isinstance(fn, IgnoreStopSignals) else IgnoreStopSignals(fn)
        sampler = kwargs.get("sampler")
        if not isinstance(sampler, EpochSeededSampler):
            raise TypeError("ResumableDataLoader needs an EpochSeededSampler (sampler=...).")
        # the worker processes' base seed comes from the loader's own generator, not the global one
        kwargs.setdefault("generator", torch.Generator().manual_seed(sampler.seed))
        super().__init__(*args, **kwargs)
        self._served = 0

    def __iter__(self) -> Iterator[Any]:
        return self._batches()

    def _batches(self) -> Iterator[Any]:
        # a generator: nothing runs (no permutation is drawn) until the first batch is asked for,
        # which Lightning does after set_epoch
        self._served = self.sampler.next_start() // self._batch_size
        for batch in super().__iter__():
            self._served += 1
            yield batch

    @property
    def _batch_size(self) -> int:
        return int(self.batch_size or 1)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.sampler.epoch), "batches": int(self._served)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.resume(int(state["epoch"]), int(state["batches"]) * self._batch_size)
        self._served = int(state["batches"])
