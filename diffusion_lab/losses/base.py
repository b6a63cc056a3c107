"""The loss interface every training objective implements, and the steps they share.

    loss(model, x0, *, generator=None, net_kwargs=None) -> LossOutput

where ``model`` is the model adapter (``diffusion_lab.denoiser.Denoiser``: network, schedule,
parameterization, learned variance), draws t with the loss's time sampler (``time_sampling``),
ε ~ q(ε) (the schedule's noise, ``diffusion_lab.noise``: N(0, I) unless a config chose PFGM++'s),
forms x_t = α(t) x_0 + σ(t) ε (data at t=0, see ``schedules.base``), takes the network's
raw output ``model.output(x_t, t)`` (or its reading ``model.read``) and scores it.
``LossOutput.loss`` is the mean over the batch of (importance weight) × (per-sample loss).

``learned_variance``: the loss trains variances, so the model must have them (the adapter splits
the network's 2C channels; Nichol & Dhariwal 2021, Eq. 15).

``gaussian_only``: the loss is only valid for Gaussian ε (the variational bound's Gaussian posteriors,
score matching's Tweedie reading of the score); ``validate`` refuses other noise.

``validate(schedule, parameterization)`` raises ValueError with one sentence naming the offending
config keys; it runs once automatically on the first call. ``state_dict`` holds plain tensors and
lists only (the importance sampler's history), for checkpoints. The history is updated only by
calls made with gradients enabled (training steps), and per process: under DDP each rank keeps its
own (the weights stay unbiased on every rank).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from diffusion_lab.denoiser import Denoiser
from diffusion_lab.losses.time_sampling import TimeSampler, make_time_sampler
from diffusion_lab.noise import check_gaussian
from diffusion_lab.parameterization import Parameterization
from diffusion_lab.schedules.base import Schedule


@dataclass
class LossOutput:
    """loss: scalar, differentiable; per_sample: (B,) unweighted by importance; t: (B,) drawn times."""

    loss: Tensor
    per_sample: Tensor
    t: Tensor
    logs: dict[str, float] = field(default_factory=dict)


def schedule_name(schedule: Schedule) -> str:
    return type(schedule).__name__


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the batch one."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def gaussian_noise(x0: Tensor, generator: torch.Generator | None) -> Tensor:
    """ε ~ N(0, I) shaped like x0, drawn on the generator's device."""
    dev = generator.device if generator is not None else x0.device
    return torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype).to(x0.device)


class Loss:
    """Base class of all training objectives (see the module docstring)."""

    #: config name used in error messages
    name: str = "loss"
    #: the network must output 2C channels (prediction, then variance interpolation in [-1, 1])
    learned_variance: bool = False
    #: valid only for Gaussian noise ε ~ N(0, I)
    gaussian_only: bool = False

    def __init__(self, time_sampler: TimeSampler | str | None = None, default_time_sampler: str = "uniform"):
        self.time_sampler = make_time_sampler(time_sampler, default_time_sampler)
        self._validated: tuple[int, int] | None = None

    # ------------------------------------------------------------------ interface
    def __call__(self, model: Denoiser, x0: Tensor, *, generator: torch.Generator | None = None,
                 net_kwargs: dict | None = None) -> LossOutput:
        raise NotImplementedError

    def validate(self, schedule: Schedule, parameterization: Parameterization) -> None:
        """Raise ValueError (one sentence naming the config keys) for incompatible choices."""
        self.time_sampler.validate(schedule, f"loss={self.name}")
        if self.gaussian_only:
            check_gaussian(schedule.noise, self.name, key="loss", fix="use loss=edm or another denoising loss")

    def state_dict(self) -> dict:
        return {"time_sampler": self.time_sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.time_sampler.load_state_dict(state.get("time_sampler", {}))

    # ------------------------------------------------------------------ shared steps
    def _check(self, model: Denoiser) -> None:
        key = (id(model.schedule), id(model.parameterization))
        if self._validated != key:
            self.validate(model.schedule, model.parameterization)
            if self.learned_variance != model.learned_variance:
                raise ValueError(
                    f"loss={self.name} {'trains' if self.learned_variance else 'does not train'} variances but the model "
                    f"has learned_variance={model.learned_variance}; set model.learned_variance={self.learned_variance}.")
            self._validated = key

    def _draw(self, x0: Tensor, schedule: Schedule, generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(t, importance weight, ε, x_t)."""
        dtype = x0.dtype if x0.is_floating_point() else torch.float32
        t, w = self.time_sampler.sample(x0.shape[0], schedule, device=x0.device, dtype=dtype, generator=generator)
        eps = schedule.noise.sample_like(x0, generator)
        x_t = schedule.add_noise(x0, eps, t)
        return t, w, eps, x_t

    def _finish(self, per_sample: Tensor, weight: Tensor, t: Tensor, logs: dict[str, float]) -> LossOutput:
        """Weighted batch mean. Feeds the (unweighted) per-sample values to the time sampler, only
        when gradients are enabled (training steps): validation under no_grad leaves its history alone."""
        if torch.is_grad_enabled():
            self.time_sampler.update(t, per_sample.detach())
        loss = (weight.to(per_sample.dtype) * per_sample).mean()
        return LossOutput(loss=loss, per_sample=per_sample, t=t, logs=logs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(time_sampler={self.time_sampler!r})"
