"""Samplers: one module per family, sharing the time grid (``grids``) and the registry/runner
(``base``); each sees the model through the adapter ``diffusion_lab.denoiser.Denoiser`` (re-exported
here), which counts the NFE. Importing this package registers every
family; ``Sampler(name, steps=..., grid=..., **options)`` runs one."""

from diffusion_lab.samplers.base import SAMPLERS, Sampler, SampleResult, register
from diffusion_lab.denoiser import CountingNetwork, Denoiser
from diffusion_lab.samplers.grids import GRIDS, time_grid

# Sampler families (each registers itself on import).
from diffusion_lab.samplers import ddim  # noqa: F401,E402
from diffusion_lab.samplers import pf_ode  # noqa: F401,E402
from diffusion_lab.samplers import dpm_solver  # noqa: F401,E402
from diffusion_lab.samplers import dpm_solver_pp  # noqa: F401,E402
from diffusion_lab.samplers import unipc  # noqa: F401,E402
from diffusion_lab.samplers import adaptive  # noqa: F401,E402
from diffusion_lab.samplers import ddpm  # noqa: F401,E402
from diffusion_lab.samplers import sde  # noqa: F401,E402
from diffusion_lab.samplers import langevin  # noqa: F401,E402
from diffusion_lab.samplers import edm_stochastic  # noqa: F401,E402
from diffusion_lab.samplers import sde_dpm_solver  # noqa: F401,E402

__all__ = ["SAMPLERS", "Sampler", "SampleResult", "register", "Denoiser", "CountingNetwork", "GRIDS", "time_grid"]
