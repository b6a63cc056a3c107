"""DEIS with time-polynomial extrapolation, "tAB-DEIS" (Zhang & Chen 2023, "Fast Sampling of
Diffusion Models with Exponential Integrator", ICLR), for any schedule, orders 1–3.

With x̃ = x/α and σ̃ = σ/α the probability-flow ODE is dx̃/dt = σ̃'(t) ε̂ (Karras et al. 2022, Eq. 4
written in the schedule's own time), so from t to s < t, exactly,

    x_s = (α_s/α_t) x_t + α_s ∫_t^s σ̃'(τ) ε̂(τ) dτ.

tAB-DEIS replaces ε̂(τ) by the polynomial *in t* through the predictions at the last r + 1 grid
times t_i, t_{i−1}, ... (Lagrange basis ℓ_j; r = order − 1, warm-up with lower orders):

    x_s = (α_s/α_t) x_t + α_s Σ_j C_j ε̂_j,      C_j = ∫_t^s σ̃'(τ) ℓ_j(τ) dτ,

and computes C_j once per step by quadrature. Here by parts, C_j = σ̃_s ℓ_j(s) − σ̃_t ℓ_j(t) −
∫_t^s σ̃ ℓ_j' dτ (no derivative of the schedule needed), with Gauss–Legendre on pieces on which σ̃ is
smooth (for a discrete schedule, between its timesteps, where log ᾱ is linear). Order 1 is DDIM(η=0)
(C_0 = σ̃_s − σ̃_t). Local error O(Δt^{r+2}), global order r + 1.

The last interval to σ̃ = 0 cannot be taken in t for every schedule (VE has σ(0) = σ_min > 0), so it is
the Adams step in σ̃ of ``adams`` through the same predictions (``terminal="denoise"``: the jump).
One network call per step.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from diffusion_lab.samplers.adams import Tail, check_terminal
from diffusion_lab.samplers.defaults import ODE_GRIDS
from diffusion_lab.samplers.base import progress_steps, register
from diffusion_lab.samplers.exponential import is_terminal, node

_GL_X, _GL_W = np.polynomial.legendre.leggauss(8)
_GL_X, _GL_W = 0.5 * (_GL_X + 1.0), 0.5 * _GL_W
#: the σ̃ integral is split into at least this many pieces
_MIN_PIECES = 8


def _pieces(schedule, a: float, b: float) -> np.ndarray:
    """Break points of [b, a] (a > b) between which σ̃(t) is smooth: the discrete timesteps i/T of a
    discrete schedule inside the interval, refined to at least ``_MIN_PIECES`` pieces."""
    pts = [b, a]
    T = getattr(schedule, "num_timesteps", None)
    if T is not None:
        lo, hi = math.floor(b * T) + 1, math.ceil(a * T) - 1
        pts += [i / T for i in range(lo, hi + 1)]
    pts = np.unique(np.asarray(pts, dtype=np.float64))
    if len(pts) - 1 < _MIN_PIECES:
        pts = np.unique(np.concatenate([pts, np.linspace(b, a, _MIN_PIECES + 1)]))
    return pts


def deis_coefficients(schedule, times: list[float], t: float, s: float) -> list[float]:
    """C_j = ∫_t^s σ̃'(τ) ℓ_j(τ) dτ for the Lagrange basis on ``times`` (times[0] = t), by parts."""
    r = np.asarray(times, dtype=np.float64)
    m = r.size
    pts = _pieces(schedule, t, s)
    lo, hi = pts[:-1], pts[1:]
    tau = (lo[:, None] + (hi - lo)[:, None] * _GL_X[None]).ravel()
    wq = ((hi - lo)[:, None] * _GL_W[None]).ravel()
    st_tau = schedule.sigma_tilde(torch.from_numpy(tau)).numpy()
    st_s, st_t = (float(v) for v in schedule.sigma_tilde(torch.tensor([s, t], dtype=torch.float64)))

    def lagrange(j: int, v: np.ndarray) -> np.ndarray:
        out = np.ones_like(v)
        for i in range(m):
            if i != j:
                out = out * (v - r[i]) / (r[j] - r[i])
        return out

    def lagrange_prime(j: int, v: np.ndarray) -> np.ndarray:
        total = np.zeros_like(v)
        for k in range(m):
            if k == j:
                continue
            term = np.full_like(v, 1.0 / (r[j] - r[k]))
            for i in range(m):
                if i not in (j, k):
                    term = term * (v - r[i]) / (r[j] - r[i])
            total = total + term
        return total

    coeffs = []
    for j in range(m):
        boundary = st_s * float(lagrange(j, np.array([s]))[0]) - st_t * float(lagrange(j, np.array([t]))[0])
        # ∫_t^s σ̃ ℓ_j' dτ = −∫_s^t σ̃ ℓ_j' dτ
        coeffs.append(boundary + float(np.dot(wq, st_tau * lagrange_prime(j, tau))))
    return coeffs


@register("deis", stochastic=False, order=3, nfe_per_step=1, default_grid=ODE_GRIDS["deis"],
          description="DEIS, exponential integrator with ε̂ extrapolated in t (tAB), orders 1–3")
def sample_deis(denoiser, x: Tensor, grid: Tensor, *, order: int = 3, terminal: str = "multistep",
                terminal_order: int = 4, terminal_reach: float | None = None, generator: torch.Generator | None = None,
                progress: bool = False) -> Tensor:
    """tAB-DEIS (Zhang & Chen 2023): x_s = (α_s/α_t) x_t + α_s Σ_j C_j ε̂_j, 1 NFE per step."""
    if int(order) != order or not 1 <= order <= 3:
        raise ValueError(f"deis order must be 1, 2 or 3, got {order}.")
    check_terminal(terminal)
    order = int(order)
    sch = denoiser.schedule
    t_order = terminal_order or order
    tail = Tail(max(order, t_order), terminal_reach)
    times: list[float] = []  # most recent first
    eps: list[Tensor] = []
    cur = node(sch, grid[0])
    for _, _, s in progress_steps(grid, progress, "deis"):
        pred = denoiser(x, cur.t)
        tail.add(cur, pred)
        if is_terminal(s, sch):
            return tail.finish(x, cur, terminal, t_order)
        times = [cur.t] + times[: order - 1]
        eps = [pred.eps] + eps[: order - 1]
        nxt = node(sch, s)
        out = (nxt.alpha / cur.alpha) * x
        for c, e in zip(deis_coefficients(sch, times, cur.t, nxt.t), eps):
            out = out + (nxt.alpha * c) * e
        x = out
        cur = nxt
    return x
