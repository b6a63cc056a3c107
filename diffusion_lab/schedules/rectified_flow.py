"""Rectified flow / flow matching with the linear path (Liu et al. 2023, "Flow Straight and Fast";
Lipman et al. 2023, "Flow Matching"): α(t) = 1 − t, σ(t) = t, data at t=0.

The velocity of the path is u = α̇ x_0 + σ̇ ε = ε − x_0 (Liu et al. write x_0 − ε with noise at
t=0; the sign flips with the time direction). f = −1/(1−t), g² = 2t + 2t²/(1−t) = 2t/(1−t).

Endpoints: σ(0) = 0 and α(1) = 0 make λ infinite at both ends, so the range is clipped to
[t_min, t_max] = [1e-3, 1 − 1e-3] by default; the prior leak is α(t_max)·x_0 = 1e-3·x_0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.schedules.base import Schedule


class RectifiedFlowSchedule(Schedule):
    """α = 1 − t, σ = t."""

    def __init__(self, t_min: float = 1e-3, t_max: float = 1.0 - 1e-3):
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ValueError(f"RectifiedFlowSchedule needs 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}.")
        self.t_min, self.t_max = float(t_min), float(t_max)

    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - t

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def alpha_dot(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)

    def sigma_dot(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        # (1−t)/t = e^λ  ⇒  t = 1/(1 + e^λ) = sigmoid(−λ)
        return torch.sigmoid(-lam)
