"""DDPM vs DDIM at small scale (Song, Meng & Ermon 2021a, Table 1): one model of the DDPM twin
(``experiment=ddpm_digits``: discrete linear β, T = 1000, L_simple), sampled with DDIM at η ∈ {0, 0.2, 0.5, 1}
and with DDPM's σ̂ (σ² = β) at S ∈ {10, 20, 50} steps of one quadratic timestep sub-sequence, all from
the same seeded noise (``conf/evaluation/paper_ddim.yaml``).

    python experiments/paper_ddim/run.py                 # trains the model if needed (~8 min on 2 CPU cores)
    python experiments/paper_ddim/run.py --ckpt <run>/checkpoints/last.ckpt

Writes RESULTS.md, results.csv and fid_vs_steps.png beside this file.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from study_common import RUNS, checkpoint, evaluate, fid_at, pivot, write_results  # noqa: E402

from diffusion_lab.evaluation.plots import plot_quality_vs_nfe  # noqa: E402

ETAS = ["ddim_eta0", "ddim_eta0.2", "ddim_eta0.5", "ddim_eta1"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--n", type=int, default=256)
    args = ap.parse_args()
    log: list[str] = []
    ckpt = checkpoint("ddpm_digits", log, ckpt=args.ckpt)
    out = RUNS / "paper_ddim"
    table = evaluate(ckpt, "paper_ddim", out, log, [f"evaluation.n={args.n}"])
    shutil.copy(out / "eval" / "table.csv", HERE / "results.csv")
    plot_quality_vs_nfe(table, ("fid",), HERE / "fid_vs_steps.png", title="DDIM η vs DDPM σ̂ (digits)")
    verdict = []
    wins = []
    for s in (10, 20, 50):
        e0, e1 = fid_at(table, "ddim_eta0", "steps", s), fid_at(table, "ddim_eta1", "steps", s)
        wins.append(e0 < e1)
        verdict.append(f"- S = {s}: DDIM η=0 FID {e0:.2f} vs η=1 {e1:.2f} → {'η=0 better' if e0 < e1 else 'η=0 NOT better'}")
    mono = []
    for s in (10, 20, 50):
        vals = [fid_at(table, f, "steps", s) for f in ETAS]
        rising, falling = (all(a <= b for a, b in zip(vals, vals[1:])), all(a >= b for a, b in zip(vals, vals[1:])))
        mono.append(rising or falling)
        verdict.append(f"- S = {s}: FID over η = 0, 0.2, 0.5, 1: " + " / ".join(f"{v:.2f}" for v in vals)
                       + (" (rises with η, as in the paper)" if rising else " (falls with η: the paper's order reversed)"
                          if falling else " (not monotone in η)"))
    sh = [fid_at(table, "ddpm_sigma_hat", "steps", s) for s in (10, 20, 50)]
    verdict.append("- σ̂ (σ² = β) at S = 10/20/50: " + " / ".join(f"{v:.2f}" for v in sh))
    verdict.insert(0, f"**{'Reproduces' if all(wins) else 'Partly reproduces' if any(wins) else 'Does not reproduce'}**: "
                   f"DDIM η=0 beats DDPM-like η=1 at {sum(wins)} of 3 step counts in 10–50. η interpolates (FID monotone "
                   f"in η) at {sum(mono)} of 3 step counts.")
    write_results(
        HERE / "RESULTS.md", "DDPM vs DDIM (Song et al. 2021a), small scale",
        "On a DDPM-trained model, the deterministic DDIM sampler (η = 0) gives better FID than DDPM-style "
        "stochastic sampling (η = 1) with few steps (CIFAR-10, S = 10/20/50: 13.36 / 6.84 / 4.67 against "
        "41.07 / 18.36 / 8.01), and η interpolates between them (η = 0.2, 0.5 in between); DDPM with the larger "
        "variance σ̂ is far worse at few steps (367.43 at S = 10) and only competitive near the full chain.",
        [f"Model: `experiment=ddpm_digits` (the DDPM CIFAR-10 recipe at the digits size: 8x8 digits, 1.08M-parameter "
         f"UNet, 50 epochs ≈ 600 steps). FID on the digits classifier's features, N = {args.n} per cell, same noise for "
         "every cell (relative numbers, not Inception FID).", "", pivot(table, "fid", "steps"), "",
         "![FID vs steps](fid_vs_steps.png)"],
        verdict, log, "python experiments/paper_ddim/run.py" + (f" --n {args.n}" if args.n != 256 else ""),
        notes=f"Why not at this scale: the model is small and briefly trained (≈ 600 steps), and its probability-flow "
              f"ODE is a worse sampler than its SDE even with many steps — DDIM η=0 at 50 steps reaches FID "
              f"{fid_at(table, 'ddim_eta0', 'steps', 50):.2f}, η=1 {fid_at(table, 'ddim_eta1', 'steps', 50):.2f}. "
              "The same holds on the VP twin with converged ODE solvers (experiments/sde_vs_ode: PF-ODE ≈ 20 at any "
              "NFE ≥ 10, the SDE samplers ≈ 10–11 from 100 NFE). Stochastic steps correct the errors of an imperfect "
              "score (Karras et al. 2022, Sec. 4), deterministic ones carry them to the end; DDIM's advantage in Table 1 "
              "needs a model whose PF-ODE is about as good as its SDE, as a fully trained CIFAR-10 model's is. "
              "N = 256 per cell: differences below ≈ 2–3 FID units are within the sampling noise.")


if __name__ == "__main__":
    main()
