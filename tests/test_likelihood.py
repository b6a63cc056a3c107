"""Likelihood on the Gaussian-mixture oracle: the PF-ODE log-likelihood equals the exact log p_{t_min}
(within the solver's tolerance) for every schedule and parameterization; Hutchinson's estimator is
unbiased with the closed-form variance, falling as 1/n_probes; bits/dim of dequantized data; the
discrete L_vlb of a tiny chain equals its closed-form sum (learned variance, discretized decoder)."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_lab.denoiser import Denoiser
from diffusion_lab.likelihood import (bin_width, bits_per_dim, dequantize, draw_probes, exact_divergence,
                                      hutchinson_divergence, ode_log_likelihood)
from diffusion_lab.losses.vlb import variational_bound
from diffusion_lab.oracles import GaussianMixture
from diffusion_lab.parameterization import Parameterization
from diffusion_lab.schedules import (EDMSchedule, RectifiedFlowSchedule, SubVPSchedule, VESchedule, VPCosineSchedule,
                                     VPLinearSchedule)
from diffusion_lab.schedules.discrete import DDPMLinearSchedule, DiscreteSchedule

SCHEDULES = {"vp": VPLinearSchedule, "ve": VESchedule, "edm": EDMSchedule, "rectified_flow": RectifiedFlowSchedule,
             "subvp": SubVPSchedule, "cosine": VPCosineSchedule, "ddpm": lambda: DDPMLinearSchedule(1000)}
MIXTURE = GaussianMixture.random(dim=2, components=4, seed=0)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _likelihood(schedule, kind, x, tol, **kw):
    param = Parameterization(kind)
    den = Denoiser(MIXTURE.network(schedule, param), schedule, param)
    exact_prior = lambda z: MIXTURE.log_prob(z, schedule.t_max, schedule)  # noqa: E731
    return ode_log_likelihood(den, x, rtol=tol, atol=tol, prior_log_prob=exact_prior, **kw)


@pytest.mark.parametrize("sched", sorted(SCHEDULES))
def test_ode_log_likelihood_equals_the_exact_log_density_on_every_schedule(sched):
    """With the exact p_{t_max} as the prior, only the solver's error is left: < 1e-4 nats at rtol = atol = 1e-7."""
    schedule = SCHEDULES[sched]()
    x = MIXTURE.sample(32, gen(0))
    res = _likelihood(schedule, "eps", x, 1e-7)
    exact = MIXTURE.log_prob(x, schedule.t_min, schedule)
    assert float((res.log_prob - exact).abs().max()) < 1e-4
    torch.testing.assert_close(res.log_prob, res.prior_log_prob + res.delta)


@pytest.mark.parametrize("kind", ["x0", "score", "v", "velocity", "edm"])
def test_ode_log_likelihood_is_the_same_in_every_parameterization(kind):
    schedule = VPLinearSchedule()
    x = MIXTURE.sample(32, gen(0))
    exact = MIXTURE.log_prob(x, schedule.t_min, schedule)
    assert float((_likelihood(schedule, kind, x, 1e-7).log_prob - exact).abs().max()) < 1e-4


def test_the_gaussian_prior_term_and_the_default_tolerance():
    """The default rtol = atol = 1e-5 is within 2e-3 nats of exact; the schedule's N(0, σ(t_max)² I) prior adds
    only the prior leak's error (VP: α(1) ≈ 6.6e-3)."""
    schedule = VPLinearSchedule()
    param = Parameterization("eps")
    x = MIXTURE.sample(32, gen(0))
    den = Denoiser(MIXTURE.network(schedule, param), schedule, param)
    res = ode_log_likelihood(den, x)
    exact = MIXTURE.log_prob(x, schedule.t_min, schedule)
    assert float((res.log_prob - exact).abs().max()) < 0.05
    prior = schedule.prior_log_prob(res.x_T)
    torch.testing.assert_close(res.prior_log_prob, prior)
    assert float((_likelihood(schedule, "eps", x, 1e-5).log_prob - exact).abs().max()) < 2e-3
    assert res.nfe == den.nfe > 50


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_with_the_closed_form_variance(kind):
    """For u = A x: E[vᵀAv] = tr A, Var = 2‖A_s‖_F² (Gaussian) or 2‖A_s‖_F² − 2 Σ A_ii² (Rademacher), / n_probes."""
    A = torch.tensor([[1.0, 2.0, 0.5], [-1.0, 0.3, 1.5], [0.7, -0.4, -2.0]], dtype=torch.float64)
    As = (A + A.T) / 2
    var1 = 2 * float((As**2).sum()) - (2 * float((A.diagonal() ** 2).sum()) if kind == "rademacher" else 0.0)
    n = 40000
    x = torch.randn(n, 3, generator=gen(0), dtype=torch.float64).requires_grad_(True)
    u = x @ A.T
    torch.testing.assert_close(exact_divergence(u, x), torch.full((n,), float(A.trace()), dtype=torch.float64))
    for n_probes in (1, 4):
        est = hutchinson_divergence(u, x, draw_probes((n, 3), n_probes, kind, gen(1 + n_probes)))
        se = math.sqrt(var1 / n_probes / n)
        assert abs(float(est.mean()) - float(A.trace())) < 4 * se
        assert float(est.var()) == pytest.approx(var1 / n_probes, rel=0.06)
    probes = draw_probes((5, 3), 2, kind, gen(0))
    assert probes.shape == (2, 5, 3) and (kind == "gaussian" or set(probes.unique().tolist()) == {-1.0, 1.0})


def test_hutchinson_ode_log_likelihood_is_unbiased_and_its_spread_falls_with_probes():
    mixture = GaussianMixture.random(dim=4, components=3, seed=2)
    schedule, param = VPLinearSchedule(), Parameterization("eps")
    x = mixture.sample(300, gen(0))
    exact = mixture.log_prob(x, schedule.t_min, schedule)
    prior = lambda z: mixture.log_prob(z, schedule.t_max, schedule)  # noqa: E731
    spread = {}
    for n_probes in (1, 4):
        den = Denoiser(mixture.network(schedule, param), schedule, param)
        res = ode_log_likelihood(den, x, divergence="hutchinson", n_probes=n_probes, generator=gen(n_probes),
                                 prior_log_prob=prior, rtol=1e-6, atol=1e-6)
        err = res.log_prob - exact
        spread[n_probes] = float(err.std())
        assert abs(float(err.mean())) < 4 * spread[n_probes] / math.sqrt(len(x)) + 1e-3
    assert spread[4] < 0.65 * spread[1] and spread[1] > 0.05  # ≈ 1/√4 = 0.5


def test_bits_per_dim_of_dequantized_data():
    """A model that is uniform on the dequantized cube of L levels scores log₂ L bits/dim, the entropy of
    uniform discrete data; dequantized values stay within half a bin of the level."""
    for levels, value_range in ((256, "[-1,1]"), (17, "[-1,1]"), (256, "[0,1]")):
        width = bin_width(levels, value_range)
        D = 64
        log_p = torch.tensor([-D * math.log(levels * width)], dtype=torch.float64)
        assert float(bits_per_dim(log_p, D, width)) == pytest.approx(math.log2(levels), abs=1e-12)
    assert bin_width(256) == pytest.approx(2 / 255) and -math.log2(bin_width(256)) == pytest.approx(6.994, abs=1e-3)
    x = torch.linspace(-1, 1, 17, dtype=torch.float64).repeat(100)
    y = dequantize(x, bin_width(17), gen(0))
    d = y - x
    assert float(d.abs().max()) <= bin_width(17) / 2 and abs(float(d.mean())) < 0.01 and float(d.std()) > 0.03
    assert float(bits_per_dim(torch.tensor([-2 * math.log(2)]), 2)) == pytest.approx(1.0)  # continuous: no offset


class PointMassModel(torch.nn.Module):
    """x̂_0 = c exactly (x0 parameterization) and a constant learned-variance output v."""

    def __init__(self, c: torch.Tensor, v: float):
        super().__init__()
        self.c, self.v = c, v

    def forward(self, x, label, **_):
        return torch.cat([self.c.expand_as(x), torch.full_like(x, self.v)], dim=1)


def test_discrete_vlb_equals_the_closed_form_sum_on_a_tiny_chain():
    """T = 3, data a point c on the 256-level grid, an exact mean and a learned variance ν: every KL term is
    ½Σ[log(Σ_i/β̃_i) + β̃_i/Σ_i − 1], L_0 the discretized Gaussian's mass of c's bin, L_T the prior KL."""
    betas = [0.1, 0.25, 0.4]
    schedule = DiscreteSchedule(betas)
    c = torch.tensor([[-1 + 2 * 100 / 255, -1 + 2 * 180 / 255]], dtype=torch.float64)
    v = 0.3
    nu = (v + 1) / 2
    den = Denoiser(PointMassModel(c, v), schedule, "x0", learned_variance=True)
    bound = variational_bound(den, c.repeat(4, 1), variance="learned", generator=gen(0))
    b = torch.tensor(betas, dtype=torch.float64)
    ab = torch.cumprod(1 - b, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    bt = b * (1 - ab_prev) / (1 - ab)  # β̃_i; β̃_1 = 0 is clipped to β̃_2 in the learned variance
    D = 2
    kl = []
    for i in (2, 3):
        log_var = nu * math.log(b[i - 1]) + (1 - nu) * math.log(bt[i - 1])
        ratio = float(bt[i - 1]) / math.exp(log_var)
        kl.append(D * 0.5 * (-math.log(ratio) + ratio - 1) / (D * math.log(2)))
    scale1 = math.exp(0.5 * (nu * math.log(b[0]) + (1 - nu) * math.log(bt[1])))
    mass = math.erf((1 / 255) / (scale1 * math.sqrt(2)))  # Φ(h/s) − Φ(−h/s), h = half a bin
    l0 = -D * math.log(mass) / (D * math.log(2))
    aT2 = float(ab[-1])
    lT = float(0.5 * (aT2 * c**2).sum() / (1 - aT2)) / (D * math.log(2))
    torch.testing.assert_close(bound.terms[0], torch.tensor([l0, *kl], dtype=torch.float64), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(bound.prior[0], torch.tensor(lT, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    assert float(bound.total[0]) == pytest.approx(l0 + sum(kl) + lT, rel=1e-9)


# ------------------------------------------------------------------------------------- the evaluation's rows
class QuantizedImages:
    """A datamodule of 1x2x2 'images' on 256 levels of [-1, 1] (a quantized Gaussian), for the bits/dim row."""

    data_shape = (1, 2, 2)
    num_classes = None
    value_range = "[-1,1]"
    levels = 256

    def __init__(self, mixture: GaussianMixture, n: int = 200):
        x = mixture.sample(n, gen(5)).clamp(-1, 1)
        self.x = (torch.round((x + 1) * 127.5) / 127.5 - 1).float().reshape(n, 1, 2, 2)
        self.train_set = self.val_set = [(xi,) for xi in self.x]
        self.test_set = None

    def setup(self, stage=None):
        pass


def test_the_likelihood_rows_equal_the_oracle_nll_and_bits_per_dim():
    """The evaluation's likelihood_ode row on the oracle: vectors — nll = −mean log p_{t_min}(x) (exact up to the
    prior leak and the solver); 1x2x2 images on 256 levels — bpd = E_u[−log p(x + Δ(u − ½))]/(D ln 2) − log₂ Δ,
    the expectation over dequantization estimated independently with 50 draws per item."""
    from diffusion_lab.data import GaussianMixtureDataModule
    from diffusion_lab.evaluation import LikelihoodEvaluation

    schedule, param = VPLinearSchedule(), Parameterization("eps")
    dm = GaussianMixtureDataModule(dim=2, components=4, n_train=10, n_val=100)
    ev = LikelihoodEvaluation(n=100, rtol=1e-6, atol=1e-6, batch_size=100)
    ev.check(schedule, False)
    ev.prepare(dm, (2,))
    (row,) = ev.evaluate(Denoiser(dm.mixture.network(schedule, param), schedule, param))
    exact = -float(dm.mixture.log_prob(ev.x.double(), schedule.t_min, schedule).mean())
    assert row["sampler"] == "likelihood_ode" and row["nll"] == pytest.approx(exact, abs=0.01)
    assert row["bpd"] == pytest.approx(row["nll"] / (2 * math.log(2))) and row["n"] == 100 and row["nfe"] > 20

    gauss = GaussianMixture.single(torch.zeros(4), 0.3**2 * torch.eye(4))
    images = QuantizedImages(gauss)
    ev = LikelihoodEvaluation(n=200, divergence="exact", rtol=1e-6, atol=1e-6, batch_size=200)
    ev.check(schedule, False)
    ev.prepare(images, images.data_shape)
    (row,) = ev.evaluate(Denoiser(gauss.network(schedule, param), schedule, param))
    width = 2 / 255
    flat = images.x.double().reshape(200, 4)
    draws = torch.stack([-gauss.log_prob(dequantize(flat, width, gen(100 + k)), schedule.t_min, schedule)
                         for k in range(50)])  # (draws, items)
    per_item = draws.mean(0) / (4 * math.log(2)) - math.log2(width)
    se = float(per_item.std()) / math.sqrt(200)
    assert abs(row["bpd"] - float(per_item.mean())) < 4 * se + 0.02
    assert row["bpd"] == pytest.approx(row["nll"] / (4 * math.log(2)))
