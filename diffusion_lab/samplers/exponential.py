"""Shared math of the probability-flow ODE samplers: grid nodes in (α, σ, λ, σ̃), the
exponential-integrator φ-functions, the exact-linear-part step in data- and noise-prediction form,
and Taylor terms estimated from past (or intermediate) predictions. Every deterministic sampler
(``pf_ode``, ``dpm_solver``, ``dpm_solver_pp``, ``unipc``, ``adaptive``) takes its coefficients
from here, so none re-derives what another has.

Notation (data at t=0): λ = log(α/σ) increases as t decreases; σ̃ = σ/α = e^{−λ}; x̃ = x/α.
A step goes from t to s < t, so h = λ_s − λ_t > 0.

The PF-ODE, written in λ, has a linear part that can be integrated exactly (Lu et al. 2022,
"DPM-Solver", Eq. 3.4; Lu et al. 2022b, "DPM-Solver++", Eq. 8). With x̂_0 and ε̂ seen as functions
of λ along the solution:

    noise form:  x_s = (α_s/α_t) x_t − σ_s ∫_0^h e^{h−u} ε̂(λ_t + u) du
    data form:   x_s = (σ_s/σ_t) x_t + α_s ∫_0^h e^{−(h−u)} x̂_0(λ_t + u) du.

(Proof of the data form: x/σ = e^{λ} x̃ and dx̃/dλ = x̂_0 − x̃, so d(x/σ)/dλ = e^{λ} x̂_0; multiply
by σ_s = α_s e^{−λ_s}. The noise form follows in the same way from dx̃/dλ = −e^{−λ} ε̂.)

Expanding the prediction in a Taylor series about λ_t, f(λ_t + u) = Σ_k u^k f^{(k)}/k!, and using
∫_0^h e^{∓(h−u)} u^k/k! du = h^{k+1} φ_{k+1}(∓h) gives the exponential-integrator update

    noise form:  x_s = (α_s/α_t) x_t − σ_s Σ_k [h φ_{k+1}(h)]  · d_k,      d_k = h^k ε̂^{(k)}(λ_t)
    data form:   x_s = (σ_s/σ_t) x_t + α_s Σ_k [h φ_{k+1}(−h)] · d_k,      d_k = h^k x̂_0^{(k)}(λ_t)

with the φ-functions φ_k(z) = ∫_0^1 e^{(1−θ)z} θ^{k−1}/(k−1)! dθ = Σ_{j≥0} z^j/(j+k)!, i.e.
φ_0 = e^z, φ_{k+1}(z) = (φ_k(z) − 1/k!)/z. So hφ_1(h) = e^h − 1 and hφ_1(−h) = 1 − e^{−h}.
Keeping k < p terms, with d_k known to O(h^{p}), gives local error O(h^{p+1}): a p-th order solver.
With k = 0 only this is DDIM(η=0) = DPM-Solver-1 = DPM-Solver++(1) = Euler in σ̃ (identical
algebra: x_s = α_s x̂_0 + σ_s ε̂).

The scaled derivatives d_k come from predictions f_j at other points λ_t + r_j h (r_j < 0 for past
steps of a multistep method, 0 < r_j ≤ 1 for intermediate stages of a single-step method): with
Δ_j = f_j − f_t = Σ_{k≥1} r_j^k d_k / k!, the m points give d_1..d_m by solving the m×m system
M[j, k] = r_j^k/k! (``taylor_terms``), which is the derivative of the interpolating polynomial
(exact on polynomials of degree m in λ, hence error O(h^{m+1−k}) in d_k).

All coefficient arithmetic is done in Python floats (IEEE float64), whatever the dtype of x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from diffusion_lab.schedules.base import Schedule


# ---------------------------------------------------------------------------- grid nodes
@dataclass(frozen=True)
class Node:
    """A point of the time grid with everything the ODE samplers read off the schedule (float64)."""

    t: float
    alpha: float
    sigma: float
    lam: float  # λ = log(α/σ)

    @property
    def sigma_tilde(self) -> float:
        """σ̃ = σ/α = e^{−λ}."""
        return self.sigma / self.alpha


def node(schedule: Schedule, t: Tensor | float) -> Node:
    """The Node at time t > 0 (all quantities from the schedule in float64)."""
    tt = torch.as_tensor(t, dtype=torch.float64).reshape(())
    a, s = float(schedule.alpha(tt)), float(schedule.sigma(tt))
    if not (a > 0.0 and s > 0.0):
        raise ValueError(
            f"ODE node at t={float(tt):.6g} has α={a:.3g}, σ={s:.3g}: λ is infinite there; the grid must stay in "
            f"[t_min, t_max] of {schedule!r} (its terminal 0 is the denoising step, not an ODE node)."
        )
    return Node(float(tt), a, s, float(schedule.log_snr(tt)))


def node_at_lambda(schedule: Schedule, lam: float) -> Node:
    """The Node at log-SNR λ (t = t(λ) by the schedule's inverse; λ is then re-read from t, so the
    node is self-consistent to float64 rounding)."""
    t = schedule.t_from_log_snr(torch.tensor(lam, dtype=torch.float64))
    return node(schedule, t)


def node_at_sigma_tilde(schedule: Schedule, sigma_tilde: float) -> Node:
    """The Node at σ̃ (t = t(σ̃) by the schedule's inverse)."""
    t = schedule.t_from_sigma_tilde(torch.tensor(sigma_tilde, dtype=torch.float64))
    return node(schedule, t)


def is_terminal(t: Tensor | float, schedule: Schedule) -> bool:
    """True for the grid's terminal 0 (clean data, σ̃ = 0): the step there returns x̂_0.

    A time 0 inside the schedule's range (t_min = 0 with σ(0) > 0) is an ordinary ODE node."""
    return float(t) == 0.0 and float(schedule.t_min) > 0.0


def ode_step_count(grid: Tensor, schedule: Schedule) -> int:
    """Number of ODE steps of a grid: all intervals except a terminal step to 0."""
    n = len(grid) - 1
    return n - 1 if is_terminal(grid[-1], schedule) else n


# ---------------------------------------------------------------------------- φ-functions
_SERIES_TERMS = 30


def phi(k: int, z: float) -> float:
    """φ_k(z) = Σ_{j≥0} z^j/(j+k)!  (φ_0 = e^z, φ_1 = (e^z − 1)/z, φ_{k+1} = (φ_k − 1/k!)/z).

    Power series for |z| < 1 (no cancellation), the recurrence from e^z otherwise."""
    if k < 0:
        raise ValueError(f"phi needs k >= 0, got {k}.")
    if k == 0:
        return math.exp(z)
    if abs(z) < 1.0:
        total, term = 0.0, 1.0 / math.factorial(k)
        for j in range(_SERIES_TERMS):
            total += term
            term *= z / (j + k + 1)
        return total
    val = math.expm1(z) / z  # φ_1
    for j in range(1, k):
        val = (val - 1.0 / math.factorial(j)) / z
    return val


def h_phi(k: int, h: float, data: bool) -> float:
    """The coefficient of d_{k−1} in the exponential-integrator update: h·φ_k(−h) in data form,
    h·φ_k(h) in noise form (k ≥ 1)."""
    return h * phi(k, -h if data else h)


# ---------------------------------------------------------------------------- the step
def exp_step(x: Tensor, cur: Node, nxt: Node, terms: Sequence[Tensor], data: bool,
             coeffs: Sequence[float] | None = None) -> Tensor:
    """One exponential-integrator step from ``cur`` to ``nxt`` (module docstring):

        data:   x_s = (σ_s/σ_t) x + α_s Σ_k c_k d_k,   c_k = h φ_{k+1}(−h)
        noise:  x_s = (α_s/α_t) x − σ_s Σ_k c_k d_k,   c_k = h φ_{k+1}(h)

    ``terms`` = [f, d_1, d_2, ...] (f = x̂_0 or ε̂ at cur, d_k = h^k f^{(k)}); ``coeffs`` overrides
    the c_k (solvers whose published form uses other coefficients of the same order)."""
    h = nxt.lam - cur.lam
    if coeffs is None:
        coeffs = [h_phi(k + 1, h, data) for k in range(len(terms))]
    if len(coeffs) != len(terms):
        raise ValueError("exp_step: one coefficient per term.")
    if data:
        out = (nxt.sigma / cur.sigma) * x
        scale = nxt.alpha
    else:
        out = (nxt.alpha / cur.alpha) * x
        scale = -nxt.sigma
    for c, d in zip(coeffs, terms):
        out = out + (scale * c) * d
    return out


def taylor_weights(r: Sequence[float]) -> list[list[float]]:
    """Weights W with d_k = Σ_j W[k−1][j]·(f_j − f_t), k = 1..m, for m points at λ_t + r_j h.

    Solves Σ_k r_j^k d_k / k! = f_j − f_t (module docstring) in float64."""
    m = len(r)
    if m == 0:
        return []
    if len(set(r)) != m or any(abs(rj) == 0.0 for rj in r):
        raise ValueError(f"taylor_weights needs distinct nonzero offsets, got {list(r)}.")
    M = torch.tensor([[rj**k / math.factorial(k) for k in range(1, m + 1)] for rj in r], dtype=torch.float64)
    W = torch.linalg.inv(M)  # (k, j)
    return W.tolist()


def taylor_terms(f_t: Tensor, r: Sequence[float], f: Sequence[Tensor]) -> list[Tensor]:
    """[f_t, d_1, ..., d_m]: the prediction at λ_t and its scaled derivatives d_k = h^k f^{(k)}(λ_t),
    estimated from predictions f_j at λ_t + r_j h (interpolating polynomial through m+1 points)."""
    W = taylor_weights(r)
    diffs = [fj - f_t for fj in f]
    terms = [f_t]
    for row in W:
        d = None
        for w, dj in zip(row, diffs):
            d = w * dj if d is None else d + w * dj
        terms.append(d)
    return terms


def lambda_rate(schedule: Schedule, t: Tensor) -> Tensor:
    """dλ/dt = α̇/α − σ̇/σ (negative: λ decreases in t)."""
    a, s, ad, sd = schedule.coefficients(t)
    return ad / a - sd / s


SOLVER_TYPES = ("dpm_solver", "taylor")


def first_difference_coeff(h: float, data: bool, solver_type: str = "dpm_solver") -> float:
    """Coefficient of d_1 (= h·f') in a second-order update. ``"taylor"``: the exact h φ_2(∓h);
    ``"dpm_solver"``: ½ h φ_1(∓h), the form of the published DPM-Solver-2 (Lu et al. 2022, Alg. 1)
    and DPM-Solver++(2S)/(2M) (Lu et al. 2022b, Alg. 1–2). Both equal h/2 + O(h²), so both give a
    second-order method; they differ in the O(h³) local error constant."""
    if solver_type == "taylor":
        return h_phi(2, h, data)
    if solver_type == "dpm_solver":
        return 0.5 * h_phi(1, h, data)
    raise ValueError(f"unknown solver_type {solver_type!r}; choose one of {SOLVER_TYPES}.")


def final_order(order: int, step: int, steps: int, lower_order_final: bool, threshold: int = 15) -> int:
    """Order of a multistep solver on interval ``step`` (0-based) of a grid of ``steps`` intervals, the
    last step to σ̃ = 0 (``adams``) counted as an interval.

    Warm-up: interval i can use at most i + 1 predictions, so the order is min(order, i + 1).
    Step-down: with ``lower_order_final`` and fewer than ``threshold`` intervals, the k-th last
    interval uses order ≤ k (so the last step to σ̃ = 0 is the jump x̂_0 and the last ODE step is at
    most second order): on such coarse grids the large λ-steps near t_min make the extrapolated
    higher differences unreliable. This is diffusers' rule for DPM-Solver++ and UniPC
    (``lower_order_final`` below 15 steps). The samplers keep it selectable but off by default: with
    the last step to σ̃ = 0 of ``adams`` and grids ending one step above t_min it changes the error at
    NFE 10–20 by < 3 % (``experiments/sampler_accuracy/DEFAULTS.md``)."""
    p = min(order, step + 1)
    if lower_order_final and steps < threshold:
        p = min(p, steps - step)
    return max(p, 1)


def ratio_order(order: int, h: float, h_prev: float | None, max_ratio: float) -> int:
    """Order cap of a multistep step of size h (in λ) whose previous step had size ``h_prev``.

    The k-th difference of the extrapolating polynomial scales the past predictions (and their
    errors) by about (h/h_prev)^k, so after a sudden growth of the step a high-order multistep update
    amplifies the errors it inherits (variable-step multistep methods are stable only for bounded
    step ratios: Hairer, Nørsett & Wanner 1993, §III.5). With r = h/h_prev > ``max_ratio`` the order is
    capped at 2: the second and higher differences go, the first (which second-order multistep
    solvers handle well even after a large growth, measured) stays. A grid that is smooth in λ
    (λ-uniform, Karras, quadratic at moderate step counts) has r close to 1 and is not affected;
    uniform-in-t grids on VP schedules, whose λ-steps grow like 1/t towards t_min, are: there 3M and
    UniPC-3 diverge without the cap (error 2–8 at NFE 10 on the benchmark mixtures) and match 2M with it
    (``tests/test_sampler_guards.py``). ``max_ratio`` ≤ 0 switches the cap off."""
    if h_prev is None or h_prev <= 0.0 or max_ratio <= 0.0:
        return order
    return min(order, 2) if h / h_prev > max_ratio else order
