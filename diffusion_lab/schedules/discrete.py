"""Discrete-time VP schedules given by a sequence β_1..β_T (Ho et al. 2020, "Denoising Diffusion
Probabilistic Models"; Nichol & Dhariwal 2021, "Improved DDPM").

The discrete chain q(x_i | x_{i-1}) = N(√(1 − β_i) x_{i-1}, β_i I) has the marginals

    x_i = √ᾱ_i x_0 + √(1 − ᾱ_i) ε,      ᾱ_i = Π_{j≤i} (1 − β_j),   ᾱ_0 = 1,

which we place on the time grid t_i = i/T (i = 0..T). So α(t_i) = √ᾱ_i and σ(t_i) = √(1 − ᾱ_i):
discrete-time DDPM *is* this schedule read on the grid (step i ↔ t = i/T).

Between grid points the schedule is read continuously by piecewise-linear interpolation of log ᾱ
in t, as DPM-Solver does for discrete-time models (Lu et al. 2022):

    log ᾱ(t) = log ᾱ_i + (tT − i)(log ᾱ_{i+1} − log ᾱ_i),    t ∈ [i/T, (i+1)/T].

On each segment β(t) := −d log ᾱ/dt = −T log(1 − β_{i+1}) is constant (≈ T β_{i+1}), so the forward
SDE is the VP SDE dx = −½β(t) x dt + √β(t) dW with a piecewise-constant β(t); f = −½β, g² = β.
Derivatives are one-sided at the grid points (the right segment's slope, robust to rounding of i/T;
the last segment's at t = 1).
λ(t) = ½ log ᾱ − ½ log(1 − ᾱ) is strictly decreasing, and its inverse is exact: log ᾱ = log
sigmoid(2λ), then a search among the knots and a linear solve on the segment.

Range: t_min = 1/T (the first noisy step; ᾱ_0 = 1 gives σ = 0 at t = 0), t_max = 1 (step T). The
VLB and ancestral-sampling code reads ``betas`` and ``alphas_cumprod`` (float64, length T, entry
i−1 for step i) directly.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from diffusion_lab.schedules.base import Schedule
from diffusion_lab.schedules.cosine import cosine_alpha_bar


class DiscreteSchedule(Schedule):
    """VP schedule from a β sequence of any length T ≥ 1, read on t_i = i/T and interpolated
    log-linearly in ᾱ between grid points (see the module docstring)."""

    def __init__(self, betas: Sequence[float] | Tensor):
        b = torch.as_tensor(betas, dtype=torch.float64).detach().clone()
        if b.dim() != 1 or b.numel() < 1:
            raise ValueError(f"DiscreteSchedule needs a 1-D sequence of at least one β, got shape {tuple(b.shape)}.")
        if not bool(((b > 0) & (b < 1)).all()):
            bad = b[~((b > 0) & (b < 1))]
            raise ValueError(
                f"DiscreteSchedule needs every β in the open interval (0, 1), got {bad[:5].tolist()}; "
                "clip the β sequence (improved DDPM clips at 0.999)."
            )
        T = b.numel()
        self.num_timesteps = T
        self.betas = b
        log_ab = torch.cumsum(torch.log1p(-b), dim=0)
        self.alphas_cumprod = torch.exp(log_ab)
        #: log ᾱ at the knots t_i = i/T, i = 0..T (log ᾱ_0 = 0)
        self._log_ab = torch.cat([torch.zeros(1, dtype=torch.float64), log_ab])
        self.t_min, self.t_max = 1.0 / T, 1.0

    # --------------------------------------------------------------- log ᾱ(t) and its slope
    def _segment(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(segment index i, log ᾱ_i, log ᾱ_{i+1} − log ᾱ_i) for each t, in t's dtype/device."""
        T = self.num_timesteps
        dtype = t.dtype if t.is_floating_point() else torch.float64
        table = self._log_ab.to(device=t.device, dtype=dtype)
        # a t that is a grid point up to rounding (|tT − i| ≲ eps·T) belongs to the right segment, so
        # the one-sided derivatives do not depend on how i/T was rounded (float32 vs float64)
        tol = 4.0 * torch.finfo(dtype).eps * T
        i = torch.clamp(torch.floor(t.detach() * T + tol), 0, T - 1).long()
        lo = table[i]
        return i, lo, table[i + 1] - lo

    def log_alpha_bar(self, t: Tensor) -> Tensor:
        """log ᾱ(t), piecewise linear in t through the knots (i/T, log ᾱ_i)."""
        i, lo, d = self._segment(t)
        return lo + (t * self.num_timesteps - i.to(t.dtype)) * d

    def beta(self, t: Tensor) -> Tensor:
        """β(t) = −d log ᾱ/dt (constant on each segment; the right segment at grid points)."""
        _, _, d = self._segment(t)
        return -d * self.num_timesteps

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(0.5 * self.log_alpha_bar(t))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(self.log_alpha_bar(t)))

    def alpha_dot(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t) * self.alpha(t)

    def sigma_dot(self, t: Tensor) -> Tensor:
        la = self.log_alpha_bar(t)
        return 0.5 * self.beta(t) * torch.exp(la) / torch.sqrt(-torch.expm1(la))

    def drift(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def diffusion2(self, t: Tensor) -> Tensor:
        return self.beta(t)

    def log_snr(self, t: Tensor) -> Tensor:
        la = self.log_alpha_bar(t)
        return 0.5 * la - 0.5 * torch.log(-torch.expm1(la))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        """Exact inverse of λ on [0, 1]; λ below λ(1) gives t = 1 (λ → +∞ gives t → 0)."""
        T = self.num_timesteps
        lam64 = lam.detach().to(torch.float64)
        target = torch.nn.functional.logsigmoid(2.0 * lam64)  # log ᾱ = log sigmoid(2λ)
        knots = self._log_ab.to(lam64.device)
        # first knot j with log ᾱ_j <= target (knots decrease); the segment is [j−1, j]
        j = torch.searchsorted(-knots, -target.contiguous())
        i = torch.clamp(j - 1, 0, T - 1)
        lo, hi = knots[i], knots[i + 1]
        t = (i.to(torch.float64) + (target - lo) / (hi - lo)) / T
        return torch.clamp(t, 0.0, 1.0).to(lam.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(T={self.num_timesteps})"


class DDPMLinearSchedule(DiscreteSchedule):
    """DDPM's linear β schedule (Ho et al. 2020): β_i = linspace(β_start, β_end, T), 1e-4 → 0.02 at
    T = 1000.

    For T ≠ 1000 the endpoints are multiplied by 1000/T when ``scale_with_T`` (improved DDPM's
    convention, Nichol & Dhariwal 2021), which keeps Σβ ≈ ∫β dt and hence the continuous-time
    schedule (and the prior leak α(1) ≈ 6.4e-3) nearly independent of T. Pass ``scale_with_T=False``
    to use β_start, β_end as given for any T.
    """

    def __init__(
        self,
        num_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        scale_with_T: bool = True,
    ):
        if int(num_timesteps) != num_timesteps or num_timesteps < 1:
            raise ValueError(f"DDPMLinearSchedule needs an integer num_timesteps >= 1, got {num_timesteps}.")
        if not 0 < beta_start <= beta_end:
            raise ValueError(
                f"DDPMLinearSchedule needs 0 < beta_start <= beta_end, got beta_start={beta_start}, beta_end={beta_end}."
            )
        T = int(num_timesteps)
        scale = 1000.0 / T if scale_with_T else 1.0
        b0, b1 = beta_start * scale, beta_end * scale
        if b1 >= 1:
            raise ValueError(
                f"DDPMLinearSchedule: beta_end·1000/T = {b1:.4g} >= 1 for T={T}; use more timesteps "
                "(T > 1000·beta_end) or scale_with_T=False."
            )
        self.beta_start, self.beta_end, self.scale_with_T = float(beta_start), float(beta_end), bool(scale_with_T)
        super().__init__(torch.linspace(b0, b1, T, dtype=torch.float64))

    def __repr__(self) -> str:
        return (
            f"DDPMLinearSchedule(T={self.num_timesteps}, beta_start={self.beta_start}, beta_end={self.beta_end}, "
            f"scale_with_T={self.scale_with_T})"
        )


class CosineDiscreteSchedule(DiscreteSchedule):
    """Improved DDPM's cosine schedule on T steps (Nichol & Dhariwal 2021, Eq. 17):
    ᾱ(t) = f(t)/f(0), f(t) = cos²((t + s)/(1 + s)·π/2), s = 0.008, and
    β_i = min(1 − ᾱ(i/T)/ᾱ((i−1)/T), max_beta) with max_beta = 0.999.

    The paper trains with T = 4000; the default here is T = 1000 (configurable). Away from the last
    few steps (where the clip at 0.999 binds) ᾱ_i equals the continuous ``VPCosineSchedule`` at i/T.
    """

    def __init__(self, num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999):
        if int(num_timesteps) != num_timesteps or num_timesteps < 1:
            raise ValueError(f"CosineDiscreteSchedule needs an integer num_timesteps >= 1, got {num_timesteps}.")
        if not s > 0:
            raise ValueError(f"CosineDiscreteSchedule needs an offset s > 0, got s={s}; the paper uses 0.008.")
        if not 0 < max_beta < 1:
            raise ValueError(f"CosineDiscreteSchedule needs 0 < max_beta < 1, got max_beta={max_beta}; the paper uses 0.999.")
        T = int(num_timesteps)
        self.s, self.max_beta = float(s), float(max_beta)
        ab = cosine_alpha_bar(torch.arange(T + 1, dtype=torch.float64) / T, self.s)
        betas = torch.clamp(1.0 - ab[1:] / ab[:-1], max=self.max_beta)
        super().__init__(betas)

    def __repr__(self) -> str:
        return f"CosineDiscreteSchedule(T={self.num_timesteps}, s={self.s}, max_beta={self.max_beta})"


__all__ = ["DiscreteSchedule", "DDPMLinearSchedule", "CosineDiscreteSchedule"]
