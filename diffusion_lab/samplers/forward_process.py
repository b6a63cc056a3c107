"""The sampler of general forward processes x_t = F_t(x_0, ε) (``diffusion_lab.forward``): x̂_0 from the model,
then a step to the next time of an even grid from 1 to 0 — ``update`` "corrected" (Cold Diffusion, Bansal
et al. 2023, Alg. 2: x_s = x_t − F_t(x̂_0) + F_s(x̂_0)), "naive" (Alg. 1: x_s = F_s(x̂_0, ε')) or "posterior"
(x_s ~ q(x_s | x_t, x̂_0): Gaussian processes). On a ``ForwardProcessSchedule`` it runs that process; on
a Gaussian schedule the process is D_t = α_t·, σ_t, where "corrected" is DDIM (η = 0) and "posterior"
DDPM's ancestral step (tests/test_forward_processes.py). ``steps`` steps = ``steps`` NFE (the last one
returns x̂_0); the grid's spacing is ignored (even in t).

On a discrete schedule (``schedule=absorbing`` / ``uniform``) the network's K logits per pixel give
p(x_0 | x_t) and the step is D3PM's (Austin et al. 2021): ``update=posterior`` draws
x_s ~ Σ_{x_0} q(x_s | x_t, x_0) p(x_0 | x_t), ``naive`` re-corrupts a draw of x̂_0 (``forward.discrete``);
the states travel as the schedule's float images (``encode`` / ``decode``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.forward.additive import GaussianProcess
from diffusion_lab.forward.sampling import sample_continuous, sample_discrete, uniform_grid
from diffusion_lab.losses.forward_process import category_logits
from diffusion_lab.samplers.base import register


@register("forward_process", stochastic=False, order=None, nfe_per_step=1, default_grid="uniform",
          description="x̂0 then F_s of a general forward process (cold diffusion corrected / naive / posterior)")
def sample_forward_process(denoiser, x: Tensor, grid: Tensor, *, update: str = "corrected",
                           generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
    """The x̂_0-then-step sampler on an even grid of len(grid) − 1 steps (module docstring)."""
    sch = denoiser.schedule
    if getattr(sch, "discrete", False):
        if update not in ("posterior", "naive"):
            raise ValueError(f"sampler.update={update} is for continuous processes; a discrete schedule "
                             f"(schedule={sch.kind}) samples with update=posterior or naive.")

        @torch.no_grad()
        def probs(states: Tensor, t: Tensor) -> Tensor:
            y = sch.encode(states).to(x.dtype)
            out = denoiser.raw(y, t.to(x.dtype), dtype=denoiser.dtype())
            return category_logits(out, y, sch.levels).movedim(2, -1).to(torch.float64).softmax(-1)

        states = sample_discrete(sch.process, probs, sch.decode(x), uniform_grid(len(grid) - 1).to(x.device), update,
                                 generator)
        return sch.encode(states).to(x.dtype)
    process = getattr(sch, "process", None) or GaussianProcess(sch)
    return sample_continuous(process, lambda y, t: denoiser(y, t).x0, x, uniform_grid(len(grid) - 1).to(x.device),
                             update, generator)
