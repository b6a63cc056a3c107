"""Identities of the probability-flow ODE samplers, to float64 precision, on the exact oracle.

* DDIM(η=0) = Euler in σ̃ = DPM-Solver-1 = DPM-Solver++(1) (the same algebra: x_s = α_s x̂_0 + σ_s ε̂);
* UniPC-2 (bh2) without corrector = DPM-Solver++(2M) (B(h) = 1 − e^{−h} with a single difference);
* every ODE sampler gives the same samples whatever the network's parameterization;
* on a point mass the PF-ODE is a straight line in (σ̃, x̃) and every fixed-step sampler is exact;
* the multistep updates are exact on polynomial x̂_0(λ) of their degree (3M derived: quadratic;
  the published 3M is not), and the φ-functions match their integral definition;
* LMS, iPNDM and DEIS of order 1 are Euler/DDIM; iPNDM is LMS on equal σ̃-steps; LMS is k-diffusion's
  ``sample_lms`` (when k-diffusion is installed); DEIS's coefficients integrate polynomials in t exactly;
* NFE counts match the registry, dopri5 reports the calls the denoiser counted, configs build;
* one source of truth: ``conf/sampler/*.yaml`` leave the grid to the registry (``auto``) and their
  options equal the sampler's defaults, and README.md holds the registry's table verbatim.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_lab.oracles import GaussianMixture
from diffusion_lab.parameterization import Parameterization
from diffusion_lab.samplers import SAMPLERS, Denoiser, Sampler
from diffusion_lab.samplers.__main__ import table
from diffusion_lab.samplers.deis import deis_coefficients
from diffusion_lab.samplers.dpm_solver_pp import multistep_terms
from diffusion_lab.samplers.exponential import exp_step, node, phi
from diffusion_lab.samplers.unipc import unipc_update
from diffusion_lab.schedules import DDPMLinearSchedule, EDMSchedule, RectifiedFlowSchedule, VESchedule, VPLinearSchedule

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf" / "sampler"

ODE_SAMPLERS = ["ddim", "euler", "heun", "rk4", "dpm_solver_1", "dpm_solver_2", "dpm_solver_3", "dpm_solver_pp_1",
                "dpm_solver_pp_2s", "dpm_solver_pp_2m", "dpm_solver_pp_3m", "unipc_2", "unipc_3", "lms", "ipndm", "deis",
                "dopri5"]
PARAMS = ["x0", "score", "v", "velocity", "edm"]


SCHEDULES = [("vp", VPLinearSchedule()), ("rf", RectifiedFlowSchedule()), ("ve", VESchedule()), ("edm", EDMSchedule())]
SCHEDULE_IDS = [n for n, _ in SCHEDULES]


def _mixture(dim: int = 3) -> GaussianMixture:
    return GaussianMixture.random(dim, 3, seed=11)


def _x_T(schedule, n: int = 6, dim: int = 3, seed: int = 0) -> torch.Tensor:
    return schedule.prior_sample((n, dim), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _run(name, schedule, param="eps", steps=6, grid="lambda", mixture=None, x_T=None, visit_t_min=True, **kw):
    """One run on the given grid (the same grid for every sampler: visit_t_min fixed, not the sampler's default)."""
    mixture = mixture or _mixture()
    den = Denoiser(mixture.network(schedule, Parameterization(param)), schedule, param)
    x_T = _x_T(schedule) if x_T is None else x_T
    return Sampler(name, steps=steps, grid=grid, visit_t_min=visit_t_min, **kw)(den, x_T=x_T, progress=False)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / (1.0 + b.abs().max()))


@pytest.mark.parametrize("sched_name,schedule", SCHEDULES, ids=SCHEDULE_IDS)
@pytest.mark.parametrize("denoise_last", [True, False])
def test_first_order_samplers_coincide(sched_name, schedule, denoise_last):
    """DDIM(η=0) = Euler in σ̃ = DPM-Solver-1 = DPM-Solver++(1) to ~1e-12, on several grids."""
    for grid in ("lambda", "karras", "uniform"):
        outs = {n: _run(n, schedule, steps=7, grid=grid, denoise_last=denoise_last).x
                for n in ("ddim", "euler", "dpm_solver_1", "dpm_solver_pp_1")}
        for n in ("euler", "dpm_solver_1", "dpm_solver_pp_1"):
            assert _rel(outs[n], outs["ddim"]) < 1e-12, (sched_name, grid, n, _rel(outs[n], outs["ddim"]))


@pytest.mark.parametrize("sched_name,schedule", SCHEDULES, ids=SCHEDULE_IDS)
def test_order_one_multistep_samplers_are_euler(sched_name, schedule):
    """LMS, iPNDM and DEIS of order 1 are Euler in σ̃ = DDIM(η=0), last step included."""
    for grid in ("lambda", "karras"):
        ref = _run("euler", schedule, steps=7, grid=grid).x
        for name in ("lms", "ipndm", "deis"):
            kw = {"terminal_order": 1} if name == "deis" else {}
            out = _run(name, schedule, steps=7, grid=grid, order=1, **kw).x
            assert _rel(out, ref) < 1e-12, (name, grid, _rel(out, ref))


@pytest.mark.parametrize("order", [2, 3, 4])
def test_ipndm_is_lms_on_equal_sigma_steps(order):
    """On a grid with equal steps in σ̃ (Karras with ρ = 1) the variable-step Adams weights are the equal-step
    coefficients: iPNDM = LMS to rounding; on a λ-uniform grid they differ."""
    sch = EDMSchedule()
    a = _run("ipndm", sch, steps=9, grid="karras", rho=1.0, order=order, visit_t_min=True, terminal_reach=None).x
    b = _run("lms", sch, steps=9, grid="karras", rho=1.0, order=order, visit_t_min=True).x
    assert _rel(a, b) < 1e-12, _rel(a, b)
    c = _run("ipndm", sch, steps=9, grid="lambda", order=order).x
    d = _run("lms", sch, steps=9, grid="lambda", order=order).x
    assert _rel(c, d) > 1e-6


def _kdiffusion_sampling():
    """k_diffusion.sampling without the package ``__init__`` (which imports its training stack), or None."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or importlib.util.find_spec("torchsde") is None:
        return None
    if "k_diffusion" not in sys.modules:
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["k_diffusion"] = pkg
    from k_diffusion import sampling

    return sampling


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_lms_is_k_diffusion_lms(order):
    """Our LMS on the grid's σ̃ = k-diffusion's sample_lms on the same σ's (its coefficients come from
    scipy's quad, exact on these polynomials), last step to σ = 0 included."""
    K = _kdiffusion_sampling()
    if K is None:
        pytest.skip("k-diffusion is not installed (pip install k-diffusion torchsde: the bench extra)")
    sch = EDMSchedule()  # α = 1: x = x̃
    den = Denoiser(_mixture().network(sch, Parameterization("eps")), sch, "eps")
    s = Sampler("lms", steps=12, grid="karras", order=order, visit_t_min=True)
    grid = s.time_grid(sch)
    x_T = _x_T(sch)
    ours = s(den, x_T=x_T, progress=False).x
    sigmas = torch.cat([sch.sigma_tilde(grid[:-1]), torch.zeros(1, dtype=torch.float64)])
    theirs = K.sample_lms(lambda x, sig: den(x, sch.t_from_sigma_tilde(sig)).x0, x_T.clone(), sigmas, disable=True,
                          order=order)
    assert _rel(ours, theirs) < 1e-10, _rel(ours, theirs)


@pytest.mark.parametrize("schedule", [VPLinearSchedule(), DDPMLinearSchedule(1000), VESchedule()], ids=["vp", "ddpm", "ve"])
def test_deis_coefficients_integrate_polynomials_in_t(schedule):
    """C_j = ∫_t^s σ̃'(τ) ℓ_j(τ) dτ: Σ_j C_j q(t_j) = ∫_t^s σ̃' q dτ for q of degree < 3, checked against a
    fine midpoint rule of σ̃' q with σ̃' = σ̃·(σ̇/σ − α̇/α) (a different formula: no integration by parts),
    on a step that spans many of the discrete schedule's timesteps (break points at the timesteps, so that
    no midpoint sits on a kink of σ̃')."""
    times = [0.52, 0.61, 0.75]
    t, s = times[0], 0.31
    C = deis_coefficients(schedule, times, t, s)
    edges = torch.linspace(s, t, 20001, dtype=torch.float64)
    if schedule.num_timesteps is not None:
        edges = torch.unique(torch.cat([edges, torch.arange(311, 520, dtype=torch.float64) / schedule.num_timesteps]))
    tau, width = 0.5 * (edges[1:] + edges[:-1]), edges[1:] - edges[:-1]
    a, sg, ad, sd = schedule.coefficients(tau)
    dst = (sg / a) * (sd / sg - ad / a)
    for k in range(3):
        exact = -float((dst * tau**k * width).sum())  # ∫_t^s = −∫_s^t; midpoint error ~1e-10 here
        got = sum(c * tj**k for c, tj in zip(C, times))
        assert abs(got - exact) < 1e-8 * max(1.0, abs(exact)), (k, got, exact)


@pytest.mark.parametrize("sched_name,schedule", SCHEDULES[:2], ids=SCHEDULE_IDS[:2])
def test_unipc_bh2_predictor_is_dpm_solver_pp_2m(sched_name, schedule):
    a = _run("unipc_2", schedule, steps=12, variant="bh2", use_corrector=False, terminal_order=2).x
    b = _run("dpm_solver_pp_2m", schedule, steps=12).x
    assert _rel(a, b) < 1e-12
    # and the corrector changes the result (it is not a no-op), bh1 differs from bh2
    c = _run("unipc_2", schedule, steps=12, variant="bh2").x
    d = _run("unipc_2", schedule, steps=12, variant="bh1").x
    assert _rel(c, b) > 1e-8 and _rel(c, d) > 1e-8


@pytest.mark.parametrize("sched_name,schedule", SCHEDULES, ids=SCHEDULE_IDS)
@pytest.mark.parametrize("name", ODE_SAMPLERS)
def test_parameterization_invariance(sched_name, schedule, name):
    """The oracle network in any parameterization gives the eps result to ~1e-9."""
    kw = {"rtol": 1e-3, "atol": 1e-3} if name == "dopri5" else {}
    steps = 4
    ref = _run(name, schedule, "eps", steps=steps, **kw).x
    for p in PARAMS:
        out = _run(name, schedule, p, steps=steps, **kw).x
        assert _rel(out, ref) < 1e-9, (name, sched_name, p, _rel(out, ref))


@pytest.mark.parametrize("sched_name,schedule", SCHEDULES, ids=SCHEDULE_IDS)
def test_point_mass_is_integrated_exactly(sched_name, schedule):
    """For data δ_μ the PF-ODE solution is x̃ − μ ∝ σ̃ (a line): x̂_0 ≡ μ and ε̂ is constant along it,
    so every fixed-step sampler (Runge–Kutta in σ̃, exponential integrators in either form) is exact."""
    mu = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64)
    dirac = GaussianMixture.single(mu, torch.zeros(3, 3, dtype=torch.float64))
    x_T = _x_T(schedule)
    exact = dirac.single_gaussian_flow(x_T, schedule.t_max, schedule.t_min, schedule)
    for name in ODE_SAMPLERS:
        if name == "dopri5":
            continue  # adaptive: exact only to its tolerance
        out = _run(name, schedule, steps=4, mixture=dirac, x_T=x_T, denoise_last=False).x
        assert _rel(out, exact) < 1e-11, (name, _rel(out, exact))


def test_phi_functions_match_their_integral():
    """φ_k(z) = ∫_0^1 e^{(1−θ)z} θ^{k−1}/(k−1)! dθ, checked by 40-point Gauss–Legendre quadrature."""
    nodes, weights = np.polynomial.legendre.leggauss(40)
    theta, w = 0.5 * (nodes + 1.0), 0.5 * weights
    for k in range(1, 6):
        for z in (-8.0, -2.5, -1.0, -0.3, -1e-6, 0.0, 1e-7, 0.4, 1.0, 3.0):
            quad = float(np.sum(w * np.exp((1 - theta) * z) * theta ** (k - 1))) / math.factorial(k - 1)
            assert abs(phi(k, z) - quad) <= 1e-14 * max(1.0, abs(quad)), (k, z, phi(k, z), quad)
    assert phi(0, 0.7) == math.exp(0.7)


def _exact_linear_ode(schedule, t, s, x_t, q):
    """Exact x_s of dx̃/dλ = q(λ) − x̃ (x̂_0 prescribed as a function of λ, independent of x):
    x_s = (σ_s/σ_t) x_t + α_s ∫_0^h e^{−(h−u)} q(λ_t + u) du, the integral by Gauss–Legendre."""
    cur, nxt = node(schedule, t), node(schedule, s)
    h = nxt.lam - cur.lam
    nodes, weights = np.polynomial.legendre.leggauss(30)
    u, w = 0.5 * h * (nodes + 1.0), 0.5 * h * weights
    integral = sum(float(wi * math.exp(-(h - ui))) * q(cur.lam + ui) for ui, wi in zip(u, w))
    return (nxt.sigma / cur.sigma) * x_t + nxt.alpha * integral


def test_multistep_updates_are_exact_on_polynomials():
    """3M (derived) is exact when x̂_0(λ) is quadratic; the published 3M (D2 at half weight) is not.
    UniPC's corrector with three differences is exact on cubics."""
    sch = VPLinearSchedule()
    ts = [0.61, 0.43, 0.30, 0.22, 0.17]  # non-uniform steps in λ
    nodes_ = [node(sch, t) for t in ts]
    x_t = torch.tensor([0.4, -1.3], dtype=torch.float64)
    a = torch.tensor([0.5, -0.2], dtype=torch.float64)
    b = torch.tensor([0.3, 0.7], dtype=torch.float64)
    c = torch.tensor([-0.25, 0.15], dtype=torch.float64)
    d = torch.tensor([0.05, -0.08], dtype=torch.float64)
    quad = lambda lam: a + b * lam + c * lam**2  # noqa: E731
    cubic = lambda lam: quad(lam) + d * lam**3  # noqa: E731

    cur, nxt = nodes_[2], nodes_[3]
    history = [(nodes_[0], quad(nodes_[0].lam)), (nodes_[1], quad(nodes_[1].lam))]
    exact = _exact_linear_ode(sch, ts[2], ts[3], x_t, quad)
    for variant, should_be_exact in (("derived", True), ("published", False)):
        terms, coeffs = multistep_terms(quad(cur.lam), cur, nxt, history, 3, variant=variant)
        out = exp_step(x_t, cur, nxt, terms, data=True, coeffs=coeffs)
        err = float((out - exact).abs().max())
        assert (err < 1e-13) == should_be_exact, (variant, err)

    # UniPC corrector: two past points and the new one at r = 1 → exact for a cubic x̂_0(λ)
    exact = _exact_linear_ode(sch, ts[2], ts[3], x_t, cubic)
    h = nxt.lam - cur.lam
    points = [((nodes_[1].lam - cur.lam) / h, cubic(nodes_[1].lam)), ((nodes_[0].lam - cur.lam) / h, cubic(nodes_[0].lam)),
              (1.0, cubic(nxt.lam))]
    for variant in ("bh1", "bh2"):
        out = unipc_update(x_t, cubic(cur.lam), cur, nxt, points, variant)
        assert float((out - exact).abs().max()) < 1e-13


EXPECTED_NFE = {  # network calls for a grid of `steps` intervals ending with the step to σ̃ = 0
    "ddim": lambda n: n, "euler": lambda n: n, "heun": lambda n: 2 * n - 1, "rk4": lambda n: 4 * n - 3,
    "dpm_solver_1": lambda n: n, "dpm_solver_2": lambda n: 2 * n - 1, "dpm_solver_3": lambda n: 3 * n - 2,
    "dpm_solver_pp_1": lambda n: n, "dpm_solver_pp_2s": lambda n: 2 * n - 1, "dpm_solver_pp_2m": lambda n: n,
    "dpm_solver_pp_3m": lambda n: n, "unipc_2": lambda n: n, "unipc_3": lambda n: n, "lms": lambda n: n,
    "ipndm": lambda n: n, "deis": lambda n: n,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_NFE))
def test_nfe_counts(name):
    sch = VPLinearSchedule()
    for steps in (1, 2, 3, 9, 12):
        res = _run(name, sch, steps=steps)
        assert res.nfe == EXPECTED_NFE[name](steps), (name, steps, res.nfe)
        spec = SAMPLERS[name]
        assert res.nfe == spec.nfe_per_step * (steps - 1) + 1
        assert torch.isfinite(res.x).all()
    # without the terminal denoising step: exactly nfe_per_step calls per interval
    res = _run(name, sch, steps=8, denoise_last=False)
    assert res.nfe == SAMPLERS[name].nfe_per_step * 8


def test_dopri5_counts_nfe_and_tightens_with_rtol():
    """dopri5 reports the network calls the denoiser counted; tighter tolerances cost more calls and
    give smaller errors against the exact single-Gaussian flow map."""
    sch = VPLinearSchedule()
    gauss = GaussianMixture.random(4, 1, seed=5)
    x_T = _x_T(sch, n=16, dim=4)
    exact = gauss.single_gaussian_flow(x_T, sch.t_max, sch.t_min, sch)
    errs, nfes = [], []
    for tol in (1e-3, 1e-5, 1e-7):
        net = gauss.network(sch, Parameterization("eps"))
        calls = {"n": 0}

        def counted(*a, _net=net, **k):
            calls["n"] += 1
            return _net(*a, **k)

        den = Denoiser(counted, sch, "eps")
        res = Sampler("dopri5", steps=1, grid="lambda", denoise_last=False, rtol=tol, atol=tol)(den, x_T=x_T,
                                                                                                progress=False)
        assert res.nfe == calls["n"] == den.nfe > 0
        errs.append(float((res.x - exact).norm(dim=1).median()))
        nfes.append(res.nfe)
    assert errs[0] > errs[1] > errs[2], errs
    assert nfes[0] < nfes[1] < nfes[2], nfes
    assert errs[2] < 1e-5
    # with the terminal step: one more call, returns x̂_0
    den = Denoiser(gauss.network(sch, Parameterization("eps")), sch, "eps")
    res = Sampler("dopri5", steps=2, grid="lambda", rtol=1e-5, atol=1e-5)(den, x_T=x_T, progress=False)
    assert res.nfe == nfes[1] + 1


def test_progress_bar_and_float64():
    sch = VPLinearSchedule()
    for name in ODE_SAMPLERS:
        den = Denoiser(_mixture().network(sch, Parameterization("eps")), sch, "eps")
        res = Sampler(name, steps=3)(den, shape=(2, 3), generator=torch.Generator().manual_seed(0), progress=True)
        assert res.x.dtype == torch.float64 and res.x.shape == (2, 3)


def test_bad_options_fail_clearly():
    sch = VPLinearSchedule()
    with pytest.raises(ValueError, match="lms order"):
        _run("lms", sch, order=5)
    with pytest.raises(ValueError, match="deis order"):
        _run("deis", sch, order=4)
    with pytest.raises(ValueError, match="unknown grid spacing"):
        Sampler("unipc_2", grid="cosine")
    with pytest.raises(ValueError, match="variant"):
        _run("dpm_solver_pp_3m", sch, variant="nonsense")
    with pytest.raises(ValueError, match="UniPC variant"):
        _run("unipc_2", sch, variant="bh3")
    with pytest.raises(ValueError, match="integration variable"):
        _run("heun", sch, variable="lambda")
    with pytest.raises(ValueError, match="solver_type"):
        _run("dpm_solver_2", sch, solver_type="midpoint")


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_configs_build(name):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    sampler = instantiate(cfg)
    assert isinstance(sampler, Sampler) and sampler.name == name
    sch = VPLinearSchedule()
    den = Denoiser(_mixture().network(sch, Parameterization("eps")), sch, "eps")
    sampler.steps = min(sampler.steps, 4)
    res = sampler(den, shape=(2, 3), generator=torch.Generator().manual_seed(0), progress=False)
    assert torch.isfinite(res.x).all()


def _conf(name: str) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))


# configs that are presets of a registered sampler (its name with fixed options), not samplers of their own
PRESETS = {"rf_euler": "euler"}


def test_every_sampler_has_a_config_and_every_config_a_sampler():
    assert {p.stem for p in CONF.glob("*.yaml")} == set(SAMPLERS) | set(PRESETS)
    for preset, name in PRESETS.items():
        assert _conf(preset)["name"] == name


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_config_defers_to_the_registry(name):
    """One source of truth: each conf/sampler file leaves the grid to the registry (``auto``) and any option
    it lists has the value of the sampler function's default (so the README's defaults are what runs)."""
    cfg = _conf(name)
    assert cfg["name"] == name and cfg.get("grid") == "auto", (name, cfg.get("grid"))
    params = inspect.signature(SAMPLERS[name].fn).parameters
    skip = {"_target_", "name", "steps", "grid", "label", "rho", "denoise_last", "visit_t_min"}
    for key, value in cfg.items():
        if key in skip:
            continue
        assert key in params, f"{name}.yaml sets {key!r}, which {name} does not take"
        assert params[key].default == value, f"{name}.yaml sets {key}={value!r}; the sampler's default is {params[key].default!r}"
    if "rho" in cfg:
        assert cfg["rho"] == 7.0
    assert "visit_t_min" not in cfg or cfg["visit_t_min"] is None


def test_readme_sampler_table_is_the_registry():
    """README.md's sampler table is ``python -m diffusion_lab.samplers`` verbatim."""
    readme = (ROOT / "README.md").read_text()
    assert table() in readme
