"""Image datasets read through torchvision: MNIST, Fashion-MNIST, CIFAR-10, CelebA (64x64) and any
folder of images. Nothing is downloaded unless ``dataset.download=true``; a missing dataset stops
with the directory that was searched and the override that downloads it.

MNIST, Fashion-MNIST and CIFAR-10 are held in memory as uint8 and converted per item
(``ImageTransform``: [-1, 1] or [0, 1], optional uniform dequantization, random horizontal flip —
DDPM flips CIFAR-10). CelebA follows DDPM/NCSN: a 140x140 centre crop resized to 64x64.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.data import Dataset

from diffusion_lab.data.base import DiffusionDataModule, ImageTransform, TransformedTensorDataset, split_indices
from diffusion_lab.data.resumable import item_generator
from diffusion_lab.errors import DataError

log = logging.getLogger(__name__)

_TV = {"mnist": ("MNIST", 1, 28, 10), "fashion_mnist": ("FashionMNIST", 1, 28, 10), "cifar10": ("CIFAR10", 3, 32, 10)}


def _missing(name: str, data_dir: str, err: Exception) -> DataError:
    return DataError(
        f"dataset={name}: no data found under {Path(data_dir).resolve()} ({err}); point dataset.data_dir at the folder "
        f"that holds it, or add dataset.download=true to fetch it."
    )


class _ImageDataModule(DiffusionDataModule):
    def __init__(self, data_dir: str, download: bool, batch_size: int, num_workers: int, seed: int, val_fraction: float,
                 value_range: str, dequantize: bool, random_flip: bool):
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"dataset.val_fraction must be in [0, 1), got {val_fraction}.")
        self.data_dir, self.download, self.val_fraction = str(data_dir), bool(download), float(val_fraction)
        self.train_tf = ImageTransform(value_range, dequantize, random_flip)
        self.eval_tf = ImageTransform(value_range, False, False)


class TorchvisionDataModule(_ImageDataModule):
    """``name`` in mnist | fashion_mnist | cifar10; train split → train/val, the official test split → test."""

    def __init__(self, name: str = "mnist", data_dir: str = "data", download: bool = False, batch_size: int = 128,
                 num_workers: int = 0, seed: int = 0, val_fraction: float = 0.0, value_range: str = "[-1,1]",
                 dequantize: bool = False, random_flip: bool = False, channels: int | None = None,
                 image_size: int | None = None, num_classes: int | None = None):
        if name not in _TV:
            raise ValueError(f"dataset.name={name!r} is not a torchvision dataset here; choose one of {sorted(_TV)}.")
        super().__init__(data_dir, download, batch_size, num_workers, seed, val_fraction, value_range, dequantize, random_flip)
        self.name = name
        cls_name, c, s, k = _TV[name]
        for key, given, true in (("channels", channels, c), ("image_size", image_size, s), ("num_classes", num_classes, k)):
            if given is not None and given != true:
                raise ValueError(f"dataset={name} has {key}={true}, but dataset.{key}={given}; remove the override.")
        self.channels, self.image_size, self.num_classes = c, s, k
        self.data_shape = (c, s, s)

    def _read(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        import torchvision

        cls = getattr(torchvision.datasets, _TV[self.name][0])
        try:
            ds = cls(root=self.data_dir, train=train, download=self.download)
        except RuntimeError as e:
            raise _missing(self.name, self.data_dir, e) from None
        data = torch.as_tensor(ds.data)
        images = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)
        return images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64)

    def _load(self):
        images, labels = self._read(train=True)
        test_images, test_labels = self._read(train=False)
        train, val = split_indices(len(images), [0.0, self.val_fraction], self.seed)
        return (TransformedTensorDataset(images[train], labels[train], self.train_tf),
                TransformedTensorDataset(images[val], labels[val], self.eval_tf),
                TransformedTensorDataset(test_images, test_labels, self.eval_tf))


class _FolderDataset(Dataset):
    """A torchvision dataset of PIL images, resized/cropped, passed through ImageTransform."""

    def __init__(self, base, indices, size: int, crop: int | None, tf: ImageTransform, labelled: bool):
        import torchvision.transforms.v2 as T

        self.base, self.indices, self.tf, self.labelled = base, indices, tf, labelled
        self.random = tf.random  # the training sampler then hands (index, seed) keys
        ops = [T.PILToTensor()]
        if crop:
            ops.append(T.CenterCrop(crop))
        ops += [T.Resize(size, antialias=True), T.CenterCrop(size)]
        self.pre = T.Compose(ops)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]):
        i, generator = item_generator(key)
        img, label = self.base[int(self.indices[i])]
        x = self.tf(self.pre(img.convert("RGB")), generator)
        return (x, label) if self.labelled else (x,)


class CelebADataModule(_ImageDataModule):
    """CelebA faces, 140x140 centre crop resized to ``image_size`` (64), unlabelled."""

    def __init__(self, data_dir: str = "data", download: bool = False, image_size: int = 64, batch_size: int = 128,
                 num_workers: int = 4, seed: int = 0, val_fraction: float = 0.0, value_range: str = "[-1,1]",
                 dequantize: bool = False, random_flip: bool = True, channels: int = 3):
        super().__init__(data_dir, download, batch_size, num_workers, seed, val_fraction, value_range, dequantize, random_flip)
        self.channels, self.image_size, self.num_classes = 3, int(image_size), None
        self.data_shape = (3, self.image_size, self.image_size)

    def _load(self):
        import torchvision

        try:
            train = torchvision.datasets.CelebA(self.data_dir, split="train", download=self.download)
            test = torchvision.datasets.CelebA(self.data_dir, split="test", download=self.download)
        except RuntimeError as e:
            raise _missing("celeba", self.data_dir, e) from None
        tr, va = split_indices(len(train), [0.0, self.val_fraction], self.seed)
        mk = lambda base, idx, tf: _FolderDataset(base, idx, self.image_size, 140, tf, False)  # noqa: E731
        return mk(train, tr, self.train_tf), mk(train, va, self.eval_tf), mk(test, torch.arange(len(test)), self.eval_tf)


def unreadable_images(paths: list[str], progress: bool = True) -> list[str]:
    """The files among ``paths`` that PIL cannot open and verify (truncated, corrupt, not an image)."""
    from PIL import Image
    from tqdm.auto import tqdm

    bad = []
    for p in tqdm(paths, desc="checking images", leave=False, disable=not progress or len(paths) < 1000):
        try:
            with Image.open(p) as im:
                im.verify()
        except Exception:  # PIL raises many types for broken files
            bad.append(p)
    return bad


class ImageFolderDataModule(_ImageDataModule):
    """Any folder of images (torchvision ImageFolder layout: one sub-folder per class), resized and
    centre-cropped to ``image_size``; labelled by sub-folder when ``labelled``.

    Every file is checked (opened and verified) when the data is set up, before training: an unreadable
    one stops the run naming it, or, with ``skip_corrupt``, is left out with a warning and a count."""

    def __init__(self, data_dir: str = "data/images", image_size: int = 64, channels: int = 3, labelled: bool = False,
                 batch_size: int = 128, num_workers: int = 4, seed: int = 0, val_fraction: float = 0.05,
                 value_range: str = "[-1,1]", dequantize: bool = False, random_flip: bool = False, download: bool = False,
                 skip_corrupt: bool = False):
        super().__init__(data_dir, False, batch_size, num_workers, seed, val_fraction, value_range, dequantize, random_flip)
        self.skip_corrupt = bool(skip_corrupt)
        if channels != 3:
            raise ValueError(f"dataset=image_folder reads RGB images; got dataset.channels={channels}.")
        self.channels, self.image_size, self.labelled_folders = 3, int(image_size), bool(labelled)
        self.data_shape = (3, self.image_size, self.image_size)
        self.num_classes = None  # set from the folder when labelled

    def _load(self):
        import torchvision

        if not Path(self.data_dir).is_dir():
            raise DataError(f"dataset=image_folder: {Path(self.data_dir).resolve()} is not a directory; set dataset.data_dir.")
        base = torchvision.datasets.ImageFolder(self.data_dir)
        bad = unreadable_images([p for p, _ in base.samples])
        if bad and not self.skip_corrupt:
            raise DataError(f"dataset=image_folder: {len(bad)} of {len(base.samples)} files cannot be read as images "
                            f"(first: {bad[0]}); remove them or set dataset.skip_corrupt=true to leave them out.")
        if bad:
            log.warning("dataset=image_folder: left out %d unreadable files of %d (first: %s)", len(bad),
                        len(base.samples), bad[0])
            keep = set(bad)
            base.samples = [s for s in base.samples if s[0] not in keep]
            base.imgs, base.targets = base.samples, [t for _, t in base.samples]
        if not base.samples:
            raise DataError(f"dataset=image_folder: no readable images under {Path(self.data_dir).resolve()}.")
        if self.labelled_folders:
            self.num_classes = len(base.classes)
        tr, va = split_indices(len(base), [0.0, self.val_fraction], self.seed)
        mk = lambda idx, tf: _FolderDataset(base, idx, self.image_size, None, tf, self.labelled_folders)  # noqa: E731
        return mk(tr, self.train_tf), mk(va, self.eval_tf), None
