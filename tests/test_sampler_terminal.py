"""The last step to σ̃ = 0 (``samplers.adams``): exact weights, its local order in σ̃_min, and the order of
the whole path from t_max to σ̃ = 0, all against the exact flow map of one Gaussian (reference-free).

For one Gaussian N(μ, Σ) the PF-ODE solution in x̃ = x/α is x̃(σ̃) − μ = U √(e + σ̃²) Uᵀ z, so ε̂ = dx̃/dσ̃
is odd in σ̃ and the m-point Adams step to 0 from nodes σ̃_m q^j (j < m) has local error
O(σ̃_m^{m+1}) at least (one order more for m = 2 and 4, where the missing term of the odd expansion
is of higher degree); the jump x̂_0 (m = 1) has local error σ̃_m²/(2√e) per unit of z.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

from diffusion_lab.oracles import GaussianMixture
from diffusion_lab.parameterization import Parameterization
from diffusion_lab.samplers import Denoiser, Sampler
from diffusion_lab.samplers.adams import Tail, adams_weights
from diffusion_lab.samplers.exponential import node
from diffusion_lab.schedules import EDMSchedule, RectifiedFlowSchedule, VPLinearSchedule

F64 = torch.float64


def _slope(xs, errs) -> float:
    return float(np.polyfit(np.log(xs), np.log(errs), 1)[0])


def test_adams_weights_integrate_polynomials_exactly():
    """Σ_j w_j q(σ̃_j) = ∫_a^b q for every polynomial q of degree < m (closed-form integrals)."""
    rng = np.random.default_rng(0)
    for m in range(1, 6):
        nodes = sorted(rng.uniform(0.01, 2.0, m).tolist(), reverse=True)
        a, b = nodes[0], float(rng.uniform(0.0, 0.5) * nodes[0])
        w = adams_weights(nodes, a, b)
        for k in range(m):
            exact = (b ** (k + 1) - a ** (k + 1)) / (k + 1)
            assert abs(sum(wj * s**k for wj, s in zip(w, nodes)) - exact) < 1e-12 * max(1.0, abs(exact)), (m, k)
        # one degree more is not integrated exactly (the weights are those of degree m − 1)
        exact = (b ** (m + 1) - a ** (m + 1)) / (m + 1)
        assert abs(sum(wj * s**m for wj, s in zip(w, nodes)) - exact) > 1e-8
    with pytest.raises(ValueError, match="distinct"):
        adams_weights([0.5, 0.5], 0.5, 0.0)


def _gauss(dim: int = 4) -> GaussianMixture:
    return GaussianMixture.random(dim, 1, seed=3)


def _edm_problem(sigma_min: float = 1e-6):
    """α = 1 (x = x̃, t = t(σ̃)) with a range reaching far below the nodes used."""
    sch = EDMSchedule(sigma_min=sigma_min, sigma_max=80.0)
    gm = _gauss()
    den = Denoiser(gm.network(sch, Parameterization("eps")), sch, "eps")
    x_T = sch.prior_sample((64, gm.dim), generator=torch.Generator().manual_seed(0), dtype=F64)
    return sch, gm, den, x_T


@pytest.mark.parametrize("m,nominal", [(1, 2.0), (2, 3.0), (3, 4.0), (4, 5.0)])
def test_last_step_local_order_in_sigma_min(m, nominal):
    """Exact states and predictions at the nodes σ̃_m q^j, one last step to 0: error ∝ σ̃_m^{≥ m+1}."""
    sch, gm, den, x_T = _edm_problem()
    exact0 = gm.single_gaussian_flow(x_T, 1.0, 0.0, sch)
    sig = [0.01, 0.005, 0.0025, 0.00125]
    errs = []
    for s_m in sig:
        tail = Tail(m)
        nodes = [node(sch, sch.t_from_sigma_tilde(torch.tensor(s_m * 1.5**j, dtype=F64))) for j in reversed(range(m))]
        for nd in nodes:
            x = gm.single_gaussian_flow(x_T, 1.0, nd.t, sch)
            tail.add(nd, den(x, nd.t))
        errs.append(float((tail.finish(x, nodes[-1], "multistep", m) - exact0).norm(dim=1).median()))
    slope = _slope(sig, errs)
    assert slope >= nominal - 0.2, (m, slope, errs)
    if m == 1:  # the jump: exactly second order, error σ̃²/(2√e)-like
        assert slope < 2.2, slope


def test_terminal_order_one_and_denoise_are_the_jump():
    sch = VPLinearSchedule()
    gm = GaussianMixture.random(3, 3, seed=11)
    den = Denoiser(gm.network(sch, Parameterization("eps")), sch, "eps")
    x_T = sch.prior_sample((16, 3), generator=torch.Generator().manual_seed(1), dtype=F64)
    jump = Sampler("dpm_solver_pp_2m", steps=12, grid="lambda", terminal="denoise")(den, x_T=x_T, progress=False).x
    one = Sampler("dpm_solver_pp_2m", steps=12, grid="lambda", terminal_order=1)(den, x_T=x_T, progress=False).x
    multi = Sampler("dpm_solver_pp_2m", steps=12, grid="lambda", terminal_order=2, terminal_reach=None,
                    lower_order_final=False)(den, x_T=x_T, progress=False).x
    # with the default reach 2 the λ-steps of 12 steps (ratio e^h ≈ 2.2 in σ̃) leave only the last node: the jump
    reach = Sampler("dpm_solver_pp_2m", steps=12, grid="lambda", terminal_order=2)(den, x_T=x_T, progress=False).x
    torch.testing.assert_close(reach, jump, rtol=0, atol=1e-14)
    torch.testing.assert_close(one, jump, rtol=0, atol=1e-14)
    assert float((multi - jump).abs().max()) > 1e-6
    with pytest.raises(ValueError, match="terminal rule"):
        Sampler("unipc_2", steps=5, terminal="jump")(den, x_T=x_T, progress=False)
    with pytest.raises(ValueError, match="terminal_reach"):
        Sampler("unipc_2", steps=5, terminal_reach=0.5)(den, x_T=x_T, progress=False)


# ------------------------------------------------------------------------------- the whole path to σ̃ = 0
#: sampler → (options, grid, lower bound of the measured global order to σ̃ = 0)
PATH_CASES = {
    "dpm_solver_pp_2m": ({}, "lambda", 1.75),
    "dpm_solver_pp_3m": ({"variant": "derived"}, "lambda", 2.75),
    "unipc_2": ({}, "lambda", 2.75),
    "deis": ({}, "lambda", 2.75),
    "lms": ({}, "lambda", 3.4),
    "heun": ({}, "karras", 1.75),
}


def _path_errors(name: str, sch, ns, **extra):
    gm = _gauss()
    den = Denoiser(gm.network(sch, Parameterization("eps")), sch, "eps")
    x_T = sch.prior_sample((32, gm.dim), generator=torch.Generator().manual_seed(1), dtype=F64)
    exact0 = gm.single_gaussian_flow(x_T, sch.t_max, 0.0, sch)
    opts, grid, _ = PATH_CASES[name]
    errs = []
    for n in ns:
        s = Sampler(name, steps=n, grid=grid, visit_t_min=True, **{**opts, **extra})
        errs.append(float((s(den, x_T=x_T, progress=False).x - exact0).norm(dim=1).median()))
    return errs


@pytest.mark.parametrize("sched", ["vp", "rf"])
@pytest.mark.parametrize("name", sorted(PATH_CASES))
def test_whole_path_to_sigma_zero_converges_at_the_solver_order(name, sched):
    """t_min small enough (σ̃_min ≈ 1e-3) that the fixed last interval's floor lies below the errors: the
    error against the exact endpoint at σ̃ = 0 falls at the solver's order (NFE ∝ steps). The slopes
    approach the nominal order from below (LMS-4: 3.41, 3.70, 3.85 for N = 40→80→160→320 on VP)."""
    sch = VPLinearSchedule(t_min=1e-5) if sched == "vp" else RectifiedFlowSchedule(t_min=1e-3)
    ns = (40, 80, 160)
    errs = _path_errors(name, sch, ns)
    order = -_slope(ns, errs)
    assert order >= PATH_CASES[name][2], (name, sched, order, errs)


def test_multistep_last_step_removes_the_floor_of_the_jump():
    """At the default t_min the jump's error stops falling (its floor); the Adams last step keeps falling."""
    sch = VPLinearSchedule()
    ns = (80, 160)  # measured: jump 4.0e-4, 4.6e-4; Adams 6.9e-5, 8.8e-6 (1.5e-6 at 320)
    jump = _path_errors("unipc_2", sch, ns, terminal="denoise")
    multi = _path_errors("unipc_2", sch, ns)
    assert jump[1] > 0.7 * jump[0], jump  # floor: halving the step gains nothing
    assert multi[0] > 4 * multi[1] and multi[1] < jump[1] / 20, (multi, jump)
