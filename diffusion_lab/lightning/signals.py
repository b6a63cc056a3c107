"""Nothing lost on a signal: Ctrl-C (SIGINT), SIGTERM, and a cluster's pre-emption signal (SIGUSR1
from SLURM's ``--signal``, SIGUSR2 from submitit) finish the training step in progress, save
``last.ckpt`` at that step, print the one command that resumes the run, and stop with exit status
128 + the signal number.

The handler only records the signal; the work happens at the next point where Lightning's own
checkpoints are consistent: the end of a training batch (at the end of a gradient-accumulation
window), of a training epoch, or of validation — never in the middle of an optimizer step. After a
training batch the run stops at the next hook, once Lightning has logged that step (before any
validation or end-of-epoch sampling). A second signal stops at once without saving (Ctrl-C twice).
Under DDP the decision is shared by all processes, which save together.

For a pre-emption signal the handler that was installed before this one — Lightning's SLURM
auto-requeue (``SLURMEnvironment``: saves ``hpc_ckpt_<n>.ckpt`` and runs ``scontrol requeue``) or
submitit's (SIGUSR2) — runs after the save, at the same consistent point, so that the job is
requeued from this step. A requeued SLURM job resumes by itself: Lightning loads the newest
``<run dir>/hpc_ckpt_<n>.ckpt`` when no ckpt_path is given, and ``last.ckpt`` is linked there
before the requeue (whichever handler requeues). DataLoader worker processes ignore SIGINT and
SIGTERM (``data.resumable``): the main process stops them after the save.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Sequence

import pytorch_lightning as pl
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.callbacks import Callback

from diffusion_lab.lightning.checkpointing import save_last_checkpoint

log = logging.getLogger(__name__)

PREEMPTION = {getattr(signal, n) for n in ("SIGUSR1", "SIGUSR2") if hasattr(signal, n)}
_FORGET = {"ckpt_path", "hydra.run.dir"}


class TrainingInterrupted(SystemExit):
    """Training stopped on a signal after saving its checkpoint; the exit status is 128 + signal."""


def resume_command(run_dir: str, overrides: Sequence[str] | None = None) -> str:
    """``python -m diffusion_lab.train <the run's overrides> ckpt_path=last hydra.run.dir=<run_dir>``.

    The overrides are Hydra's (the command line of this run, or this job of a multirun); outside
    Hydra a placeholder stands for them."""
    if overrides is None:
        try:
            from hydra.core.hydra_config import HydraConfig

            overrides = list(HydraConfig.get().overrides.task)
        except (ImportError, ValueError):
            overrides = None
    kept = ["<the same overrides>"] if overrides is None else [
        shlex.quote(o) for o in overrides if o.split("=", 1)[0].lstrip("+~") not in _FORGET]
    return " ".join(["python -m diffusion_lab.train", *kept, "ckpt_path=last",
                     f"hydra.run.dir={shlex.quote(str(run_dir))}"])


def _link_for_slurm_requeue(trainer: pl.Trainer, path: Path) -> None:
    """Under SLURM, make ``path`` the checkpoint a requeued job resumes from: Lightning loads the newest
    ``hpc_ckpt_<n>.ckpt`` of the run directory (a hard link: no copy, no extra disk)."""
    if not isinstance(trainer._accelerator_connector.cluster_environment, SLURMEnvironment) or not trainer.is_global_zero:
        return
    hpc = Path(trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir))
    try:
        os.link(path, hpc)
    except OSError:
        shutil.copyfile(path, hpc)


class SaveOnSignal(Callback):
    """``SaveOnSignal(signals=[SIGINT, SIGTERM, SIGUSR1, SIGUSR2])`` (see the module docstring)."""

    def __init__(self, signals: Sequence[str] = ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2")):
        unknown = [s for s in signals if not isinstance(getattr(signal, str(s), None), signal.Signals)]
        if unknown:
            raise ValueError(f"callbacks.signals.signals: {unknown} are not signal names here; use e.g. SIGINT, SIGTERM, SIGUSR1.")
        self.signals = [getattr(signal, str(s)) for s in signals]
        self._previous: dict[int, Any] = {}
        self._received: int | None = None
        self._stop: TrainingInterrupted | None = None  # raised at the next hook after the save

    # ------------------------------------------------------------------ handlers
    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only
        self._received, self._stop = None, None
        for s in self.signals:
            self._previous[s] = signal.getsignal(s)
            signal.signal(s, self._on_signal)

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._received is not None:  # second signal: stop now, without saving
            self._restore()
            log.warning("%s again: stopping at once, without saving.", name)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise TrainingInterrupted(128 + signum)
        self._received = signum
        log.warning("%s received: finishing the current training step, then saving a checkpoint and stopping "
                    "(send it again to stop at once, without saving).", name)

    # ------------------------------------------------------------------ consistent points
    def _save_if_signalled(self, trainer: pl.Trainer) -> None:
        """If a signal came: save last.ckpt now, requeue if pre-empted, and arm the stop."""
        signum = self._received
        if trainer.world_size > 1 and trainer.strategy.reduce_boolean_decision(signum is not None, all=False):
            signum = signum or signal.SIGTERM  # another process got it
        if signum is None or trainer.sanity_checking:
            return
        path = save_last_checkpoint(trainer)
        previous = self._previous.get(signum)
        self._restore()
        name = signal.Signals(signum).name
        requeued = signum in PREEMPTION and callable(previous)
        if requeued:
            _link_for_slurm_requeue(trainer, path)
            previous(signum, None)  # Lightning's SLURM auto-requeue or submitit's: after the save
        if trainer.is_global_zero:
            what = "pre-empted" if signum in PREEMPTION else "stopped"
            then = "; the requeued job resumes from it" if requeued else ""
            log.warning("%s by %s after step %d, nothing lost: saved %s%s; resume with:\n  %s", what, name,
                        trainer.global_step, path, then, resume_command(trainer.default_root_dir))
        self._received = None
        self._stop = TrainingInterrupted(128 + signum)

    def _stop_if_armed(self) -> None:
        if self._stop is not None:
            stop, self._stop = self._stop, None
            raise stop

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not trainer.fit_loop._should_accumulate():  # gradients of a partial window are not saved
            self._save_if_signalled(trainer)  # stop at the next hook, once Lightning has logged this step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._stop_if_armed()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_if_armed()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_if_armed()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_if_armed()
        self._save_if_signalled(trainer)
        self._stop_if_armed()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save_if_signalled(trainer)
        self._stop_if_armed()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_if_armed()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore()
