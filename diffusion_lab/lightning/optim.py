"""The optimiser of every training loop here: Adam (Kingma & Ba 2015) or AdamW (Loshchilov & Hutter 2019),
with the learning rate warmed up linearly over the first ``warmup_steps`` steps, lr·min(1, (step + 1)/warmup),
as DDPM (Ho et al. 2020) trains, and stepped per optimizer step."""

from __future__ import annotations

from typing import Any, Iterable

import torch


def adam_with_warmup(params: Iterable[torch.nn.Parameter], cfg: dict, fused: bool = False) -> Any:
    """What ``configure_optimizers`` returns for ``cfg`` (name adam | adamw, lr, betas, eps, weight_decay,
    warmup_steps): the optimizer alone without warm-up, else it with its per-step LambdaLR. ``fused``: CUDA's
    fused kernels."""
    name = str(cfg["name"]).lower()
    if name not in ("adam", "adamw"):
        raise ValueError(f"optimizer.name={cfg['name']!r} is not supported; use adam or adamw.")
    kw = dict(lr=cfg["lr"], betas=tuple(cfg["betas"]), eps=cfg["eps"], weight_decay=cfg["weight_decay"])
    if fused:
        kw["fused"] = True
    opt = (torch.optim.AdamW if name == "adamw" else torch.optim.Adam)(params, **kw)
    warmup = int(cfg["warmup_steps"])
    if warmup <= 0:
        return opt
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
