"""The training loss of a general continuous forward process (``diffusion_lab.forward``): −log q(x_0 | x_t) of a
Gaussian decoder around the network's x̂_0, i.e. the MSE

    L = E_{t ~ U(0, 1], x_0, ε} ‖x̂_0(F_t(x_0, ε), t) − x_0‖² / dim,

as Cold Diffusion (Bansal et al. 2023, Eq. 1) and inverse heat dissipation (Rissanen et al. 2023, Eq. 6)
train. The schedule must be a ``ForwardProcessSchedule`` (it carries F) and the parameterization ``x0``.
"""

from __future__ import annotations

import torch

from diffusion_lab.errors import ConfigError
from diffusion_lab.losses.base import Loss, LossOutput, mean_flat
from diffusion_lab.parameterization import Parameterization
from diffusion_lab.schedules.base import Schedule


class ForwardProcessLoss(Loss):
    """MSE of x̂_0 at x_t = F_t(x_0, ε), t ~ U(0, 1] (module docstring)."""

    name = "forward_mse"

    def __init__(self):
        super().__init__(None)

    def validate(self, schedule: Schedule, parameterization: Parameterization) -> None:
        if getattr(schedule, "process", None) is None:
            raise ConfigError(f"loss=forward_mse needs a forward-process schedule (schedule=blur or mask), got "
                              f"{type(schedule).__name__}; Gaussian schedules train with loss=eps_mse or edm.")
        if parameterization.kind != "x0":
            raise ConfigError(f"loss=forward_mse trains x̂0: set parameterization=x0, not {parameterization.kind}.")

    def __call__(self, model, x0, *, generator=None, net_kwargs=None) -> LossOutput:
        self._check(model)
        process = model.schedule.process
        dev = generator.device if generator is not None else x0.device
        t = (1.0 - torch.rand(x0.shape[0], generator=generator, dtype=torch.float64, device=dev)).to(x0.device)
        x64 = x0.to(torch.float64)
        eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64, device=dev).to(x0.device)  # ε ~ N(0, I)
        x_t = process.apply(x64, t, eps)
        pred = model.output(x_t.to(x0.dtype), t.to(x0.dtype), **(net_kwargs or {})).prediction
        per_sample = mean_flat((pred.to(x0.dtype) - x0) ** 2)
        return self._finish(per_sample, torch.ones_like(per_sample), t.to(x0.dtype), {})

    def __repr__(self) -> str:
        return "ForwardProcessLoss()"
