"""Training throughput: steps/s and images/s of the default run (8x8 digits, small UNet) and of MNIST
with the small MNIST UNet, with and without the fast options, plus the share of each step spent
waiting for data (the time between the end of one training batch and the start of the next, which
is the dataloader's fetch). Writes RESULTS.md and results.json beside itself and prints the table.

    .venv/bin/python experiments/bench_training/run.py [--steps 40] [--mnist-dir ../shared/data]

The same script runs on a GPU unchanged: it then also tries bf16 autocast and torch.compile.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from diffusion_lab.runs import CONFIG_DIR, build_module, build_parts

HERE = Path(__file__).resolve().parent


class StepTimer(pl.Callback):
    """Wall time of each training step and of the wait for its batch."""

    def __init__(self, warmup: int):
        self.warmup, self.step_times, self.wait_times = warmup, [], []
        self._end = self._start = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        now = time.perf_counter()
        if self._end is not None and trainer.global_step >= self.warmup:
            self.wait_times.append(now - self._end)
        self._start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        if trainer.global_step > self.warmup:
            self.step_times.append(now - self._start)
        self._end = now


def measure(overrides: list[str], steps: int, warmup: int, precision: str) -> dict:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["run_dir=/tmp/bench_training", "name=bench", *overrides])
    parts = build_parts(cfg, choices={})
    module = build_module(cfg, parts)
    timer = StepTimer(warmup)
    trainer = pl.Trainer(max_steps=steps + warmup, accelerator="auto", devices=1, precision=precision, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, callbacks=[timer],
                         num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False)
    trainer.fit(module, datamodule=parts.datamodule)
    bs = parts.datamodule.batch_size
    step = sum(timer.step_times) / len(timer.step_times)
    wait = sum(timer.wait_times) / max(1, len(timer.wait_times))
    return {"steps_per_s": 1.0 / (step + wait), "images_per_s": bs / (step + wait), "step_ms": 1e3 * step,
            "data_wait_ms": 1e3 * wait, "data_wait_share": wait / (step + wait), "batch_size": bs}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--mnist-dir", default=str(HERE.parents[2] / "shared" / "data"))
    args = ap.parse_args()
    gpu = torch.cuda.is_available()
    runs = {
        "digits (default run)": [],
        "mnist, unet_mnist": ["dataset=mnist", f"dataset.data_dir={args.mnist_dir}", "model=unet_mnist", "dataset.num_workers=2"],
    }
    variants = [("plain fp32", [], "32-true"), ("channels_last", ["fast.channels_last=true"], "32-true")]
    if gpu:
        variants += [("channels_last + bf16", ["fast.channels_last=true"], "bf16-mixed"),
                     ("channels_last + bf16 + compile", ["fast.channels_last=true", "fast.compile=true"], "bf16-mixed")]
    else:
        variants += [("bf16 autocast (CPU)", [], "bf16-mixed")]
    rows = []
    for name, ov in runs.items():
        for vname, vov, precision in variants:
            try:
                r = measure(ov + vov, args.steps, args.warmup, precision)
            except Exception as e:  # e.g. MNIST files missing: report, go on
                print(f"skip {name} / {vname}: {e}")
                continue
            rows.append({"run": name, "options": vname, "device": "cuda" if gpu else "cpu", **r})
            print(rows[-1])
    lines = ["| run | options | device | batch | steps/s | images/s | step ms | data wait ms | wait share |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['options']} | {r['device']} | {r['batch_size']} | {r['steps_per_s']:.2f} | "
                     f"{r['images_per_s']:.0f} | {r['step_ms']:.1f} | {r['data_wait_ms']:.2f} | {100 * r['data_wait_share']:.1f}% |")
    table = "\n".join(lines)
    print(table)
    (HERE / "results.json").write_text(json.dumps(rows, indent=1))
    (HERE / "RESULTS.md").write_text(
        "# Training throughput\n\n`.venv/bin/python experiments/bench_training/run.py` "
        f"({args.steps} timed steps after {args.warmup} warm-up steps, torch threads = {torch.get_num_threads()}).\n\n"
        + table + "\n")


if __name__ == "__main__":
    main()
