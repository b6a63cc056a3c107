"""Reflow on the 8x8 digits (Liu et al. 2023): experiment=digits_reflow_1 → pairs (Heun, 16 steps) →
digits_reflow_2 → pairs → digits_reflow_distill, each evaluated at the end of its training by the run's own
evaluation (classifier-FID of 1,000 samples, Euler in t at 1, 2, 4, 8 steps and dopri5 with its NFE), plus
the straightness S (per dimension) of each model along its own ODE trajectories.

    OMP_NUM_THREADS=1 nice -n 5 python experiments/reflow/digits.py [--epochs 150 40 20] [--pairs 5000]

Writes DIGITS.md beside this file.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

from run import HERE, REPO, compose, train  # noqa: E402  (experiments/reflow/run.py)


def pairs(ckpt: Path, out: Path, n: int) -> Path:
    from diffusion_lab.reflow_pairs import run

    run(compose("reflow_pairs", [f"ckpt_path={ckpt}", f"out={out}", f"n={n}", "chunk_size=1000", "sampler=heun",
                                 "sampler.steps=16", "device=cpu", "progress=false"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", nargs=3, type=int, default=[150, 40, 20])
    ap.add_argument("--pairs", type=int, default=5000)
    ap.add_argument("--out", default=str(REPO / "outputs" / "reflow_digits"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    from diffusion_lab.flows.straightness import model_straightness
    from diffusion_lab.runs import load_run

    root = Path(args.out)
    e1, e2, ed = args.epochs
    keep = ["evaluation.at_end=true"]
    ck = {"1-RF": train(root / "rf1", ["experiment=digits_reflow_1", f"reflow_root={root}", f"trainer.max_epochs={e1}", *keep])}
    p1 = pairs(ck["1-RF"], root / "pairs1", args.pairs)
    ck["2-RF"] = train(root / "rf2", ["experiment=digits_reflow_2", f"reflow_root={root}", f"dataset.path={p1}",
                                      f"ckpt_path={ck['1-RF']}", f"trainer.max_epochs={e2}", *keep])
    p2 = pairs(ck["2-RF"], root / "pairs2", args.pairs)
    ck["2-RF + distill"] = train(root / "distill", ["experiment=digits_reflow_distill", f"reflow_root={root}",
                                                    f"dataset.path={p2}", f"ckpt_path={ck['2-RF']}",
                                                    f"trainer.max_epochs={ed}", *keep])
    labels = ["euler_1", "rf_euler_2", "rf_euler_4", "rf_euler_8", "dopri5_2"]
    lines = ["| stage | S (per dim) | " + " | ".join(f"FID {l}" for l in labels) + " | dopri5 NFE |",
             "|" + "---|" * (len(labels) + 3)]
    for stage, ckpt in ck.items():
        rows = list(csv.DictReader(open(ckpt.parent.parent / "eval" / "table.csv")))
        last = {r["sampler"]: r for r in rows}  # the evaluation at the end of training
        with load_run(ckpt).module.sampling() as den:
            s = model_straightness(den, n=500, steps=32, data_shape=(1, 8, 8), per_dim=True).straightness
        fid = [f"{float(last[l]['fid']):.2f}" if l in last else "—" for l in labels]
        nfe = last.get("dopri5_2", {}).get("nfe", "—")
        lines.append(f"| {stage} | {s:.4f} | " + " | ".join(fid) + f" | {nfe} |")
    table = "\n".join(lines)
    print(table)
    (HERE / "DIGITS.md").write_text(f"# Reflow on the 8x8 digits\n\n    {Path(__file__).name} --epochs {e1} {e2} {ed} "
                                    f"--pairs {args.pairs}\n\n{table}\n")


if __name__ == "__main__":
    main()
