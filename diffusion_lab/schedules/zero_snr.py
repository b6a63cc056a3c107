"""Zero terminal SNR rescaling (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps
are Flawed", Algorithm 1), as a wrapper around any variance-preserving schedule.

Common schedules stop at α(1) > 0 (DDPM: √ᾱ_T ≈ 6.4e-3), so training never sees pure noise while
sampling starts from it. Lin et al. shift and scale √ᾱ so that it reaches 0 at the last step and
keeps its value at the first:

    α'(t) = c·(α(t) − α(1)),   c = α(t_min)/(α(t_min) − α(1)),      σ'(t) = √(1 − α'(t)²),

on [t_min, 1] (t_min of the base; for a discrete schedule the first step 1/T, exactly the paper's
"keep √ᾱ_1, make √ᾱ_T = 0"). Below t_min the base is used unchanged, which is continuous at t_min
because α'(t_min) = α(t_min); so α'(0) = 1 where the base has it. The result is again VP, and
α̇' = c α̇, σ̇' = −α'α̇'/σ'. λ' has an exact inverse whenever the base has one: α' = √sigmoid(2λ')
gives α = α'/c + α(1), hence the base λ, hence t.

Endpoint choice: α'(1) = 0 makes λ' = −∞, so the wrapper's range stops just below 1 to keep the
base-class invariant (λ finite on [t_min, t_max]):

* discrete base (T steps): t_max = 1 − 1/T, the last step before the pure-noise step T;
* continuous base: t_max = 1 − 1e-3.

Samplers that start from the prior N(0, σ'(t_max)² I) then ignore a leak α'(t_max) (≈ 6.5e-5 for
DDPM with T = 1000). Lin et al. also ask for v- (or x0-) prediction and trailing timestep spacing;
those live in the parameterization and grid layers. With a discrete base the wrapper exposes the
rescaled ``alphas_cumprod`` (ᾱ'_T = 0), ``betas`` (β'_T = 1) and ``num_timesteps`` for the
VLB/ancestral code.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.schedules.base import Schedule


class ZeroTerminalSNR(Schedule):
    """Lin et al. 2024's rescaling of a VP schedule ``base`` to zero terminal SNR (see module doc)."""

    def __init__(self, base: Schedule, t_max: float | None = None):
        if not isinstance(base, Schedule):
            raise ValueError(f"ZeroTerminalSNR wraps a Schedule, got {type(base).__name__}.")
        f64 = torch.float64
        probe = torch.linspace(base.t_min, 1.0, 17, dtype=f64)
        a, s = base.alpha(probe), base.sigma(probe)
        if not torch.allclose(a * a + s * s, torch.ones_like(a), atol=1e-9, rtol=0):
            raise ValueError(
                f"ZeroTerminalSNR needs a variance-preserving base (α² + σ² = 1), got {base!r}; use it with "
                "DDPM, cosine or VP schedules."
            )
        a_min = float(base.alpha(torch.tensor(base.t_min, dtype=f64)))
        a_end = float(base.alpha(torch.tensor(1.0, dtype=f64)))
        if not 0 <= a_end < a_min:
            raise ValueError(f"ZeroTerminalSNR needs α(1) < α(t_min) on the base, got α(1)={a_end}, α(t_min)={a_min}.")
        self.base = base
        self.t_min = float(base.t_min)
        T = base.num_timesteps
        self.num_timesteps = T
        if t_max is None:
            t_max = 1.0 - 1.0 / T if T is not None else 1.0 - 1e-3
        if not self.t_min < t_max < 1.0:
            raise ValueError(
                f"ZeroTerminalSNR needs t_min < t_max < 1 (α(1) = 0 makes λ infinite), got t_max={t_max} with "
                f"t_min={self.t_min}; the default is 1 − 1/T for a discrete base, 1 − 1e-3 otherwise."
            )
        self.t_max = float(t_max)
        self.alpha_end = a_end  # α(1) of the base
        self.alpha_min = a_min  # α(t_min) of the base, kept by the rescale
        self.scale = a_min / (a_min - a_end)  # c

    # ---------------------------------------------------------------- the rescaled pair
    def _inside(self, t: Tensor) -> Tensor:
        return t >= self.t_min

    def alpha(self, t: Tensor) -> Tensor:
        ab = self.base.alpha(t)
        return torch.where(self._inside(t), self.scale * (ab - self.alpha_end), ab)

    def sigma(self, t: Tensor) -> Tensor:
        # σ'² = 1 − α'² = σ² + δ(α + α') with δ = α − α' = α(1)(α(t_min) − α)/(α(t_min) − α(1)) ≥ 0:
        # no cancellation near t_min, where α' ≈ 1 (matters in float32)
        ab, sb = self.base.alpha(t), self.base.sigma(t)
        delta = self.alpha_end * (self.alpha_min - ab) / (self.alpha_min - self.alpha_end)
        inside = torch.sqrt(sb * sb + delta * (2.0 * ab - delta))
        return torch.where(self._inside(t), inside, sb)

    def alpha_dot(self, t: Tensor) -> Tensor:
        ad = self.base.alpha_dot(t)
        return torch.where(self._inside(t), self.scale * ad, ad)

    def sigma_dot(self, t: Tensor) -> Tensor:
        return -self.alpha(t) * self.alpha_dot(t) / self.sigma(t)

    def diffusion2(self, t: Tensor) -> Tensor:
        return -2.0 * self.drift(t)  # VP: g² = −2f

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        lam_min = float(self.log_snr(torch.tensor(self.t_min, dtype=torch.float64)))
        a_new = torch.sqrt(torch.sigmoid(2.0 * lam))
        a_base = a_new / self.scale + self.alpha_end
        lam_base = torch.log(a_base) - 0.5 * torch.log((1.0 - a_base) * (1.0 + a_base))
        # above λ(t_min) the base is used unchanged
        lam_base = torch.where(lam > lam_min, lam, lam_base)
        return self.base.t_from_log_snr(lam_base)

    # ---------------------------------------------------------------- discrete views
    @property
    def alphas_cumprod(self) -> Tensor:
        """ᾱ'_i = α'(i/T)², i = 1..T (float64; ᾱ'_T = 0). Only for a discrete base."""
        T = self.num_timesteps
        if T is None:
            raise AttributeError("alphas_cumprod is defined only when the base schedule is discrete.")
        sq = self.scale * (self.base.alphas_cumprod.to(torch.float64).sqrt() - self.alpha_end)
        sq[-1] = 0.0
        return sq * sq

    @property
    def betas(self) -> Tensor:
        """β'_i = 1 − ᾱ'_i/ᾱ'_{i−1} (float64; β'_T = 1). Only for a discrete base."""
        ab = self.alphas_cumprod
        prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        return 1.0 - ab / prev

    def __repr__(self) -> str:
        return f"ZeroTerminalSNR({self.base!r}, t_max={self.t_max})"
