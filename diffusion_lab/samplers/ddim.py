"""DDIM (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models", Eq. 12), for any (α, σ).

From t to s < t with predictions (x̂_0, ε̂) at (x_t, t):

    x_s = α_s x̂_0 + √(σ_s² − c²) ε̂ + c z,      c = η σ_s √(1 − e^{−2(λ_s − λ_t)}),   z ~ N(0, I),

where e^{−2(λ_s−λ_t)} = (α_t σ_s / (α_s σ_t))². For VP schedules c is DDIM's σ_t(η); η = 0 is the
deterministic DDIM, which is exactly Euler's method for the probability-flow ODE in x̃ = x/α,
σ̃ = σ/α (dx̃/dσ̃ = (x̃ − x̂_0)/σ̃) and DPM-Solver-1 (Lu et al. 2022). η = 1 on the full grid is
DDPM ancestral sampling with the posterior variance β̃. The step to s = 0 (the grid's terminal 0)
returns x̂_0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.samplers.defaults import ODE_GRIDS
from diffusion_lab.samplers.base import progress_steps, register


def ddim_step(x: Tensor, pred_x0: Tensor, pred_eps: Tensor, a_t: Tensor, s_t: Tensor, a_s: Tensor, s_s: Tensor,
              eta: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """One DDIM step with predictions already made (shared with samplers that reuse it)."""
    if eta == 0.0:
        return a_s * pred_x0 + s_s * pred_eps
    ratio = (a_t * s_s) / (a_s * s_t)
    c = eta * s_s * torch.sqrt(torch.clamp(1.0 - ratio * ratio, min=0.0))
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return a_s * pred_x0 + torch.sqrt(torch.clamp(s_s * s_s - c * c, min=0.0)) * pred_eps + c * z


@register("ddim", stochastic=False, order=1, nfe_per_step=1, default_grid=ODE_GRIDS["ddim"],
          description="DDIM; eta=0 is deterministic (PF-ODE Euler in σ̃), eta>0 adds noise")
def sample_ddim(denoiser, x: Tensor, grid: Tensor, *, eta: float = 0.0, clip_x0: bool = False,
                generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
    """DDIM with stochasticity η (η=0: deterministic)."""
    sch = denoiser.schedule
    for _, t, s in progress_steps(grid, progress, "ddim"):
        pred = denoiser(x, t)
        x0 = pred.x0.clamp(-1, 1) if clip_x0 else pred.x0
        if s == 0:
            return x0
        a_t, s_t, a_s, s_s = sch.alpha(t), sch.sigma(t), sch.alpha(s), sch.sigma(s)
        eps = (x - a_t * x0) / s_t if clip_x0 else pred.eps
        x = ddim_step(x, x0, eps, a_t, s_t, a_s, s_s, eta, generator)
    return x
