"""Checkpoint files that are never lost or half-written.

* ``AtomicCheckpointIO`` (a Trainer plugin) writes every checkpoint to a temporary file in the same
  directory, flushes it to disk and renames it over the target (``os.replace``, atomic on POSIX): a
  crash, a ``kill -9`` or a full disk leaves either the previous file or the new one, never a
  truncated one. A failed write (disk full, no permission) removes the temporary file and stops the
  run with one sentence (``CheckpointError``) saying that the previous checkpoint is intact.
  (Lightning's own writer stages the file in the system temporary directory and then copies it,
  which is not atomic across file systems.)
* ``Checkpoint`` (a ``ModelCheckpoint``) also saves ``last.ckpt`` at the final step, whatever ends
  the run — max_steps, max_epochs, max_time, early stopping — not only on the
  ``every_n_train_steps`` schedule. Where the end is known after a training batch (max_steps,
  max_time, the last batch of the last epoch) it saves right there, so the checkpoint is the same as
  a scheduled one at that step (and ``trainer.max_steps`` can be raised to continue exactly); what
  decides to stop later (early stopping at the end of an epoch) is saved at the end of training.
  At start-up it removes temporary files that a killed run left behind.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_fabric.utilities.cloud_io import _is_local_file_protocol
from pytorch_lightning.callbacks import ModelCheckpoint

from diffusion_lab.checkpoints import CheckpointError

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"


def _temporary_path(path: Path) -> Path:
    """A hidden file beside ``path`` (same file system, so the final rename is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory; the rename itself is still atomic
    finally:
        os.close(fd)


def save_atomically(checkpoint: dict[str, Any], path: str | Path) -> None:
    """torch.save to a temporary file beside ``path``, fsync, then rename it over ``path``."""
    path = Path(path)
    tmp = _temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        reason = e.strerror or errno.errorcode.get(e.errno or 0, type(e).__name__)
        kept = sorted(path.parent.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)[-2:] if path.parent.is_dir() else []
        kept = [p.name for p in kept]
        fix = "free disk space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else f"make {path.parent} writable"
        raise CheckpointError(
            f"could not write checkpoint {path} ({reason}), so training stopped; "
            + (f"the checkpoints already written are intact (newest: {', '.join(kept)}) — {fix} and resume with ckpt_path=last."
               if kept else f"no checkpoint had been written yet — {fix} and start again.")
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch.save/torch.load checkpoint I/O with atomic local writes (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)  # remote: fsspec's transaction
        save_atomically(checkpoint, path)


class Checkpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that always saves ``last.ckpt`` at the final step (see the module docstring)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath is not None and _is_local_file_protocol(self.dirpath):
            for stale in Path(self.dirpath).glob(f".*{TMP_SUFFIX}"):  # left by a killed run
                stale.unlink(missing_ok=True)

    def save_last_now(self, trainer: pl.Trainer) -> Path:
        """Save ``last.ckpt`` at the current step; returns its path."""
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        return Path(self.last_model_path)

    @staticmethod
    def _ends_after_this_batch(trainer: pl.Trainer) -> bool:
        """True when the loop will stop after the current training batch."""
        if trainer.should_stop:  # max_time (Timer), a callback's request
            return True
        if 0 <= trainer.max_steps <= trainer.global_step:
            return True
        max_epochs = trainer.max_epochs
        last_epoch = max_epochs is not None and max_epochs >= 0 and trainer.current_epoch + 1 >= max_epochs
        return last_epoch and bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if (self.save_last and self._ends_after_this_batch(trainer) and not self._should_skip_saving_checkpoint(trainer)
                and not trainer.fit_loop._should_accumulate()):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def last_checkpoint_path(trainer: pl.Trainer) -> Path:
    """The run's ``last.ckpt``: the ModelCheckpoint's, else <default_root_dir>/checkpoints/last.ckpt."""
    cb = trainer.checkpoint_callback
    if isinstance(cb, ModelCheckpoint) and cb.dirpath is not None:
        return Path(str(cb.dirpath)) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


def save_last_checkpoint(trainer: pl.Trainer) -> Path:
    """Save the run's ``last.ckpt`` at the current step (through the Checkpoint callback when there is one)."""
    cb = trainer.checkpoint_callback
    if isinstance(cb, Checkpoint) and cb.save_last:
        return cb.save_last_now(trainer)
    path = last_checkpoint_path(trainer)
    trainer.save_checkpoint(path)
    return path
