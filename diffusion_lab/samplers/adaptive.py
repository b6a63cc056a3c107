"""Adaptive Dormand–Prince 5(4) on the probability-flow ODE, through torchdiffeq
(Dormand & Prince 1980; Chen et al. 2018, torchdiffeq). The score-SDE paper samples its ODE this
way (Song et al. 2021, RK45 with rtol = atol = 1e-5).

Integration variable: the log-SNR λ = log(α/σ), from λ(t_max) up to λ(t_min), with the state x:

    dx/dλ = (dx/dt)/(dλ/dt) = û(x, t(λ)) / λ̇(t),       û = α̇ x̂_0 + σ̇ ε̂,  λ̇ = α̇/α − σ̇/σ.

Why λ: in x̃ = x/α the same ODE reads dx̃/dλ = x̂_0 − x̃, whose Jacobian ∂x̂_0/∂x̃ − I has
eigenvalues in [−1, 0] for Gaussian data (∂x̂_0/∂x̃ = Σ(Σ + σ̃²)^{-1}): the ODE is non-stiff and
equally curved over the whole range, whereas in t or σ̃ the right-hand side scales like 1/σ̃ and
varies over many orders of magnitude near t_min (the step-size controller then spends most
evaluations there). We keep x (not x̃) as the state so that atol is in the data's own units for
every schedule (x̃ grows like σ̃ ≈ 150 at t_max on VP).

Options: ``rtol``, ``atol`` (default 1e-5 each, as score SDE), ``method`` (any torchdiffeq
method, default "dopri5"). The error norm is torchdiffeq's RMS over the whole batch, so the batch
shares its step sizes. Only the grid's first point and its last positive point are used
(so any ``steps`` ≥ 2 gives the same result: t_max → t_min; with steps = 1 and the terminal step the
grid is [t_max, 0] and only the denoising step remains); a terminal 0 in the grid adds one
denoising step x ← x̂_0(x, t_min) (an adaptive one-step solver keeps no history for the Adams last
step of ``adams``, and asking it for σ̃ < σ̃(t_min) would query the network outside its range). The
NFE is whatever the denoiser counted (the ``Sampler`` runner reports it): torchdiffeq's initial
step selection costs 2 calls, then 6 per accepted or rejected step (FSAL).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.samplers.defaults import ODE_GRIDS
from diffusion_lab.samplers.base import register
from diffusion_lab.samplers.exponential import is_terminal, lambda_rate


_ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


@register("dopri5", stochastic=False, order=5, nfe_per_step=6, default_grid=ODE_GRIDS["dopri5"],
          description="adaptive Dormand–Prince 5(4) in λ via torchdiffeq (NFE counted)")
def sample_dopri5(denoiser, x: Tensor, grid: Tensor, *, rtol: float = 1e-5, atol: float = 1e-5,
                  method: str = "dopri5", generator: torch.Generator | None = None,
                  progress: bool = False) -> Tensor:
    """Adaptive PF-ODE solve in λ from grid[0] to the last positive grid time (module docstring)."""
    from torchdiffeq import odeint

    sch = denoiser.schedule
    terminal = is_terminal(grid[-1], sch)
    t_end = grid[-2] if terminal else grid[-1]
    t_span = torch.stack([grid[0], t_end]).to(torch.float64)
    lam_span = sch.log_snr(t_span).to(device=x.device)

    def rhs(lam: Tensor, y: Tensor) -> Tensor:
        t = sch.t_from_log_snr(lam.to(torch.float64).cpu()).clamp(float(t_end), float(grid[0]))
        pred = denoiser(y, t.to(y.device))
        rate = lambda_rate(sch, t)
        return pred.velocity / float(rate)

    if float(lam_span[0]) != float(lam_span[1]):
        # step_t: the last step lands exactly on λ(t_end) instead of overshooting and interpolating
        # (the dense-output interpolant is only 4th order, and past λ(t_end) t leaves the schedule)
        options = {"step_t": lam_span[1:]} if method in _ADAPTIVE else None
        x = odeint(rhs, x, lam_span, rtol=rtol, atol=atol, method=method, options=options)[-1]
    if terminal:
        return denoiser(x, t_end).x0
    return x
