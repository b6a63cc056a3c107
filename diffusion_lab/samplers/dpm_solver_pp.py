"""DPM-Solver++: exponential integrators in data-prediction form (Lu et al. 2022b, "DPM-Solver++:
Fast Solver for Guided Sampling of Diffusion Probabilistic Models"), single-step (1, 2S) and
multistep (2M, 3M), with the published 3M update and a true third-order one derived here.

Exact solution (``exponential``; h = λ_s − λ_t > 0, x̂_0 as a function of λ along the path):

    x_s = (σ_s/σ_t) x_t + α_s Σ_k h φ_{k+1}(−h) · d_k,          d_k = h^k x̂_0^{(k)}(λ_t).

"dpm_solver_pp_1":  x_s = (σ_s/σ_t) x_t + α_s (1 − e^{−h}) x̂_0(x_t)            (= DDIM η=0)

"dpm_solver_pp_2s": single-step, intermediate point u at λ_t + r h (r = ½) by the first-order step,
    x_s = (σ_s/σ_t) x_t + α_s [(1 − e^{−h}) x̂_0,t + c · (x̂_0(u) − x̂_0,t)/r],     2 NFE per step,
    c = ½(1 − e^{−h}) (paper, solver_type="dpm_solver") or h φ_2(−h) (solver_type="taylor").

Multistep ("2m", "3m"; 1 NFE per step): keep the predictions x̂_0,i at the previous grid points
λ_{i−1}, λ_{i−2}; with h_1 = λ_t − λ_{i−1}, h_2 = λ_{i−1} − λ_{i−2} and the divided differences

    δ_1 = (x̂_0,t − x̂_0,i−1)/h_1,   δ_1' = (x̂_0,i−1 − x̂_0,i−2)/h_2,   δ_2 = (δ_1 − δ_1')/(h_1 + h_2),

the interpolating quadratic p(λ) = x̂_0,t + δ_1 (λ − λ_t) + δ_2 (λ − λ_t)(λ − λ_{i−1}) has

    p'(λ_t) = δ_1 + h_1 δ_2,        p''(λ_t) = 2 δ_2,

each accurate to O(h²) and O(h) respectively for non-uniform steps (h_1, h_2 = O(h)). So

    2M:  x_s = (σ_s/σ_t) x_t + α_s [(1 − e^{−h}) x̂_0,t + c · h δ_1]     (c as in 2S: paper form default)
    3M:  x_s = (σ_s/σ_t) x_t + α_s [(1 − e^{−h}) x̂_0,t + hφ_2(−h) · h(δ_1 + h_1 δ_2) + hφ_3(−h) · 2h² δ_2]

has local error O(h⁴) and is third order (general r_j: ``exponential.taylor_terms``; the code
solves the 2×2 Taylor system, which is algebraically the same as the formulas above).

The published 3M (Lu et al. 2022b's code, diffusers, k-diffusion) multiplies hφ_3(−h) by h²δ_2
instead of 2h²δ_2 — it uses D_2 = h² δ_2 = ½ h² p'' as if it were h² x̂_0''. That leaves a local error
−½ h³ φ_3(0) x̂_0'' = −h³ x̂_0''/12 per step, i.e. a second-order method in the limit (measured ≈ 2:
tests/test_sampler_orders.py). At the step counts that matter it is nevertheless the more accurate
update (1.5–2× at NFE 10–50 on the benchmark mixtures: the halved second difference is also a damped
extrapolation on coarse grids), so it is the default, ``variant="published"``; ``variant="derived"``
is the third-order update, better from NFE ≈ 100 (experiments/sampler_accuracy).

Warm-up and step-down (``exponential.final_order``): the i-th step (0-based) uses order
min(order, i+1) — 3M runs one first-order step, one second-order step (the 2M update), then third
order. Those warm-up steps sit at t_max where x̂_0 varies in λ only like α/σ ≈ e^{λ(t_max)} (≈ 7e-3
for VP, 1e-3 for rectified flow), so their lower local order is invisible at practical step counts.
With ``lower_order_final=True`` and fewer than ``final_threshold`` steps the k-th last step uses
order ≤ k (diffusers' rule); measured, it changes the error at NFE 10–20 by < 3 % once the grid ends
one step above t_min and the last step is the Adams step below, so it is off by default.
``exponential.ratio_order`` caps the order at 2 after a λ-step grows by more than ``max_step_ratio``.

The last step to σ̃ = 0 (``adams``): the Adams step in σ̃ through the predictions already made at the
last ``terminal_order`` grid nodes (no extra call; ``terminal="denoise"``: the jump x̂_0). So the
total NFE equals the number of grid intervals.
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
    final_order,
    first_difference_coeff,
    h_phi,
    is_terminal,
    node,
    node_at_lambda,
    ratio_order,
    taylor_terms,
)

VARIANTS = ("derived", "published")


def multistep_terms(x0: Tensor, cur: Node, nxt: Node, history: list[tuple[Node, Tensor]], order: int,
                    solver_type: str = "dpm_solver", variant: str = "derived") -> tuple[list[Tensor], list[float]]:
    """(terms, coefficients) of the data-form multistep update of the given order from the current
    prediction and ``history`` = [(node, x̂_0), ...] of earlier grid points (most recent last)."""
    h = nxt.lam - cur.lam
    if order == 1:
        return [x0], [h_phi(1, h, True)]
    if order == 2:
        prev, x0_prev = history[-1]
        r = (prev.lam - cur.lam) / h  # < 0
        return [x0, (x0_prev - x0) / r], [h_phi(1, h, True), first_difference_coeff(h, True, solver_type)]
    if order == 3:
        (p2, x0_p2), (p1, x0_p1) = history[-2], history[-1]
        r = [(p1.lam - cur.lam) / h, (p2.lam - cur.lam) / h]
        terms = taylor_terms(x0, r, [x0_p1, x0_p2])  # [x̂_0, h p'(λ_t), h² p''(λ_t)]
        if variant == "published":
            terms[2] = 0.5 * terms[2]  # D_2 = h² δ_2: half of h² p''
        elif variant != "derived":
            raise ValueError(f"unknown 3M variant {variant!r}; choose one of {VARIANTS}.")
        return terms, [h_phi(k, h, True) for k in (1, 2, 3)]
    raise ValueError(f"DPM-Solver++ multistep order must be 1, 2 or 3, got {order}.")


def _sample_multistep(order: int, denoiser, x: Tensor, grid: Tensor, progress: bool, solver_type: str,
                      lower_order_final: bool, variant: str = "derived", terminal: str = "multistep",
                      terminal_order: int | None = None, final_threshold: int = 15,
                      max_step_ratio: float = 0.0, terminal_reach: float | None = None) -> Tensor:
    sch = denoiser.schedule
    steps = len(grid) - 1
    t_order = terminal_order or order
    tail = Tail(tail_size(t_order, terminal), terminal_reach)
    history: list[tuple[Node, Tensor]] = []
    cur = node(sch, grid[0])
    for i, _, s in progress_steps(grid, progress, f"dpm_solver_pp_{order}m"):
        pred = denoiser(x, cur.t)
        tail.add(cur, pred)
        p = final_order(order, i, steps, lower_order_final, final_threshold)
        if is_terminal(s, sch):
            return tail.finish(x, cur, terminal, min(t_order, final_order(t_order, i, steps, lower_order_final,
                                                                           final_threshold)))
        x0 = pred.x0
        nxt = node(sch, s)
        if history:
            p = ratio_order(p, nxt.lam - cur.lam, cur.lam - history[-1][0].lam, max_step_ratio)
        terms, coeffs = multistep_terms(x0, cur, nxt, history, p, solver_type, variant)
        x = exp_step(x, cur, nxt, terms, data=True, coeffs=coeffs)
        history = (history + [(cur, x0)])[-(order - 1):] if order > 1 else []
        cur = nxt
    return x


@register("dpm_solver_pp_1", stochastic=False, order=1, nfe_per_step=1, default_grid=ODE_GRIDS["dpm_solver_pp_1"],
          description="DPM-Solver++(1) (data prediction) = DDIM η=0")
def sample_dpm_solver_pp_1(denoiser, x: Tensor, grid: Tensor, *, generator: torch.Generator | None = None,
                           progress: bool = False) -> Tensor:
    """DPM-Solver++(1): first-order exponential integrator in x̂_0."""
    return _sample_multistep(1, denoiser, x, grid, progress, "dpm_solver", False)


@register("dpm_solver_pp_2s", stochastic=False, order=2, nfe_per_step=2, default_grid=ODE_GRIDS["dpm_solver_pp_2s"],
          description="DPM-Solver++(2S), single-step, data prediction, r=1/2")
def sample_dpm_solver_pp_2s(denoiser, x: Tensor, grid: Tensor, *, solver_type: str = "dpm_solver", r1: float = 0.5,
                            terminal: str = "multistep", terminal_order: int = 3, terminal_reach: float | None = 2.0,
                            generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
    """DPM-Solver++(2S) (Lu et al. 2022b, Alg. 1): single-step second order, 2 NFE per step; the last
    step to σ̃ = 0 is the Adams step through the predictions at the last grid nodes (``adams``)."""
    sch = denoiser.schedule
    t_order = terminal_order
    tail = Tail(tail_size(t_order, terminal), terminal_reach)
    cur = node(sch, grid[0])
    for _, _, s in progress_steps(grid, progress, "dpm_solver_pp_2s"):
        pred = denoiser(x, cur.t)
        tail.add(cur, pred)
        if is_terminal(s, sch):
            return tail.finish(x, cur, terminal, t_order)
        x0 = pred.x0
        nxt = node(sch, s)
        h = nxt.lam - cur.lam
        mid = node_at_lambda(sch, cur.lam + r1 * h)
        u = exp_step(x, cur, mid, [x0], data=True)
        r = (mid.lam - cur.lam) / h
        d1 = (denoiser(u, mid.t).x0 - x0) / r
        x = exp_step(x, cur, nxt, [x0, d1], data=True,
                     coeffs=[h_phi(1, h, True), first_difference_coeff(h, True, solver_type)])
        cur = nxt
    return x


@register("dpm_solver_pp_2m", stochastic=False, order=2, nfe_per_step=1, default_grid=ODE_GRIDS["dpm_solver_pp_2m"],
          description="DPM-Solver++(2M), multistep, data prediction")
def sample_dpm_solver_pp_2m(denoiser, x: Tensor, grid: Tensor, *, solver_type: str = "dpm_solver",
                            lower_order_final: bool = False, final_threshold: int = 15, max_step_ratio: float = 2.0,
                            terminal: str = "multistep", terminal_order: int = 2, terminal_reach: float | None = 2.0,
                            generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2): multistep second order, 1 NFE per step."""
    return _sample_multistep(2, denoiser, x, grid, progress, solver_type, lower_order_final, "derived", terminal,
                             terminal_order, final_threshold, max_step_ratio, terminal_reach)


@register("dpm_solver_pp_3m", stochastic=False, order=3, nfe_per_step=1, default_grid=ODE_GRIDS["dpm_solver_pp_3m"],
          description="DPM-Solver++(3M), multistep, data prediction; published update (default) or true 3rd order")
def sample_dpm_solver_pp_3m(denoiser, x: Tensor, grid: Tensor, *, variant: str = "published",
                            solver_type: str = "dpm_solver", lower_order_final: bool = False, final_threshold: int = 15,
                            max_step_ratio: float = 2.0, terminal: str = "multistep", terminal_order: int = 2,
                            terminal_reach: float | None = 2.0, generator: torch.Generator | None = None,
                            progress: bool = False) -> Tensor:
    """DPM-Solver++(3M), multistep, 1 NFE per step: ``variant="published"`` (Lu et al. 2022b) or
    ``"derived"`` (the true third-order update of the module docstring)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown 3M variant {variant!r}; choose one of {VARIANTS}.")
    return _sample_multistep(3, denoiser, x, grid, progress, solver_type, lower_order_final, variant, terminal,
                             terminal_order, final_threshold, max_step_ratio, terminal_reach)
