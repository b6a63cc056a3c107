"""Guidance on the class-labelled Gaussian-mixture oracle, where p_t(y | x) and p_t(x | y) are closed form:
classifier guidance adds exactly s ∇ log p_t(y | x) to the score, classifier-free guidance is exactly
(1 + w) s(x|y) − w s(x) from ONE network call, in every parameterization and schedule; with s = 1 (or a
conditional model) the ODE and SDE samplers sample the class's own mixture (MMD against its closed form)."""

from __future__ import annotations

import pytest
import torch

from diffusion_lab.denoiser import Denoiser
from diffusion_lab.guidance import (NULL_LABEL, ClassifierFreeGuidance, ClassifierGuidance, balanced_labels,
                                    classifier_inputs, drop_labels)
from diffusion_lab.oracles import ClassConditionalMixture
from diffusion_lab.parameterization import Parameterization
from diffusion_lab.samplers import Sampler
from diffusion_lab.schedules import EDMSchedule, RectifiedFlowSchedule, VESchedule, VPLinearSchedule

SCHEDULES = {"vp": VPLinearSchedule, "ve": VESchedule, "edm": EDMSchedule, "rectified_flow": RectifiedFlowSchedule}
KINDS = ["eps", "x0", "score", "v", "velocity", "edm"]
LABELLED = ClassConditionalMixture.random(dim=2, components=6, num_classes=3, seed=1)


def noisy_batch(schedule, n=64, seed=0):
    """(x_t, t, y): labelled mixture samples noised at random times inside the schedule's range."""
    g = torch.Generator().manual_seed(seed)
    x0, y = LABELLED.sample(n, g)
    t = schedule.t_min + (schedule.t_max - schedule.t_min) * (0.02 + 0.96 * torch.rand(n, generator=g, dtype=torch.float64))
    return schedule.add_noise(x0, torch.randn(n, 2, generator=g, dtype=torch.float64), t), t, y


def relative_error(a, b):
    return float(((a - b).abs() / b.abs().clamp_min(1.0)).max())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sched", sorted(SCHEDULES))
def test_classifier_guidance_adds_exactly_s_times_the_class_gradient(sched, kind):
    """scorẽ = ∇ log p_t(x) + s ∇ log p_t(y|x): the guided prediction of an exact unconditional model and an
    exact classifier (gradient by autograd) against the closed-form gradient; ε̂ and x̂_0 stay consistent."""
    schedule, param = SCHEDULES[sched](), Parameterization(kind)
    x, t, y = noisy_batch(schedule)
    s = 2.5
    den = Denoiser(LABELLED.mixture.network(schedule, param), schedule, param,
                   guidance=ClassifierGuidance(LABELLED.classifier(schedule), scale=s), labels=y)
    pred = den(x, t)
    expect = LABELLED.score(x, t, schedule) + s * LABELLED.class_log_posterior_grad(x, t, schedule, y)
    assert relative_error(pred.score, expect) < 1e-9
    a, sig = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
    assert relative_error(pred.eps, -sig * expect) < 1e-9
    assert relative_error(pred.x0, (x + sig**2 * expect) / a) < 1e-8
    assert den.nfe == 1 and den.guidance.calls == 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sched", sorted(SCHEDULES))
def test_classifier_free_guidance_is_exact_from_one_network_call(sched, kind):
    """scorẽ = (1 + w) s(x|y) − w s(x) in every view, the two passes batched into one call (1 NFE, 2 passes)."""
    schedule, param = SCHEDULES[sched](), Parameterization(kind)
    x, t, y = noisy_batch(schedule)
    w = 1.5
    den = Denoiser(LABELLED.network(schedule, param), schedule, param, guidance=ClassifierFreeGuidance(scale=w), labels=y)
    pred = den(x, t)
    expect = (1 + w) * LABELLED.score(x, t, schedule, y) - w * LABELLED.score(x, t, schedule)
    assert relative_error(pred.score, expect) < 1e-9
    a, sig = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
    assert relative_error(pred.x0, (x + sig**2 * expect) / a) < 1e-8
    assert relative_error(pred.velocity, schedule.alpha_dot(t)[:, None] * pred.x0 + schedule.sigma_dot(t)[:, None] * pred.eps) < 1e-9
    assert (den.nfe, den.passes) == (1, 2)


def test_cfg_sends_the_null_label_in_the_second_half_of_the_one_batch():
    schedule, param = VPLinearSchedule(), Parameterization("eps")
    seen = []
    oracle = LABELLED.network(schedule, param)

    class Spy(torch.nn.Module):
        num_classes = LABELLED.num_classes
        dtype = torch.float64

        def forward(self, x, label, class_labels=None):
            seen.append((x.shape[0], class_labels.clone()))
            return oracle(x, label, class_labels)

    x, t, y = noisy_batch(schedule, n=5)
    Denoiser(Spy(), schedule, param, guidance=ClassifierFreeGuidance(scale=2.0), labels=y)(x, t)
    assert len(seen) == 1 and seen[0][0] == 10
    assert torch.equal(seen[0][1], torch.cat([y, torch.full_like(y, NULL_LABEL)]))


def test_scale_zero_and_the_guidance_interval():
    """w = 0 is the conditional model in one pass; outside the interval (σ̃ ∉ (lo, hi]) CFG uses one pass and
    classifier guidance leaves the prediction alone; inside it guides."""
    schedule, param = VPLinearSchedule(), Parameterization("eps")
    x, _, y = noisy_batch(schedule, n=8)
    cond = lambda t: LABELLED.score(x, t, schedule, y)  # noqa: E731
    uncond = lambda t: LABELLED.score(x, t, schedule)  # noqa: E731
    den = Denoiser(LABELLED.network(schedule, param), schedule, param, guidance=ClassifierFreeGuidance(scale=0.0), labels=y)
    t = torch.full((8,), 0.5, dtype=torch.float64)
    assert relative_error(den(x, t).score, cond(t)) < 1e-10 and (den.nfe, den.passes) == (1, 1)
    lo, hi = 0.5, 2.0  # σ̃ = σ/α; pick one time inside and one outside
    t_in = schedule.t_from_sigma_tilde(torch.tensor(1.0, dtype=torch.float64)).expand(8)
    t_out = schedule.t_from_sigma_tilde(torch.tensor(10.0, dtype=torch.float64)).expand(8)
    cfg = Denoiser(LABELLED.network(schedule, param), schedule, param,
                   guidance=ClassifierFreeGuidance(scale=3.0, interval=[lo, hi]), labels=y)
    assert relative_error(cfg(x, t_out).score, cond(t_out)) < 1e-10 and (cfg.nfe, cfg.passes) == (1, 1)
    assert relative_error(cfg(x, t_in).score, 4 * cond(t_in) - 3 * uncond(t_in)) < 1e-9 and cfg.passes == 3
    clf = Denoiser(LABELLED.mixture.network(schedule, param), schedule, param,
                   guidance=ClassifierGuidance(LABELLED.classifier(schedule), scale=3.0, interval=[lo, None]), labels=y)
    t_low = schedule.t_from_sigma_tilde(torch.tensor(0.2, dtype=torch.float64)).expand(8)
    assert relative_error(clf(x, t_low).score, uncond(t_low)) < 1e-10 and clf.guidance.calls == 0
    assert relative_error(clf(x, t_out).score, uncond(t_out) + 3 * (cond(t_out) - uncond(t_out))) < 1e-9


def _mmd_to_class(den, sampler, y, n=2000, seed=0):
    den.labels = torch.full((n,), y, dtype=torch.long)
    x = sampler(den, (n, 2), generator=torch.Generator().manual_seed(seed), progress=False).x
    return LABELLED.conditional(y).mmd2(x)


@pytest.mark.parametrize("name,steps", [("dpm_solver_pp_2m", 25), ("ddpm", 200)])
def test_guided_sampling_with_s_one_samples_the_class_mixture(name, steps):
    """s = 1 with the exact classifier turns the unconditional model into p(x | y): the samples' MMD to the
    class mixture is at the noise level, far below that of unguided samples; the conditional network
    (CFG with w = 0) does the same through the labels the sampler passes on."""
    schedule, param = VPLinearSchedule(), Parameterization("eps")
    sampler = Sampler(name, steps=steps)
    guided = Denoiser(LABELLED.mixture.network(schedule, param), schedule, param,
                      guidance=ClassifierGuidance(LABELLED.classifier(schedule), scale=1.0))
    unguided = Denoiser(LABELLED.mixture.network(schedule, param), schedule, param)
    conditional = Denoiser(LABELLED.network(schedule, param), schedule, param, guidance=ClassifierFreeGuidance(scale=0.0))
    for y in (0, 2):
        good, bad = _mmd_to_class(guided, sampler, y), _mmd_to_class(unguided, sampler, y)
        assert good < 3e-3 and bad > 30 * max(good, 1e-3), (y, good, bad)
        assert _mmd_to_class(conditional, sampler, y) < 3e-3


def test_label_dropout_and_class_balanced_labels():
    labels = torch.arange(20000) % 10
    dropped = drop_labels(labels, 0.2, torch.Generator().manual_seed(0))
    null = dropped == NULL_LABEL
    assert abs(float(null.float().mean()) - 0.2) < 0.015
    assert torch.equal(dropped[~null], labels[~null])
    assert drop_labels(labels, 0.0, None) is labels
    assert balanced_labels(7, 3, offset=5).tolist() == [2, 0, 1, 2, 0, 1, 2]


def test_classifier_inputs_are_unit_scale_on_every_schedule():
    """x/√(α² + σ²): a VP input is unchanged, a VE input at σ = 50 is divided by ≈ 50."""
    x = torch.ones(2, 3, dtype=torch.float64)
    t = torch.tensor([0.3, 1.0], dtype=torch.float64)
    vp_in, label = classifier_inputs(x, t, VPLinearSchedule())
    torch.testing.assert_close(vp_in, x)
    torch.testing.assert_close(label, 1000 * t)
    ve = VESchedule()
    ve_in, _ = classifier_inputs(x, t, ve)
    torch.testing.assert_close(ve_in[1], x[1] / (1 + ve.sigma(t[1:]) ** 2).sqrt())


@pytest.mark.parametrize("kwargs,sentence", [
    ({"scale": -1.0}, "guidance.scale=-1.0 must be a number ≥ 0"),
    ({"interval": [2.0, 1.0]}, "guidance.interval=[2.0, 1.0] must satisfy"),
    ({"class_label": -3}, "guidance.class_label=-3 must be a class index"),
])
def test_bad_guidance_settings_are_one_sentence(kwargs, sentence):
    with pytest.raises(ValueError, match=sentence.replace("[", r"\[").replace("]", r"\]")):
        ClassifierFreeGuidance(**kwargs)


def test_guidance_without_labels_says_so():
    schedule, param = VPLinearSchedule(), Parameterization("eps")
    x, t, _ = noisy_batch(schedule, n=4)
    den = Denoiser(LABELLED.network(schedule, param), schedule, param, guidance=ClassifierFreeGuidance(scale=1.0))
    with pytest.raises(ValueError, match="guidance=cfg needs class labels"):
        den(x, t)


def test_every_registered_sampler_runs_guided():
    """CFG (one call, two passes per denoiser call) and classifier guidance through every sampler of the
    registry: finite samples, passes = 2·NFE for CFG, one classifier gradient per network call."""
    from diffusion_lab.samplers import SAMPLERS

    schedule, param = VPLinearSchedule(), Parameterization("eps")
    y = torch.arange(8) % 3
    for name in sorted(SAMPLERS):
        cfg = Denoiser(LABELLED.network(schedule, param), schedule, param, guidance=ClassifierFreeGuidance(scale=1.0),
                       labels=y)
        res = Sampler(name, steps=3)(cfg, (8, 2), generator=torch.Generator().manual_seed(0), progress=False)
        assert torch.isfinite(res.x).all() and cfg.passes == 2 * res.nfe > 0, name
        clf = ClassifierGuidance(LABELLED.classifier(schedule), scale=1.0)
        den = Denoiser(LABELLED.mixture.network(schedule, param), schedule, param, guidance=clf, labels=y)
        res = Sampler(name, steps=3)(den, (8, 2), generator=torch.Generator().manual_seed(0), progress=False)
        assert torch.isfinite(res.x).all() and clf.calls == res.nfe, name
