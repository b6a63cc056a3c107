"""Continuous forward processes x_t = F_t(x_0, ε) = D_t(x_0) + σ_t ε, ε ~ N(0, I), data at t = 0.

The "unified" view of diffusion (Bansal et al. 2023, "Cold Diffusion: Inverting Arbitrary Image
Transforms Without Noise"; Daras et al. 2022, "Soft Diffusion"; Rissanen et al. 2023, "Generative
Modelling With Inverse Heat Dissipation"): any degradation D_t with D_0 = identity, plus optional
Gaussian noise σ_t. A network learns x̂_0 ≈ E[x_0 | x_t] (the MSE, −log q(x_0 | x_t) of a Gaussian
decoder) and the sampler alternates x̂_0 with a step to s < t (``sampling``):

    naive       x_s = F_s(x̂_0, ε')                      ε' fresh           (Cold Diffusion, Alg. 1)
    corrected   x_s = x_t − F_t(x̂_0, ε̂) + F_s(x̂_0, ε̂)   ε̂ = (x_t − D_t(x̂_0))/σ_t, or 0 where σ_t = 0
                    = D_s(x̂_0) + σ_s ε̂   (σ_t > 0);   x_t − D_t(x̂_0) + D_s(x̂_0)   (σ = 0)   (Alg. 2)
    posterior   x_s ~ q(x_s | x_t, x_0 = x̂_0)            (Gaussian processes: the DDPM step)

For the Gaussian case D_t(x_0) = α_t x_0 the corrected update is exactly DDIM (η = 0) and the posterior
update is DDPM's ancestral step; the tests check both identities against the sampler zoo.

* ``GaussianProcess(schedule)``: D_t = α_t·, σ_t from any schedule of ``diffusion_lab.schedules``.
* ``HeatBlurProcess``: D_t = exp(−Λ τ_t) in the DCT basis (the heat equation with Neumann boundary,
  Rissanen et al. 2023, Eq. 2–4): frequency (u, v) of an H×W image decays by exp(−π²(u²/H² + v²/W²) τ_t),
  τ_t = σ_B(t)²/2, σ_B(t) = σ_B,min^{1−t} σ_B,max^t (log-spaced, their schedule), D_0 = identity;
  σ_t = δ (their small sampling noise, 0.01). At t = 1 little but the mean colour is left: the prior
  is D_1 of reference images plus δ noise (their kernel density estimate of the blurred data).
* ``MaskProcess``: D_t(x_0) = m_t ⊙ x_0 + (1 − m_t)·fill, m_t hiding the first ⌈t·P⌉ of the P pixels in a
  fixed random order (Cold Diffusion's masking degradation); σ_t = δ (default 0: deterministic, so
  that generation from the all-masked image has no diversity beyond what δ gives — a property of the
  process, reported by ``experiments/pfgm_compare``).

Images batch first (B, C, H, W); t of shape (B,) in [0, 1]. Plain torch, float64 where the caller
passes it.
"""

from __future__ import annotations

import abc
import math

import torch
from torch import Tensor

from diffusion_lab.schedules.base import Schedule, broadcast_like

UPDATES = ("naive", "corrected", "posterior")


class AdditiveProcess(abc.ABC):
    """F_t(x_0, ε) = D_t(x_0) + σ_t ε with ε ~ N(0, I) (module docstring)."""

    discrete = False

    @abc.abstractmethod
    def degrade(self, x0: Tensor, t: Tensor) -> Tensor:
        """D_t(x_0); D_0 is the identity."""

    def noise_std(self, t: Tensor) -> Tensor:
        """σ_t, shape (B,) (0 for a deterministic process)."""
        return torch.zeros_like(t)

    @property
    def deterministic(self) -> bool:
        return False

    def sample_eps(self, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)

    def apply(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_t = F_t(x_0, ε)."""
        return self.degrade(x0, t) + broadcast_like(self.noise_std(t), x0) * eps

    def implied_eps(self, x_t: Tensor, x0_hat: Tensor, t: Tensor) -> Tensor:
        """ε̂ = (x_t − D_t(x̂_0))/σ_t, the noise that F_t(x̂_0, ·) needs to reach x_t (0 where σ_t = 0)."""
        s = broadcast_like(self.noise_std(t), x_t)
        safe = torch.where(s > 0, s, torch.ones_like(s))
        return torch.where(s > 0, (x_t - self.degrade(x0_hat, t)) / safe, torch.zeros_like(x_t))

    def prior(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
              dtype: torch.dtype = torch.float64) -> Tensor:
        """x_1: F_1 of whatever the process keeps of the data at t = 1 (see the subclasses)."""
        raise NotImplementedError

    def posterior_step(self, x_t: Tensor, x0_hat: Tensor, t: Tensor, s: Tensor,
                       generator: torch.Generator | None = None) -> Tensor:
        raise ValueError(f"{type(self).__name__} has no closed-form posterior q(x_s | x_t, x_0); use update=naive or "
                         "corrected.")


class GaussianProcess(AdditiveProcess):
    """The Gaussian schedules as a forward process: D_t = α_t·, σ_t (``schedules``)."""

    def __init__(self, schedule: Schedule):
        self.schedule = schedule

    def degrade(self, x0, t):
        a = torch.where(t == 0, torch.ones_like(t), self.schedule.alpha(t))
        return broadcast_like(a, x0) * x0

    def noise_std(self, t):
        return torch.where(t == 0, torch.zeros_like(t), self.schedule.sigma(t))

    def prior(self, shape, generator=None, dtype=torch.float64):
        return self.schedule.prior_sample(shape, generator=generator, dtype=dtype)

    def posterior_step(self, x_t, x0_hat, t, s, generator=None):
        """DDPM's ancestral step: x_s ~ N(μ(x_t, x̂_0), β̃) (``diffusion_lab.posterior``)."""
        from diffusion_lab.posterior import posterior

        q = posterior(self.schedule, t, s)
        z = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype, device=x_t.device)
        return q.mean(x_t, x0_hat) + broadcast_like(torch.sqrt(q.beta_tilde), x_t) * z


def dct_matrix(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """The orthonormal DCT-II matrix C (n×n): DCT(x) = C x, inverse Cᵀ."""
    k = torch.arange(n, dtype=dtype)[:, None]
    i = torch.arange(n, dtype=dtype)[None, :]
    c = torch.cos(math.pi * (i + 0.5) * k / n) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c


class HeatBlurProcess(AdditiveProcess):
    """Inverse heat dissipation's forward process (module docstring).

    Args:
        image_size: H = W of the images.
        sigma_blur_min, sigma_blur_max: σ_B at t → 0 and t = 1 (Rissanen et al.: 0.5 and 20 at 32², i.e. ~ the
            image size; here the default 8 suits 8×8 digits).
        delta: σ_t = δ for t > 0 (their 0.01).
        reference: images (R, C, H, W) whose D_1 make the prior (set later with ``set_reference``).
    """

    def __init__(self, image_size: int, sigma_blur_min: float = 0.5, sigma_blur_max: float = 8.0, delta: float = 0.01,
                 reference: Tensor | None = None):
        if not (0 < sigma_blur_min < sigma_blur_max and delta >= 0):
            raise ValueError(f"HeatBlurProcess needs 0 < sigma_blur_min < sigma_blur_max and delta ≥ 0, got "
                             f"{sigma_blur_min}, {sigma_blur_max}, {delta}.")
        self.size, self.delta = int(image_size), float(delta)
        self.log_min, self.log_max = math.log(sigma_blur_min), math.log(sigma_blur_max)
        self.C = dct_matrix(self.size)
        freq = math.pi * torch.arange(self.size, dtype=torch.float64) / self.size
        self.lam = freq[:, None] ** 2 + freq[None, :] ** 2  # Λ_{uv} = π²(u² + v²)/n²
        self.reference = reference

    @property
    def deterministic(self) -> bool:
        return self.delta == 0

    def tau(self, t: Tensor) -> Tensor:
        """τ_t = σ_B(t)²/2, and τ_0 = 0."""
        sb = torch.exp(self.log_min + t * (self.log_max - self.log_min))
        return torch.where(t == 0, torch.zeros_like(t), 0.5 * sb * sb)

    def degrade(self, x0, t):
        C = self.C.to(x0)
        coef = C @ x0 @ C.T  # DCT over H and W
        decay = torch.exp(-self.lam.to(x0)[None, None] * broadcast_like(self.tau(t), x0))
        return C.T @ (coef * decay) @ C

    def noise_std(self, t):
        return torch.where(t == 0, torch.zeros_like(t), torch.full_like(t, self.delta))

    def set_reference(self, images: Tensor) -> None:
        self.reference = images

    def prior(self, shape, generator=None, dtype=torch.float64):
        if self.reference is None:
            raise ValueError("HeatBlurProcess.prior needs reference images (set_reference): the prior is their full blur.")
        idx = torch.randint(0, self.reference.shape[0], (shape[0],), generator=generator)
        x0 = self.reference[idx].to(dtype)
        one = torch.ones(shape[0], dtype=dtype)
        return self.apply(x0, one, torch.randn(shape, generator=generator, dtype=dtype))


class MaskProcess(AdditiveProcess):
    """Progressive masking in a fixed random pixel order (module docstring).

    Args:
        shape: the data shape (C, H, W) or (N,); pixels are masked across all channels together.
        fill: the value of a masked pixel; delta: σ_t for t > 0 (0: deterministic); seed: of the order.
    """

    def __init__(self, shape: tuple[int, ...], fill: float = 0.0, delta: float = 0.0, seed: int = 0):
        self.shape, self.fill, self.delta = tuple(shape), float(fill), float(delta)
        pixels = int(math.prod(self.shape[1:])) if len(self.shape) == 3 else int(math.prod(self.shape))
        order = torch.randperm(pixels, generator=torch.Generator().manual_seed(int(seed)))
        self.rank = torch.empty(pixels, dtype=torch.float64)
        self.rank[order] = torch.arange(pixels, dtype=torch.float64)  # pixel p is hidden once t·P > rank(p)
        self.pixels = pixels

    @property
    def deterministic(self) -> bool:
        return self.delta == 0

    def keep(self, t: Tensor) -> Tensor:
        """m_t: 1 where the pixel is still visible, shape (B, 1, H, W) or (B, N)."""
        visible = (self.rank[None, :] >= torch.ceil(t.to(torch.float64)[:, None] * self.pixels)).to(t.dtype)
        if len(self.shape) == 3:
            return visible.reshape(t.shape[0], 1, *self.shape[1:])
        return visible

    def degrade(self, x0, t):
        m = self.keep(t).to(x0)
        return m * x0 + (1 - m) * self.fill

    def noise_std(self, t):
        return torch.where(t == 0, torch.zeros_like(t), torch.full_like(t, self.delta))

    def prior(self, shape, generator=None, dtype=torch.float64):
        return torch.full(shape, self.fill, dtype=dtype) + self.delta * torch.randn(shape, generator=generator, dtype=dtype)
