"""PFGM's z axis as a schedule (Xu, Liu, Tegmark & Jaakkola 2022, "Poisson Flow Generative Models").

PFGM augments data x ∈ R^N with one dimension z, treats the data as charges on the z = 0 plane and
moves samples along the lines of the (N+1)-dimensional Poisson field E. Its backward ODE in z is

    dx/dz = E_x/E_z = v_x/v_z,      v = −E/(‖E‖ + γ)·√N the normalised field the network learns,

integrated from the prior on the z = z_max plane down to z_min (their Eq. 4; RK45 in log z, App. B.2).
Writing x̂_0 := x − z·v_x/v_z (the point where the tangent line at (x, z) meets the data plane) gives

    dx/dz = (x − x̂_0)/z,

which is the diffusion probability-flow ODE dx/dσ = (x − x̂_0)/σ with σ ≡ z and α ≡ 1. So PFGM is
sampled by the same ODE solvers as every other model: ``PoissonFlowSchedule`` is a VE schedule with
σ(t) = z(t) = z_min (z_max/z_min)^t (log z linear in t, so the Euler sampler with ``variable=t`` is
Euler in log z and ``dopri5``, which integrates in λ = −log z, is RK45 in log z), the network
wrapper reads its field as ε̂ = v_x/v_z (``nets.poisson``), and the ``eps`` parameterization gives
x̂_0 = x − z ε̂ to the evaluation.

Prior (their Sec. 3.3, App. A.4): on the plane z = z_max, x = R·u with u uniform on the sphere and
R²/z_max² ~ BetaPrime(N/2, 1/2) — the PFGM++ kernel with D = 1 at σ = z_max — with the radius
clipped to [1, upper_norm] (App. B.2.1). ``PFGMPrior`` is that noise (x_T = z_max ε).

Hyper-parameters (training: perturbation scale σ, base τ, exponent bound M, γ of the field's
normalisation, restrict_M; sampling: z_max, z_min, upper_norm), and the rule of the paper's public
code (``hyperparam_calculator``) that derives M, z_max and the clipping bound from the augmented
dimension N+1 and the average data norm ‖x‖:

    M = ⌊0.75 · ln(‖x‖² / (2 √(N+1) σ²)) / ln(1+τ)⌋ + 1,
    z_max = √(2/π) σ (1+τ)^M,       upper_norm = √(N+1) σ (1+τ)^M

(CIFAR-10: ‖x‖ ≈ 32, σ = 0.01, τ = 0.03 → M = 291, z_max ≈ 43, upper_norm ≈ 3000; the paper uses
M = 291, z_max = 40, upper_norm = 3000, γ = 5, z_min = 1e-3).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion_lab.noise import PFGMPPNoise
from diffusion_lab.schedules.ve import VESchedule

# the training perturbation and the empirical field (Xu et al. 2022, Alg. 2 and Eq. 7): see
# ``diffusion_lab.losses.poisson_field`` for their use and math


class PFGMPrior(PFGMPPNoise):
    """PFGM's prior noise ε = x_T / z_max: PFGM++ with D = 1 (‖ε‖² ~ BetaPrime(N/2, 1/2), uniform
    direction), the radius ‖x_T‖ = z_max‖ε‖ clipped to [min_norm, upper_norm]. ``log_prob`` ignores the
    clipping (it moves a tiny mass at both ends)."""

    name = "pfgm_prior"

    def __init__(self, z_max: float, upper_norm: float, min_norm: float = 1.0):
        super().__init__(D=1.0, draw="radial")
        self.z_max, self.upper_norm, self.min_norm = float(z_max), float(upper_norm), float(min_norm)

    def sample(self, shape, generator=None, dtype=torch.float32, device=None) -> Tensor:
        eps = super().sample(shape, generator, torch.float64, device)
        view = (shape[0],) + (1,) * (len(shape) - 1)
        norm = eps.flatten(1).norm(dim=1)
        clipped = norm.clamp(self.min_norm / self.z_max, self.upper_norm / self.z_max)
        return (eps * (clipped / norm).reshape(view)).to(dtype)

    def __repr__(self) -> str:
        return f"PFGMPrior(z_max={self.z_max}, upper_norm={self.upper_norm})"


def pfgm_hyperparameters(data_dim: int, data_norm: float, sigma: float = 0.01, tau: float = 0.03) -> dict[str, float]:
    """M, z_max and upper_norm from the data dimension N and the average data norm (module docstring)."""
    if not (data_dim >= 1 and data_norm > 0 and sigma > 0 and tau > 0):
        raise ValueError(f"PFGM's rule needs data_dim ≥ 1, data_norm > 0, sigma > 0, tau > 0; got data_dim={data_dim}, "
                         f"data_norm={data_norm}, sigma={sigma}, tau={tau}.")
    n_aug = data_dim + 1
    M = int(0.75 * math.log(data_norm**2 / (2 * math.sqrt(n_aug) * sigma**2)) / math.log(1 + tau)) + 1
    M = max(M, 1)
    grow = (1 + tau) ** M
    return {"M": M, "z_max": math.sqrt(2 / math.pi) * sigma * grow, "upper_norm": math.sqrt(n_aug) * sigma * grow}


class PoissonFlowSchedule(VESchedule):
    """PFGM (Xu et al. 2022) as a schedule: σ(t) = z(t) = z_min (z_max/z_min)^t, α = 1, with PFGM's
    perturbation hyper-parameters and its prior (module docstring).

    Args:
        data_dim: N, the number of data dimensions (2 for 2-D data, C·H·W for images).
        data_norm: the average ‖x‖ of the data: with ``M``/``z_max``/``upper_norm`` null the paper's rule
            derives them from it.
        sigma: σ of the perturbation (their sigma_end, 0.01); tau: τ (0.03); M: the exponent bound.
        gamma: γ of the field's normalisation v = E/(‖E‖ + γ)·√N (5).
        restrict_M: draw m ∈ [0, 0.7M] for the perturbations with |z| < 0.005 (their App. B.1.1).
        z_min: the end of sampling (1e-3).
    """

    def __init__(self, data_dim: int, data_norm: float | None = None, sigma: float = 0.01, tau: float = 0.03,
                 M: int | None = None, z_max: float | None = None, upper_norm: float | None = None,
                 gamma: float = 5.0, restrict_M: bool = True, z_min: float = 1e-3):
        data_dim = int(data_dim)
        if None in (M, z_max, upper_norm):
            if data_norm is None:
                raise ValueError("schedule.data_norm is needed to derive M, z_max and upper_norm (the paper's rule); "
                                 "give the data's average norm or all three of schedule.M, z_max, upper_norm.")
            rule = pfgm_hyperparameters(data_dim, float(data_norm), sigma, tau)
            M = rule["M"] if M is None else M
            z_max = rule["z_max"] if z_max is None else z_max
            upper_norm = rule["upper_norm"] if upper_norm is None else upper_norm
        if not (gamma >= 0 and int(M) >= 1 and z_max > z_min > 0 and upper_norm > 1):
            raise ValueError(f"PoissonFlowSchedule needs gamma ≥ 0, M ≥ 1, z_max > z_min > 0, upper_norm > 1; got gamma={gamma}, "
                             f"M={M}, z_max={z_max}, z_min={z_min}, upper_norm={upper_norm}.")
        super().__init__(sigma_min=z_min, sigma_max=float(z_max))
        self.data_dim, self.data_norm = data_dim, data_norm
        self.sigma_perturb, self.tau, self.M = float(sigma), float(tau), int(M)
        self.z_max, self.z_min, self.upper_norm = float(z_max), float(z_min), float(upper_norm)
        self.gamma, self.restrict_M = float(gamma), bool(restrict_M)
        self.noise = PFGMPrior(self.z_max, self.upper_norm)

    def t_of_z(self, z: Tensor) -> Tensor:
        """t with σ(t) = z (any z > 0: training perturbations reach outside [z_min, z_max])."""
        return torch.log(z / self.z_min) / self._log_ratio

    def __repr__(self) -> str:
        return (f"PoissonFlowSchedule(N={self.data_dim}, M={self.M}, tau={self.tau}, sigma={self.sigma_perturb}, "
                f"z_max={self.z_max:.4g}, upper_norm={self.upper_norm:.4g}, gamma={self.gamma}, z_min={self.z_min})")


def perturb(y: Tensor, schedule, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """PFGM's perturbation of flattened data y (B, N): returns (x (B, N), z (B,)), float64."""
    s = schedule
    B, N = y.shape
    dev = y.device
    y = y.to(torch.float64)
    m = torch.rand(B, generator=generator, dtype=torch.float64, device=dev) * s.M
    z0 = torch.randn(B, generator=generator, dtype=torch.float64, device=dev) * s.sigma_perturb
    if s.restrict_M:
        small = z0.abs() < 0.005
        m = torch.where(small, torch.rand(B, generator=generator, dtype=torch.float64, device=dev) * int(s.M * 0.7), m)
    grow = (1.0 + s.tau) ** m
    radius = (torch.randn(B, N, generator=generator, dtype=torch.float64, device=dev) * s.sigma_perturb).norm(dim=1) * grow
    direction = torch.randn(B, N, generator=generator, dtype=torch.float64, device=dev)
    direction = direction / direction.norm(dim=1, keepdim=True)
    return y + direction * radius[:, None], z0.abs() * grow


def empirical_field(x: Tensor, z: Tensor, reference: Tensor, gamma: float) -> Tensor:
    """The normalised field v = −√N·Ê/(‖Ê‖ + γ) at the augmented points (x, z), (B, N+1), from the
    reference data (R, N) on the z = 0 plane (``diffusion_lab.losses.poisson_field``). Float64."""
    x, z, reference = x.to(torch.float64), z.to(torch.float64), reference.to(torch.float64)
    N = x.shape[1]
    diff = torch.cat([x[:, None, :] - reference[None, :, :], z[:, None, None].expand(-1, reference.shape[0], 1)], dim=2)
    dist = diff.norm(dim=2)  # (B, R)
    log_w = -(N + 1) * torch.log(dist.clamp_min(1e-300))
    w = torch.softmax(log_w, dim=1)  # ∝ 1/‖x̃ − ỹ_i‖^{N+1}, normalised to sum 1 over the references
    field = (w[:, :, None] * diff).sum(1)  # Ê / Σ_i ‖x̃ − ỹ_i‖^{−(N+1)}: γ is added to the norm of this mean
    return -math.sqrt(N) * field / (field.norm(dim=1, keepdim=True) + gamma)
