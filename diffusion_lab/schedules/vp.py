"""Variance-preserving schedules: α² + σ² = 1.

VP with linear β(t) (Song et al. 2021, "Score-Based Generative Modeling through SDEs", Eq. 11 and
App. B): the forward SDE dx = −½β(t) x dt + √β(t) dW with β(t) = β_min + t(β_max − β_min) has

    log α(t) = −¼ t² (β_max − β_min) − ½ t β_min,      σ(t) = √(1 − α(t)²),

so f = α̇/α = −½β(t) and g² = β(t). Defaults β_min = 0.1, β_max = 20, t_min = 1e-3 (score SDE).
Prior leak α(1) = e^{−5.025} ≈ 0.0066.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.schedules.base import Schedule


class VPLinearSchedule(Schedule):
    """Continuous VP schedule with linear β(t) from ``beta_min`` to ``beta_max``."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3, t_max: float = 1.0):
        name = type(self).__name__
        if not 0 < beta_min < beta_max:
            raise ValueError(f"{name} needs 0 < beta_min < beta_max, got beta_min={beta_min}, beta_max={beta_max}.")
        if not 0 < t_min < t_max <= 1:
            raise ValueError(f"{name} needs 0 < t_min < t_max <= 1 (σ(0) = 0), got t_min={t_min}, t_max={t_max}; "
                             "score SDE uses t_min=1e-3.")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.t_min, self.t_max = float(t_min), float(t_max)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t: Tensor) -> Tensor:
        return -0.25 * t * t * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: Tensor) -> Tensor:
        # √(1 − e^{2 log α}) computed with expm1 for accuracy near t = 0
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def alpha_dot(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t) * self.alpha(t)

    def sigma_dot(self, t: Tensor) -> Tensor:
        a = self.alpha(t)
        return 0.5 * self.beta(t) * a * a / self.sigma(t)

    def log_snr(self, t: Tensor) -> Tensor:
        la = self.log_alpha(t)
        return la - 0.5 * torch.log(-torch.expm1(2.0 * la))

    def t_from_neg_log_alpha2(self, c: Tensor) -> Tensor:
        """Solve −log α(t)² = c, i.e. ½(β_max−β_min) t² + β_min t − c = 0, for t ≥ 0 (stable form)."""
        db = self.beta_max - self.beta_min
        return 2.0 * c / (self.beta_min + torch.sqrt(self.beta_min**2 + 2.0 * db * c))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        # log α² = −log(1 + e^{−2λ})
        return self.t_from_neg_log_alpha2(torch.nn.functional.softplus(-2.0 * lam))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta_min={self.beta_min}, beta_max={self.beta_max}, t_min={self.t_min}, t_max={self.t_max})"
