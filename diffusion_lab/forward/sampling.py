"""The sampler of the unified view: x̂_0 from the model, then a step to the next time (``additive`` and
``discrete`` state the updates and their papers).

    x ← x_1 ~ prior;  for t > s on a decreasing grid ending at 0:  x̂_0 = model(x, t);  x ← step(x, x̂_0, t, s)

with the last step (s = 0) returning x̂_0 (continuous) or a draw of p(x_0 | x_t) (discrete). The model is
any callable: ``predict_x0(x, t) -> x̂_0`` for continuous processes, ``predict_probs(x, t) -> p(x_0 | x_t)``
(probabilities over the K levels, last axis) for discrete ones; t is passed with shape (B,).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from diffusion_lab.forward.additive import UPDATES, AdditiveProcess
from diffusion_lab.forward.discrete import DiscreteCorruption


def uniform_grid(steps: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """1 = t_0 > t_1 > … > t_steps = 0, evenly spaced."""
    return torch.linspace(1.0, 0.0, int(steps) + 1, dtype=dtype)


@torch.no_grad()
def sample_continuous(process: AdditiveProcess, predict_x0: Callable[[Tensor, Tensor], Tensor], x: Tensor, grid: Tensor,
                      update: str = "corrected", generator: torch.Generator | None = None) -> Tensor:
    """Run the x̂_0-then-step sampler from x at grid[0] down to grid[-1] = 0 (module docstring)."""
    if update not in UPDATES:
        raise ValueError(f"unknown update {update!r}; choose one of {UPDATES}.")
    if float(grid[-1]) != 0.0:
        raise ValueError(f"the grid must end at t = 0 (the data), got {float(grid[-1])}.")
    B = x.shape[0]
    for i in range(len(grid) - 1):
        t, s = grid[i].expand(B), grid[i + 1].expand(B)
        x0 = predict_x0(x, t)
        if float(grid[i + 1]) == 0.0:
            return x0
        if update == "naive":
            x = process.apply(x0, s, process.sample_eps(x, generator))
        elif update == "corrected":
            eps = process.implied_eps(x, x0, t)
            x = x - process.apply(x0, t, eps) + process.apply(x0, s, eps)
        else:
            x = process.posterior_step(x, x0, t, s, generator)
    return x


@torch.no_grad()
def sample_discrete(process: DiscreteCorruption, predict_probs: Callable[[Tensor, Tensor], Tensor], x: Tensor,
                    grid: Tensor, update: str = "posterior", generator: torch.Generator | None = None) -> Tensor:
    """The discrete sampler: p(x_0 | x_t) from the model, then ``process.step`` (posterior or naive)."""
    if float(grid[-1]) != 0.0:
        raise ValueError(f"the grid must end at t = 0 (the data), got {float(grid[-1])}.")
    B = x.shape[0]
    for i in range(len(grid) - 1):
        t, s = grid[i].expand(B), grid[i + 1].expand(B)
        x = process.step(x, predict_probs(x, t).to(torch.float64), t, s, update, generator)
    return x


def forward_loss(process, predict: Callable[[Tensor, Tensor], Tensor], x0: Tensor,
                 generator: torch.Generator | None = None) -> Tensor:
    """−log q(x_0 | x_t) up to constants, averaged: the MSE of x̂_0 for continuous processes (a Gaussian
    decoder), the cross-entropy of the logits ``predict(x_t, t)`` (B, ..., K) for discrete ones; t ~ U(0, 1]."""
    B = x0.shape[0]
    t = 1.0 - torch.rand(B, generator=generator, dtype=torch.float64)  # (0, 1]
    if getattr(process, "discrete", False):
        x_t = process.apply(x0, t, generator)
        logits = predict(x_t, t)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x0.reshape(-1))
    x64 = x0.to(torch.float64)
    x_t = process.apply(x64, t, process.sample_eps(x64, generator))
    return (predict(x_t.to(x0.dtype), t.to(x0.dtype)) - x0).pow(2).mean()
