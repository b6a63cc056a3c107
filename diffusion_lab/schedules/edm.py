"""EDM schedule (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models", Eq. 5 and Table 1): α(t) = 1 and σ from σ_min = 0.002 to σ_max = 80 with ρ = 7.

We choose the time variable so that a uniform grid in t is EDM's ρ-spaced sampling grid:

    σ(t) = (a + t(b − a))^ρ,      a = σ_min^{1/ρ},  b = σ_max^{1/ρ},   t ∈ [0, 1].

Then σ̇ = ρ(b − a)(a + t(b − a))^{ρ−1}, f = 0, g² = 2σσ̇, λ = −log σ, and the inverse is
t(σ) = (σ^{1/ρ} − a)/(b − a) (it extrapolates below σ_min, e.g. for EDM's log-normal training σ,
giving t < 0). Range: t_min = 0 (σ = σ_min > 0, so λ is finite), t_max = 1; prior N(0, σ_max² I).

``sigma_data`` = 0.5 is the data standard deviation of EDM's preconditioning (kept here so that a
config can read it next to the schedule; the conversion layer takes its own copy).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.schedules.base import Schedule


class EDMSchedule(Schedule):
    """α = 1, σ(t) = (σ_min^{1/ρ} + t(σ_max^{1/ρ} − σ_min^{1/ρ}))^ρ (Karras et al. 2022)."""

    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        sigma_data: float = 0.5,
        t_min: float = 0.0,
        t_max: float = 1.0,
    ):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(
                f"EDMSchedule needs 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}."
            )
        if not rho > 0:
            raise ValueError(f"EDMSchedule needs rho > 0, got rho={rho}; EDM uses rho=7.")
        if not sigma_data > 0:
            raise ValueError(f"EDMSchedule needs sigma_data > 0, got sigma_data={sigma_data}; EDM uses 0.5.")
        if not 0 <= t_min < t_max <= 1:
            raise ValueError(f"EDMSchedule needs 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}.")
        self.sigma_min, self.sigma_max, self.rho = float(sigma_min), float(sigma_max), float(rho)
        self.sigma_data = float(sigma_data)
        self.t_min, self.t_max = float(t_min), float(t_max)
        self._a = self.sigma_min ** (1.0 / self.rho)
        self._b = self.sigma_max ** (1.0 / self.rho)

    def _base(self, t: Tensor) -> Tensor:
        return self._a + t * (self._b - self._a)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return self._base(t) ** self.rho

    def alpha_dot(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def sigma_dot(self, t: Tensor) -> Tensor:
        return self.rho * (self._b - self._a) * self._base(t) ** (self.rho - 1.0)

    def drift(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def diffusion2(self, t: Tensor) -> Tensor:
        return 2.0 * self.sigma(t) * self.sigma_dot(t)

    def log_snr(self, t: Tensor) -> Tensor:
        return -self.rho * torch.log(self._base(t))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        return (torch.exp(-lam / self.rho) - self._a) / (self._b - self._a)

    def __repr__(self) -> str:
        return (
            f"EDMSchedule(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, rho={self.rho}, "
            f"sigma_data={self.sigma_data})"
        )
