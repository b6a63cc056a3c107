"""Annealed Langevin dynamics (Song & Ermon 2019, "Generative Modeling by Estimating Gradients of the
Data Distribution", Alg. 1), for any schedule.

The noise levels are the grid times t_1 > ... > t_L = t_min with σ_i = σ(t_i). At each level,
``n_steps_each`` unadjusted Langevin steps target p_{t_i}:

    x ← x + (α_i/2) ŝ(x, t_i) + √α_i z,      α_i = ε σ_i²/σ_L²,    z ~ N(0, I),

so the step is a fixed fraction ε/σ_L² of the level's noise variance (NCSN: ε = 2·10⁻⁵ with
σ_L = 0.01, i.e. ε/σ_L² = 0.2; that ratio is our default, ``eps=None``). On a VP schedule σ_i is the
noise scale of x itself (not σ̃), the scale on which p_{t_i} varies. The algorithm is biased for a
fixed ε (the unadjusted Langevin chain on N(0, v) has stationary variance v/(1 − α/(4v))); the bias
vanishes as ε → 0 with enough steps.

The terminal step of the grid (t_min → 0) replaces the last Langevin step of the last level by the
denoising step x ← x̂_0(x, t_min) (Tweedie; as added to NCSN by Song & Ermon 2020, "Improved
Techniques"), so the sampler makes exactly ``n_steps_each`` network calls per grid step. Needs the
score: ``require_score`` refuses a model that cannot give it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.samplers.base import progress_steps, register
from diffusion_lab.samplers.exponential import is_terminal
from diffusion_lab.samplers.sde import require_score

#: NCSN's ε/σ_L² (ε = 2e-5 at σ_L = 0.01)
NCSN_STEP_RATIO = 0.2
N_STEPS_EACH = 5


@register("annealed_langevin", stochastic=True, order=None, nfe_per_step=N_STEPS_EACH, default_grid="uniform",
          needs_score=True, description="annealed Langevin dynamics (NCSN, Song & Ermon 2019, Alg. 1)")
def sample_annealed_langevin(denoiser, x: Tensor, grid: Tensor, *, n_steps_each: int = N_STEPS_EACH,
                             eps: float | None = None, generator: torch.Generator | None = None,
                             progress: bool = False) -> Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1): per level t_i, ``n_steps_each`` steps
    x ← x + (α_i/2) ŝ + √α_i z with α_i = ε σ_i²/σ_L²; the last call denoises to x̂_0."""
    require_score(denoiser, "annealed_langevin")
    if n_steps_each < 1:
        raise ValueError(f"n_steps_each must be at least 1, got {n_steps_each}.")
    sch = denoiser.schedule
    t_last = grid[-2] if is_terminal(grid[-1], sch) else grid[-1]
    sigma_L = sch.sigma(t_last)
    if eps is None:
        eps = NCSN_STEP_RATIO * float(sigma_L) ** 2
    for _, t, s in progress_steps(grid, progress, "annealed_langevin"):
        sigma_i = sch.sigma(t)
        step = eps * sigma_i * sigma_i / (sigma_L * sigma_L)
        last = is_terminal(s, sch)
        n = n_steps_each - 1 if last else n_steps_each
        for _ in range(n):
            score = denoiser(x, t).score
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x = x + 0.5 * step * score + torch.sqrt(step) * z
        if last:
            return denoiser(x, t).x0
    # a grid without the terminal 0 (denoise_last=False): levels grid[:-1], no denoising step
    return x
