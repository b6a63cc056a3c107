"""Score SDE's samplers at small scale (Song et al. 2021b, Table 1): on the VE twin
(``experiment=score_sde_ve_digits``) and the VP twin (``experiment=score_sde_vp_digits``), the reverse-diffusion
predictor alone (P), the Langevin corrector alone (C), predictor–corrector (PC), the Euler–Maruyama predictor
and the probability-flow ODE (RK45), at equal NFE budgets 50 / 100, from the same seeded noise
(``conf/evaluation/paper_score_sde.yaml``).

    python experiments/paper_score_sde/run.py            # the VP twin (trains it if needed)
    python experiments/paper_score_sde/run.py --models ve_digits vp_digits   # and the VE twin (+ ~8 min)
    python experiments/paper_score_sde/run.py --models ve_digits vp_digits --ckpt-ve <ckpt> --ckpt-vp <ckpt>

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
    ap.add_argument("--ckpt-ve", default=None)
    ap.add_argument("--ckpt-vp", default=None)
    ap.add_argument("--models", nargs="*", default=["vp_digits"], help="vp_digits and/or ve_digits")
    ap.add_argument("--n", type=int, default=256)
    args = ap.parse_args()
    log: list[str] = []
    sections, verdict, wins = [], [], []
    ckpts = {"ve_digits": args.ckpt_ve, "vp_digits": args.ckpt_vp}
    for model in args.models:
        ckpt = checkpoint(model, log, ckpt=ckpts.get(model))
        out = RUNS / f"paper_score_sde_{model}"
        table = evaluate(ckpt, "paper_score_sde", out, log, [f"evaluation.n={args.n}"])
        shutil.copy(out / "eval" / "table.csv", HERE / f"results_{model}.csv")
        plot_quality_vs_nfe(table, ("fid",), HERE / f"fid_vs_nfe_{model}.png", title=f"score SDE samplers ({model})")
        sections += [f"### `{model}`", "", pivot(table, "fid", "nfe"), "", f"![FID vs NFE](fid_vs_nfe_{model}.png)", ""]
        ode = {r["sampler"]: (float(r["nfe"]), float(r["fid"])) for r in table.families().get("pf_ode_rk45", [])}
        for n in (50, 100):
            p, pc = fid_at(table, "P_reverse_diffusion", "nfe", n), fid_at(table, "PC", "nfe", n)
            c = min((float(r["fid"]) for r in table.families().get("C_langevin", []) if abs(float(r["nfe"]) - n) <= 1),
                    default=float("nan"))
            wins.append(pc < p)
            verdict.append(f"- {model}, {n} NFE: PC {pc:.2f} vs P (reverse diffusion, same NFE) {p:.2f} vs C "
                           f"{c:.2f} → PC {'better' if pc < p else 'NOT better'} than P at equal cost")
        verdict.append(f"- {model}, PF-ODE (RK45): " + "; ".join(f"{k}: NFE {v[0]:g}, FID {v[1]:.2f}" for k, v in ode.items()))
    verdict.insert(0, f"**{'Reproduces' if all(wins) else 'Partly reproduces' if any(wins) else 'Does not reproduce'}**: "
                   f"PC beats the predictor alone at equal NFE in {sum(wins)} of {len(wins)} (model, NFE) cells.")
    write_results(
        HERE / "RESULTS.md", "Score SDE samplers (Song et al. 2021b), small scale",
        "Predictor–corrector sampling (reverse diffusion + one Langevin step) beats the predictor alone at the same "
        "number of network calls (Table 1, CIFAR-10 VE, reverse-diffusion predictor: PC1000 FID 3.21 vs P2000 4.74; "
        "the corrector alone, C2000: 20.43 — these three not re-read from the paper here, verify), and the "
        "probability-flow ODE solved by RK45 (rtol = atol = 1e-5) gives samples of comparable quality with far "
        "fewer NFE (VP deep: 3.08 against 2.55 for PC) plus exact likelihoods.",
        [f"FID on the digits classifier's features, N = {args.n} per cell, same noise for every cell. The C rows "
         "(corrector only) cost one extra call for the final x̂0.", "", *sections],
        verdict, log, "python experiments/paper_score_sde/run.py" + (f" --n {args.n}" if args.n != 256 else ""),
        notes="The paper compares at N = 1000 levels (PC: 2000 NFE); here 50–100 NFE. At 50 NFE PC has only 25 "
              "levels, too few for its predictor, and loses to the predictor alone with 50; at 100 NFE (50 levels) it "
              "is level with it (within the noise): the corrector pays off only once the predictor's discretization "
              "error is small. The corrector alone (annealed Langevin, 50–100 levels) is far worse, as in the paper. "
              "The PF-ODE (RK45) stops improving at FID ≈ 20 (51 NFE at tol 1e-3, 321 at 1e-5), above the SDE "
              "predictors' ≈ 17–19 at 100 NFE: this small model's ODE is a worse sampler than its SDE "
              "(experiments/sde_vs_ode). The VE twin (`--models ve_digits vp_digits`, NCSN++ at the digits size) was "
              "trained (600 steps) but its evaluation did not finish in this session: its adaptive PF-ODE solve (dopri5, "
              "rtol = atol = 1e-3, σ from 50 down to 0.01) ran over 15 minutes for 256 samples on the shared CPU. N = 256 per cell: differences below ≈ 2–3 FID units are "
              "within the sampling noise.")


if __name__ == "__main__":
    main()
