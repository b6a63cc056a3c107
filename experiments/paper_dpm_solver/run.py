"""DPM-Solver++(2M) against DDIM at few NFE (Lu et al. 2022b), small scale: on the DDPM twin
(``experiment=ddpm_digits``, discrete) and the score-SDE VP twin (``experiment=score_sde_vp_digits``,
continuous), DDIM and DPM-Solver++(2M) (our measured default grid, and the paper's λ-uniform grid) at
NFE ∈ {5, 10, 20, 50}, from the same seeded noise (``conf/evaluation/paper_dpm_solver.yaml``).

    python experiments/paper_dpm_solver/run.py          # trains the two models if needed
    python experiments/paper_dpm_solver/run.py --ckpt-ddpm <ckpt> --ckpt-vp <ckpt>

Writes RESULTS.md, results_<model>.csv and fid_vs_nfe_<model>.png beside this file.
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt-ddpm", default=None)
    ap.add_argument("--ckpt-vp", default=None)
    ap.add_argument("--n", type=int, default=256)
    args = ap.parse_args()
    log: list[str] = []
    sections, verdict, wins = [], [], []
    for model, ckpt_arg, what in (("ddpm_digits", args.ckpt_ddpm, "DDPM twin (discrete linear β, T = 1000)"),
                                  ("vp_digits", args.ckpt_vp, "score-SDE VP twin (continuous linear β)")):
        ckpt = checkpoint(model, log, ckpt=ckpt_arg)
        out = RUNS / f"paper_dpm_solver_{model}"
        table = evaluate(ckpt, "paper_dpm_solver", out, log, [f"evaluation.n={args.n}"])
        shutil.copy(out / "eval" / "table.csv", HERE / f"results_{model}.csv")
        plot_quality_vs_nfe(table, ("fid",), HERE / f"fid_vs_nfe_{model}.png", title=f"DPM-Solver++(2M) vs DDIM ({model})")
        sections += [f"### {what}: `{model}`", "", pivot(table, "fid", "nfe"), "", f"![FID vs NFE](fid_vs_nfe_{model}.png)", ""]
        ddim = {n: fid_at(table, "ddim", "nfe", n) for n in (5, 10, 20, 50)}
        for n in (10, 20):
            two = min(fid_at(table, "dpm_solver_pp_2m", "nfe", n), fid_at(table, "dpm_solver_pp_2m_lambda", "nfe", n))
            wins.append(two < ddim[n])
            match = [m for m in (5, 10, 20, 50) if ddim[m] <= two]
            verdict.append(f"- {model}, NFE {n}: DPM-Solver++(2M) FID {two:.2f} (better grid) vs DDIM {ddim[n]:.2f}; DDIM "
                           + (f"first reaches it at NFE {match[0]}" if match else "does not reach it by NFE 50"))
    verdict.insert(0, f"**{'Reproduces' if all(wins) else 'Partly reproduces' if any(wins) else 'Does not reproduce'}**: "
                   f"DPM-Solver++(2M) beats DDIM at {sum(wins)} of {len(wins)} (model, NFE ∈ {{10, 20}}) cells.")
    write_results(
        HERE / "RESULTS.md", "DPM-Solver++(2M) vs DDIM (Lu et al. 2022), small scale",
        "A second-order multistep solver of the diffusion ODE in log-SNR, with data prediction, gives good samples "
        "in 10–20 NFE where the first-order DDIM needs several times as many (DPM-Solver: FID 4.70 at 10 NFE and "
        "2.87 at 20 on CIFAR-10 score-SDE VP; DPM-Solver++(2M) is its multistep data-prediction form, the "
        "recommended setting for 10–20 steps).",
        [f"FID on the digits classifier's features, N = {args.n} per cell, same noise for every cell. "
         "`dpm_solver_pp_2m` uses our measured default grid (quadratic⁺ on DDPM/VP), `dpm_solver_pp_2m_lambda` the "
         "paper's λ-uniform grid ending at t_min; DDIM its default (quadratic).", "", *sections],
        verdict, log, "python experiments/paper_dpm_solver/run.py" + (f" --n {args.n}" if args.n != 256 else ""),
        notes="On both models DPM-Solver++(2M) is at the ODE's own limit (its FID at 50 NFE, where every ODE solver "
              "agrees) from 10–20 NFE on, while DDIM's first-order error is still visible at 50 NFE. The λ-uniform grid "
              "is the worse choice at 5 NFE (its first step spans the noisiest, widest λ interval) and the better one at "
              "10. N = 256 per cell: differences below ≈ 2–3 FID units are within the sampling noise.")


if __name__ == "__main__":
    main()
