"""The LightningModule: a network trained with a loss under a schedule and parameterization, with
EMA weights used for sampling.

Everything mathematical lives below (schedules, parameterization, losses, samplers); this file only
wires it to Lightning: optimisation (Adam/AdamW, linear warm-up, gradient clipping through the
Trainer), EMA updates inside each optimizer step, and ``sampling()``: the model adapter over the EMA
(or raw) weights in eval mode, for the evaluation and the entry points. The random streams and the
loss's own state (importance-sampling history) travel in the checkpoint through
``lightning.resume.ExactResume``; divergence is caught by ``lightning.divergence.DivergenceGuard``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from diffusion_lab.denoiser import Denoiser
from diffusion_lab.lightning.ema import EMA
from diffusion_lab.lightning.optim import adam_with_warmup
from diffusion_lab.parameterization import Parameterization
from diffusion_lab.guidance import drop_labels
from diffusion_lab.schedules.base import Schedule


def steps_per_epoch(trainer: pl.Trainer) -> int | None:
    """Optimizer steps per training epoch (batches / gradient accumulation); None when unknown."""
    batches = trainer.num_training_batches
    if not isinstance(batches, int) and not (isinstance(batches, float) and math.isfinite(batches)):
        return None
    return max(1, math.ceil(int(batches) / max(1, trainer.accumulate_grad_batches)))


class DiffusionModule(pl.LightningModule):
    """net + schedule + parameterization + loss, trained with EMA weights for sampling."""

    def __init__(
        self,
        net: nn.Module,
        schedule: Schedule,
        parameterization: Parameterization,
        loss: Any,
        data_shape: tuple[int, ...],
        optimizer: dict | None = None,
        ema: dict | None = None,
        channels_last: bool = False,
        compile: bool = False,
        config: dict | None = None,
        seed: int = 0,
        p_uncond: float = 0.0,
    ):
        super().__init__()
        # label dropout for classifier-free guidance (Ho & Salimans 2022): a label becomes the null label
        # with probability p_uncond, drawn from the training-noise generator
        self.p_uncond = float(p_uncond)
        self.net = net
        self.schedule, self.parameterization, self.loss = schedule, parameterization, loss
        self.data_shape = tuple(data_shape)
        self.optim_cfg = {"name": "adamw", "lr": 2e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                          "warmup_steps": 0, **(optimizer or {})}
        ema = {"decay": 0.999, "half_life_images": None, "ramp_up": None, **(ema or {})}
        self.ema = EMA(net, **ema)
        if channels_last not in (True, False, "auto"):
            raise ValueError(f"fast.channels_last must be true, false or auto, got {channels_last!r}.")
        # "auto": on when training on a GPU, where it speeds up convolutions (no gain measured on CPU:
        # experiments/bench_training/RESULTS.md); images only
        self._channels_last_opt = channels_last
        self.channels_last = channels_last is True and len(self.data_shape) == 3
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.train_net = torch.compile(self.net) if compile else self.net
        # the model adapter the loss sees (the compiled network when fast.compile is on)
        self.learned_variance = bool(getattr(net, "learned_variance", False))
        self.train_model = Denoiser(self.train_net, schedule, parameterization, learned_variance=self.learned_variance)
        # The training noise (t and ε) comes from this generator, seeded with seed + rank; its state
        # travels in the checkpoint (ExactResume) so a resumed run draws what the uninterrupted run drew.
        self.seed = int(seed)
        self._noise_gen: torch.Generator | None = None
        self._step_images = 0  # images of the batches accumulated into the next optimizer step
        # The resolved config, as plain containers, so checkpoints load with weights_only=True.
        self.save_hyperparameters({"config": config or {}})

    # ------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        if self._channels_last_opt == "auto" and self.device.type == "cuda" and len(self.data_shape) == 3:
            self.channels_last = True
            self.net.to(memory_format=torch.channels_last)

    def _images(self, batch: Any) -> tuple[Tensor, dict]:
        """(x0, network kwargs): class labels go to the network only when it is class-conditional."""
        kwargs: dict = {}
        if isinstance(batch, dict):  # reflow pairs (dataset=pairs): the data and its coupled noise (``_noise``)
            batch = (batch["x0"],)
        if isinstance(batch, (tuple, list)):
            x0 = batch[0]
            if len(batch) > 1 and getattr(self.net, "num_classes", None):
                kwargs["class_labels"] = batch[1]
        else:
            x0 = batch
        if self.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        return x0, kwargs

    def _noise(self, batch: Any) -> dict:
        """``{"noise": z}`` for a batch of reflow pairs (the loss uses z instead of fresh noise), else {}."""
        if isinstance(batch, dict) and batch.get("noise") is not None:
            if not getattr(self.loss, "takes_noise", False):
                raise ValueError(f"dataset=pairs gives coupled noise, which only loss=rectified_flow uses; "
                                 f"{type(self.loss).__name__} would ignore it.")
            return {"noise": batch["noise"]}
        return {}

    @property
    def noise_generator(self) -> torch.Generator:
        if self._noise_gen is None or self._noise_gen.device != self.device:
            self._noise_gen = torch.Generator(device=self.device).manual_seed(self.seed + self.global_rank)
        return self._noise_gen

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x0, net_kwargs = self._images(batch)
        if self.p_uncond > 0 and "class_labels" in net_kwargs:
            net_kwargs["class_labels"] = drop_labels(net_kwargs["class_labels"], self.p_uncond, self.noise_generator)
        out = self.loss(self.train_model, x0, generator=self.noise_generator, net_kwargs=net_kwargs, **self._noise(batch))
        self._step_images += x0.shape[0]
        self.log("train/loss", out.loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=x0.shape[0])
        for k, v in out.logs.items():
            if k == "loss":
                continue
            self.log(f"train/{k}", v, on_step=False, on_epoch=True, batch_size=x0.shape[0])
        return out.loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x0, net_kwargs = self._images(batch)
        # fixed noise per batch: comparable across epochs, and no draw from the training generators
        g = torch.Generator(device=self.device).manual_seed(10_000 + batch_idx)
        out = self.loss(self.denoiser(use_ema=False), x0, generator=g, net_kwargs=net_kwargs)
        self.log("val/loss", out.loss, prog_bar=True, on_epoch=True, batch_size=x0.shape[0], sync_dist=True)

    @torch.no_grad()
    def batch_loss(self, batch: Any, generator: torch.Generator) -> Tensor:
        """The training loss of ``batch`` at the current weights, its noise from ``generator``; no side
        effects (dropout off, no logging, no importance-sampling update). For the divergence guard."""
        x0, net_kwargs = self._images(batch)
        was_training = self.net.training
        self.net.eval()
        try:
            return self.loss(self.denoiser(use_ema=False), x0, generator=generator, net_kwargs=net_kwargs,
                             **self._noise(batch)).loss
        finally:
            self.net.train(was_training)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # the EMA follows every optimizer step, inside the step: a checkpoint written after this batch
        # (callbacks' on_train_batch_end) holds the updated EMA and image counter
        super().optimizer_step(*args, **kwargs)
        self.ema.update(self.net, batch_size=self._step_images * max(1, self.trainer.world_size))
        self._step_images = 0

    def configure_optimizers(self):
        params = [p for p in self.net.parameters() if p.requires_grad]
        return adam_with_warmup(params, self.optim_cfg, fused=torch.cuda.is_available())  # fused kernels on CUDA

    # ------------------------------------------------------------------ checkpoint extras
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # how ``evaluate`` labels this checkpoint's step with the epoch training would give it
        checkpoint["steps_per_epoch"] = steps_per_epoch(self.trainer)

    # ------------------------------------------------------------------ sampling
    def denoiser(self, use_ema: bool = True, guidance=None) -> Denoiser:
        """The model adapter over the EMA (or the raw) weights."""
        net = self.ema.net if use_ema else self.net
        return Denoiser(net, self.schedule, self.parameterization, guidance=guidance, learned_variance=self.learned_variance)

    @contextlib.contextmanager
    def sampling(self, use_ema: bool = True, guidance=None) -> Iterator[Denoiser]:
        """The denoiser for sampling, its network in eval mode (no dropout) for the duration."""
        net = self.ema.net if use_ema else self.net
        was_training = net.training
        net.eval()
        try:
            yield self.denoiser(use_ema, guidance)
        finally:
            net.train(was_training)
