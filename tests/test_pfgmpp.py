"""PFGM++ noise (Xu et al. 2023): the two draws of the kernel, its moments and density, the D → ∞ limit,
the exact x̂0 under it, sampling through the unchanged ODE samplers, and the refusals."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from diffusion_lab.denoiser import Denoiser
from diffusion_lab.errors import ConfigError
from diffusion_lab.losses import DenoisingScoreMatching, LogNormalTime, VariationalBoundLoss
from diffusion_lab.losses.score_matching import ScoreMatching
from diffusion_lab.nets.mlp import MLP
from diffusion_lab.noise import GaussianNoise, PFGMPPNoise, standard_gamma
from diffusion_lab.oracles import GaussianMixture
from diffusion_lab.parameterization import Parameterization
from diffusion_lab.pfgmpp_oracle import PFGMPPMixtureOracle
from diffusion_lab.samplers import Sampler
from diffusion_lab.schedules import DDPMLinearSchedule, EDMSchedule


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pfgmpp(D, draw="radial") -> EDMSchedule:
    return EDMSchedule().with_noise(PFGMPPNoise(D, draw))


# ------------------------------------------------------------------------------------------ the kernel
def test_standard_gamma_matches_the_gamma_law():
    for a in (0.5, 1.0, 4.0, 1000.0):
        x = standard_gamma(a, (20000,), gen(int(a * 10)))
        assert stats.kstest(x.numpy(), stats.gamma(a).cdf).pvalue > 1e-3, a


@pytest.mark.parametrize("N", [1, 2, 64])
@pytest.mark.parametrize("D", [1, 8, 128])
def test_both_draws_give_the_student_t_norm_law(N, D):
    """‖ε‖²/N ~ F(N, D) for σ⁻¹ × the PFGM++ kernel: both draws, checked by KS against the F law and
    against each other (quantiles of the norm)."""
    radial = PFGMPPNoise(D, "radial").sample((20000, N), gen(0), torch.float64)
    student = PFGMPPNoise(D, "student_t").sample((20000, N), gen(1), torch.float64)
    for eps in (radial, student):
        assert stats.kstest((eps.pow(2).sum(1) / N).numpy(), stats.f(N, D).cdf).pvalue > 1e-3
    assert stats.ks_2samp(radial.norm(dim=1).numpy(), student.norm(dim=1).numpy()).pvalue > 1e-3
    q = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    exact = torch.sqrt(N * torch.as_tensor(stats.f(N, D).ppf(q.numpy())))
    for eps in (radial, student):
        assert torch.allclose(torch.quantile(eps.norm(dim=1), q), exact, rtol=0.05)


@pytest.mark.parametrize("draw", ["radial", "student_t"])
def test_the_kernel_is_isotropic_with_the_student_t_moments(draw):
    """E‖n‖² = Nσ²D/(D−2) for D > 2, with covariance σ²D/(D−2)·I (isotropic: a uniform direction)."""
    N, sigma = 4, 2.5
    sch = pfgmpp(8.0, draw)
    for D in (8.0, 128.0):
        sch = pfgmpp(D, draw)
        n = sch.noise.sample((200000, N), gen(3), torch.float64) * sigma
        assert abs(float(n.pow(2).sum(1).mean()) / (N * sigma**2 * D / (D - 2)) - 1) < 0.015, D
        cov = n.T @ n / n.shape[0]
        assert torch.allclose(cov, sigma**2 * D / (D - 2) * torch.eye(N, dtype=torch.float64), atol=0.04 * sigma**2)


def test_log_prob_is_the_multivariate_student_t_density():
    eps = PFGMPPNoise(6.0).sample((50, 3), gen(4), torch.float64)
    ref = stats.multivariate_t(loc=[0, 0, 0], shape=torch.eye(3).numpy(), df=6.0).logpdf(eps.numpy())
    assert torch.allclose(PFGMPPNoise(6.0).log_prob(eps), torch.as_tensor(ref), atol=1e-10)
    # the prior's log density is that of σ_max·ε
    sch = pfgmpp(6.0)
    x = 80.0 * eps
    assert torch.allclose(sch.prior_log_prob(x), torch.as_tensor(ref) - 3 * math.log(80.0), atol=1e-10)


def test_the_prior_is_sigma_max_times_the_kernel():
    x = pfgmpp(8.0).prior_sample((20000, 2), gen(5), torch.float64)
    assert stats.kstest((x.pow(2).sum(1) / (2 * 80.0**2)).numpy(), stats.f(2, 8).cdf).pvalue > 1e-3


def test_d_infinity_is_the_gaussian_exactly_and_large_d_approaches_it_pathwise():
    shape = (16, 3, 4, 4)
    g = GaussianNoise().sample(shape, gen(7))
    for D in (None, math.inf):
        assert torch.equal(PFGMPPNoise(D).sample(shape, gen(7)), g)
        assert torch.equal(pfgmpp(D).prior_sample(shape, gen(7)), EDMSchedule().prior_sample(shape, gen(7)))
    big = PFGMPPNoise(1e8, "student_t").sample(shape, gen(7), torch.float64)
    assert (big - GaussianNoise().sample(shape, gen(7), torch.float64)).abs().max() < 1e-3


def test_d_infinity_gives_the_edm_loss_exactly_and_finite_d_does_not():
    torch.manual_seed(0)
    net = MLP(in_dim=2, hidden_dim=32, num_layers=2, emb_dim=16)
    param = Parameterization("edm")
    x0 = GaussianMixture.random(2, 3, seed=0).sample(64, gen(0)).float()

    def loss(schedule):
        edm = DenoisingScoreMatching(weighting="edm", time_sampler=LogNormalTime(-1.2, 1.2))
        return edm(Denoiser(net, schedule, param), x0, generator=gen(1)).loss

    reference = loss(EDMSchedule())
    assert torch.equal(loss(pfgmpp(None)), reference)
    assert not torch.allclose(loss(pfgmpp(8.0)), reference)


def test_bad_d_is_one_sentence():
    for bad in (0, -3, "many", True):
        with pytest.raises(ConfigError, match="noise.D="):
            PFGMPPNoise(bad)
    with pytest.raises(ConfigError, match="noise.draw="):
        PFGMPPNoise(8, draw="beta")


# ------------------------------------------------------------------------------------------ exact x̂0
MIX1 = GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[-1.0], [1.5]]), torch.tensor([[[0.05]], [[0.2]]]))


@pytest.mark.parametrize("D", [1.0, 8.0, 128.0])
def test_oracle_equals_direct_quadrature_of_the_paper_kernel(D):
    """E[x0 | x] = ∫ y p0(y) k(x−y) dy / ∫ p0(y) k(x−y) dy, k ∝ (|x−y|² + σ²D)^{−(1+D)/2}, on a fine y grid."""
    sch = pfgmpp(D)
    x = torch.linspace(-4, 4, 9, dtype=torch.float64)[:, None]
    y = torch.linspace(-12, 12, 100001, dtype=torch.float64)
    p0 = torch.exp(MIX1.log_prob_data(y[:, None]))
    oracle = PFGMPPMixtureOracle(MIX1, D)
    for sigma in (0.3, 1.0, 3.0):
        t = sch.t_from_sigma_tilde(torch.tensor(sigma, dtype=torch.float64))
        logk = -(1 + D) / 2 * torch.log((x - y[None]) ** 2 + sigma**2 * D)
        w = p0[None] * torch.exp(logk - logk.max(1, keepdim=True).values)
        direct = (w * y).sum(1) / w.sum(1)
        assert torch.allclose(oracle.x0(x, t, sch)[:, 0], direct, atol=1e-9), sigma
        gaussian = PFGMPPMixtureOracle(MIX1, None).x0(x, t, sch)[:, 0]
        assert (gaussian - direct).abs().max() > 1e-3  # the kernel matters


def test_oracle_at_d_infinity_is_the_gaussian_oracle():
    m = GaussianMixture.random(2, 3, seed=2)
    sch = EDMSchedule()
    x = m.sample(20, gen(0)) + 0.5
    t = torch.full((20,), 0.5, dtype=torch.float64)
    assert torch.equal(PFGMPPMixtureOracle(m, None).x0(x, t, sch), m.predict(x, t, sch).x0)
    assert torch.allclose(PFGMPPMixtureOracle(m, 1e7).x0(x, t, sch), m.predict(x, t, sch).x0, atol=1e-4)


@pytest.mark.parametrize("D", [1.0, 8.0, 128.0, None])
def test_heun_from_the_exact_oracle_samples_the_data(D):
    """EDM Heun (18 steps, 35 NFE), unchanged, from the radial prior with the exact PFGM++ denoiser lands on the data."""
    m = GaussianMixture.random(2, 3, seed=1)
    sch, param = pfgmpp(D), Parameterization("edm")
    den = Denoiser(PFGMPPMixtureOracle(m, D, nodes=256).network(sch, param), sch, param)
    x = Sampler("heun", steps=18, grid="karras")(den, (600, 2), generator=gen(0), progress=False).x
    exact = m.mmd2(m.sample(600, gen(9)))
    assert m.mmd2(x) < abs(exact) + 2e-3, (m.mmd2(x), exact)


# ------------------------------------------------------------------------------------------ refusals
def test_samplers_and_losses_that_need_gaussian_noise_refuse_pfgmpp():
    from diffusion_lab.config_checks import check_components

    sch, param = pfgmpp(8.0), Parameterization("edm")
    den = Denoiser(PFGMPPMixtureOracle(MIX1, 8.0).network(sch, param), sch, param)
    for name, opts in (("ddpm", {}), ("edm_stochastic", {}), ("sde_euler_maruyama", {}), ("ddim", {"eta": 1.0})):
        with pytest.raises(ConfigError, match=f"sampler={name} needs Gaussian noise"):
            Sampler(name, steps=3, **opts)(den, (4, 1), progress=False)
    assert Sampler("ddim", steps=3)(den, (4, 1), progress=False).x.shape == (4, 1)  # η = 0 is the ODE
    with pytest.raises(ConfigError, match="sampler=edm_stochastic needs Gaussian noise"):
        check_components(schedule=sch, parameterization=param, loss=DenoisingScoreMatching("edm"),
                         net=torch.nn.Identity(), data_shape=(1,), samplers=[Sampler("edm_stochastic")])
    with pytest.raises(ConfigError, match="loss=score_matching needs Gaussian noise"):
        ScoreMatching().validate(sch, Parameterization("score"))
    with pytest.raises(ConfigError, match="loss=vlb needs Gaussian noise"):
        VariationalBoundLoss().validate(DDPMLinearSchedule().with_noise(PFGMPPNoise(8)), Parameterization("eps"))


# ------------------------------------------------------------------------------------------ training
def test_training_with_pfgmpp_noise_approaches_the_student_t_oracle():
    """The EDM loss with D = 4 noise, trained briefly on a 1-D mixture, learns the Student-t x̂0 (not the
    Gaussian one): at σ = 1 its error to the Student-t oracle is well below its distance to the Gaussian
    oracle."""
    torch.manual_seed(0)
    D = 4.0
    sch, param = pfgmpp(D), Parameterization("edm")
    net = MLP(in_dim=1, hidden_dim=64, num_layers=2, emb_dim=32)
    loss = DenoisingScoreMatching(weighting="edm", time_sampler=LogNormalTime(0.0, 0.3))  # σ around 1
    data = MIX1.sample(8192, gen(0)).float()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = gen(1)
    for _ in range(600):
        idx = torch.randint(0, data.shape[0], (512,), generator=g)
        out = loss(Denoiser(net, sch, param), data[idx], generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)[:, None]
    t = sch.t_from_sigma_tilde(torch.tensor(1.0, dtype=torch.float64)).expand(61)
    learned = Denoiser(net, sch, param)(x, t).x0
    exact_t = PFGMPPMixtureOracle(MIX1, D).x0(x, t, sch)
    exact_gauss = PFGMPPMixtureOracle(MIX1, None).x0(x, t, sch)
    err_t, gap = (learned - exact_t).abs().mean(), (exact_gauss - exact_t).abs().mean()
    assert err_t < 0.35 * gap, (float(err_t), float(gap))
    assert err_t < (learned - exact_gauss).abs().mean()


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("experiment", ["pfgmpp_gmm", "pfgmpp_digits"])
def test_pfgmpp_experiments_compose_build_and_train(compose_cfg, experiment):
    from conftest import FAST_TRAIN, SMALL_UNET

    from diffusion_lab.train import run

    small = SMALL_UNET if experiment.endswith("digits") else ["model.hidden_dim=32", "model.num_layers=1"]
    out = run(compose_cfg([f"experiment={experiment}", "noise.D=8", *FAST_TRAIN, *small, "evaluation.n=8",
                           "evaluation.metrics=[]", "sampler.steps=3"]))
    assert out["trainer"].global_step == 2
    noise = out["parts"].schedule.noise
    assert isinstance(noise, PFGMPPNoise) and noise.D == 8.0


def test_noise_d_null_is_the_edm_config_path(build_run, compose_cfg):
    """noise=pfgmpp noise.D=null builds a Gaussian-noise EDM run: its prior draw and loss equal those of the
    same experiment with noise=gaussian."""
    base = ["experiment=pfgmpp_gmm", "model.hidden_dim=32", "model.num_layers=1"]
    _, parts_null, module_null = build_run([*base, "noise.D=null"])
    _, parts_gauss, module_gauss = build_run([*base, "noise=gaussian"])
    assert parts_null.schedule.noise.gaussian and type(parts_gauss.schedule.noise).__name__ == "GaussianNoise"
    assert torch.equal(parts_null.schedule.prior_sample((5, 2), gen(0)), parts_gauss.schedule.prior_sample((5, 2), gen(0)))
    x0 = torch.randn(32, 2, generator=gen(1))
    losses = [parts.loss(Denoiser(module.net, parts.schedule, parts.parameterization), x0, generator=gen(2)).loss
              for parts, module in ((parts_null, module_null), (parts_gauss, module_gauss))]
    assert torch.equal(*losses)


def test_a_stochastic_sampler_with_pfgmpp_noise_fails_at_start_up(build_run):
    with pytest.raises(ConfigError, match="sampler=edm_stochastic needs Gaussian noise"):
        build_run(["experiment=pfgmpp_gmm", "sampler=edm_stochastic"])
