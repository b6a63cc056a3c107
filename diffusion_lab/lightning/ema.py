"""Exponential moving average of the network weights (Polyak averaging; used for sampling by every
paper in scope: DDPM decay 0.9999, score SDE 0.999/0.9999, EDM by half-life in images).

θ_ema ← β θ_ema + (1 − β) θ after each optimizer step, with either a fixed decay β, or EDM's
half-life h (in training images): β = 0.5^{B/h} for batch size B, so that after h images the
average keeps exactly half the weight it had (Karras et al. 2022, App. F), optionally ramped up as
h_t = min(h, ramp·n) with n the images seen before this step (as EDM's training loop: the first
update copies the weights), so early averages do not remember the random initialisation. Buffers
(e.g. normalization statistics) are copied, not averaged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """Holds an averaged copy of ``net`` (saved in the LightningModule's state dict)."""

    def __init__(self, net: nn.Module, decay: float | None = 0.999, half_life_images: float | None = None,
                 ramp_up: float | None = None):
        super().__init__()
        if (decay is None) == (half_life_images is None):
            raise ValueError("EMA needs exactly one of ema.decay or ema.half_life_images; set the other to null.")
        if decay is not None and not 0.0 <= decay < 1.0:
            raise ValueError(f"ema.decay must be in [0, 1), got {decay}.")
        self.decay, self.half_life_images, self.ramp_up = decay, half_life_images, ramp_up
        self.net = copy.deepcopy(net).eval().requires_grad_(False)
        self.register_buffer("num_images", torch.zeros((), dtype=torch.float64))

    def beta(self, batch_size: int) -> float:
        """The decay used for the next update (before ``num_images`` counts its batch)."""
        if self.decay is not None:
            return self.decay
        h = self.half_life_images
        if self.ramp_up is not None:
            h = min(h, self.ramp_up * float(self.num_images))
        return 0.5 ** (batch_size / max(h, 1e-8))

    @torch.no_grad()
    def update(self, net: nn.Module, batch_size: int) -> None:
        beta = self.beta(batch_size)
        self.num_images += batch_size
        averaged = list(self.net.parameters())
        current = [p.detach().to(q.dtype) for q, p in zip(averaged, net.parameters())]
        torch._foreach_lerp_(averaged, current, 1.0 - beta)  # one fused kernel per dtype/device group
        for b_ema, b in zip(self.net.buffers(), net.buffers()):
            b_ema.copy_(b)
