"""Score matching without the noise target: exact (implicit) and sliced, applied to p_t.

The network is read as a score ŝ(x, t) through the parameterization (``Prediction.score``; any
parameterization works since ŝ = −ε̂/σ). At t from the time sampler and x_t = α x_0 + σ ε ~ p_t:

* Exact / implicit score matching (Hyvärinen 2005, "Estimation of Non-Normalized Statistical
  Models by Score Matching", Thm. 1): ½ E‖ŝ − ∇ log p_t‖² = E[tr ∇_x ŝ + ½‖ŝ‖²] + const, the trace
  computed by autograd with one backward pass per dimension (so limited to ``max_dim``).
* Sliced score matching (Song, Garg, Shi & Ermon 2019, "Sliced Score Matching", Eq. 7–8): with
  random projections v, E[vvᵀ] = I (Rademacher or Gaussian),
      E_v[vᵀ ∇_x(vᵀ ŝ) + ½ (vᵀ ŝ)²]  =  tr ∇_x ŝ + ½‖ŝ‖²,
  one backward pass per projection; the variance-reduced form (SSM-VR) replaces ½(vᵀŝ)² by its
  exact expectation ½‖ŝ‖².

Scale. Per example we report m(t) · (‖ŝ‖² + 2 tr ∇ŝ)/D (twice Hyvärinen's objective, per dimension),
so that it equals the DSM loss with the same weighting and the score target, mean_dims (ŝ + ε/σ)²,
minus the θ-independent constant m(t)/σ² (Vincent 2011: E[ŝ·ε/σ] = −E[tr ∇ŝ] by Stein's lemma,
E‖ε‖²/(σ²D) = 1/σ²). The weighting is that of ``weighting`` moved into score space:
m = w/k²_score; "snr" (the default) gives m = σ² (Song & Ermon 2019's λ(σ) = σ²), "simple" m = 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.losses.base import Loss, LossOutput
from diffusion_lab.losses.time_sampling import TimeSampler
from diffusion_lab.losses.weighting import WEIGHTINGS, param_space, target_multiplier
from diffusion_lab.parameterization import Parameterization
from diffusion_lab.schedules.base import Schedule

PROJECTIONS = ("rademacher", "gaussian")


class _ScoreObjective(Loss):
    """Shared: draw x_t, read the network as a score with x_t requiring grad, apply the weighting."""

    gaussian_only = True  # the adapter reads x̂0 from the score by Tweedie's formula: Gaussian noise only

    def __init__(self, weighting: str, time_sampler: TimeSampler | str | None, min_snr_gamma: float, sigma_data: float | None):
        super().__init__(time_sampler)
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown loss.weighting {weighting!r}; choose one of {WEIGHTINGS}.")
        self.weighting, self.min_snr_gamma, self.sigma_data = weighting, float(min_snr_gamma), sigma_data

    def multiplier(self, schedule: Schedule, parameterization: Parameterization, t: Tensor) -> Tensor:
        """m(t) in score space (float64, (B,))."""
        sd = self.sigma_data
        if sd is None:
            _, sd = param_space(parameterization)
        return target_multiplier(self.weighting, schedule, parameterization, t, min_snr_gamma=self.min_snr_gamma,
                                 sigma_data=0.5 if sd is None else sd, space="score")

    def _score(self, model, x0, generator, net_kwargs) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(t, importance weight, x_t requiring grad, ŝ(x_t, t) flattened to (B, D))."""
        t, w, _, x_t = self._draw(x0, model.schedule, generator)
        x = x_t.detach().requires_grad_(True)
        score = model.read(model.output(x, t, **(net_kwargs or {})), x, t).score
        return t, w, x, score.reshape(score.shape[0], -1)

    @staticmethod
    def _grad(y: Tensor, x: Tensor, create_graph: bool) -> Tensor:
        (g,) = torch.autograd.grad(y, x, create_graph=create_graph, retain_graph=True, allow_unused=True)
        if g is None:  # the score does not depend on x at all
            g = torch.zeros_like(x)
        return g.reshape(g.shape[0], -1)


class ScoreMatching(_ScoreObjective):
    """Exact (implicit) score matching, E[m(t)(‖ŝ‖² + 2 tr ∇_x ŝ)/D] (Hyvärinen 2005), for low-dim data.

    Args:
        weighting: as DSM's, applied in score space (default "snr": m = σ²).
        max_dim: refuse data with more dimensions (the trace costs D backward passes).
    """

    name = "score_matching"

    def __init__(self, weighting: str = "snr", time_sampler: TimeSampler | str | None = None, max_dim: int = 64,
                 min_snr_gamma: float = 5.0, sigma_data: float | None = None):
        super().__init__(weighting, time_sampler, min_snr_gamma, sigma_data)
        self.max_dim = int(max_dim)

    def __call__(self, model, x0, *, generator=None, net_kwargs=None) -> LossOutput:
        self._check(model)
        schedule, parameterization = model.schedule, model.parameterization
        D = x0[0].numel()
        if D > self.max_dim:
            raise ValueError(
                f"loss=score_matching computes tr ∇ŝ with one backward pass per dimension and the data has D={D} > "
                f"loss.max_dim={self.max_dim}; use loss=sliced_score_matching (or raise loss.max_dim)."
            )
        create_graph = torch.is_grad_enabled()
        with torch.inference_mode(False), torch.enable_grad():  # ∇_x is needed even in evaluation
            x0 = x0.clone() if x0.is_inference() else x0
            t, w, x, s = self._score(model, x0, generator, net_kwargs)
            trace = torch.zeros_like(s[:, 0])
            for j in range(D):
                trace = trace + self._grad(s[:, j].sum(), x, create_graph)[:, j]
            per = (s.pow(2).sum(1) + 2.0 * trace) / D
            per = self.multiplier(schedule, parameterization, t).to(per.dtype) * per
        if not create_graph:
            per = per.detach()
        return self._finish(per, w, t, {})


class SlicedScoreMatching(_ScoreObjective):
    """Sliced score matching (Song et al. 2019), E[m(t)(2 vᵀ∇_x(vᵀŝ) + (vᵀŝ)²)/D] over ``projections``
    random v (``distribution`` "rademacher" or "gaussian"); ``variance_reduction`` uses ‖ŝ‖² for (vᵀŝ)²."""

    name = "sliced_score_matching"

    def __init__(self, weighting: str = "snr", time_sampler: TimeSampler | str | None = None, projections: int = 1,
                 distribution: str = "rademacher", variance_reduction: bool = True, min_snr_gamma: float = 5.0,
                 sigma_data: float | None = None):
        super().__init__(weighting, time_sampler, min_snr_gamma, sigma_data)
        if projections < 1:
            raise ValueError(f"loss.projections must be >= 1, got {projections}.")
        if distribution not in PROJECTIONS:
            raise ValueError(f"unknown loss.distribution {distribution!r}; choose one of {PROJECTIONS}.")
        self.projections, self.distribution, self.variance_reduction = int(projections), distribution, bool(variance_reduction)

    def _directions(self, shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
        dev = generator.device if generator is not None else like.device
        if self.distribution == "gaussian":
            v = torch.randn(shape, generator=generator, device=dev, dtype=like.dtype)
        else:
            v = torch.randint(0, 2, shape, generator=generator, device=dev).to(like.dtype) * 2 - 1
        return v.to(like.device)

    def __call__(self, model, x0, *, generator=None, net_kwargs=None) -> LossOutput:
        self._check(model)
        schedule, parameterization = model.schedule, model.parameterization
        create_graph = torch.is_grad_enabled()
        with torch.inference_mode(False), torch.enable_grad():  # ∇_x is needed even in evaluation
            x0 = x0.clone() if x0.is_inference() else x0
            t, w, x, s = self._score(model, x0, generator, net_kwargs)
            B, D = s.shape
            v = self._directions((self.projections, B, D), s, generator)
            jac_terms, sq_terms = [], []
            for m in range(self.projections):
                vs = (v[m] * s).sum(1)  # vᵀŝ, (B,)
                g = self._grad(vs.sum(), x, create_graph)  # ∇_x(vᵀŝ) per example
                jac_terms.append((g * v[m]).sum(1))
                sq_terms.append(vs.pow(2))
            jac = torch.stack(jac_terms).mean(0)
            sq = s.pow(2).sum(1) if self.variance_reduction else torch.stack(sq_terms).mean(0)
            per = (sq + 2.0 * jac) / D
            per = self.multiplier(schedule, parameterization, t).to(per.dtype) * per
        if not create_graph:
            per = per.detach()
        return self._finish(per, w, t, {})
