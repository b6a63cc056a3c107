"""A continuous forward process (``additive``) as a schedule, so that the run layer can train and evaluate it.

The run layer builds a schedule, a parameterization, a loss and samplers; a general process enters as
``ForwardProcessSchedule(kind, ...)`` (``schedule=blur`` / ``schedule=mask``), which carries the process
(``process``), draws the prior x_1 (``prior_sample``), and gives the network its noise label 1000·t
through the ``x0`` parameterization (the network predicts x̂_0; the loss is ``ForwardProcessLoss``, the
sampler ``forward_process``). Its α(t) = 1 and σ(t) = t only keep the adapter's conversions defined: they
are not the process (no Gaussian interpolation is implied), and the ODE/SDE samplers refuse it at start-up.

Blur's prior: the fully blurred image is (up to e^{−π²τ_1/n²} ≈ 0.7% of the first mode at the defaults)
its mean colour, so x_1 = c·1 + δ ε with c ~ N(prior_mean, prior_std²), the per-image mean of the data
(Rissanen et al. 2023 fit a density to the blurred training images instead).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.forward.additive import AdditiveProcess, HeatBlurProcess, MaskProcess
from diffusion_lab.schedules.base import Schedule

KINDS = ("blur", "mask")


class ForwardProcessSchedule(Schedule):
    """``kind``: "blur" (``HeatBlurProcess``: image_size, sigma_blur_min/max, delta, prior_mean, prior_std) or
    "mask" (``MaskProcess``: shape, fill, delta, seed)."""

    t_min, t_max = 1e-3, 1.0

    def __init__(self, kind: str, shape: tuple[int, ...] | list[int], delta: float = 0.01,
                 sigma_blur_min: float = 0.5, sigma_blur_max: float = 8.0, prior_mean: float = 0.0,
                 prior_std: float = 0.1, fill: float = 0.0, seed: int = 0):
        if kind not in KINDS:
            raise ValueError(f"schedule.kind={kind!r} is not a forward process; choose one of {KINDS}.")
        self.kind, self.shape = kind, tuple(int(s) for s in shape)
        self.prior_mean, self.prior_std = float(prior_mean), float(prior_std)
        if kind == "blur":
            if len(self.shape) != 3:
                raise ValueError(f"schedule=blur needs images (C, H, W), got shape {self.shape}; use schedule=mask for vectors.")
            self.process: AdditiveProcess = HeatBlurProcess(self.shape[-1], sigma_blur_min, sigma_blur_max, delta)
        else:
            self.process = MaskProcess(self.shape, fill=fill, delta=delta, seed=seed)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def prior_sample(self, shape, generator=None, dtype=torch.float32, device=None) -> Tensor:
        """x_1 (module docstring), drawn on the CPU generator's device then moved."""
        if self.kind == "blur":
            c = self.prior_mean + self.prior_std * torch.randn(shape[0], generator=generator, dtype=torch.float64)
            x = c.reshape(-1, *([1] * (len(shape) - 1))).expand(shape).clone()
            x = x + self.process.delta * torch.randn(shape, generator=generator, dtype=torch.float64)
        else:
            x = self.process.prior(tuple(shape), generator, torch.float64)
        return x.to(dtype=dtype, device=device)

    def __repr__(self) -> str:
        return f"ForwardProcessSchedule(kind={self.kind!r}, shape={self.shape}, process={type(self.process).__name__})"
