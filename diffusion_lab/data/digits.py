"""scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), shipped with scikit-learn: the
embedded default dataset, no download.

Pixels are integers 0..16; they map to [-1, 1] by x ↦ x/8 − 1 (or [0, 1] by x/16). Batches are
(image, label) with images of shape (B, 1, 8, 8). Splits are seeded: train / val / test.
"""

from __future__ import annotations

import numpy as np
import torch

from diffusion_lab.data.base import DiffusionDataModule, TransformedTensorDataset, random_flip, split_indices


def load_digits_tensors(value_range: str = "[-1,1]") -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as float32 images of shape (N, 1, 8, 8) and int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    unit = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = unit * 2.0 - 1.0 if value_range == "[-1,1]" else unit
    return images, torch.from_numpy(d.target.astype(np.int64))


class DigitsDataModule(DiffusionDataModule):
    """8x8 digits with a fixed, seeded train/val/test split."""

    #: quantization levels of a pixel (0..16): the bins of bits/dim and of the discretized decoder
    levels = 17

    def __init__(self, batch_size: int = 128, val_fraction: float = 0.1, test_fraction: float = 0.0, num_workers: int = 0,
                 seed: int = 0, channels: int = 1, image_size: int = 8, num_classes: int = 10,
                 value_range: str = "[-1,1]", random_flip: bool = False):
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        if channels != 1 or image_size != 8:
            raise ValueError(f"dataset=digits is 1x8x8; got dataset.channels={channels}, dataset.image_size={image_size}.")
        if not 0.0 <= val_fraction < 1.0 or not 0.0 <= test_fraction < 1.0:
            raise ValueError(f"dataset.val_fraction and dataset.test_fraction must be in [0, 1), got {val_fraction}, {test_fraction}.")
        if value_range not in ("[-1,1]", "[0,1]"):
            raise ValueError(f"dataset.value_range must be '[-1,1]' or '[0,1]', got {value_range!r}.")
        self.val_fraction, self.test_fraction, self.value_range, self.random_flip = val_fraction, test_fraction, value_range, random_flip
        self.channels, self.image_size = channels, image_size
        self.num_classes = num_classes
        self.data_shape = (channels, image_size, image_size)

    def _load(self):
        images, labels = load_digits_tensors(self.value_range)
        train, val, test = split_indices(len(images), [0.0, self.val_fraction, self.test_fraction], self.seed)
        flip = random_flip if self.random_flip else None
        make = lambda idx, tf: TransformedTensorDataset(images[idx], labels[idx], tf, random=tf is not None)  # noqa: E731
        return make(train, flip), make(val, None), (make(test, None) if len(test) else None)
