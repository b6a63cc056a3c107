"""Improved DDPM at small scale (Nichol & Dhariwal 2021): three models of the improved-DDPM twin
(``experiment=iddpm_digits``: T = 4000, AdamW, no clipping) — cosine schedule with learned variances and
L_hybrid, cosine with fixed variances and L_simple, linear schedule with learned variances and L_hybrid —
sampled ancestrally with K ∈ {10, 25, 50} evenly spaced (respaced) timesteps, with the learned variances
and with the fixed σ² = β̃ (small) and σ² = β (large), all from the same seeded noise
(``conf/evaluation/paper_iddpm.yaml``). These are training claims, so each needs its own model.

    python experiments/paper_iddpm/run.py                # trains the three models if needed (~7 min each)

Writes RESULTS.md, results_<model>.csv and fid_vs_steps_<model>.png beside this file.
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

MODELS = {  # run name -> (what, learned variances?)
    "iddpm_cosine_hybrid": ("cosine schedule, learned variances, L_hybrid", True),
    "iddpm_cosine_simple": ("cosine schedule, fixed variances, L_simple", False),
    "iddpm_linear_hybrid": ("linear schedule, learned variances, L_hybrid", True),
}
KS = (10, 25, 50)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256)
    args = ap.parse_args()
    log: list[str] = []
    sections, tables = [], {}
    for model, (what, learned) in MODELS.items():
        ckpt = checkpoint(model, log)
        out = RUNS / f"paper_iddpm_{model}"
        extra = [f"evaluation.n={args.n}"] + ([] if learned else ["evaluation.samplers.learned=null"])
        table = tables[model] = evaluate(ckpt, "paper_iddpm", out, log, extra)
        shutil.copy(out / "eval" / "table.csv", HERE / f"results_{model}.csv")
        plot_quality_vs_nfe(table, ("fid",), HERE / f"fid_vs_steps_{model}.png", title=model)
        sections += [f"### {what}: `{model}`", "", pivot(table, "fid", "steps"), "",
                     f"![FID vs steps](fid_vs_steps_{model}.png)", ""]
    hyb, sim, lin = tables["iddpm_cosine_hybrid"], tables["iddpm_cosine_simple"], tables["iddpm_linear_hybrid"]
    learned = {k: fid_at(hyb, "learned", "steps", k) for k in KS}
    small = {k: fid_at(sim, "fixed_small", "steps", k) for k in KS}
    large = {k: fid_at(sim, "fixed_large", "steps", k) for k in KS}
    keep = all(learned[k] < small[k] for k in (10, 25))
    verdict = [
        "- Cosine, K = 10 / 25 / 50 steps: learned variances (L_hybrid) " + " / ".join(f"{learned[k]:.2f}" for k in KS)
        + "; fixed σ² = β̃ (L_simple model) " + " / ".join(f"{small[k]:.2f}" for k in KS)
        + "; fixed σ² = β (L_simple model) " + " / ".join(f"{large[k]:.2f}" for k in KS) + ".",
        f"- Degradation from 50 to 10 steps: learned ×{learned[10] / learned[50]:.2f}, fixed β̃ ×{small[10] / small[50]:.2f}, "
        f"fixed β ×{large[10] / large[50]:.2f}.",
    ]
    lin_learned = {k: fid_at(lin, "learned", "steps", k) for k in KS}
    cos_better = sum(learned[k] < lin_learned[k] for k in KS)
    verdict.append("- Cosine vs linear (both L_hybrid, learned variances), K = 10 / 25 / 50: "
                   + " / ".join(f"{learned[k]:.2f} vs {lin_learned[k]:.2f}" for k in KS)
                   + f" → cosine better at {cos_better} of 3.")
    verdict.insert(0, f"**Learned variances: {'reproduces' if keep else 'does not reproduce'}** (L_hybrid with learned "
                   f"variances {'beats' if keep else 'does not beat'} fixed σ² = β̃ at 10 and 25 steps). **Cosine vs linear: "
                   f"{'reproduces' if cos_better >= 2 else 'does not reproduce'}** at this scale (FID; the paper's main "
                   "cosine claim is about log-likelihood, not measured here).")
    write_results(
        HERE / "RESULTS.md", "Improved DDPM (Nichol & Dhariwal 2021), small scale",
        "Learning the reverse-process variances with L_hybrid = L_simple + 0.001·L_vlb lets ancestral sampling "
        "with few (respaced) steps keep most of its quality: with 25–50 steps the learned-variance model's FID is "
        "close to its full-chain value, while a model with fixed variances σ² = β̃ degrades badly and σ² = β "
        "sits in between (Fig. 8). The cosine noise schedule improves on the linear one, chiefly in "
        "log-likelihood (and for few-step sampling, since the linear schedule wastes its last steps on near-pure noise).",
        [f"FID on the digits classifier's features, N = {args.n} per cell, same noise for every cell; cells "
         "are 'FID (counted NFE)' by number of respaced steps K. Each model: 50 epochs (≈ 600 steps of 128) of the "
         "T = 4000 improved-DDPM twin.", "", *sections],
        verdict, log, "python experiments/paper_iddpm/run.py" + (f" --n {args.n}" if args.n != 256 else ""),
        notes="Why the learned variances do not help here: the variance head is trained only through L_vlb with "
              "weight 0.001, and 600 training steps leave it close to where it started; its output interpolates "
              "between β̃ and β (Nichol & Dhariwal 2021, Eq. 15), and the sampled variance sits between the two fixed "
              "choices in FID too. With x̂0 clipped to [−1, 1] (as improved-diffusion samples), the small fixed "
              "variance β̃ is already good at 10 steps on 8x8 digits, so there is nothing for the learned one to "
              "rescue; the paper's gap appears with long training and large images. Without the clipping the cosine "
              "models' first step from t = 1 (ᾱ ≈ 0) sends x̂0 out of range and every sampler saturates (FID ≈ 69, "
              "an earlier run of this study); the linear schedule, whose ᾱ(1) is not as small, did not need it. "
              "The cosine schedule's advantage shows in FID at every step count (with learned variances and with β̃). "
              "Bits/dim (the paper's headline for L_hybrid and the cosine schedule) is not measured here: the "
              "discrete VLB over T = 4000 steps costs 4000 network calls per image, beyond this CPU budget "
              "(`evaluation=conditional` computes it: `likelihood_vlb`).")


if __name__ == "__main__":
    main()
