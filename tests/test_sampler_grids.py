"""Time grids (``samplers.grids``): each spacing against its formula, ends pinned, discrete spacings."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_lab.samplers.grids import GRIDS, time_grid
from diffusion_lab.schedules import DDPMLinearSchedule, EDMSchedule, RectifiedFlowSchedule, VESchedule, VPLinearSchedule

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

