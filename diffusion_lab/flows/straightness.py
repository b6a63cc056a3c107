"""Straightness of a flow and the number of Euler steps it needs (Liu et al. 2023, "Flow Straight and
Fast", Sec. 2.2, Eq. (4) and Def. 2.2).

A flow dx/dt = v(x, t) is integrated here from the noise z at t = 1 down to the data at t = 0 (data at
t = 0, noise at t = 1; Liu et al. run from Z_0 = noise at t = 0 to Z_1 = data at t = 1). Its
straightness is the mean squared deviation of the velocity from the straight-line velocity of the
same trajectory,

    S(v) = ∫_0^1 E ‖ (x(1) − x(0)) − v(x(t), t) ‖² dt,       x(1) = z ~ N(0, I),

which is Liu et al.'s S(Z) = ∫ E‖(Z_1 − Z_0) − Ż_t‖² dt with the time direction reversed (both the
displacement and the velocity change sign, so S is the same number). S = 0 if and only if every
trajectory is a straight line run at constant speed, in which case one Euler step is exact. The norm is
the squared Euclidean norm over all dimensions, as in the paper (``per_dim=True`` divides by the
dimension, for images).

On a schedule clipped to [t_lo, t_hi] = [t_min, t_max] (``RectifiedFlowSchedule``) the integral runs
over that range and the displacement x(t_hi) − x(t_lo) is replaced by the average velocity
(x(t_hi) − x(t_lo))/(t_hi − t_lo): S = ∫_{t_lo}^{t_hi} E‖avg − v(x(t), t)‖² dt.

Numerics: classical RK4 on a uniform grid of ``steps`` steps (4 evaluations each) gives the trajectory;
the integral over t is the trapezoid rule on the velocities at the grid nodes (first RK4 stage), so its
error is O(h²) while the trajectory's is O(h⁴).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

#: a velocity field v(x, t) with t of shape (B,)
Velocity = Callable[[Tensor, Tensor], Tensor]


@dataclass
class StraightnessResult:
    """``straightness``: S (a float); ``x0``: the trajectories' ends at t_lo; ``nfe``: velocity calls."""

    straightness: float
    x0: Tensor
    nfe: int


def _sq_norm(x: Tensor, per_dim: bool) -> Tensor:
    flat = x.reshape(x.shape[0], -1)
    s = (flat**2).sum(dim=1)
    return s / flat.shape[1] if per_dim else s


@torch.no_grad()
def straightness(velocity: Velocity, z: Tensor, steps: int = 64, t_hi: float = 1.0, t_lo: float = 0.0,
                 per_dim: bool = False) -> StraightnessResult:
    """S(v) of the module docstring for the trajectories starting at x(t_hi) = z."""
    if steps < 1:
        raise ValueError(f"straightness needs at least 1 step, got {steps}.")
    if not t_hi > t_lo:
        raise ValueError(f"straightness integrates from t_hi down to t_lo; got t_hi={t_hi} <= t_lo={t_lo}.")
    ts = torch.linspace(t_hi, t_lo, steps + 1, dtype=torch.float64)
    x = z.to(torch.float64)
    B = x.shape[0]
    nfe = 0

    def v(x_: Tensor, t_: float) -> Tensor:
        nonlocal nfe
        nfe += 1
        return velocity(x_, torch.full((B,), float(t_), dtype=torch.float64, device=x_.device)).to(torch.float64)

    vs: list[Tensor] = []
    for i in range(steps):
        t, h = float(ts[i]), float(ts[i + 1] - ts[i])  # h < 0
        k1 = v(x, t)
        vs.append(k1)
        k2 = v(x + 0.5 * h * k1, t + 0.5 * h)
        k3 = v(x + 0.5 * h * k2, t + 0.5 * h)
        k4 = v(x + h * k3, t + h)
        x = x + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    vs.append(v(x, float(ts[-1])))
    length = t_hi - t_lo
    chord = (z.to(torch.float64) - x) / length  # average velocity (x(t_hi) − x(t_lo))/L
    dev = torch.stack([_sq_norm(chord - vi, per_dim).mean() for vi in vs])  # E‖chord − v(t_i)‖² at each node
    integral = (dev[:-1] + dev[1:]).sum() * 0.5 / steps  # trapezoid, mean over t in [t_lo, t_hi]
    return StraightnessResult(float(integral) * length, x, nfe)


@torch.no_grad()
def euler_endpoint(velocity: Velocity, z: Tensor, steps: int, t_hi: float = 1.0, t_lo: float = 0.0) -> Tensor:
    """``steps`` uniform Euler steps of dx/dt = v from x(t_hi) = z down to t_lo (the rectified-flow sampler
    of Liu et al. 2023: one step is x(0) = z − v(z, 1))."""
    ts = torch.linspace(t_hi, t_lo, steps + 1, dtype=torch.float64)
    x = z.to(torch.float64)
    for i in range(steps):
        t = torch.full((x.shape[0],), float(ts[i]), dtype=torch.float64, device=x.device)
        x = x + float(ts[i + 1] - ts[i]) * velocity(x, t).to(torch.float64)
    return x


def euler_steps_needed(quality: Callable[[int], float], target: float, max_steps: int = 256) -> int | None:
    """The fewest Euler steps n ∈ {1, 2, 4, ..., max_steps} whose ``quality(n)`` (an error: lower is
    better, e.g. the RMS distance to the model's own converged ODE solution, or a sliced Wasserstein
    distance to the data) is at most ``target``; None if none is. Doubling assumes the error falls with
    n, as Euler's does once n is past the transient."""
    n = 1
    while n <= max_steps:
        if quality(n) <= target:
            return n
        n *= 2
    return None


def endpoint_rms(velocity: Velocity, z: Tensor, reference: Tensor, t_hi: float = 1.0, t_lo: float = 0.0
                 ) -> Callable[[int], float]:
    """quality(n) = RMS over the batch of ‖Euler_n(z) − reference‖ (``reference``: the model's own ODE
    solution from z, e.g. ``straightness(...).x0``), for ``euler_steps_needed``."""

    def quality(n: int) -> float:
        x = euler_endpoint(velocity, z, n, t_hi, t_lo)
        return float(_sq_norm(x - reference.to(x), per_dim=False).mean().sqrt())

    return quality


def model_velocity(denoiser) -> Velocity:
    """v(x, t) = the model's flow velocity û = α̇ x̂_0 + σ̇ ε̂ (``Prediction.velocity``) through the adapter."""

    def v(x: Tensor, t: Tensor) -> Tensor:
        return denoiser(x, t).velocity

    return v


def model_straightness(denoiser, n: int = 1000, steps: int = 64, seed: int = 0, data_shape: tuple[int, ...] | None = None,
                       per_dim: bool = False, device: torch.device | str = "cpu") -> StraightnessResult:
    """S of a trained model along its own ODE trajectories, on [t_min, t_max] of its schedule, from n
    seeded noises z (x(t_max) = σ(t_max) z, the sampler's prior)."""
    sch = denoiser.schedule
    g = torch.Generator().manual_seed(int(seed))
    z = sch.prior_sample((n, *data_shape), generator=g, dtype=torch.float64).to(device)
    return straightness(model_velocity(denoiser), z, steps, float(sch.t_max), float(sch.t_min), per_dim)


@torch.no_grad()
def adaptive_endpoint(velocity: Velocity, z: Tensor, t_hi: float = 1.0, t_lo: float = 0.0, rtol: float = 1e-5,
                      atol: float = 1e-5, to_zero: bool = True) -> tuple[Tensor, int]:
    """(x(0), NFE): Dormand–Prince 5(4) (torchdiffeq) on dx/dt = v in t itself from t_hi down to t_lo, as Liu et
    al. 2023 sample with RK45; then, with ``to_zero`` and t_lo > 0, one Euler step to t = 0. In t a straight
    flow is constant along each path, so the step-size controller sees its straightness directly (the
    zoo's ``dopri5`` integrates in λ = log(α/σ), where even straight paths are curved)."""
    from torchdiffeq import odeint

    nfe = 0
    B = z.shape[0]

    def rhs(t: Tensor, x: Tensor) -> Tensor:
        nonlocal nfe
        nfe += 1
        return velocity(x, torch.full((B,), float(t), dtype=torch.float64, device=x.device)).to(torch.float64)

    x0 = z.to(torch.float64)
    ts = torch.tensor([t_hi, t_lo], dtype=torch.float64, device=x0.device)
    x = odeint(rhs, x0, ts, rtol=rtol, atol=atol, method="dopri5")[-1]
    if to_zero and t_lo > 0:
        x = x - t_lo * rhs(torch.tensor(t_lo), x)
    return x, nfe
