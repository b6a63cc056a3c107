"""DDPM ancestral sampling (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", Alg. 2),
for any schedule (α, σ) and any time grid, with the respacing of improved DDPM (Nichol & Dhariwal
2021, "Improved Denoising Diffusion Probabilistic Models", §4: sample on a subsequence of the
training timesteps with the betas recomputed from the subsequence).

Between consecutive grid times s < t the forward process has the Gaussian transition

    x_t | x_s ~ N(α_{t|s} x_s, σ_{t|s}² I),   α_{t|s} = α_t/α_s,   σ_{t|s}² = σ_t² − α_{t|s}² σ_s²
                                                                   = σ_t² (1 − e^{−2(λ_s − λ_t)}),

(λ = log α/σ; the second form is what we compute, with expm1, so fine grids lose no digits), and
the posterior given x̂_0 = E[x_0 | x_t] is

    q(x_s | x_t, x̂_0) = N(μ, Σ),   μ = (α_s σ_{t|s}²/σ_t²) x̂_0 + (α_{t|s} σ_s²/σ_t²) x_t.

One ancestral step draws x_s = μ + √Σ z with the variance

    "small"    Σ = β̃ = σ_{t|s}² σ_s²/σ_t²          (the true posterior variance; DDPM's σ_t² = β̃_t)
    "large"    Σ = β = σ_{t|s}²                      (DDPM's σ_t² = β_t)
    "learned"  log Σ = ν log β + (1 − ν) log β̃        (improved DDPM Eq. 15, ν = pred.var_interp)

On the full grid of a discrete schedule (t_i = i/T) these are exactly DDPM's β_t and β̃_t; on a
sub-grid they are the respaced ones. With "small" this is DDIM with η = 1 (``ddim.ddim_step``).
``clip_x0`` clips x̂_0 to [−1, 1] before forming μ, as DDPM does for images. The last step goes to
the grid's terminal 0, where α = 1, σ = 0: the posterior mean is x̂_0 and no noise is added.
All coefficients are computed in float64 from the schedule; noise comes only from ``generator``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.samplers.base import progress_steps, register
from diffusion_lab.samplers.exponential import is_terminal

VARIANCES = ("small", "large", "learned")


def transition(schedule, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """(α_{t|s}, r) for s < t, with r = 1 − e^{−2(λ_s − λ_t)} = σ_{t|s}²/σ_t² ∈ (0, 1].

    Then σ_{t|s}² = r σ_t², the posterior variance β̃ = r σ_s², and the posterior mean is
    μ = α_s r x̂_0 + (α_s/α_t)(1 − r) x_t. Computed with expm1 in the dtype of t (float64)."""
    a_t, a_s = schedule.alpha(t), schedule.alpha(s)
    r = -torch.expm1(2.0 * (schedule.log_snr(t) - schedule.log_snr(s)))
    return a_t / a_s, r


def posterior_step(schedule, x: Tensor, x0: Tensor, t: Tensor, s: Tensor, variance: str = "small",
                   var_interp: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """One ancestral step x_t → x_s ~ q(x_s | x_t, x̂_0) with the chosen variance (see module doc)."""
    if variance not in VARIANCES:
        raise ValueError(f"unknown DDPM variance {variance!r}; choose one of {VARIANCES}.")
    a_t, a_s = schedule.alpha(t), schedule.alpha(s)
    s_t, s_s = schedule.sigma(t), schedule.sigma(s)
    _, r = transition(schedule, t, s)
    mean = (a_s * r) * x0 + ((a_s / a_t) * (1.0 - r)) * x
    small, large = r * s_s * s_s, r * s_t * s_t
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    if variance == "small":
        return mean + torch.sqrt(small) * z
    if variance == "large":
        return mean + torch.sqrt(large) * z
    if var_interp is None:
        raise ValueError("variance='learned' needs a model with learned variances (Denoiser(learned_variance=True)); "
                         "this denoiser's predictions carry no var_interp.")
    nu = var_interp.to(x.dtype)
    log_var = nu * torch.log(large) + (1.0 - nu) * torch.log(small)
    return mean + torch.exp(0.5 * log_var) * z


@register("ddpm", stochastic=True, order=1, nfe_per_step=1, default_grid="auto",
          description="DDPM ancestral sampling (posterior q(x_s|x_t, x̂0) on any grid; small/large/learned variance)")
def sample_ddpm(denoiser, x: Tensor, grid: Tensor, *, variance: str = "small", clip_x0: bool = False,
                generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2) with respacing (Nichol & Dhariwal 2021).

    Each step t → s draws x_s ~ N(μ, Σ) with μ = (α_s σ_{t|s}²/σ_t²) x̂_0 + (α_{t|s} σ_s²/σ_t²) x_t and
    Σ the ``variance`` ("small" β̃, "large" β, "learned"); the terminal step returns x̂_0."""
    if variance not in VARIANCES:
        raise ValueError(f"unknown DDPM variance {variance!r}; choose one of {VARIANCES}.")
    sch = denoiser.schedule
    for _, t, s in progress_steps(grid, progress, "ddpm"):
        pred = denoiser(x, t)
        x0 = pred.x0.clamp(-1.0, 1.0) if clip_x0 else pred.x0
        if is_terminal(s, sch):
            return x0
        x = posterior_step(sch, x, x0, t, s, variance, pred.var_interp, generator)
    return x
