"""EDM vs PFGM++ (D = 4, 32, 128) vs PFGM vs heat blur vs masking on the 8x8 digits, same budget, through the
project's own entry point (so each row is one command), FID on the digit classifier's features at 5–35 NFE.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python experiments/pfgm_compare/digits.py [--steps 600] [--n 1000]

Each model trains ``--steps`` optimizer steps (batch 128; PFGM: batches of 512 as the field's reference,
128 perturbed) with the digits UNet, then evaluates at the end with ``evaluation=nfe_sweep`` (Heun at 5, 9,
19, 35 NFE and DPM-Solver++(2M) at 5, 10, 20, 35) or, for blur and masking, ``evaluation=forward_nfe_sweep``
(the x̂0-then-step sampler, corrected and naive, at 5, 10, 20, 35 NFE). The run folders go to
experiments/pfgm_compare/runs/ (reused when their eval table exists). Writes RESULTS_digits.md beside this file.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

MODELS = {  # in the order they run; D/N matters in PFGM++ (N = 64 here): CIFAR-10's D = 128 and 2048 are D/N ≈ 0.04 and 0.67
    "EDM (D=∞)": ["experiment=pfgmpp_digits", "noise=gaussian", "evaluation=nfe_sweep"],
    "PFGM++ D=128": ["experiment=pfgmpp_digits", "noise.D=128", "evaluation=nfe_sweep"],
    "PFGM++ D=4": ["experiment=pfgmpp_digits", "noise.D=4", "evaluation=nfe_sweep"],
    "PFGM": ["experiment=pfgm_digits", "evaluation=nfe_sweep"],
    "heat blur": ["experiment=blur_digits", "evaluation=forward_nfe_sweep"],
    "PFGM++ D=32": ["experiment=pfgmpp_digits", "noise.D=32", "evaluation=nfe_sweep"],
    "masking": ["experiment=mask_digits", "evaluation=forward_nfe_sweep"],
    "absorbing (D3PM)": ["experiment=absorbing_digits", "evaluation=discrete_nfe_sweep"],
}


def run_dir(name: str) -> Path:
    return HERE / "runs" / name.replace(" ", "_").replace("(", "").replace(")", "").replace("=", "").replace("∞", "inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--only", nargs="*", default=None, help="model names to run (default: all)")
    args = ap.parse_args()
    commands, tables = {}, {}
    for name, overrides in MODELS.items():
        out = run_dir(name)
        if args.only and name not in args.only and not (out / "eval" / "table.csv").is_file():
            continue  # not asked for and not run before (a finished model's table is always reported)
        cmd = [sys.executable, "-m", "diffusion_lab.train", *overrides, f"trainer.max_steps={args.steps}",
               "trainer.max_epochs=-1", f"evaluation.n={args.n}", "logger=csv", "trainer.enable_progress_bar=false",
               "trainer.check_val_every_n_epoch=1000", f"hydra.run.dir={out}"]
        commands[name] = " ".join(["python", "-m", "diffusion_lab.train", *cmd[3:-1]])
        table = out / "eval" / "table.csv"
        if not table.is_file():
            t0 = time.perf_counter()
            env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{name} failed:", proc.stdout[-2000:], proc.stderr[-2000:], flush=True)
                continue
            print(f"{name}: {time.perf_counter() - t0:.0f}s", flush=True)
        tables[name] = list(csv.DictReader(open(table)))
    write(tables, commands, args)


def write(tables: dict, commands: dict, args) -> None:
    lines = ["# EDM vs PFGM++ vs PFGM vs heat blur vs masking vs absorbing-state D3PM on the 8x8 digits", "",
             f"Every model: the digits UNet (1.08M parameters; PFGM's with one extra output channel), {args.steps} "
             "optimizer steps (a few CPU minutes each on a shared 2-core machine), EMA weights, evaluated once at the "
             f"end on {args.n} samples from the same seeded noise; FID on the features of the digit classifier the "
             "framework trains (relative numbers, not Inception FID). Command: "
             "`OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python experiments/pfgm_compare/digits.py`; one row of it:", ""]
    for name, c in commands.items():
        lines.append(f"- {name}: `{c}`")
    lines += ["", "| model | sampler | NFE | FID | KID |", "|---|---|---|---|---|"]
    for name, rows in tables.items():
        last = max(int(r["step"]) for r in rows)
        for r in rows:
            if int(r["step"]) == last:
                lines.append(f"| {name} | {r['sampler']} | {float(r['nfe']):.0f} | {float(r['fid']):.2f} | "
                             f"{float(r['kid']):.3g} |")
    reading = HERE / "reading_digits.md"
    if reading.is_file():
        lines += ["", reading.read_text()]
    (HERE / "RESULTS_digits.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
