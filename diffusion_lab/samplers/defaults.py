"""The measured default grid of each ODE sampler per schedule family (what ``grid="auto"`` means).

Chosen by ``experiments/sampler_accuracy/defaults.py`` (tables in its DEFAULTS.md): for each sampler
with its default options and each family (``grids.FAMILIES``: discrete DDPM, continuous VP, VE, EDM,
rectified flow), the spacing × grid end with the lowest geometric-mean error against the exact
endpoint at σ = 0 over NFE 10, 15, 20 on a 2-D and a 16-D Gaussian mixture (ties within 5 % broken
at NFE 50–100). Each entry is (spacing, visit_t_min); ``visit_t_min=False`` ends the grid one step
above t_min (``grids``). On VE uniform ≡ λ and on EDM uniform ≡ Karras (ρ = 7) exactly, so only λ and
Karras appear there. The first-order samplers (DDIM, Euler, DPM-Solver-1, DPM-Solver++(1)) are one
algorithm and share one row. ``dopri5`` reads only the grid's ends.
"""

from __future__ import annotations

Q, QE, LE, KE, UE = ("quadratic", True), ("quadratic", False), ("lambda", False), ("karras", False), ("uniform", False)
FIRST_ORDER = {"discrete": Q, "vp": Q, "ve": LE, "edm": LE, "flow": QE}

#: sampler → family → (spacing, visit_t_min)
ODE_GRIDS: dict[str, dict[str, tuple[str, bool]]] = {
    "ddim": FIRST_ORDER,
    "euler": FIRST_ORDER,
    "dpm_solver_1": FIRST_ORDER,
    "dpm_solver_pp_1": FIRST_ORDER,
    "heun": {"discrete": QE, "vp": QE, "ve": KE, "edm": KE, "flow": UE},
    "rk4": {"discrete": QE, "vp": QE, "ve": LE, "edm": KE, "flow": KE},
    "dpm_solver_2": {"discrete": QE, "vp": QE, "ve": LE, "edm": KE, "flow": QE},
    "dpm_solver_3": {"discrete": Q, "vp": Q, "ve": LE, "edm": LE, "flow": ("uniform", True)},
    "dpm_solver_pp_2s": {"discrete": Q, "vp": Q, "ve": LE, "edm": LE, "flow": QE},
    "dpm_solver_pp_2m": {"discrete": QE, "vp": QE, "ve": LE, "edm": LE, "flow": QE},
    "dpm_solver_pp_3m": {"discrete": QE, "vp": QE, "ve": QE, "edm": LE, "flow": QE},
    "unipc_2": {"discrete": LE, "vp": LE, "ve": LE, "edm": LE, "flow": QE},
    "unipc_3": {"discrete": QE, "vp": QE, "ve": LE, "edm": LE, "flow": QE},
    "deis": {"discrete": QE, "vp": QE, "ve": LE, "edm": KE, "flow": QE},
    "lms": {"discrete": QE, "vp": QE, "ve": KE, "edm": KE, "flow": UE},
    "ipndm": {"discrete": Q, "vp": Q, "ve": LE, "edm": LE, "flow": QE},
    "dopri5": {f: ("lambda", True) for f in ("discrete", "vp", "ve", "edm", "flow")},
}
