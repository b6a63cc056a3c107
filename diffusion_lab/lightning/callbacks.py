"""Callbacks: a grid of samples at the end of every k-th epoch, drawn from the same seeded noise each
time so that the pictures of successive epochs line up."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only

from diffusion_lab.images import save_grid


class SampleGridCallback(pl.Callback):
    """Writes ``samples/epoch_XXXX.png`` under the run directory and logs the grid to the logger."""

    def __init__(self, n: int = 64, every_n_epochs: int = 1, seed: int = 0, use_ema: bool = True, out_dir: str | None = None):
        if n < 1 or every_n_epochs < 1:
            raise ValueError(f"evaluation.n and evaluation.every_n_epochs must be positive, got {n} and {every_n_epochs}.")
        self.n, self.every_n_epochs, self.seed, self.use_ema, self.out_dir = n, every_n_epochs, seed, use_ema, out_dir
        self.last_path: Path | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if (epoch + 1) % self.every_n_epochs == 0 or last or trainer.should_stop:
            self._sample(trainer, pl_module, epoch)

    @rank_zero_only
    def _sample(self, trainer: pl.Trainer, pl_module, epoch: int) -> None:
        g = torch.Generator(device="cpu").manual_seed(self.seed)
        x_T = pl_module.schedule.prior_sample((self.n, *pl_module.data_shape), generator=g, dtype=torch.float64)
        res = pl_module.generate(self.n, x_T=x_T.to(pl_module.device), use_ema=self.use_ema)
        out_dir = Path(self.out_dir or trainer.default_root_dir) / "samples"
        path = save_grid(res.x, out_dir / f"epoch_{epoch:04d}.png")
        self.last_path = path
        label = pl_module.sampler.label
        pl_module.log_dict({f"samples/nfe/{label}": float(res.nfe), f"samples/seconds/{label}": res.seconds},
                           rank_zero_only=True)
        _log_image(trainer, f"samples/{label}", path, epoch)


def _log_image(trainer: pl.Trainer, key: str, path: Path, step: int) -> None:
    """Send an image file to every logger that can show images (W&B, TensorBoard)."""
    for logger in trainer.loggers:
        if hasattr(logger, "log_image"):  # WandbLogger
            logger.log_image(key=key, images=[str(path)], step=trainer.global_step)
        elif hasattr(getattr(logger, "experiment", None), "add_image"):  # TensorBoard
            import numpy as np
            from PIL import Image

            arr = np.asarray(Image.open(path).convert("RGB"))
            logger.experiment.add_image(key, arr, step, dataformats="HWC")
