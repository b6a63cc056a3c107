"""Continuous cosine schedule (Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic
Models", Eq. 17), read in continuous time as in Lu et al. 2022 ("DPM-Solver").

With θ(t) = (t + s)/(1 + s)·π/2 and offset s = 0.008,

    ᾱ(t) = f(t)/f(0),   f(t) = cos²θ(t),      α(t) = cos θ(t)/cos θ(0),   σ(t) = √(1 − α(t)²).

The model is variance preserving (α² + σ² = 1), so f = α̇/α = −θ'·tan θ and g² = −2f, with
θ' = π/(2(1 + s)). To avoid cancellation near t = 0 we use the identity
cos²θ(0) − cos²θ = sin(θ − θ(0))·sin(θ + θ(0)), so σ² = sin(θ − θ(0))·sin(θ + θ(0))/cos²θ(0).

λ(t) = log(α/σ) has a closed-form inverse: α = √sigmoid(2λ), σ = √sigmoid(−2λ), and
θ = atan2(√(σ² + α² sin²θ(0)), α cos θ(0)) (since 1 − α² cos²θ(0) = σ² + α² sin²θ(0)).

Endpoints: α(1) = 0 exactly (λ = −∞), so the range is clipped. Default t_max = 0.9946, the value
DPM-Solver uses for this schedule: there α(t_max) ≈ 8.4e-3 (λ ≈ −4.78), a prior leak of the same
size as VP-linear's α(1) ≈ 6.6e-3. Default t_min = 1e-3 (σ(t_min) ≈ 6.2e-3, λ ≈ 5.08), the first
step 1/T of the discrete schedule with T = 1000.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion_lab.schedules.base import Schedule


def cosine_alpha_bar(t: Tensor, s: float = 0.008) -> Tensor:
    """ᾱ(t) = f(t)/f(0), f(t) = cos²((t + s)/(1 + s)·π/2) (improved DDPM, Eq. 17)."""
    theta = (t + s) / (1.0 + s) * (math.pi / 2)
    return (torch.cos(theta) / math.cos(s / (1.0 + s) * math.pi / 2)) ** 2


class VPCosineSchedule(Schedule):
    """Continuous cosine VP schedule α(t) = cos θ(t)/cos θ(0), θ(t) = (t + s)/(1 + s)·π/2
    (Nichol & Dhariwal 2021; continuous reading and t_max = 0.9946 from Lu et al. 2022)."""

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946):
        if not s > 0:
            raise ValueError(f"VPCosineSchedule needs an offset s > 0, got s={s}; the paper uses s=0.008.")
        if not 0.0 < t_min < t_max < 1.0:
            raise ValueError(
                f"VPCosineSchedule needs 0 < t_min < t_max < 1 (σ(0)=0 and α(1)=0 make λ infinite), got "
                f"t_min={t_min}, t_max={t_max}; the defaults are t_min=1e-3, t_max=0.9946."
            )
        self.s = float(s)
        self.t_min, self.t_max = float(t_min), float(t_max)
        self._theta0 = self.s / (1.0 + self.s) * (math.pi / 2)
        self._dtheta = (math.pi / 2) / (1.0 + self.s)  # θ'(t)

    def theta(self, t: Tensor) -> Tensor:
        return self._theta0 + t * self._dtheta

    def alpha(self, t: Tensor) -> Tensor:
        return torch.cos(self.theta(t)) / math.cos(self._theta0)

    def sigma(self, t: Tensor) -> Tensor:
        th = self.theta(t)
        return torch.sqrt(torch.sin(th - self._theta0) * torch.sin(th + self._theta0)) / math.cos(self._theta0)

    def alpha_dot(self, t: Tensor) -> Tensor:
        return -self._dtheta * torch.sin(self.theta(t)) / math.cos(self._theta0)

    def sigma_dot(self, t: Tensor) -> Tensor:
        # σσ̇ = −αα̇ (variance preserving)
        return -self.alpha(t) * self.alpha_dot(t) / self.sigma(t)

    def drift(self, t: Tensor) -> Tensor:
        return -self._dtheta * torch.tan(self.theta(t))

    def diffusion2(self, t: Tensor) -> Tensor:
        return -2.0 * self.drift(t)

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        a = torch.sqrt(torch.sigmoid(2.0 * lam))
        s = torch.sqrt(torch.sigmoid(-2.0 * lam))
        c0, s0 = math.cos(self._theta0), math.sin(self._theta0)
        th = torch.atan2(torch.sqrt(s * s + (a * s0) ** 2), a * c0)
        return (th - self._theta0) / self._dtheta

    def __repr__(self) -> str:
        return f"VPCosineSchedule(s={self.s}, t_min={self.t_min}, t_max={self.t_max})"
