"""The schedules the math tests run over (shared by the conversion-layer and oracle tests)."""

from __future__ import annotations

import torch

from diffusion_lab.parameterization import PARAMETERIZATIONS
from diffusion_lab.schedules import (
    CosineDiscreteSchedule,
    DDPMLinearSchedule,
    EDMSchedule,
    RectifiedFlowSchedule,
    SubVPSchedule,
    VESchedule,
    VPCosineSchedule,
    VPLinearSchedule,
    ZeroTerminalSNR,
)

F64 = torch.float64
#: every parameterization with a plain conversion (edm goes through its preconditioning)
PLAIN = [k for k in PARAMETERIZATIONS if k != "edm"]

SCHEDULES = {
    "vp": VPLinearSchedule,
    "ddpm": DDPMLinearSchedule,
    "cosine": VPCosineSchedule,
    "cosine_discrete": CosineDiscreteSchedule,
    "subvp": SubVPSchedule,
    "ve": VESchedule,
    "edm": EDMSchedule,
    "rectified_flow": RectifiedFlowSchedule,
    "zero_snr_ddpm": lambda: ZeroTerminalSNR(DDPMLinearSchedule()),
}
