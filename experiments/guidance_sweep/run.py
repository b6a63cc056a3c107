"""The guidance-scale trade-off on digits (and MNIST): classifier-free guidance at several weights w and
classifier guidance at several scales s, on ONE class-conditional model trained with label dropout, plus
the model's bits/dim. Every step is a command of the project's own entry points (printed, and listed in
RESULTS.md), so each number can be reproduced from the command line:

    .venv/bin/python experiments/guidance_sweep/run.py                      # digits (8x8), ~10 min on 2 CPU cores
    .venv/bin/python experiments/guidance_sweep/run.py --dataset mnist --data-dir ../shared/data

Steps (the run folders go to experiments/guidance_sweep/runs/<dataset>/, reused when present):

1. ``python -m diffusion_lab.train experiment=digits_cfg schedule=ddpm ...``: a class-conditional UNet
   (label embedding of K + 1 rows, the last the null label) trained with p_uncond = 0.1 (Ho & Salimans
   2022), on the discrete DDPM schedule (T = 1000) so that both the PF-ODE and the L_vlb bits/dim apply.
2. ``python -m diffusion_lab.train_classifier ... schedule=ddpm``: the noise-conditional classifier
   p_φ(y | x_t, t) on the same data and schedule, with its accuracy by noise level.
3. ``python -m diffusion_lab.evaluate ... evaluation=guidance_sweep guidance=cfg``: CFG at each w (w = 0:
   the conditional model), DPM-Solver++(2M), class-balanced labels, N samples per scale.
4. ``... guidance=classifier guidance.null_label=true``: classifier guidance of the SAME network's
   unconditional model (null label) at each s (s = 0: the unconditional model).
5. ``... evaluation=conditional evaluation.likelihood.conditional=true|false``: bits/dim of held-out data
   (PF-ODE with Hutchinson's divergence, dequantized within the data's quantization bins; L_vlb) under
   log p(x | y) and under the null label, log p(x).

Metrics (``evaluation=conditional``): FID / KID on the features of the dataset's own classifier (relative
numbers, not Inception FID), the accuracy of the samples under that classifier (does the sample show
the class it was generated for?), improved precision and recall (Kynkäänniemi et al. 2019, k = 3) on the
same features. Outputs beside this file: RESULTS.md (or RESULTS_mnist.md), results_<dataset>.json,
tradeoff_<dataset>.png (FID vs accuracy and precision vs recall), grids_<dataset>.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

SETTINGS = {
    # what 2 shared CPU cores train in minutes; say so in RESULTS.md
    "digits": {
        "train": ["experiment=digits_cfg", "schedule=ddpm", "trainer.max_epochs=80", "evaluation.every_n_epochs=1000",
                  "evaluation.n=250", "evaluation.likelihood=null"],
        "classifier": ["classifier=digits", "schedule=ddpm", "trainer.max_epochs=40"],
        "n": 1000, "likelihood_n": 128, "cfg_scales": [0.0, 0.5, 1.0, 2.0, 4.0],
        "classifier_scales": [0.0, 1.0, 2.0, 4.0, 8.0], "steps": 20,
    },
    "mnist": {
        "train": ["experiment=digits_cfg", "dataset=mnist", "model=unet_mnist", "model.ch=16", "model.num_res_blocks=1",
                  "schedule=ddpm", "trainer.max_epochs=3", "evaluation.every_n_epochs=1000", "evaluation.n=250",
                  "evaluation.likelihood=null", "evaluation.classifier.epochs=2"],
        "classifier": ["dataset=mnist", "dataset.val_fraction=0.02", "classifier=mnist", "schedule=ddpm",
                       "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1"],
        "likelihood": ["evaluation.likelihood.split=test"],
        "eval": ["evaluation.classifier.epochs=2"],  # the FID feature classifier: 2 epochs of MNIST (≈ 99% accuracy)
        "n": 500, "likelihood_n": 64, "cfg_scales": [0.0, 1.0, 2.0, 4.0],
        "classifier_scales": [0.0, 2.0, 4.0, 8.0], "steps": 20,
    },
}


def run_cli(module: str, args: list[str], log: list[str]) -> list[dict]:
    """Run ``python -m diffusion_lab.<module> args`` (the printed command is kept for RESULTS.md); returns the
    JSON lines it printed on stdout."""
    cmd = [sys.executable, "-m", f"diffusion_lab.{module}", *args]
    shown = "python -m diffusion_lab." + module + " " + " ".join(args)
    print(f"\n$ {shown}", flush=True)
    log.append(shown)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {shown}")
    rows = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            rows.append(json.loads(line))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=sorted(SETTINGS), default="digits")
    ap.add_argument("--data-dir", default=None, help="torchvision data root (MNIST: the folder holding MNIST/raw)")
    ap.add_argument("--retrain", action="store_true", help="train again even if the run folders exist")
    ap.add_argument("--report-only", action="store_true", help="rewrite RESULTS, plot and grids from results_<dataset>.json")
    args = ap.parse_args()
    S = SETTINGS[args.dataset]
    if args.report_only:
        results = json.loads((HERE / f"results_{args.dataset}.json").read_text())
        write_outputs(results, HERE / "runs" / args.dataset / "eval")
        return
    data = [f"dataset.data_dir={Path(args.data_dir).resolve()}"] if args.data_dir else []
    runs = HERE / "runs" / args.dataset
    model_dir, clf_dir = runs / "model", runs / "classifier"
    commands: list[str] = []
    common = ["trainer.enable_progress_bar=false", "logger=csv"]
    t_start = time.perf_counter()
    timings = {}

    # 1-2. the model and the classifier (reused when present: their commands and times then come from the
    # previous results file)
    previous_file = HERE / f"results_{args.dataset}.json"
    previous = json.loads(previous_file.read_text()) if previous_file.is_file() else {}
    model_ckpt, clf_ckpt = model_dir / "checkpoints" / "last.ckpt", clf_dir / "checkpoints" / "last.ckpt"
    reused: list[str] = []
    for i, (what, module, ckpt, folder, extra) in enumerate((
            ("model", "train", model_ckpt, model_dir, S["train"]),
            ("classifier", "train_classifier", clf_ckpt, clf_dir, S["classifier"]))):
        if args.retrain or not ckpt.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            t0 = time.perf_counter()
            run_cli(module, [*extra, *data, *common, f"hydra.run.dir={folder}"], commands)
            timings[what] = time.perf_counter() - t0
        else:
            old = previous.get("commands", [])
            commands.append(old[i] if len(old) > i and not old[i].startswith("(") else f"(reused {folder})")
            if what in previous.get("timings_s", {}):
                timings[what] = previous["timings_s"][what]
                reused.append(what)
    accuracy_by_noise = list(csv.DictReader(open(clf_dir / "eval" / "accuracy_by_noise.csv")))
    last_step = max(int(r["step"]) for r in accuracy_by_noise)
    accuracy_by_noise = [r for r in accuracy_by_noise if int(r["step"]) == last_step]

    # 3-4. the sweeps
    evals = runs / "eval"
    sampler = ["sampler=dpm_solver_pp_2m", f"sampler.steps={S['steps']}"]
    base = [f"ckpt_path={model_ckpt}", "evaluation=guidance_sweep", f"evaluation.n={S['n']}", "evaluation.grid_n=20",
            "evaluation.progress=false", *sampler, *S.get("eval", [])]
    scales = lambda v: "evaluation.guidance_scales=[" + ",".join(f"{s:g}" for s in v) + "]"  # noqa: E731
    t0 = time.perf_counter()
    rows = run_cli("evaluate", [*base, "guidance=cfg", scales(S["cfg_scales"]), f"out_dir={evals / 'cfg'}"], commands)
    rows += run_cli("evaluate", [*base, "guidance=classifier", f"guidance.classifier_ckpt={clf_ckpt}",
                                 "guidance.null_label=true", scales(S["classifier_scales"]),
                                 f"out_dir={evals / 'classifier'}"], commands)
    timings["sweeps"] = time.perf_counter() - t0

    # 5. bits/dim under p(x | y) and p(x)
    t0 = time.perf_counter()
    likelihood = {}
    for conditional in ("true", "false"):
        out = run_cli("evaluate", [f"ckpt_path={model_ckpt}", "evaluation=conditional", "evaluation.metrics=[]",
                                   "evaluation.n=10", "evaluation.grid_n=0", "evaluation.progress=false", "guidance=none",
                                   *S.get("eval", []),
                                   f"evaluation.likelihood.n={S['likelihood_n']}",
                                   f"evaluation.likelihood.conditional={conditional}", *S.get("likelihood", []),
                                   f"out_dir={evals / ('likelihood_' + conditional)}"], commands)
        likelihood[conditional] = [r for r in out if r["kind"] == "likelihood"]
    timings["likelihood"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start + sum(timings[k] for k in reused)  # the reused runs' own time

    results = {"dataset": args.dataset, "settings": S, "commands": commands, "rows": rows, "likelihood": likelihood,
               "accuracy_by_noise": accuracy_by_noise, "timings_s": timings, "reused": reused, "machine": platform.processor() or platform.machine(),
               "threads": os.environ.get("OMP_NUM_THREADS", "2")}
    (HERE / f"results_{args.dataset}.json").write_text(json.dumps(results, indent=1))
    write_outputs(results, evals)


def write_outputs(results: dict, evals: Path) -> None:
    """RESULTS(.md), the trade-off plot and the sample grids, from the results."""
    name = results["dataset"]
    plot(results, HERE / f"tradeoff_{name}.png")
    grids(evals, results, HERE / f"grids_{name}.png")
    text = report(results)
    (HERE / ("RESULTS.md" if name == "digits" else f"RESULTS_{name}.md")).write_text(text)
    print(text)


def _fmt(v, digits=3):
    return "—" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def report(r: dict) -> str:
    S, rows = r["settings"], r["rows"]
    name = {"digits": "8x8 digits (scikit-learn, 1,797 images)", "mnist": "MNIST (28x28, 60,000 images)"}[r["dataset"]]
    lines = [f"# Guidance-scale trade-off and bits/dim: {name}", "",
             f"`python experiments/guidance_sweep/run.py --dataset {r['dataset']}` ran these commands "
             f"({r['timings_s']['total'] / 60:.0f} min on 2 shared CPU cores, {r['threads']} threads):", ""]
    lines += [f"    {c.replace(str(REPO) + '/', '')}" for c in r["commands"]]
    if r.get("reused"):
        lines += ["", f"(The {' and '.join(r['reused'])} run{'s were' if len(r['reused']) > 1 else ' was'} reused from an "
                      "earlier invocation of the same command, its time included; the evaluations were rerun.)"]
    lines += ["", "Scaled to what 2 shared CPU cores train in minutes: " + {
        "digits": "80 epochs of the 8x8 digits (≈ 960 steps of 128; the default run trains 150) for the model, "
                  "40 epochs for the classifier.",
        "mnist": "3 epochs (1,404 steps of 128) of a UNet shrunk to 16 base channels and 1 residual block per "
                 "level for the model, 1 epoch for the classifier: far from converged — read the trends, not the "
                 "values."}[r["dataset"]],
              "One network serves both guidances: CFG combines its conditional and null-label passes; classifier "
              "guidance steers its null-label (unconditional) model with the noise-conditional classifier.",
              f"Sampler: DPM-Solver++(2M), {S['steps']} steps; N = {S['n']} class-balanced samples per row; FID/KID on "
              "the dataset classifier's 128-d features against the training images (relative, not Inception FID); "
              "accuracy under the same classifier; precision/recall with k = 3. NFE = network calls per sample "
              "trajectory; passes = per-sample network passes (a guided CFG call is 1 NFE, 2 passes); classifier "
              "NFE = classifier gradient evaluations.", "",
              "| guidance | scale | FID | KID | IS | accuracy | precision | recall | NFE | passes | classifier NFE | seconds |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['guidance']} | {row['guidance_scale']:g} | {_fmt(row.get('fid'), 2)} | {_fmt(row.get('kid'), 3)} "
                     f"| {_fmt(row.get('is'), 2)} | {_fmt(row.get('accuracy'))} | {_fmt(row.get('precision'))} "
                     f"| {_fmt(row.get('recall'))} | {row['nfe']:.0f} | {row['passes']:.0f} "
                     f"| {_fmt(row.get('classifier_nfe'), 0)} | {row['seconds']:.1f} |")
    for kind, sym in (("cfg", "w"), ("classifier", "s")):
        rs = [row for row in rows if row["guidance"] == kind]
        if not rs:
            continue
        best = min(rs, key=lambda row: row["fid"])
        lines += ["", f"{'Classifier-free' if kind == 'cfg' else 'Classifier'} guidance: FID is lowest at {sym} = "
                  f"{best['guidance_scale']:g} ({best['fid']:.2f}); accuracy goes from {rs[0]['accuracy']:.3f} at {sym} = "
                  f"{rs[0]['guidance_scale']:g} to {rs[-1]['accuracy']:.3f} at {sym} = {rs[-1]['guidance_scale']:g}, "
                  f"precision from {rs[0]['precision']:.3f} to {rs[-1]['precision']:.3f}, recall from "
                  f"{rs[0]['recall']:.3f} to {rs[-1]['recall']:.3f}."]
    lines += ["", f"![trade-off](tradeoff_{r['dataset']}.png)", "",
              f"![samples](grids_{r['dataset']}.png)", "",
              "## Bits/dim of held-out data", "",
              "PF-ODE: Hutchinson's divergence (1 Rademacher probe), dopri5 rtol = atol = 1e-5, uniform dequantization "
              "within the data's quantization bins (digits: 17 levels, MNIST: 256), prior N(0, σ(1)² I). L_vlb: the "
              "discrete bound with the fixed small variance β̃ and the discretized decoder (T = 1000 calls per item). "
              "nll in nats per image (= bpd · D · ln 2).", "",
              "| density | row | bpd | ± s.e. | nll (nats) | NFE | seconds | items |", "|---|---|---|---|---|---|---|---|"]
    for cond, what in (("true", "log p(x | y), true labels"), ("false", "log p(x), null label")):
        for row in r["likelihood"][cond]:
            lines.append(f"| {what} | {row['sampler']} | {row['bpd']:.3f} | {row['bpd_se']:.3f} | {row['nll']:.1f} "
                         f"| {row['nfe']:.0f} | {row['seconds']:.1f} | {row['n']} |")
    lines += ["", "## The classifier's accuracy by noise level (validation split, fixed noise)", "",
              "| t | σ/α | accuracy |", "|---|---|---|"]
    lines += [f"| {float(a['t']):.3f} | {float(a['sigma_tilde']):.3g} | {float(a['accuracy']):.3f} |"
              for a in r["accuracy_by_noise"]]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for kind, marker in (("cfg", "o"), ("classifier", "s")):
        rows = [row for row in r["rows"] if row["guidance"] == kind]
        label = "classifier-free (w)" if kind == "cfg" else "classifier, null-label model (s)"
        for ax, (xk, yk) in zip(axes, (("accuracy", "fid"), ("recall", "precision"))):
            xs, ys = [row[xk] for row in rows], [row[yk] for row in rows]
            ax.plot(xs, ys, marker=marker, label=label)
            for row, x, y in zip(rows, xs, ys):
                ax.annotate(f"{row['guidance_scale']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes[0].set(xlabel="accuracy under the feature classifier", ylabel="FID (classifier features)",
                title="FID vs accuracy")
    axes[1].set(xlabel="recall", ylabel="precision", title="precision vs recall")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"guidance-scale sweep, {r['dataset']} (labels: the scale)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def grids(evals: Path, r: dict, path: Path) -> None:
    """The first samples of each evaluated (guidance, scale), one row per guidance, one column per scale: the
    pictures the evaluation wrote (class-balanced labels: sample i shows class i mod K, row by row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    kinds = [k for k in ("cfg", "classifier") if any(row["guidance"] == k for row in r["rows"])]
    per_kind = {k: [row for row in r["rows"] if row["guidance"] == k] for k in kinds}
    cols = max(len(v) for v in per_kind.values())
    fig, axes = plt.subplots(len(kinds), cols, figsize=(2.1 * cols, 2.2 * len(kinds)), squeeze=False)
    for i, kind in enumerate(kinds):
        for j in range(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(per_kind[kind]):
                ax.axis("off")
                continue
            row = per_kind[kind][j]
            found = sorted((evals / kind / "samples" / row["sampler"]).glob("epoch_*.png"))
            if found:
                ax.imshow(mpimg.imread(found[-1]), cmap="gray")
            sym = "w" if kind == "cfg" else "s"
            ax.set_title(f"{kind} {sym}={row['guidance_scale']:g}\nacc {row['accuracy']:.2f}, FID {row['fid']:.1f}",
                         fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
