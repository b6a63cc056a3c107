"""EMA of the weights: the fixed-decay recursion, EDM's half-life in images (after h images the old
average keeps exactly half its weight) and its ramp-up (the first update copies the weights)."""

from __future__ import annotations

import pytest
import torch

from diffusion_lab.lightning.ema import EMA


def _net(value: float) -> torch.nn.Linear:
    net = torch.nn.Linear(2, 1).double()
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(value)
    return net


def test_fixed_decay_is_the_polyak_recursion():
    ema = EMA(_net(0.0), decay=0.9)
    target = _net(1.0)
    for k in range(1, 4):
        ema.update(target, batch_size=8)
        expect = 1.0 - 0.9**k  # θ_ema,k = 0.9 θ_ema,k−1 + 0.1 · 1
        assert all(torch.allclose(p, torch.full_like(p, expect), atol=1e-15) for p in ema.net.parameters())
    assert float(ema.num_images) == 24


@pytest.mark.parametrize("batch", [4, 16])
def test_half_life_in_images_halves_the_old_average(batch):
    """β = 0.5^{B/h}: after h images (h/B updates) the initial weights keep weight exactly 1/2."""
    h = 64
    ema = EMA(_net(0.0), decay=None, half_life_images=h)
    assert ema.beta(batch) == pytest.approx(0.5 ** (batch / h), rel=1e-15)
    target = _net(1.0)
    for _ in range(h // batch):
        ema.update(target, batch_size=batch)
    for p in ema.net.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 0.5), rtol=0, atol=1e-12)


def test_ramp_up_limits_the_half_life_by_the_images_seen_before_the_step():
    """h_t = min(h, ramp · n_before) (EDM's loop): the first update copies, the next ones follow the ramp."""
    ema = EMA(_net(0.0), decay=None, half_life_images=1000, ramp_up=0.5)
    assert ema.beta(10) == 0.0
    ema.update(_net(3.0), batch_size=10)  # n_before = 0: a copy
    assert all(torch.equal(p, torch.full_like(p, 3.0)) for p in ema.net.parameters())
    assert ema.beta(10) == pytest.approx(0.5 ** (10 / 5.0))  # n_before = 10: h = min(1000, 5)
    for _ in range(400):
        ema.update(_net(3.0), batch_size=10)
    assert ema.beta(10) == pytest.approx(0.5 ** (10 / 1000))  # ramp past h: the configured half-life


def test_exactly_one_of_decay_and_half_life():
    with pytest.raises(ValueError, match="exactly one of ema.decay or ema.half_life_images"):
        EMA(_net(0.0), decay=0.99, half_life_images=100)
    with pytest.raises(ValueError, match="ema.decay must be in \\[0, 1\\)"):
        EMA(_net(0.0), decay=1.5)
