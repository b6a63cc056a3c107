"""Training-loop overhead: steps/s of a ``train`` run against a bare PyTorch loop of the same model, loss,
optimizer, warm-up, gradient clipping and EMA, on the same batches.

Both loops run in one process, in alternating blocks (Lightning block, bare block, Lightning block, ...),
with one torch thread. Each block is timed twice: in CPU time of this process (``time.process_time``:
the work done, which other processes on a shared machine do not inflate — the headline figure) and in
wall time. The figures are the median ratios of the two loops' steps/s over the blocks.

* Lightning: ``trainer.fit`` of the run's config (``runs.build_parts / build_module / build_trainer``:
  the configured logger, checkpoint, progress bar and learning-rate monitor callbacks) without the
  evaluation, whose cost is measured separately (``experiments/bench_eval``). Timed from the end of
  the first ``--skip`` steps to the end of the block (a callback), so trainer set-up is excluded but
  every per-step and per-epoch cost (logging, epoch boundaries, dataloader restarts) is included.
* Bare: the same DataLoader (epoch-seeded order), ``loss(Denoiser(net, ...), x0)``, backward,
  ``clip_grad_norm_``, AdamW step, the warm-up LR schedule and the EMA update, nothing else.

    .venv/bin/python experiments/bench_training_overhead/run.py [--blocks 5] [--steps 40] [--mnist-dir ../shared/data]

Writes RESULTS.md and results.json beside itself and prints the same table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from diffusion_lab.denoiser import Denoiser
from diffusion_lab.lightning.ema import EMA
from diffusion_lab.runs import CONFIG_DIR, build_module, build_parts, build_trainer

HERE = Path(__file__).resolve().parent


def clocks() -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds)."""
    return time.process_time(), time.perf_counter()


class BlockTimer(pl.Callback):
    """CPU and wall time from the end of step ``skip`` to the end of the last step."""

    def __init__(self, skip: int):
        self.skip, self.t0, self.t1, self.steps = skip, None, None, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.skip:
            self.t0 = clocks()
        elif trainer.global_step > self.skip:
            self.t1, self.steps = clocks(), trainer.global_step - self.skip


def config(overrides: list[str], run_dir: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=[f"run_dir={run_dir}", "name=bench", "~evaluation",
                                                       "trainer.num_sanity_val_steps=0",
                                                       "trainer.check_val_every_n_epoch=100000", *overrides])


def lightning_block(overrides: list[str], steps: int, skip: int) -> tuple[float, float]:
    """(steps per CPU second, steps per wall second) of ``trainer.fit`` over ``steps`` timed steps."""
    with tempfile.TemporaryDirectory() as d:
        cfg = config([*overrides, f"trainer.max_steps={steps + skip}"], d)
        pl.seed_everything(0, verbose=False)
        parts = build_parts(cfg, choices={})
        module = build_module(cfg, parts)
        trainer = build_trainer(cfg, parts)
        timer = BlockTimer(skip)
        trainer.callbacks.append(timer)
        trainer.fit(module, datamodule=parts.datamodule)
        return timer.steps / (timer.t1[0] - timer.t0[0]), timer.steps / (timer.t1[1] - timer.t0[1])


def bare_block(overrides: list[str], steps: int, skip: int) -> tuple[float, float]:
    """(steps per CPU second, steps per wall second) of the bare loop over ``steps`` timed steps (after
    ``skip`` untimed ones)."""
    with tempfile.TemporaryDirectory() as d:
        cfg = config(overrides, d)
        pl.seed_everything(0, verbose=False)
        parts = build_parts(cfg, choices={})
        net = parts.net.train()
        model = Denoiser(net, parts.schedule, parts.parameterization, learned_variance=parts.net.learned_variance)
        opt_cfg = cfg.optimizer
        opt = torch.optim.AdamW(net.parameters(), lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), eps=opt_cfg.eps,
                                weight_decay=opt_cfg.weight_decay)
        warmup = int(opt_cfg.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup)))
        ema = EMA(net, decay=cfg.ema.decay, half_life_images=cfg.ema.half_life_images, ramp_up=cfg.ema.ramp_up)
        clip = cfg.trainer.gradient_clip_val
        dm = parts.datamodule
        dm.setup()
        loader = dm.train_dataloader()
        gen = torch.Generator().manual_seed(cfg.seed)
        step, epoch, t0 = 0, 0, None
        while step < steps + skip:
            loader.sampler.set_epoch(epoch)
            for batch in loader:
                x0 = batch[0]
                out = parts.loss(model, x0, generator=gen)
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                if clip:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
                opt.step()
                sched.step()
                ema.update(net, batch_size=x0.shape[0])
                step += 1
                if step == skip:
                    t0 = clocks()
                if step == steps + skip:
                    break
            epoch += 1
        t1 = clocks()
        return steps / (t1[0] - t0[0]), steps / (t1[1] - t0[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--steps", type=int, default=40, help="timed steps per block (digits); MNIST uses a quarter")
    ap.add_argument("--skip", type=int, default=3, help="untimed steps at the start of each block")
    ap.add_argument("--mnist-dir", default=str(HERE.parents[2] / "shared" / "data"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runs = {
        "digits (default run)": ([], args.steps),
        "mnist, unet_mnist": (["dataset=mnist", f"dataset.data_dir={args.mnist_dir}", "model=unet_mnist"],
                              max(4, args.steps // 4)),
    }
    rows = []
    for name, (overrides, steps) in runs.items():
        if "mnist" in name and not (Path(args.mnist_dir) / "MNIST" / "raw").is_dir():
            print(f"skip {name}: no MNIST under {args.mnist_dir}")
            continue
        lit, bare = [], []
        for b in range(args.blocks):
            lit.append(lightning_block(overrides, steps, args.skip))
            bare.append(bare_block(overrides, steps, args.skip))
            print(f"{name} block {b}: train {lit[-1][0]:.2f} steps/CPU-s ({lit[-1][1]:.2f} wall), bare "
                  f"{bare[-1][0]:.2f} ({bare[-1][1]:.2f} wall), CPU ratio {lit[-1][0] / bare[-1][0]:.3f}", flush=True)
        cpu = [a[0] / b[0] for a, b in zip(lit, bare)]
        wall = [a[1] / b[1] for a, b in zip(lit, bare)]
        rows.append({"run": name, "steps_per_block": steps, "blocks": args.blocks,
                     "train_steps_per_cpu_s": statistics.median(a[0] for a in lit),
                     "bare_steps_per_cpu_s": statistics.median(b[0] for b in bare),
                     "cpu_ratio": statistics.median(cpu), "cpu_ratio_min": min(cpu), "cpu_ratio_max": max(cpu),
                     "wall_ratio": statistics.median(wall), "wall_ratio_min": min(wall), "wall_ratio_max": max(wall)})
    lines = ["# Training-loop overhead: `train` against a bare PyTorch loop", "",
             f"`.venv/bin/python experiments/bench_training_overhead/run.py --blocks {args.blocks} --steps {args.steps}` "
             f"(CPU, {args.threads} thread; alternating blocks in one process; medians over blocks, min–max in "
             "brackets). *CPU*: steps per CPU second of this process, which the load of other processes on a "
             "shared machine does not inflate; *wall*: steps per second of wall time.", "",
             "| run | timed steps per block | train steps / CPU-s | bare loop steps / CPU-s | train / bare (CPU) | "
             "train / bare (wall) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['steps_per_block']} | {r['train_steps_per_cpu_s']:.2f} | "
                     f"{r['bare_steps_per_cpu_s']:.2f} | {r['cpu_ratio']:.3f} ({r['cpu_ratio_min']:.3f}–"
                     f"{r['cpu_ratio_max']:.3f}) | {r['wall_ratio']:.3f} ({r['wall_ratio_min']:.3f}–{r['wall_ratio_max']:.3f}) |")
    text = "\n".join(lines) + "\n"
    (HERE / "RESULTS.md").write_text(text)
    (HERE / "results.json").write_text(json.dumps(rows, indent=1))
    print(text)


if __name__ == "__main__":
    main()
