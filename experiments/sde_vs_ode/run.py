"""SDE against ODE sampling, as a study: five SDE samplers (DDPM ancestral, reverse-SDE Euler–Maruyama,
predictor–corrector, EDM's stochastic sampler, SDE-DPM-Solver++(2M)) against five ODE samplers (DDIM,
Heun, DPM-Solver++(2M), UniPC-2, adaptive dopri5), each at several NFE budgets, on ONE trained model and
from the same seeded noise; FID / KID / IS on the dataset classifier's features.

    python experiments/sde_vs_ode/run.py                         # digits: trains the model if needed (~10 min)
    python experiments/sde_vs_ode/run.py --ckpt outputs/<run>/checkpoints/last.ckpt --tag mine
    python experiments/sde_vs_ode/run.py --dataset mnist --data-dir /work/shared/data   # MNIST (longer)

Steps (each a command of the project's entry points, recorded in RESULTS.md):

1. ``python -m diffusion_lab.train experiment=score_sde_vp_digits ...`` (the score-SDE VP recipe at the
   digits size) unless ``--ckpt`` is given or the run exists under experiments/runs/.
2. ``python -m diffusion_lab.evaluate ckpt_path=... evaluation=sde_vs_ode wandb.project=... wandb.mode=offline``:
   samplers × NFE (conf/evaluation/sde_vs_ode.yaml), the table, and the W&B study (one group, one run per
   sampler family with kind/family in its config, NFE as the x-axis).

Writes beside this file: RESULTS_<tag>.md (RESULTS.md for digits), results_<tag>.csv, fid_vs_nfe_<tag>.png
(SDE solid/warm, ODE dashed/cool) and grids_<tag>.png (every family's samples at ≈ 20 NFE, same noise).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from study_common import RUNS, MODELS, checkpoint, evaluate, machine  # noqa: E402

from diffusion_lab.evaluation.plots import plot_quality_vs_nfe  # noqa: E402
from diffusion_lab.evaluation.table import EvalTable  # noqa: E402

# MNIST at what 2 shared CPU cores afford: a small UNet, 2 epochs; the FID classifier trained for 2 epochs;
# fewer NFE budgets (28x28 costs ≈ 12x an 8x8 digit per network call)
MNIST_TRAIN = ["experiment=score_sde_vp_digits", "dataset=mnist", "model=unet_mnist", "model.ch=16",
               "model.num_res_blocks=1", "trainer.max_epochs=2", "evaluation.classifier.epochs=2"]
MNIST_EVAL = ["evaluation.classifier.epochs=2", "evaluation.nfe.ODE=[10,20]", "evaluation.nfe.SDE=[10,20,50,100]",
              "evaluation.tolerances=[1e-2]"]


def grids_figure(table: EvalTable, pictures_dir: Path, path: Path, target_nfe: float = 20) -> None:
    """Every family's picture at the NFE closest to ``target_nfe``, side by side (same initial noise)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    picks = []
    for fam, rows in table.families().items():
        row = min(rows, key=lambda r: abs(math.log(float(r["nfe"]) / target_nfe)))
        files = sorted((pictures_dir / row["sampler"]).glob("*.png"))
        if files:
            picks.append((row, files[-1]))
    cols = 5
    fig, axes = plt.subplots(math.ceil(len(picks) / cols), cols, figsize=(3 * cols, 3.3 * math.ceil(len(picks) / cols)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (row, file) in zip(axes.flat, picks):
        ax.imshow(Image.open(file), cmap="gray")
        ax.set_title(f"{row['family']} ({row['kind']})\nNFE {float(row['nfe']):g}, FID {float(row['fid']):.1f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def observations(table: EvalTable) -> list[str]:
    """Sentences computed from the table: the best SDE and ODE sampler in each NFE band."""
    bands = [(1, 12), (12, 25), (25, 60), (60, 120), (120, 250), (250, 600)]
    out = []
    for lo, hi in bands:
        best = {}
        for row in table.rows:
            if row.get("kind") in ("SDE", "ODE") and lo < float(row["nfe"]) <= hi and row.get("fid") is not None:
                k = row["kind"]
                if k not in best or float(row["fid"]) < float(best[k]["fid"]):
                    best[k] = row
        parts = [f"{k} best {best[k]['sampler']} (NFE {float(best[k]['nfe']):g}) FID {float(best[k]['fid']):.2f}"
                 for k in ("ODE", "SDE") if k in best]
        if parts:
            out.append(f"- NFE in ({lo}, {hi}]: " + "; ".join(parts))
    return out


def reading(table: EvalTable) -> str:
    """What the table says about SDE against ODE (numbers from the table)."""
    ode = [float(r["fid"]) for r in table.rows if r.get("kind") == "ODE" and float(r["nfe"]) >= 45]
    sde = [float(r["fid"]) for r in table.rows if r.get("kind") == "SDE" and float(r["nfe"]) >= 190]
    if not ode or not sde:
        return "Too few rows for a reading."
    lo, hi = min(ode), max(ode)
    return (f"The ODE samplers agree with one another once they have ≈ 50 NFE (FID {lo:.1f}–{hi:.1f}): that is the "
            f"quality of this model's probability-flow ODE itself, reached by UniPC-2 and DPM-Solver++(2M) already at 10 "
            f"NFE. The SDE samplers converge more slowly (Euler–Maruyama and PC need ≥ 100–200 NFE; SDE-DPM-Solver++(2M) "
            f"and DDPM ancestral sampling are good from 10–20) but to a better place: FID {min(sde):.1f}–{max(sde):.1f} at "
            f"≈ 200 NFE. On a small, briefly trained model the stochastic samplers' noise corrects the errors of the "
            f"learned score that a deterministic solver carries to the end (Karras et al. 2022, Sec. 4), so here the "
            f"best SDE sampler beats the best ODE sampler in every NFE band of the table; with a well-trained model the "
            f"converged ODE comes close to the SDE, and the ODE solvers' speed at few NFE decides. N = {int(table.rows[0].get('n', 0))} per row: differences below ≈ 2–3 FID units are "
            f"within the sampling noise (e.g. DDPM 50 → 100 → 200 NFE: "
            + " → ".join(f"{float(r['fid']):.1f}" for r in table.families().get('ddpm', []) if float(r['nfe']) >= 50) + ").")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="digits", choices=["digits", "mnist"])
    ap.add_argument("--ckpt", default=None, help="evaluate this checkpoint instead of training the study's model")
    ap.add_argument("--tag", default=None, help="suffix of the output files (default: the dataset)")
    ap.add_argument("--n", type=int, default=256, help="samples per (sampler, NFE)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs of the study's model")
    ap.add_argument("--wandb-mode", default="offline", help="offline | online | disabled")
    ap.add_argument("--extra", nargs="*", default=[], help="more evaluate overrides, e.g. 'evaluation.nfe.SDE=[10,20]'")
    ap.add_argument("--data-dir", default="../shared/data", help="MNIST: the folder holding MNIST/raw (absolute, or "
                                                                  "relative to the repository)")
    args = ap.parse_args()
    MODELS["vp_mnist"] = [*MNIST_TRAIN, f"dataset.data_dir={args.data_dir}"]
    tag = args.tag or args.dataset
    log: list[str] = []
    ckpt = checkpoint(f"vp_{args.dataset}", log, args.epochs, args.ckpt)
    out = RUNS / f"sde_vs_ode_{tag}"
    extra = [f"evaluation.n={args.n}", *(MNIST_EVAL if args.dataset == "mnist" else []), *args.extra]
    if args.wandb_mode != "disabled":
        extra += ["wandb.project=diffusion_lab", f"wandb.group=sde_vs_ode_{tag}", f"wandb.mode={args.wandb_mode}"]
    table = evaluate(ckpt, "sde_vs_ode", out, log, extra)
    suffix = "" if tag == "digits" else f"_{tag}"
    shutil.copy(out / "eval" / "table.csv", HERE / f"results{suffix}.csv")
    plot_quality_vs_nfe(table, ("fid", "kid"), HERE / f"fid_vs_nfe{suffix}.png", title=f"SDE vs ODE ({tag})")
    grids_figure(table, out / "samples", HERE / f"grids{suffix}.png")
    cols = ["sampler", "kind", "family", "nfe", "fid", "kid", "is", "seconds"]
    text = [f"# SDE vs ODE sampling ({tag})", "",
            "One model, ten samplers, several NFE budgets each, every sampler from the same seeded noise "
            f"(N = {args.n} per row; FID / KID / IS on the features of the dataset's own classifier — relative "
            "numbers, not Inception FID; with N this small FID carries a bias of a few units that is the same for "
            "every row).", "",
            f"![quality vs NFE](fid_vs_nfe{suffix}.png)", "",
            f"Samples at ≈ 20 NFE, same initial noise for every sampler: ![grids](grids{suffix}.png)", "",
            "## Best per kind and NFE band", "", *observations(table), "",
            "## Reading", "", reading(table), "",
            "## All rows", "", table.markdown(cols), "",
            f"Table as CSV: `results{suffix}.csv`. W&B: the same rows as the offline group `sde_vs_ode_{tag}` "
            f"(one run per family; `wandb sync experiments/runs/sde_vs_ode_{tag}/wandb/offline-run-*` uploads it).", "",
            "## Commands", "", "```", "python experiments/sde_vs_ode/run.py"
            + ("" if args.dataset == "digits" else f" --dataset {args.dataset} --data-dir {args.data_dir}")
            + f" --n {args.n}", "# which runs:",
            *log, "```", "", f"Measured on {machine()}.", ""]
    (HERE / f"RESULTS{suffix}.md").write_text("\n".join(text))
    print("\n".join(observations(table)))


if __name__ == "__main__":
    main()
