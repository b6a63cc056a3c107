"""EDM's stochastic sampler (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models", Alg. 2), for any schedule, in the scaled coordinates x̃ = x/α, σ̃ = σ/α where
every schedule's probability-flow ODE reads dx̃/dσ̃ = (x̃ − x̂_0)/σ̃ (EDM's α = 1 case).

Grid σ̃_0 > ... > σ̃_{N−1} > σ̃_N = 0 (the grid's terminal 0). Step i:

    γ_i = min(S_churn/N, √2 − 1) if S_min ≤ σ̃_i ≤ S_max else 0
    σ̂ = σ̃_i (1 + γ_i),    x̂ = x̃_i + √(σ̂² − σ̃_i²) S_noise z                 ("churn": add noise)
    d = (x̂ − x̂_0(x̂; σ̂))/σ̂,   x̃_{i+1} = x̂ + (σ̃_{i+1} − σ̂) d                   (Euler)
    if σ̃_{i+1} ≠ 0:  d' = (x̃_{i+1} − x̂_0(x̃_{i+1}; σ̃_{i+1}))/σ̃_{i+1},
                      x̃_{i+1} = x̂ + (σ̃_{i+1} − σ̂)(d + d')/2                     (Heun correction)

so the last step (to σ̃ = 0) is Euler and returns x̂_0(x̂; σ̂). The network is queried at
x = α(t̂) x̂ and t̂ = t(σ̂) (the schedule's inverse of σ̃). One departure from the paper, which had
α = 1 and σ unbounded: σ̂ is capped at σ̃(t_max), so the network is never asked about times outside
the schedule's range (for rectified flow α < 0 beyond t = 1). S_churn = 0 gives EDM's deterministic
Heun sampler (Alg. 1). Defaults S_churn = 40, S_min = 0.05, S_max = 50 are EDM's ImageNet-64
settings; S_noise defaults to 1 (exact: EDM's 1.003 compensates imperfect networks). NFE: 2 per
step, 1 on the last, 2N − 1 in all. State and coefficients in float64 (the dtype of x).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion_lab.samplers.base import progress_steps, register
from diffusion_lab.samplers.exponential import is_terminal


@register("edm_stochastic", stochastic=True, order=2, nfe_per_step=2, default_grid="karras",
          description="EDM stochastic sampler (Karras et al. 2022, Alg. 2): churn + Heun in σ̃")
def sample_edm_stochastic(denoiser, x: Tensor, grid: Tensor, *, S_churn: float = 40.0, S_min: float = 0.05,
                          S_max: float = 50.0, S_noise: float = 1.0, generator: torch.Generator | None = None,
                          progress: bool = False) -> Tensor:
    """EDM Alg. 2 in σ̃ = σ/α: churn σ̃_i → σ̂ = σ̃_i(1 + γ_i) with fresh noise, then a Heun step to σ̃_{i+1}
    (Euler on the last step, which returns x̂_0)."""
    sch = denoiser.schedule
    num_steps = len(grid) - 1
    gamma_max = min(S_churn / num_steps, math.sqrt(2.0) - 1.0) if num_steps > 0 else 0.0
    st_cap = float(sch.sigma_tilde(torch.tensor(sch.t_max, dtype=torch.float64)))

    def x0_at(xt: Tensor, t: Tensor) -> Tensor:
        return denoiser(sch.alpha(t).to(xt.dtype) * xt, t).x0

    xt = x / sch.alpha(grid[0]).to(x.dtype)
    for _, t, s in progress_steps(grid, progress, "edm_stochastic"):
        sig = sch.sigma_tilde(t)
        gamma = gamma_max if S_min <= float(sig) <= S_max else 0.0
        sig_hat = torch.clamp(sig * (1.0 + gamma), max=max(st_cap, float(sig)))
        if sig_hat > sig:
            t_hat = sch.t_from_sigma_tilde(sig_hat)
            z = torch.randn(xt.shape, generator=generator, dtype=xt.dtype, device=xt.device)
            xt = xt + torch.sqrt(sig_hat * sig_hat - sig * sig) * S_noise * z
        else:
            sig_hat, t_hat = sig, t
        x0 = x0_at(xt, t_hat)
        if is_terminal(s, sch):
            return x0  # Euler to σ̃ = 0: x̂ + (0 − σ̂)(x̂ − x̂_0)/σ̂ = x̂_0
        sig_next = sch.sigma_tilde(s)
        d = (xt - x0) / sig_hat
        x_next = xt + (sig_next - sig_hat) * d
        d2 = (x_next - x0_at(x_next, s)) / sig_next
        xt = xt + (sig_next - sig_hat) * 0.5 * (d + d2)
    return sch.alpha(grid[-1]).to(xt.dtype) * xt
