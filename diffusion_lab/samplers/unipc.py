"""UniPC: unified predictor–corrector multistep solver, data-prediction form (Zhao et al. 2023,
"UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models"), orders 2
and 3 with the B(h) variants bh1 (B = h) and bh2 (B = 1 − e^{−h}).

Notation from ``exponential`` (h = λ_s − λ_t > 0, hφ_1(−h) = 1 − e^{−h}). Given the prediction
x̂_0,t at the current point and predictions x̂_0,m at other points λ_t + r_m h with differences
D_m = x̂_0,m − x̂_0,t, the UniPC update is

    x_s = (σ_s/σ_t) x_t + α_s [(1 − e^{−h}) x̂_0,t + B(h) Σ_m a_m D_m / r_m],

where a solves the order conditions Σ_m a_m r_m^{k−1} = g_k := k! hφ_{k+1}(−h)/B(h), k = 1..K
(K = number of differences). Whenever that K×K system is solved exactly, B·a/r is fixed and the
update is exactly the Taylor (interpolation) update Σ_k hφ_{k+1}(−h) d_k of ``exponential``
(substitute D_m = Σ_k r_m^k d_k/k!): B(h) cancels. With a single difference UniPC uses instead
the h → 0 limit a_1 = ½ of g_1, and that is where the variants differ: the term becomes
½ B(h) D_1/r_1 (bh2 with one past point is exactly DPM-Solver++(2M); tested).

One step of UniPC-p (1 NFE per step):

  UniP-p (predictor): the p−1 previous grid points (r_m < 0) → x_s^P, local error O(h^{p+1});
  evaluate x̂_0(x_s^P, s) — the one network call of the step, reused as the next step's x̂_0,s;
  UniC-p (corrector): the same update with the p−1 previous points plus the new one (r = 1,
      D = x̂_0(x_s^P, s) − x̂_0,t) → x_s^C, local error O(h^{p+2}): order p + 1 for free.

The corrected x_s^C is the new state; its history value is the prediction at x_s^P (the difference
is O(h^{p+1}) and enters the next step with weight O(h)). Warm-up, optional step-down and the step-
ratio cap as in ``dpm_solver_pp`` (``exponential.final_order``, ``exponential.ratio_order``). The
corrector is skipped on the last ODE step (``corrector_last=False``): it would need one more network
call and one predictor-order local error does not lower the global order. The last step to σ̃ = 0 is
the Adams step in σ̃ (``adams``) through the predictions at the last ``terminal_order`` nodes (4 for
both: measured), or the jump x̂_0(x_s^P) with ``terminal="denoise"``. Nominal
orders with the corrector: "unipc_2" → 3, "unipc_3" → 4 (``use_corrector=False``: 2 and 3).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion_lab.samplers.adams import Tail, tail_size
from diffusion_lab.samplers.defaults import ODE_GRIDS
from diffusion_lab.samplers.base import progress_steps, register
from diffusion_lab.samplers.exponential import (
    Node,
    exp_step,
    final_order,
    h_phi,
    is_terminal,
    node,
    ode_step_count,
    ratio_order,
    taylor_terms,
)

UNIPC_VARIANTS = ("bh1", "bh2")
#: default order of the last step to σ̃ = 0 (measured: experiments/sampler_accuracy/DEFAULTS.md)
TERMINAL_ORDER = {2: 4, 3: 4}


def b_of_h(h: float, variant: str) -> float:
    """B(h): h (bh1) or 1 − e^{−h} (bh2)."""
    if variant == "bh1":
        return h
    if variant == "bh2":
        return -math.expm1(-h)
    raise ValueError(f"unknown UniPC variant {variant!r}; choose one of {UNIPC_VARIANTS}.")


def unipc_update(x: Tensor, x0: Tensor, cur: Node, nxt: Node, points: list[tuple[float, Tensor]], variant: str) -> Tensor:
    """The UniPC update (module docstring) from x̂_0,t = ``x0`` and ``points`` = [(r_m, x̂_0,m)]."""
    h = nxt.lam - cur.lam
    if not points:
        return exp_step(x, cur, nxt, [x0], data=True)
    if len(points) == 1:
        (r, f), = points
        return exp_step(x, cur, nxt, [x0, (f - x0) / r], data=True,
                        coeffs=[h_phi(1, h, True), 0.5 * b_of_h(h, variant)])
    terms = taylor_terms(x0, [r for r, _ in points], [f for _, f in points])
    return exp_step(x, cur, nxt, terms, data=True)


def _sample_unipc(order: int, denoiser, x: Tensor, grid: Tensor, progress: bool, variant: str,
                  use_corrector: bool, lower_order_final: bool, corrector_last: bool, terminal: str = "multistep",
                  terminal_order: int | None = None, final_threshold: int = 15,
                  max_step_ratio: float = 0.0, terminal_reach: float | None = None) -> Tensor:
    b_of_h(1.0, variant)  # validate early
    sch = denoiser.schedule
    steps = len(grid) - 1
    n_ode = ode_step_count(grid, sch)
    t_order = terminal_order or (order + 1 if use_corrector else order)
    tail = Tail(tail_size(t_order, terminal), terminal_reach)
    history: list[tuple[Node, Tensor]] = []  # earlier grid points, most recent last
    cur = node(sch, grid[0])
    pred = denoiser(x, cur.t)
    x0 = pred.x0
    for i, _, s in progress_steps(grid, progress, f"unipc_{order}"):
        tail.add(cur, pred)
        if is_terminal(s, sch):
            return tail.finish(x, cur, terminal, min(t_order, final_order(t_order, i, steps, lower_order_final,
                                                                           final_threshold)))
        nxt = node(sch, s)
        h = nxt.lam - cur.lam
        p = final_order(order, i, steps, lower_order_final, final_threshold)
        if history:
            p = ratio_order(p, h, cur.lam - history[-1][0].lam, max_step_ratio)
        prev = [((nd.lam - cur.lam) / h, f) for nd, f in reversed(history[len(history) - (p - 1):])] if p > 1 else []
        x_pred = unipc_update(x, x0, cur, nxt, prev, variant)
        last = i == n_ode - 1
        need_eval = not last or is_terminal(grid[-1], sch) or (use_corrector and corrector_last)
        if not need_eval:
            return x_pred
        pred_new = denoiser(x_pred, nxt.t)
        if use_corrector and (not last or corrector_last):
            x = unipc_update(x, x0, cur, nxt, prev + [(1.0, pred_new.x0)], variant)
            if last and is_terminal(grid[-1], sch):  # opted in: predict at the corrected state (+1 NFE)
                pred_new = denoiser(x, nxt.t)
        else:
            x = x_pred
        history = (history + [(cur, x0)])[-(order - 1):] if order > 1 else []
        cur, pred = nxt, pred_new
        x0 = pred.x0
    return x


def _register(order: int):
    @register(f"unipc_{order}", stochastic=False, order=order + 1, nfe_per_step=1, default_grid=ODE_GRIDS[f"unipc_{order}"],
              description=f"UniPC-{order} (UniP-{order} + UniC), data prediction, variant bh1|bh2")
    def sample(denoiser, x: Tensor, grid: Tensor, *, variant: str = "bh2", use_corrector: bool = True,
               lower_order_final: bool = False, final_threshold: int = 15, max_step_ratio: float = 2.0,
               corrector_last: bool = False, terminal: str = "multistep", terminal_order: int = TERMINAL_ORDER[order],
               terminal_reach: float | None = 2.0, generator: torch.Generator | None = None,
               progress: bool = False) -> Tensor:
        return _sample_unipc(order, denoiser, x, grid, progress, variant, use_corrector, lower_order_final,
                             corrector_last, terminal, terminal_order, final_threshold, max_step_ratio, terminal_reach)

    sample.__name__ = f"sample_unipc_{order}"
    sample.__doc__ = (f"UniPC-{order} (Zhao et al. 2023): multistep predictor of order {order} with the UniC "
                      f"corrector (order {order + 1}), 1 NFE per step.")
    return sample


sample_unipc_2 = _register(2)
sample_unipc_3 = _register(3)
