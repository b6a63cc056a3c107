"""DDPM ancestral sampling (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", Alg. 2),
for any schedule (α, σ) and any time grid, with the respacing of improved DDPM (Nichol & Dhariwal
2021, "Improved Denoising Diffusion Probabilistic Models", §4: sample on a subsequence of the
training timesteps with the betas recomputed from the subsequence).

Each step t → s < t draws x_s from the posterior q(x_s | x_t, x̂_0) with x̂_0 = E[x_0 | x_t] read
from the denoiser (``diffusion_lab.posterior``: the mean μ = α_s r x̂_0 + (α_s/α_t)(1 − r) x_t and
the variance "small" β̃, "large" β or "learned", improved DDPM's Eq. 15). On the full grid of a
discrete schedule (t_i = i/T) these are exactly DDPM's β_t and β̃_t; on a sub-grid they are the
respaced ones. With "small" this is DDIM with η = 1 (``ddim.ddim_step``). ``clip_x0`` clips x̂_0
to [−1, 1] before forming μ, as DDPM does for images. The last step goes to the grid's terminal 0,
where α = 1, σ = 0: the posterior mean is x̂_0 and no noise is added. All coefficients are computed
in float64 from the schedule; noise comes only from ``generator``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.posterior import VARIANCES, log_variance, posterior
from diffusion_lab.samplers.base import progress_steps, register
from diffusion_lab.samplers.exponential import is_terminal


def posterior_step(schedule, x: Tensor, x0: Tensor, t: Tensor, s: Tensor, variance: str = "small",
                   var_interp: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """One ancestral step x_t → x_s ~ N(μ(x_t, x̂_0), Σ) with the chosen variance (``posterior``)."""
    q = posterior(schedule, t, s)
    log_var = log_variance(variance, torch.log(q.beta), torch.log(q.beta_tilde),
                           None if var_interp is None else var_interp.to(x.dtype))
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return q.mean(x, x0) + torch.exp(0.5 * log_var) * z


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
