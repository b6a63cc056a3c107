"""Classical Runge–Kutta solvers for the probability-flow ODE: Euler, Heun, RK4.

The PF-ODE (Song et al. 2021, "Score-Based Generative Modeling through SDEs", Eq. 13) is
integrated by default in EDM's scaled coordinates (Karras et al. 2022, "Elucidating the Design
Space...", Eq. 4 and Alg. 1), valid for every schedule:

    x̃ = x/α,  σ̃ = σ/α:      dx̃/dσ̃ = (x̃ − x̂_0(x, t))/σ̃ = ε̂(x, t),       t = t(σ̃).

``variable="t"`` integrates the same ODE in the schedule's own time instead,

    dx/dt = û(x, t) = α̇ x̂_0 + σ̇ ε̂ = f(t) x − ½ g²(t) ∇log p_t(x),

which is the natural form for rectified flow (where the two coincide up to the time change:
for α = 1 − t, σ = t, σ̃ = t/(1 − t)). The default is ``"sigma_tilde"``: in σ̃ the solution is
straight wherever x̂_0 is constant (exactly for a point mass; for a Gaussian with variance e along a
direction, x̃ − μ = √(e + σ̃²)·z is linear once σ̃² ≫ e), Euler in σ̃ *is* DDIM(η=0) =
DPM-Solver-1 (tested to 1e-12), and it is what EDM's Heun sampler does.

One step from σ̃_i to σ̃_{i+1} (Δ = σ̃_{i+1} − σ̃_i < 0, d(y, σ̃) = ε̂ at x = α y):

    euler:  y' = y + Δ d_1,                                           1 NFE
    heun:   k1 = d(y, σ̃_i), k2 = d(y + Δ k1, σ̃_{i+1}), y' = y + Δ (k1 + k2)/2  (EDM Alg. 1)  2 NFE
    rk4:    the classical 4-stage Runge–Kutta method, midpoint stages at σ̃_i + Δ/2        4 NFE

Nominal orders 1, 2, 4. The grid's last step to σ̃ = 0 (t = 0) costs 1 NFE (ε̂ at the last node) and
is the Adams step in σ̃ through ε̂ at the last ``terminal_order`` nodes (``adams``); with order 1 or
``terminal="denoise"`` it is the Euler step x̃ − σ̃ ε̂ = x̂_0 that EDM Alg. 1 takes on its last
interval. Coefficients and stage times are float64; the state is in x's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.samplers.adams import Tail, tail_size
from diffusion_lab.samplers.defaults import ODE_GRIDS
from diffusion_lab.samplers.base import progress_steps, register
from diffusion_lab.samplers.exponential import Node, is_terminal, node, node_at_sigma_tilde

VARIABLES = ("sigma_tilde", "t")

#: explicit Runge–Kutta tableaux (a, b, c)
TABLEAUX: dict[str, tuple[list[list[float]], list[float], list[float]]] = {
    "euler": ([[]], [1.0], [0.0]),
    "heun": ([[], [1.0]], [0.5, 0.5], [0.0, 1.0]),
    "rk4": ([[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]], [1 / 6, 1 / 3, 1 / 3, 1 / 6], [0.0, 0.5, 0.5, 1.0]),
}
ORDERS = {"euler": 1, "heun": 2, "rk4": 4}


def _stage_node(schedule, cur: Node, nxt: Node, c: float, variable: str) -> Node:
    if c == 0.0:
        return cur
    if c == 1.0:
        return nxt
    if variable == "sigma_tilde":
        return node_at_sigma_tilde(schedule, cur.sigma_tilde + c * (nxt.sigma_tilde - cur.sigma_tilde))
    return node(schedule, cur.t + c * (nxt.t - cur.t))


def rk_step(denoiser, x: Tensor, cur: Node, nxt: Node, method: str, variable: str = "sigma_tilde",
            first=None) -> Tensor:
    """One explicit Runge–Kutta step of the PF-ODE from ``cur`` to ``nxt`` (module docstring).
    ``first`` is an optional prediction already made at (x, cur)."""
    if variable not in VARIABLES:
        raise ValueError(f"unknown integration variable {variable!r}; choose one of {VARIABLES}.")
    a, b, c = TABLEAUX[method]
    sch = denoiser.schedule
    if variable == "sigma_tilde":
        y, delta = x / cur.alpha, nxt.sigma_tilde - cur.sigma_tilde
    else:
        y, delta = x, nxt.t - cur.t
    ks: list[Tensor] = []
    for i, ci in enumerate(c):
        nd = _stage_node(sch, cur, nxt, ci, variable)
        yi = y
        for aij, kj in zip(a[i], ks):
            if aij != 0.0:
                yi = yi + (delta * aij) * kj
        if variable == "sigma_tilde":
            pred = first if (i == 0 and first is not None) else denoiser(yi * nd.alpha, nd.t)
            ks.append(pred.eps)
        else:
            pred = first if (i == 0 and first is not None) else denoiser(yi, nd.t)
            ks.append(pred.velocity)
    for bi, ki in zip(b, ks):
        y = y + (delta * bi) * ki
    return y * nxt.alpha if variable == "sigma_tilde" else y


def _sample_rk(method: str, denoiser, x: Tensor, grid: Tensor, variable: str, progress: bool, terminal: str,
               terminal_order: int | None, terminal_reach: float | None) -> Tensor:
    sch = denoiser.schedule
    t_order = terminal_order or ORDERS[method]
    tail = Tail(tail_size(t_order, terminal), terminal_reach)
    cur = node(sch, grid[0])
    for _, _, s in progress_steps(grid, progress, method):
        pred = denoiser(x, cur.t)
        tail.add(cur, pred)
        if is_terminal(s, sch):
            return tail.finish(x, cur, terminal, t_order)
        nxt = node(sch, s)
        x = rk_step(denoiser, x, cur, nxt, method, variable, first=pred)
        cur = nxt
    return x


@register("euler", stochastic=False, order=1, nfe_per_step=1, default_grid=ODE_GRIDS["euler"],
          description="PF-ODE Euler in σ̃ (= DDIM η=0 = DPM-Solver-1); variable='t' for Euler in t")
def sample_euler(denoiser, x: Tensor, grid: Tensor, *, variable: str = "sigma_tilde", terminal: str = "multistep",
                 terminal_order: int = 1, terminal_reach: float | None = 2.0, generator: torch.Generator | None = None,
                 progress: bool = False) -> Tensor:
    """Euler's method on the PF-ODE dx̃/dσ̃ = ε̂ (or dx/dt = û with variable='t')."""
    return _sample_rk("euler", denoiser, x, grid, variable, progress, terminal, terminal_order, terminal_reach)


@register("heun", stochastic=False, order=2, nfe_per_step=2, default_grid=ODE_GRIDS["heun"],
          description="PF-ODE Heun (EDM Alg. 1) in σ̃; last step to σ̃=0 an Adams step (or EDM's Euler step)")
def sample_heun(denoiser, x: Tensor, grid: Tensor, *, variable: str = "sigma_tilde", terminal: str = "multistep",
                terminal_order: int = 2, terminal_reach: float | None = 2.0, generator: torch.Generator | None = None,
                progress: bool = False) -> Tensor:
    """Heun's 2nd-order method on the PF-ODE (Karras et al. 2022, Alg. 1, deterministic)."""
    return _sample_rk("heun", denoiser, x, grid, variable, progress, terminal, terminal_order, terminal_reach)


@register("rk4", stochastic=False, order=4, nfe_per_step=4, default_grid=ODE_GRIDS["rk4"],
          description="PF-ODE classical 4th-order Runge–Kutta in σ̃")
def sample_rk4(denoiser, x: Tensor, grid: Tensor, *, variable: str = "sigma_tilde", terminal: str = "multistep",
               terminal_order: int = 3, terminal_reach: float | None = 2.0, generator: torch.Generator | None = None,
               progress: bool = False) -> Tensor:
    """Classical RK4 on the PF-ODE dx̃/dσ̃ = ε̂ (or dx/dt = û with variable='t')."""
    return _sample_rk("rk4", denoiser, x, grid, variable, progress, terminal, terminal_order, terminal_reach)
