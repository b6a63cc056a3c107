"""Low-dimensional datasets made on the fly (no download): 2-D toy sets and the Gaussian-mixture
oracle as a dataset (whose exact density, score and denoiser are known — ``diffusion_lab.oracles``).

Toy sets (standardised to roughly unit scale), as used across the score-matching and flow papers:
two_moons, swiss_roll (its 2-D projection), eight_gaussians (8 modes on a circle of radius 2,
std 0.02·scale), checkerboard (uniform on the black squares of a 4x4 board), rings (two concentric
circles with radial noise). Batches are (x,) with x of shape (B, D).
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import TensorDataset

from diffusion_lab.data.base import DiffusionDataModule, split_indices
from diffusion_lab.oracles import GaussianMixture

TOY_SETS = ("two_moons", "swiss_roll", "eight_gaussians", "checkerboard", "rings")


def make_toy(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """n samples of a 2-D toy distribution, float32, shape (n, 2)."""
    g = torch.Generator().manual_seed(seed)
    if name == "two_moons":
        from sklearn.datasets import make_moons

        x, _ = make_moons(n_samples=n, noise=0.05, random_state=seed)
        x = torch.as_tensor(x, dtype=torch.float32)
        return (x - torch.tensor([0.5, 0.25])) * 1.5
    if name == "swiss_roll":
        from sklearn.datasets import make_swiss_roll

        x, _ = make_swiss_roll(n_samples=n, noise=0.5, random_state=seed)
        return torch.as_tensor(x[:, [0, 2]], dtype=torch.float32) / 7.0
    if name == "eight_gaussians":
        k = torch.randint(0, 8, (n,), generator=g)
        ang = k.float() * (2 * math.pi / 8)
        centers = 2.0 * torch.stack([ang.cos(), ang.sin()], 1)
        return centers + 0.1 * torch.randn(n, 2, generator=g)
    if name == "checkerboard":
        x1 = torch.rand(n, generator=g) * 4 - 2
        x2 = torch.rand(n, generator=g) - torch.randint(0, 2, (n,), generator=g).float() * 2
        x2 = x2 + (torch.floor(x1) % 2)
        return torch.stack([x1, x2], 1)
    if name == "rings":
        r = torch.where(torch.rand(n, generator=g) < 0.5, torch.tensor(1.0), torch.tensor(2.0))
        r = r + 0.05 * torch.randn(n, generator=g)
        ang = torch.rand(n, generator=g) * 2 * math.pi
        return torch.stack([r * ang.cos(), r * ang.sin()], 1)
    raise ValueError(f"unknown toy dataset {name!r}; choose one of {TOY_SETS}.")


class _VectorDataModule(DiffusionDataModule):
    num_classes = None

    def __init__(self, n_train: int, n_val: int, batch_size: int, seed: int, num_workers: int = 0):
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        if n_train < 1 or n_val < 0:
            raise ValueError(f"dataset.n_train must be positive and dataset.n_val non-negative, got {n_train}, {n_val}.")
        self.n_train, self.n_val = int(n_train), int(n_val)

    def _samples(self, n: int) -> torch.Tensor:
        raise NotImplementedError

    def _load(self):
        x = self._samples(self.n_train + self.n_val)
        train, val = split_indices(len(x), [0.0, self.n_val / len(x)], self.seed)
        return TensorDataset(x[train]), TensorDataset(x[val]), None


class ToyDataModule(_VectorDataModule):
    """A 2-D toy distribution."""

    def __init__(self, name: str = "two_moons", n_train: int = 20_000, n_val: int = 2_000, batch_size: int = 256,
                 seed: int = 0, dim: int = 2, num_workers: int = 0):
        if name not in TOY_SETS:
            raise ValueError(f"dataset.name={name!r} is not a toy set; choose one of {TOY_SETS}.")
        if dim != 2:
            raise ValueError(f"toy datasets are 2-D; got dataset.dim={dim}.")
        super().__init__(n_train, n_val, batch_size, seed, num_workers)
        self.name, self.dim = name, 2
        self.data_shape = (2,)

    def _samples(self, n: int) -> torch.Tensor:
        return make_toy(self.name, n, self.seed)


class GaussianMixtureDataModule(_VectorDataModule):
    """Exact samples of a random Gaussian mixture (``GaussianMixture.random(dim, components, seed)``)."""

    def __init__(self, dim: int = 2, components: int = 4, mixture_seed: int = 0, spread: float = 2.0, scale: float = 0.3,
                 n_train: int = 20_000, n_val: int = 2_000, batch_size: int = 256, seed: int = 0, num_workers: int = 0):
        super().__init__(n_train, n_val, batch_size, seed, num_workers)
        if dim < 1 or components < 1:
            raise ValueError(f"dataset.dim and dataset.components must be positive, got {dim}, {components}.")
        self.dim = int(dim)
        self.data_shape = (self.dim,)
        self.mixture = GaussianMixture.random(dim, components, seed=mixture_seed, spread=spread, scale=scale)

    def _samples(self, n: int) -> torch.Tensor:
        return self.mixture.sample(n, torch.Generator().manual_seed(self.seed)).float()
