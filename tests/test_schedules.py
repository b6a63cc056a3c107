"""Schedules against exact math: derivatives, λ and its inverse, the forward SDE, the discrete/
continuous correspondences, the zero-terminal-SNR rescale, priors and argument checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from diffusion_lab.schedules import (
    CosineDiscreteSchedule,
    DDPMLinearSchedule,
    DiscreteSchedule,
    EDMSchedule,
    RectifiedFlowSchedule,
    Schedule,
    SubVPSchedule,
    VESchedule,
    VPCosineSchedule,
    VPLinearSchedule,
    ZeroTerminalSNR,
    cosine_alpha_bar,
)
from diffusion_lab.schedules.base import _time_derivative

F64 = torch.float64

SCHEDULES = {
    "ddpm": lambda: DDPMLinearSchedule(),
    "ddpm_T50": lambda: DDPMLinearSchedule(num_timesteps=50),
    "cosine_discrete": lambda: CosineDiscreteSchedule(),
    "vp": lambda: VPLinearSchedule(),
    "cosine": lambda: VPCosineSchedule(),
    "subvp": lambda: SubVPSchedule(),
    "ve": lambda: VESchedule(),
    "edm": lambda: EDMSchedule(),
    "rectified_flow": lambda: RectifiedFlowSchedule(),
    "zero_snr_ddpm": lambda: ZeroTerminalSNR(DDPMLinearSchedule()),
    "zero_snr_vp": lambda: ZeroTerminalSNR(VPLinearSchedule()),
}
VP_NAMES = ["ddpm", "ddpm_T50", "cosine_discrete", "vp", "cosine", "zero_snr_ddpm", "zero_snr_vp"]


def make(name: str) -> Schedule:
    return SCHEDULES[name]()


def interior_points(s: Schedule, n: int = 9) -> torch.Tensor:
    """Points inside (t_min, t_max), off the grid i/T of discrete schedules (derivatives are
    one-sided there)."""
    t = torch.linspace(s.t_min, s.t_max, n + 2, dtype=F64)[1:-1]
    T = s.num_timesteps
    if T is not None:
        t = (torch.floor(t * T) + 0.37) / T
    # also close to both ends
    T_eff = T or 1e4
    near = torch.tensor([s.t_min + 0.37 / T_eff, s.t_max - 0.63 / T_eff], dtype=F64)
    return torch.cat([near, t]).clamp(s.t_min, s.t_max)


def central_difference(fn, t: torch.Tensor, h: float) -> torch.Tensor:
    return (fn(t + h) - fn(t - h)) / (2 * h)


# --------------------------------------------------------------------------- derivatives
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_derivatives_match_finite_differences_and_autograd(name):
    s = make(name)
    t = interior_points(s)
    h = 1e-7 if s.num_timesteps is None else 0.1 / s.num_timesteps * 1e-4
    for closed, fn in ((s.alpha_dot, s.alpha), (s.sigma_dot, s.sigma)):
        exact = closed(t)
        fd = central_difference(fn, t, h)
        ag = _time_derivative(fn, t)
        scale = fn(t).abs() + exact.abs()
        assert ((exact - fd).abs() <= 1e-6 * scale + 1e-10).all(), (name, exact, fd)
        assert ((exact - ag).abs() <= 1e-12 * scale).all(), (name, exact, ag)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_drift_and_diffusion_follow_from_alpha_sigma(name):
    """f = α̇/α and g² = dσ²/dt − 2fσ², with the derivatives taken by finite differences."""
    s = make(name)
    t = interior_points(s)
    h = 1e-7 if s.num_timesteps is None else 0.1 / s.num_timesteps * 1e-4
    a, sig = s.alpha(t), s.sigma(t)
    f_fd = central_difference(s.alpha, t, h) / a
    g2_fd = central_difference(lambda u: s.sigma(u) ** 2, t, h) - 2 * f_fd * sig**2
    torch.testing.assert_close(s.drift(t), f_fd, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(s.diffusion2(t), g2_fd, rtol=1e-6, atol=1e-9)
    assert (s.diffusion2(t) > 0).all()


def test_closed_form_sde_coefficients_match_the_papers():
    vp, svp = VPLinearSchedule(), SubVPSchedule()
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    beta = 0.1 + t * 19.9
    torch.testing.assert_close(vp.drift(t), -0.5 * beta, rtol=1e-12, atol=0)
    torch.testing.assert_close(vp.diffusion2(t), beta, rtol=1e-10, atol=0)
    integral = 0.1 * t + 0.5 * 19.9 * t * t  # ∫₀ᵗ β
    torch.testing.assert_close(svp.diffusion2(t), beta * (1 - torch.exp(-2 * integral)), rtol=1e-12, atol=0)
    ve = VESchedule(sigma_min=0.01, sigma_max=50.0)
    g = 0.01 * (5000.0**t) * math.sqrt(2 * math.log(5000.0))
    torch.testing.assert_close(ve.diffusion2(t), g * g, rtol=1e-12, atol=0)
    cos = VPCosineSchedule()
    # VP: g² = −2f = β(t) = −d log ᾱ/dt
    torch.testing.assert_close(cos.diffusion2(t), -2 * cos.drift(t), rtol=1e-12, atol=0)
    lab = lambda u: torch.log(cosine_alpha_bar(u))  # noqa: E731
    torch.testing.assert_close(cos.diffusion2(t), -central_difference(lab, t, 1e-6), rtol=1e-7, atol=0)
    ddpm = DDPMLinearSchedule()
    i = torch.tensor([1, 250, 999])
    tm = (i.to(F64) - 0.5) / 1000  # inside segment i: β(t) = −T log(1 − β_i)
    torch.testing.assert_close(ddpm.diffusion2(tm), -1000 * torch.log1p(-ddpm.betas[i - 1]), rtol=1e-12, atol=0)


# --------------------------------------------------------------------------- λ and its inverse
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_log_snr_round_trip(name):
    s = make(name)
    t = torch.cat([torch.linspace(s.t_min, s.t_max, 2001, dtype=F64), interior_points(s)])
    lam = s.log_snr(t)
    torch.testing.assert_close(s.t_from_log_snr(lam), t, rtol=0, atol=1e-10)
    torch.testing.assert_close(lam, torch.log(s.alpha(t)) - torch.log(s.sigma(t)), rtol=1e-10, atol=1e-10)
    lam_grid = torch.linspace(float(lam.min()), float(lam.max()), 501, dtype=F64)
    torch.testing.assert_close(s.log_snr(s.t_from_log_snr(lam_grid)), lam_grid, rtol=0, atol=1e-9)
    # σ̃ = e^{−λ} and its inverse
    st = s.sigma_tilde(t)
    torch.testing.assert_close(st, torch.exp(-lam), rtol=1e-10, atol=0)
    torch.testing.assert_close(s.t_from_sigma_tilde(st), t, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_log_snr_strictly_decreasing_and_finite_on_range(name):
    s = make(name)
    t = torch.linspace(s.t_min, s.t_max, 20001, dtype=F64)
    lam, a, sig = s.log_snr(t), s.alpha(t), s.sigma(t)
    assert torch.isfinite(lam).all()
    assert (a > 0).all() and (sig > 0).all()
    assert (lam[1:] < lam[:-1]).all()
    assert float(s.t_min) >= 0 and float(s.t_max) <= 1


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_float32_in_float32_out(name):
    s = make(name)
    t = interior_points(s).to(torch.float32)  # off the grid: one-sided slopes are not compared
    for fn in (s.alpha, s.sigma, s.alpha_dot, s.sigma_dot, s.log_snr, s.drift, s.diffusion2):
        out = fn(t)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, fn(t.to(F64)).to(torch.float32), rtol=2e-4, atol=1e-6)


# --------------------------------------------------------------------------- forward SDE
@pytest.mark.parametrize("end", ["mid", "t_max"])
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_forward_sde_reproduces_marginals(name, end):
    """Simulate dx = f x dt + g dW from the exact marginal at t_min (x_0 ~ N(m, v), 1-D) with many
    small steps and compare mean and variance at t_b with α m and α² v + σ².

    Steps are uniform in λ (so |f dt| stays small on stiff ends); each step uses f and g² at its
    midpoint with an exponential update of the drift (x ← e^{f dt} x + √(g² dt) z), whose bias is
    O(dt²), far below the Monte-Carlo error."""
    s = make(name)
    gen = torch.Generator().manual_seed(1234)
    n_paths, n_steps, m, v = 10000, 400, 10.0, 0.25
    t_a = s.t_min
    t_b = s.t_max if end == "t_max" else float(s.t_from_log_snr(s.log_snr(torch.tensor([s.t_min, s.t_max], dtype=F64)).mean()))
    lam = torch.linspace(*s.log_snr(torch.tensor([t_a, t_b], dtype=F64)).tolist(), n_steps + 1, dtype=F64)
    ts = s.t_from_log_snr(lam)
    ts[0], ts[-1] = t_a, t_b
    dt = ts[1:] - ts[:-1]
    mid = 0.5 * (ts[1:] + ts[:-1])
    f, g2 = s.drift(mid), s.diffusion2(mid)
    ta = torch.tensor(t_a, dtype=F64)
    x0 = m + math.sqrt(v) * torch.randn(n_paths, generator=gen, dtype=F64)
    x = s.alpha(ta) * x0 + s.sigma(ta) * torch.randn(n_paths, generator=gen, dtype=F64)
    noise = torch.randn(n_steps, n_paths, generator=gen, dtype=F64)
    growth, kick = torch.exp(f * dt), torch.sqrt(g2 * dt)
    for k in range(n_steps):
        x = growth[k] * x + kick[k] * noise[k]
    tb = torch.tensor(t_b, dtype=F64)
    a_b, s_b = float(s.alpha(tb)), float(s.sigma(tb))
    mean_true, var_true = a_b * m, a_b**2 * v + s_b**2
    se_mean = math.sqrt(var_true / n_paths)
    se_var = var_true * math.sqrt(2.0 / n_paths)
    assert abs(float(x.mean()) - mean_true) < 4.5 * se_mean, (name, float(x.mean()), mean_true)
    assert abs(float(x.var()) - var_true) < 4.5 * se_var, (name, float(x.var()), var_true)


# --------------------------------------------------------------------------- families
@pytest.mark.parametrize("name", VP_NAMES)
def test_vp_schedules_preserve_variance(name):
    s = make(name)
    t = torch.linspace(0.0, 1.0, 4001, dtype=F64).clamp(min=s.t_min, max=s.t_max)
    a, sig = s.alpha(t), s.sigma(t)
    torch.testing.assert_close(a * a + sig * sig, torch.ones_like(t), rtol=0, atol=1e-13)
    # VP: g² = −2f
    ti = interior_points(s)
    torch.testing.assert_close(s.diffusion2(ti), -2 * s.drift(ti), rtol=1e-9, atol=0)


def test_subvp_sigma_is_one_minus_alpha_squared():
    s, vp = SubVPSchedule(), VPLinearSchedule()
    t = torch.linspace(s.t_min, 1.0, 1001, dtype=F64)
    a = s.alpha(t)
    torch.testing.assert_close(a, vp.alpha(t), rtol=1e-15, atol=0)
    torch.testing.assert_close(s.sigma(t), 1 - a * a, rtol=1e-12, atol=0)
    assert (a * a + s.sigma(t) ** 2 < 1).all()


def test_alpha_one_schedules_and_rectified_flow():
    for s in (VESchedule(), EDMSchedule()):
        t = torch.linspace(s.t_min, s.t_max, 101, dtype=F64)
        assert (s.alpha(t) == 1).all() and (s.drift(t) == 0).all()
    ve = VESchedule(sigma_min=0.01, sigma_max=50.0)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=F64)
    torch.testing.assert_close(ve.sigma(t), 0.01 * 5000.0**t, rtol=1e-13, atol=0)
    rf = RectifiedFlowSchedule()
    torch.testing.assert_close(rf.alpha(t) + rf.sigma(t), torch.ones_like(t))


def test_edm_uniform_t_grid_is_karras_rho_spacing():
    s = EDMSchedule(sigma_min=0.002, sigma_max=80.0, rho=7.0)
    assert s.sigma_data == 0.5
    N = 18
    i = torch.arange(N, dtype=F64)
    # Karras et al. 2022, Eq. 5: σ_i = (σ_max^{1/ρ} + i/(N−1)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, decreasing
    karras = (80.0 ** (1 / 7) + i / (N - 1) * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    t = 1 - i / (N - 1) * (1 - s.t_min)  # uniform in t on [t_min, 1]
    torch.testing.assert_close(s.sigma(t), karras, rtol=1e-12, atol=0)
    torch.testing.assert_close(s.sigma(torch.tensor([s.t_min, 1.0], dtype=F64)), torch.tensor([0.002, 80.0], dtype=F64), rtol=1e-13, atol=0)
    assert s.t_min == pytest.approx((0.002 / 80) ** (1 / 7)) and s.t_max == 1.0
    assert float(s.sigma(torch.tensor(0.0, dtype=F64))) == 0.0  # t = 0 is the clean data, as the grids' terminal 0
    from diffusion_lab.samplers.grids import time_grid

    g = time_grid(s, N, "uniform")  # N steps: N points in [t_min, 1], then the terminal 0
    torch.testing.assert_close(s.sigma(g[:-1]), karras, rtol=1e-12, atol=0)
    assert g[-1] == 0


def test_ddpm_discrete_matches_products():
    s = DDPMLinearSchedule()
    T = 1000
    assert s.num_timesteps == T and s.t_min == 1 / T and s.t_max == 1.0
    assert s.betas.dtype == F64 and s.alphas_cumprod.dtype == F64
    torch.testing.assert_close(s.betas, torch.linspace(1e-4, 0.02, T, dtype=F64), rtol=0, atol=1e-18)
    prod = torch.cumprod(1 - s.betas, 0)
    torch.testing.assert_close(s.alphas_cumprod, prod, rtol=1e-13, atol=0)
    i = torch.arange(1, T + 1, dtype=F64)
    torch.testing.assert_close(s.alpha(i / T) ** 2, prod, rtol=1e-12, atol=0)
    torch.testing.assert_close(s.sigma(i / T) ** 2, 1 - prod, rtol=1e-12, atol=0)
    # the well-known DDPM terminal value ᾱ_T ≈ 4.036e-5 (prior leak √ᾱ_T ≈ 6.35e-3)
    assert abs(float(s.alphas_cumprod[-1]) - 4.0358e-5) < 1e-8
    # t = 0 is clean data; between grid points log ᾱ is linear in t
    assert float(s.alpha(torch.tensor(0.0, dtype=F64))) == 1.0
    t = (torch.tensor([10, 500, 990], dtype=F64) + 0.25) / T
    lo, hi = s.alphas_cumprod[[9, 499, 989]].log(), s.alphas_cumprod[[10, 500, 990]].log()
    torch.testing.assert_close(2 * s.alpha(t).log(), 0.75 * lo + 0.25 * hi, rtol=1e-12, atol=0)


def test_ddpm_any_T_and_scaling():
    s = DDPMLinearSchedule(num_timesteps=4000)
    torch.testing.assert_close(s.betas[[0, -1]], torch.tensor([2.5e-5, 5e-3], dtype=F64), rtol=1e-12, atol=0)
    raw = DDPMLinearSchedule(num_timesteps=4000, scale_with_T=False)
    torch.testing.assert_close(raw.betas[[0, -1]], torch.tensor([1e-4, 0.02], dtype=F64), rtol=1e-12, atol=0)
    # with the 1000/T scaling the continuous schedule barely depends on T
    t = torch.linspace(0.01, 1.0, 50, dtype=F64)
    torch.testing.assert_close(s.alpha(t), DDPMLinearSchedule().alpha(t), rtol=1e-2, atol=5e-4)
    # and approaches the continuous VP linear schedule (∫β ≈ Σβ)
    torch.testing.assert_close(s.alpha(t), VPLinearSchedule(beta_min=0.1, beta_max=20.0).alpha(t), rtol=1e-2, atol=5e-4)
    custom = DiscreteSchedule([0.1, 0.2, 0.3])
    torch.testing.assert_close(custom.alphas_cumprod, torch.tensor([0.9, 0.72, 0.504], dtype=F64), rtol=1e-14, atol=0)
    torch.testing.assert_close(custom.alpha(torch.tensor([1 / 3, 2 / 3, 1.0], dtype=F64)) ** 2, custom.alphas_cumprod)


@pytest.mark.parametrize("T", [1000, 4000])
def test_cosine_discrete_agrees_with_continuous_on_grid(T):
    d, c = CosineDiscreteSchedule(num_timesteps=T), VPCosineSchedule()
    i = torch.arange(1, T + 1, dtype=F64)
    unclipped = d.betas < 0.999
    # the clip at 0.999 binds only at the very last step
    assert int((~unclipped).sum()) == 1 and not bool(unclipped[-1])
    assert float(d.betas[-1]) == 0.999
    k = i[unclipped]
    torch.testing.assert_close(d.alpha(k / T), c.alpha(k / T), rtol=1e-11, atol=0)
    torch.testing.assert_close(d.alphas_cumprod[unclipped], cosine_alpha_bar(k / T), rtol=1e-11, atol=0)
    # between grid points the log-linear reading is within O(1/T²) of the continuous curve
    t = torch.linspace(0.01, 0.95, 97, dtype=F64) + 0.31 / T
    torch.testing.assert_close(d.alpha(t), c.alpha(t), rtol=50.0 / T**2, atol=0)


def test_zero_terminal_snr_discrete():
    base = DDPMLinearSchedule()
    z = ZeroTerminalSNR(base)
    T = 1000
    assert z.num_timesteps == T and z.t_min == base.t_min and z.t_max == 1 - 1 / T
    one, tmin = torch.tensor(1.0, dtype=F64), torch.tensor(base.t_min, dtype=F64)
    assert abs(float(z.alpha(one))) < 1e-15
    assert abs(float(z.alpha(tmin)) - float(base.alpha(tmin))) < 1e-15
    assert math.isfinite(float(z.log_snr(torch.tensor(z.t_max, dtype=F64))))
    # Lin et al. 2024, Alg. 1 on the array √ᾱ: shift so the last is 0, scale so the first is unchanged
    sq = base.alphas_cumprod.sqrt()
    ref = (sq - sq[-1]) * sq[0] / (sq[0] - sq[-1])
    torch.testing.assert_close(z.alphas_cumprod, ref * ref, rtol=1e-12, atol=1e-300)
    torch.testing.assert_close(z.alpha(torch.arange(1, T + 1, dtype=F64) / T), ref, rtol=1e-12, atol=1e-15)
    assert float(z.alphas_cumprod[-1]) == 0.0 and float(z.betas[-1]) == 1.0
    torch.testing.assert_close(torch.cumprod(1 - z.betas, 0), z.alphas_cumprod, rtol=1e-10, atol=1e-300)
    # below t_min the base is untouched (continuous at t_min, α(0) = 1)
    assert float(z.alpha(torch.tensor(0.0, dtype=F64))) == 1.0
    h = 1e-12
    torch.testing.assert_close(z.alpha(tmin - h), z.alpha(tmin + h), rtol=1e-9, atol=0)
    # the terminal SNR dropped from ≈ 4e-5 to 0 while the first step's SNR is unchanged
    assert float(base.alphas_cumprod[-1]) > 4e-5 and float(z.alphas_cumprod[-1]) == 0.0


def test_zero_terminal_snr_continuous_and_checks():
    z = ZeroTerminalSNR(VPLinearSchedule())
    assert z.num_timesteps is None and z.t_max == 1 - 1e-3
    assert abs(float(z.alpha(torch.tensor(1.0, dtype=F64)))) < 1e-15
    assert not hasattr(z, "alphas_cumprod")
    zc = ZeroTerminalSNR(CosineDiscreteSchedule())
    assert abs(float(zc.alpha(torch.tensor(1.0, dtype=F64)))) < 1e-15
    with pytest.raises(ValueError, match="variance-preserving"):
        ZeroTerminalSNR(VESchedule())
    with pytest.raises(ValueError, match="variance-preserving"):
        ZeroTerminalSNR(SubVPSchedule())
    with pytest.raises(ValueError, match="t_max"):
        ZeroTerminalSNR(DDPMLinearSchedule(), t_max=1.0)


# --------------------------------------------------------------------------- priors
def test_prior_std():
    assert VPLinearSchedule().prior_std() == pytest.approx(math.sqrt(-math.expm1(-2 * 5.025)), rel=1e-14)
    assert SubVPSchedule().prior_std() == pytest.approx(-math.expm1(-2 * 5.025), rel=1e-14)
    assert VESchedule(sigma_max=50.0).prior_std() == pytest.approx(50.0, rel=1e-14)
    assert EDMSchedule(sigma_max=80.0).prior_std() == pytest.approx(80.0, rel=1e-14)
    assert RectifiedFlowSchedule().prior_std() == pytest.approx(0.999, rel=1e-14)
    assert DDPMLinearSchedule().prior_std() == pytest.approx(math.sqrt(1 - 4.0358e-5), abs=1e-8)
    cos = VPCosineSchedule(t_max=0.9946)
    a = math.cos((0.9946 + 0.008) / 1.008 * math.pi / 2) / math.cos(0.008 / 1.008 * math.pi / 2)
    assert cos.prior_std() == pytest.approx(math.sqrt(1 - a * a), rel=1e-14)
    ve = VESchedule(sigma_max=50.0)
    x = ve.prior_sample((4000, 8), generator=torch.Generator().manual_seed(0), dtype=F64)
    assert float(x.std()) == pytest.approx(50.0, rel=0.03)
    lp = ve.prior_log_prob(x[:3])
    ref = torch.distributions.Normal(torch.tensor(0.0, dtype=F64), torch.tensor(50.0, dtype=F64)).log_prob(x[:3]).sum(1)
    torch.testing.assert_close(lp, ref, rtol=1e-12, atol=0)


# --------------------------------------------------------------------------- invalid arguments
@pytest.mark.parametrize(
    "build",
    [
        lambda: DiscreteSchedule([0.1, 1.0]),
        lambda: DiscreteSchedule([0.0, 0.1]),
        lambda: DiscreteSchedule([]),
        lambda: DiscreteSchedule([[0.1]]),
        lambda: DDPMLinearSchedule(num_timesteps=0),
        lambda: DDPMLinearSchedule(num_timesteps=10),  # β_end·1000/T = 2 >= 1
        lambda: DDPMLinearSchedule(beta_start=0.02, beta_end=1e-4),
        lambda: CosineDiscreteSchedule(num_timesteps=2.5),
        lambda: CosineDiscreteSchedule(s=-0.1),
        lambda: CosineDiscreteSchedule(max_beta=1.0),
        lambda: VPCosineSchedule(t_max=1.0),
        lambda: VPCosineSchedule(t_min=0.0),
        lambda: VPLinearSchedule(beta_min=20.0, beta_max=0.1),
        lambda: SubVPSchedule(beta_min=-1.0),
        lambda: SubVPSchedule(t_min=0.0),
        lambda: VESchedule(sigma_min=50.0, sigma_max=0.01),
        lambda: VESchedule(t_max=2.0),
        lambda: EDMSchedule(sigma_min=0.0),
        lambda: EDMSchedule(rho=0.0),
        lambda: EDMSchedule(sigma_data=-1.0),
        lambda: RectifiedFlowSchedule(t_min=0.5, t_max=0.4),
    ],
)
def test_invalid_arguments_raise_value_error(build):
    with pytest.raises(ValueError) as info:
        build()
    msg = str(info.value)
    assert len(msg) > 30 and ("got" in msg or "=" in msg)


# --------------------------------------------------------------------------- configs
CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.mark.parametrize(
    "name, cls",
    [
        ("ddpm", DDPMLinearSchedule),
        ("ddpm_zero_snr", ZeroTerminalSNR),
        ("vp", VPLinearSchedule),
        ("cosine", VPCosineSchedule),
        ("cosine_discrete", CosineDiscreteSchedule),
        ("subvp", SubVPSchedule),
        ("ve", VESchedule),
        ("edm", EDMSchedule),
        ("rectified_flow", RectifiedFlowSchedule),
    ],
)
def test_schedule_configs_instantiate(name, cls):
    hydra_utils = pytest.importorskip("hydra.utils")
    omegaconf = pytest.importorskip("omegaconf")
    s = hydra_utils.instantiate(omegaconf.OmegaConf.load(CONF / "schedule" / f"{name}.yaml"))
    assert type(s) is cls
    ref = cls(DDPMLinearSchedule()) if cls is ZeroTerminalSNR else cls()
    t = torch.linspace(s.t_min, s.t_max, 11, dtype=F64)
    assert (s.t_min, s.t_max, s.num_timesteps) == (ref.t_min, ref.t_max, ref.num_timesteps)
    torch.testing.assert_close(s.alpha(t), ref.alpha(t), rtol=0, atol=0)
    torch.testing.assert_close(s.sigma(t), ref.sigma(t), rtol=0, atol=0)
