"""Measured orders of convergence of the PF-ODE samplers on the exact oracle.

Order = slope of log(median over samples of ‖x_N − x_ref‖) against log(N), N = number of grid
intervals (all of them ODE steps: the grid ends at t_min, ``denoise_last=False``); with a fixed NFE
per step this is the slope against log(NFE). Cases:

* ``gauss``  — one Gaussian in R^4; the reference is the exact PF-ODE flow map
  (``GaussianMixture.single_gaussian_flow``), so the test is reference-free;
* ``mix2d``, ``mix16d`` — Gaussian mixtures (4 components in R^2, 8 in R^16); the reference is
  dopri5 in λ at rtol = atol = 1e-11 (accurate to ~1e-11, far below the errors measured).

Schedules: VP (linear β), rectified flow, VE. Grid: uniform in λ (the exponential integrators'
default). N = 20, 40, 80 on the single Gaussian and 40, 80, 160 on the mixtures (the asymptotic
regime; at N = 10–20 the multistep solvers on the mixtures are not yet there); DPM-Solver-3 on the
Gaussian at N = 40, 80, 160 (its slope approaches 3 from above: 3.35 → 3.09 between N = 20 and 160
on rectified flow); UniPC-3 at N = 80, 160, 320 (Gaussian) and 160, 320, 640 (mixtures).

Documented deviations from "nominal ± 0.25" (see the sampler modules):
* LMS-3/4 and DEIS-3 (polynomials in σ̃ or t on a λ-uniform grid) reach their slope late: they are measured
  at N = 80, 160, 320 and LMS-4 still approaches 4 from below (3.6–3.8); DEIS-3 measures 3.7 on VE's
  single Gaussian;
* iPNDM-3/4 apply equal-step coefficients to the unequal σ̃-steps of a λ grid: order 2 there (on equal
  steps it is LMS, an identity tested in test_sampler_identities.py);
* DPM-Solver++(3M) on a single Gaussian super-converges (measured ≈ 3.9 on a λ-uniform grid): its
  leading local error is (3/8) h⁴ x̂_0''' and for one Gaussian the error propagator times x̂_0'''
  integrates over λ to boundary terms that vanish at both ends, so the h³ term of the global error
  nearly cancels. On the mixtures it measures ≈ 3.1–3.4; here only "≥ 2.75" is asserted for gauss.
* UniPC-3 (order 4 with the corrector) approaches 4 slowly (pre-asymptotic cancellations below
  N ≈ 80 on the Gaussian, ≈ 160 on the 16-D mixture); asserted: ≥ 3.4.
* DPM-Solver-3 and DPM-Solver++(3M) on the mixtures approach 3 from above (measured 3.1–3.45 at
  N = 40–160: the part of the error that behaves as for one Gaussian is of higher order there);
  asserted: between 2.75 and 3.5.

``python tests/test_sampler_orders.py`` prints the full table (all samplers × schedules × cases).
"""

from __future__ import annotations

import sys

import pytest
import torch

from diffusion_lab.oracles import GaussianMixture
from diffusion_lab.parameterization import Parameterization
from diffusion_lab.samplers import SAMPLERS, Denoiser, time_grid
from diffusion_lab.schedules import RectifiedFlowSchedule, VESchedule, VPLinearSchedule

#: step counts per case; samplers that reach their asymptotic slope later get their own
NS = {"gauss": (20, 40, 80), "mix2d": (40, 80, 160), "mix16d": (40, 80, 160)}
NS_FOR = {("dpm_solver_3", "gauss"): (40, 80, 160), ("unipc_3", "gauss"): (80, 160, 320),
          ("unipc_3", "mix2d"): (160, 320, 640), ("unipc_3", "mix16d"): (160, 320, 640)}
# the σ̃-polynomial samplers reach their slope later on a λ-uniform grid (geometric nodes in σ̃)
NS_FOR.update({(k, c): (80, 160, 320) for k in ("lms_3", "lms_4", "deis_3") for c in ("gauss", "mix2d", "mix16d")})
NS_FOR.update({(k, "gauss"): (40, 80, 160) for k in ("lms_2", "deis_2", "ipndm_3", "ipndm_4")})

#: key → (sampler, nominal order, options)
NOMINAL: dict[str, tuple[str, float, dict]] = {
    "ddim": ("ddim", 1, {}),
    "euler": ("euler", 1, {}),
    "heun": ("heun", 2, {}),
    "rk4": ("rk4", 4, {}),
    "dpm_solver_2": ("dpm_solver_2", 2, {}),
    "dpm_solver_3": ("dpm_solver_3", 3, {}),
    "dpm_solver_pp_2s": ("dpm_solver_pp_2s", 2, {}),
    "dpm_solver_pp_2m": ("dpm_solver_pp_2m", 2, {}),
    "dpm_solver_pp_3m": ("dpm_solver_pp_3m", 3, {"variant": "derived"}),
    "unipc_2": ("unipc_2", 3, {"variant": "bh2"}),
    "unipc_2_bh1": ("unipc_2", 3, {"variant": "bh1"}),
    "unipc_3": ("unipc_3", 4, {"variant": "bh2"}),
    **{f"lms_{k}": ("lms", k, {"order": k}) for k in (1, 2, 3, 4)},
    **{f"deis_{k}": ("deis", k, {"order": k}) for k in (1, 2, 3)},
    **{f"ipndm_{k}": ("ipndm", k, {"order": k}) for k in (1, 2, 3, 4)},
}

#: (sampler, case) → (lower, upper) bounds replacing nominal ± 0.25 (documented in the docstring)
DEVIATIONS: dict[tuple[str, str], tuple[float, float]] = {
    ("dpm_solver_pp_3m", "gauss"): (2.75, 4.25),
}
DEVIATIONS.update({("unipc_3", c): (3.4, 4.25) for c in ("gauss", "mix2d", "mix16d")})
# third-order solvers approach 3 from above on the mixtures (the Gaussian-like part of their error is
# of higher order at these N): at least third order, at most half an order above
DEVIATIONS.update({(k, c): (2.75, 3.5) for k in ("dpm_solver_3", "dpm_solver_pp_3m") for c in ("mix2d", "mix16d")})
# the σ̃-polynomial samplers approach their order from below on a λ-uniform grid (LMS-4: 3.6–3.8 at N = 80–320);
# DEIS-3 super-converges on VE's single Gaussian (3.7: VE's t is linear in λ there)
DEVIATIONS.update({("lms_4", c): (3.5, 4.25) for c in ("gauss", "mix2d", "mix16d")})
DEVIATIONS.update({("deis_3", "gauss"): (2.75, 3.9)})
DEVIATIONS.update({("deis_3", c): (2.5, 3.25) for c in ("mix2d", "mix16d")})
# iPNDM's equal-step coefficients on the unequal σ̃-steps of a λ-uniform grid: second order whatever its order
# (the equal-step case is the identity iPNDM = LMS of test_sampler_identities)
DEVIATIONS.update({(k, c): (1.75, 2.25) for k in ("ipndm_3", "ipndm_4") for c in ("gauss", "mix2d", "mix16d")})


SCHEDULES = {"vp": VPLinearSchedule(), "rf": RectifiedFlowSchedule(), "ve": VESchedule()}


def _case(case: str) -> GaussianMixture:
    if case == "gauss":
        return GaussianMixture.random(4, 1, seed=3)
    if case == "mix2d":
        return GaussianMixture.random(2, 4, seed=3)
    if case == "mix16d":
        return GaussianMixture.random(16, 8, seed=3)
    raise ValueError(case)


_REF_CACHE: dict[tuple[str, str], tuple[Denoiser, torch.Tensor, torch.Tensor]] = {}


def _setup(case: str, sched: str, batch: int = 32):
    """(denoiser, x_T, reference x at t_min) for a case, cached."""
    key = (case, sched)
    if key not in _REF_CACHE:
        schedule = SCHEDULES[sched]
        mix = _case(case)
        den = Denoiser(mix.network(schedule, Parameterization("eps")), schedule, "eps")
        x_T = schedule.prior_sample((batch, mix.dim), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        if case == "gauss":
            ref = mix.single_gaussian_flow(x_T, schedule.t_max, schedule.t_min, schedule)
        else:
            grid = time_grid(schedule, 1, "lambda", denoise_last=False)
            ref = SAMPLERS["dopri5"].fn(den, x_T.clone(), grid, rtol=1e-11, atol=1e-11)
        _REF_CACHE[key] = (den, x_T, ref)
    return _REF_CACHE[key]


def slope(ns, errs) -> float:
    """Least-squares slope of −log(err) against log(N)."""
    x = torch.log(torch.tensor(ns, dtype=torch.float64))
    y = torch.log(torch.tensor(errs, dtype=torch.float64))
    x = x - x.mean()
    return -float((x * (y - y.mean())).sum() / (x * x).sum())


def measure(key: str, case: str, sched: str, ns=None, **extra) -> tuple[float, list[float]]:
    """Measured order of sampler ``key`` (a NOMINAL key) on a case and schedule."""
    den, x_T, ref = _setup(case, sched)
    name = NOMINAL[key][0]
    opts = {**NOMINAL[key][2], **extra}
    ns = ns or NS_FOR.get((key, case), NS[case])
    errs = []
    for n in ns:
        grid = time_grid(den.schedule, n, "lambda", denoise_last=False)
        x = SAMPLERS[name].fn(den, x_T.clone(), grid, **opts)
        errs.append(float((x - ref).norm(dim=1).median()))
    return slope(ns, errs), errs


def bounds(key: str, case: str) -> tuple[float, float]:
    nominal = NOMINAL[key][1]
    return DEVIATIONS.get((key, case), (nominal - 0.25, nominal + 0.25))


def _check(key: str, case: str, sched: str) -> None:
    s, errs = measure(key, case, sched)
    lo, hi = bounds(key, case)
    assert lo <= s <= hi, f"{key} on {case}/{sched}: measured order {s:.2f} not in [{lo}, {hi}]; errors {errs}"


# ------------------------------------------------------------------------------------------ fast
FAST = ["ddim", "euler", "heun", "rk4", "dpm_solver_2", "dpm_solver_3", "dpm_solver_pp_2m", "dpm_solver_pp_3m", "unipc_2",
        "lms_2", "deis_2", "ipndm_2"]


@pytest.mark.parametrize("sched", list(SCHEDULES))
@pytest.mark.parametrize("key", FAST)
def test_order_single_gaussian(key, sched):
    """Reference-free: against the exact flow map of one Gaussian."""
    _check(key, "gauss", sched)


@pytest.mark.parametrize("sched", ["vp", "rf"])
def test_published_3m_is_second_order_and_derived_is_third(sched):
    """The fix: the published 3M (D2 at half weight) measures ≈ 2; the derived update ≥ 3 (on a
    single Gaussian it super-converges, see the module docstring; on mixtures see the slow tests)."""
    ns = (40, 80, 160)
    pub, _ = measure("dpm_solver_pp_3m", "gauss", sched, ns=ns, variant="published")
    der, _ = measure("dpm_solver_pp_3m", "gauss", sched, ns=ns)
    assert abs(pub - 2.0) <= 0.25, pub
    assert der >= 2.75 and der - pub >= 0.75, (der, pub)


def test_heun_in_t_is_second_order():
    """variable='t' (dx/dt = û) is a genuine second-order Heun too (rectified flow, uniform-t grid)."""
    den, x_T, ref = _setup("gauss", "rf")
    errs = []
    ns = NS["gauss"]
    for n in ns:
        grid = time_grid(den.schedule, n, "uniform", denoise_last=False)
        errs.append(float((SAMPLERS["heun"].fn(den, x_T.clone(), grid, variable="t") - ref).norm(dim=1).median()))
    assert abs(slope(ns, errs) - 2.0) <= 0.25, errs


# ------------------------------------------------------------------------------------------ slow
ALL = list(NOMINAL)


@pytest.mark.slow
@pytest.mark.parametrize("sched", list(SCHEDULES))
@pytest.mark.parametrize("case", ["mix2d", "mix16d"])
@pytest.mark.parametrize("key", ALL)
def test_order_mixture(key, case, sched):
    _check(key, case, sched)


@pytest.mark.slow
@pytest.mark.parametrize("sched", list(SCHEDULES))
@pytest.mark.parametrize("key", ["dpm_solver_pp_2s", "unipc_2_bh1", "unipc_3", "lms_1", "lms_3", "lms_4", "deis_1", "deis_3",
                                 "ipndm_1", "ipndm_3", "ipndm_4"])
def test_order_single_gaussian_more(key, sched):
    _check(key, "gauss", sched)


def main() -> None:
    """Print the measured-order table (all samplers × cases × schedules)."""
    torch.set_num_threads(1)
    cases = sys.argv[1].split(",") if len(sys.argv) > 1 else ["gauss", "mix2d", "mix16d"]
    keys = sys.argv[2].split(",") if len(sys.argv) > 2 else ALL + ["dpm_solver_pp_3m_published"]
    cols = [(c, s) for c in cases for s in SCHEDULES]
    print("| sampler | nominal | " + " | ".join(f"{c}/{s}" for c, s in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for key in keys:
        published = key.endswith("_published")
        k = key.replace("_published", "")
        row = []
        for c, s in cols:
            extra = {"variant": "published", "ns": (40, 80, 160)} if published else {}
            val, _ = measure(k, c, s, **extra)
            lo, hi = bounds(k, c)
            mark = "" if published or lo <= val <= hi else " ✗"
            row.append(f"{val:.2f}{mark}")
        nominal = "~2 (published)" if published else f"{NOMINAL[k][1]}"
        print(f"| {key} | {nominal} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
