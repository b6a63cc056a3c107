"""LightningDataModules. Images come out in [-1, 1], shape (B, C, H, W); low-dimensional data as (B, D)."""

from diffusion_lab.data.digits import DigitsDataModule

__all__ = ["DigitsDataModule"]
