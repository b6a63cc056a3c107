"""Minibatch couplings for flow matching (diffusion_lab.flows.couplings) and the straightness they buy."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_lab.errors import ConfigError
from diffusion_lab.flows import couplings
from diffusion_lab.flows.straightness import model_straightness


def two_gaussians(B: int, seed: int):
    """Data N(μ, Σ) and noise N(0, I) in 2-D, and the Monge map T(ε) = μ + Σ^{1/2} ε between them
    (for a standard normal source the Brenier map is the symmetric square root; Dowson & Landau 1982)."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.tensor([2.0, -1.0], dtype=torch.float64)
    L = torch.tensor([[1.0, 0.0], [0.6, 0.5]], dtype=torch.float64)
    evals, evecs = torch.linalg.eigh(L @ L.T)
    root = evecs @ torch.diag(evals.sqrt()) @ evecs.T
    x0 = mu + torch.randn(B, 2, generator=g, dtype=torch.float64) @ L.T
    eps = torch.randn(B, 2, generator=g, dtype=torch.float64)
    return x0, eps, lambda e: mu + e @ root.T


def velocity_error(B: int, seed: int = 0, coupling: str = "exact_ot", reg=None) -> float:
    """E‖(ε_π − x_0) − (ε_π − T(ε_π))‖² = E‖x_0 − T(ε_π)‖²: the coupled target velocity against the
    velocity of the straight OT path from ε_π to T(ε_π)."""
    x0, eps, T = two_gaussians(B, seed)
    e = couplings.couple(x0, eps, coupling, reg, torch.Generator().manual_seed(1))
    target, monge = e - x0, e - T(e)
    return float(((target - monge) ** 2).sum(1).mean())


def test_exact_ot_target_velocity_matches_the_monge_map_velocity():
    # The empirical OT plan between B samples converges to the Monge map; in 2-D the mean squared
    # error of the paired map decays like 1/B (n^{-2/d}, measured 0.099, 0.026, 0.014 at B = 250, 1000,
    # 2000). At B = 1000 the error must be < 0.05 — sixty times below the independent pairing's
    # E‖x_0 − T(ε)‖² = 2 tr(Σ) − 2 tr(Σ^{1/2}) ... ≈ 3.0 — and shrink at least 2.5x from B = 250 (rate 4x).
    err_250, err_1000 = velocity_error(250), velocity_error(1000)
    independent = velocity_error(1000, coupling="independent")
    assert err_1000 < 0.05, err_1000
    assert independent > 2.5, independent
    assert err_1000 < err_250 / 2.5, (err_250, err_1000)


def test_exact_ot_pairs_a_permutation_and_minimises_the_cost():
    x0, eps, _ = two_gaussians(64, 3)
    j = couplings.pair_indices(x0, eps, "exact_ot")
    assert sorted(j.tolist()) == list(range(64))  # a permutation: the noise batch is kept, re-ordered
    cost = lambda perm: float(((x0 - eps[perm]) ** 2).sum())  # noqa: E731
    best = cost(j)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):  # no random permutation nor any single swap does better
        assert cost(torch.randperm(64, generator=g)) >= best
    for a, b in [(0, 1), (5, 40), (10, 63)]:
        k = j.clone()
        k[a], k[b] = j[b], j[a]
        assert cost(k) >= best - 1e-9


def test_sinkhorn_interpolates_between_exact_ot_and_independent():
    small = velocity_error(200, coupling="sinkhorn", reg=0.05)
    large = velocity_error(200, coupling="sinkhorn", reg=1e3)
    exact = velocity_error(200, coupling="exact_ot")
    independent = velocity_error(200, coupling="independent")
    assert small < 3 * exact + 0.05, (small, exact)  # near-exact with a small regularisation
    assert abs(large - independent) < 0.5 * independent, (large, independent)  # ≈ product coupling
    assert small < 0.2 * large


def test_bridge_velocity_is_the_derivative_of_the_bridge_std():
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    fd = (couplings.bridge_std(t + h, 0.7) - couplings.bridge_std(t - h, 0.7)) / (2 * h)
    torch.testing.assert_close(couplings.bridge_velocity_noise(t, 0.7), fd, rtol=1e-6, atol=1e-8)
    assert couplings.bridge_reg(0.5) == pytest.approx(0.5)


def test_coupling_config_reaches_the_loss_and_bad_values_are_refused(build_run):
    base = ["dataset=eight_gaussians", "schedule=rectified_flow", "parameterization=velocity", "loss=rectified_flow",
            "model=mlp", "model.hidden_dim=32", "model.num_layers=1", "sampler=euler", "~evaluation"]
    values = {}
    for c in ("independent", "exact_ot"):
        _, parts, module = build_run([*base, f"loss.coupling={c}"])
        assert parts.loss.coupling == c
        x0 = parts.datamodule._samples(512)
        with torch.no_grad():
            out = parts.loss(module.train_model, x0, generator=torch.Generator().manual_seed(0))
        values[c] = float(out.loss)
    # an untrained net outputs ≈ 0, so the loss is ≈ E‖ε − x_0‖²/2, which OT pairing shrinks (≈ 10 → ≈ 2)
    assert values["exact_ot"] < 0.5 * values["independent"], values
    with pytest.raises(ConfigError, match="loss.coupling"):
        build_run([*base, "loss.coupling=optimal"])
    with pytest.raises(ConfigError, match="coupling_reg"):
        build_run([*base, "loss.coupling=sinkhorn"])
    with pytest.raises(ConfigError, match="loss.sigma"):
        build_run([*base, "loss.coupling=schrodinger_bridge"])
    with pytest.raises(ConfigError, match="parameterization=velocity"):
        _, parts, module = build_run([*base, "parameterization=eps", "loss.coupling=schrodinger_bridge", "loss.sigma=0.3"])
        parts.loss(module.train_model, torch.randn(8, 2))


def train_flow(coupling: str, steps: int = 300, seed: int = 0, reg=None, sigma: float = 0.0):
    """A small velocity MLP trained with the rectified-flow loss and the given coupling on eight Gaussians."""
    from diffusion_lab.data.toy import make_toy
    from diffusion_lab.denoiser import Denoiser
    from diffusion_lab.losses import RectifiedFlowLoss
    from diffusion_lab.nets import MLP
    from diffusion_lab.schedules import RectifiedFlowSchedule

    torch.manual_seed(seed)
    data = make_toy("eight_gaussians", 20_000, seed=0)
    net = MLP(in_dim=2, out_dim=2, hidden_dim=64, num_layers=2, emb_dim=32)
    model = Denoiser(net, RectifiedFlowSchedule(), "velocity")
    loss = RectifiedFlowLoss(coupling=coupling, coupling_reg=reg, sigma=sigma)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x0 = data[torch.randint(0, len(data), (256,), generator=g)]
        opt.zero_grad()
        loss(model, x0, generator=g).loss.backward()
        opt.step()
    net.eval()
    return model


def test_minibatch_ot_gives_straighter_flows_than_independent_coupling():
    # eight Gaussians of radius 2: independent pairs cross, so the marginal field bends; OT pairs do not.
    # Measured (300 steps): S ≈ 1.30 independent vs ≈ 0.023 exact OT.
    s = {c: model_straightness(train_flow(c), n=1000, steps=32, data_shape=(2,)).straightness
         for c in ("independent", "exact_ot")}
    assert s["exact_ot"] < 0.5 * s["independent"], s


def test_schrodinger_bridge_loss_uses_the_bridge_path_and_its_velocity():
    # one pair (the plan is trivially [[1]]): replay the loss's draws and compute its value by hand
    from diffusion_lab.denoiser import Denoiser
    from diffusion_lab.losses import FixedTime, RectifiedFlowLoss
    from diffusion_lab.nets import MLP
    from diffusion_lab.schedules import RectifiedFlowSchedule

    torch.manual_seed(0)
    model = Denoiser(MLP(in_dim=2, out_dim=2, hidden_dim=16, num_layers=1, emb_dim=8), RectifiedFlowSchedule(), "velocity")
    x0, t, sigma = torch.tensor([[0.5, -1.0]]), 0.3, 0.4
    loss = RectifiedFlowLoss(time_sampler=FixedTime(t), coupling="schrodinger_bridge", sigma=sigma)
    got = loss(model, x0, generator=torch.Generator().manual_seed(7)).per_sample
    g = torch.Generator().manual_seed(7)
    eps = torch.randn(x0.shape, generator=g)
    torch.randint(0, 2**62, (1,), generator=g)  # the coupling's draw
    xi = torch.randn(x0.shape, generator=g)
    x_t = (1 - t) * x0 + t * eps + sigma * math.sqrt(t * (1 - t)) * xi
    target = eps - x0 + sigma * (1 - 2 * t) / (2 * math.sqrt(t * (1 - t))) * xi
    with torch.no_grad():
        pred = model.output(x_t, torch.full((1,), t)).prediction
    torch.testing.assert_close(got.detach(), ((pred - target) ** 2).mean(1))
