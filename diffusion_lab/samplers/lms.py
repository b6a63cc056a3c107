"""Linear multistep samplers in σ̃: LMS (variable-step Adams–Bashforth) and iPNDM (fixed coefficients).

Both integrate EDM's form of the probability-flow ODE, dx̃/dσ̃ = ε̂ with x̃ = x/α, σ̃ = σ/α
(Karras et al. 2022, Eq. 4), with one network call per step and the last m predictions
d_j = ε̂(x̃_{i−j}, σ̃_{i−j}), m = min(order, i + 1) (warm-up with lower orders):

* ``lms``    the Adams–Bashforth step on the actual non-uniform nodes (``adams``):
                 x̃_{i+1} = x̃_i + Σ_j w_j d_j,   w_j = ∫_{σ̃_i}^{σ̃_{i+1}} ℓ_j(τ) dτ,
             k-diffusion's ``sample_lms`` (Crowson 2022; Hairer, Nørsett & Wanner 1993, §III.5 on
             variable steps) and DEIS's ρAB (Zhang & Chen 2023). Orders 1–4 (default 4); order 1
             is Euler in σ̃ = DDIM(η=0).
* ``ipndm``  improved PNDM (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential
             Integrator", where it is introduced next to DEIS; Zhou et al. 2024, "Fast ODE-based Sampling for Diffusion
             Models in Around 5 Steps", the strongest training-free baseline there): the Adams–Bashforth
             coefficients of *equal* steps applied to the actual step Δ_i = σ̃_{i+1} − σ̃_i,
                 order 1: x̃ + Δ d_0            order 2: x̃ + Δ (3d_0 − d_1)/2
                 order 3: x̃ + Δ (23d_0 − 16d_1 + 5d_2)/12
                 order 4: x̃ + Δ (55d_0 − 59d_1 + 37d_2 − 9d_3)/24
             (default 3: the most accurate at NFE 10–20, experiments/sampler_accuracy/DEFAULTS.md).
             On a grid that is a smooth image of a uniform one (Karras' ρ-grid, λ-uniform) the step
             ratios are 1 + O(Δ) and the fixed coefficients keep second order; beyond that the order is
             measured (``tests/test_sampler_orders.py``); the variable-step version is ``lms``.

Both are explicit, so the last interval [σ̃_min, 0] is one more step through the predictions already
made (no call below t_min): for both it is the variable-step Adams step of ``adams``, because the
equal-step coefficients of iPNDM would be wrong there (that interval is much longer, relative to σ̃,
than the one before it; with them the error stays at the level of the denoising jump).
``terminal="denoise"`` replaces it by the jump x̂_0(x, t_min).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.samplers.adams import Tail, check_terminal
from diffusion_lab.samplers.defaults import ODE_GRIDS
from diffusion_lab.samplers.base import progress_steps, register
from diffusion_lab.samplers.exponential import is_terminal, node

#: Adams–Bashforth coefficients for equal steps, most recent derivative first
IPNDM_COEFFS = {
    1: (1.0,),
    2: (3.0 / 2.0, -1.0 / 2.0),
    3: (23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0),
    4: (55.0 / 24.0, -59.0 / 24.0, 37.0 / 24.0, -9.0 / 24.0),
}


def _check_order(name: str, order: int) -> int:
    if int(order) != order or not 1 <= order <= 4:
        raise ValueError(f"{name} order must be 1, 2, 3 or 4, got {order}.")
    return int(order)


@register("lms", stochastic=False, order=4, nfe_per_step=1, default_grid=ODE_GRIDS["lms"],
          description="linear multistep (Adams–Bashforth) in σ̃, orders 1–4 (k-diffusion's LMS)")
def sample_lms(denoiser, x: Tensor, grid: Tensor, *, order: int = 4, terminal: str = "multistep",
               terminal_reach: float | None = None,
               generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
    """Variable-step Adams–Bashforth of order ``order`` on dx̃/dσ̃ = ε̂, 1 NFE per step."""
    order = _check_order("lms", order)
    check_terminal(terminal)
    sch = denoiser.schedule
    tail = Tail(order, terminal_reach)
    cur = node(sch, grid[0])
    for _, _, s in progress_steps(grid, progress, "lms"):
        tail.add(cur, denoiser(x, cur.t))
        if is_terminal(s, sch):
            return tail.finish(x, cur, terminal, order)
        nxt = node(sch, s)
        x = nxt.alpha * tail.adams(x, cur, nxt.sigma_tilde, order)
        cur = nxt
    return x


@register("ipndm", stochastic=False, order=3, nfe_per_step=1, default_grid=ODE_GRIDS["ipndm"],
          description="improved PNDM: equal-step Adams–Bashforth coefficients in σ̃, orders 1–4 (default 3)")
def sample_ipndm(denoiser, x: Tensor, grid: Tensor, *, order: int = 3, terminal: str = "multistep",
                 terminal_reach: float | None = 2.0,
                 generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
    """iPNDM (Zhang & Chen 2023): x̃_{i+1} = x̃_i + Δ_i Σ_j c_j d_j with the equal-step AB coefficients."""
    order = _check_order("ipndm", order)
    check_terminal(terminal)
    sch = denoiser.schedule
    tail = Tail(order, terminal_reach)
    ds: list[Tensor] = []  # most recent first
    cur = node(sch, grid[0])
    for _, _, s in progress_steps(grid, progress, "ipndm"):
        pred = denoiser(x, cur.t)
        tail.add(cur, pred)
        if is_terminal(s, sch):
            return tail.finish(x, cur, terminal, order)
        ds = [pred.eps] + ds[: order - 1]
        nxt = node(sch, s)
        x_tilde = x / cur.alpha
        delta = nxt.sigma_tilde - cur.sigma_tilde
        for c, d in zip(IPNDM_COEFFS[len(ds)], ds):
            x_tilde = x_tilde + (delta * c) * d
        x = nxt.alpha * x_tilde
        cur = nxt
    return x
