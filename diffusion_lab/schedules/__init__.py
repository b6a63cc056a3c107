"""Schedules: the pair (α(t), σ(t)) of x_t = α x_0 + σ ε (data at t=0, noise at t=1) and everything
derived from it. See ``base`` for the interface and each module for its paper and math.

    DDPMLinearSchedule, CosineDiscreteSchedule   discrete β sequences on t_i = i/T (DiscreteSchedule)
    VPLinearSchedule, VPCosineSchedule           continuous variance-preserving
    SubVPSchedule                                 score SDE's sub-VP
    VESchedule, EDMSchedule                       α = 1 (NCSN / score SDE VE; Karras et al. 2022)
    RectifiedFlowSchedule                         α = 1 − t, σ = t
    PoissonFlowSchedule                           PFGM's z axis as σ = z (Xu et al. 2022), with its prior
    ZeroTerminalSNR(base)                         Lin et al. 2024 rescaling of any VP schedule
"""

from diffusion_lab.schedules.base import Schedule, broadcast_like
from diffusion_lab.schedules.cosine import VPCosineSchedule, cosine_alpha_bar
from diffusion_lab.schedules.discrete import CosineDiscreteSchedule, DDPMLinearSchedule, DiscreteSchedule
from diffusion_lab.schedules.edm import EDMSchedule
from diffusion_lab.schedules.poisson_flow import PFGMPrior, PoissonFlowSchedule, pfgm_hyperparameters
from diffusion_lab.schedules.rectified_flow import RectifiedFlowSchedule
from diffusion_lab.schedules.subvp import SubVPSchedule
from diffusion_lab.schedules.ve import VESchedule
from diffusion_lab.schedules.vp import VPLinearSchedule
from diffusion_lab.schedules.zero_snr import ZeroTerminalSNR

__all__ = [
    "Schedule",
    "broadcast_like",
    "DiscreteSchedule",
    "DDPMLinearSchedule",
    "CosineDiscreteSchedule",
    "VPLinearSchedule",
    "VPCosineSchedule",
    "cosine_alpha_bar",
    "SubVPSchedule",
    "VESchedule",
    "EDMSchedule",
    "RectifiedFlowSchedule",
    "ZeroTerminalSNR",
    "PoissonFlowSchedule",
    "PFGMPrior",
    "pfgm_hyperparameters",
]
