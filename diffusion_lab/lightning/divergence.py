"""Stop a run that diverges, before a diverged model reaches a checkpoint.

A training step is *diverged* when its loss L_s is not finite, or when L_s > k · median(L_{s−w}, …,
L_{s−1}) — k times the running median of the last w accepted losses (``factor`` k, default 100;
``window`` w, default 100; the ratio test needs a positive median, so losses that may be negative,
like sliced score matching's, are only checked for finiteness). The median, not the mean, so that
the very spike being tested cannot raise its own threshold; a diffusion loss that jumps a hundred
times above its recent median has blown up (a learning rate far too large, bad data), it is not
noise.

The losses stay on the device and are read every ``check_every_n_steps`` steps (one host sync per
read) and always before a checkpoint is written — so no checkpoint ever holds a diverged model, and
the error names the first diverged step even when it is read a few steps later. Before a checkpoint
is written the parameters are also checked for finiteness. Before each Adam/AdamW step the step size
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

from diffusion_lab.lightning.checkpointing import last_checkpoint_path

ADVICE = "lower optimizer.lr or set trainer.gradient_clip_val"


class DivergenceError(FloatingPointError):
    """Training diverged; the message names the step and the checkpoint that was kept."""


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

    # ------------------------------------------------------------------ the test
    def _first_diverged(self, values: list[tuple[int, float]]) -> tuple[int, str] | None:
        """(step, reason) of the first diverged value; accepted ones join the history."""
        for step, v in values:
            if not math.isfinite(v):
                return step, f"the training loss is {v} at step {step}"
            if self.factor is not None and self._history:
                median = statistics.median(self._history)
                if median > 0 and v > self.factor * median:
                    return step, (f"the training loss {v:.3g} at step {step} is more than {self.factor:g}× its running "
                                  f"median {median:.3g} (callbacks.divergence.factor)")
            self._history.append(v)
        return None

    def _check(self, trainer: pl.Trainer) -> None:
        """Read the pending losses (one sync) and stop on the first diverged one (on every rank)."""
        pending, self._pending = self._pending, []
        found = None
        if pending:
            values = torch.stack([v for _, v in pending]).double().cpu().tolist()
            found = self._first_diverged([(s, v) for (s, _), v in zip(pending, values)])
        if trainer.world_size > 1 and trainer.strategy.reduce_boolean_decision(found is not None, all=False):
            found = found or (trainer.global_step, f"the training loss of another process diverged by step "
                                                   f"{trainer.global_step}")
        if found is not None:
            self._stop(trainer, found[1])

    def _stop(self, trainer: pl.Trainer, reason: str) -> None:
        if self._saved_step is not None:
            kept = f"{last_checkpoint_path(trainer)} (step {self._saved_step}) is kept"
        else:
            kept = "no checkpoint had been written"
        raise DivergenceError(f"{reason}: the run diverged, so training stopped and {kept} — {ADVICE}.")

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
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
                raise DivergenceError(
                    f"optimizer.lr={group['lr']:g} makes the Adam step size lr/(1−β₁^{step}) = {size:.3g} at step {step} "
                    f"overflow {group['params'][0].dtype} (largest {largest:.3g}), so the run cannot train — lower "
                    "optimizer.lr."
                )

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self._check(trainer)  # no checkpoint of a diverged model
        params = [p for p in pl_module.parameters() if p.is_floating_point()]
        if params and not bool(torch.stack([p.detach().isfinite().all() for p in params]).all()):
            name = next(n for n, p in pl_module.named_parameters() if p.is_floating_point() and not p.isfinite().all())
            self._stop(trainer, f"parameter {name} is not finite at step {trainer.global_step}")
        self._saved_step = trainer.global_step

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self._saved_step = int(checkpoint.get("global_step", 0))

    def state_dict(self) -> dict[str, Any]:
        if self._trainer is not None:
            self._check(self._trainer)  # the history up to this step travels with the checkpoint
        return {"history": list(self._history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._history = deque((float(v) for v in state.get("history", [])), maxlen=self.window)
