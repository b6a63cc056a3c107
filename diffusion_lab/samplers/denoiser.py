"""The denoiser a sampler sees: a network read through a parameterization, with NFE counting and a
guidance hook. Samplers never look at the network's raw output; they ask for x̂_0, ε̂ or the score.

    D(x, t) = Prediction(x̂_0, ε̂, ŝ, v̂, û)      (see ``diffusion_lab.parameterization``)

The network runs in its own dtype (that of its first parameter, or of x for parameter-free
networks such as the oracle); the prediction comes back in the dtype of x (float64 in samplers).
NFE is counted by wrapping the network: ``nfe`` is the number of calls actually made.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import Tensor

from diffusion_lab.parameterization import Parameterization, Prediction
from diffusion_lab.schedules.base import Schedule

#: guidance(prediction, x, t) -> modified prediction (classifier / classifier-free guidance plug in here)
Guidance = Callable[[Prediction, Tensor, Tensor], Prediction]


class CountingNetwork(torch.nn.Module):
    """Wraps a network and counts its forward calls."""

    def __init__(self, net: Callable[..., Tensor]):
        super().__init__()
        self.net = net
        self.calls = 0

    def forward(self, *args, **kwargs) -> Tensor:
        self.calls += 1
        return self.net(*args, **kwargs)


class DenoiserLike(Protocol):
    schedule: Schedule

    def __call__(self, x: Tensor, t: Tensor | float) -> Prediction: ...

    @property
    def nfe(self) -> int: ...


class Denoiser:
    """net + schedule + parameterization → (x, t) ↦ Prediction."""

    def __init__(
        self,
        net: Callable[..., Tensor],
        schedule: Schedule,
        parameterization: Parameterization | str = "eps",
        guidance: Guidance | None = None,
        net_kwargs: dict | None = None,
        learned_variance: bool = False,
    ):
        self.net = CountingNetwork(net)
        self.schedule = schedule
        self.parameterization = Parameterization(parameterization) if isinstance(parameterization, str) else parameterization
        self.guidance = guidance
        self.net_kwargs = net_kwargs or {}
        #: the network outputs 2C channels: the prediction, then the variance interpolation in [-1, 1]
        self.learned_variance = learned_variance

    @property
    def nfe(self) -> int:
        return self.net.calls

    @property
    def gives_score(self) -> bool:
        """Whether predictions carry a true score ∇ log p_t (Gaussian noising): samplers that need
        the score (reverse SDE, Langevin) refuse a denoiser where this is False."""
        return bool(getattr(self.parameterization, "gives_score", True))

    def reset_nfe(self) -> None:
        self.net.calls = 0

    def _net_dtype(self, x: Tensor) -> torch.dtype:
        net = self.net.net
        if isinstance(net, torch.nn.Module):
            for p in net.parameters():
                return p.dtype
        return x.dtype

    @torch.no_grad()
    def __call__(self, x: Tensor, t: Tensor | float) -> Prediction:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        x_in, label = self.parameterization.net_inputs(x, t, self.schedule)
        dtype = self._net_dtype(x)
        out = self.net(x_in.to(dtype), label.to(dtype), **self.net_kwargs).to(x.dtype)
        var_interp = None
        if self.learned_variance:
            out, raw = out.chunk(2, dim=1)
            var_interp = (raw + 1.0) / 2.0
        pred = self.parameterization.predict(out, x, t, self.schedule)
        pred.var_interp = var_interp
        if self.guidance is not None:
            pred = self.guidance(pred, x, t)
        return pred
