"""Noise-level embeddings shared by the UNet, the MLP and the noise-conditional classifier.

The network receives a scalar noise label per example (``1000·t`` for the plain parameterizations,
c_noise = ¼ ln σ̃ under EDM preconditioning; see ``diffusion_lab.parameterization``) and turns it
into a feature vector in one of two ways:

* ``SinusoidalEmbedding`` — the Transformer position encoding used as timestep embedding by DDPM
  (Ho et al. 2020, after Vaswani et al. 2017): for d = dim/2 frequencies
  ω_j = 10000^(−j/(d−1)), j = 0..d−1, emb(s) = [sin(s ω), cos(s ω)].
* ``GaussianFourierEmbedding`` — random Fourier features (Tancik et al. 2020) as in NCSN++
  (Song et al. 2021): ω ~ N(0, scale²) fixed at construction, emb(s) = [sin(2π s ω), cos(2π s ω)].
  Suited to labels of order one such as ln σ.

Both are followed by ``TimeEmbeddingMLP``: Linear(dim, 4·dim) → SiLU → Linear(4·dim, 4·dim), the
DDPM / ADM / DDPM++ design.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalEmbedding(nn.Module):
    """DDPM sinusoidal embedding of a scalar label (no parameters)."""

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"the sinusoidal embedding needs an even dim >= 2, got {dim}.")
        half = dim // 2
        exponent = torch.arange(half, dtype=torch.float32) / max(half - 1, 1)
        self.register_buffer("freqs", torch.exp(-math.log(max_period) * exponent), persistent=False)
        self.dim = dim

    def forward(self, label: Tensor) -> Tensor:
        arg = label.float()[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class GaussianFourierEmbedding(nn.Module):
    """NCSN++ Gaussian Fourier features of a scalar label: fixed random frequencies (a buffer,
    not a trainable parameter)."""

    def __init__(self, dim: int, scale: float = 16.0, seed: int = 0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"the Gaussian Fourier embedding needs an even dim >= 2, got {dim}.")
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(dim // 2, generator=gen) * scale)
        self.dim = dim

    def forward(self, label: Tensor) -> Tensor:
        arg = 2 * math.pi * label.float()[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


def make_noise_embedding(kind: str, dim: int, fourier_scale: float = 16.0) -> nn.Module:
    """``kind`` is ``"sinusoidal"`` (DDPM, ADM, DDPM++) or ``"fourier"`` (NCSN++)."""
    if kind in ("sinusoidal", "positional"):
        return SinusoidalEmbedding(dim)
    if kind in ("fourier", "gaussian_fourier"):
        return GaussianFourierEmbedding(dim, scale=fourier_scale)
    raise ValueError(f"unknown time embedding {kind!r}; choose 'sinusoidal' or 'fourier'.")


class TimeEmbeddingMLP(nn.Module):
    """Linear(in_dim, out_dim) → SiLU → Linear(out_dim, out_dim) (DDPM's two dense layers of 4·ch)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.nn.functional.silu(self.fc1(x)))


def broadcast_label(noise_label: Tensor | float, batch: int, device: torch.device) -> Tensor:
    """A noise label of shape (B,): scalars and (1,)-tensors are expanded to the batch."""
    label = torch.as_tensor(noise_label, device=device)
    if label.dim() == 0 or label.numel() == 1:
        label = label.reshape(1).expand(batch)
    if label.shape != (batch,):
        raise ValueError(f"noise_label must have shape ({batch},) or be a scalar, got {tuple(label.shape)}.")
    return label
