"""PFGM's training objective: the normalised empirical Poisson field (Xu et al. 2022, "Poisson Flow
Generative Models", Sec. 3.2, Alg. 1–2 and App. B.1).

Data y ∈ R^N sits on the z = 0 plane of R^{N+1}. The Poisson field of the data distribution at the
augmented point x̃ = (x, z) is E(x̃) = c ∫ (x̃ − ỹ)/‖x̃ − ỹ‖^{N+1} p(y) dy (the gradient of the Green's
function 1/‖x̃‖^{N−1} of R^{N+1}); over a reference batch {y_i} its empirical estimate points along

    Ê(x̃) ∝ Σ_i (x̃ − ỹ_i) / ‖x̃ − ỹ_i‖^{N+1},      ỹ_i = (y_i, 0).

The network learns the normalised field that points back to the data,

    v(x̃) = −√N · Ê/(‖Ê‖ + γ)                     (their Eq. 7 with the γ of App. B.1.2),

by the MSE at perturbed points (Alg. 2): m ~ U[0, M], z = |N(0, σ²)|·(1+τ)^m,
x = y + ‖N(0, σ² I_N)‖·(1+τ)^m·u with u uniform on the unit sphere (restrict_M: m ~ U[0, 0.7M] where
|z| < 0.005 before scaling). The weights 1/‖x̃ − ỹ_i‖^{N+1} are computed relative to the nearest
reference point, (d_min/d_i)^{N+1}, so that N = 3072 does not underflow.

``perturb`` and ``empirical_field`` live with the schedule (``schedules.poisson_flow``).

The paper perturbs a small batch and computes the field over the large batch it comes from; here
``small_batch_size`` points of each batch are perturbed and the whole batch is the reference (so set
``dataset.batch_size`` to the reference size, e.g. 2048 on 2-D data; the paper: 4096 and 128). The
per-sample loss is the mean over the N+1 coordinates of (v_θ − v)² (their sum, scaled by 1/(N+1)).
"""

from __future__ import annotations

import torch

from diffusion_lab.errors import ConfigError
from diffusion_lab.losses.base import Loss, LossOutput
from diffusion_lab.parameterization import Parameterization
from diffusion_lab.schedules.base import Schedule
from diffusion_lab.schedules.poisson_flow import empirical_field, perturb


class PoissonFieldLoss(Loss):
    """MSE of the network's normalised field against the empirical one (module docstring).

    Args:
        small_batch_size: how many points of each batch are perturbed (the rest only serve as the reference
            set of the field); None: all of them.
    """

    name = "pfgm"

    def __init__(self, small_batch_size: int | None = None):
        super().__init__(None)
        if small_batch_size is not None and int(small_batch_size) < 1:
            raise ValueError(f"loss.small_batch_size={small_batch_size} must be ≥ 1 (or null: the whole batch).")
        self.small_batch_size = None if small_batch_size is None else int(small_batch_size)

    def validate(self, schedule: Schedule, parameterization: Parameterization) -> None:
        from diffusion_lab.schedules.poisson_flow import PoissonFlowSchedule

        if not isinstance(schedule, PoissonFlowSchedule):
            raise ConfigError(f"loss=pfgm needs schedule=pfgm (the Poisson flow's z axis), got {type(schedule).__name__}; "
                              "use experiment=pfgm_gmm or pfgm_digits.")
        if parameterization.kind != "eps":
            raise ConfigError(f"loss=pfgm reads the network's field as ε̂ = v_x/v_z: set parameterization=eps, not "
                              f"{parameterization.kind}.")

    def __call__(self, model, x0, *, generator=None, net_kwargs=None) -> LossOutput:
        self._check(model)
        schedule = model.schedule
        if x0.flatten(1).shape[1] != schedule.data_dim:
            raise ConfigError(f"schedule.data_dim={schedule.data_dim} but the data have {x0.flatten(1).shape[1]} dimensions; "
                              "set schedule.data_dim to the data's (C·H·W for images).")
        reference = x0.flatten(1)
        small = reference[: self.small_batch_size] if self.small_batch_size else reference
        x, z = perturb(small, schedule, generator)
        with torch.no_grad():
            target = empirical_field(x, z, reference, schedule.gamma)
        t = schedule.t_of_z(z)
        x_shaped = x.to(x0.dtype).reshape(small.shape[0], *x0.shape[1:])
        x_in, label = model.parameterization.net_inputs(x_shaped, t.to(x0.dtype), schedule)
        field = model.net(x_in, label, field=True, **(net_kwargs or {}))  # (B, N+1): v_x then v_z
        if field.shape != target.shape:
            raise ConfigError(f"loss=pfgm needs a network that outputs the (N+1)-dimensional field, got shape "
                              f"{tuple(field.shape)}; use model=pfgm_mlp or pfgm_unet.")
        per_sample = (field.to(torch.float64) - target).pow(2).mean(1).to(x0.dtype)
        return self._finish(per_sample, torch.ones_like(per_sample), t.to(x0.dtype), {})

    def __repr__(self) -> str:
        return f"PoissonFieldLoss(small_batch_size={self.small_batch_size})"
