"""The LightningModule of the noise-conditional classifier p_φ(y | x_t, t) that classifier guidance uses
(Dhariwal & Nichol 2021, §4 and App. B: a classifier trained on noised images at every noise level).

Training: for labelled data (x_0, y), t ~ U[t_min, t_max] of the schedule, ε ~ N(0, I),
x_t = α x_0 + σ ε, and cross-entropy of the classifier's logits at ``guidance.classifier_inputs(x_t, t)``
(the same inputs guidance feeds it). AdamW with a linear warm-up.

Validation: the accuracy by noise level — on the validation split, at ``levels`` fixed times
t_k = t_min + (k + ½)(t_max − t_min)/levels with fixed noise (the same x_t every epoch), the fraction
of correctly classified items; logged as ``val/acc`` (the mean over levels) and
``val/acc_t<t_k>``, and kept as a table (``accuracy_by_noise``: epoch, step, t, σ̃ = σ/α, accuracy)
that travels in the checkpoint and is written to ``<run dir>/eval/accuracy_by_noise.csv``. Near
t_max the image is noise and the accuracy falls to the class prior; that curve is what tells how far
up the noise levels the classifier's gradient can guide.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from diffusion_lab.guidance import classifier_inputs
from diffusion_lab.lightning.optim import adam_with_warmup
from diffusion_lab.losses.base import gaussian_noise
from diffusion_lab.schedules.base import Schedule


def noise_levels(schedule: Schedule, levels: int) -> Tensor:
    """The validation times t_k = t_min + (k + ½)(t_max − t_min)/levels, k = 0..levels − 1 (float64)."""
    k = torch.arange(levels, dtype=torch.float64)
    return schedule.t_min + (k + 0.5) * (schedule.t_max - schedule.t_min) / levels


class NoiseClassifierModule(pl.LightningModule):
    """Cross-entropy training of ``classifier(x_in, noise_label)`` on noised data (module docstring)."""

    def __init__(self, classifier: nn.Module, schedule: Schedule, optimizer: dict | None = None, levels: int = 10,
                 out_dir: str | None = None, config: dict | None = None, seed: int = 0):
        super().__init__()
        if not isinstance(levels, int) or isinstance(levels, bool) or levels < 1:
            raise ValueError(f"accuracy_levels={levels!r} must be an integer ≥ 1.")
        self.classifier, self.schedule = classifier, schedule
        self.optim_cfg = {"name": "adamw", "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.05,
                          "warmup_steps": 0, **(optimizer or {})}
        self.levels, self.out_dir, self.seed = int(levels), out_dir, int(seed)
        self.t_levels = noise_levels(schedule, self.levels)
        self.accuracy_by_noise: list[dict[str, Any]] = []
        self._gen: torch.Generator | None = None
        self._correct = torch.zeros(self.levels, dtype=torch.float64)
        self._count = torch.zeros(self.levels, dtype=torch.float64)
        self.save_hyperparameters({"config": config or {}})

    @property
    def noise_generator(self) -> torch.Generator:
        """The training noise (t, ε), seeded with seed + rank; its state travels in the checkpoint
        (``lightning.resume.ExactResume``, one of the default callbacks)."""
        if self._gen is None or self._gen.device != self.device:
            self._gen = torch.Generator(device=self.device).manual_seed(self.seed + self.global_rank)
        return self._gen

    def logits(self, x_t: Tensor, t: Tensor) -> Tensor:
        return self.classifier(*classifier_inputs(x_t, t, self.schedule))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x0, y = batch[0], batch[1]
        g = self.noise_generator
        u = torch.rand(x0.shape[0], generator=g, device=g.device, dtype=torch.float64).to(x0.device)
        t = (self.schedule.t_min + (self.schedule.t_max - self.schedule.t_min) * u).to(x0.dtype)
        x_t = self.schedule.add_noise(x0, gaussian_noise(x0, g), t)
        logits = self.logits(x_t, t)
        loss = nn.functional.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            from diffusion_lab.errors import DivergenceError

            raise DivergenceError(f"train/loss is {float(loss)} at step {self.global_step}; lower optimizer.lr.")
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=x0.shape[0])
        self.log("train/acc", (logits.argmax(1) == y).float().mean(), on_step=False, on_epoch=True, batch_size=x0.shape[0])
        return loss

    # ------------------------------------------------------------------ accuracy by noise level
    def on_validation_epoch_start(self) -> None:
        self._correct.zero_()
        self._count.zero_()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x0, y = batch[0], batch[1]
        g = torch.Generator(device=self.device).manual_seed(10_000 + batch_idx + 1_000 * self.global_rank)
        for k, tk in enumerate(self.t_levels.tolist()):
            t = torch.full((x0.shape[0],), tk, dtype=x0.dtype, device=x0.device)
            x_t = self.schedule.add_noise(x0, gaussian_noise(x0, g), t)
            self._correct[k] += float((self.logits(x_t, t).argmax(1) == y).sum())
            self._count[k] += x0.shape[0]

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        correct, count = self._correct.to(self.device), self._count.to(self.device)
        if self.trainer.world_size > 1:
            correct, count = self.all_gather(correct).sum(0), self.all_gather(count).sum(0)
        acc = (correct / count.clamp_min(1)).cpu()
        t = self.t_levels
        st = self.schedule.sigma_tilde(t)
        for k in range(self.levels):
            self.log(f"val/acc_t{float(t[k]):.3f}", float(acc[k]), sync_dist=False)
            self.accuracy_by_noise.append({"epoch": int(self.current_epoch), "step": int(self.global_step),
                                           "t": float(t[k]), "sigma_tilde": float(st[k]), "accuracy": float(acc[k])})
        self.log("val/acc", float(acc.mean()), prog_bar=True, sync_dist=False)
        if self.out_dir is not None and self.global_rank == 0:
            self.write_table(Path(self.out_dir) / "eval" / "accuracy_by_noise.csv")

    def write_table(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["epoch", "step", "t", "sigma_tilde", "accuracy"])
            w.writeheader()
            w.writerows(self.accuracy_by_noise)
        return path

    def latest_accuracy(self) -> list[dict[str, Any]]:
        """The rows of the latest validation (one per noise level)."""
        return self.accuracy_by_noise[-self.levels:]

    # ------------------------------------------------------------------ optimisation and checkpoints
    def configure_optimizers(self):
        return adam_with_warmup(self.classifier.parameters(), self.optim_cfg)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["accuracy_by_noise"] = [dict(r) for r in self.accuracy_by_noise]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.accuracy_by_noise = [dict(r) for r in checkpoint.get("accuracy_by_noise", [])]

    def mean_accuracy(self) -> float:
        rows = self.latest_accuracy()
        return sum(r["accuracy"] for r in rows) / len(rows) if rows else math.nan
