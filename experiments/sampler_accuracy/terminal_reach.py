"""The reach of the last step to σ = 0 on the exact oracle (``adams.Tail``, option ``terminal_reach``).

    .venv/bin/python experiments/sampler_accuracy/terminal_reach.py

Each sampler with its defaults except ``terminal_reach`` ∈ {None (all predictions), 2, 4}; geometric
mean of the error to the exact endpoint at σ = 0 over 2-D and 16-D mixtures under the discrete DDPM,
EDM and rectified-flow schedules, at NFE 10–20 and at NFE 50–200. Prints a markdown table (quoted in
TRAINED.md, where the trained-model measurement that motivated the option is).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from diffusion_lab.samplers import Sampler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from problem import error, make_case, steps_for  # noqa: E402

SAMPLERS = ("dpm_solver_pp_2m", "dpm_solver_pp_3m", "unipc_2", "unipc_3", "deis", "ipndm", "heun")
REACHES = (None, 2.0, 4.0)
BUDGETS = {"NFE 10–20": (10, 15, 20), "NFE 50–200": (50, 100, 200)}


def main() -> None:
    torch.set_num_threads(1)
    cases = [make_case(f, d, 256) for f in ("discrete", "edm", "flow") for d in (2, 16)]
    print("| sampler | budget | " + " | ".join(f"reach {r}" for r in REACHES) + " |")
    print("|---|---|" + "---|" * len(REACHES))
    for name in SAMPLERS:
        for label, nfes in BUDGETS.items():
            cells = []
            for reach in REACHES:
                logs = [math.log(error(Sampler(name, steps=steps_for(name, n), terminal_reach=reach)(
                    c.denoiser, x_T=c.x_T, progress=False).x, c.ref)) for c in cases for n in nfes]
                cells.append(f"{math.exp(sum(logs) / len(logs)):.3e}")
            print(f"| {name} | {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
