"""Samplers × NFE: one configured sampler expanded into the same sampler at several budgets of network
function evaluations (NFE), so that a study compares samplers at equal cost.

A sampler of k calls per step (``nfe_per_step`` of ``samplers.base.register``) spends over S steps

    NFE(S) = k·(S − 1) + 1    every step but the last costs k calls; the last step to σ = 0 is one
                              first-order call (EDM's Heun with 18 steps is 2·17 + 1 = 35 NFE, Karras et
                              al. 2022, Alg. 1); for k = 1 this is S: DDIM, DPM-Solver++(2M), UniPC, DDPM,
                              Euler–Maruyama, ...
    NFE(S) = c·S + p·(S − 1) + 1   predictor–corrector (Song et al. 2021b, Alg. 1): c Langevin corrector
                              calls at every level, the last included, a predictor call (p = 1, or 0 for
                              ``predictor: none``) at every level but the last, where x̂0 is one call
                              (c = p = 1: 2S, score SDE's count)
    NFE(S) = n·S              annealed Langevin: n steps per level

and ``steps_for_nfe`` returns the largest S with NFE(S) ≤ the budget (at least 1). The NFE the table
reports is the one the denoiser counted, never this formula.

An adaptive solver (dopri5) picks its own steps: it is swept over error tolerances instead
(``rtol = atol`` ∈ ``tolerances``), and its rows carry the NFE it spent.

A row's ``family`` is the curve it belongs to: the sampler's label without the step count
(``heun_9`` → ``heun``, ``ddim_eta1_20`` → ``ddim_eta1``, ``dopri5_tol1e-03`` → ``dopri5``).
"""

from __future__ import annotations

import copy
import re
from typing import Mapping, Sequence

from diffusion_lab.samplers import Sampler

#: samplers that choose their own step sizes (swept over tolerances, not steps)
ADAPTIVE = ("dopri5",)


def nfe_of_steps(sampler: Sampler, steps: int) -> int:
    """The NFE of ``steps`` steps of ``sampler`` with its options (see the module docstring)."""
    opts = sampler.options
    if sampler.name == "pc":
        c = int(opts.get("corrector_steps", 1))
        p = 0 if opts.get("predictor", "reverse_diffusion") == "none" else 1
        return c * steps + p * (steps - 1) + 1
    if sampler.name == "annealed_langevin":
        return int(opts.get("n_steps_each", sampler.spec.nfe_per_step)) * steps
    return int(sampler.spec.nfe_per_step) * (steps - 1) + 1


def steps_for_nfe(sampler: Sampler, nfe: int) -> int:
    """The largest number of steps whose NFE is at most ``nfe`` (at least one step)."""
    if nfe < 1:
        raise ValueError(f"an NFE budget of {nfe} is not positive; give budgets ≥ 1.")
    steps = 1
    while nfe_of_steps(sampler, steps + 1) <= nfe:
        steps += 1
    return steps


def family_of(sampler: Sampler) -> str:
    """The curve a sampler's rows belong to: its label without a trailing ``_<steps>`` / ``_tol<...>``."""
    label = sampler.label
    for suffix in (f"_{sampler.steps}",):
        if label.endswith(suffix) and len(label) > len(suffix):
            return label[: -len(suffix)]
    m = re.fullmatch(r"(.+)_tol[0-9.eE+-]+", label)
    return m.group(1) if m else label


def _budgets(nfe: Sequence[int] | Mapping[str, Sequence[int]], kind: str) -> list[int]:
    if isinstance(nfe, Mapping):
        if kind not in nfe:
            raise ValueError(f"evaluation.nfe has no budgets for {kind} samplers; give nfe.{kind}: [10, 20, ...] "
                             f"(the keys are ODE and SDE) or one list for all.")
        nfe = nfe[kind]
    out = [int(v) for v in nfe]
    if not out or any(v < 1 for v in out):
        raise ValueError(f"evaluation.nfe={list(nfe)!r} must be a non-empty list of positive integers.")
    return out


def expand(samplers: Sequence[Sampler], nfe: Sequence[int] | Mapping[str, Sequence[int]],
           tolerances: Sequence[float] = (1e-2, 1e-3, 1e-4)) -> list[Sampler]:
    """Each sampler at each NFE budget of its kind (``nfe``: one list, or ``{ODE: [...], SDE: [...]}``),
    an adaptive one at each tolerance; labelled ``<family>_<steps>`` / ``<family>_tol<tol>``. Budgets
    that give the same number of steps are evaluated once."""
    out: list[Sampler] = []
    for s in samplers:
        fam = family_of(s)
        if s.name in ADAPTIVE:
            for tol in tolerances:
                c = copy.copy(s)
                c.options = {**s.options, "rtol": float(tol), "atol": float(tol)}
                c.label = f"{fam}_tol{float(tol):.0e}"
                out.append(c)
            continue
        seen: set[int] = set()
        for budget in _budgets(nfe, s.kind):
            steps = steps_for_nfe(s, budget)
            if steps in seen:
                continue
            seen.add(steps)
            c = copy.copy(s)
            c.steps, c.options, c.label = steps, dict(s.options), f"{fam}_{steps}"
            out.append(c)
    return out
