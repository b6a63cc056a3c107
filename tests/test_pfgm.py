"""PFGM (Xu et al. 2022): the hyper-parameter rule, the perturbation's law, the empirical field against
the Poisson field's closed forms, the prior, sampling the exact field with the zoo's ODE solvers, the
loss and the configs."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from diffusion_lab.denoiser import Denoiser
from diffusion_lab.errors import ConfigError
from diffusion_lab.losses import PoissonFieldLoss
from diffusion_lab.nets.poisson import EmpiricalFieldNetwork, PoissonFieldNetwork
from diffusion_lab.parameterization import Parameterization
from diffusion_lab.samplers import Sampler
from diffusion_lab.schedules import EDMSchedule, PoissonFlowSchedule, pfgm_hyperparameters
from diffusion_lab.schedules.poisson_flow import empirical_field, perturb


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_the_rule_gives_the_papers_cifar10_hyperparameters():
    """N = 3072, ‖x‖ ≈ 32, σ = 0.01, τ = 0.03: the paper's M = 291, upper_norm 3000, z_max 40 (the rule: ≈ 43)."""
    h = pfgm_hyperparameters(3072, 32.0)
    assert h["M"] == 291
    assert abs(h["upper_norm"] - 3000) < 20 and abs(h["z_max"] - 43.4) < 0.1
    s = PoissonFlowSchedule(3072, data_norm=32.0)
    assert (s.M, s.z_max, s.sigma(torch.tensor(1.0, dtype=torch.float64)).item()) == (291, h["z_max"], pytest.approx(h["z_max"]))
    assert PoissonFlowSchedule(3072, M=100, z_max=40.0, upper_norm=3000.0).M == 100  # explicit values win
    with pytest.raises(ValueError, match="data_norm"):
        PoissonFlowSchedule(3072)


# ------------------------------------------------------------------------------------------ the field
def test_field_of_a_single_charge_points_straight_at_it():
    """One charge ỹ = (y, 0): v = √N (ỹ − x̃)/(‖x̃ − ỹ‖ + γ), and x̂0 = x − z v_x/v_z = y exactly."""
    N, gamma = 3, 5.0
    y = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    x = torch.randn(6, N, generator=gen(0), dtype=torch.float64) * 3
    z = torch.rand(6, generator=gen(1), dtype=torch.float64) * 4 + 0.1
    v = empirical_field(x, z, y, gamma)
    d = torch.cat([y - x, -z[:, None]], dim=1)
    assert torch.allclose(v, math.sqrt(N) * d / (d.norm(dim=1, keepdim=True) + gamma), atol=1e-12)
    x0 = x - z[:, None] * v[:, :N] / v[:, N:]
    assert torch.allclose(x0, y.expand(6, N), atol=1e-12)


def test_field_of_two_charges_by_hand():
    """N = 1, charges at 0 and 1, point (x, z) = (0, 1): weights ∝ 1/d² = 1, 1/2, so the weighted mean of
    x̃ − ỹ is (2/3)(0, 1) + (1/3)(−1, 1) = (−1/3, 1) and v = −(−1/3, 1)/(‖(−1/3, 1)‖ + γ)."""
    gamma = 2.0
    v = empirical_field(torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, dtype=torch.float64),
                        torch.tensor([[0.0], [1.0]], dtype=torch.float64), gamma)
    mean = torch.tensor([-1 / 3, 1.0], dtype=torch.float64)
    assert torch.allclose(v[0], -mean / (mean.norm() + gamma), atol=1e-14)


def test_field_is_the_gradient_of_the_green_function():
    """Ê ∝ −∇φ, φ(x̃) = Σ_i ‖x̃ − ỹ_i‖^{−(N−1)} the potential of the charges in R^{N+1}: v points along +∇φ
    (towards the charges)."""
    N = 3
    ref = torch.randn(5, N, generator=gen(2), dtype=torch.float64)
    pts = torch.cat([torch.randn(4, N, generator=gen(3), dtype=torch.float64), torch.rand(4, 1, generator=gen(4),
                                                                                       dtype=torch.float64) + 0.2], 1)
    pts.requires_grad_(True)
    refz = torch.cat([ref, torch.zeros(5, 1, dtype=torch.float64)], 1)
    phi = ((pts[:, None, :] - refz[None]).norm(dim=2) ** (-(N - 1))).sum()
    (grad,) = torch.autograd.grad(phi, pts)
    v = empirical_field(pts.detach()[:, :N], pts.detach()[:, N], ref, gamma=0.0)
    assert torch.allclose(v / v.norm(dim=1, keepdim=True), grad / grad.norm(dim=1, keepdim=True), atol=1e-12)
    assert torch.allclose(v.norm(dim=1), torch.full((4,), math.sqrt(N), dtype=torch.float64))  # γ = 0: norm √N


# ------------------------------------------------------------------------------------------ perturbation, prior
@pytest.mark.parametrize("restrict", [False, True])
def test_perturbation_law(restrict):
    """‖x − y‖/z = ‖g_N‖/|g_1| (both scaled by the same (1+τ)^m): (‖x − y‖/z)²/N ~ F(N, 1); and
    E log z = E log|σ g| + log(1+τ)·E m with E m = M/2, or with restrict_M M/2 off and int(0.7M)/2 on
    the event |σ g| < 0.005."""
    N = 4
    s = PoissonFlowSchedule(N, data_norm=3.0, restrict_M=restrict)
    y = torch.randn(40000, N, generator=gen(5), dtype=torch.float64)
    x, z = perturb(y, s, gen(6))
    ratio = ((x - y).norm(dim=1) / z) ** 2 / N
    assert stats.kstest(ratio.numpy(), stats.f(N, 1).cdf).pvalue > 1e-3
    e_log_abs = math.log(s.sigma_perturb) - 0.5 * (0.5772156649 + math.log(2))
    p_small = math.erf(0.005 / (s.sigma_perturb * math.sqrt(2))) if restrict else 0.0
    e_m = (1 - p_small) * s.M / 2 + p_small * int(0.7 * s.M) / 2
    expected = e_log_abs + math.log(1 + s.tau) * e_m
    se = float(torch.log(z).std()) / math.sqrt(z.numel())
    assert abs(float(torch.log(z).mean()) - expected) < 4 * se, (float(torch.log(z).mean()), expected)


def test_prior_is_on_the_z_max_plane_with_the_betaprime_radius_and_clipping():
    """R²/z_max² ~ BetaPrime(N/2, 1/2), i.e. R²/(N z_max²) ~ F(N, 1); clipped to [1, upper_norm]."""
    N = 3
    wide = PoissonFlowSchedule(N, M=200, z_max=10.0, upper_norm=1e12)
    wide.noise.min_norm = 1e-12
    x = wide.prior_sample((20000, N), gen(7), torch.float64)
    assert stats.kstest((x.pow(2).sum(1) / (N * 100.0)).numpy(), stats.f(N, 1).cdf).pvalue > 1e-3
    tight = PoissonFlowSchedule(N, M=200, z_max=10.0, upper_norm=30.0)
    r = tight.prior_sample((20000, N), gen(7), torch.float64).norm(dim=1)
    assert r.max() <= 30.0 + 1e-9 and r.min() >= 1.0 - 1e-12 and ((r - 30.0).abs() < 1e-9).double().mean() > 0.1


# ------------------------------------------------------------------------------------------ sampling
@pytest.mark.parametrize("name, options", [("dopri5", {"rtol": 1e-4, "atol": 1e-4}), ("euler", {"variable": "t"})])
def test_the_exact_field_carries_the_prior_onto_the_charges_in_proportion(name, options):
    """The empirical field of charges 2:1 (one point twice) as the network, RK45 in log z or Euler in log z from
    the prior: every sample ends on a charge, two thirds on the double one."""
    ref = torch.tensor([[-1.0, 0.0], [-1.0, 0.0], [1.0, 0.5]], dtype=torch.float64)
    s = PoissonFlowSchedule(2, data_norm=1.0)
    den = Denoiser(EmpiricalFieldNetwork(ref, s), s, "eps")
    x = Sampler(name, steps=60, **options)(den, (3000, 2), generator=gen(0), progress=False).x
    d = torch.cdist(x, ref[1:])
    assert d.min(1).values.max() < 1e-3
    share = float((d.argmin(1) == 0).double().mean())
    assert abs(share - 2 / 3) < 0.03, share


def test_stochastic_samplers_refuse_the_pfgm_prior():
    s = PoissonFlowSchedule(2, data_norm=1.0)
    den = Denoiser(EmpiricalFieldNetwork(torch.zeros(1, 2), s), s, "eps")
    with pytest.raises(ConfigError, match="needs Gaussian noise"):
        Sampler("reverse_diffusion", steps=3)(den, (4, 2), progress=False)


# ------------------------------------------------------------------------------------------ loss and network
def test_loss_is_zero_for_the_exact_field_and_trains_a_field_network():
    s = PoissonFlowSchedule(2, data_norm=2.0)
    data = torch.randn(512, 2, generator=gen(8)) * 0.5 + torch.tensor([1.0, -0.5])
    loss = PoissonFieldLoss(small_batch_size=128)
    param = Parameterization("eps")
    exact = loss(Denoiser(EmpiricalFieldNetwork(data, s), s, param), data, generator=gen(9))
    assert float(exact.loss) < 1e-10  # float32 noise labels: z round-trips to ~1e-7
    torch.manual_seed(0)
    net = PoissonFieldNetwork("mlp", in_dim=2, hidden_dim=64, num_layers=2, emb_dim=32)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = gen(10)

    def value() -> float:
        return float(loss(Denoiser(net, s, param), data, generator=gen(11)).loss)

    before = value()
    for _ in range(150):
        out = loss(Denoiser(net, s, param), data, generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert value() < 0.5 * before
    x = Denoiser(net, s, param)(torch.randn(8, 2, dtype=torch.float64), torch.full((8,), 0.5, dtype=torch.float64)).x0
    assert x.shape == (8, 2) and torch.isfinite(x).all()


def test_unet_backbone_outputs_the_field_and_the_slope():
    net = PoissonFieldNetwork("unet", in_channels=1, image_size=8, ch=16, ch_mult=[1, 2], num_res_blocks=1,
                              attn_resolutions=[], num_heads=1)
    x = torch.randn(3, 1, 8, 8)
    label = torch.full((3,), 500.0)
    v = net(x, label, field=True)
    assert v.shape == (3, 65)
    slope = net(x, label)
    assert torch.allclose(slope, (v[:, :64] / v[:, 64:].clamp(max=-1e-5)).reshape(3, 1, 8, 8))


def test_pfgm_loss_refuses_other_schedules_and_parameterizations():
    with pytest.raises(ConfigError, match="loss=pfgm needs schedule=pfgm"):
        PoissonFieldLoss().validate(EDMSchedule(), Parameterization("eps"))
    with pytest.raises(ConfigError, match="parameterization=eps"):
        PoissonFieldLoss().validate(PoissonFlowSchedule(2, data_norm=1.0), Parameterization("v"))


# ------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("experiment", ["pfgm_gmm", "pfgm_digits"])
def test_pfgm_experiments_compose_build_and_train(compose_cfg, experiment):
    from conftest import FAST_TRAIN

    from diffusion_lab.train import run

    small = (["model.ch=16", "model.num_res_blocks=1", "dataset.batch_size=64", "loss.small_batch_size=16"]
             if experiment.endswith("digits") else ["model.hidden_dim=32", "model.num_layers=1", "dataset.batch_size=128",
                                                    "loss.small_batch_size=32"])
    out = run(compose_cfg([f"experiment={experiment}", *FAST_TRAIN, *small, "evaluation.n=8", "evaluation.metrics=[]",
                           "sampler.rtol=1e-2", "sampler.atol=1e-2"]))
    assert out["trainer"].global_step == 2
    assert isinstance(out["parts"].schedule, PoissonFlowSchedule)
