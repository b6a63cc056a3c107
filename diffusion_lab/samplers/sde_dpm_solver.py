"""SDE-DPM-Solver++(2M) (Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models", §4 / App. on the SDE solvers): a second-order multistep solver of the
reverse SDE in data-prediction form, for any schedule.

Derivation (ours). With ŝ = (α x̂_0 − x)/σ² and g² = −2σ² dλ/dt, the reverse SDE
dx = [f x − g² ŝ] dt + g dW̄ is linear in x with coefficient f + g²/σ² = 2σ̇/σ − α̇/α. Variation of
constants from t to s < t (h = λ_s − λ_t > 0) gives the exact solution

    x_s = (σ_s/σ_t) e^{−h} x_t + 2 α_s ∫_0^h e^{−2(h−u)} x̂_0(λ_t + u) du + σ_s √(1 − e^{−2h}) z,

the noise term being exact (its variance is ∫ Φ² g² = σ_s²(1 − e^{−2h})). Expanding x̂_0 about λ_t,
x̂_0(λ_t + u) = Σ_k u^k x̂_0^{(k)}/k!, and 2∫_0^h e^{−2(h−u)} u^k/k! du = 2h^{k+1} φ_{k+1}(−2h)
(φ-functions of ``exponential``) give, with d_k = h^k x̂_0^{(k)}(λ_t),

    x_s = (σ_s/σ_t) e^{−h} x_t + α_s (1 − e^{−2h}) x̂_0 + α_s · 2h φ_2(−2h) · d_1 + σ_s √(1 − e^{−2h}) z,
    2h φ_2(−2h) = 1 − (1 − e^{−2h})/(2h).

First order (d_1 dropped) is DDPM's posterior step with the small variance (= DDIM η=1). The
multistep estimate is d_1 = (h/h_prev)(x̂_0(t) − x̂_0(t_prev)) from the previous step's prediction
(first step: first order). ``solver_type="midpoint"`` uses the coefficient ½(1 − e^{−2h}) instead
of 2hφ_2(−2h) (DPM-Solver++'s second-order "midpoint" form; the two agree to leading order in h).
The terminal step (to the grid's 0, λ = ∞) returns x̂_0. One network call per step; coefficients in
float64; noise only from ``generator``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion_lab.samplers.base import progress_steps, register
from diffusion_lab.samplers.exponential import is_terminal, node, phi, taylor_terms

SOLVER_TYPES = ("taylor", "midpoint")


@register("sde_dpm_solver_pp_2m", stochastic=True, order=2, nfe_per_step=1, default_grid="lambda",
          description="SDE-DPM-Solver++(2M) (Lu et al. 2022b): data-prediction SDE solver, 2nd-order multistep")
def sample_sde_dpm_solver_pp_2m(denoiser, x: Tensor, grid: Tensor, *, solver_type: str = "taylor",
                                generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
    """SDE-DPM-Solver++(2M): x_s = (σ_s/σ_t)e^{−h} x_t + α_s(1 − e^{−2h}) x̂_0 + α_s c_2 d_1 + σ_s√(1 − e^{−2h}) z,
    with d_1 from the previous prediction (none on the first step); the terminal step returns x̂_0."""
    if solver_type not in SOLVER_TYPES:
        raise ValueError(f"unknown solver_type {solver_type!r}; choose one of {SOLVER_TYPES}.")
    prev_x0: Tensor | None = None
    prev_h = 0.0
    for _, t, s in progress_steps(grid, progress, "sde_dpm_solver_pp_2m"):
        x0 = denoiser(x, t).x0
        if is_terminal(s, denoiser.schedule):
            return x0
        cur, nxt = node(denoiser.schedule, t), node(denoiser.schedule, s)
        h = nxt.lam - cur.lam
        one_minus = -math.expm1(-2.0 * h)  # 1 − e^{−2h}
        out = (nxt.sigma / cur.sigma * math.exp(-h)) * x + (nxt.alpha * one_minus) * x0
        if prev_x0 is not None:
            (_, d1) = taylor_terms(x0, [-prev_h / h], [prev_x0])
            c2 = 2.0 * h * phi(2, -2.0 * h) if solver_type == "taylor" else 0.5 * one_minus
            out = out + (nxt.alpha * c2) * d1
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = out + (nxt.sigma * math.sqrt(one_minus)) * z
        prev_x0, prev_h = x0, h
    return x
