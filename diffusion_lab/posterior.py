"""The Gaussian posterior q(x_s | x_t, x_0) between two times of a schedule, and the variances of
the reverse step: the one derivation that DDPM ancestral sampling and the variational bound share.

For x_t = α_t x_0 + σ_t ε (any schedule, ``schedules.base``) and s < t the forward process has the
transition (Kingma et al. 2021, "Variational Diffusion Models", Eq. 7–8; Ho et al. 2020, Eq. 6–7)

    x_t | x_s ~ N(α_{t|s} x_s, σ_{t|s}² I),   α_{t|s} = α_t/α_s,   σ_{t|s}² = σ_t² − α_{t|s}² σ_s² = r σ_t²,

with r = 1 − e^{−2(λ_s − λ_t)} ∈ (0, 1] (λ = log α/σ; computed with expm1, so that fine grids lose
no digits). Bayes' rule for Gaussians gives the posterior

    q(x_s | x_t, x_0) = N(μ, β̃ I),   μ = α_s r x_0 + (α_s/α_t)(1 − r) x_t,   β̃ = r σ_s².

On the grid t_i = i/T of a discrete schedule β := σ_{t|s}² and β̃ are DDPM's β_i and β̃_i; on a
sub-grid they are improved DDPM's respaced ones (Nichol & Dhariwal 2021, §4). s = 0 stands for the
data (α_0 = 1, σ_0 = 0, whatever the schedule's formula gives at 0): then r = 1, μ = x_0, β̃ = 0.

The reverse step p(x_s | x_t) = N(μ(x_t, x̂_0), Σ) takes one of the variances

    "small"    Σ = β̃                                 (DDPM's σ_t² = β̃_t; the true posterior variance)
    "large"    Σ = β                                 (DDPM's σ_t² = β_t)
    "learned"  log Σ = ν log β + (1 − ν) log β̃      (Nichol & Dhariwal 2021, Eq. 15; ν from the network)

``log_variance`` is the one place this rule lives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffusion_lab.schedules.base import Schedule, broadcast_like

VARIANCES = ("small", "large", "learned")


@dataclass
class Posterior:
    """Coefficients of q(x_s | x_t, x_0), per sample (shape of t), in the dtype of t."""

    coef_x0: Tensor     # α_s r
    coef_xt: Tensor     # (α_s/α_t)(1 − r)
    beta: Tensor        # σ_{t|s}² = r σ_t²  ("large")
    beta_tilde: Tensor  # r σ_s²            ("small"; 0 when s is the data)

    def mean(self, x_t: Tensor, x0: Tensor) -> Tensor:
        """μ = coef_x0 · x_0 + coef_xt · x_t, the coefficients broadcast against x_t."""
        return broadcast_like(self.coef_x0, x_t) * x0 + broadcast_like(self.coef_xt, x_t) * x_t


def transition(schedule: Schedule, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """(α_{t|s}, σ_{t|s}²) of the forward transition x_t | x_s for 0 < s < t (module docstring)."""
    r = -torch.expm1(2.0 * (schedule.log_snr(t) - schedule.log_snr(s)))
    sig_t = schedule.sigma(t)
    return schedule.alpha(t) / schedule.alpha(s), r * sig_t * sig_t


def posterior(schedule: Schedule, t: Tensor, s: Tensor) -> Posterior:
    """The posterior coefficients between t and s < t (s = 0: the data); see the module docstring."""
    t, s = torch.as_tensor(t), torch.as_tensor(s, dtype=torch.as_tensor(t).dtype)
    data = s == 0
    s_safe = torch.where(data, t, s)  # any time inside the schedule's range: replaced below
    a_t, sig_t = schedule.alpha(t), schedule.sigma(t)
    a_s = torch.where(data, torch.ones_like(a_t), schedule.alpha(s_safe))
    sig_s = torch.where(data, torch.zeros_like(sig_t), schedule.sigma(s_safe))
    r = torch.where(data, torch.ones_like(a_t), -torch.expm1(2.0 * (schedule.log_snr(t) - schedule.log_snr(s_safe))))
    return Posterior(coef_x0=a_s * r, coef_xt=(a_s / a_t) * (1.0 - r), beta=r * sig_t * sig_t,
                     beta_tilde=r * sig_s * sig_s)


def log_variance(variance: str, log_beta: Tensor, log_beta_tilde: Tensor, var_interp: Tensor | None = None) -> Tensor:
    """log Σ of the reverse step for ``variance`` in VARIANCES (broadcasting the arguments).

    ``var_interp`` is ν ∈ [0, 1] (``denoiser.variance_fraction`` of the network's output), needed for
    "learned": log Σ = ν log β + (1 − ν) log β̃."""
    if variance == "small":
        return log_beta_tilde
    if variance == "large":
        return log_beta
    if variance != "learned":
        raise ValueError(f"unknown variance {variance!r}; choose one of {VARIANCES}.")
    if var_interp is None:
        raise ValueError("variance='learned' needs a model with learned variances (model.learned_variance=true and "
                         "a loss that trains them); its predictions carry no variance fraction.")
    return var_interp * log_beta + (1.0 - var_interp) * log_beta_tilde
