"""SM vs DSM (Vincent 2011) and the W₂ ≤ score-matching bound (Kwon, Fan & Lee 2022) on exact oracles."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_lab.denoiser import Denoiser
from diffusion_lab.flows.diagnostics import sm_dsm, velocity_jacobian_norms, w2_actual, w2_bound
from diffusion_lab.oracles import GaussianMixture
from diffusion_lab.schedules import RectifiedFlowSchedule


def oracle_model(mixture: GaussianMixture, schedule=None) -> Denoiser:
    schedule = schedule or RectifiedFlowSchedule()
    from diffusion_lab.parameterization import Parameterization

    p = Parameterization("velocity")
    return Denoiser(mixture.network(schedule, p), schedule, p, net_dtype=torch.float64)


def test_sm_dsm_gap_is_the_theta_free_constant():
    data = GaussianMixture.random(2, 4, seed=0)
    exact = sm_dsm(oracle_model(data), data, n=4000)
    assert exact["sm"] == pytest.approx(0.0, abs=1e-12)  # the oracle's score is the true score
    assert exact["dsm"] == pytest.approx(exact["gap_constant"] + exact["cross"], abs=1e-9)
    assert abs(exact["cross"]) < 0.05 * exact["dsm"]  # Monte-Carlo noise of a zero-mean term
    # two wrong models: SM differs a lot, the gap does not (up to the zero-mean cross term)
    wrong = [oracle_model(GaussianMixture.random(2, 4, seed=s, spread=2.5)) for s in (1, 2)]
    res = [sm_dsm(m, data, n=4000) for m in wrong]
    for r in res:
        assert r["gap"] == pytest.approx(r["gap_constant"] + r["cross"], abs=1e-9)  # exact decomposition
        assert r["gap_constant"] == pytest.approx(exact["gap_constant"], abs=1e-12)  # fixed draws: same C
        assert abs(r["cross"]) < 0.05 * r["sm"], r  # zero-mean: small beside the losses themselves
    assert res[0]["sm"] > 0.5 and abs(res[0]["sm"] - res[1]["sm"]) > 0.1 * res[0]["sm"]


def gaussian(mu, s=1.0):
    return GaussianMixture.single(torch.tensor(mu, dtype=torch.float64), s * s * torch.eye(2, dtype=torch.float64))


def test_w2_bound_is_exact_for_a_mean_shift_and_above_the_true_w2_otherwise():
    # Data N(μ, I); model = the exact flow of N(μ', I): its samples are N(μ', I), so W₂ = |μ − μ'|. The field
    # error is the constant −(μ' − μ) t/C_t and the fields are linear with Jacobian a(t) I: the one-sided
    # Grönwall estimate is an equality along the (optimal, translating) synchronous coupling.
    data, shift = gaussian([0.5, -0.5]), torch.tensor([0.6, 0.8], dtype=torch.float64)
    model = oracle_model(gaussian((torch.tensor([0.5, -0.5]) + shift).tolist()))
    b = w2_bound(model, data, n=200, n_t=20, n_lipschitz=50)
    exact = float(shift.norm())  # 1.0
    # equal up to the prior and early-stop terms (≈ 1.5e-3 here) and the O(dt²) midpoint rule: never below
    assert exact <= b.bound_one_sided <= exact + 3e-3, b.bound_one_sided
    assert b.bound > 1.2 * exact  # the two-sided Lipschitz constant overestimates the growth
    # velocity error of the mean shift in closed form, and ½g²√J_SM equals it (t/(1−t) for rectified flow)
    t = b.t
    c_t = (1 - t) ** 2 + t**2
    torch.testing.assert_close(b.velocity_error, exact * t / c_t)
    torch.testing.assert_close(b.velocity_error, t / (1 - t) * b.j_sm.sqrt())
    torch.testing.assert_close(b.one_sided, (1 - 2 * t) / c_t)  # −a(t), a(t) = (2t − 1)/C_t
    # a covariance mismatch: the bound holds above the true W₂ = √2 |s − s'|
    wide = oracle_model(gaussian([0.5, -0.5], s=1.5))
    b2 = w2_bound(wide, data, n=2000, n_t=64, n_lipschitz=200)
    assert b2.bound_one_sided >= math.sqrt(2) * 0.5 and b2.bound >= b2.bound_one_sided


def test_jacobian_norms_of_a_linear_field():
    A = torch.tensor([[1.0, 2.0], [0.0, -3.0]], dtype=torch.float64)
    x = torch.randn(5, 2, dtype=torch.float64)
    spectral, one_sided = velocity_jacobian_norms(lambda x, t: x @ A.T, x, torch.zeros(5))
    torch.testing.assert_close(spectral, torch.full((5,), float(torch.linalg.matrix_norm(A, 2)), dtype=torch.float64))
    torch.testing.assert_close(one_sided, torch.full((5,), float(torch.linalg.eigvalsh(-(A + A.T) / 2)[-1]),
                                                     dtype=torch.float64))


def test_w2_actual_of_the_oracles_own_samples_is_at_the_floor():
    data = GaussianMixture.random(2, 4, seed=0)
    x = data.sample(1000, torch.Generator().manual_seed(3))
    w2, floor = w2_actual(x, data)
    # exact samples: only the finite-sample error (component proportions fluctuate by ~1.5% at n = 1000,
    # moving mass between modes ~3 apart: W₂ ~ 0.1-0.35); a unit shift moves W₂ to ≈ 1
    assert w2 < 0.4 and floor < 0.4
    shifted, _ = w2_actual(x + torch.tensor([1.0, 0.0], dtype=torch.float64), data)
    assert shifted == pytest.approx(1.0, abs=0.2)


def test_flow_theory_callback_logs_the_gap_and_the_bound_during_training(compose_cfg, tmp_path):
    import csv

    from conftest import FAST_TRAIN
    from diffusion_lab.errors import ConfigError
    from diffusion_lab.train import run

    small = [*FAST_TRAIN, "experiment=gmm_flow_theory", "model.hidden_dim=32", "model.num_layers=1",
             "trainer.limit_train_batches=6", "callbacks.flow_theory.every_n_steps=3", "callbacks.flow_theory.n=500",
             "callbacks.flow_theory.n_w2=300", "callbacks.flow_theory.n_t=8", "callbacks.flow_theory.n_lipschitz=50",
             "evaluation.at_end=false"]
    run(compose_cfg(small))
    rows = list(csv.DictReader(open(tmp_path / "theory" / "diagnostics.csv")))
    assert [int(r["step"]) for r in rows] == [0, 3, 6]
    consts = {r["gap_constant"] for r in rows}
    assert len(consts) == 1  # fixed draws: C does not depend on θ
    for r in rows:
        assert float(r["gap"]) == pytest.approx(float(r["gap_constant"]) + float(r["cross"]), abs=1e-9)
        assert float(r["w2_bound"]) >= float(r["w2_bound_one_sided"]) - 1e-12
    assert float(rows[0]["sm"]) != float(rows[-1]["sm"])  # the weights moved, the gap's constant did not
    with pytest.raises(ConfigError, match="dataset=gmm"):
        run(compose_cfg([*small, "dataset=two_moons"]))
