"""diffusers and k-diffusion samplers on the benchmark's problem (the ``bench`` extra).

Every sampler below integrates the same probability-flow ODE as ours: in EDM's coordinates
x̃ = x/α, σ̃ = σ/α the ODE dx̃/dσ̃ = (x̃ − x̂_0(x̃; σ̃))/σ̃ depends only on the data p_0 (Karras et al.
2022, Eq. 4), and the "network" is the exact x̂_0 of the Gaussian mixture at the noise level the
external sampler asks about:

* k-diffusion (Crowson, ``k_diffusion.sampling``) calls ``model(x̃, σ̃) → x̂_0`` directly; its grids
  (``get_sigmas_karras``/``_exponential``) run from σ̃(t_max) to σ̃(t_min), then 0, of our schedule.
* diffusers VP schedulers (DDPM schedule only) call ``unet(x_in, timestep) → ε̂`` with x_in in the
  VP coordinates x = α x̃ and a timestep τ ∈ [0, T − 1] (τ ↔ our t = (τ + 1)/T); a non-integer τ
  (Karras sigmas in the Euler-type schedulers) is read as diffusers reads it, log σ interpolated
  linearly between the integer timesteps, from the scheduler's own ᾱ table.
* diffusers EDM schedulers (EDM schedule) call ``unet(c_in x̃, c_noise) → F`` with
  c_noise = ¼ log σ̃ and return F = (x̂_0 − c_skip x̃)/c_out, so that their preconditioning
  gives back the exact x̂_0.

Each runner starts from the same x_T (converted to the coordinates the sampler works in) and returns
the data estimate in x̃ at σ̃ = 0 (= x_0) and the number of network calls it made. ``discover``
finds, for an NFE budget, the largest step count whose calls fit in it (a dry run with a zero
network). The k-diffusion package's ``__init__`` imports its training stack (CLIP, clean-fid, kornia,
dctorch, which pins numpy < 2): only ``k_diffusion/sampling.py`` is needed here, so ``kdiffusion``
loads that module without the package ``__init__``.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import sys
import types
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

F64 = torch.float64


def kdiffusion():
    """``k_diffusion.sampling`` without the package ``__init__`` (module docstring); None if missing."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        return None
    if "k_diffusion" not in sys.modules:
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["k_diffusion"] = pkg
    from k_diffusion import sampling  # noqa: E402

    return sampling


def diffusers_available() -> bool:
    return importlib.util.find_spec("diffusers") is not None


@dataclass
class Problem:
    """The x̃ problem: x̂_0(x̃, σ̃) (exact), the start x̃_T at σ̃_max, the range [σ̃_min, σ̃_max], and for
    the DDPM schedule its β table (diffusers VP schedulers)."""

    x0: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x̃ (B, D), σ̃ (B,)) → x̂_0
    x_tilde_T: torch.Tensor
    sigma_min: float
    sigma_max: float
    kind: str  # "ddpm" | "edm"
    betas: np.ndarray | None = None
    calls: int = field(default=0)

    def denoise(self, x_tilde: torch.Tensor, sigma) -> torch.Tensor:
        self.calls += 1
        sigma = torch.as_tensor(sigma, dtype=F64).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(x_tilde.shape[0])
        return self.x0(x_tilde.to(F64), sigma)


# ----------------------------------------------------------------------------------------- k-diffusion
KD_SAMPLERS = {  # name → (function name, extra kwargs, NFE of n grid intervals)
    "kd_euler": ("sample_euler", {}, lambda n: n),
    "kd_heun": ("sample_heun", {}, lambda n: 2 * n - 1),
    "kd_dpm_2": ("sample_dpm_2", {}, lambda n: 2 * n - 1),
    "kd_lms": ("sample_lms", {}, lambda n: n),
    "kd_dpmpp_2m": ("sample_dpmpp_2m", {}, lambda n: n),
    "kd_dpmpp_3m": ("sample_dpmpp_3m_sde", {"eta": 0.0}, lambda n: n),  # η = 0: the deterministic 3M
}
KD_GRIDS = ("karras", "exponential")


def run_kdiffusion(prob: Problem, name: str, grid: str, nfe: int) -> tuple[torch.Tensor, int] | None:
    K = kdiffusion()
    fn_name, kw, nfe_of = KD_SAMPLERS[name]
    n = max((k for k in range(1, nfe + 1) if nfe_of(k) <= nfe), default=None)
    if n is None:
        return None
    if grid == "karras":
        sigmas = K.get_sigmas_karras(n, prob.sigma_min, prob.sigma_max)
    else:
        sigmas = K.get_sigmas_exponential(n, prob.sigma_min, prob.sigma_max)
    # k-diffusion builds the grid in float32: rebuild it in float64 (same formula) so that only the
    # algorithm differs from ours, not the rounding of σ
    sigmas = _kd_grid64(grid, n, prob.sigma_min, prob.sigma_max) if sigmas.dtype != F64 else sigmas
    model = _KDModel(prob)
    prob.calls = 0
    x = getattr(K, fn_name)(model, prob.x_tilde_T.clone(), sigmas, disable=True, **kw)
    return x, prob.calls


def _kd_grid64(grid: str, n: int, lo: float, hi: float) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n, dtype=F64)
    if grid == "karras":
        rho = 7.0
        s = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    else:
        s = torch.exp(math.log(hi) + ramp * (math.log(lo) - math.log(hi)))
    return torch.cat([s, torch.zeros(1, dtype=F64)])


class _KDModel:
    def __init__(self, prob: Problem):
        self.prob = prob

    def __call__(self, x, sigma, **_):
        return self.prob.denoise(x, sigma)


# ----------------------------------------------------------------------------------------- diffusers
#: name → (scheduler class, constructor options); DDPM-schedule (VP) schedulers
DIFFUSERS_VP = {
    "df_ddim": ("DDIMScheduler", {"set_alpha_to_one": True, "clip_sample": False}),
    "df_pndm": ("PNDMScheduler", {"skip_prk_steps": True, "set_alpha_to_one": True}),
    "df_euler": ("EulerDiscreteScheduler", {}),
    "df_heun": ("HeunDiscreteScheduler", {}),
    "df_lms": ("LMSDiscreteScheduler", {}),
    "df_kdpm2": ("KDPM2DiscreteScheduler", {}),
    "df_dpmpp_2m": ("DPMSolverMultistepScheduler", {"solver_order": 2}),
    "df_dpmpp_3m": ("DPMSolverMultistepScheduler", {"solver_order": 3}),
    "df_dpmpp_2m_lu": ("DPMSolverMultistepScheduler", {"solver_order": 2, "use_lu_lambdas": True}),
    "df_dpmpp_3m_lu": ("DPMSolverMultistepScheduler", {"solver_order": 3, "use_lu_lambdas": True}),
    "df_dpm_2s": ("DPMSolverSinglestepScheduler", {"solver_order": 2}),
    "df_dpm_3s": ("DPMSolverSinglestepScheduler", {"solver_order": 3}),
    "df_unipc_2": ("UniPCMultistepScheduler", {"solver_order": 2}),
    "df_unipc_3": ("UniPCMultistepScheduler", {"solver_order": 3}),
    "df_unipc_2_bh1": ("UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh1"}),
    "df_unipc_3_bh1": ("UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh1"}),
    "df_deis_2": ("DEISMultistepScheduler", {"solver_order": 2}),
    "df_deis_3": ("DEISMultistepScheduler", {"solver_order": 3}),
}
#: spacings tried for each VP scheduler (diffusers' timestep_spacing, or Karras sigmas)
DIFFUSERS_VP_SPACINGS = ("linspace", "trailing", "karras")
#: name → (scheduler class, constructor options); EDM schedulers (EDM schedule only)
DIFFUSERS_EDM = {
    "df_edm_euler": ("EDMEulerScheduler", {}),
    "df_edm_dpmpp_2m": ("EDMDPMSolverMultistepScheduler", {"solver_order": 2}),
    "df_edm_dpmpp_3m": ("EDMDPMSolverMultistepScheduler", {"solver_order": 3}),
}
DIFFUSERS_EDM_SPACINGS = ("karras", "exponential")


def _vp_scheduler(prob: Problem, cls: str, opts: dict, spacing: str):
    import diffusers

    kw = dict(opts)
    if spacing == "karras":
        kw["use_karras_sigmas"] = True
    else:
        kw["timestep_spacing"] = spacing
    if spacing in ("karras",) and cls in ("DDIMScheduler", "PNDMScheduler"):
        return None  # no Karras option
    if kw.get("use_lu_lambdas") and spacing == "karras":
        return None
    sched_cls = getattr(diffusers, cls)
    if "timestep_spacing" in kw and "timestep_spacing" not in inspect.signature(sched_cls.__init__).parameters:
        if spacing != "linspace":
            return None  # the scheduler has one fixed spacing: run it once, as "linspace"
        del kw["timestep_spacing"]
    return sched_cls(num_train_timesteps=len(prob.betas), trained_betas=prob.betas.tolist(), prediction_type="epsilon",
                     **kw)


def _edm_scheduler(prob: Problem, cls: str, opts: dict, spacing: str):
    import diffusers

    return getattr(diffusers, cls)(sigma_min=prob.sigma_min, sigma_max=prob.sigma_max, sigma_schedule=spacing,
                                   prediction_type="epsilon", **opts)


class _VPUnet:
    """ε̂ at (x_in, τ): σ̃ from the scheduler's own ᾱ table, log σ̃ interpolated at fractional τ."""

    def __init__(self, prob: Problem, sched):
        self.prob = prob
        ab = np.asarray(sched.alphas_cumprod, dtype=np.float64)
        self.log_sigmas = np.log(np.sqrt((1.0 - ab) / ab))

    def __call__(self, x_in: torch.Tensor, tau) -> torch.Tensor:
        tau = float(tau)
        st = math.exp(float(np.interp(tau, np.arange(len(self.log_sigmas)), self.log_sigmas)))
        x_tilde = x_in.to(F64) * math.sqrt(1.0 + st * st)
        return (x_tilde - self.prob.denoise(x_tilde, st)) / st


class _EDMUnet:
    def __init__(self, prob: Problem, sched):
        self.prob, self.sd = prob, float(sched.config.sigma_data)

    def __call__(self, x_in: torch.Tensor, c_noise) -> torch.Tensor:
        st = math.exp(4.0 * float(c_noise))
        c_in = 1.0 / math.sqrt(st * st + self.sd**2)
        c_skip = self.sd**2 / (st * st + self.sd**2)
        c_out = st * self.sd / math.sqrt(st * st + self.sd**2)
        x = x_in.to(F64) / c_in
        return (self.prob.denoise(x, st) - c_skip * x) / c_out


def _run_diffusers_once(prob: Problem, name: str, spacing: str, steps: int, dry: bool) -> tuple[torch.Tensor, int] | None:
    table = DIFFUSERS_EDM if prob.kind == "edm" else DIFFUSERS_VP
    cls, opts = table[name]
    sched = (_edm_scheduler if prob.kind == "edm" else _vp_scheduler)(prob, cls, opts, spacing)
    if sched is None:
        return None
    try:
        sched.set_timesteps(steps)
    except Exception:  # noqa: BLE001 (a step count the scheduler rejects)
        return None
    unet = (_EDMUnet if prob.kind == "edm" else _VPUnet)(prob, sched)
    # the sample in the scheduler's coordinates: VP x for DDIM/PNDM/DPM/UniPC/DEIS, x̃ for Euler-type and EDM
    vp = prob.kind == "ddpm" and float(sched.init_noise_sigma) == 1.0
    st0 = prob.sigma_max
    x = prob.x_tilde_T.clone() / (math.sqrt(1.0 + st0 * st0) if vp else 1.0)
    calls = 0
    for tau in sched.timesteps:
        x_in = sched.scale_model_input(x, tau)
        calls += 1
        out = torch.zeros_like(x) if dry else unet(x_in, tau)
        x = sched.step(out.to(x.dtype), tau, x).prev_sample
    return x, calls


def run_diffusers(prob: Problem, name: str, spacing: str, nfe: int) -> tuple[torch.Tensor, int] | None:
    """The largest step count whose network calls fit in ``nfe``, run on the problem."""
    steps = nfe
    while steps >= 1:
        dry = _run_diffusers_once(prob, name, spacing, steps, dry=True)
        if dry is None:
            steps -= 1
            continue
        if dry[1] <= nfe:
            break
        steps -= max(1, (dry[1] - nfe) // 2)
    if steps < 1:
        return None
    prob.calls = 0
    out = _run_diffusers_once(prob, name, spacing, steps, dry=False)
    if out is None:
        return None
    return out[0], prob.calls


def external_configs(kind: str) -> list[tuple[str, str, str]]:
    """(library, sampler, spacing) triples available for a problem kind ("ddpm" or "edm")."""
    out: list[tuple[str, str, str]] = []
    if kdiffusion() is not None:
        out += [("k-diffusion", n, g) for n in KD_SAMPLERS for g in KD_GRIDS]
    if diffusers_available():
        if kind == "edm":
            out += [("diffusers", n, s) for n in DIFFUSERS_EDM for s in DIFFUSERS_EDM_SPACINGS]
        else:
            out += [("diffusers", n, s) for n in DIFFUSERS_VP for s in DIFFUSERS_VP_SPACINGS]
    return out


def run_external(prob: Problem, lib: str, name: str, spacing: str, nfe: int) -> tuple[torch.Tensor, int] | None:
    if lib == "k-diffusion":
        return run_kdiffusion(prob, name, spacing, nfe)
    return run_diffusers(prob, name, spacing, nfe)
