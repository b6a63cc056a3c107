"""DPM-Solver-1/2/3: single-step exponential integrators in noise-prediction form
(Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in
Around 10 Steps", Algorithms 1–2).

Notation and the exact linear part: ``exponential`` (h = λ_s − λ_t > 0, φ-functions). With ε̂ at
(x_t, t) and intermediate points at λ_t + r h (t = t(λ), the schedule's inverse):

    DPM-Solver-1:  x_s = (α_s/α_t) x_t − σ_s (e^h − 1) ε̂_t                  (= DDIM η=0; 1 NFE)

    DPM-Solver-2 (r_1 = ½):
        u   = (α_u/α_t) x_t − σ_u (e^{r_1 h} − 1) ε̂_t                           at λ_t + r_1 h
        x_s = (α_s/α_t) x_t − σ_s (e^h − 1) ε̂_t − σ_s c · (ε̂(u) − ε̂_t)/r_1,                2 NFE
        c = ½(e^h − 1) (the paper's form, solver_type="dpm_solver", default) or
        c = (e^h − 1)/h − 1 = h φ_2(h) (solver_type="taylor").

    DPM-Solver-3 (r_1 = ⅓, r_2 = ⅔):
        u_1 = (α_1/α_t) x_t − σ_1 (e^{r_1 h} − 1) ε̂_t
        u_2 = (α_2/α_t) x_t − σ_2 (e^{r_2 h} − 1) ε̂_t − σ_2 (r_2 h) φ_2(r_2 h) · (r_2/r_1) (ε̂(u_1) − ε̂_t)
        x_s = (α_s/α_t) x_t − σ_s (e^h − 1) ε̂_t − σ_s h φ_2(h) · (ε̂(u_2) − ε̂_t)/r_2,        3 NFE

Why r_2 = ⅔ gives third order: (ε̂(u_2) − ε̂_t)/(r_2 h) = ε̂' + ½ r_2 h ε̂'' + O(h²), so the last
term contributes h²φ_2 ε̂' + ½ r_2 h³ φ_2 ε̂''; the exact expansion needs h³φ_3 ε̂''; with
φ_2(0) = ½, φ_3(0) = ⅙ this matches at leading order iff r_2/4 = 1/6. u_2 only needs second order.

Registered as "dpm_solver_1", "dpm_solver_2", "dpm_solver_3"; ``steps`` counts grid intervals and
each ODE step costs ``order`` NFE; the last step to σ̃ = 0 (1 NFE, the prediction at the last node)
is the Adams step in σ̃ through the predictions at the last grid nodes (``adams``; the jump x̂_0 with
``terminal="denoise"``, and for DPM-Solver-1). Nominal orders 1, 2, 3 (measured: see
tests/test_sampler_orders.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.samplers.adams import Tail, tail_size
from diffusion_lab.samplers.defaults import ODE_GRIDS
from diffusion_lab.samplers.base import progress_steps, register
from diffusion_lab.samplers.exponential import (
    Node,
    exp_step,
    first_difference_coeff,
    h_phi,
    is_terminal,
    node,
    node_at_lambda,
)


def dpm_solver_step(denoiser, x: Tensor, cur: Node, nxt: Node, eps_t: Tensor, order: int,
                    solver_type: str = "dpm_solver", r1: float | None = None, r2: float | None = None) -> Tensor:
    """One single-step DPM-Solver step of the given order from ``cur`` to ``nxt`` (ε̂_t given)."""
    sch = denoiser.schedule
    h = nxt.lam - cur.lam
    if order == 1:
        return exp_step(x, cur, nxt, [eps_t], data=False)
    if order == 2:
        mid = node_at_lambda(sch, cur.lam + (0.5 if r1 is None else r1) * h)
        u = exp_step(x, cur, mid, [eps_t], data=False)
        r = (mid.lam - cur.lam) / h  # the realised ratio (λ re-read from t)
        d1 = (denoiser(u, mid.t).eps - eps_t) / r
        coeffs = [h_phi(1, h, False), first_difference_coeff(h, False, solver_type)]
        return exp_step(x, cur, nxt, [eps_t, d1], data=False, coeffs=coeffs)
    if order == 3:
        m1 = node_at_lambda(sch, cur.lam + (1.0 / 3.0 if r1 is None else r1) * h)
        m2 = node_at_lambda(sch, cur.lam + (2.0 / 3.0 if r2 is None else r2) * h)
        h1, h2 = m1.lam - cur.lam, m2.lam - cur.lam
        u1 = exp_step(x, cur, m1, [eps_t], data=False)
        # the first difference, rescaled to the step cur → m2: d_1 = h2 ε̂' ≈ (h2/h1)(ε̂(u1) − ε̂_t)
        u2 = exp_step(x, cur, m2, [eps_t, (h2 / h1) * (denoiser(u1, m1.t).eps - eps_t)], data=False)
        d1 = (h / h2) * (denoiser(u2, m2.t).eps - eps_t)
        return exp_step(x, cur, nxt, [eps_t, d1], data=False)
    raise ValueError(f"DPM-Solver order must be 1, 2 or 3, got {order}.")


def _sample(order: int, denoiser, x: Tensor, grid: Tensor, progress: bool, terminal: str = "multistep",
            terminal_order: int | None = None, terminal_reach: float | None = None, **kw) -> Tensor:
    sch = denoiser.schedule
    t_order = terminal_order or order
    tail = Tail(tail_size(t_order, terminal), terminal_reach)
    cur = node(sch, grid[0])
    for _, _, s in progress_steps(grid, progress, f"dpm_solver_{order}"):
        pred = denoiser(x, cur.t)
        tail.add(cur, pred)
        if is_terminal(s, sch):
            return tail.finish(x, cur, terminal, t_order)
        nxt = node(sch, s)
        x = dpm_solver_step(denoiser, x, cur, nxt, pred.eps, order, **kw)
        cur = nxt
    return x


@register("dpm_solver_1", stochastic=False, order=1, nfe_per_step=1, default_grid=ODE_GRIDS["dpm_solver_1"],
          description="DPM-Solver-1 (noise prediction) = DDIM η=0")
def sample_dpm_solver_1(denoiser, x: Tensor, grid: Tensor, *, generator: torch.Generator | None = None,
                        progress: bool = False) -> Tensor:
    """DPM-Solver-1 (Lu et al. 2022): first-order exponential integrator in ε̂."""
    return _sample(1, denoiser, x, grid, progress)


@register("dpm_solver_2", stochastic=False, order=2, nfe_per_step=2, default_grid=ODE_GRIDS["dpm_solver_2"],
          description="DPM-Solver-2, single-step, noise prediction, r1=1/2")
def sample_dpm_solver_2(denoiser, x: Tensor, grid: Tensor, *, solver_type: str = "dpm_solver", r1: float = 0.5,
                        terminal: str = "multistep", terminal_order: int = 2, terminal_reach: float | None = 2.0,
                        generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
    """DPM-Solver-2 (Lu et al. 2022, Alg. 1): single-step, second order, 2 NFE per step."""
    return _sample(2, denoiser, x, grid, progress, terminal, terminal_order, terminal_reach, solver_type=solver_type,
                   r1=r1)


@register("dpm_solver_3", stochastic=False, order=3, nfe_per_step=3, default_grid=ODE_GRIDS["dpm_solver_3"],
          description="DPM-Solver-3, single-step, noise prediction, r1=1/3, r2=2/3")
def sample_dpm_solver_3(denoiser, x: Tensor, grid: Tensor, *, r1: float = 1.0 / 3.0, r2: float = 2.0 / 3.0,
                        terminal: str = "multistep", terminal_order: int = 3, terminal_reach: float | None = 2.0,
                        generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
    """DPM-Solver-3 (Lu et al. 2022, Alg. 2): single-step, third order, 3 NFE per step."""
    return _sample(3, denoiser, x, grid, progress, terminal, terminal_order, terminal_reach, r1=r1, r2=r2)
