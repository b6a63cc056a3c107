"""Discrete corruption of quantised data (Austin et al. 2021, "Structured Denoising Diffusion Models in
Discrete State-Spaces" (D3PM), Sec. 3 and App. A), data at t = 0.

Each coordinate of x_0 ∈ {0, …, K−1} is corrupted independently, with a signal level ᾱ_t decreasing
from ᾱ_0 = 1 to ᾱ_1 = 0 (``linear``: 1 − t; ``cosine``: cos²(πt/2)):

    absorbing   q(x_t | x_0) = ᾱ_t δ_{x_0} + (1 − ᾱ_t) δ_[MASK]      (states 0..K−1 and MASK = K)
    uniform     q(x_t | x_0) = ᾱ_t δ_{x_0} + (1 − ᾱ_t)/K            (states 0..K−1)

Both are Markov with the transition from s < t: q(x_t | x_s) has the same form with α_{t|s} = ᾱ_t/ᾱ_s
(and MASK absorbing). The posterior q(x_s | x_t, x_0) = q(x_t | x_s) q(x_s | x_0) / q(x_t | x_0) is, for
the absorbing state,

    x_t ≠ MASK:  x_s = x_t;       x_t = MASK:  P(x_s = x_0) = (ᾱ_s − ᾱ_t)/(1 − ᾱ_t),  P(MASK) = (1 − ᾱ_s)/(1 − ᾱ_t),

and for uniform corruption the normalised product [α_{t|s} δ_{x_t} + (1 − α_{t|s})/K] ⊙ [ᾱ_s δ_{x_0} + (1 − ᾱ_s)/K].
The model gives p(x_0 | x_t) (logits over K); the sampler draws x_s ~ Σ_{x_0} q(x_s | x_t, x_0) p(x_0 | x_t)
("posterior", the unified view's x_s ~ p(x_s | x_t, x_0 = x̂_0) averaged over the prediction), or
x_s ~ q(x_s | x̂_0) with x̂_0 ~ p(x_0 | x_t) ("naive", re-corrupting the prediction). The loss is the
cross-entropy −log p(x_0 | x_t). The tests check the closed forms against Bayes' rule with the explicit
transition matrices on a tiny chain.

``quantize`` / ``dequantize`` map images in [−1, 1] to K levels and back.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

KINDS = ("absorbing", "uniform")


def quantize(x: Tensor, levels: int) -> Tensor:
    """Images in [−1, 1] → integers in {0, …, levels−1}."""
    return torch.round((x.clamp(-1, 1) + 1) / 2 * (levels - 1)).long()


def dequantize(k: Tensor, levels: int) -> Tensor:
    """Integers in {0, …, levels−1} (MASK or other values clipped) → images in [−1, 1]."""
    return k.clamp(0, levels - 1).to(torch.float32) / (levels - 1) * 2 - 1


class DiscreteCorruption:
    """D3PM's absorbing or uniform corruption with K levels (module docstring)."""

    discrete = True

    def __init__(self, kind: str = "absorbing", levels: int = 4, schedule: str = "linear"):
        if kind not in KINDS:
            raise ValueError(f"unknown discrete corruption {kind!r}; choose one of {KINDS}.")
        if schedule not in ("linear", "cosine"):
            raise ValueError(f"unknown discrete schedule {schedule!r}; choose linear or cosine.")
        if int(levels) < 2:
            raise ValueError(f"a discrete corruption needs levels ≥ 2, got {levels}.")
        self.kind, self.K, self.schedule = kind, int(levels), schedule
        self.mask = self.K if kind == "absorbing" else None

    @property
    def states(self) -> int:
        """Number of states of x_t: K + 1 with the MASK state, K for uniform."""
        return self.K + (1 if self.kind == "absorbing" else 0)

    def alpha_bar(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        return 1.0 - t if self.schedule == "linear" else torch.cos(0.5 * math.pi * t) ** 2

    # ------------------------------------------------------------------ q(x_t | x_0) and sampling
    def marginal(self, x0_probs: Tensor, t: Tensor) -> Tensor:
        """q(x_t | ·) for a distribution over x_0 given as probabilities (..., K): returns (..., states)."""
        a = self._b(self.alpha_bar(t), x0_probs)
        if self.kind == "absorbing":
            return torch.cat([a * x0_probs, (1 - a) * x0_probs.sum(-1, keepdim=True)], dim=-1)
        return a * x0_probs + (1 - a) * x0_probs.sum(-1, keepdim=True) / self.K

    def apply(self, x0: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x_t ~ q(x_t | x_0) for integer x_0 (B, ...), t (B,)."""
        probs = self.marginal(torch.nn.functional.one_hot(x0, self.K).to(torch.float64), t)
        return _categorical(probs, generator)

    def prior(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
        """x_1: all MASK (absorbing) or uniform over the K levels."""
        if self.kind == "absorbing":
            return torch.full(shape, self.mask, dtype=torch.long)
        return torch.randint(0, self.K, shape, generator=generator)

    # ------------------------------------------------------------------ posterior
    def posterior(self, x_t: Tensor, x0_probs: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """Σ_{x_0} q(x_s | x_t, x_0) p(x_0) for integer x_t (B, ...), p(x_0) (B, ..., K), 0 ≤ s < t: (B, ..., states)."""
        at, as_ = self._b(self.alpha_bar(t), x0_probs), self._b(self.alpha_bar(s), x0_probs)
        if self.kind == "absorbing":
            masked = (x_t == self.mask)[..., None].to(x0_probs.dtype)
            keep = torch.nn.functional.one_hot(x_t.clamp(max=self.K), self.states).to(x0_probs.dtype)
            unmask = (as_ - at) / (1 - at) * x0_probs
            stay = (1 - as_) / (1 - at) * torch.ones_like(x0_probs[..., :1])
            return masked * torch.cat([unmask, stay], dim=-1) + (1 - masked) * keep
        a_ts = at / as_
        from_t = a_ts * torch.nn.functional.one_hot(x_t, self.K).to(x0_probs.dtype) + (1 - a_ts) / self.K  # q(x_t | x_s = ·)
        # q(x_s = j | x_t, x_0 = i) ∝ q(x_t | j) q(j | i), normalised over j, then averaged over p(i)
        q_s_given_x0 = as_[..., None] * torch.eye(self.K, dtype=x0_probs.dtype) + (1 - as_[..., None]) / self.K  # (…, i, j)
        joint = q_s_given_x0 * from_t[..., None, :]
        post = joint / joint.sum(-1, keepdim=True)
        return (x0_probs[..., :, None] * post).sum(-2)

    def step(self, x_t: Tensor, x0_probs: Tensor, t: Tensor, s: Tensor, update: str = "posterior",
             generator: torch.Generator | None = None) -> Tensor:
        """One reverse step: ``posterior`` draws from Σ q(x_s | x_t, x_0) p(x_0 | x_t); ``naive`` draws
        x̂_0 ~ p(x_0 | x_t) and re-corrupts it, x_s ~ q(x_s | x̂_0). s = 0: x̂_0 ~ p(x_0 | x_t) (or x_t where it is
        already clean, absorbing)."""
        if update == "posterior":
            if float(torch.as_tensor(s).max()) == 0.0:
                return self._final(x_t, x0_probs, generator)
            return _categorical(self.posterior(x_t, x0_probs, t, s), generator)
        if update == "naive":
            x0 = _categorical(x0_probs, generator)
            if float(torch.as_tensor(s).max()) == 0.0:
                return x0
            return self.apply(x0, torch.as_tensor(s, dtype=torch.float64).expand(x_t.shape[0]), generator)
        raise ValueError(f"unknown discrete update {update!r}; choose posterior or naive.")

    def _final(self, x_t: Tensor, x0_probs: Tensor, generator) -> Tensor:
        x0 = _categorical(x0_probs, generator)
        if self.kind == "absorbing":
            return torch.where(x_t == self.mask, x0, x_t)
        return x0

    def _b(self, a: Tensor, like: Tensor) -> Tensor:
        """ᾱ per sample (B,) or scalar, shaped to broadcast over (B, ..., K)."""
        a = torch.as_tensor(a, dtype=like.dtype)
        if a.dim() == 0:
            return a
        return a.reshape(a.shape[0], *([1] * (like.dim() - 1)))


def _categorical(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One draw per row of probabilities (..., S) by inverse CDF with the generator's uniforms."""
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[:-1], generator=generator, dtype=probs.dtype, device=probs.device)[..., None]
    return (u * cdf[..., -1:] > cdf).sum(-1).clamp(max=probs.shape[-1] - 1)
