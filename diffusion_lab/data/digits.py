"""scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), shipped with the package: the
embedded default dataset, no download.

Pixels are integers 0..16; we map them to [-1, 1] by x ↦ x/8 − 1. Batches are (image, label) with
images of shape (B, 1, 8, 8).
"""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as float32 images in [-1, 1] of shape (N, 1, 8, 8) and int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(d.images.astype(np.float32) / 8.0 - 1.0).unsqueeze(1)
    return images, torch.from_numpy(d.target.astype(np.int64))


class DigitsDataModule(pl.LightningDataModule):
    """8x8 digits with a fixed, seeded train/validation split."""

    def __init__(self, batch_size: int = 128, val_fraction: float = 0.1, num_workers: int = 0, seed: int = 0,
                 channels: int = 1, image_size: int = 8, num_classes: int = 10):
        super().__init__()
        if channels != 1 or image_size != 8:
            raise ValueError(f"dataset=digits is 1x8x8; got dataset.channels={channels}, dataset.image_size={image_size}.")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"dataset.val_fraction must be in [0, 1), got {val_fraction}.")
        if batch_size < 1:
            raise ValueError(f"dataset.batch_size must be positive, got {batch_size}.")
        self.batch_size, self.val_fraction, self.num_workers, self.seed = batch_size, val_fraction, num_workers, seed
        self.channels, self.image_size, self.num_classes = channels, image_size, num_classes
        self.train_set = self.val_set = None

    @property
    def data_shape(self) -> tuple[int, ...]:
        return (self.channels, self.image_size, self.image_size)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        images, labels = load_digits_tensors()
        perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.seed))
        n_val = int(round(self.val_fraction * len(images)))
        val, train = perm[:n_val], perm[n_val:]
        self.train_set = TensorDataset(images[train], labels[train])
        self.val_set = TensorDataset(images[val], labels[val])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)
