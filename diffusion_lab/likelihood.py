"""Likelihood of a trained diffusion or flow model: the probability-flow ODE's exact log-likelihood and
bits per dimension.

The PF-ODE (Song et al. 2021, "Score-Based Generative Modeling through SDEs", §4.3, App. D.2)

    dx/dt = u(x, t) = α̇ x̂_0 + σ̇ ε̂        (= f x − ½ g² ∇ log p_t, the velocity view of the ``Prediction``)

is a continuous normalizing flow, so by the instantaneous change of variables (Chen et al. 2018,
"Neural Ordinary Differential Equations", Thm. 1) d log p_t(x_t)/dt = −∇·u(x_t, t), and

    log p_{t_min}(x) = log p_{t_max}(x(t_max)) + ∫_{t_min}^{t_max} ∇·u(x(t), t) dt,     x(t_min) = x.

The model's density is that of the ODE's pushforward of the prior p_{t_max} = N(0, σ(t_max)² I) (the
"prior term"; ``prior_log_prob`` replaces it, e.g. by an oracle's exact p_{t_max} in tests). The state
(x, ∫∇·u) is integrated with an adaptive solver of torchdiffeq (default dopri5, rtol = atol = 1e-5 as
in score SDE) in the log-SNR λ = log(α/σ), as the ``dopri5`` sampler does (dx/dλ = u/λ̇,
λ̇ = α̇/α − σ̇/σ: non-stiff over the whole range), from λ(t_min) down to λ(t_max).

The divergence ∇·u = tr(∂u/∂x):
* ``exact``: D vector-Jacobian products (one per dimension) — for low-dimensional data;
* ``hutchinson``: the unbiased estimate vᵀ(∂u/∂x)v, E[v vᵀ] = I, with one VJP per probe, averaged over
  ``n_probes`` (Hutchinson 1989; Grathwohl et al. 2019, "FFJORD"); Rademacher (±1) or Gaussian
  probes, drawn once per sample and kept fixed along the trajectory (so the integrand is a smooth
  function of t for the adaptive solver). For a linear u = A x the estimate's variance is
  2‖A_s‖_F² (Gaussian) or 2‖A_s‖_F² − 2 Σ_i A_ii² (Rademacher), A_s = (A + Aᵀ)/2, divided by n_probes.
  The log-likelihood is then unbiased only up to the solver's error, and log p is unbiased, not p.

Bits per dimension of discrete data (pixels on L levels, bins of width Δ = (hi − lo)/(L − 1) centred
on the levels): uniform dequantization y = x + Δ(u − ½), u ~ U[0, 1)^D (Theis et al. 2016; Ho et al.
2020, §4; Song et al. 2021, App. D.2) gives the bound −log P(x) ≤ E_u[−log p(y)] − D log Δ, so

    bits/dim = E_u[−log p(y)] / (D ln 2) − log₂ Δ        (Δ = 2/255 for 8-bit images in [−1, 1]: +6.99).

Score SDE dequantizes as (k + u)/256 (bins of width 2/256 that are not centred on the training
values: + 7); the bins here are centred on the values the model was trained on. Continuous
(low-dimensional) data get −log p(x)/(D ln 2) without dequantization.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
LN2 = math.log(2.0)


# ------------------------------------------------------------------------------------------ divergence
def exact_divergence(u: Tensor, x: Tensor) -> Tensor:
    """tr(∂u/∂x) per sample, shape (B,), by one VJP per dimension (u computed from x with gradients)."""
    flat = u.reshape(u.shape[0], -1)
    div = torch.zeros(u.shape[0], dtype=u.dtype, device=u.device)
    for i in range(flat.shape[1]):
        (g,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
        div = div + g.reshape(g.shape[0], -1)[:, i].to(u.dtype)
    return div


def hutchinson_divergence(u: Tensor, x: Tensor, probes: Tensor) -> Tensor:
    """The mean over probes v (shape (n_probes, *x.shape)) of vᵀ(∂u/∂x)v, per sample, shape (B,)."""
    est = torch.zeros(u.shape[0], dtype=u.dtype, device=u.device)
    for v in probes:
        (jtv,) = torch.autograd.grad(u, x, grad_outputs=v.to(u.dtype), retain_graph=True)
        est = est + (jtv.to(u.dtype) * v.to(u.dtype)).reshape(u.shape[0], -1).sum(1)
    return est / probes.shape[0]


def draw_probes(shape: tuple[int, ...], n_probes: int, kind: str = "rademacher",
                generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
                device: torch.device | str | None = None) -> Tensor:
    """n_probes vectors of ``shape`` with E[v vᵀ] = I: Rademacher (±1 with probability ½) or N(0, I)."""
    if kind not in PROBES:
        raise ValueError(f"probe={kind!r} is not a Hutchinson probe; choose one of {PROBES}.")
    if not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes={n_probes!r} must be an integer ≥ 1.")
    gen_device = generator.device if generator is not None else device
    if kind == "gaussian":
        v = torch.randn((n_probes, *shape), generator=generator, dtype=dtype, device=gen_device)
    else:
        v = torch.randint(0, 2, (n_probes, *shape), generator=generator, device=gen_device).to(dtype) * 2 - 1
    return v.to(device) if device is not None else v


# ------------------------------------------------------------------------------------------ PF-ODE
@dataclass
class ODELikelihood:
    """log_prob = prior_log_prob + delta, each (B,), in nats; x_T the ODE's endpoint; nfe the network calls."""

    log_prob: Tensor
    prior_log_prob: Tensor
    delta: Tensor
    x_T: Tensor
    nfe: int


def ode_log_likelihood(model, x: Tensor, *, divergence: str = "exact", probe: str = "rademacher",
                       n_probes: int = 1, rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5",
                       generator: torch.Generator | None = None,
                       prior_log_prob: Callable[[Tensor], Tensor] | None = None,
                       t_min: float | None = None, t_max: float | None = None) -> ODELikelihood:
    """log p_{t_min}(x) of the model's PF-ODE (module docstring), in float64.

    ``model``: the model adapter (``Denoiser``): its ``predict(x, t)`` is differentiated; its ``labels``
    (if set) condition a class-conditional network. ``prior_log_prob(x_T)`` defaults to the schedule's
    prior N(0, σ(t_max)² I). ``t_min``/``t_max`` default to the schedule's range."""
    from torchdiffeq import odeint

    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence={divergence!r} is not a divergence estimator; choose one of {DIVERGENCES}.")
    schedule = model.schedule
    t0 = float(schedule.t_min if t_min is None else t_min)
    t1 = float(schedule.t_max if t_max is None else t_max)
    if not t0 < t1:
        raise ValueError(f"the likelihood integrates from t_min={t0} up to t_max={t1}; need t_min < t_max.")
    x = x.detach().to(torch.float64)
    probes = (draw_probes(tuple(x.shape), n_probes, probe, generator, device=x.device)
              if divergence == "hutchinson" else None)
    lam_span = schedule.log_snr(torch.tensor([t0, t1], dtype=torch.float64)).to(x.device)
    nfe0 = model.nfe

    def rhs(lam: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        y = state[0]
        t = schedule.t_from_log_snr(lam.detach().to(torch.float64).cpu().reshape(1)).clamp(t0, t1)
        tt = t.to(y.device).expand(y.shape[0])
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            u = model.predict(y, tt).velocity
            div = exact_divergence(u, y) if probes is None else hutchinson_divergence(u, y, probes)
        a, s, ad, sd = schedule.coefficients(t)
        rate = float(ad / a - sd / s)  # dλ/dt < 0
        return u.detach() / rate, div.detach() / rate

    state = (x, torch.zeros(x.shape[0], dtype=torch.float64, device=x.device))
    x_T, delta = (v[-1] for v in odeint(rhs, state, lam_span, rtol=rtol, atol=atol, method=method))
    prior = (prior_log_prob or schedule.prior_log_prob)(x_T).to(torch.float64)
    return ODELikelihood(prior + delta, prior, delta, x_T, model.nfe - nfe0)


# ------------------------------------------------------------------------------------------ bits/dim
def bin_width(levels: int, value_range: str = "[-1,1]") -> float:
    """Δ = (hi − lo)/(L − 1): the spacing of L quantization levels in the data's range."""
    if not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels={levels!r}: discrete data need at least 2 quantization levels.")
    return (2.0 if value_range == "[-1,1]" else 1.0) / (levels - 1)


def dequantize(x: Tensor, width: float, generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantization y = x + Δ(u − ½), u ~ U[0, 1)^D (bins centred on the levels), float64."""
    dev = generator.device if generator is not None else x.device
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64, device=dev).to(x.device)
    return x.to(torch.float64) + width * (u - 0.5)


def bits_per_dim(log_prob: Tensor, dim: int, width: float | None = None) -> Tensor:
    """−log p/(D ln 2), minus log₂ Δ for dequantized discrete data (``width`` = Δ; None: continuous data)."""
    bpd = -log_prob / (dim * LN2)
    return bpd - math.log2(width) if width is not None else bpd
