"""A continuous forward process (``additive``) as a schedule, so that the run layer can train and evaluate it.

The run layer builds a schedule, a parameterization, a loss and samplers; a general process enters as
``ForwardProcessSchedule(kind, ...)`` (``schedule=blur`` / ``schedule=mask``), which carries the process
(``process``), draws the prior x_1 (``prior_sample``), and gives the network its noise label 1000·t
through the ``x0`` parameterization (the network predicts x̂_0; the loss is ``ForwardProcessLoss``, the
sampler ``forward_process``). Its α(t) = 1 and σ(t) = t only keep the adapter's conversions defined: they
are not the process (no Gaussian interpolation is implied), and the ODE/SDE samplers refuse it at start-up.

Discrete corruption (``schedule=absorbing`` / ``uniform``, D3PM, Austin et al. 2021): the data are quantised
to ``levels`` values; x_t lives in the run layer as a float image whose pixels are the dequantised levels
k ↦ 2k/(K − 1) − 1, with the absorbing MASK state written one level below −1 (``encode``/``decode`` map
states ↔ floats exactly). The network reads that image and outputs K logits per pixel (out_channels =
C·K); it is trained by ``loss=forward_ce`` and sampled by ``sampler=forward_process`` with
``update=posterior`` or ``naive``.

Blur's prior: the fully blurred image is (up to e^{−π²τ_1/n²} ≈ 0.7% of the first mode at the defaults)
its mean colour, so x_1 = c·1 + δ ε with c ~ N(prior_mean, prior_std²), the per-image mean of the data
(Rissanen et al. 2023 fit a density to the blurred training images instead).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.forward.additive import AdditiveProcess, HeatBlurProcess, MaskProcess
from diffusion_lab.forward.discrete import KINDS as DISCRETE_KINDS
from diffusion_lab.forward.discrete import DiscreteCorruption, dequantize, quantize
from diffusion_lab.schedules.base import Schedule

KINDS = ("blur", "mask", *DISCRETE_KINDS)


class ForwardProcessSchedule(Schedule):
    """``kind``: "blur" (``HeatBlurProcess``: image_size, sigma_blur_min/max, delta, prior_mean, prior_std),
    "mask" (``MaskProcess``: shape, fill, delta, seed), or "absorbing" / "uniform" (``DiscreteCorruption``:
    levels, corruption = linear | cosine ᾱ_t)."""

    t_min, t_max = 1e-3, 1.0

    def __init__(self, kind: str, shape: tuple[int, ...] | list[int], delta: float = 0.01,
                 sigma_blur_min: float = 0.5, sigma_blur_max: float = 8.0, prior_mean: float = 0.0,
                 prior_std: float = 0.1, fill: float = 0.0, seed: int = 0, levels: int = 16,
                 corruption: str = "linear"):
        if kind not in KINDS:
            raise ValueError(f"schedule.kind={kind!r} is not a forward process; choose one of {KINDS}.")
        self.kind, self.shape = kind, tuple(int(s) for s in shape)
        self.prior_mean, self.prior_std = float(prior_mean), float(prior_std)
        self.discrete = kind in DISCRETE_KINDS
        if self.discrete:
            self.process = DiscreteCorruption(kind, levels, corruption)
            self.levels = self.process.K
        elif kind == "blur":
            if len(self.shape) != 3:
                raise ValueError(f"schedule=blur needs images (C, H, W), got shape {self.shape}; use schedule=mask for vectors.")
            self.process: AdditiveProcess = HeatBlurProcess(self.shape[-1], sigma_blur_min, sigma_blur_max, delta)
        else:
            self.process = MaskProcess(self.shape, fill=fill, delta=delta, seed=seed)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return t

    # ------------------------------------------------------------------ discrete states <-> float images
    def encode(self, states: Tensor) -> Tensor:
        """Integer states (MASK = K included) → the float image the run layer carries (module docstring)."""
        K = self.levels
        x = dequantize(states, K).to(torch.float64)
        return torch.where(states >= K, x.new_tensor(-1 - 2 / (K - 1)), x)

    def decode(self, x: Tensor) -> Tensor:
        """The inverse of ``encode``: data images in [−1, 1] are quantised to the K levels, the MASK value
        (below −1) becomes state K."""
        return torch.where(x < -1, self.levels, quantize(x, self.levels))

    def prior_sample(self, shape, generator=None, dtype=torch.float32, device=None) -> Tensor:
        """x_1 (module docstring), drawn on the CPU generator's device then moved."""
        if self.discrete:
            return self.encode(self.process.prior(tuple(shape), generator)).to(dtype=dtype, device=device)
        if self.kind == "blur":
            c = self.prior_mean + self.prior_std * torch.randn(shape[0], generator=generator, dtype=torch.float64)
            x = c.reshape(-1, *([1] * (len(shape) - 1))).expand(shape).clone()
            x = x + self.process.delta * torch.randn(shape, generator=generator, dtype=torch.float64)
        else:
            x = self.process.prior(tuple(shape), generator, torch.float64)
        return x.to(dtype=dtype, device=device)

    def __repr__(self) -> str:
        return f"ForwardProcessSchedule(kind={self.kind!r}, shape={self.shape}, process={type(self.process).__name__})"
