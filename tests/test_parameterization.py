"""The conversion layer against exact math: every parameterization converts to every other and back,
targets are read back exactly, EDM preconditioning matches Karras et al. 2022 (Table 1), the loss
weights translate between parameterizations by the exact identities (‖û − u‖² = (D/σ)²‖x̂0 − x0‖², ...), and endpoints give 0, not NaN."""

from __future__ import annotations

import itertools

import pytest
import torch

from diffusion_lab.parameterization import (
    PARAMETERIZATIONS,
    Coefficients,
    EDMPreconditioning,
    Parameterization,
    convert,
    from_x0_eps,
    target,
    to_x0_eps,
)
from diffusion_lab.schedules import DDPMLinearSchedule, RectifiedFlowSchedule, VPLinearSchedule, ZeroTerminalSNR
from schedule_cases import F64, PLAIN, SCHEDULES


def batch(schedule, n_t: int = 6, dim: int = 5, seed: int = 0):
    """(x0, eps, t, x) with t covering both ends of the range and points inside, float64."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = schedule.t_min, schedule.t_max
    t = torch.cat(
        [torch.tensor([lo, hi, lo + 1e-3 * (hi - lo), hi - 1e-3 * (hi - lo)], dtype=F64), lo + (hi - lo) * torch.rand(n_t, generator=g, dtype=F64)]
    )
    x0 = torch.randn(len(t), dim, generator=g, dtype=F64)
    eps = torch.randn(len(t), dim, generator=g, dtype=F64)
    x = schedule.add_noise(x0, eps, t)
    return x0, eps, t, x


def close(a, b, tol=1e-10):
    """|a − b| <= tol·(1 + |b|), elementwise."""
    assert torch.isfinite(a).all()
    err = ((a - b).abs() / (1 + b.abs())).max()
    assert err <= tol, float(err)


# --------------------------------------------------------------------------- conversions
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_any_to_any_and_back_is_identity(name):
    s = SCHEDULES[name]()
    x0, eps, t, x = batch(s)
    c = Coefficients.at(s, t, x)
    for k1, k2 in itertools.product(PLAIN, PLAIN):
        out1 = target(k1, x0, eps, c)
        p = convert(k1, out1, x, c)
        out2 = getattr(p, k2)
        back = getattr(convert(k2, out2, x, c), k1)
        close(back, out1)
        # and any view decodes to the true pair (the prediction is consistent with x)
        close(p.x0, x0)
        close(p.eps, eps)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_views_satisfy_their_definitions(name):
    """score = −ε/σ, v = α ε − σ x0, u = α̇ x0 + σ̇ ε = f x − ½ g² score, x = α x0 + σ ε."""
    s = SCHEDULES[name]()
    x0, eps, t, x = batch(s)
    c = Coefficients.at(s, t, x)
    g = torch.Generator().manual_seed(1)
    x0h = x0 + 0.1 * torch.randn(x0.shape, generator=g, dtype=F64)  # an imperfect prediction
    p = convert("x0", x0h, x, c)
    close(c.alpha * p.x0 + c.sigma * p.eps, x)
    close(p.score, -p.eps / c.sigma)
    close(p.v, c.alpha * p.eps - c.sigma * p.x0)
    close(p.velocity, c.alpha_dot * p.x0 + c.sigma_dot * p.eps)
    f = s.drift(t)[:, None]
    g2 = s.diffusion2(t)[:, None]
    close(p.velocity, f * x - 0.5 * g2 * p.score, tol=1e-9)


@pytest.mark.parametrize("kind", list(PARAMETERIZATIONS))
@pytest.mark.parametrize("name", ["vp", "ddpm", "ve", "edm", "rectified_flow", "subvp"])
def test_target_then_predict_returns_the_clean_pair(name, kind):
    s = SCHEDULES[name]()
    x0, eps, t, x = batch(s)
    param = Parameterization(kind)
    out = param.target(x0, eps, t, s)
    pred = param.predict(out, x, t, s)
    close(pred.x0, x0)
    close(pred.eps, eps)


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match="unknown parameterization"):
        Parameterization("noise")
    c = Coefficients.at(VPLinearSchedule(), torch.tensor([0.5], dtype=F64), torch.zeros(1, 2, dtype=F64))
    with pytest.raises(ValueError):
        to_x0_eps("edm", torch.zeros(1, 2, dtype=F64), torch.zeros(1, 2, dtype=F64), c)


# --------------------------------------------------------------------------- EDM preconditioning
def test_edm_scalings_match_karras_table_1():
    sd = 0.5
    pre = EDMPreconditioning(sd)
    sig = torch.tensor([0.002, 0.1, 0.5, 1.0, 10.0, 80.0], dtype=F64)
    c_skip, c_out, c_in, c_noise = pre.scalings(sig)
    close(c_skip, sd**2 / (sig**2 + sd**2), 1e-15)
    close(c_out, sig * sd / torch.sqrt(sig**2 + sd**2), 1e-15)
    close(c_in, 1 / torch.sqrt(sig**2 + sd**2), 1e-15)
    close(c_noise, torch.log(sig) / 4, 1e-15)
    # limits: c_skip → 1, c_out → 0 as σ → 0 (D → identity); c_skip → 0, c_out → σ_d as σ → ∞
    assert float(c_skip[0]) > 0.9999 and float(c_out[0]) < 0.0021
    assert float(c_skip[-1]) < 4e-5 and abs(float(c_out[-1]) - sd) < 1e-4
    # unit-variance training target and network input for data of std σ_d (Karras et al. App. B.6)
    var_in = c_in**2 * (sd**2 + sig**2)
    close(var_in, torch.ones_like(sig), 1e-14)
    var_target = (sd**2 * (1 - c_skip) ** 2 + c_skip**2 * sig**2) / c_out**2  # Var[(x0 − c_skip x)/c_out]
    close(var_target, torch.ones_like(sig), 1e-12)


@pytest.mark.parametrize("name", ["edm", "ve", "vp", "rectified_flow"])
def test_edm_target_gives_weighted_x0_loss(name):
    """‖F − F*‖² = λ(σ̃)‖D − x0‖², λ = (σ̃² + σ_d²)/(σ̃ σ_d)² (Karras et al. Eq. 8 with Table 1)."""
    s = SCHEDULES[name]()
    sd = 0.5
    param = Parameterization("edm", sigma_data=sd)
    x0, eps, t, x = batch(s)
    g = torch.Generator().manual_seed(3)
    F = torch.randn(x0.shape, generator=g, dtype=F64)
    F_star = param.target(x0, eps, t, s)
    D = param.predict(F, x, t, s).x0
    st = s.sigma_tilde(t)
    lam = (st**2 + sd**2) / (st * sd) ** 2
    lhs = ((F - F_star) ** 2).sum(1)
    rhs = lam * ((D - x0) ** 2).sum(1)
    close(lhs, rhs, 1e-9)
    if name in ("edm", "ve"):  # α = 1: D = c_skip x + c_out F exactly as in Table 1
        c_skip, c_out, c_in, c_noise = param.precond.scalings(st)
        close(D, c_skip[:, None] * x + c_out[:, None] * F)
        x_in, label = param.net_inputs(x, t, s)
        close(x_in, c_in[:, None] * x)
        close(label, 0.25 * torch.log(s.sigma(t)))


# --------------------------------------------------------------------------- loss weights
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_loss_weight_translation(name):
    """‖û − u‖² = (D/σ)²‖x̂0 − x0‖² = (D/α)²‖ε̂ − ε‖², D = α̇σ − σ̇α; also ‖v̂ − v‖² = ((α²+σ²)/σ)²‖x̂0 − x0‖²
    and ‖ŝ − s‖² = ‖ε̂ − ε‖²/σ²."""
    s = SCHEDULES[name]()
    x0, eps, t, x = batch(s)
    c = Coefficients.at(s, t, x)
    g = torch.Generator().manual_seed(2)
    pred = convert("x0", x0 + 0.3 * torch.randn(x0.shape, generator=g, dtype=F64), x, c)
    true = from_x0_eps(x0, eps, c)
    a, sg, ad, sdt = s.alpha(t), s.sigma(t), s.alpha_dot(t), s.sigma_dot(t)
    Dc = ad * sg - sdt * a
    sq = lambda u, w: ((u - w) ** 2).sum(1)  # noqa: E731
    e_u, e_x0, e_eps = sq(pred.velocity, true.velocity), sq(pred.x0, true.x0), sq(pred.eps, true.eps)
    close(e_u, (Dc / sg) ** 2 * e_x0, 1e-9)
    close(e_u, (Dc / a) ** 2 * e_eps, 1e-9)
    close(sq(pred.v, true.v), ((a * a + sg * sg) / sg) ** 2 * e_x0, 1e-9)
    close(sq(pred.score, true.score), e_eps / sg**2, 1e-9)


# --------------------------------------------------------------------------- endpoints
def test_endpoint_convention_no_nan():
    """σ = 0 (t = 0 of rectified flow): ε̂ and score := 0. α = 0 (t = 1): x̂0 from eps/score := 0,
    while x0, v and velocity still decode (parameterization.py, 'Endpoints')."""
    s = RectifiedFlowSchedule()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, generator=g, dtype=F64)
    out = torch.randn(2, 3, generator=g, dtype=F64)
    c0 = Coefficients.at(s, torch.zeros(2, dtype=F64), x)  # α = 1, σ = 0
    p = convert("x0", out, x, c0)
    assert (p.eps == 0).all() and (p.score == 0).all()
    close(p.x0, out)
    assert (p.v == 0).all()  # v = α ε − σ x0 = 0
    close(p.velocity, -out)  # u = α̇ x0 + σ̇ ε = −x0
    c1 = Coefficients.at(s, torch.ones(2, dtype=F64), x)  # α = 0, σ = 1
    for kind in ("eps", "score"):
        p = convert(kind, out, x, c1)
        assert (p.x0 == 0).all()
        assert all(torch.isfinite(getattr(p, k)).all() for k in PLAIN)
    close(convert("eps", out, x, c1).eps, out)
    close(convert("score", out, x, c1).eps, -out)
    # v and velocity decode at α = 0: x0 = −v, and u = −x0 + ε with ε = x
    close(convert("v", out, x, c1).x0, -out)
    close(convert("velocity", out, x, c1).x0, x - out)
    for kind in PLAIN:
        for c in (c0, c1):
            p = convert(kind, out, x, c)
            assert all(torch.isfinite(getattr(p, k)).all() for k in PLAIN), (kind, c)
    # zero terminal SNR at t = 1: v-prediction gives the clean estimate −v
    z = ZeroTerminalSNR(DDPMLinearSchedule())
    cz = Coefficients.at(z, torch.ones(2, dtype=F64), x)
    close(convert("v", out, x, cz).x0, -out)
