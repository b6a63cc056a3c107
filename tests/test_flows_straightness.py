"""Straightness S(v) and the Euler steps a flow needs (diffusion_lab.flows.straightness), on closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_lab.flows.straightness import endpoint_rms, euler_endpoint, euler_steps_needed, straightness

J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)  # rotation generator


def z(n: int = 4000, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def point_mass_field(m: torch.Tensor):
    """The rectified flow of a point mass at m: x_t = (1 − t) m + t z, so v(x, t) = (x − m)/t — straight."""
    return lambda x, t: (x - m) / t[:, None]


def rotation_field(omega: float):
    """v(x, t) = ω J x: from t = 1 to 0 each x turns by −ω on a circle of radius |z| at constant speed ω|z|."""
    return lambda x, t: omega * x @ J.T


def test_a_straight_field_has_zero_straightness_and_one_euler_step_is_exact():
    m = torch.tensor([1.5, -0.5], dtype=torch.float64)
    zz = z()
    res = straightness(point_mass_field(m), zz, steps=16, t_lo=0.05)  # v blows up at t = 0: stop short
    assert res.straightness == pytest.approx(0.0, abs=1e-10)
    torch.testing.assert_close(euler_endpoint(point_mass_field(m), zz, 1, t_lo=0.05), res.x0)
    assert res.nfe == 16 * 4 + 1


@pytest.mark.parametrize("omega", [0.5, 1.0, 2.0])
def test_a_circular_arc_has_its_analytic_straightness(omega):
    # chord d = x(1) − x(0) with |d| = 2|z| sin(ω/2); ∫ v dt = d, so S = E[ω²|z|² − |d|²] = E|z|² (ω² − 4 sin²(ω/2))
    zz = z(20_000)
    exact = float((zz**2).sum(1).mean()) * (omega**2 - 4 * math.sin(omega / 2) ** 2)
    res = straightness(rotation_field(omega), zz, steps=64)
    assert res.straightness == pytest.approx(exact, rel=1e-3)
    rot = torch.tensor([[math.cos(omega), math.sin(omega)], [-math.sin(omega), math.cos(omega)]], dtype=torch.float64)
    torch.testing.assert_close(res.x0, zz @ rot.T, rtol=1e-7, atol=1e-7)  # R(−ω) z


def test_clipped_range_uses_the_average_velocity():
    # on [t_lo, t_hi] the straight field of a point mass still has S = 0 (chord divided by the length)
    m = torch.tensor([0.3, 0.2], dtype=torch.float64)
    assert straightness(point_mass_field(m), z(), steps=8, t_hi=0.9, t_lo=0.2).straightness == pytest.approx(0, abs=1e-10)
    # and a constant speed rotation over half the range: E|z|²(θ² − 4 sin²(θ/2)) / L with θ = ωL
    omega, L = 2.0, 0.5
    zz = z(20_000)
    theta = omega * L
    exact = float((zz**2).sum(1).mean()) * (theta**2 - 4 * math.sin(theta / 2) ** 2) / L
    assert straightness(rotation_field(omega), zz, steps=64, t_hi=0.75, t_lo=0.25).straightness == pytest.approx(exact, rel=1e-3)


def test_euler_steps_needed_matches_the_closed_form_euler_error_on_a_rotation():
    # n Euler steps of h = 1/n multiply z by (I − hωJ)^n = r^n R(−n·atan(hω)), r = √(1 + h²ω²); the exact
    # map is R(−ω): the endpoint error is |z|·|r^n e^{−i n atan(hω)} − e^{−iω}|.
    omega = 1.5
    zz = z(2000)
    ref = straightness(rotation_field(omega), zz, steps=64).x0
    quality = endpoint_rms(rotation_field(omega), zz, ref)
    rms_z = float((zz**2).sum(1).mean().sqrt())

    def closed(n: int) -> float:
        h = 1.0 / n
        r, phi = math.sqrt(1 + (h * omega) ** 2), n * math.atan(h * omega)
        return rms_z * abs(complex(r**n * math.cos(phi), -r**n * math.sin(phi)) - complex(math.cos(omega), -math.sin(omega)))

    for n in (1, 2, 4, 8, 16):
        assert quality(n) == pytest.approx(closed(n), rel=1e-5)
    target = 0.5 * (closed(8) + closed(16))  # between the errors of 16 and 8 steps
    assert euler_steps_needed(quality, target) == 16
    assert euler_steps_needed(quality, closed(1) * 1.01) == 1
    assert euler_steps_needed(quality, 1e-9, max_steps=64) is None


def test_adaptive_solver_in_t_is_exact_on_the_arc_and_cheap_on_a_straight_flow():
    from diffusion_lab.flows.straightness import adaptive_endpoint

    omega, zz = 1.5, z(500)
    x, nfe_curved = adaptive_endpoint(rotation_field(omega), zz, to_zero=False)
    rot = torch.tensor([[math.cos(omega), math.sin(omega)], [-math.sin(omega), math.cos(omega)]], dtype=torch.float64)
    torch.testing.assert_close(x, zz @ rot.T, rtol=1e-4, atol=1e-4)
    m = torch.tensor([1.5, -0.5], dtype=torch.float64)
    x, nfe_straight = adaptive_endpoint(point_mass_field(m), zz, t_lo=0.05)  # + one Euler step to t = 0
    torch.testing.assert_close(x, m.expand_as(x), rtol=1e-6, atol=1e-6)  # a straight flow ends exactly at m
    assert nfe_straight < nfe_curved
