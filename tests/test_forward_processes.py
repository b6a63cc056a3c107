"""General forward processes: the Gaussian case of the x̂0-then-step sampler equals the zoo's DDIM and DDPM,
the heat blur against the heat equation's eigenfunctions, masking, the cold-diffusion correction, and the
discrete corruptions' posteriors against Bayes' rule on a tiny chain."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_lab.denoiser import Denoiser
from diffusion_lab.forward import (DiscreteCorruption, GaussianProcess, HeatBlurProcess, MaskProcess, dct_matrix,
                                   dequantize, forward_loss, quantize, sample_continuous, sample_discrete, uniform_grid)
from diffusion_lab.oracles import GaussianMixture
from diffusion_lab.parameterization import Parameterization
from diffusion_lab.samplers import Sampler
from diffusion_lab.schedules import DDPMLinearSchedule, VPCosineSchedule


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------ Gaussian = the zoo
@pytest.mark.parametrize("schedule", [DDPMLinearSchedule(), VPCosineSchedule()], ids=["ddpm", "vp_cosine"])
def test_gaussian_process_corrected_update_is_ddim_and_posterior_update_is_ddpm(schedule):
    m = GaussianMixture.random(2, 3, seed=0)
    param = Parameterization("eps")
    den = Denoiser(m.network(schedule, param), schedule, param)
    process = GaussianProcess(schedule)
    x_T = schedule.prior_sample((64, 2), gen(0), torch.float64)
    predict = lambda x, t: den(x, t).x0  # noqa: E731

    ddim = Sampler("ddim", steps=12)
    grid = ddim.time_grid(schedule)
    ours = sample_continuous(process, predict, x_T, grid, "corrected")
    assert torch.allclose(ours, ddim(den, x_T=x_T, progress=False).x, atol=1e-12, rtol=0)

    ddpm = Sampler("ddpm", steps=12, variance="small")
    grid = ddpm.time_grid(schedule)
    ours = sample_continuous(process, predict, x_T, grid, "posterior", generator=gen(5))
    zoo = ddpm(den, x_T=x_T, generator=gen(5), progress=False).x
    assert torch.allclose(ours, zoo, atol=1e-12, rtol=0)
    naive = sample_continuous(process, predict, x_T, grid, "naive", generator=gen(5))
    assert not torch.allclose(naive, zoo, atol=1e-3)  # re-noising with fresh ε is a different sampler


# ------------------------------------------------------------------------------------------ heat blur
def test_dct_matrix_is_orthonormal():
    C = dct_matrix(8)
    assert torch.allclose(C @ C.T, torch.eye(8, dtype=torch.float64), atol=1e-14)


def test_heat_blur_decays_each_cosine_mode_by_the_heat_equation_rate_and_keeps_the_mean():
    n = 8
    p = HeatBlurProcess(n, delta=0.0)
    i = torch.arange(n, dtype=torch.float64)
    u, v = 3, 1
    mode = torch.cos(math.pi * u * (i[:, None] + 0.5) / n) * torch.cos(math.pi * v * (i[None, :] + 0.5) / n)
    t = torch.tensor([0.6], dtype=torch.float64)
    tau = float(p.tau(t))
    rate = math.pi**2 * (u**2 + v**2) / n**2
    out = p.degrade(mode[None, None], t)[0, 0]
    assert torch.allclose(out, math.exp(-rate * tau) * mode, atol=1e-12)
    x = torch.randn(4, 1, n, n, generator=gen(1), dtype=torch.float64)
    tt = torch.full((4,), 0.9, dtype=torch.float64)
    assert torch.allclose(p.degrade(x, tt).mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=1e-12)  # heat is conserved
    assert torch.equal(p.degrade(x, torch.zeros(4, dtype=torch.float64)), x.clone()) or torch.allclose(
        p.degrade(x, torch.zeros(4, dtype=torch.float64)), x, atol=1e-12)
    assert float(p.tau(torch.tensor(1.0, dtype=torch.float64))) == pytest.approx(0.5 * 8.0**2)


def test_corrected_update_cancels_the_first_order_error_of_x0_for_blur():
    """Cold Diffusion's argument: with x̂0 = x0 + e, the naive step gives D_s(x0) + D_s(e), the corrected one
    D_s(x0) + (D_s − D_t)(e), much smaller between close times."""
    n = 8
    p = HeatBlurProcess(n, delta=0.0)
    x0 = torch.randn(6, 1, n, n, generator=gen(2), dtype=torch.float64)
    e = 0.3 * torch.randn(6, 1, n, n, generator=gen(3), dtype=torch.float64)
    t, s = torch.full((6,), 0.5, dtype=torch.float64), torch.full((6,), 0.45, dtype=torch.float64)
    x_t = p.degrade(x0, t)
    target = p.degrade(x0, s)
    grid = torch.tensor([0.5, 0.45, 0.0], dtype=torch.float64)
    step = lambda update: sample_continuous(p, lambda x, tt: x0 + e if float(tt[0]) == 0.5 else x, x_t, grid, update)  # noqa: E731
    # one step t → s then the terminal step returns the model's "x̂0" (here: x itself), i.e. x_s
    naive, corrected = step("naive"), step("corrected")
    assert torch.allclose(corrected - target, p.degrade(e, s) - p.degrade(e, t), atol=1e-12)
    assert (corrected - target).norm() < 0.3 * (naive - target).norm()


# ------------------------------------------------------------------------------------------ masking
def test_mask_hides_a_growing_nested_set_of_pixels():
    p = MaskProcess((1, 4, 4), fill=0.0, seed=3)
    ts = torch.tensor([0.0, 0.2, 0.5, 1.0], dtype=torch.float64)
    keep = p.keep(ts).reshape(4, 16)
    assert keep.sum(1).tolist() == [16, 16 - math.ceil(0.2 * 16), 8, 0]
    assert ((keep[1:] <= keep[:-1]).all())  # a pixel once hidden stays hidden
    x0 = torch.randn(4, 1, 4, 4, generator=gen(4), dtype=torch.float64) + 5
    x_t = p.degrade(x0, torch.full((4,), 0.5, dtype=torch.float64))
    assert ((x_t == 0).reshape(4, 16).sum(1) == 8).all()
    # deterministic process, exact x̂0: the corrected update lands on D_s(x0) exactly
    grid = torch.tensor([0.5, 0.25, 0.0], dtype=torch.float64)
    out = sample_continuous(p, lambda x, t: x0 if float(t[0]) == 0.5 else x, x_t, grid, "corrected")
    assert torch.allclose(out, p.degrade(x0, torch.full((4,), 0.25, dtype=torch.float64)), atol=0)


# ------------------------------------------------------------------------------------------ discrete
def _matrices(p: DiscreteCorruption, t: float, s: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q̄_s (K×S), Q̄_t (K×S) from the marginals and Q_{t|s} (S×S) from α_{t|s}, built explicitly."""
    S, K = p.states, p.K
    eye = torch.eye(K, dtype=torch.float64)
    Qs = p.marginal(eye, torch.tensor(s, dtype=torch.float64))
    Qt = p.marginal(eye, torch.tensor(t, dtype=torch.float64))
    a = float(p.alpha_bar(torch.tensor(t)) / p.alpha_bar(torch.tensor(s)))
    if p.kind == "absorbing":
        Qts = torch.zeros(S, S, dtype=torch.float64)
        Qts[:K, :K] = a * torch.eye(K, dtype=torch.float64)
        Qts[:K, K] = 1 - a
        Qts[K, K] = 1.0
    else:
        Qts = a * torch.eye(K, dtype=torch.float64) + (1 - a) / K
    return Qs, Qt, Qts


@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_discrete_posterior_is_bayes_rule_on_a_tiny_chain(kind, schedule):
    p = DiscreteCorruption(kind, levels=3, schedule=schedule)
    t, s = 0.7, 0.3
    Qs, Qt, Qts = _matrices(p, t, s)
    assert torch.allclose(Qs @ Qts, Qt, atol=1e-14)  # Markov: q(x_t | x_0) = Σ_s q(x_s | x_0) q(x_t | x_s)
    for x0 in range(p.K):
        for xt in range(p.states):
            if Qt[x0, xt] == 0:
                continue
            bayes = Qts[:, xt] * Qs[x0] / Qt[x0, xt]  # q(x_s | x_t, x_0) over x_s
            onehot = torch.nn.functional.one_hot(torch.tensor([x0]), p.K).to(torch.float64)
            closed = p.posterior(torch.tensor([xt]), onehot, torch.tensor([t]), torch.tensor([s]))[0]
            assert torch.allclose(closed, bayes, atol=1e-14), (x0, xt)


def test_absorbing_posterior_closed_form_numbers():
    """Linear ᾱ: t = 0.75, s = 0.25 → ᾱ_t = 0.25, ᾱ_s = 0.75: a masked token unmasks with (0.75 − 0.25)/(0.75) = 2/3."""
    p = DiscreteCorruption("absorbing", levels=2)
    probs = torch.tensor([[0.4, 0.6]], dtype=torch.float64)
    post = p.posterior(torch.tensor([p.mask]), probs, torch.tensor([0.75]), torch.tensor([0.25]))[0]
    assert torch.allclose(post, torch.tensor([2 / 3 * 0.4, 2 / 3 * 0.6, 1 / 3], dtype=torch.float64))
    kept = p.posterior(torch.tensor([1]), probs, torch.tensor([0.75]), torch.tensor([0.25]))[0]
    assert kept.tolist() == [0.0, 1.0, 0.0]


@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
def test_discrete_sampler_with_the_exact_posterior_draws_the_data(kind):
    """Data: two 5-pixel images with probabilities 0.7 / 0.3. With the exact p(x0 | x_t) the posterior sampler
    returns one of them, in those proportions, as the steps get small: each step draws the pixels
    independently (D3PM's factorised reverse step), which mixes the two images only when a step changes
    several pixels at once."""
    p = DiscreteCorruption(kind, levels=3)
    images = torch.tensor([[0, 1, 2, 2, 0], [2, 2, 1, 0, 1]])
    weights = torch.tensor([0.7, 0.3], dtype=torch.float64)

    def predict_probs(x_t, t):
        onehots = torch.nn.functional.one_hot(images, p.K).to(torch.float64)  # (2, 5, K)
        like = p.marginal(onehots, torch.tensor(float(t[0]), dtype=torch.float64))  # (2, 5, S): q(x_t,p | y_i,p)
        pix = torch.arange(images.shape[1])
        logl = torch.stack([torch.log(like[i].clamp_min(1e-300))[pix, x_t].sum(-1) for i in range(2)], dim=1)
        w = torch.softmax(torch.log(weights)[None] + logl, dim=1)  # (B, 2): p(image | x_t)
        return torch.einsum("bi,ipk->bpk", w, onehots)

    def run(steps):
        out = sample_discrete(p, predict_probs, p.prior((3000, 5), gen(0)), uniform_grid(steps), "posterior", gen(1))
        return (out == images[0]).all(1), (out == images[1]).all(1)

    first, second = run(400)
    coarse_first, coarse_second = run(4)
    assert float((first | second).double().mean()) > 0.98
    assert float((first | second).double().mean()) > float((coarse_first | coarse_second).double().mean()) + 0.05
    assert abs(float(first.double().mean()) / float((first | second).double().mean()) - 0.7) < 0.03


def test_quantize_round_trip_and_the_discrete_loss_is_the_cross_entropy():
    x = torch.linspace(-1, 1, 7)
    k = quantize(x, 4)
    assert k.tolist() == [0, 0, 1, 2, 2, 3, 3] or k.min() == 0 and k.max() == 3
    assert torch.allclose(dequantize(quantize(dequantize(k, 4), 4), 4), dequantize(k, 4))
    p = DiscreteCorruption("absorbing", levels=4)
    x0 = torch.randint(0, 4, (16, 6), generator=gen(2))
    uniform_logits = lambda x_t, t: torch.zeros(*x_t.shape, 4)  # noqa: E731
    assert float(forward_loss(p, uniform_logits, x0, gen(3))) == pytest.approx(math.log(4), abs=1e-6)


# ------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("experiment", ["blur_digits", "mask_digits", "mask_gmm", "absorbing_digits"])
def test_forward_process_experiments_compose_build_train_and_evaluate(compose_cfg, experiment):
    from conftest import FAST_TRAIN, SMALL_UNET

    from diffusion_lab.forward import ForwardProcessSchedule
    from diffusion_lab.train import run

    small = SMALL_UNET if experiment.endswith("digits") else ["model.hidden_dim=32", "model.num_layers=1"]
    out = run(compose_cfg([f"experiment={experiment}", *FAST_TRAIN, *small, "evaluation.n=8", "evaluation.metrics=[]",
                           "sampler.steps=4"]))
    assert out["trainer"].global_step == 2
    assert isinstance(out["parts"].schedule, ForwardProcessSchedule)


def test_forward_process_schedule_refuses_the_ode_samplers_and_gaussian_losses(build_run):
    from diffusion_lab.errors import ConfigError

    with pytest.raises(ConfigError, match="sampler=heun integrates a Gaussian model"):
        build_run(["experiment=blur_digits", "sampler=heun"])
    with pytest.raises(ConfigError, match="loss=forward_mse needs a forward-process schedule"):
        build_run(["experiment=blur_digits", "schedule=vp"])


def test_forward_process_sampler_on_a_gaussian_schedule_is_ddim():
    schedule = DDPMLinearSchedule()
    m = GaussianMixture.random(2, 3, seed=0)
    param = Parameterization("eps")
    den = Denoiser(m.network(schedule, param), schedule, param)
    x_T = schedule.prior_sample((32, 2), gen(0), torch.float64)
    ours = Sampler("forward_process", steps=10)(den, x_T=x_T, progress=False)
    grid = uniform_grid(10)
    ddim = sample_continuous(GaussianProcess(schedule), lambda x, t: den(x, t).x0, x_T, grid, "corrected")
    assert ours.nfe == 10 and torch.allclose(ours.x, ddim, atol=1e-12)


def test_blur_prior_is_a_flat_image_of_the_data_mean_colour():
    from diffusion_lab.forward import ForwardProcessSchedule

    s = ForwardProcessSchedule("blur", [1, 8, 8], delta=0.0, prior_mean=-0.4, prior_std=0.05)
    x = s.prior_sample((4000, 1, 8, 8), gen(0), torch.float64)
    assert torch.allclose(x, x[:, :, :1, :1].expand_as(x))  # flat
    assert abs(float(x[:, 0, 0, 0].mean()) + 0.4) < 0.005 and abs(float(x[:, 0, 0, 0].std()) - 0.05) < 0.005


# ---------------------------------------------------------------------------------- discrete processes in the run layer
class _OneImage(torch.nn.Module):
    """The exact model of a one-image dataset: logit ``scale`` on the image's level at every pixel, whatever
    x_t (p(x_0 | x_t) is a point mass), laid out as the run layer expects: (B, C·K, H, W), channel-major."""

    def __init__(self, states: torch.Tensor, levels: int, scale: float = 60.0):
        super().__init__()
        C = states.shape[0]
        logits = scale * torch.nn.functional.one_hot(states, levels).to(torch.float64)  # (C, H, W, K)
        self.register_buffer("logits", logits.movedim(-1, 1).reshape(C * levels, *states.shape[1:]))

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.logits.to(x.dtype).expand(x.shape[0], *self.logits.shape)


def _discrete(kind: str, levels: int = 5, shape=(2, 3, 3)):
    from diffusion_lab.forward import ForwardProcessSchedule

    return ForwardProcessSchedule(kind, list(shape), levels=levels)


@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
def test_discrete_states_travel_as_float_images_exactly(kind):
    for levels in (4, 17):
        sch = _discrete(kind, levels)
        states = torch.arange(sch.process.states)
        x = sch.encode(states)
        assert torch.equal(sch.decode(x), states)
        assert torch.allclose(x[:levels], torch.linspace(-1, 1, levels, dtype=torch.float64))
        if kind == "absorbing":
            assert x[levels] < -1  # MASK: one level below −1, never a data value
    from sklearn.datasets import load_digits

    digits = torch.as_tensor(load_digits().images[:50], dtype=torch.float64) / 16 * 2 - 1  # the 17 grey levels
    sch = _discrete("absorbing", 17, (1, 8, 8))
    assert torch.equal(sch.encode(sch.decode(digits)), digits)


@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
def test_discrete_loss_is_zero_for_the_exact_model_and_log_k_for_a_blank_one(kind):
    from diffusion_lab.losses import DiscreteForwardLoss

    sch, K = _discrete(kind), 5
    states = torch.randint(0, K, (2, 3, 3), generator=gen(1))
    x0 = sch.encode(states).float().expand(4, 2, 3, 3)
    exact = Denoiser(_OneImage(states, K).float(), sch, "x0")
    assert float(DiscreteForwardLoss()(exact, x0, generator=gen(0)).loss) < 1e-6
    blank = Denoiser(lambda x, label: torch.zeros(x.shape[0], 2 * K, 3, 3), sch, "x0")
    assert float(DiscreteForwardLoss()(blank, x0, generator=gen(0)).loss) == pytest.approx(math.log(K), rel=1e-6)
    wrong = Denoiser(lambda x, label: torch.zeros(x.shape[0], K, 3, 3), sch, "x0")  # C·K channels needed, K given
    with pytest.raises(ValueError, match="model.out_channels=10"):
        DiscreteForwardLoss()(wrong, x0, generator=gen(0))


@pytest.mark.parametrize("update", ["posterior", "naive"])
@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
def test_discrete_sampler_with_the_exact_model_lands_on_the_image(kind, update):
    sch, K = _discrete(kind), 5
    states = torch.randint(0, K, (2, 3, 3), generator=gen(2))
    den = Denoiser(_OneImage(states, K), sch, "x0")
    x_T = sch.prior_sample((6, 2, 3, 3), gen(3), torch.float64)
    out = Sampler("forward_process", steps=7, update=update)(den, x_T=x_T, generator=gen(4), progress=False)
    assert out.nfe == 7
    assert torch.equal(sch.decode(out.x), states.expand(6, 2, 3, 3))


@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
def test_discrete_update_option_reaches_the_step(kind):
    # an uninformed model (uniform p(x_0 | x_t)): the posterior step keeps unmasked / likely states where the
    # naive step re-draws everything, so from the same seed the two samples differ
    sch, K = _discrete(kind), 5
    den = Denoiser(lambda x, label: torch.zeros(x.shape[0], 2 * K, 3, 3, dtype=x.dtype), sch, "x0")
    x_T = sch.prior_sample((8, 2, 3, 3), gen(3), torch.float64)
    out = {u: Sampler("forward_process", steps=6, update=u)(den, x_T=x_T, generator=gen(4), progress=False).x
           for u in ("posterior", "naive")}
    assert not torch.equal(out["posterior"], out["naive"])
    for x in out.values():  # both end on data levels, never on MASK
        assert bool((sch.decode(x) < K).all())


def test_discrete_schedules_refuse_continuous_losses_and_updates(build_run):
    from diffusion_lab.errors import ConfigError

    with pytest.raises(ConfigError, match="use sampler.update=posterior or naive"):
        build_run(["experiment=absorbing_digits", "sampler.update=corrected"])
    with pytest.raises(ConfigError, match="schedule=absorbing is discrete; use loss=forward_ce"):
        build_run(["experiment=absorbing_digits", "loss=forward_mse"])
    with pytest.raises(ConfigError, match="loss=forward_ce needs a discrete forward process"):
        build_run(["experiment=blur_digits", "loss=forward_ce"])
