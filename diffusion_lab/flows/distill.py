"""Distillation of a (rectified) flow into a k-step sampler (Liu et al. 2023, "Flow Straight and Fast",
Sec. 2.3 and Sec. 5): train on the teacher's pairs (z, x) as reflow does, but with t restricted to the
k nodes of the k-step Euler sampler, so the network learns the k jumps instead of the whole field:

    L = E_{(z, x)} E_{t ∈ T_k} ‖ v((1 − t) x + t z, t) − (z − x) ‖²       (L2; Liu et al. also use LPIPS)

Their t ∈ {0, 1/k, ..., (k − 1)/k} with noise at t = 0 is our T_k = {1, 1 − 1/k, ..., 1/k}; for k = 1
this is v(z, 1) = z − x, one Euler step x = z − v(z, 1). On a schedule clipped to [t_min, t_max], T_k is
the grid of the sampler that uses the distilled model, ``Sampler("euler", steps=k, grid="uniform",
visit_t_min=False, variable="t", terminal="denoise")`` (``conf/sampler/rf_euler.yaml``): the first k
nodes of linspace(t_max, t_min, k + 1), whose last step to t = 0 is the jump x − t v = Euler in t.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.losses.time_sampling import TimeSampler
from diffusion_lab.samplers.grids import time_grid
from diffusion_lab.schedules.base import Schedule


def distillation_times(schedule: Schedule, steps: int) -> Tensor:
    """T_k: the k positive nodes of the k-step uniform Euler grid (module docstring), float64."""
    grid = time_grid(schedule, int(steps), "uniform", denoise_last=True, visit_t_min=False)
    return grid[:-1]


class KStepTime(TimeSampler):
    """t drawn uniformly from the k nodes T_k of the k-step Euler sampler (``distillation_times``)."""

    name = "k_step"

    def __init__(self, steps: int = 1):
        if int(steps) < 1:
            raise ValueError(f"loss.time_sampler.steps must be a positive number of sampling steps, got {steps}.")
        self.steps = int(steps)

    def sample(self, batch_size, schedule, *, device=None, dtype=torch.float32, generator=None):
        nodes = distillation_times(schedule, self.steps)
        dev = generator.device if generator is not None else device
        idx = torch.randint(0, self.steps, (batch_size,), generator=generator, device=dev).cpu()
        t = nodes[idx].to(device=device, dtype=dtype)
        return t, torch.ones_like(t)

    def __repr__(self) -> str:
        return f"KStepTime(steps={self.steps})"
