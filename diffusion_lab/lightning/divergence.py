"""Stop a run that diverges, before a diverged model reaches a checkpoint.

A training step is *diverged* when its loss L_s is not finite, or when L_s > k · median(L_{s−w}, …,
L_{s−1}) — k times the running median of the last w accepted losses (``factor`` k, default 100;
``window`` w, default 100; the ratio test needs a positive median, so losses that may be negative,
like sliced score matching's, are only checked for finiteness). The median, not the mean, so that
the very spike being tested cannot raise its own threshold; a diffusion loss that jumps a hundred
times above its recent median has blown up (a learning rate far too large, bad data), it is not
noise.

The losses stay on the device and are read every ``check_every_n_steps`` steps (one host sync per
read) and always before a checkpoint is written; the error names the first diverged step even when
it is read a few steps later. The loss of step s is computed with the weights *before* its update,
so before a checkpoint of step s is written the weights it would hold are tested too: finite, and
— when the module offers ``batch_loss(batch, generator)`` — their loss on the last training batch
passes the same test (one forward pass per checkpoint). So no checkpoint ever holds a diverged
model. Before each Adam/AdamW step the step size
lr / (1 − β₁ᵗ) (Kingma & Ba 2015, Alg. 1) is checked against the largest float of the parameters, so
that a learning rate that cannot work stops with one sentence instead of a PyTorch overflow.

Every stop raises ``DivergenceError`` (a ``FloatingPointError``) with one sentence naming the step and
the checkpoint that is kept.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from diffusion_lab.errors import DivergenceError
from diffusion_lab.lightning.checkpointing import last_checkpoint_path

ADVICE = "lower optimizer.lr or set trainer.gradient_clip_val"


class DivergenceGuard(Callback):
    """``DivergenceGuard(factor=100, window=100, check_every_n_steps=10)``; ``factor=None`` checks
    finiteness only."""

    def __init__(self, factor: float | None = 100.0, window: int = 100, check_every_n_steps: int = 10):
        if factor is not None and not factor > 1:
            raise ValueError(f"callbacks.divergence.factor must be > 1 (or null to check finiteness only), got {factor}.")
        if window < 1 or check_every_n_steps < 1:
            raise ValueError(f"callbacks.divergence.window and check_every_n_steps must be >= 1, got {window} and "
                             f"{check_every_n_steps}.")
        self.factor, self.window, self.check_every_n_steps = factor, int(window), int(check_every_n_steps)
        self._history: deque[float] = deque(maxlen=self.window)  # accepted losses, oldest first
        self._pending: list[tuple[int, torch.Tensor]] = []  # (step, loss on the device), not yet read
        self._saved_step: int | None = None  # step of the last checkpoint written (or resumed from)
        self._trainer: pl.Trainer | None = None
        self._last_batch: Any = None  # for the loss of the weights about to be saved

    # ------------------------------------------------------------------ the test
    def _diverged(self, v: float, what: str) -> str | None:
        """Why the loss value ``v`` (described by ``what``) is diverged, or None."""
        if not math.isfinite(v):
            return f"{what} is {v}"
        if self.factor is not None and self._history:
            median = statistics.median(self._history)
            if median > 0 and v > self.factor * median:
                return (f"{what} ({v:.3g}) is more than {self.factor:g}× the running median {median:.3g} of the "
                        "training loss (callbacks.divergence.factor)")
        return None

    def _first_diverged(self, values: list[tuple[int, float]]) -> str | None:
        """The reason of the first diverged (step, loss); accepted ones join the history."""
        for step, v in values:
            reason = self._diverged(v, f"the training loss at step {step}")
            if reason is not None:
                return reason
            self._history.append(v)
        return None

    def _check(self, trainer: pl.Trainer) -> None:
        """Read the pending losses (one sync) and stop on the first diverged one (on every rank)."""
        pending, self._pending = self._pending, []
        found = None
        if pending:
            values = torch.stack([v for _, v in pending]).double().cpu().tolist()
            found = self._first_diverged([(s, v) for (s, _), v in zip(pending, values)])
        self._stop_if(trainer, found)

    def _stop_if(self, trainer: pl.Trainer, reason: str | None) -> None:
        """Stop with ``reason`` — on every process when any has one."""
        if trainer.world_size > 1 and trainer.strategy.reduce_boolean_decision(reason is not None, all=False):
            reason = reason or f"the training loss of another process diverged by step {trainer.global_step}"
        if reason is not None:
            self._stop(trainer, reason)

    def _stop(self, trainer: pl.Trainer, reason: str, verdict: str = "the run diverged", advice: str = ADVICE) -> None:
        if self._saved_step is not None:
            kept = f"{last_checkpoint_path(trainer)} (step {self._saved_step}) is kept"
        else:
            kept = "no checkpoint had been written"
        raise DivergenceError(f"{reason}: {verdict}, so training stopped and {kept} — {advice}.")

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._last_batch = batch
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._pending.append((trainer.global_step, loss.detach().reshape(())))
        if len(self._pending) >= self.check_every_n_steps:
            self._check(trainer)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        step = trainer.global_step + 1
        for group in optimizer.param_groups:
            if "betas" not in group or not group["params"]:
                continue  # not an Adam-type optimizer
            largest = torch.finfo(group["params"][0].dtype).max
            size = float(group["lr"]) / (1.0 - float(group["betas"][0]) ** step)
            if not size <= largest:
                self._stop(trainer, f"optimizer.lr={group['lr']:g} makes the Adam step size lr/(1−β₁^{step}) = {size:.3g} "
                                    f"at step {step} overflow {group['params'][0].dtype} (largest {largest:.3g})",
                           verdict="the run cannot train", advice="lower optimizer.lr")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self._check(trainer)  # no checkpoint of a diverged model: the losses so far ...
        step = trainer.global_step
        params = [p for p in pl_module.parameters() if p.is_floating_point()]
        reason = None
        if params and not bool(torch.stack([p.detach().isfinite().all() for p in params]).all()):
            name = next(n for n, p in pl_module.named_parameters() if p.is_floating_point() and not p.isfinite().all())
            reason = f"parameter {name} is not finite after step {step}"
        elif self._last_batch is not None and hasattr(pl_module, "batch_loss"):  # ... and the weights to be saved
            g = torch.Generator(device=pl_module.device).manual_seed(0)
            loss = float(pl_module.batch_loss(self._last_batch, g))
            reason = self._diverged(loss, f"the loss of the weights after step {step} on its batch")
        self._stop_if(trainer, reason)
        self._saved_step = step

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._last_batch, self._pending = None, []

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self._saved_step = int(checkpoint.get("global_step", 0))

    def state_dict(self) -> dict[str, Any]:
        if self._trainer is not None:
            self._check(self._trainer)  # the history up to this step travels with the checkpoint
        return {"history": list(self._history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._history = deque((float(v) for v in state.get("history", [])), maxlen=self.window)
