"""LightningDataModules. Images come out in [-1, 1] (or [0, 1]), shape (B, C, H, W); low-dimensional
data as (B, D). Batches are tuples: (x,) or (x, label)."""

from diffusion_lab.data.base import DiffusionDataModule, ImageTransform
from diffusion_lab.data.resumable import EpochSeededSampler, ResumableDataLoader
from diffusion_lab.data.digits import DigitsDataModule
from diffusion_lab.data.images import CelebADataModule, ImageFolderDataModule, TorchvisionDataModule
from diffusion_lab.data.pairs import PairsDataModule, PairsDataset
from diffusion_lab.data.toy import TOY_SETS, GaussianMixtureDataModule, ToyDataModule, make_toy

__all__ = ["DiffusionDataModule", "EpochSeededSampler", "ResumableDataLoader", "ImageTransform", "DigitsDataModule",
           "TorchvisionDataModule",
           "CelebADataModule", "ImageFolderDataModule", "ToyDataModule", "GaussianMixtureDataModule", "TOY_SETS", "make_toy",
           "PairsDataModule", "PairsDataset"]
