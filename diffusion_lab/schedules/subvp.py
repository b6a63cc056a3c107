"""Sub-VP schedule (Song et al. 2021, "Score-Based Generative Modeling through SDEs", Eq. 29).

The sub-VP SDE dx = −½β(t) x dt + √(β(t)(1 − e^{−2∫₀ᵗβ})) dW with the linear β(t) of the VP SDE has
the marginals x_t = α x_0 + σ ε with

    α(t) = exp(−¼ t²(β_max − β_min) − ½ t β_min)   (as VP linear),      σ(t) = 1 − α(t)².

Check: f = α̇/α = −½β and g² = dσ²/dt − 2fσ² = 2(1 − α²)·βα² + β(1 − α²)² = β(1 − α²)(1 + α²)
= β(1 − α⁴), and α⁴ = e^{−2∫β}: the paper's diffusion. σ ≤ √(1 − α²), hence "sub"-VP; α² + σ² < 1 inside (0, 1).

λ = log α − log(1 − α²) has a closed-form inverse: with r = e^λ, α solves r α² + α − r = 0, so
α = 2r/(1 + √(1 + 4r²)), i.e. −log α = asinh(e^{−λ}/2); then c = −2 log α and t = 2c/(β_min + √(β_min² + 2(β_max − β_min)c)) as
for VP linear. Defaults β_min = 0.1, β_max = 20, t_min = 1e-3 (score SDE); prior N(0, σ(1)² I)
with σ(1) = 1 − e^{−10.05} ≈ 0.99996 and prior leak α(1) ≈ 6.6e-3.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.schedules.vp import VPLinearSchedule


class SubVPSchedule(VPLinearSchedule):
    """Sub-VP: α and β(t) as VP linear (β_min → β_max), σ = 1 − α² (Song et al. 2021)."""

    def sigma(self, t: Tensor) -> Tensor:
        return -torch.expm1(2.0 * self.log_alpha(t))  # 1 − α², accurate near t = 0

    def sigma_dot(self, t: Tensor) -> Tensor:
        # d(1 − α²)/dt = −2αα̇ = β α²
        return self.beta(t) * torch.exp(2.0 * self.log_alpha(t))

    def drift(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def diffusion2(self, t: Tensor) -> Tensor:
        return -self.beta(t) * torch.expm1(4.0 * self.log_alpha(t))  # β(1 − α⁴)

    def log_snr(self, t: Tensor) -> Tensor:
        la = self.log_alpha(t)
        return la - torch.log(-torch.expm1(2.0 * la))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        # α = 2r/(1 + √(1 + 4r²)) with r = e^λ  ⇔  −log α = asinh(1/(2r)) (no cancellation as α → 1)
        return self.t_from_neg_log_alpha2(2.0 * torch.asinh(0.5 * torch.exp(-lam)))
