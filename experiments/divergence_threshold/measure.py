"""How far above its running median does the training loss of a *healthy* run jump? This sets the
default of the divergence guard (callbacks.divergence.factor = 100, window = 100).

For each loss, the default digits run (batch 128, default UNet, default lr and warm-up) trains for
``--steps`` steps with the guard's ratio test off (``factor: null``); the script reads the per-step
losses from the run's CSV and reports, for every step s > 1, r_s = L_s / median(L_{s-100}, ..., L_{s-1})
— its maximum over the run, and over the first 20 steps where the median has few values. A healthy
run must stay well below the factor; a diverged run (optimizer.lr=1e9) is shown for contrast.
Writes RESULTS.md beside itself and prints the same table.

    .venv/bin/python experiments/divergence_threshold/measure.py [--steps 300]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from diffusion_lab.train import CONFIG_DIR, run

HERE = Path(__file__).resolve().parent
CASES = {
    "eps_mse (vp, default)": [],
    "vlb, importance-sampled (ddpm)": ["schedule=ddpm", "loss=vlb", "model.learned_variance=true"],
    "hybrid (ddpm)": ["schedule=ddpm", "loss=hybrid", "model.learned_variance=true"],
    "edm": ["schedule=edm", "parameterization=edm", "loss=edm"],
    "rectified_flow": ["schedule=rectified_flow", "parameterization=velocity", "loss=rectified_flow"],
    "dsm_min_snr (vp)": ["loss=dsm_min_snr"],
    "diverging: eps_mse, optimizer.lr=1e9": ["optimizer.lr=1e9"],
}


def ratios(losses: list[float], window: int = 100) -> list[float]:
    """r_s = L_s / median of the (up to) ``window`` losses before it, for s = 1, 2, ..."""
    out = []
    for s in range(1, len(losses)):
        med = statistics.median(losses[max(0, s - window):s])
        out.append(losses[s] / med if med > 0 else float("nan"))
    return out


def measure(overrides: list[str], steps: int) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as d:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="train", overrides=[
                f"run_dir={d}", "name=divergence", "~evaluation", f"++trainer.max_steps={steps}", "trainer.log_every_n_steps=1",
                "trainer.enable_progress_bar=false", "callbacks.divergence.factor=null", "trainer.num_sanity_val_steps=0",
                "callbacks.checkpoint.every_n_train_steps=100000", *overrides])
        try:
            run(cfg)
        except FloatingPointError:  # the diverged case ends in nan (finiteness is still checked)
            pass
        rows = csv.DictReader(open(Path(d) / "csv" / "version_0" / "metrics.csv"))
        losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    r = [x for x in ratios(losses) if x == x]
    return max(r), max(r[:20]), len(losses)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    args = p.parse_args()
    lines = ["| loss | steps | max r_s | max r_s, first 20 steps |", "|---|---:|---:|---:|"]
    for name, overrides in CASES.items():
        t0 = time.time()
        worst, early, n = measure(overrides, args.steps)
        lines.append(f"| {name} | {n} | {worst:.3g} | {early:.3g} |")
        print(lines[-1], f"({time.time() - t0:.0f} s)", flush=True)
    text = "\n".join([
        "# Divergence guard: loss jumps of healthy runs", "",
        f"r_s = L_s / median(L_(s-100) ... L_(s-1)), default digits run, batch 128, {args.steps} steps; the guard stops",
        "at r_s > callbacks.divergence.factor (default 100). Command: "
        f"`.venv/bin/python experiments/divergence_threshold/measure.py --steps {args.steps}`", "", *lines, ""])
    (HERE / "RESULTS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
