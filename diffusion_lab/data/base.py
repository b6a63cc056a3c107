"""What every datamodule shares: seeded splits, a global batch size split across DDP ranks, a
per-epoch seeded shuffle whose position travels in the checkpoint (``data.resumable``: a run resumed
mid-epoch sees exactly the batches and augmentations the uninterrupted run saw), and the image
pipeline (8-bit → [-1, 1] or [0, 1], optional uniform dequantization, random flip)."""

from __future__ import annotations

from typing import Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset

from diffusion_lab.data.resumable import EpochSeededSampler, ResumableDataLoader, item_generator
from diffusion_lab.errors import ConfigError


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
    u ~ U[0, 1), instead of k/255. The random draws come from ``generator`` (one per item, see
    ``data.resumable``) or, without one, from the global generator."""

    def __init__(self, value_range: str = "[-1,1]", dequantize: bool = False, random_flip: bool = False):
        if value_range not in ("[-1,1]", "[0,1]"):
            raise ValueError(f"dataset.value_range must be '[-1,1]' or '[0,1]', got {value_range!r}.")
        self.value_range, self.dequantize, self.random_flip = value_range, dequantize, random_flip

    @property
    def random(self) -> bool:
        return self.dequantize or self.random_flip

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if img.dtype == torch.uint8:
            x = img.float()
            x = (x + torch.rand(x.shape, generator=generator)) / 256.0 if self.dequantize else x / 255.0
        else:
            x = img.float()  # already in [0, 1]
        x = random_flip(x, generator) if self.random_flip else x
        return x * 2.0 - 1.0 if self.value_range == "[-1,1]" else x


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """x mirrored along its last (width) axis with probability 1/2."""
    return x.flip(-1) if torch.rand((), generator=generator) < 0.5 else x


class TransformedTensorDataset(Dataset):
    """(images, labels) tensors with a per-item transform ``transform(x, generator)``; images stay
    compact (uint8) in memory. ``random``: the transform draws random numbers, so the training
    sampler hands this dataset (index, seed) keys (``data.resumable``)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None, transform=None, random: bool | None = None):
        self.images, self.labels, self.transform = images, labels, transform
        self.random = bool(getattr(transform, "random", False) if random is None else random)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]):
        i, generator = item_generator(key)
        x = self.images[i]
        x = self.transform(x, generator) if self.transform is not None else x
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

    def _loader(self, ds: Dataset, shuffle: bool, drop_last: bool) -> ResumableDataLoader:
        rank, world = self._world()
        bs = self.per_rank_batch_size()
        sampler = EpochSeededSampler(len(ds), seed=self.seed, shuffle=shuffle, rank=rank, world_size=world,
                                     item_seeds=bool(getattr(ds, "random", False)))
        if drop_last and len(sampler) < bs:
            raise ConfigError(f"dataset has {len(sampler)} training items per process, fewer than one batch of {bs}; "
                             "lower dataset.batch_size.")
        return ResumableDataLoader(ds, batch_size=bs, sampler=sampler, drop_last=drop_last, num_workers=self.num_workers,
                                   persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> ResumableDataLoader:
        return self._loader(self.train_set, shuffle=True, drop_last=True)

    def val_dataloader(self) -> ResumableDataLoader:
        return self._loader(self.val_set, shuffle=False, drop_last=False)

    def test_dataloader(self) -> ResumableDataLoader:
        return self._loader(self.test_set if self.test_set is not None else self.val_set, shuffle=False, drop_last=False)

    def sample_data(self, n: int, split: str = "train") -> torch.Tensor:
        """The first n items of a split (images/vectors only), for metrics and plots."""
        self.setup()
        ds = {"train": self.train_set, "val": self.val_set, "test": self.test_set or self.val_set}[split]
        n = min(n, len(ds))
        return torch.stack([ds[i][0] for i in range(n)])
