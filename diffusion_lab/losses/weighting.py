"""Loss weightings λ(t), written once in x_0 space and moved exactly into any target space.

Canonical space. A weighting is a function w(t) ≥ 0 multiplying the x_0-space error:

    L = w(t) · ‖x̂_0 − x_0‖²     (per dimension).

Moving it to a parameterization. At fixed (x_t, t) every prediction satisfies α x̂_0 + σ ε̂ = x_t
and so does the truth, hence α δx_0 + σ δε = 0 for the errors δ· = (·̂ − ·). Every other output is
linear in (x̂_0, ε̂), so its error is a t-dependent multiple of δx_0:

    eps       δε = −(α/σ) δx_0                    k² = α²/σ²          (= SNR)
    x0        δx_0                                k² = 1
    score     δs = −δε/σ = (α/σ²) δx_0            k² = α²/σ⁴
    v         δv = α δε − σ δx_0 = −((α²+σ²)/σ) δx_0      k² = (α²+σ²)²/σ²
    velocity  δu = α̇ δx_0 + σ̇ δε = (D/σ) δx_0,  D = α̇σ − σ̇α      k² = D²/σ²
    edm       δF = δx_0 / c_out  (x̂_0 = c_skip x̃ + c_out F)        k² = 1/c_out² = (σ̃²+σ_d²)/(σ̃ σ_d)²

(the velocity and ε rows are the identities ‖û−u‖² = (D/σ)²‖x̂_0−x_0‖² = (D/α)²‖ε̂−ε‖², D = α̇σ − σ̇α, which
follow from û − u = −(D/α)(ε̂ − ε), since u = (α̇/α) x − (D/α) ε, and ε̂ − ε = −(α/σ)(x̂_0 − x_0) at fixed x_t). So a
network trained on its own target with per-sample multiplier m(t) = w(t)/k²(t) minimises exactly
w(t)‖x̂_0 − x_0‖²: that is ``target_multiplier``, the one place where weightings meet
parameterizations.

Weightings (x_0-space w(t)):

* ``simple``: w = k²_param, i.e. m ≡ 1: the plain MSE of the network's own target (DDPM's L_simple,
  Ho et al. 2020, when the parameterization is eps; plain F-MSE = EDM's loss for ``edm``).
* ``likelihood``: λ(t) = g²(t) on the score (Song, Durkan, Murray & Ermon 2021, "Maximum Likelihood
  Training of Score-Based Diffusion Models", Thm. 1): w = g² · α²/σ⁴.
* ``snr``: w = SNR = α²/σ², the x_0-space weight equivalent to the ε-MSE (m = 1 for eps), in any
  parameterization (Kingma et al. 2021; Hang et al. 2023, §3).
* ``min_snr``: w = min(SNR, γ), γ = 5 by default (Hang et al. 2023, "Efficient Diffusion Training
  via Min-SNR Weighting Strategy", Eq. 6): for eps m = min(SNR, γ)/SNR, for VP v m = min(SNR, γ)/(SNR+1).
* ``edm``: w = (σ̃² + σ_d²)/(σ̃ σ_d)² (Karras et al. 2022, Eq. 8 and Table 1), σ̃ = σ/α.
* ``eps``, ``x0``, ``score``, ``v``, ``velocity``: the MSE measured in that space, w = k²_space,
  whatever the network outputs (``velocity`` is the rectified-flow / flow-matching loss).

All coefficients are computed in float64 from the schedule at t.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.parameterization import Coefficients, Parameterization, PARAMETERIZATIONS
from diffusion_lab.schedules.base import Schedule

#: names accepted by ``x0_weight``
WEIGHTINGS = ("simple", "likelihood", "snr", "min_snr", "edm", "eps", "x0", "score", "v", "velocity")


def _coefficients(schedule: Schedule, t: Tensor) -> Coefficients:
    t64 = t.detach().to(torch.float64)
    return Coefficients.at(schedule, t64, t64)


def space_factor2(kind: str, c: Coefficients, sigma_data: float | None = None) -> Tensor:
    """k²(t) with ‖δ(output of ``kind``)‖² = k² ‖δx̂_0‖² at fixed (x_t, t) (table in the module doc)."""
    a, s, ad, sd = c.alpha, c.sigma, c.alpha_dot, c.sigma_dot
    if kind == "eps":
        return (a / s) ** 2
    if kind == "x0":
        return torch.ones_like(a)
    if kind == "score":
        return (a / (s * s)) ** 2
    if kind == "v":
        return ((a * a + s * s) / s) ** 2
    if kind == "velocity":
        return ((ad * s - sd * a) / s) ** 2
    if kind == "edm":
        if sigma_data is None:
            raise ValueError("space_factor2('edm') needs sigma_data.")
        st = s / a
        return (st * st + sigma_data**2) / (st * sigma_data) ** 2
    raise ValueError(f"unknown target space {kind!r}; choose one of {PARAMETERIZATIONS}.")


def x0_weight(
    weighting: str,
    schedule: Schedule,
    t: Tensor,
    *,
    min_snr_gamma: float = 5.0,
    sigma_data: float = 0.5,
) -> Tensor:
    """w(t) in x_0 space, float64 of shape (B,) (``simple`` has none: it depends on the parameterization)."""
    c = _coefficients(schedule, t)
    if weighting == "likelihood":
        g2 = schedule.diffusion2(t.detach().to(torch.float64))
        return g2 * space_factor2("score", c)
    if weighting == "snr":
        return space_factor2("eps", c)
    if weighting == "min_snr":
        return space_factor2("eps", c).clamp(max=min_snr_gamma)
    if weighting == "edm":
        return space_factor2("edm", c, sigma_data)
    if weighting in PARAMETERIZATIONS and weighting != "edm":
        return space_factor2(weighting, c)
    raise ValueError(f"weighting {weighting!r} has no fixed x0-space weight; choose one of {WEIGHTINGS[1:]}.")


def param_space(parameterization: Parameterization) -> tuple[str, float | None]:
    """(target space, σ_data) of a parameterization."""
    if parameterization.precond is not None:
        return "edm", parameterization.precond.sigma_data
    return parameterization.kind, None


def target_multiplier(
    weighting: str,
    schedule: Schedule,
    parameterization: Parameterization,
    t: Tensor,
    *,
    min_snr_gamma: float = 5.0,
    sigma_data: float = 0.5,
    space: str | None = None,
) -> Tensor:
    """m(t) = w(t)/k²(t): the per-sample factor on the MSE of the network's own target (or of
    ``space`` when given) that makes the loss equal w(t)‖x̂_0 − x_0‖². float64, shape (B,)."""
    kind, sd = param_space(parameterization)
    if space is not None:
        kind, sd = space, (sigma_data if space == "edm" else None)
    if weighting == "simple":
        return torch.ones(t.shape, dtype=torch.float64, device=t.device)
    w = x0_weight(weighting, schedule, t, min_snr_gamma=min_snr_gamma, sigma_data=sigma_data)
    if weighting == kind or (weighting == "edm" and kind == "edm" and sd == sigma_data):
        return torch.ones_like(w)  # exact identity, also where both factors overflow
    return w / space_factor2(kind, _coefficients(schedule, t), sd)
