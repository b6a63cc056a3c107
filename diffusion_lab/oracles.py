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

Class labels (``ClassConditionalMixture``): components carry classes, and p_t(y | x), p_t(x | y) and
their gradients — everything classifier and classifier-free guidance need — are closed form too.
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

    def _state(self, x_in: Tensor, noise_label: Tensor) -> tuple[Tensor, Tensor]:
        """(x, t) from the network's inputs (the inverse of ``Parameterization.net_inputs``)."""
        x_in = x_in.to(torch.float64)
        noise_label = noise_label.to(torch.float64)
        p = self.param
        if p.precond is None:
            return x_in, noise_label / p.time_scale
        sigma_tilde = torch.exp(4.0 * noise_label)
        t = self.schedule.t_from_sigma_tilde(sigma_tilde)
        c = Coefficients.at(self.schedule, t, x_in)
        _, _, c_in, _ = p.precond.scalings(c.sigma / c.alpha)
        return x_in / c_in * c.alpha, t

    def _output(self, pred: Prediction, t: Tensor, shape: torch.Size) -> Tensor:
        """The parameterization's output for the exact prediction."""
        p = self.param
        if p.precond is None:
            return getattr(pred, p.kind).reshape(shape)
        c = Coefficients.at(self.schedule, t, pred.x0)
        return p.precond.target(pred.x0, pred.eps, c).reshape(shape)

    def forward(self, x_in: Tensor, noise_label: Tensor, **_: object) -> Tensor:
        x, t = self._state(x_in, noise_label)
        pred = self.mixture.predict(x.reshape(x.shape[0], -1), t, self.schedule)
        return self._output(pred, t, x.shape)


# ------------------------------------------------------------------------------------------ class labels
class ClassConditionalMixture:
    """A Gaussian mixture whose components carry class labels c_k: the joint p_0(x, y) = Σ_{k: c_k = y}
    π_k N(x; μ_k, Σ_k). Under noising every quantity of guidance is closed form (w_k the
    responsibilities of ``GaussianMixture``, g_k = C_k⁻¹(α μ_k − x)):

        p_t(y | x)          = Σ_{k: c_k = y} w_k(x)
        ∇ log p_t(x | y)    = Σ_{k: c_k = y} w_k g_k / Σ_{k: c_k = y} w_k      (the mixture of class y alone)
        ∇ log p_t(y | x)    = ∇ log p_t(x | y) − ∇ log p_t(x)                  (Bayes' rule)

    ``network`` is a class-conditional oracle (labels < 0: the null label, the unconditional mixture),
    ``classifier`` the exact noise-conditional classifier p_t(y | x) as logits."""

    def __init__(self, mixture: GaussianMixture, classes: Tensor | list[int]):
        classes = torch.as_tensor(classes, dtype=torch.long)
        if classes.shape != (mixture.num_components,) or (classes < 0).any():
            raise ValueError(f"ClassConditionalMixture needs one class index ≥ 0 per component, got {classes.tolist()}.")
        self.mixture, self.classes = mixture, classes
        self.num_classes = int(classes.max()) + 1
        if len(set(classes.tolist())) != self.num_classes:
            raise ValueError(f"every class 0..{self.num_classes - 1} needs a component, got {classes.tolist()}.")

    @classmethod
    def random(cls, dim: int, components: int, num_classes: int, seed: int = 0, spread: float = 2.0,
               scale: float = 0.3) -> "ClassConditionalMixture":
        """``GaussianMixture.random`` with component k in class k mod num_classes."""
        return cls(GaussianMixture.random(dim, components, seed, spread, scale), torch.arange(components) % num_classes)

    def class_prior(self) -> Tensor:
        """π(y) = Σ_{k: c_k = y} π_k, shape (num_classes,)."""
        return torch.zeros(self.num_classes, dtype=torch.float64).index_add_(0, self.classes, self.mixture.weights)

    def conditional(self, y: int) -> GaussianMixture:
        """The data distribution of class y, p_0(x | y)."""
        k = self.classes == int(y)
        m = self.mixture
        return GaussianMixture(m.weights[k] / m.weights[k].sum(), m.means[k], m.covs[k])

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Exact samples (x, y) of the joint p_0(x, y)."""
        m = self.mixture
        k = torch.multinomial(m.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, m.dim, generator=generator, dtype=torch.float64)
        root = m.evecs * m.evals.sqrt()[:, None, :]
        return m.means[k] + torch.einsum("nij,nj->ni", root[k], z), self.classes[k]

    def _masked(self, x: Tensor, t: Tensor | float, schedule: Schedule, labels: Tensor | None):
        x, a, s = self.mixture._per_sample(x, t, schedule)
        logp, grad = self.mixture._components(x, a, s)
        if labels is None:
            return logp, grad
        labels = torch.as_tensor(labels, dtype=torch.long).to(x.device).expand(x.shape[0])
        keep = (self.classes[None, :] == labels[:, None]) | (labels[:, None] < 0)
        return logp.masked_fill(~keep, -math.inf), grad

    def class_log_posterior(self, x: Tensor, t: Tensor | float, schedule: Schedule) -> Tensor:
        """log p_t(y | x) for every class, shape (B, num_classes)."""
        logp, _ = self._masked(x, t, schedule, None)
        norm = torch.logsumexp(logp, dim=1, keepdim=True)
        out = torch.full((logp.shape[0], self.num_classes), -math.inf, dtype=logp.dtype, device=logp.device)
        for y in range(self.num_classes):
            out[:, y] = torch.logsumexp(logp[:, self.classes == y], dim=1)
        return out - norm

    def score(self, x: Tensor, t: Tensor | float, schedule: Schedule, labels: Tensor | None = None) -> Tensor:
        """∇ log p_t(x | y) per sample (labels < 0 or None: the unconditional ∇ log p_t(x))."""
        logp, grad = self._masked(x, t, schedule, labels)
        return (torch.softmax(logp, dim=1)[:, :, None] * grad).sum(1)

    def class_log_posterior_grad(self, x: Tensor, t: Tensor | float, schedule: Schedule, labels: Tensor) -> Tensor:
        """∇_x log p_t(y | x) = ∇ log p_t(x | y) − ∇ log p_t(x)."""
        return self.score(x, t, schedule, labels) - self.score(x, t, schedule, None)

    def predict(self, x: Tensor, t: Tensor | float, schedule: Schedule, labels: Tensor | None = None) -> Prediction:
        """The exact prediction of p_t(x | y) (labels < 0 or None: of p_t(x))."""
        x = x.to(torch.float64)
        t = torch.as_tensor(t, dtype=torch.float64)
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        sc = self.score(x, t, schedule, labels)
        c = Coefficients.at(schedule, t, x)
        return from_x0_eps((x + c.sigma**2 * sc) / c.alpha, -c.sigma * sc, c)

    def network(self, schedule: Schedule, parameterization) -> "ConditionalOracleNetwork":
        """A perfectly trained class-conditional network (null label: the unconditional mixture)."""
        return ConditionalOracleNetwork(self, schedule, parameterization)

    def classifier(self, schedule: Schedule) -> "OracleClassifier":
        """The exact noise-conditional classifier: logits log p_t(y | x)."""
        return OracleClassifier(self, schedule)


class ConditionalOracleNetwork(OracleNetwork):
    """``net(x_in, noise_label, class_labels=None)``: the exact prediction of p_t(x | y); a label < 0
    (or None) is the null label, whose prediction is that of the whole mixture p_t(x)."""

    def __init__(self, labelled: ClassConditionalMixture, schedule: Schedule, parameterization):
        super().__init__(labelled.mixture, schedule, parameterization)
        self.labelled = labelled
        self.num_classes = labelled.num_classes

    def forward(self, x_in: Tensor, noise_label: Tensor, class_labels: Tensor | None = None, **_: object) -> Tensor:
        x, t = self._state(x_in, noise_label)
        pred = self.labelled.predict(x.reshape(x.shape[0], -1), t, self.schedule, class_labels)
        return self._output(pred, t, x.shape)


class OracleClassifier(torch.nn.Module):
    """``classifier(x_in, noise_label) -> logits`` with logits = log p_t(y | x) exactly, taking the inputs
    of ``guidance.classifier_inputs`` (x/√(α² + σ²), 1000·t); differentiable in x_in."""

    dtype = torch.float64

    def __init__(self, labelled: ClassConditionalMixture, schedule: Schedule, time_scale: float = 1000.0):
        super().__init__()
        self.labelled, self.schedule, self.time_scale = labelled, schedule, float(time_scale)
        self.num_classes = labelled.num_classes

    def forward(self, x_in: Tensor, noise_label: Tensor) -> Tensor:
        t = noise_label.to(torch.float64) / self.time_scale
        scale = torch.sqrt(self.schedule.alpha(t) ** 2 + self.schedule.sigma(t) ** 2)
        x = x_in.to(torch.float64).reshape(x_in.shape[0], -1) * scale[:, None]
        return self.labelled.class_log_posterior(x, t, self.schedule)
