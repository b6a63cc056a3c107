"""Reverse-SDE samplers of score-based generative modelling (Song et al. 2021, "Score-Based
Generative Modeling through Stochastic Differential Equations", §4 and App. E–G), for any schedule.

The forward SDE of a schedule is dx = f(t) x dt + g(t) dW with f = α̇/α, g² = 2σσ̇ − 2(α̇/α)σ²
(``schedules.base``); its reverse (Anderson 1982) is

    dx = [f(t) x − g²(t) ∇log p_t(x)] dt + g(t) dW̄,      run from t_max down to t_min.

All three samplers need the score ŝ = ∇log p_t = −ε̂/σ, which only a Gaussian noising model gives:
they call ``require_score`` first, which raises a clear error for a denoiser whose ``gives_score``
is False. Each step t → s of the grid (s < t, h = t − s):

* ``sde_euler_maruyama``  x_s = x_t − [f(t) x_t − g²(t) ŝ] h + g(t) √h z.
  Weak order 1 in h. Caution: on rectified flow f and g² grow like 1/(1 − t) near t = 1, so the
  explicit step is unstable unless h ≪ 1 − t_max (use ``reverse_diffusion`` there).
* ``reverse_diffusion``   the predictor of score SDE (App. E): discretize the *forward* SDE per step
  as x_t = x_s + F(x_s) + G z and reverse that discretization,
      x_s = x_t − F(x_t) + G² ŝ + G z.
  We take the exact Gaussian transition between s and t as the forward discretization:
  F(x) = (α_{t|s} − 1) x, G² = σ_{t|s}² = σ_t² − α_{t|s}² σ_s² (α_{t|s} = α_t/α_s). For the discrete
  VP chain this is score SDE's F = (√(1−β_i) − 1) x, G = √β_i; for VE it is F = 0,
  G² = σ_t² − σ_s², the two cases of the paper.
* ``pc``                  predictor–corrector (Alg. 1 of the paper, App. G): at each grid time t,
  ``corrector_steps`` Langevin steps targeting p_t,
      x ← x + ε ŝ + √(2ε) z,    ε = 2 a (snr · ‖z‖ / ‖ŝ‖)²,
  then the predictor (``euler_maruyama``, ``reverse_diffusion`` or ``none``) from t to s. a = α_{t|s}²:
  this is score SDE's α_i = 1 − β_i for VP and 1 for VE. As in score SDE, ‖z‖ and ‖ŝ‖ are
  averages over the batch of the per-sample norms: a step size computed from the same z it
  multiplies (or from this sample's own ‖ŝ(x)‖) biases the Langevin step's stationary law, which
  is visible in low dimensions (in 2-D a per-sample ‖z‖ doubles the injected noise variance).

The terminal step to the grid's 0 returns x̂_0 at t_min (Tweedie's denoising step, score SDE's
``denoise=True``); for ``pc`` it follows the correctors at t_min. NFE per step: 1 for the two
predictors; corrector_steps + 1 for ``pc`` (corrector_steps with ``predictor="none"``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.samplers.base import progress_steps, register
from diffusion_lab.posterior import transition
from diffusion_lab.samplers.exponential import is_terminal

PREDICTORS = ("euler_maruyama", "reverse_diffusion", "none")


def require_score(denoiser, sampler: str) -> None:
    """Raise if the denoiser cannot give the score ∇log p_t (a model without Gaussian noise)."""
    if not getattr(denoiser, "gives_score", True):
        raise ValueError(
            f"sampler {sampler!r} needs the score ∇log p_t, which this model cannot give (it is not a Gaussian "
            "noising model); use a deterministic sampler such as 'ddim', 'heun' or 'dpm_solver_pp_2m'."
        )


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def euler_maruyama_step(schedule, x: Tensor, score: Tensor, t: Tensor, s: Tensor,
                        generator: torch.Generator | None = None) -> Tensor:
    """x_s = x_t − [f(t) x_t − g²(t) ŝ](t − s) + g(t) √(t − s) z."""
    h = t - s
    f, g2 = schedule.drift(t), schedule.diffusion2(t)
    z = _randn_like(x, generator)
    return x - (f * x - g2 * score) * h + torch.sqrt(g2 * h) * z


def reverse_diffusion_step(schedule, x: Tensor, score: Tensor, t: Tensor, s: Tensor,
                           generator: torch.Generator | None = None) -> Tensor:
    """x_s = x_t − (α_{t|s} − 1) x_t + σ_{t|s}² ŝ + σ_{t|s} z (score SDE's reverse-diffusion predictor)."""
    a_ts, G2 = transition(schedule, t, s)
    z = _randn_like(x, generator)
    return (2.0 - a_ts) * x + G2 * score + torch.sqrt(G2) * z


def langevin_corrector(denoiser, x: Tensor, t: Tensor, n_steps: int, snr: float, a: Tensor | float = 1.0,
                       generator: torch.Generator | None = None) -> Tensor:
    """``n_steps`` Langevin steps x ← x + ε ŝ + √(2ε) z at time t with the signal-to-noise step rule
    ε = 2a(snr ‖z‖/‖ŝ‖)² (norms averaged over the batch; see the module docstring)."""
    for _ in range(n_steps):
        score = denoiser(x, t).score
        z = _randn_like(x, generator)
        g_norm = score.flatten(1).norm(dim=1).mean()
        z_norm = z.flatten(1).norm(dim=1).mean()
        eps = 2.0 * a * (snr * z_norm / g_norm) ** 2
        x = x + eps * score + torch.sqrt(2.0 * eps) * z
    return x


@register("sde_euler_maruyama", stochastic=True, order=1, nfe_per_step=1, default_grid="uniform", needs_score=True,
          description="reverse SDE, Euler–Maruyama (score SDE)")
def sample_euler_maruyama(denoiser, x: Tensor, grid: Tensor, *, generator: torch.Generator | None = None,
                          progress: bool = False) -> Tensor:
    """Euler–Maruyama for the reverse SDE dx = [f x − g² ŝ] dt + g dW̄ (Song et al. 2021);
    the terminal step returns x̂_0."""
    return _score_sde_loop(denoiser, x, grid, euler_maruyama_step, "sde_euler_maruyama", generator, progress)


def _score_sde_loop(denoiser, x: Tensor, grid: Tensor, step, name: str, generator, progress: bool) -> Tensor:
    """One score evaluation per step, then ``step(schedule, x, score, t, s, generator)``; x̂_0 at the end."""
    require_score(denoiser, name)
    sch = denoiser.schedule
    for _, t, s in progress_steps(grid, progress, name):
        pred = denoiser(x, t)
        if is_terminal(s, sch):
            return pred.x0
        x = step(sch, x, pred.score, t, s, generator)
    return x


@register("reverse_diffusion", stochastic=True, order=1, nfe_per_step=1, default_grid="uniform", needs_score=True,
          description="reverse-diffusion predictor (score SDE App. E)")
def sample_reverse_diffusion(denoiser, x: Tensor, grid: Tensor, *, generator: torch.Generator | None = None,
                             progress: bool = False) -> Tensor:
    """Reverse-diffusion predictor (Song et al. 2021, App. E): x_s = (2 − α_{t|s}) x_t + σ_{t|s}² ŝ + σ_{t|s} z;
    the terminal step returns x̂_0."""
    return _score_sde_loop(denoiser, x, grid, reverse_diffusion_step, "reverse_diffusion", generator, progress)


@register("pc", stochastic=True, order=1, nfe_per_step=2, default_grid="uniform", needs_score=True,
          description="predictor–corrector with the Langevin corrector (score SDE Alg. 1)")
def sample_pc(denoiser, x: Tensor, grid: Tensor, *, predictor: str = "reverse_diffusion", corrector_steps: int = 1,
              snr: float = 0.16, generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
    """Predictor–corrector sampling (Song et al. 2021, Alg. 1 / App. G): at each grid time,
    ``corrector_steps`` Langevin steps with step 2a(snr‖z‖/‖ŝ‖)², then the predictor to the next time;
    the terminal step returns x̂_0 after the correctors at t_min."""
    require_score(denoiser, "pc")
    if predictor not in PREDICTORS:
        raise ValueError(f"unknown predictor {predictor!r}; choose one of {PREDICTORS}.")
    if corrector_steps < 0:
        raise ValueError(f"corrector_steps must be >= 0, got {corrector_steps}.")
    sch = denoiser.schedule
    for _, t, s in progress_steps(grid, progress, "pc"):
        a = (sch.alpha(t) / sch.alpha(s)) ** 2  # score SDE's α_i: 1 − β_i for VP, 1 for VE
        x = langevin_corrector(denoiser, x, t, corrector_steps, snr, a, generator)
        if is_terminal(s, sch):
            return denoiser(x, t).x0
        if predictor == "none":
            continue
        score = denoiser(x, t).score
        step = euler_maruyama_step if predictor == "euler_maruyama" else reverse_diffusion_step
        x = step(sch, x, score, t, s, generator)
    return x
