"""What every datamodule shares: seeded splits, a global batch size split across DDP ranks, a
per-epoch seeded shuffle (so a resumed run sees exactly the batches the uninterrupted run saw), and
the image pipeline (8-bit → [-1, 1] or [0, 1], optional uniform dequantization, random flip)."""

from __future__ import annotations

from typing import Iterator, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from diffusion_lab.errors import ConfigError


class EpochSeededSampler(Sampler[int]):
    """Shuffles with a permutation drawn from (seed, epoch) and keeps rank r's share r::world_size.

    Lightning calls ``set_epoch`` at the start of every epoch, so the order depends only on the epoch
    number — never on how many random numbers were drawn before — and resuming replays it exactly.
    Drops the tail so that every rank sees the same number of samples."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.shuffle, self.rank, self.world_size = n, seed, shuffle, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        per_rank = self.n // self.world_size
        return iter(order[self.rank : per_rank * self.world_size : self.world_size].tolist())

    def __len__(self) -> int:
        return self.n // self.world_size


def split_indices(n: int, fractions: Sequence[float], seed: int) -> list[torch.Tensor]:
    """A seeded random split of range(n) into parts of the given fractions (the rest goes to the first)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    sizes = [int(round(f * n)) for f in fractions[1:]]
    first = n - sum(sizes)
    if first <= 0:
        raise ValueError(f"split fractions {list(fractions)} leave no training data out of {n} items.")
    parts, start = [], 0
    for size in [first, *sizes]:
        parts.append(perm[start : start + size])
        start += size
    return parts


class ImageTransform:
    """uint8 or float images → float32 in [-1, 1] (or [0, 1]); optional dequantization and flip.

    Uniform dequantization (Theis et al. 2016; Ho et al. 2020 for likelihoods): x = (k + u)/256 with
    u ~ U[0, 1), instead of k/255."""

    def __init__(self, value_range: str = "[-1,1]", dequantize: bool = False, random_flip: bool = False):
        if value_range not in ("[-1,1]", "[0,1]"):
            raise ValueError(f"dataset.value_range must be '[-1,1]' or '[0,1]', got {value_range!r}.")
        self.value_range, self.dequantize, self.random_flip = value_range, dequantize, random_flip

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if img.dtype == torch.uint8:
            x = img.float()
            x = (x + torch.rand_like(x)) / 256.0 if self.dequantize else x / 255.0
        else:
            x = img.float()  # already in [0, 1]
        if self.random_flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x * 2.0 - 1.0 if self.value_range == "[-1,1]" else x


class TransformedTensorDataset(Dataset):
    """(images, labels) tensors with a per-item transform; images stay compact (uint8) in memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None, transform=None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = self.images[i]
        x = self.transform(x) if self.transform is not None else x
        if self.labels is None:
            return (x,)
        return x, self.labels[i]


class DiffusionDataModule(pl.LightningDataModule):
    """Base datamodule. Subclasses implement ``_load() -> (train, val, test)`` datasets and set
    ``data_shape`` and ``num_classes`` (None when unlabelled)."""

    data_shape: tuple[int, ...] = ()
    num_classes: int | None = None

    def __init__(self, batch_size: int = 128, num_workers: int = 0, seed: int = 0):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"dataset.batch_size must be positive, got {batch_size}.")
        self.batch_size, self.num_workers, self.seed = int(batch_size), int(num_workers), int(seed)
        self.train_set = self.val_set = self.test_set = None

    @property
    def labelled(self) -> bool:
        return self.num_classes is not None

    def _load(self) -> tuple[Dataset, Dataset, Dataset | None]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set, self.test_set = self._load()

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def per_rank_batch_size(self) -> int:
        """dataset.batch_size is the global batch: each of W ranks takes batch_size / W."""
        _, world = self._world()
        if self.batch_size % world:
            raise ConfigError(
                f"dataset.batch_size={self.batch_size} does not divide across {world} processes; use a multiple of {world}."
            )
        return self.batch_size // world

    def _loader(self, ds: Dataset, shuffle: bool, drop_last: bool) -> DataLoader:
        rank, world = self._world()
        bs = self.per_rank_batch_size()
        sampler = EpochSeededSampler(len(ds), seed=self.seed, shuffle=shuffle, rank=rank, world_size=world)
        if drop_last and len(sampler) < bs:
            raise ConfigError(f"dataset has {len(sampler)} training items per process, fewer than one batch of {bs}; "
                             "lower dataset.batch_size.")
        return DataLoader(ds, batch_size=bs, sampler=sampler, drop_last=drop_last, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False, drop_last=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set if self.test_set is not None else self.val_set, shuffle=False, drop_last=False)

    def sample_data(self, n: int, split: str = "train") -> torch.Tensor:
        """The first n items of a split (images/vectors only), for metrics and plots."""
        self.setup()
        ds = {"train": self.train_set, "val": self.val_set, "test": self.test_set or self.val_set}[split]
        n = min(n, len(ds))
        return torch.stack([ds[i][0] for i in range(n)])
