"""EDM schedule (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models", Eq. 5 and Table 1): α(t) = 1 and σ from σ_min = 0.002 to σ_max = 80 with ρ = 7.

We choose the time variable so that σ^{1/ρ} is linear in t and t = 0 is the clean data (σ = 0):

    σ(t) = σ_max · t^ρ,       t ∈ [t_min, 1],   t_min = (σ_min/σ_max)^{1/ρ}  (≈ 0.2197 for EDM).

A uniform grid in t on [t_min, 1] is then exactly EDM's ρ-spaced sampling grid (σ_i^{1/ρ} uniform
between σ_max^{1/ρ} and σ_min^{1/ρ}), and the samplers' terminal step to t = 0 is EDM's final step
to σ = 0. σ̇ = ρσ/t, f = 0, g² = 2σσ̇, λ = −log σ, and the inverse t(σ) = (σ/σ_max)^{1/ρ} holds for
any σ > 0 (EDM's log-normal training σ may fall below σ_min; the time samplers clamp to the range).
Prior N(0, σ_max² I).

``sigma_data`` = 0.5 is the data standard deviation of EDM's preconditioning (kept here so that a
config can read it next to the schedule; the conversion layer takes its own copy).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion_lab.schedules.base import Schedule


class EDMSchedule(Schedule):
    """α = 1, σ(t) = σ_max·t^ρ on [(σ_min/σ_max)^{1/ρ}, 1] (Karras et al. 2022)."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, sigma_data: float = 0.5):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(
                f"EDMSchedule needs 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}."
            )
        if not rho > 0:
            raise ValueError(f"EDMSchedule needs rho > 0, got rho={rho}; EDM uses rho=7.")
        if not sigma_data > 0:
            raise ValueError(f"EDMSchedule needs sigma_data > 0, got sigma_data={sigma_data}; EDM uses 0.5.")
        self.sigma_min, self.sigma_max, self.rho = float(sigma_min), float(sigma_max), float(rho)
        self.sigma_data = float(sigma_data)
        self.t_min = (self.sigma_min / self.sigma_max) ** (1.0 / self.rho)
        self.t_max = 1.0

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_max * t**self.rho

    def alpha_dot(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def sigma_dot(self, t: Tensor) -> Tensor:
        return self.rho * self.sigma_max * t ** (self.rho - 1.0)

    def drift(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def diffusion2(self, t: Tensor) -> Tensor:
        return 2.0 * self.sigma(t) * self.sigma_dot(t)

    def log_snr(self, t: Tensor) -> Tensor:
        return -(math.log(self.sigma_max) + self.rho * torch.log(t))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        return torch.exp((-lam - math.log(self.sigma_max)) / self.rho)

    def __repr__(self) -> str:
        return (
            f"EDMSchedule(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, rho={self.rho}, "
            f"sigma_data={self.sigma_data})"
        )
