"""The schedule: the pair (α(t), σ(t)) of the Gaussian interpolation, and everything derived from it.

Every Gaussian model in diffusion_lab is one interpolation, data at t=0 and noise at t=1:

    x_t = α(t)·x_0 + σ(t)·ε,     ε ~ N(0, I).

From (α, σ) alone follow (Kingma et al. 2021, "Variational Diffusion Models"; Song et al. 2021,
"Score-Based Generative Modeling through SDEs"; Lu et al. 2022, "DPM-Solver"):

* the log signal-to-noise ratio λ(t) = log(α/σ), strictly decreasing in t, and its inverse t(λ);
* the noise-to-signal ratio σ̃ = σ/α = e^{-λ}, the "sigma" of EDM (Karras et al. 2022) in the
  scaled coordinates x̃ = x/α, where the probability-flow ODE reads dx̃/dσ̃ = (x̃ − x̂_0)/σ̃;
* the forward SDE dx = f(t)·x dt + g(t) dW with the same marginals:
      f(t) = α̇/α,      g²(t) = dσ²/dt − 2 f σ² = 2σσ̇ − 2(α̇/α)σ²;
* the prior at t_max: N(0, σ(t_max)² I); the data term α(t_max)·x_0 it ignores is the schedule's
  "prior leak", which each schedule keeps small and documents.

The noise ε is Gaussian unless the schedule carries another noise distribution (``noise``, see
``diffusion_lab.noise``: PFGM++'s σ × Student-t); ``with_noise`` gives a copy that does, and then the
prior is σ(t_max) ε with that ε (its log density follows). The drift f and g² above describe the
Gaussian case only.

Endpoints: every schedule declares its range [t_min, t_max] on which α > 0 and σ > 0, so λ is
finite there; training draws t and samplers place their grids inside that range. Schedules whose
α or σ vanish at 0 or 1 (rectified flow, continuous cosine) clip the range and say where.

Everything here is plain torch, differentiable, and computes in the dtype of ``t`` (samplers pass
float64). No torch.nn, no knowledge of networks, losses or samplers.
"""

from __future__ import annotations

import abc
import copy
import math

import torch
from torch import Tensor

from diffusion_lab.noise import GaussianNoise, NoiseDistribution


class Schedule(abc.ABC):
    """Base class. Subclasses implement ``alpha`` and ``sigma``; closed-form derivatives and
    inverses are optional overrides (the defaults use autograd and bisection)."""

    #: smallest t used for training and the end of sampling
    t_min: float = 0.0
    #: largest t: where sampling starts from the prior
    t_max: float = 1.0
    #: number of discrete training steps T for discrete-time schedules (DDPM); None if continuous
    num_timesteps: int | None = None
    #: q(ε): Gaussian for every schedule unless ``with_noise`` set another (``diffusion_lab.noise``)
    noise: NoiseDistribution = GaussianNoise()

    # ---------------------------------------------------------------- the pair (α, σ)
    @abc.abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        """Signal scale α(t)."""

    @abc.abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        """Noise scale σ(t)."""

    def alpha_dot(self, t: Tensor) -> Tensor:
        """dα/dt (autograd by default)."""
        return _time_derivative(self.alpha, t)

    def sigma_dot(self, t: Tensor) -> Tensor:
        """dσ/dt (autograd by default)."""
        return _time_derivative(self.sigma, t)

    # ---------------------------------------------------------------- derived quantities
    def log_snr(self, t: Tensor) -> Tensor:
        """λ(t) = log(α/σ) = ½·log SNR(t)."""
        return torch.log(self.alpha(t)) - torch.log(self.sigma(t))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        """Inverse of λ(t) on [t_min, t_max]; bisection in float64 unless overridden.

        λ outside [λ(t_max), λ(t_min)] is clamped to the range (the result is then t_max or t_min).
        """
        lam64 = lam.to(torch.float64)
        lo = torch.full_like(lam64, self.t_min)
        hi = torch.full_like(lam64, self.t_max)
        for _ in range(80):  # 2^-80 of the unit interval: below float64 resolution
            mid = 0.5 * (lo + hi)
            go_right = self.log_snr(mid) > lam64  # λ decreases in t: still too much signal
            lo = torch.where(go_right, mid, lo)
            hi = torch.where(go_right, hi, mid)
        return (0.5 * (lo + hi)).to(lam.dtype)

    def sigma_tilde(self, t: Tensor) -> Tensor:
        """σ̃ = σ/α = e^{-λ}: EDM's σ in the scaled coordinates x̃ = x/α."""
        return self.sigma(t) / self.alpha(t)

    def t_from_sigma_tilde(self, sigma_tilde: Tensor) -> Tensor:
        """Inverse of σ̃(t)."""
        return self.t_from_log_snr(-torch.log(sigma_tilde))

    def drift(self, t: Tensor) -> Tensor:
        """f(t) = α̇/α, the drift coefficient of the forward SDE dx = f x dt + g dW."""
        return self.alpha_dot(t) / self.alpha(t)

    def diffusion2(self, t: Tensor) -> Tensor:
        """g²(t) = 2σσ̇ − 2(α̇/α)σ², the squared diffusion coefficient of the forward SDE."""
        s = self.sigma(t)
        return 2.0 * s * self.sigma_dot(t) - 2.0 * self.drift(t) * s * s

    # ---------------------------------------------------------------- prior at t_max
    def prior_std(self) -> float:
        """Standard deviation of the prior N(0, σ(t_max)² I) from which samplers start."""
        return float(self.sigma(torch.tensor(self.t_max, dtype=torch.float64)))

    def prior_sample(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """x_{t_max} = σ(t_max) ε with ε ~ q(ε) (N(0, I) unless ``noise`` says otherwise)."""
        z = self.noise.sample(shape, generator=generator, dtype=dtype, device=device)
        return z * self.prior_std()

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """log of the prior density at x: log q(x/σ_max) − d log σ_max, summed over all but the batch dimension
        (log N(x; 0, σ(t_max)² I) for Gaussian noise)."""
        s = self.prior_std()
        d = x[0].numel()
        return self.noise.log_prob(x / s) - d * math.log(s)

    def with_noise(self, noise: NoiseDistribution | None) -> "Schedule":
        """A copy of this schedule whose ε (training noise and prior) follows ``noise`` (None: Gaussian)."""
        other = copy.copy(self)
        other.noise = noise if noise is not None else GaussianNoise()
        return other

    # ---------------------------------------------------------------- helpers for callers
    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(α, σ, α̇, σ̇) at t, in one call."""
        return self.alpha(t), self.sigma(t), self.alpha_dot(t), self.sigma_dot(t)

    def add_noise(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """x_t = α(t) x_0 + σ(t) ε, with t of shape (B,) broadcast over the other dimensions."""
        a = broadcast_like(self.alpha(t), x0)
        s = broadcast_like(self.sigma(t), x0)
        return a * x0 + s * eps

    def __repr__(self) -> str:
        return f"{type(self).__name__}(t_min={self.t_min}, t_max={self.t_max})"


def broadcast_like(coef: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample coefficient of shape (B,) or () to broadcast against x of shape (B, ...)."""
    if coef.dim() == 0:
        return coef.to(x.dtype)
    return coef.to(x.dtype).reshape(coef.shape[0], *([1] * (x.dim() - 1)))


def _time_derivative(fn, t: Tensor) -> Tensor:
    """d fn(t) / dt elementwise by autograd (fn acts elementwise on t)."""
    with torch.enable_grad():
        tt = t.detach().clone().requires_grad_(True)
        y = fn(tt)
        if not y.requires_grad:  # fn does not depend on t (e.g. α = 1): the derivative is 0
            return torch.zeros_like(t)
        (grad,) = torch.autograd.grad(y.sum(), tt)
    return grad
