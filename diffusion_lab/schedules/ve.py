"""Variance-exploding schedule (Song & Ermon 2019, "NCSN"; Song et al. 2021, score SDE, Eq. 9 and
App. B): α(t) = 1 and a geometric noise level

    σ(t) = σ_min·(σ_max/σ_min)^t,      σ_min = 0.01, σ_max = 50 (CIFAR-10 in score SDE).

f = 0 and g² = dσ²/dt = 2σ² log(σ_max/σ_min) (the paper's g(t) = σ(t)√(2 log(σ_max/σ_min))).
Here x_t = x_0 + σ(t)ε holds exactly, with σ(0) = σ_min > 0 (score SDE's perturbation kernel has
variance σ(t)² − σ_min², which differs by σ_min² = 1e-4 and which it neglects in practice).

λ = −log σ is linear in t: t(λ) = (−λ − log σ_min)/log(σ_max/σ_min). Range: t_min = 1e-5 (score
SDE's VE sampling end), t_max = 1. Prior N(0, σ_max² I); the prior ignores the data, whose scale
σ_max must dominate (Song & Ermon 2020, "Technique 1": σ_max ≈ the largest pairwise data distance).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion_lab.schedules.base import Schedule


class VESchedule(Schedule):
    """α = 1, σ(t) = σ_min (σ_max/σ_min)^t (Song et al. 2021)."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 1e-5, t_max: float = 1.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(
                f"VESchedule needs 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}."
            )
        if not 0 <= t_min < t_max <= 1:
            raise ValueError(f"VESchedule needs 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}.")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.t_min, self.t_max = float(t_min), float(t_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def alpha_dot(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def sigma_dot(self, t: Tensor) -> Tensor:
        return self._log_ratio * self.sigma(t)

    def drift(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def diffusion2(self, t: Tensor) -> Tensor:
        s = self.sigma(t)
        return 2.0 * self._log_ratio * s * s

    def log_snr(self, t: Tensor) -> Tensor:
        return -(math.log(self.sigma_min) + t * self._log_ratio)

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        return (-lam - math.log(self.sigma_min)) / self._log_ratio

    def __repr__(self) -> str:
        return f"VESchedule(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, t_min={self.t_min}, t_max={self.t_max})"
