"""Exact denoisers for Gaussian-mixture data: the ground truth for tests and benchmarks.

Data p_0 = Σ_k π_k N(μ_k, Σ_k) in R^D. Under x_t = α x_0 + σ ε every component stays Gaussian:

    p_t(x) = Σ_k π_k N(x; α μ_k, C_k),       C_k = α² Σ_k + σ² I.

With responsibilities w_k(x) = softmax_k(log π_k + log N(x; α μ_k, C_k)),

    score      ∇ log p_t(x) = Σ_k w_k C_k⁻¹ (α μ_k − x)
    x̂_0       E[x_0 | x_t = x] = (x + σ² ∇ log p_t(x)) / α         (Tweedie's formula)
    ε̂         E[ε | x_t = x] = −σ ∇ log p_t(x)

(the last two follow from E[x | x_0] = α x_0 and Tweedie: E[α x_0 | x] = x + σ² ∇ log p_t). The
flow velocity and v follow through ``parameterization``. We diagonalise Σ_k = U_k diag(e_k) U_kᵀ
once, so C_k = U_k diag(α² e_k + σ²) U_kᵀ costs nothing per t, for any per-sample t.

For one Gaussian N(μ, Σ) the probability-flow ODE has the exact flow map (per eigen-direction of Σ)

    x_s − α_s μ = √((α_s² e + σ_s²)/(α_t² e + σ_t²)) · (x_t − α_t μ),

because the PF-ODE maps the Gaussian p_t linearly onto p_s along each eigen-direction, which is
the reference-free check of a solver's order (``single_gaussian_flow``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion_lab.parameterization import Coefficients, Prediction, from_x0_eps
from diffusion_lab.schedules.base import Schedule


class GaussianMixture:
    """A mixture of K full-covariance Gaussians in R^D, computed in float64."""

    def __init__(self, weights: Tensor, means: Tensor, covs: Tensor):
        weights = torch.as_tensor(weights, dtype=torch.float64)
        means = torch.as_tensor(means, dtype=torch.float64)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if means.dim() != 2 or covs.shape != (means.shape[0], means.shape[1], means.shape[1]) or weights.shape != (means.shape[0],):
            raise ValueError(
                f"GaussianMixture needs weights (K,), means (K, D), covs (K, D, D); got {tuple(weights.shape)}, "
                f"{tuple(means.shape)}, {tuple(covs.shape)}."
            )
        if (weights < 0).any() or abs(float(weights.sum()) - 1.0) > 1e-5:
            raise ValueError(f"GaussianMixture weights must be non-negative and sum to 1, got {weights.tolist()}.")
        self.weights, self.means, self.covs = weights / weights.sum(), means, covs  # exact sum 1 in float64
        evals, evecs = torch.linalg.eigh(0.5 * (covs + covs.transpose(-1, -2)))
        if (evals < 0).any():
            raise ValueError("GaussianMixture covariances must be positive semi-definite.")
        self.evals, self.evecs = evals.clamp_min(0.0), evecs  # (K, D), (K, D, D)

    # ----------------------------------------------------------------- constructors
    @classmethod
    def random(cls, dim: int, components: int, seed: int = 0, spread: float = 2.0, scale: float = 0.3) -> "GaussianMixture":
        """Random mixture: means ~ N(0, spread²/D·...) and random full covariances of size ~scale²."""
        g = torch.Generator().manual_seed(seed)
        w = torch.rand(components, generator=g, dtype=torch.float64) + 0.5
        means = spread * torch.randn(components, dim, generator=g, dtype=torch.float64) / math.sqrt(max(dim, 1)) * math.sqrt(2)
        a = torch.randn(components, dim, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
        covs = scale**2 * (a @ a.transpose(-1, -2) + 0.2 * torch.eye(dim, dtype=torch.float64))
        return cls(w / w.sum(), means, covs)

    @classmethod
    def single(cls, mean: Tensor, cov: Tensor) -> "GaussianMixture":
        mean = torch.as_tensor(mean, dtype=torch.float64)
        cov = torch.as_tensor(cov, dtype=torch.float64)
        return cls(torch.ones(1, dtype=torch.float64), mean[None], cov[None])

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def mean(self) -> Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    def covariance(self) -> Tensor:
        m = self.mean()
        d = self.means - m
        return (self.weights[:, None, None] * (self.covs + d[:, :, None] * d[:, None, :])).sum(0)

    # ----------------------------------------------------------------- sampling
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples of p_0, shape (n, D), float64."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        root = self.evecs * self.evals.sqrt()[:, None, :]  # U diag(√e): root rootᵀ = Σ
        return self.means[k] + torch.einsum("nij,nj->ni", root[k], z)

    def sample_t(self, n: int, t: float | Tensor, schedule: Schedule, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples of p_t = law of α x_0 + σ ε."""
        x0 = self.sample(n, generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        t = torch.as_tensor(t, dtype=torch.float64).expand(n)
        return schedule.add_noise(x0, eps, t)

    # ----------------------------------------------------------------- exact quantities at time t
    def _per_sample(self, x: Tensor, t: Tensor | float, schedule: Schedule) -> tuple[Tensor, Tensor, Tensor]:
        x = x.to(torch.float64)
        t = torch.as_tensor(t, dtype=torch.float64)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        return x, schedule.alpha(t), schedule.sigma(t)

    def _components(self, x: Tensor, a: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """log π_k N(x; α μ_k, C_k) of shape (B, K) and C_k⁻¹(α μ_k − x) of shape (B, K, D)."""
        var = a[:, None, None] ** 2 * self.evals[None] + s[:, None, None] ** 2  # (B, K, D) eigenvalues of C_k
        diff = a[:, None, None] * self.means[None] - x[:, None, :]  # (B, K, D)
        proj = torch.einsum("kdj,bkd->bkj", self.evecs, diff)  # Uᵀ (α μ − x)
        logdet = torch.log(var).sum(-1)
        maha = (proj * proj / var).sum(-1)
        logp = torch.log(self.weights)[None] - 0.5 * (maha + logdet + self.dim * math.log(2 * math.pi))
        grad = torch.einsum("kdj,bkj->bkd", self.evecs, proj / var)
        return logp, grad

    def log_prob(self, x: Tensor, t: Tensor | float, schedule: Schedule) -> Tensor:
        """Exact log p_t(x), shape (B,)."""
        x, a, s = self._per_sample(x, t, schedule)
        logp, _ = self._components(x, a, s)
        return torch.logsumexp(logp, dim=1)

    def log_prob_data(self, x: Tensor) -> Tensor:
        """Exact log p_0(x) (requires positive-definite covariances)."""
        one = torch.ones(x.shape[0], dtype=torch.float64)
        logp, _ = self._components(x.to(torch.float64), one, 0 * one)
        return torch.logsumexp(logp, dim=1)

    def score(self, x: Tensor, t: Tensor | float, schedule: Schedule) -> Tensor:
        """Exact ∇ log p_t(x)."""
        x, a, s = self._per_sample(x, t, schedule)
        logp, grad = self._components(x, a, s)
        w = torch.softmax(logp, dim=1)
        return (w[:, :, None] * grad).sum(1)

    def predict(self, x: Tensor, t: Tensor | float, schedule: Schedule) -> Prediction:
        """Exact x̂_0, ε̂, score, v and velocity at (x, t)."""
        x, a, s = self._per_sample(x, t, schedule)
        t = torch.as_tensor(t, dtype=torch.float64)
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        sc = self.score(x, t, schedule)
        c = Coefficients.at(schedule, t, x)
        x0 = (x + c.sigma**2 * sc) / c.alpha
        eps = -c.sigma * sc
        return from_x0_eps(x0, eps, c)

    def mmd2(self, x: Tensor, widths: tuple[float, ...] = (0.2, 0.5, 1.0)) -> float:
        """Unbiased MMD² between samples x (n, D) and the mixture itself, summed over Gaussian kernels
        k(x, y) = exp(−‖x − y‖²/2ℓ²). The expectations under p_0 are closed form (no exact samples needed):
        E_y k(x, y) = Σ_j π_j ℓ^D det(ℓ²I + Σ_j)^{−½} exp(−½(x − μ_j)ᵀ(ℓ²I + Σ_j)⁻¹(x − μ_j)), and E k(y, y')
        likewise with Σ_j + Σ_k. Zero in expectation iff x ~ p_0 (characteristic kernel); noise O(1/n).
        Non-finite samples give +inf."""
        if not torch.isfinite(x).all():
            return float("inf")
        x = x.to(torch.float64)
        n, D = x.shape
        eye = torch.eye(D, dtype=torch.float64)
        d2 = torch.cdist(x, x).pow(2)
        total = 0.0
        for ell in widths:
            K = torch.exp(-d2 / (2 * ell * ell))
            kxx = (K.sum() - K.diagonal().sum()) / (n * (n - 1))
            kxy = torch.zeros(n, dtype=torch.float64)
            for w, m, S in zip(self.weights, self.means, self.covs):
                A = ell * ell * eye + S
                diff = x - m
                q = (diff @ torch.linalg.inv(A) * diff).sum(1)
                kxy += w * ell**D / torch.sqrt(torch.linalg.det(A)) * torch.exp(-0.5 * q)
            kyy = 0.0
            for wj, mj, Sj in zip(self.weights, self.means, self.covs):
                for wk, mk, Sk in zip(self.weights, self.means, self.covs):
                    A = ell * ell * eye + Sj + Sk
                    dm = mj - mk
                    kyy += wj * wk * ell**D / torch.sqrt(torch.linalg.det(A)) * torch.exp(-0.5 * dm @ torch.linalg.solve(A, dm))
            total += float(kxx - 2 * kxy.mean() + kyy)
        return total

    def network(self, schedule: Schedule, parameterization) -> "OracleNetwork":
        """A parameter-free 'network' that outputs the exact prediction in the given
        parameterization, taking the same (input, noise label) a real network takes."""
        return OracleNetwork(self, schedule, parameterization)

    # ----------------------------------------------------------------- single Gaussian: exact flow map
    def single_gaussian_flow(self, x_t: Tensor, t: float, s: float, schedule: Schedule) -> Tensor:
        """Exact PF-ODE map from time t to time s for a one-component mixture."""
        if self.num_components != 1:
            raise ValueError("single_gaussian_flow needs a one-component mixture.")
        tt = torch.tensor([t, s], dtype=torch.float64)
        (a_t, a_s), (s_t, s_s) = schedule.alpha(tt), schedule.sigma(tt)
        U, e, mu = self.evecs[0], self.evals[0], self.means[0]
        ratio = torch.sqrt((a_s**2 * e + s_s**2) / (a_t**2 * e + s_t**2))
        y = (x_t.to(torch.float64) - a_t * mu) @ U
        return (y * ratio) @ U.T + a_s * mu


class OracleNetwork(torch.nn.Module):
    """Wraps a GaussianMixture as ``net(x_in, noise_label) -> output``, inverting the
    parameterization's input map so that it behaves exactly like a perfectly trained network."""

    #: the oracle computes in float64: the denoiser feeds it the sampler's float64 state uncast
    dtype = torch.float64

    def __init__(self, mixture: GaussianMixture, schedule: Schedule, parameterization):
        super().__init__()
        self.mixture, self.schedule, self.param = mixture, schedule, parameterization

    def forward(self, x_in: Tensor, noise_label: Tensor, **_: object) -> Tensor:
        x_in = x_in.to(torch.float64)
        noise_label = noise_label.to(torch.float64)
        p = self.param
        if p.precond is None:
            t = noise_label / p.time_scale
            x = x_in
        else:
            sigma_tilde = torch.exp(4.0 * noise_label)
            t = self.schedule.t_from_sigma_tilde(sigma_tilde)
            c = Coefficients.at(self.schedule, t, x_in)
            _, _, c_in, _ = p.precond.scalings(c.sigma / c.alpha)
            x = x_in / c_in * c.alpha
        shape = x.shape
        pred = self.mixture.predict(x.reshape(shape[0], -1), t, self.schedule)
        c = Coefficients.at(self.schedule, t, pred.x0)
        if p.precond is None:
            out = getattr(pred, p.kind)
        else:
            out = p.precond.target(pred.x0, pred.eps, c)
        return out.reshape(shape)
