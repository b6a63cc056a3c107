"""Time grids (``samplers.grids``): each spacing against its formula, ends pinned, discrete spacings
(identical to diffusers' timesteps), where the last node sits, the per-family ``auto`` grids."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_lab.samplers import SAMPLERS, Sampler
from diffusion_lab.samplers.grids import FAMILIES, GRIDS, schedule_family, time_grid
from diffusion_lab.schedules import (
    CosineDiscreteSchedule,
    DDPMLinearSchedule,
    EDMSchedule,
    RectifiedFlowSchedule,
    SubVPSchedule,
    VESchedule,
    VPCosineSchedule,
    VPLinearSchedule,
)

CONTINUOUS = {
    "vp": VPLinearSchedule,
    "ve": VESchedule,
    "edm": EDMSchedule,
    "rf": RectifiedFlowSchedule,
}


@pytest.mark.parametrize("name", sorted(CONTINUOUS))
@pytest.mark.parametrize("spacing", ["uniform", "lambda", "quadratic", "karras", "auto"])
def test_grid_shape_ends_pinned_and_decreasing(name, spacing):
    sch = CONTINUOUS[name]()
    for steps in (1, 2, 7, 50):
        g = time_grid(sch, steps, spacing)
        assert g.dtype == torch.float64 and g.shape == (steps + 1,)
        assert float(g[0]) == sch.t_max and float(g[-1]) == 0.0
        if steps > 1:
            assert float(g[-2]) == sch.t_min
        assert bool((g[1:] < g[:-1]).all())
        g2 = time_grid(sch, steps, spacing, denoise_last=False)  # ends at t_min, steps + 1 points
        assert g2.shape == (steps + 1,) and float(g2[0]) == sch.t_max and float(g2[-1]) == sch.t_min


@pytest.mark.parametrize("name", ["ve", "edm", "vp"])
def test_karras_grid_matches_edm_formula(name):
    # Karras et al. 2022, Eq. 5: σ_i = (σ_max^{1/ρ} + i/(N−1)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, in σ̃ = σ/α.
    sch, N, rho = CONTINUOUS[name](), 18, 7.0
    g = time_grid(sch, N, "karras", rho=rho)
    st = sch.sigma_tilde(g[:-1])
    smax, smin = (float(v) for v in sch.sigma_tilde(torch.tensor([sch.t_max, sch.t_min], dtype=torch.float64)))
    i = torch.arange(N, dtype=torch.float64)
    expected = (smax ** (1 / rho) + i / (N - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    torch.testing.assert_close(st, expected, rtol=1e-10, atol=0)


def test_karras_default_rho_is_7():
    """EDM's ρ = 7 is the default both of the grid and of the Sampler (Karras et al. 2022, Eq. 5)."""
    sch, N = EDMSchedule(), 10
    st = sch.sigma_tilde(time_grid(sch, N, "karras")[:-1])
    i = torch.arange(N, dtype=torch.float64)
    expected = (80.0 ** (1 / 7) + i / (N - 1) * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    torch.testing.assert_close(st, expected, rtol=1e-10, atol=0)
    s = Sampler("heun", steps=N, grid="karras", visit_t_min=True)
    assert s.rho == 7.0
    torch.testing.assert_close(sch.sigma_tilde(s.time_grid(sch)[:-1]), expected, rtol=1e-10, atol=0)


@pytest.mark.parametrize("name", sorted(CONTINUOUS))
@pytest.mark.parametrize("spacing", ["uniform", "lambda", "quadratic", "karras"])
def test_grid_ending_one_step_above_t_min(name, spacing):
    """visit_t_min=False: the spacing's steps + 1 points without t_min, then 0."""
    sch = CONTINUOUS[name]()
    for steps in (1, 3, 12):
        full = time_grid(sch, steps + 1, spacing, visit_t_min=True)  # steps + 1 points, t_min last, then 0
        early = time_grid(sch, steps, spacing, visit_t_min=False)
        assert early.shape == (steps + 1,) and float(early[-1]) == 0.0
        torch.testing.assert_close(early[:-1], full[:-2], rtol=0, atol=0)
        assert float(early[-2]) > sch.t_min


@pytest.mark.parametrize("name", sorted(CONTINUOUS))
def test_lambda_grid_is_uniform_in_log_snr(name):
    sch = CONTINUOUS[name]()
    g = time_grid(sch, 25, "lambda")
    lam = sch.log_snr(g[:-1])
    d = lam[1:] - lam[:-1]
    assert bool((d > 0).all())
    torch.testing.assert_close(d, torch.full_like(d, float(d.mean())), rtol=1e-8, atol=0)


def test_uniform_and_quadratic_formulas():
    sch = VPLinearSchedule()
    n = 11
    torch.testing.assert_close(time_grid(sch, n, "uniform")[:-1], torch.linspace(1.0, 1e-3, n, dtype=torch.float64))
    u = torch.linspace(1.0, 0.0, n, dtype=torch.float64)
    torch.testing.assert_close(time_grid(sch, n, "quadratic")[:-1], 1e-3 + (1.0 - 1e-3) * u * u)


@pytest.mark.parametrize("steps", [2, 10, 50, 333])
def test_leading_never_starts_at_T_and_trailing_does(steps):
    sch = DDPMLinearSchedule(1000)
    T = sch.num_timesteps
    lead = time_grid(sch, steps, "leading")
    trail = time_grid(sch, steps, "trailing")
    lin = time_grid(sch, steps, "linspace")
    assert float(lead[0]) < 1.0  # the last timestep T is never visited: the known leak (Lin et al. 2024)
    assert float(lead[-2]) == 1.0 / T  # leading ends at the first step
    assert float(trail[0]) == 1.0 and float(lin[0]) == 1.0
    assert float(lin[-2]) == 1.0 / T
    for g in (lead, trail, lin):
        idx = g[:-1] * T
        torch.testing.assert_close(idx, idx.round(), rtol=0, atol=1e-9)  # integer timesteps only
        assert float(g[-1]) == 0.0 and bool((g[1:] < g[:-1]).all())
    # the formulas of the module docstring
    k = torch.arange(steps, dtype=torch.float64)
    torch.testing.assert_close(lead[:-1] * T, (1 + k * (T // steps)).flip(0))
    torch.testing.assert_close(trail[:-1] * T, (T - k * (T / steps)).round())


def test_linspace_rounds_half_to_even_as_diffusers():
    """n = 7 on T = 1000: linspace(0, 999, 7) = 0, 166.5, 333, 499.5, 666, 832.5, 999 rounds (half to even) to
    diffusers' DDIM timesteps 999, 832, 666, 500, 333, 166, 0, i.e. our steps i = τ + 1."""
    sch = DDPMLinearSchedule(1000)
    idx = (time_grid(sch, 7, "linspace")[:-1] * 1000).round().long().tolist()
    assert idx == [1000, 833, 667, 501, 334, 167, 1]
    # DPM-Solver's convention: linspace(0, 999, 8) rounded (142.71.. → 143, ...), the last point (0) dropped
    early = (time_grid(sch, 7, "linspace", visit_t_min=False)[:-1] * 1000).round().long().tolist()
    assert early == [1000, 857, 715, 572, 429, 286, 144]


def test_discrete_spacings_equal_diffusers_timesteps():
    """Step counts n ≥ 2 on T = 1000 (all on T = 37): our indices − 1 are diffusers' timesteps exactly (for
    n = 1 diffusers' linspace is the single timestep 0; ours starts at T, as every grid does)."""
    diffusers = pytest.importorskip("diffusers")
    for T in (1000, 37):
        sch = DDPMLinearSchedule(T)
        ddim = {sp: diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing=sp) for sp in DISCRETE_SPACINGS}
        dpm = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T, timestep_spacing="linspace")
        counts = range(2, T + 1) if T < 100 else [*range(2, 130), 199, 253, 333, 499, 500, 512, 617, 999, 1000]
        for n in counts:
            for sp, sched in ddim.items():
                sched.set_timesteps(n)
                ours = (time_grid(sch, n, sp)[:-1] * T).round().long() - 1
                theirs = sched.timesteps.tolist()
                # diffusers' float arange gives trailing an extra timestep −1 for some n (e.g. 61 on T = 1000)
                if sp == "trailing" and len(theirs) == n + 1 and theirs[-1] == -1:
                    theirs = theirs[:n]
                assert ours.tolist() == theirs, (T, n, sp)
            if n < T:
                dpm.set_timesteps(n)
                ours = (time_grid(sch, n, "linspace", visit_t_min=False)[:-1] * T).round().long() - 1
                assert ours.tolist() == dpm.timesteps.tolist(), (T, n, "dpm linspace")


DISCRETE_SPACINGS = ("linspace", "leading", "trailing")


def test_schedule_families_and_auto_grids():
    assert schedule_family(DDPMLinearSchedule()) == schedule_family(CosineDiscreteSchedule()) == "discrete"
    assert schedule_family(VPLinearSchedule()) == schedule_family(VPCosineSchedule()) == "vp"
    assert schedule_family(SubVPSchedule()) == "vp"
    assert schedule_family(VESchedule()) == "ve" and schedule_family(EDMSchedule()) == "edm"
    assert schedule_family(RectifiedFlowSchedule()) == "flow"
    schedules = {"discrete": DDPMLinearSchedule(), "vp": VPLinearSchedule(), "ve": VESchedule(), "edm": EDMSchedule(),
                 "flow": RectifiedFlowSchedule()}
    for name, spec in SAMPLERS.items():
        assert set(spec.grids) == set(spec.visits) == set(FAMILIES), name
        for fam, sch in schedules.items():
            s = Sampler(name, steps=6)  # grid "auto"
            assert s.grid == "auto" and s.spacing(sch) == spec.grids[fam]
            expected = time_grid(sch, 6, spec.grids[fam], visit_t_min=spec.visits[fam])
            assert torch.equal(s.time_grid(sch), expected), (name, fam)


def test_full_discrete_grid_visits_every_timestep():
    sch = DDPMLinearSchedule(50)
    for spacing in ("linspace", "leading", "trailing", "auto"):
        g = time_grid(sch, 50, spacing)
        torch.testing.assert_close(g, torch.arange(50, -1, -1, dtype=torch.float64) / 50)


def test_auto_is_linspace_on_discrete_and_uniform_on_continuous():
    d, c = DDPMLinearSchedule(1000), VPLinearSchedule()
    assert torch.equal(time_grid(d, 37, "auto"), time_grid(d, 37, "linspace"))
    assert torch.equal(time_grid(c, 37, "auto"), time_grid(c, 37, "uniform"))
    assert "auto" in GRIDS


def test_grid_errors_are_clear():
    with pytest.raises(ValueError, match="discrete-time schedule"):
        time_grid(VPLinearSchedule(), 10, "trailing")
    with pytest.raises(ValueError, match="exceed"):
        time_grid(DDPMLinearSchedule(100), 101, "linspace")
    with pytest.raises(ValueError, match="unknown grid spacing"):
        time_grid(VPLinearSchedule(), 10, "cosine")
    with pytest.raises(ValueError, match="at least 1"):
        time_grid(VPLinearSchedule(), 0)
    assert math.isfinite(float(time_grid(VESchedule(), 3, "karras")[1]))

