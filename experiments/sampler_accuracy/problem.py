"""The benchmark's problem: a Gaussian mixture, a schedule, one x_T, and the exact endpoint at σ = 0.

Data p_0 is a random mixture (``GaussianMixture.random``) in 2-D (4 components) or 16-D (8
components) whose components have standard deviations ≈ 0.05–0.15 (``scale``): sharp modes, as for
image data, where the classical last step x ← x̂_0(x, t_min) costs the most. The "network" is the
mixture's exact denoiser, so every error is the sampler's own.

Reference. In x̃ = x/α, σ̃ = σ/α the probability-flow ODE dx̃/dσ̃ = (x̃ − x̂_0(x̃; σ̃))/σ̃ does not
depend on the schedule (Karras et al. 2022, Eq. 4), only its start x̃_T = x_T/α(t_max) at
σ̃_max = σ̃(t_max) does. The exact endpoint x̃(σ̃ = 0) is computed once per problem by adaptive
Dormand–Prince in λ = −log σ̃ (our ``dopri5`` sampler at rtol = atol = 1e-12) on the EDM schedule
with σ_min = 1e-7 and σ_max = σ̃_max (the oracle answers at any σ̃ > 0), followed by the jump
x̂_0(·, σ̃ = 1e-7), whose error σ̃²/(2√e) ≈ 1e-13 is far below every error measured.

Error = median over samples of ‖x − x_ref‖₂ (the measure of the issue that motivated the benchmark).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffusion_lab.oracles import GaussianMixture
from diffusion_lab.parameterization import Parameterization
from diffusion_lab.samplers import SAMPLERS, Denoiser
from diffusion_lab.schedules import (
    DDPMLinearSchedule,
    EDMSchedule,
    RectifiedFlowSchedule,
    VESchedule,
    VPLinearSchedule,
)
from diffusion_lab.schedules.base import Schedule

F64 = torch.float64
#: the schedule of each family (grids.FAMILIES) the benchmark runs
SCHEDULES = {
    "discrete": lambda: DDPMLinearSchedule(1000),
    "vp": VPLinearSchedule,
    "ve": VESchedule,
    "edm": EDMSchedule,
    "flow": RectifiedFlowSchedule,
}
#: floor of the reference integration in σ̃
REFERENCE_SIGMA = 1e-7


@dataclass
class Case:
    family: str
    dim: int
    schedule: Schedule
    mixture: GaussianMixture
    denoiser: Denoiser
    x_T: torch.Tensor
    ref: torch.Tensor

    @property
    def name(self) -> str:
        return f"{self.family}/{self.dim}d"


def mixture(dim: int, seed: int = 0, scale: float = 0.1) -> GaussianMixture:
    return GaussianMixture.random(dim, 4 if dim <= 2 else 8, seed=seed, scale=scale)


def reference_endpoint(gm: GaussianMixture, schedule: Schedule, x_T: torch.Tensor) -> torch.Tensor:
    """The exact PF-ODE endpoint at σ̃ = 0 from x_T at t_max (module docstring)."""
    t_max = torch.tensor(schedule.t_max, dtype=F64)
    edm = EDMSchedule(sigma_min=REFERENCE_SIGMA, sigma_max=float(schedule.sigma_tilde(t_max)))
    p = Parameterization("eps")
    den = Denoiser(gm.network(edm, p), edm, p)
    grid = torch.tensor([1.0, edm.t_min, 0.0], dtype=F64)
    return SAMPLERS["dopri5"].fn(den, x_T.to(F64) / schedule.alpha(t_max), grid, rtol=1e-12, atol=1e-12)


def make_case(family: str, dim: int, n: int, seed: int = 0, scale: float = 0.1) -> Case:
    sch = SCHEDULES[family]()
    gm = mixture(dim, seed, scale)
    p = Parameterization("eps")
    den = Denoiser(gm.network(sch, p), sch, p)
    x_T = sch.prior_sample((n, dim), generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    return Case(family, dim, sch, gm, den, x_T, reference_endpoint(gm, sch, x_T))


def error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Median over samples of ‖x − x_ref‖₂ (inf if anything diverged)."""
    if not torch.isfinite(x).all():
        return float("inf")
    return float((x.to(F64) - ref).norm(dim=1).median())


def steps_for(name: str, nfe: int) -> int:
    """The most steps whose network calls fit in ``nfe``: k·(steps − 1) + 1 ≤ nfe for k calls per step
    (the last step to σ̃ = 0 costs one call)."""
    k = SAMPLERS[name].nfe_per_step
    return max(1, int((nfe - 1) // k) + 1)
