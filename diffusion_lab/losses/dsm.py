"""Denoising score matching in any parameterization, with a weighting λ(t) (Vincent 2011, "A
Connection Between Score Matching and Denoising Autoencoders"; Ho et al. 2020; Song et al. 2021).

For x_0 ~ data, t ~ the time sampler, ε ~ N(0, I), x_t = α(t) x_0 + σ(t) ε, the network's output
F = net(net_inputs(x_t, t)) is regressed onto its parameterization's target y(x_0, ε, t)
(``Parameterization.target``: ε, x_0, −ε/σ, v, u = α̇ x_0 + σ̇ ε or EDM's F*):

    L(θ) = E_{t, x_0, ε} [ m(t) · mean_dims (F − y)² ],     m(t) = w(t)/k²(t),

where w(t) is the weighting in x_0 space and k² the exact factor between the target space and
x_0 space (``weighting``), so that L = E[w(t) ‖x̂_0 − x_0‖²/dim] whatever the parameterization.
With the score target, DSM equals the (implicit) score-matching objective up to a constant
independent of θ (Vincent 2011): the minimiser is the true score ∇ log p_t.

``RectifiedFlowLoss`` is the same loss with the velocity-space MSE, ‖û − (ε − x_0)‖² on the
linear path α = 1 − t, σ = t (Liu et al. 2023, "Flow Straight and Fast"; their x_0 − ε with noise
at t = 0, the sign flips with the time direction). Its ``coupling`` pairs noise and data within the
minibatch (independent, exact OT, Sinkhorn, Schrödinger bridge: ``diffusion_lab.flows.couplings``), and
a ``noise`` argument takes the noise of a given coupling instead (reflow on generated pairs).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.losses.base import Loss, LossOutput, gaussian_noise, mean_flat, schedule_name
from diffusion_lab.losses.time_sampling import TimeSampler
from diffusion_lab.losses.weighting import WEIGHTINGS, param_space, target_multiplier
from diffusion_lab.parameterization import Parameterization
from diffusion_lab.schedules.base import Schedule


class DenoisingScoreMatching(Loss):
    """DSM with ``weighting`` in WEIGHTINGS (see ``weighting``) and a time sampler.

    Args:
        weighting: "simple" (MSE on the network's own target), "likelihood", "snr", "min_snr",
            "edm", or a space name ("eps", "x0", "score", "v", "velocity") for the MSE in that space.
        time_sampler: a TimeSampler or "uniform" / "log_normal" / "importance".
        min_snr_gamma: γ of min-SNR weighting.
        sigma_data: σ_d of the edm weighting; null takes the edm parameterization's (else 0.5).
    """

    name = "dsm"

    def __init__(
        self,
        weighting: str = "simple",
        time_sampler: TimeSampler | str | None = None,
        min_snr_gamma: float = 5.0,
        sigma_data: float | None = None,
    ):
        super().__init__(time_sampler)
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown loss.weighting {weighting!r}; choose one of {WEIGHTINGS}.")
        if not min_snr_gamma > 0:
            raise ValueError(f"loss.min_snr_gamma must be positive, got {min_snr_gamma}.")
        if sigma_data is not None and not sigma_data > 0:
            raise ValueError(f"loss.sigma_data must be positive or null, got {sigma_data}.")
        self.weighting = weighting
        self.min_snr_gamma = float(min_snr_gamma)
        self.sigma_data = sigma_data

    def _sigma_data(self, parameterization: Parameterization) -> float:
        if self.sigma_data is not None:
            return float(self.sigma_data)
        _, sd = param_space(parameterization)
        return sd if sd is not None else 0.5

    def validate(self, schedule: Schedule, parameterization: Parameterization) -> None:
        super().validate(schedule, parameterization)
        _, sd = param_space(parameterization)
        if self.weighting == "edm" and self.sigma_data is not None and sd is not None and abs(sd - self.sigma_data) > 1e-12:
            raise ValueError(
                f"loss={self.name}: loss.sigma_data={self.sigma_data} differs from parameterization.sigma_data={sd}; "
                f"set loss.sigma_data to null to use the parameterization's."
            )

    def multiplier(self, schedule: Schedule, parameterization: Parameterization, t: Tensor) -> Tensor:
        """m(t) on the MSE of the network's own target (float64, (B,))."""
        return target_multiplier(
            self.weighting, schedule, parameterization, t,
            min_snr_gamma=self.min_snr_gamma, sigma_data=self._sigma_data(parameterization),
        )

    def regression(self, pred: Tensor, x0: Tensor, eps: Tensor, t: Tensor, schedule: Schedule,
                   parameterization: Parameterization) -> Tensor:
        """Per-sample m(t) · mean_dims (F − y)², shape (B,)."""
        target = parameterization.target(x0, eps, t, schedule)
        dtype = torch.promote_types(pred.dtype, target.dtype)  # a bf16/fp16 output is scored in the data's precision
        mse = mean_flat((pred.to(dtype) - target.to(dtype)) ** 2)
        return self.multiplier(schedule, parameterization, t).to(mse.dtype) * mse

    def __call__(self, model, x0, *, generator=None, net_kwargs=None) -> LossOutput:
        self._check(model)
        schedule, parameterization = model.schedule, model.parameterization
        t, w, eps, x_t = self._draw(x0, schedule, generator)
        out = model.output(x_t, t, **(net_kwargs or {}))
        per_sample = self.regression(out.prediction, x0, eps, t, schedule, parameterization)
        return self._finish(per_sample, w, t, {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weighting={self.weighting!r}, time_sampler={self.time_sampler!r})"


class RectifiedFlowLoss(DenoisingScoreMatching):
    """‖û − (ε − x_0)‖² (per dim) on the rectified-flow path α = 1 − t, σ = t (Liu et al. 2023):
    DSM with the velocity-space MSE, for any parameterization (plain MSE for ``velocity``).

    Args:
        coupling: how the minibatch's noise is paired with its data (``flows.couplings.COUPLINGS``):
            "independent" (as drawn), "exact_ot", "sinkhorn", "schrodinger_bridge" (Tong et al. 2023).
        coupling_reg: the entropic regularisation of "sinkhorn" (squared data units; the cost is not
            normalised); "schrodinger_bridge" uses 2σ².
        sigma: the bridge noise σ of "schrodinger_bridge": x_t gains σ √(t(1 − t)) ξ and the target its
            derivative (velocity parameterization only).

    ``loss(model, x0, noise=z)`` uses the given noise z (shape of x0), pair i with pair i, instead of
    drawing it: the reflow of Liu et al. 2023 (their (Z_0, Z_1) = our (z, x0)), and distillation with a
    ``time_sampler`` on the k-step grid (``flows.distill``).

    For the velocity MSE on other paths use ``DenoisingScoreMatching(weighting="velocity")``.
    """

    name = "rectified_flow"
    #: accepts ``noise=`` (the batches of dataset=pairs)
    takes_noise = True

    def __init__(self, time_sampler: TimeSampler | str | None = None, coupling: str = "independent",
                 coupling_reg: float | None = None, sigma: float = 0.0):
        super().__init__(weighting="velocity", time_sampler=time_sampler)
        from diffusion_lab.flows.couplings import check_coupling

        sigma = float(sigma or 0.0)
        check_coupling(coupling, coupling_reg, sigma)
        self.coupling, self.sigma = coupling, sigma
        self.coupling_reg = float(coupling_reg) if coupling_reg is not None else None

    def validate(self, schedule: Schedule, parameterization: Parameterization) -> None:
        super().validate(schedule, parameterization)
        t = torch.linspace(schedule.t_min, schedule.t_max, 7, dtype=torch.float64)
        if not (torch.allclose(schedule.alpha(t), 1 - t, atol=1e-9) and torch.allclose(schedule.sigma(t), t, atol=1e-9)):
            raise ValueError(
                f"loss=rectified_flow needs the linear path α=1−t, σ=t (schedule=rectified_flow); "
                f"{schedule_name(schedule)} is not it (for the velocity MSE on other paths use loss.weighting=velocity with loss=dsm)."
            )
        if self.coupling == "schrodinger_bridge" and parameterization.kind != "velocity":
            raise ValueError(f"loss.coupling=schrodinger_bridge regresses the bridge's velocity, which needs "
                             f"parameterization=velocity (got {parameterization.kind}).")

    def __call__(self, model, x0, *, generator=None, net_kwargs=None, noise: Tensor | None = None) -> LossOutput:
        from diffusion_lab.flows import couplings

        self._check(model)
        schedule, parameterization = model.schedule, model.parameterization
        dtype = x0.dtype if x0.is_floating_point() else torch.float32
        t, w = self.time_sampler.sample(x0.shape[0], schedule, device=x0.device, dtype=dtype, generator=generator)
        if noise is not None:
            if self.coupling != "independent":
                raise ValueError(f"loss.coupling={self.coupling} re-pairs fresh noise, but the batches carry their own "
                                 "(dataset=pairs: reflow keeps pair i with pair i); set loss.coupling=independent.")
            if noise.shape != x0.shape:
                raise ValueError(f"the batch's noise has shape {tuple(noise.shape)} but its data {tuple(x0.shape)}; "
                                 "the pairs must have the data's shape.")
            eps = noise.to(device=x0.device, dtype=x0.dtype)
        else:
            eps = gaussian_noise(x0, generator)
            if self.coupling != "independent":
                reg = couplings.bridge_reg(self.sigma) if self.coupling == "schrodinger_bridge" else self.coupling_reg
                eps = couplings.couple(x0, eps, self.coupling, reg, generator)
        x_t = schedule.add_noise(x0, eps, t)
        if self.coupling == "schrodinger_bridge":
            xi = gaussian_noise(x0, generator)
            tb = t.reshape(-1, *([1] * (x0.dim() - 1)))
            x_t = x_t + couplings.bridge_std(tb, self.sigma) * xi
        out = model.output(x_t, t, **(net_kwargs or {}))
        if self.coupling == "schrodinger_bridge":
            target = (eps - x0) + couplings.bridge_velocity_noise(tb, self.sigma) * xi
            dt = torch.promote_types(out.prediction.dtype, target.dtype)
            per_sample = mean_flat((out.prediction.to(dt) - target.to(dt)) ** 2)
        else:
            per_sample = self.regression(out.prediction, x0, eps, t, schedule, parameterization)
        return self._finish(per_sample, w, t, {})

    def __repr__(self) -> str:
        extra = "" if self.coupling == "independent" else f", coupling={self.coupling!r}"
        return f"RectifiedFlowLoss(time_sampler={self.time_sampler!r}{extra})"
