"""The training loss of a general continuous forward process (``diffusion_lab.forward``): −log q(x_0 | x_t) of a
Gaussian decoder around the network's x̂_0, i.e. the MSE

    L = E_{t ~ U(0, 1], x_0, ε} ‖x̂_0(F_t(x_0, ε), t) − x_0‖² / dim,

as Cold Diffusion (Bansal et al. 2023, Eq. 1) and inverse heat dissipation (Rissanen et al. 2023, Eq. 6)
train. The schedule must be a ``ForwardProcessSchedule`` (it carries F) and the parameterization ``x0``.

For discrete corruption (``schedule=absorbing`` / ``uniform``; D3PM, Austin et al. 2021) the decoder is
categorical and −log q(x_0 | x_t) is the cross-entropy of the network's K logits per pixel
(``DiscreteForwardLoss``, ``loss=forward_ce``; D3PM's L_λ with the variational terms left out, λ → ∞):

    L = E_{t ~ U(0, 1], x_0, x_t ~ q(x_t | x_0)} −log softmax(f(x_t, t))[x_0] / dim.
"""

from __future__ import annotations

import torch

from diffusion_lab.errors import ConfigError
from diffusion_lab.losses.base import Loss, LossOutput, mean_flat
from diffusion_lab.parameterization import Parameterization
from diffusion_lab.schedules.base import Schedule


def _times(x0: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.device, torch.Tensor]:
    """(the device the generator draws on, t ~ U(0, 1] per sample in float64 on x0's device)."""
    dev = generator.device if generator is not None else x0.device
    return dev, (1.0 - torch.rand(x0.shape[0], generator=generator, dtype=torch.float64, device=dev)).to(x0.device)


class ForwardProcessLoss(Loss):
    """MSE of x̂_0 at x_t = F_t(x_0, ε), t ~ U(0, 1] (module docstring)."""

    name = "forward_mse"

    def __init__(self):
        super().__init__(None)

    def validate(self, schedule: Schedule, parameterization: Parameterization) -> None:
        if getattr(schedule, "discrete", False):
            raise ConfigError(f"loss=forward_mse is for continuous processes but schedule={schedule.kind} is discrete; "
                              "use loss=forward_ce.")
        if getattr(schedule, "process", None) is None:
            raise ConfigError(f"loss=forward_mse needs a forward-process schedule (schedule=blur or mask), got "
                              f"{type(schedule).__name__}; Gaussian schedules train with loss=eps_mse or edm.")
        if parameterization.kind != "x0":
            raise ConfigError(f"loss=forward_mse trains x̂0: set parameterization=x0, not {parameterization.kind}.")

    def __call__(self, model, x0, *, generator=None, net_kwargs=None) -> LossOutput:
        self._check(model)
        process = model.schedule.process
        dev, t = _times(x0, generator)
        x64 = x0.to(torch.float64)
        eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64, device=dev).to(x0.device)  # ε ~ N(0, I)
        x_t = process.apply(x64, t, eps)
        pred = model.output(x_t.to(x0.dtype), t.to(x0.dtype), **(net_kwargs or {})).prediction
        per_sample = mean_flat((pred.to(x0.dtype) - x0) ** 2)
        return self._finish(per_sample, torch.ones_like(per_sample), t.to(x0.dtype), {})

    def __repr__(self) -> str:
        return "ForwardProcessLoss()"


class DiscreteForwardLoss(Loss):
    """Cross-entropy of the K logits per pixel at x_t ~ q(x_t | x_0), t ~ U(0, 1] (module docstring)."""

    name = "forward_ce"

    def __init__(self):
        super().__init__(None)

    def validate(self, schedule: Schedule, parameterization: Parameterization) -> None:
        if not getattr(schedule, "discrete", False):
            raise ConfigError(f"loss=forward_ce needs a discrete forward process (schedule=absorbing or uniform), got "
                              f"{type(schedule).__name__}; continuous processes train with loss=forward_mse.")
        if parameterization.kind != "x0":
            raise ConfigError(f"loss=forward_ce predicts x0's levels: set parameterization=x0, not {parameterization.kind}.")

    def __call__(self, model, x0, *, generator=None, net_kwargs=None) -> LossOutput:
        self._check(model)
        sch = model.schedule
        dev, t = _times(x0, generator)
        states0 = sch.decode(x0)
        x_t = sch.encode(sch.process.apply(states0.to(dev), t.to(dev), generator))  # drawn where the generator lives
        logits = category_logits(model.raw(x_t.to(x0.device, x0.dtype), t.to(x0.dtype), **(net_kwargs or {})), x0, sch.levels)
        ce = torch.nn.functional.cross_entropy(logits.movedim(2, 1).float(), states0.to(x0.device), reduction="none")
        per_sample = mean_flat(ce)
        return self._finish(per_sample, torch.ones_like(per_sample), t.to(x0.dtype), {})

    def __repr__(self) -> str:
        return "DiscreteForwardLoss()"


def category_logits(out: torch.Tensor, x: torch.Tensor, levels: int) -> torch.Tensor:
    """The network output (B, C·K, ...) as logits (B, C, K, ...) for data x of shape (B, C, ...)."""
    B, C = x.shape[0], x.shape[1]
    if out.shape[0] != B or out.shape[1] != C * levels or out.shape[2:] != x.shape[2:]:
        raise ValueError(f"a discrete forward process with {levels} levels needs a network with out_channels = "
                         f"{C}·{levels} = {C * levels}, got output {tuple(out.shape)} for data {tuple(x.shape)}; set "
                         f"model.out_channels={C * levels}.")
    return out.reshape(B, C, levels, *x.shape[2:])
