"""What a resumed run needs beyond Lightning's own restore (weights, EMA, optimizer, scheduler, loop
counters, and the data position of ``data.resumable``) to continue exactly as the uninterrupted run:

* **the random streams of the training steps**, per process: the global CPU generator (dropout on
  CPU), the CUDA generator (dropout on a GPU) and the module's training-noise generator (t and ε).
  The global streams are *isolated*: they are captured after every training step and put back before
  the next one, so that whatever runs between two steps (validation, sampling, a new DataLoader
  iterator, a sanity check at start-up) cannot shift them — in the uninterrupted run or in a
  resumed one. A checkpoint stores the streams as they were after its step;
* **the loss's own state** (the importance-sampling history of ``loss=vlb``), per process;
* **the loggers' resume point**: a logger with ``resume_at(step)`` (``RunCSVLogger``) drops what the
  interrupted attempt logged after the checkpoint, so the run keeps one log with each step once.

Under DDP each process's streams and loss state are gathered into the checkpoint and each process
gets its own back (the same number of processes is needed for an exact resume).
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

log = logging.getLogger(__name__)


def _gather(trainer: pl.Trainer, obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...]: every process's value (a collective under DDP)."""
    if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        out: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(out, obj)
        return out
    return [obj]


def _mine(trainer: pl.Trainer, per_rank: Any, what: str) -> Any:
    """This process's entry of a per-rank list (older checkpoints hold a single value)."""
    if not isinstance(per_rank, list):
        return per_rank
    if len(per_rank) != trainer.world_size:
        log.warning("the checkpoint holds the %s of %d processes but this run has %d; rank 0's is used, so the "
                    "resumed run is not an exact continuation.", what, len(per_rank), trainer.world_size)
        return per_rank[0]
    return per_rank[trainer.global_rank]


class ExactResume(Callback):
    """Random streams, loss state and logger resume point of a training run (see the module docstring)."""

    def __init__(self) -> None:
        self._streams: dict[str, Any] | None = None  # global CPU/CUDA generator states after the last step
        self._noise: torch.Tensor | None = None  # noise-generator state to put back at the next step

    # ---------------------------------------------------------------- the streams between steps
    @staticmethod
    def _capture(pl_module: pl.LightningModule) -> dict[str, Any]:
        streams: dict[str, Any] = {"torch": torch.get_rng_state()}
        if pl_module.device.type == "cuda":
            streams["cuda"] = torch.cuda.get_rng_state(pl_module.device)
        return streams

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._streams is not None:
            torch.set_rng_state(self._streams["torch"])
            if "cuda" in self._streams and pl_module.device.type == "cuda":
                torch.cuda.set_rng_state(self._streams["cuda"], pl_module.device)
        if self._noise is not None and hasattr(pl_module, "noise_generator"):
            pl_module.noise_generator.set_state(self._noise)  # on the module's device by now
            self._noise = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._streams = self._capture(pl_module)

    # ---------------------------------------------------------------- checkpoint
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        streams = dict(self._streams if self._streams is not None else self._capture(pl_module))
        if self._noise is not None:  # resumed but no step taken yet
            streams["noise"] = self._noise
        elif hasattr(pl_module, "noise_generator"):
            streams["noise"] = pl_module.noise_generator.get_state()
        loss = getattr(pl_module, "loss", None)
        loss_state = loss.state_dict() if hasattr(loss, "state_dict") else {}
        checkpoint["rng"] = _gather(trainer, streams)
        checkpoint["loss_state"] = _gather(trainer, loss_state)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        streams = checkpoint.get("rng")
        if streams is not None:
            streams = dict(_mine(trainer, streams, "random streams"))
            if isinstance(streams.get("cuda"), (list, tuple)):  # older checkpoints: every device's state
                cuda = streams.pop("cuda")
                if pl_module.device.type == "cuda" and pl_module.device.index is not None and pl_module.device.index < len(cuda):
                    streams["cuda"] = cuda[pl_module.device.index]
            self._noise = streams.pop("noise", None)
            self._streams = streams  # put back before the first step (after start-up, validation, ...)
        loss = getattr(pl_module, "loss", None)
        if "loss_state" in checkpoint and hasattr(loss, "load_state_dict"):
            loss.load_state_dict(_mine(trainer, checkpoint["loss_state"], "loss state"))
        for logger in trainer.loggers:
            if hasattr(logger, "resume_at"):
                logger.resume_at(int(checkpoint.get("global_step", 0)))
