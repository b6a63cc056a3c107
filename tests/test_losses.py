"""Training objectives against exact math: weightings across parameterizations, Vincent's SM = DSM +
const, sliced = exact score matching, the variational bound against closed-form KL sums, importance
and log-normal time sampling, validation messages, configs, and a short training run per loss."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from diffusion_lab.losses import (
    DenoisingScoreMatching,
    FixedTime,
    HybridLoss,
    ImportanceTime,
    LogNormalTime,
    RectifiedFlowLoss,
    ScoreMatching,
    SlicedScoreMatching,
    UniformTime,
    VariationalBoundLoss,
    variational_bound,
)
from diffusion_lab.denoiser import Denoiser
from diffusion_lab.losses.vlb import discretized_gaussian_log_likelihood, step_coefficients
from diffusion_lab.oracles import GaussianMixture
from diffusion_lab.parameterization import PARAMETERIZATIONS, Coefficients, Parameterization, from_x0_eps
from diffusion_lab.schedules import (
    DDPMLinearSchedule,
    DiscreteSchedule,
    EDMSchedule,
    RectifiedFlowSchedule,
    VPLinearSchedule,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "loss"
MU = torch.tensor([0.5, -0.3], dtype=torch.float64)
SIGMA = torch.tensor([[0.6, 0.2], [0.2, 0.3]], dtype=torch.float64)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tests run tiny ops; on a shared 2-core machine intra-op threads only add contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def M(net, schedule, param, learned: bool = False) -> Denoiser:
    """The model adapter the losses see (learned variances: the network's 2C channels)."""
    return Denoiser(net, schedule, param, learned_variance=learned)


def gaussian() -> GaussianMixture:
    return GaussianMixture.single(MU, SIGMA)


class Linear(torch.nn.Module):
    """out = A x + b, ignoring the noise label (a linear score model when read as a score)."""

    def __init__(self, A, b):
        super().__init__()
        self.A = torch.nn.Parameter(torch.as_tensor(A, dtype=torch.float64).clone())
        self.b = torch.nn.Parameter(torch.as_tensor(b, dtype=torch.float64).clone())

    def forward(self, x, label, **_):
        return x @ self.A.T + self.b


class MLP(torch.nn.Module):
    """Tiny 2-D network with the noise label (divided by ``label_scale``) as an extra input."""

    def __init__(self, out: int = 2, label_scale: float = 1000.0, width: int = 64):
        super().__init__()
        self.label_scale = label_scale
        self.f = torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.SiLU(), torch.nn.Linear(width, width),
                                     torch.nn.SiLU(), torch.nn.Linear(width, out))

    def forward(self, x, label, **_):
        return self.f(torch.cat([x, (label / self.label_scale)[:, None].to(x.dtype)], dim=1))


# ------------------------------------------------------------------------------ weightings
SCHEDULES = {"vp": VPLinearSchedule(), "rf": RectifiedFlowSchedule(), "edm": EDMSchedule(), "ddpm": DDPMLinearSchedule(100)}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_weightings_translate_between_parameterizations(name):
    """The same x̂0 error, written as each parameterization's output, gets the x0-space loss w(t)‖δx0‖²."""
    schedule = SCHEDULES[name]
    g = gen(1)
    B, D = 32, 3
    t = schedule.t_min + (schedule.t_max - schedule.t_min) * torch.rand(B, generator=g, dtype=torch.float64)
    x0 = torch.randn(B, D, generator=g, dtype=torch.float64)
    eps = torch.randn(B, D, generator=g, dtype=torch.float64)
    delta = 0.1 * torch.randn(B, D, generator=g, dtype=torch.float64)
    c = Coefficients.at(schedule, t, x0)
    x_t = c.alpha * x0 + c.sigma * eps
    x0_hat = x0 + delta
    eps_hat = (x_t - c.alpha * x0_hat) / c.sigma
    pred = from_x0_eps(x0_hat, eps_hat, c)

    a, s, ad, sd = schedule.alpha(t), schedule.sigma(t), schedule.alpha_dot(t), schedule.sigma_dot(t)
    snr, st = (a / s) ** 2, s / a
    g2 = 2 * s * sd - 2 * (ad / a) * s**2
    expected_w = {
        "snr": snr,
        "eps": snr,
        "min_snr": torch.clamp(snr, max=5.0),
        "likelihood": g2 * a**2 / s**4,
        "edm": (st**2 + 0.25) / (st * 0.5) ** 2,
        "velocity": ((ad * s - sd * a) / s) ** 2,
        "x0": torch.ones_like(t),
        "v": ((a**2 + s**2) / s) ** 2,
        "score": a**2 / s**4,
    }
    x0_mse = delta.pow(2).mean(1)
    # at fixed x_t: ‖û − u‖² = (D/σ)²‖x̂0 − x0‖² = (D/α)²‖ε̂ − ε‖², D = α̇σ − σ̇α
    u = c.alpha_dot * x0 + c.sigma_dot * eps
    Dc = ad * s - sd * a
    torch.testing.assert_close((pred.velocity - u).pow(2).sum(1), (Dc / s) ** 2 * delta.pow(2).sum(1), rtol=1e-8, atol=1e-12)
    torch.testing.assert_close((pred.velocity - u).pow(2).sum(1), (Dc / a) ** 2 * (eps_hat - eps).pow(2).sum(1), rtol=1e-8, atol=1e-12)

    for kind in PARAMETERIZATIONS:
        param = Parameterization(kind)
        out = param.precond.target(x0_hat, eps_hat, c) if kind == "edm" else getattr(pred, kind)
        for weighting, w in expected_w.items():
            got = DenoisingScoreMatching(weighting).regression(out, x0, eps, t, schedule, param)
            torch.testing.assert_close(got, w * x0_mse, rtol=1e-7, atol=1e-12, msg=f"{kind}/{weighting}")
        simple = DenoisingScoreMatching("simple").regression(out, x0, eps, t, schedule, param)
        torch.testing.assert_close(simple, (out - param.target(x0, eps, t, schedule)).pow(2).mean(1))
        if kind == "eps":  # DDPM's L_simple
            torch.testing.assert_close(simple, (eps_hat - eps).pow(2).mean(1))
        if kind == "edm":  # EDM: plain F-MSE is the edm weighting
            torch.testing.assert_close(simple, expected_w["edm"] * x0_mse, rtol=1e-7, atol=1e-12)


def test_min_snr_multipliers_match_hang_et_al():
    """Hang et al. 2023: ε-prediction weight min(SNR, γ)/SNR, v-prediction (VP) min(SNR, γ)/(SNR + 1)."""
    schedule = VPLinearSchedule()
    t = torch.linspace(schedule.t_min, 1.0, 50, dtype=torch.float64)
    snr = (schedule.alpha(t) / schedule.sigma(t)) ** 2
    loss = DenoisingScoreMatching("min_snr", min_snr_gamma=5.0)
    torch.testing.assert_close(loss.multiplier(schedule, Parameterization("eps"), t), torch.clamp(snr, max=5) / snr)
    torch.testing.assert_close(loss.multiplier(schedule, Parameterization("v"), t), torch.clamp(snr, max=5) / (snr + 1))


def test_dsm_call_matches_direct_computation():
    schedule, param = VPLinearSchedule(), Parameterization("v")
    net = MLP().double()
    x0 = torch.randn(16, 2, generator=gen(0), dtype=torch.float64)
    loss = DenoisingScoreMatching("min_snr")
    out = loss(M(net, schedule, param), x0, generator=gen(7))
    g = gen(7)
    t = schedule.t_min + (schedule.t_max - schedule.t_min) * torch.rand(16, generator=g, dtype=torch.float64)
    eps = torch.randn(16, 2, generator=g, dtype=torch.float64)
    a, s = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
    v_hat = net(a * x0 + s * eps, 1000 * t)
    snr = (a / s).squeeze(1) ** 2
    expect = torch.clamp(snr, max=5) / (snr + 1) * (v_hat - (a * eps - s * x0)).pow(2).mean(1)
    torch.testing.assert_close(out.t, t)
    torch.testing.assert_close(out.per_sample, expect)
    torch.testing.assert_close(out.loss, expect.mean())


# ------------------------------------------------------------------------------ score matching (Vincent 2011)
THETAS = [
    (torch.zeros(2, 2), torch.zeros(2)),
    (torch.tensor([[-1.0, 0.3], [0.1, -2.0]]), torch.tensor([0.2, -0.1])),
    (torch.tensor([[0.5, -0.4], [0.7, 0.2]]), torch.tensor([-0.5, 0.3])),
]


@pytest.mark.parametrize("kind", ["score", "eps", "v"])
def test_score_matching_minus_dsm_is_a_constant(kind):
    """SM(θ) − DSM(θ) = −m(t)/σ² whatever θ (Vincent 2011); here m = σ² ("snr") so the constant is −1."""
    schedule, param, t = VPLinearSchedule(), Parameterization(kind), 0.4
    N = 40000
    x0 = gaussian().sample(N, gen(0))
    sm = ScoreMatching(weighting="snr", time_sampler=FixedTime(t))
    dsm = DenoisingScoreMatching(weighting="snr", time_sampler=FixedTime(t))
    diffs = []
    for A, b in THETAS:
        net = Linear(A, b)
        d = sm(M(net, schedule, param), x0, generator=gen(3)).per_sample - dsm(M(net, schedule, param), x0, generator=gen(3)).per_sample
        d = d.detach()
        se = d.std() / math.sqrt(N)
        assert abs(float(d.mean()) + 1.0) < 5 * se + 1e-9, (kind, float(d.mean()), float(se))
        diffs.append(d)
    for d in diffs[1:]:
        pair = d - diffs[0]
        assert abs(float(pair.mean())) < 5 * float(pair.std()) / math.sqrt(N) + 1e-9


def test_dsm_minimizer_is_the_oracle_score():
    """Minimising DSM over linear scores s(x) = A x + b recovers ∇ log p_t = −C⁻¹(x − α μ)."""
    schedule, param, t = VPLinearSchedule(), Parameterization("score"), 0.4
    x0 = gaussian().sample(20000, gen(0))
    net = Linear(torch.zeros(2, 2), torch.zeros(2))
    loss = DenoisingScoreMatching(weighting="simple", time_sampler=FixedTime(t))
    opt = torch.optim.LBFGS(net.parameters(), lr=1.0, max_iter=200, line_search_fn="strong_wolfe", tolerance_grad=1e-12)

    def closure():
        opt.zero_grad()
        value = loss(M(net, schedule, param), x0, generator=gen(5)).loss
        value.backward()
        return value

    opt.step(closure)
    xs = gaussian().sample_t(500, t, schedule, gen(9))
    truth = gaussian().score(xs, t, schedule)
    with torch.no_grad():
        got = net(xs, None)
    rel = (got - truth).norm() / truth.norm()
    assert rel < 0.03, float(rel)


@pytest.mark.parametrize("distribution,vr", [("rademacher", True), ("rademacher", False), ("gaussian", False), ("gaussian", True)])
def test_sliced_score_matching_equals_score_matching_in_expectation(distribution, vr):
    schedule, param, t, N = VPLinearSchedule(), Parameterization("eps"), 0.3, 40000
    x0 = gaussian().sample(N, gen(1))
    net = Linear(*THETAS[1])
    sm = ScoreMatching(weighting="snr", time_sampler=FixedTime(t))(M(net, schedule, param), x0, generator=gen(2)).per_sample
    ssm = SlicedScoreMatching(weighting="snr", time_sampler=FixedTime(t), projections=2, distribution=distribution,
                              variance_reduction=vr)(M(net, schedule, param), x0, generator=gen(2)).per_sample
    d = (ssm - sm).detach()
    assert abs(float(d.mean())) < 5 * float(d.std()) / math.sqrt(N) + 1e-9
    if vr and distribution == "rademacher":
        assert float(d.std()) < float(sm.std())  # the projection noise is small next to the data noise


def test_score_matching_runs_in_evaluation_modes():
    """Validation runs under no_grad / inference_mode; ∇_x ŝ must still be computed (and equal)."""
    schedule, param = VPLinearSchedule(), Parameterization("eps")
    net = MLP().double()
    x0 = gaussian().sample(64, gen(0))
    for loss in (ScoreMatching(), SlicedScoreMatching()):
        ref = loss(M(net, schedule, param), x0, generator=gen(1)).per_sample.detach()
        with torch.no_grad():
            got = loss(M(net, schedule, param), x0, generator=gen(1))
        torch.testing.assert_close(got.per_sample, ref)
        with torch.inference_mode():
            got = loss(M(net, schedule, param), x0.clone(), generator=gen(1))
        torch.testing.assert_close(got.per_sample, ref)
        assert not got.loss.requires_grad


# ------------------------------------------------------------------------------ variational bound
BETAS = [0.1, 0.2, 0.4, 0.6]


def closed_form_bound_bits(betas, variance: str, bias: float = 0.0) -> tuple[list[float], float]:
    """Per-term expectations over data N(μ, Σ) of the bound (bits/dim) for the exact x̂0 (plus a constant
    ``bias`` on x̂0), with a Gaussian decoder, from the DDPM formulas written out directly:
    ([L_0, L_1, ..., L_{T-1}], L_T)."""
    b = torch.tensor(betas, dtype=torch.float64)
    T, D = len(betas), 2
    ab = torch.cumprod(1 - b, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    bt = b * (1 - ab_prev) / (1 - ab)  # β̃_i
    bt_clip = bt.clone()
    bt_clip[0] = bt[1]
    sig2 = bt_clip if variance == "small" else b
    coef_x0 = ab_prev.sqrt() * b / (1 - ab)
    nats = []
    for i in range(T):
        a2 = ab[i]
        C = a2 * SIGMA + (1 - a2) * torch.eye(D, dtype=torch.float64)
        err = float(torch.trace(SIGMA - a2 * SIGMA @ torch.linalg.solve(C, SIGMA))) + D * bias**2  # E‖x̂0 − x0‖²
        if i == 0:  # decoder −log N(x0; x̂0, Σ_1)
            nats.append(0.5 * (D * math.log(2 * math.pi * sig2[0]) + err / sig2[0]))
        else:
            nats.append(0.5 * (D * (math.log(sig2[i] / bt[i]) + bt[i] / sig2[i] - 1) + coef_x0[i] ** 2 * err / sig2[i]))
    s2_T = 1 - ab[-1]  # the schedule's prior is N(0, σ(1)²): only the mean term survives
    ex2 = float((MU**2).sum() + torch.trace(SIGMA))
    prior = 0.5 * ab[-1] * ex2 / s2_T
    to_bits = 1.0 / (D * math.log(2))
    return [float(x) * to_bits for x in nats], float(prior) * to_bits


def test_posterior_coefficients_match_ddpm_formulas():
    """μ̃ = √ᾱ_{i−1}β_i/(1−ᾱ_i) x0 + √(1−β_i)(1−ᾱ_{i−1})/(1−ᾱ_i) x_i, β̃ = β_i(1−ᾱ_{i−1})/(1−ᾱ_i) (Ho et al. Eq. 7)."""
    for schedule in (DiscreteSchedule(BETAS), DDPMLinearSchedule(1000)):
        T = schedule.num_timesteps
        b, ab = schedule.betas, schedule.alphas_cumprod
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        t = torch.arange(1, T + 1, dtype=torch.float32) / T  # float32 t, as in training
        pc = step_coefficients(schedule, t)
        torch.testing.assert_close(pc.posterior.coef_x0, ab_prev.sqrt() * b / (1 - ab), rtol=1e-9, atol=0)
        torch.testing.assert_close(pc.posterior.coef_xt, (1 - b).sqrt() * (1 - ab_prev) / (1 - ab), rtol=1e-9, atol=0)
        torch.testing.assert_close(pc.log_beta, b.log(), rtol=1e-9, atol=0)
        bt = b * (1 - ab_prev) / (1 - ab)
        torch.testing.assert_close(pc.log_beta_tilde[1:], bt[1:].log(), rtol=1e-9, atol=0)
        assert float(pc.log_beta_tilde[0]) == float(pc.log_beta_tilde[1])  # β̃_1 = 0 clipped to β̃_2
        assert bool(pc.is_first[0]) and not bool(pc.is_first[1:].any())


class Shifted(torch.nn.Module):
    """The oracle with x̂0 shifted by a constant (a perturbed model)."""

    def __init__(self, oracle, bias):
        super().__init__()
        self.oracle, self.bias = oracle, bias

    def forward(self, x, label, **_):
        return self.oracle(x, label) + self.bias


@pytest.mark.parametrize("variance", ["small", "large"])
def test_variational_bound_matches_closed_form_kl_sums(variance):
    schedule = DiscreteSchedule(BETAS)
    param = Parameterization("x0")
    oracle = gaussian().network(schedule, param)
    N = 50000
    x0 = gaussian().sample(N, gen(0))
    for bias in (0.0, 0.3):
        net = Shifted(oracle, bias)
        bound = variational_bound(M(net, schedule, param), x0, variance=variance, decoder="gaussian", generator=gen(1))
        terms, prior = closed_form_bound_bits(BETAS, variance, bias)
        torch.testing.assert_close(bound.total, bound.prior + bound.terms.sum(1))
        for got, expect in zip([*bound.terms.T, bound.prior], [*terms, prior]):
            se = float(got.std()) / math.sqrt(N)
            assert abs(float(got.mean()) - expect) < 5 * se + 1e-12, (bias, float(got.mean()), expect, se)
    # the exact posterior mean beats a perturbed one, sample by sample on common noise
    exact = variational_bound(M(oracle, schedule, param), x0, variance=variance, decoder="gaussian", generator=gen(2)).total
    worse = variational_bound(M(Shifted(oracle, 0.1), schedule, param), x0, variance=variance, decoder="gaussian", generator=gen(2)).total
    d = worse - exact
    assert float(d.mean()) > 5 * float(d.std()) / math.sqrt(N)


def test_vlb_training_estimator_is_unbiased_for_the_bound():
    """With t uniform, E[T·L_{i−1}] + L_T is the full bound (here against the closed form)."""
    schedule, param, N = DiscreteSchedule(BETAS), Parameterization("eps"), 40000
    x0 = gaussian().sample(N, gen(0))
    loss = VariationalBoundLoss(variance="small", decoder="gaussian", time_sampler="uniform")
    out = loss(M(gaussian().network(schedule, param), schedule, param), x0, generator=gen(4))
    est = out.per_sample.mean() + out.logs["vlb_prior_bpd"]
    se = float(out.per_sample.std()) / math.sqrt(N)
    terms, prior = closed_form_bound_bits(BETAS, "small")
    assert abs(float(est) - (sum(terms) + prior)) < 5 * se


def test_learned_variance_interpolates_between_small_and_large():
    """ν = (v + 1)/2: v = −1 gives Σ = β̃ (small), v = +1 gives Σ = β (large) (Nichol & Dhariwal Eq. 15)."""
    schedule, param = DiscreteSchedule(BETAS), Parameterization("eps")
    oracle = gaussian().network(schedule, param)
    x0 = gaussian().sample(256, gen(0))
    for v, fixed in ((-1.0, "small"), (1.0, "large")):
        net = lambda x, lab, v=v: torch.cat([oracle(x, lab), torch.full_like(x, v)], dim=1)  # noqa: E731
        learned = VariationalBoundLoss("learned", "gaussian", "uniform")(M(net, schedule, param, True), x0, generator=gen(3))
        ref = VariationalBoundLoss(fixed, "gaussian", "uniform")(M(oracle, schedule, param), x0, generator=gen(3))
        torch.testing.assert_close(learned.per_sample, ref.per_sample)


def test_hybrid_is_l_simple_plus_lambda_times_the_vlb_loss():
    """L_hybrid = L_simple + λ·L_vlb per example, L_vlb being the T-scaled term of VariationalBoundLoss
    (same t, same noise): a missing factor T or λ shows here."""
    schedule, param = DDPMLinearSchedule(50), Parameterization("eps")
    torch.manual_seed(0)
    net = MLP(out=4).double()
    x0 = gaussian().sample(64, gen(0))
    hybrid = HybridLoss(vlb_weight=0.25, decoder="gaussian", time_sampler="uniform")(M(net, schedule, param, True), x0,
                                                                                      generator=gen(1))
    first_half = lambda x, lab: net(x, lab)[:, :2]  # noqa: E731  (the prediction channels)
    simple = DenoisingScoreMatching("simple", time_sampler="uniform")(M(first_half, schedule, param), x0,
                                                                       generator=gen(1))
    vlb = VariationalBoundLoss("learned", "gaussian", "uniform")(M(net, schedule, param, True), x0, generator=gen(1))
    torch.testing.assert_close(hybrid.t, vlb.t)
    torch.testing.assert_close(hybrid.per_sample, simple.per_sample + 0.25 * vlb.per_sample)
    assert float(vlb.per_sample.mean()) > 1.0  # T·(bits/dim): the scale of the bound, not of one term


@pytest.mark.parametrize("kind", ["velocity", "eps", "x0", "v", "score"])
def test_rectified_flow_loss_is_the_velocity_mse_in_every_parameterization(kind):
    """Liu et al. 2023: per example mean_dims (û − (ε − x_0))², û the velocity the network implies
    (through the model adapter), whatever it outputs."""
    schedule, param = RectifiedFlowSchedule(), Parameterization(kind)
    torch.manual_seed(0)
    net = MLP().double()
    x0 = gaussian().sample(32, gen(0))
    out = RectifiedFlowLoss()(M(net, schedule, param), x0, generator=gen(1))
    g = gen(1)
    t = schedule.t_min + (schedule.t_max - schedule.t_min) * torch.rand(32, generator=g, dtype=torch.float64)
    eps = torch.randn(32, 2, generator=g, dtype=torch.float64)
    x_t = (1 - t)[:, None] * x0 + t[:, None] * eps
    model = M(net, schedule, param)
    velocity = model.read(model.output(x_t, t), x_t, t).velocity
    torch.testing.assert_close(out.t, t)
    torch.testing.assert_close(out.per_sample, (velocity - (eps - x0)).pow(2).mean(1))


def test_hybrid_stops_the_vlb_gradient_on_the_mean():
    schedule, param = DDPMLinearSchedule(50), Parameterization("eps")
    torch.manual_seed(0)
    trunk = MLP(out=4).double()
    x0 = gaussian().sample(64, gen(0))
    captured = {}

    def net(x, lab):
        out = trunk(x, lab)
        out.retain_grad()
        captured["out"] = out
        return out

    hybrid = HybridLoss(vlb_weight=0.5, decoder="gaussian")
    hybrid(M(net, schedule, param, True), x0, generator=gen(1)).loss.backward()
    g_hybrid = captured["out"].grad.clone()

    def pred_only(x, lab):
        out = trunk(x, lab)[:, :2]
        out.retain_grad()
        captured["pred"] = out
        return out

    DenoisingScoreMatching("simple")(M(pred_only, schedule, param), x0, generator=gen(1)).loss.backward()
    torch.testing.assert_close(g_hybrid[:, :2], captured["pred"].grad)  # mean: L_simple only
    assert g_hybrid[:, 2:].abs().sum() > 0  # variance: trained by L_vlb


def test_discretized_decoder_is_a_distribution_over_256_levels():
    levels = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, log_scale in ((0.1, math.log(0.05)), (-0.97, math.log(0.3)), (0.5, math.log(1e-3)), (2.0, 0.0)):
        lp = discretized_gaussian_log_likelihood(levels, torch.tensor(mean, dtype=torch.float64),
                                                 torch.tensor(log_scale, dtype=torch.float64))
        assert abs(float(lp.exp().sum()) - 1.0) < 1e-9
    # a middle bin against the normal CDF written with erf
    x, mean, scale = levels[100], 0.0, 0.2
    cdf = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    p = cdf((float(x) + 1 / 255 - mean) / scale) - cdf((float(x) - 1 / 255 - mean) / scale)
    lp = discretized_gaussian_log_likelihood(x, torch.tensor(mean, dtype=torch.float64), torch.tensor(math.log(scale), dtype=torch.float64))
    assert abs(float(lp) - math.log(p)) < 1e-9
    far = discretized_gaussian_log_likelihood(levels[200], torch.tensor(-1.0, dtype=torch.float64), torch.tensor(math.log(1e-2), dtype=torch.float64))
    assert torch.isfinite(far) and far < -1000


def test_losses_on_image_batches():
    """(B, C, H, W) data: learned variances on 2C channels, the discretized decoder, the full bound."""
    schedule, param = DDPMLinearSchedule(50), Parameterization("eps")
    x0 = (torch.randint(0, 256, (3, 2, 4, 4), generator=gen(0)).float() / 127.5 - 1.0)
    conv = torch.nn.Conv2d(2, 4, 3, padding=1)
    net = lambda x, lab: conv(x)  # noqa: E731
    for loss in (HybridLoss(), VariationalBoundLoss(), DenoisingScoreMatching("min_snr"), SlicedScoreMatching()):
        model = net if loss.learned_variance else (lambda x, lab: conv(x)[:, :2])
        out = loss(M(model, schedule, param, loss.learned_variance), x0, generator=gen(1))
        out.loss.backward()
        assert out.per_sample.shape == (3,) and torch.isfinite(out.loss) and conv.weight.grad.abs().sum() > 0
        conv.zero_grad()
    bound = variational_bound(M(net, schedule, param, True), x0, variance="learned", generator=gen(2))
    assert bound.terms.shape == (3, 50) and torch.isfinite(bound.total).all() and (bound.terms >= 0).all()


# ------------------------------------------------------------------------------ time sampling
def test_importance_sampling_follows_the_second_moment_and_is_unbiased():
    schedule = DiscreteSchedule([0.05] * 8)
    T = 8
    sampler = ImportanceTime(history=10, uniform_mix=1e-3)
    level = torch.arange(1, T + 1, dtype=torch.float64) ** 2  # loss at t_i grows with i
    g = gen(0)
    for step in range(40):
        t, w = sampler.sample(16, schedule, generator=g, dtype=torch.float64)
        if not sampler.ready:
            assert torch.all(w == 1)
        i = torch.round(t * T).long()
        assert torch.all((i >= 1) & (i <= T)) and torch.allclose(t * T, i.double())
        sampler.update(t, level[i - 1] * (1 + 0.5 * torch.rand(16, generator=g, dtype=torch.float64)))
    assert sampler.ready
    assert torch.all(sampler.counts() == 10)
    buf = sampler.history_values()
    rms = buf.pow(2).mean(1).sqrt()
    expect = 0.999 * rms / rms.sum() + 0.001 / T
    torch.testing.assert_close(sampler.probabilities(), expect)
    # unbiased: E_p[w L] = mean_i L_i
    N = 200000
    t, w = sampler.sample(N, schedule, generator=gen(1), dtype=torch.float64)
    vals = w * level[torch.round(t * T).long() - 1]
    assert abs(float(vals.mean()) - float(level.mean())) < 5 * float(vals.std()) / math.sqrt(N)
    # and exactly: Σ p_i · (1/(T p_i)) · L_i
    p = sampler.probabilities()
    torch.testing.assert_close((p / (T * p) * level).sum(), level.mean())
    # the buffer keeps the last 10 values per step, and survives a state_dict round trip
    sampler.update(torch.full((10,), 1.0 / T, dtype=torch.float64), torch.full((10,), 7.0, dtype=torch.float64))
    assert torch.all(sampler.history_values()[0] == 7.0)
    clone = ImportanceTime()
    clone.load_state_dict(sampler.state_dict())
    torch.testing.assert_close(clone.probabilities(), sampler.probabilities())


def test_loss_feeds_importance_history_in_training_only():
    schedule, param = DDPMLinearSchedule(50), Parameterization("eps")
    loss = VariationalBoundLoss(variance="small", decoder="gaussian")  # importance-sampled by default
    net = MLP().double()
    x0 = gaussian().sample(32, gen(0))
    with torch.no_grad():
        loss(M(net, schedule, param), x0, generator=gen(1))
    assert int(loss.time_sampler.counts().sum()) == 0
    out = loss(M(net, schedule, param), x0, generator=gen(1))
    assert int(loss.time_sampler.counts().sum()) == 32
    i = torch.round(out.t * 50).long() - 1
    assert torch.isin(out.per_sample.detach(), loss.time_sampler.history_values()[i]).all()
    state = loss.state_dict()
    other = VariationalBoundLoss(variance="small", decoder="gaussian")
    other.load_state_dict(state)
    torch.testing.assert_close(other.time_sampler.history_values(), loss.time_sampler.history_values())


def test_importance_sampling_on_continuous_bins():
    schedule = VPLinearSchedule()
    sampler = ImportanceTime(num_bins=5)
    sampler.validate(schedule)
    t, w = sampler.sample(1000, schedule, generator=gen(0))
    assert t.min() >= schedule.t_min and t.max() <= schedule.t_max and torch.all(w == 1)


def test_log_normal_time_has_edm_moments():
    schedule = RectifiedFlowSchedule()  # σ̃ = t/(1 − t) spans ln σ̃ ∈ [−6.9, 6.9]: clamping is negligible
    N = 100000
    t, w = LogNormalTime().sample(N, schedule, generator=gen(0), dtype=torch.float64)
    ln_sigma = torch.log(schedule.sigma_tilde(t))
    assert abs(float(ln_sigma.mean()) + 1.2) < 5 * 1.2 / math.sqrt(N)
    assert abs(float(ln_sigma.std()) - 1.2) < 5 * 1.2 / math.sqrt(2 * N)
    assert torch.all(w == 1)
    # discrete schedules: rounded to the grid, inside the range
    ddpm = DDPMLinearSchedule(1000)
    t, _ = LogNormalTime().sample(1000, ddpm, generator=gen(1), dtype=torch.float64)
    assert torch.allclose(t * 1000, torch.round(t * 1000)) and t.min() >= 1e-3 and t.max() <= 1


def test_uniform_time_on_discrete_and_continuous_schedules():
    t, w = UniformTime().sample(4000, DDPMLinearSchedule(10, scale_with_T=False), generator=gen(0), dtype=torch.float64)
    i = torch.round(t * 10).long()
    assert torch.allclose(t * 10, i.double()) and set(i.tolist()) == set(range(1, 11)) and torch.all(w == 1)
    vp = VPLinearSchedule()
    t, _ = UniformTime().sample(4000, vp, generator=gen(0))
    assert t.min() >= vp.t_min and t.max() <= vp.t_max and abs(float(t.mean()) - 0.5005) < 0.02


# ------------------------------------------------------------------------------ validation
def test_validate_rejects_incompatible_choices():
    vp, eps = VPLinearSchedule(), Parameterization("eps")
    with pytest.raises(ValueError, match="loss=hybrid .*needs a discrete schedule.*VPLinearSchedule is continuous"):
        HybridLoss().validate(vp, eps)
    with pytest.raises(ValueError, match="loss=vlb.*needs a discrete schedule"):
        VariationalBoundLoss().validate(vp, eps)
    with pytest.raises(ValueError, match="time_sampler=importance needs a discrete schedule"):
        DenoisingScoreMatching(time_sampler="importance").validate(vp, eps)
    with pytest.raises(ValueError, match="loss=rectified_flow needs the linear path"):
        RectifiedFlowLoss().validate(vp, Parameterization("velocity"))
    with pytest.raises(ValueError, match="loss.sigma_data=0.3 differs from parameterization.sigma_data=0.5"):
        DenoisingScoreMatching("edm", sigma_data=0.3).validate(EDMSchedule(), Parameterization("edm"))
    with pytest.raises(ValueError, match="unknown loss.weighting 'snrr'"):
        DenoisingScoreMatching("snrr")
    with pytest.raises(ValueError, match="D=64 > loss.max_dim=16; use loss=sliced_score_matching"):
        ScoreMatching(max_dim=16)(M(MLP(out=64), vp, eps), torch.zeros(2, 64))
    ddpm10 = DDPMLinearSchedule(10, scale_with_T=False)
    with pytest.raises(ValueError, match="decoder=discretized needs data in \\[-1, 1\\]"):
        VariationalBoundLoss()(M(MLP(out=4), ddpm10, eps, True), torch.full((2, 2), 3.0))
    with pytest.raises(ValueError, match="learned-variance network needs a loss with learned variances"):
        DenoisingScoreMatching()(M(MLP(out=4), vp, eps), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="loss=hybrid trains variances but the model has learned_variance=False"):
        HybridLoss(decoder="gaussian")(M(MLP(out=2), ddpm10, eps), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="must output \\(2, 4\\)"):
        HybridLoss(decoder="gaussian")(M(MLP(out=2), ddpm10, eps, True), torch.zeros(2, 2))
    # the compatible choices pass
    HybridLoss().validate(DDPMLinearSchedule(10, scale_with_T=False), eps)
    RectifiedFlowLoss().validate(RectifiedFlowSchedule(), Parameterization("velocity"))


# ------------------------------------------------------------------------------ configs and training
SETUPS = {  # config -> (schedule, parameterization, overrides)
    "eps_mse": (VPLinearSchedule(), "eps", {}),
    "dsm_likelihood": (VPLinearSchedule(), "eps", {}),
    "dsm_snr": (VPLinearSchedule(), "x0", {}),
    "dsm_min_snr": (VPLinearSchedule(), "v", {}),
    "edm": (EDMSchedule(), "edm", {}),
    "vlb": (DDPMLinearSchedule(50), "eps", {"decoder": "gaussian"}),
    "hybrid": (DDPMLinearSchedule(50), "eps", {"decoder": "gaussian"}),
    "score_matching": (VPLinearSchedule(), "score", {}),
    "sliced_score_matching": (VPLinearSchedule(), "eps", {}),
    "rectified_flow": (RectifiedFlowSchedule(), "velocity", {}),
    "rectified_flow_distill": (RectifiedFlowSchedule(), "velocity", {}),
}


def test_every_loss_config_instantiates():
    names = sorted(p.stem for p in CONF.glob("*.yaml"))
    assert names == sorted([*SETUPS, "pfgm", "forward_mse", "forward_ce"])  # those three: tests/test_pfgm.py, test_forward_processes.py
    built = {n: instantiate(OmegaConf.load(CONF / f"{n}.yaml")) for n in SETUPS}
    assert isinstance(built["eps_mse"], DenoisingScoreMatching) and built["eps_mse"].weighting == "simple"
    assert isinstance(built["eps_mse"].time_sampler, UniformTime)
    assert isinstance(built["edm"].time_sampler, LogNormalTime) and built["edm"].weighting == "edm"
    assert isinstance(built["vlb"].time_sampler, ImportanceTime) and built["vlb"].learned_variance
    assert isinstance(built["hybrid"], HybridLoss) and built["hybrid"].vlb_weight == 0.001 and built["hybrid"].learned_variance
    assert built["dsm_min_snr"].min_snr_gamma == 5.0
    assert isinstance(built["rectified_flow"], RectifiedFlowLoss) and built["rectified_flow"].weighting == "velocity"
    assert built["rectified_flow"].coupling == "independent" and built["rectified_flow_distill"].time_sampler.steps == 1
    assert isinstance(built["sliced_score_matching"], SlicedScoreMatching) and isinstance(built["score_matching"], ScoreMatching)


@pytest.mark.parametrize("name", list(SETUPS))
def test_tiny_mlp_training_decreases_each_loss(name):
    schedule, kind, overrides = SETUPS[name]
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    for k, v in overrides.items():
        cfg[k] = v
    loss = instantiate(cfg)
    param = Parameterization(kind)
    loss.validate(schedule, param)
    torch.manual_seed(0)
    net = MLP(out=4 if loss.learned_variance else 2, label_scale=1.0 if kind == "edm" else 1000.0)
    data = gaussian().sample(4096, gen(0)).float()
    eval_loss = copy.deepcopy(loss)

    def evaluate() -> float:
        return float(copy.deepcopy(eval_loss)(M(net, schedule, param, loss.learned_variance), data, generator=gen(123)).loss.detach())

    before = evaluate()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = gen(1)
    for step in range(250):
        idx = torch.randint(0, data.shape[0], (256,), generator=g)
        out = loss(M(net, schedule, param, loss.learned_variance), data[idx], generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    after = evaluate()
    assert after < before - 0.02 * abs(before), (name, before, after)
    assert out.per_sample.shape == (256,) and out.t.shape == (256,)
