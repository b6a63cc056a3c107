"""Time grids for samplers: one module, shared by every sampler.

A grid is a float64 tensor of ``steps + 1`` times, strictly decreasing,

    t_0 = t_max > t_1 > ... > t_{steps-1} = t_min > t_steps = 0,

whose last entry 0 stands for the clean data (σ̃ = 0). The last step of every sampler is therefore
the terminal denoising step x ← x̂_0(x, t_min) (EDM's convention, Karras et al. 2022, Alg. 1/2: the
final step goes to σ = 0; it equals DDIM's last step to ᾱ = 1 and DDPM's last posterior mean). With
``denoise_last=False`` the grid ends at t_min instead (``steps + 1`` points, no 0), which is what
order-of-convergence tests integrate.

Spacings (the first ``steps`` points, or all ``steps + 1`` without the terminal 0):

* ``uniform``    uniform in t                          (Song et al. 2021, score SDE)
* ``lambda``     uniform in λ = log(α/σ)               (Lu et al. 2022, DPM-Solver, "logSNR")
* ``quadratic``  t = t_min + (t_max − t_min)·u², u uniform on [0, 1]   (Song et al. 2021, DDIM)
* ``karras``     σ̃^{1/ρ} uniform, ρ = 7               (Karras et al. 2022, Eq. 5)
* ``linspace``, ``leading``, ``trailing``: integer timesteps of a discrete schedule with T steps,
  t = i/T, as in diffusers (Lin et al. 2024, Table 2): linspace rounds linspace(1, T, n); leading
  takes 1 + k·⌊T/n⌋ and so never starts at T; trailing takes round(T − k·T/n) and starts at T.
* ``auto``       ``linspace`` on a discrete schedule (the subsequence of improved DDPM's respacing:
  starts at T, ends at 1), ``uniform`` on a continuous one; the default of samplers such as DDPM
  that should read a discrete schedule only at its training timesteps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion_lab.schedules.base import Schedule

GRIDS = ("uniform", "lambda", "quadratic", "karras", "linspace", "leading", "trailing", "auto")


def time_grid(schedule: Schedule, steps: int, spacing: str = "uniform", rho: float = 7.0, denoise_last: bool = True) -> Tensor:
    """The decreasing float64 time grid described in the module docstring."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    n = steps if denoise_last else steps + 1  # number of points in [t_min, t_max]
    if spacing == "auto":
        spacing = "linspace" if schedule.num_timesteps is not None else "uniform"
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
    elif spacing in ("linspace", "leading", "trailing"):
        ts = _discrete(schedule, n, spacing)
    else:
        raise ValueError(f"unknown grid spacing {spacing!r}; choose one of {GRIDS}.")
    # Pin the ends exactly (inverse maps are accurate to ~1e-16 but not bitwise).
    if spacing in ("uniform", "lambda", "quadratic", "karras") and n > 1:
        ts[0], ts[-1] = t_max, t_min
    if denoise_last:
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
    if spacing == "linspace":
        idx = torch.linspace(1, top, n, dtype=torch.float64).round()
    elif spacing == "leading":
        idx = 1 + torch.arange(n, dtype=torch.float64) * (top // n)
    else:  # trailing
        idx = (top - torch.arange(n, dtype=torch.float64) * (top / n)).round()
    idx = idx.sort(descending=True).values
    return idx / T


def steps_of(grid: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Consecutive pairs (t_cur, t_next) of a grid, as 0-d float64 tensors."""
    return [(grid[i], grid[i + 1]) for i in range(len(grid) - 1)]
