"""Draw samples from a trained checkpoint: ``python -m diffusion_lab.sample ckpt_path=... [sampler=...] [n=...]``.

Writes ``<out_dir>/<label>.png`` (a picture of the first ``grid_n`` samples) and ``<out_dir>/<label>.npz``
(``x``: all samples in the data's own range, float32; for images also ``uint8``: HWC-ordered 8-bit
images, clamped before the conversion; ``nfe``, ``seconds``, ``seed``, ``label``), with a progress bar,
and prints a JSON summary. The sampler is the checkpoint's own unless ``sampler=<conf/sampler file>``
is given; likewise the guidance (``guidance=cfg guidance.scale=2``). A class-conditional or guided model
samples class-balanced labels (sample i has label i mod K) or ``guidance.class_label``; the labels are
in the .npz (``labels``). The initial noise comes from a generator seeded ``seed`` — the noise rank 0 of the
evaluation uses — so an ODE sampler reproduces the evaluation's samples. ``pretrained=<diffusers pipeline
folder>`` instead of ``ckpt_path`` samples a diffusers model (``diffusion_lab.pretrained``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from diffusion_lab.cli import entry_point, run_reporting_errors
from diffusion_lab.errors import ConfigError
from diffusion_lab.evaluation import generate_samples, rank_labels
from diffusion_lab.images import save_picture, to_unit
from diffusion_lab.metrics.features import value_range_of
from diffusion_lab.pretrained import load_model
from diffusion_lab.runs import CONFIG_DIR, pick_device

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    for key in ("n", "batch_size"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ConfigError(f"{key}={cfg[key]!r} must be a positive integer.")
    device = pick_device(cfg.device)
    loaded = load_model(cfg, device)  # ckpt_path=<checkpoint> or pretrained=<diffusers folder>
    module, parts = loaded.module, loaded.parts
    sampler, cond = parts.sampler, parts.conditioning
    labels = rank_labels(int(cfg.n), 0, 1, cond.num_classes, cond.class_label) if cond.num_classes else None
    classifier = getattr(cond.guidance, "classifier", None)
    if isinstance(classifier, torch.nn.Module):
        classifier.to(device)
    with module.sampling(bool(cfg.use_ema), guidance=cond.guidance) as denoiser:
        res = generate_samples(denoiser, sampler, int(cfg.n), parts.data_shape, int(cfg.seed), device=device,
                               batch_size=int(cfg.batch_size), progress=bool(cfg.progress), labels=labels)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    value_range = value_range_of(parts.datamodule)
    arrays: dict[str, Any] = {"x": res.x.numpy(), "nfe": res.nfe, "seconds": res.seconds, "seed": int(cfg.seed),
                              "label": sampler.label, "kind": sampler.kind}
    if labels is not None:
        arrays["labels"] = labels.numpy()
    if len(parts.data_shape) == 3:
        x01 = to_unit(res.x) if value_range == "[-1,1]" else res.x.clamp(0, 1)
        arrays["uint8"] = (x01 * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    picture = save_picture(res.x[: int(cfg.grid_n)], parts.data_shape, out / f"{sampler.label}.png", value_range)
    npz = out / f"{sampler.label}.npz"
    np.savez_compressed(npz, **arrays)
    summary = {"sampler": sampler.label, "kind": sampler.kind, "n": int(cfg.n), "nfe": res.nfe, "seconds": res.seconds,
               "npz": str(npz), "grid": str(picture) if picture else None, "step": loaded.step}
    if cond.guidance is not None:
        summary.update(guidance=cond.guidance.name, guidance_scale=cond.guidance.scale, passes=res.passes)
    print(json.dumps(summary), flush=True)
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="sample")
def main(cfg: DictConfig) -> None:
    run_reporting_errors(run, cfg, log)


if __name__ == "__main__":
    entry_point(main)
