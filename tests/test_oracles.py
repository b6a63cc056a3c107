"""The Gaussian-mixture oracle against exact math: its score is the gradient of its log-density, its
views agree through the conversion layer and with Tweedie's formula written out per component, its
p_t samples have the closed-form moments, it reproduces itself through the Denoiser for every
parameterization, its density normalizes, and the single-Gaussian flow map solves the PF-ODE."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_lab.oracles import GaussianMixture
from diffusion_lab.parameterization import PARAMETERIZATIONS, Coefficients, Parameterization, convert
from diffusion_lab.denoiser import Denoiser
from diffusion_lab.schedules import VPLinearSchedule
from schedule_cases import F64, PLAIN, SCHEDULES
SOME = ["vp", "ddpm", "ve", "edm", "rectified_flow", "cosine"]


def times(schedule, n: int, seed: int = 0) -> torch.Tensor:
    """Per-sample t in [t_min, t_max], both ends included, off the grid of discrete schedules."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = schedule.t_min, schedule.t_max
    t = torch.cat([torch.tensor([lo, hi], dtype=F64), lo + (hi - lo) * torch.rand(n - 2, generator=g, dtype=F64)])
    return t


def noisy(mix: GaussianMixture, schedule, t: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x0 = mix.sample(len(t), g)
    eps = torch.randn(len(t), mix.dim, generator=g, dtype=F64)
    return schedule.add_noise(x0, eps, t)


def close(a, b, tol):
    assert torch.isfinite(a).all()
    err = float(((a - b).abs() / (1 + b.abs())).max())
    assert err <= tol, err


# --------------------------------------------------------------------------- score = ∇ log p_t
@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize("name", SOME + ["subvp", "zero_snr_ddpm"])
def test_score_is_gradient_of_log_density(name, dim):
    s = SCHEDULES[name]()
    mix = GaussianMixture.random(dim=dim, components=3, seed=dim)
    t = times(s, 12)
    x = noisy(mix, s, t).requires_grad_(True)
    (grad,) = torch.autograd.grad(mix.log_prob(x, t, s).sum(), x)
    sc = mix.score(x.detach(), t, s)
    scale = sc.abs().max(dim=1, keepdim=True).values + 1
    assert float(((sc - grad).abs() / scale).max()) < 1e-10


@pytest.mark.parametrize("dim", [2, 16])
def test_log_density_matches_direct_formula(dim):
    """log p_t = logsumexp_k(log π_k + log N(x; α μ_k, α² Σ_k + σ² I)), computed with torch's
    MultivariateNormal (independent of the oracle's eigen-decomposition)."""
    s = VPLinearSchedule()
    mix = GaussianMixture.random(dim=dim, components=3, seed=1)
    t = times(s, 8)
    x = noisy(mix, s, t)
    a, sg = s.alpha(t), s.sigma(t)
    eye = torch.eye(dim, dtype=F64)
    ref = []
    for b in range(len(t)):
        comps = [
            torch.log(mix.weights[k])
            + torch.distributions.MultivariateNormal(a[b] * mix.means[k], a[b] ** 2 * mix.covs[k] + sg[b] ** 2 * eye).log_prob(x[b])
            for k in range(3)
        ]
        ref.append(torch.logsumexp(torch.stack(comps), 0))
    close(mix.log_prob(x, t, s), torch.stack(ref), 1e-11)


# --------------------------------------------------------------------------- views
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_views_agree_through_conversion_and_tweedie(name):
    s = SCHEDULES[name]()
    dim = 4
    mix = GaussianMixture.random(dim=dim, components=3, seed=7)
    t = times(s, 10)
    x = noisy(mix, s, t)
    pred = mix.predict(x, t, s)
    c = Coefficients.at(s, t, x)
    for kind in PLAIN:
        p = convert(kind, getattr(pred, kind), x, c)
        for view in PLAIN:
            close(getattr(p, view), getattr(pred, view), 1e-9)
    # Tweedie per component: E[x0 | x] = Σ_k w_k (μ_k + α Σ_k C_k⁻¹ (x − α μ_k)), C_k = α² Σ_k + σ² I
    a, sg = s.alpha(t), s.sigma(t)
    eye = torch.eye(dim, dtype=F64)
    ref = torch.empty_like(x)
    for b in range(len(t)):
        C = a[b] ** 2 * mix.covs + sg[b] ** 2 * eye  # (K, D, D)
        logw = torch.log(mix.weights) + torch.distributions.MultivariateNormal(a[b] * mix.means, C).log_prob(x[b])
        w = torch.softmax(logw, 0)
        sol = torch.linalg.solve(C, (x[b] - a[b] * mix.means)[..., None])[..., 0]
        post = mix.means + a[b] * torch.einsum("kij,kj->ki", mix.covs, sol)
        ref[b] = (w[:, None] * post).sum(0)
    close(pred.x0, ref, 1e-8)


# --------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("name", ["vp", "ve", "rectified_flow", "zero_snr_ddpm"])
def test_sample_t_has_closed_form_moments(name):
    s = SCHEDULES[name]()
    mix = GaussianMixture.random(dim=2, components=3, seed=5)
    # closed-form moments of p_0 written out here (not through mix.mean()/covariance())
    m = (mix.weights[:, None] * mix.means).sum(0)
    second = (mix.weights[:, None, None] * (mix.covs + mix.means[:, :, None] * mix.means[:, None, :])).sum(0)
    cov0 = second - m[:, None] * m[None, :]
    n = 100_000
    for t in (0.5 * (s.t_min + s.t_max), s.t_max):
        tt = torch.tensor(t, dtype=F64)
        a, sg = float(s.alpha(tt)), float(s.sigma(tt))
        mean_t, cov_t = a * m, a * a * cov0 + sg * sg * torch.eye(2, dtype=F64)
        x = mix.sample_t(n, t, s, generator=torch.Generator().manual_seed(11))
        xc = x - mean_t
        se_mean = torch.sqrt(torch.diagonal(cov_t) / n)
        assert (((x.mean(0) - mean_t).abs()) < 5 * se_mean).all()
        prods = xc[:, :, None] * xc[:, None, :]
        se_cov = prods.std(0) / math.sqrt(n)
        emp = prods.mean(0)
        assert ((emp - cov_t).abs() < 5 * se_cov).all(), (emp, cov_t)


# --------------------------------------------------------------------------- through the Denoiser
@pytest.mark.parametrize("kind", list(PARAMETERIZATIONS))
@pytest.mark.parametrize("name", SOME + ["zero_snr_ddpm"])
def test_oracle_network_through_denoiser_gives_the_same_x0(name, kind):
    s = SCHEDULES[name]()
    mix = GaussianMixture.random(dim=3, components=2, seed=3)
    t = times(s, 8)
    x = noisy(mix, s, t)
    param = Parameterization(kind)
    den = Denoiser(mix.network(s, param), s, param)
    pred = den(x, t)
    ref = mix.predict(x, t, s)
    close(pred.x0, ref.x0, 1e-8)
    close(pred.eps, ref.eps, 1e-8)
    assert den.nfe == 1
    # a scalar t broadcasts to the batch
    tm = 0.5 * (s.t_min + s.t_max)
    close(den(x, tm).x0, mix.predict(x, tm, s).x0, 1e-8)


# --------------------------------------------------------------------------- normalization
@pytest.mark.parametrize("name", ["vp", "ve", "edm", "rectified_flow"])
def test_log_prob_normalizes_1d(name):
    s = SCHEDULES[name]()
    mix = GaussianMixture.random(dim=1, components=3, seed=2)
    for t in (s.t_min, 0.5 * (s.t_min + s.t_max), s.t_max):
        tt = torch.tensor(t, dtype=F64)
        a, sg = float(s.alpha(tt)), float(s.sigma(tt))
        std = math.sqrt(a * a * float(mix.covs.max()) + sg * sg)
        half = a * float(mix.means.abs().max()) + 12 * std
        grid = torch.linspace(-half, half, 40001, dtype=F64)[:, None]
        dens = torch.exp(mix.log_prob(grid, t, s))
        mass = float(torch.trapezoid(dens, grid[:, 0]))
        assert abs(mass - 1) < 1e-8, (t, mass)


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_log_prob_normalizes_2d(name):
    s = SCHEDULES[name]()
    mix = GaussianMixture.random(dim=2, components=3, seed=4)
    for t in (s.t_min, 0.5 * (s.t_min + s.t_max)):
        tt = torch.tensor(t, dtype=F64)
        a, sg = float(s.alpha(tt)), float(s.sigma(tt))
        std = math.sqrt(a * a * float(torch.linalg.eigvalsh(mix.covs).max()) + sg * sg)
        half = a * float(mix.means.abs().max()) + 10 * std
        u = torch.linspace(-half, half, 401, dtype=F64)
        X, Y = torch.meshgrid(u, u, indexing="ij")
        dens = torch.exp(mix.log_prob(torch.stack([X.flatten(), Y.flatten()], 1), t, s)).reshape(401, 401)
        mass = float(torch.trapezoid(torch.trapezoid(dens, u, dim=1), u))
        assert abs(mass - 1) < 1e-6, (t, mass)


def test_data_log_prob_and_moments():
    mix = GaussianMixture.random(dim=2, components=3, seed=6)
    x = mix.sample(5, torch.Generator().manual_seed(0))
    ref = torch.logsumexp(
        torch.stack([torch.log(mix.weights[k]) + torch.distributions.MultivariateNormal(mix.means[k], mix.covs[k]).log_prob(x) for k in range(3)]),
        0,
    )
    close(mix.log_prob_data(x), ref, 1e-11)
    single = GaussianMixture.single(torch.tensor([1.0, -2.0]), torch.tensor([[2.0, 0.5], [0.5, 1.0]]))
    close(single.mean(), torch.tensor([1.0, -2.0], dtype=F64), 1e-15)
    close(single.covariance(), torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=F64), 1e-15)


# --------------------------------------------------------------------------- single-Gaussian flow map
def _single(dim: int) -> GaussianMixture:
    g = torch.Generator().manual_seed(dim)
    a = torch.randn(dim, dim, generator=g, dtype=F64) / math.sqrt(dim)
    cov = 0.5 * a @ a.T + 0.05 * torch.eye(dim, dtype=F64)
    return GaussianMixture.single(torch.randn(dim, generator=g, dtype=F64), cov)


@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_single_gaussian_flow_map_solves_pf_ode(name, dim):
    """y(r) = Φ(x; t → r): dy/dr = f(r) y − ½ g²(r) ∇ log p_r(y) (central differences), Φ(t → t) = id,
    Φ(r → s)∘Φ(t → r) = Φ(t → s), and the affine map carries Cov p_t onto Cov p_s."""
    s = SCHEDULES[name]()
    mix = _single(dim)
    lo, hi = s.t_min, s.t_max
    t = lo + 0.8 * (hi - lo)
    x = mix.sample_t(4, t, s, generator=torch.Generator().manual_seed(0))
    close(mix.single_gaussian_flow(x, t, t, s), x, 1e-13)
    T = s.num_timesteps
    for frac in (0.05, 0.3, 0.6, 0.95):
        r = lo + frac * (hi - lo)
        if T is not None:
            r = (math.floor(r * T) + 0.5) / T  # off the grid: the discrete slope is one-sided there
        h = 1e-6 * (hi - lo) if T is None else 1e-3 / T
        y = mix.single_gaussian_flow(x, t, r, s)
        dy = (mix.single_gaussian_flow(x, t, r + h, s) - mix.single_gaussian_flow(x, t, r - h, s)) / (2 * h)
        rr = torch.full((len(x),), r, dtype=F64)
        rhs = s.drift(rr)[:, None] * y - 0.5 * s.diffusion2(rr)[:, None] * mix.score(y, rr, s)
        scale = rhs.abs().max() + y.abs().max()
        assert float((dy - rhs).abs().max() / scale) < 1e-6, (r, dy, rhs)
    # composition
    r, q = lo + 0.5 * (hi - lo), lo + 0.1 * (hi - lo)
    close(mix.single_gaussian_flow(mix.single_gaussian_flow(x, t, r, s), r, q, s), mix.single_gaussian_flow(x, t, q, s), 1e-10)
    # pushforward of the covariance: A C_t Aᵀ = C_s with A the linear part of the map
    tt, qq = torch.tensor(t, dtype=F64), torch.tensor(q, dtype=F64)
    a_t, s_t, a_q, s_q = s.alpha(tt), s.sigma(tt), s.alpha(qq), s.sigma(qq)
    eye = torch.eye(dim, dtype=F64)
    A = (mix.single_gaussian_flow(a_t * mix.means[0] + eye, t, q, s) - a_q * mix.means[0]).T  # columns Φ(e_i)
    C_t = a_t**2 * mix.covs[0] + s_t**2 * eye
    C_q = a_q**2 * mix.covs[0] + s_q**2 * eye
    close(A @ C_t @ A.T, C_q, 1e-10)


def test_flow_map_rejects_mixtures():
    mix = GaussianMixture.random(dim=2, components=2)
    with pytest.raises(ValueError):
        mix.single_gaussian_flow(torch.zeros(1, 2, dtype=F64), 0.5, 0.2, VPLinearSchedule())
