"""Samplers: one module per family, sharing the time grid (``grids``), the Adams step to σ̃ = 0
(``adams``) and the registry/runner (``base``); each sees the model through the adapter
``diffusion_lab.denoiser.Denoiser`` (re-exported here), which counts the NFE. Importing this package
imports every family module, whose ``@register`` decorators fill ``SAMPLERS``;
``Sampler(name, steps=..., grid=..., **options)`` runs one."""

from diffusion_lab.samplers import (  # noqa: F401  (each family module registers its samplers)
    adaptive,
    ddim,
    ddpm,
    deis,
    dpm_solver,
    dpm_solver_pp,
    edm_stochastic,
    forward_process,
    langevin,
    lms,
    pf_ode,
    sde,
    sde_dpm_solver,
    unipc,
)
from diffusion_lab.samplers.base import SAMPLERS, Sampler, SampleResult, register
from diffusion_lab.denoiser import CountingNetwork, Denoiser
from diffusion_lab.samplers.grids import GRIDS, time_grid

__all__ = ["SAMPLERS", "Sampler", "SampleResult", "register", "Denoiser", "CountingNetwork", "GRIDS", "time_grid"]
