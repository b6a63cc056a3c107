"""Time grids for samplers: one module, shared by every sampler.

A grid is a float64 tensor of ``steps + 1`` times, strictly decreasing, whose last entry 0 stands
for the clean data (σ̃ = 0):

    t_0 = t_max > t_1 > ... > t_{steps−1} > t_steps = 0.

The last interval is the samplers' last step to σ̃ = 0 (``adams``: an Adams step in σ̃, or the
denoising jump x̂_0; EDM's convention that the final step goes to σ = 0, Karras et al. 2022,
Alg. 1/2). Where the last positive node sits is set by ``visit_t_min``:

* ``visit_t_min=True``  t_{steps−1} = t_min: the ``steps`` positive nodes are the spacing's ``steps``
  points on [t_min, t_max] (EDM, k-diffusion, DDIM/DDPM);
* ``visit_t_min=False`` the spacing's ``steps + 1`` points on [t_min, t_max] without the last one:
  the step to σ̃ = 0 replaces the step t_{steps−1} → t_min, so the coarse grids of few-step
  samplers do not spend a network call at the very bottom of the range (diffusers' convention for
  its multistep solvers, ``DPMSolverMultistepScheduler`` with ``final_sigmas_type="zero"``).

With ``denoise_last=False`` the grid ends at t_min instead (``steps + 1`` points, no 0): every
interval is an ODE step, which is what order-of-convergence tests integrate.

Spacings:

* ``uniform``    uniform in t                          (Song et al. 2021, score SDE)
* ``lambda``     uniform in λ = log(α/σ)               (Lu et al. 2022, DPM-Solver, "logSNR")
* ``quadratic``  t = t_min + (t_max − t_min)·u², u uniform on [0, 1]   (Song et al. 2021, DDIM)
* ``karras``     σ̃^{1/ρ} uniform, ρ = 7 by default    (Karras et al. 2022, Eq. 5)
* ``linspace``, ``leading``, ``trailing``: integer timesteps of a discrete schedule with T steps,
  t = i/T (i = 1..T; diffusers' 0-based timestep τ is our i = τ + 1), computed exactly as diffusers
  (von Platen et al. 2022; Lin et al. 2024, Table 2) computes them with numpy, rounding halves to
  even: linspace rounds linspace(0, T − 1, n) (DDIM's and PNDM's; with ``visit_t_min=False`` the
  n + 1 points without the last, DPM-Solver's and UniPC's), leading takes k·⌊T/n⌋ (steps_offset 0)
  and so never starts at T, trailing rounds arange(T, 0, −T/n) and starts at T. leading and
  trailing are the same in both conventions (``visit_t_min`` does not change them). One exception:
  a single step (n = 1) starts at T, where diffusers' linspace gives the timestep 0; and for some n
  (61 on T = 1000) diffusers' trailing arange yields an extra timestep −1, which we do not take.
* ``auto``       the spacing registered for the sampler and the schedule's family (``FAMILIES``;
  ``base.SamplerSpec.grids``); without a sampler, ``linspace`` on a discrete schedule and
  ``uniform`` on a continuous one.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch
from torch import Tensor

from diffusion_lab.schedules import DiscreteSchedule, EDMSchedule, RectifiedFlowSchedule, VESchedule
from diffusion_lab.schedules.base import Schedule

GRIDS = ("uniform", "lambda", "quadratic", "karras", "linspace", "leading", "trailing", "auto")
#: schedule families for per-family default grids: discrete-time (DDPM), continuous VP, VE, EDM, flow
FAMILIES = ("discrete", "vp", "ve", "edm", "flow")
#: the ``auto`` spacing when no sampler says otherwise
AUTO = {"discrete": "linspace", "vp": "uniform", "ve": "uniform", "edm": "uniform", "flow": "uniform"}
DISCRETE = ("linspace", "leading", "trailing")


def schedule_family(schedule: Schedule) -> str:
    """"discrete" (a schedule with num_timesteps), "edm", "ve", "flow" (rectified flow) or "vp"."""
    if getattr(schedule, "num_timesteps", None) is not None or isinstance(schedule, DiscreteSchedule):
        return "discrete"
    if isinstance(schedule, EDMSchedule):
        return "edm"
    if isinstance(schedule, VESchedule):
        return "ve"
    if isinstance(schedule, RectifiedFlowSchedule):
        return "flow"
    return "vp"


def resolve_spacing(schedule: Schedule, spacing: str, auto: Mapping[str, str] | None = None) -> str:
    """The concrete spacing: ``spacing`` itself, or for ``auto`` the entry of ``auto`` (default ``AUTO``)
    for the schedule's family."""
    if spacing != "auto":
        return spacing
    return (auto or AUTO)[schedule_family(schedule)]


def time_grid(schedule: Schedule, steps: int, spacing: str = "uniform", rho: float = 7.0, denoise_last: bool = True,
              visit_t_min: bool = True, auto: Mapping[str, str] | None = None) -> Tensor:
    """The decreasing float64 time grid described in the module docstring."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    spacing = resolve_spacing(schedule, spacing, auto)
    if denoise_last:
        # points on [t_min, t_max]: `steps`, or `steps + 1` of which the last (t_min) is dropped
        n = steps if (visit_t_min or spacing in ("leading", "trailing")) else steps + 1
    else:
        n = steps + 1
    t_max, t_min = float(schedule.t_max), float(schedule.t_min)
    f64 = torch.float64
    if n == 1:
        ts = torch.tensor([t_max], dtype=f64)
    elif spacing == "uniform":
        ts = torch.linspace(t_max, t_min, n, dtype=f64)
    elif spacing == "lambda":
        lam = schedule.log_snr(torch.tensor([t_max, t_min], dtype=f64))
        ts = schedule.t_from_log_snr(torch.linspace(float(lam[0]), float(lam[1]), n, dtype=f64))
    elif spacing == "quadratic":
        u = torch.linspace(1.0, 0.0, n, dtype=f64)
        ts = t_min + (t_max - t_min) * u * u
    elif spacing == "karras":
        st = schedule.sigma_tilde(torch.tensor([t_max, t_min], dtype=f64))
        hi, lo = float(st[0]) ** (1.0 / rho), float(st[1]) ** (1.0 / rho)
        ts = schedule.t_from_sigma_tilde(torch.linspace(hi, lo, n, dtype=f64) ** rho)
    elif spacing in DISCRETE:
        ts = _discrete(schedule, n, spacing)
    else:
        raise ValueError(f"unknown grid spacing {spacing!r}; choose one of {GRIDS}.")
    # Pin the ends exactly (inverse maps are accurate to ~1e-16 but not bitwise).
    if spacing in ("uniform", "lambda", "quadratic", "karras") and n > 1:
        ts[0], ts[-1] = t_max, t_min
    if denoise_last:
        if n > steps:
            ts = ts[:steps]
        ts = torch.cat([ts, torch.zeros(1, dtype=f64)])
    if (ts[1:] >= ts[:-1]).any():
        raise ValueError(
            f"grid {spacing!r} with {steps} steps is not strictly decreasing on {schedule!r}; use fewer steps "
            "or another spacing."
        )
    return ts


def _discrete(schedule: Schedule, n: int, spacing: str) -> Tensor:
    T = schedule.num_timesteps
    if T is None:
        raise ValueError(
            f"grid spacing {spacing!r} needs a discrete-time schedule (with num_timesteps); {schedule!r} is "
            "continuous: use uniform, lambda, quadratic or karras."
        )
    # the largest usable step: T, or below it where the schedule clips t_max (zero terminal SNR: T − 1)
    top = min(T, int(math.floor(schedule.t_max * T + 1e-9)))
    if n > top:
        raise ValueError(f"{n} sampling steps exceed the schedule's {top} usable discrete timesteps.")
    # diffusers' 0-based timesteps τ (numpy, round half to even), then i = τ + 1
    if spacing == "linspace":
        tau = np.linspace(0, top - 1, n).round()
    elif spacing == "leading":
        tau = (np.arange(0, n) * (top // n)).round()
    else:  # trailing
        tau = (np.round(np.arange(top, 0, -top / n)) - 1)[:n]
    idx = np.sort(tau + 1.0)[::-1].copy()
    return torch.from_numpy(idx) / T
