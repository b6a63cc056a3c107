"""Draw samples from a trained checkpoint: ``python -m diffusion_lab.sample ckpt_path=... [sampler=...] [n=...]``.

Writes ``<out_dir>/<label>.png`` (a grid of the first ``grid_n`` samples) and ``<out_dir>/<label>.npz``
(``x``: all samples in the data's own range, float32; for images also ``uint8``: HWC-ordered 8-bit
images, clamped before the conversion; ``nfe``, ``seconds``, ``seed``, ``label``), with a progress bar.
The sampler is the checkpoint's own unless ``sampler=<conf/sampler file>`` is given. The initial noise
comes from a generator seeded ``seed`` — the noise rank 0 of the evaluation callback uses — so an ODE
sampler reproduces the evaluation's samples.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.cli import run_reporting_errors
from diffusion_lab.checkpoints import CheckpointError, load_checkpoint
from diffusion_lab.config_checks import check_components

log = logging.getLogger(__name__)

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def pick_device(device: str | None) -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else as given."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device={device!r} is not a torch device; use auto, cpu or cuda[:k].") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device} but CUDA is not available here; use device=cpu or device=auto.")
    return dev


def load_trained(ckpt_path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Rebuild the run of a checkpoint from its saved config and load its weights (EMA included).

    Returns {"module", "datamodule", "config" (the saved config, an OmegaConf DictConfig), "epoch", "step"}."""
    from diffusion_lab.train import build

    if ckpt_path in (None, "", "???"):
        raise CheckpointError("ckpt_path is not set; pass ckpt_path=outputs/<run>/checkpoints/last.ckpt.")
    ckpt = load_checkpoint(ckpt_path)
    cfg = OmegaConf.create(ckpt["hyper_parameters"]["config"])
    parts = build(cfg)
    module = parts["module"]
    missing, unexpected = module.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {ckpt_path} does not match the network its config builds (missing "
                              f"{missing[:2]}, unexpected {unexpected[:2]}); was the model code changed since?")
    module.to(device).eval()
    return {"module": module, "datamodule": parts["datamodule"], "config": cfg, "epoch": int(ckpt.get("epoch", 0)),
            "step": int(ckpt.get("global_step", 0))}


def sampler_for(module: Any, datamodule: Any, sampler_cfg: Any) -> Any:
    """The sampler of ``sampler=...`` (checked against the model), or the checkpoint's own."""
    if sampler_cfg is None:
        return module.sampler
    sampler = instantiate(sampler_cfg)
    check_components(dataset=datamodule, schedule=module.schedule, parameterization=module.parameterization,
                     loss=module.loss, net=module.net, sampler=sampler, data_shape=tuple(module.data_shape))
    return sampler


def run(cfg: DictConfig) -> dict[str, Any]:
    from diffusion_lab.images import save_grid, to_unit
    from diffusion_lab.lightning.evaluation import generate_samples
    from diffusion_lab.metrics.features import value_range_of

    if not isinstance(cfg.n, int) or cfg.n < 1:
        raise ValueError(f"n={cfg.n!r} must be a positive integer (the number of samples).")
    trained = load_trained(cfg.ckpt_path, pick_device(cfg.device))
    module, dm = trained["module"], trained["datamodule"]
    sampler = sampler_for(module, dm, cfg.get("sampler"))
    res = generate_samples(module, sampler, int(cfg.n), seed=int(cfg.seed), batch_size=int(cfg.batch_size),
                           use_ema=bool(cfg.use_ema), progress=bool(cfg.progress))
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {"x": res.x.numpy(), "nfe": res.nfe, "seconds": res.seconds, "seed": int(cfg.seed),
                              "label": sampler.label, "kind": sampler.kind}
    grid_path = None
    if len(module.data_shape) == 3:
        x01 = to_unit(res.x) if value_range_of(dm) == "[-1,1]" else res.x.clamp(0, 1)
        arrays["uint8"] = (x01 * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        x_grid = res.x if value_range_of(dm) == "[-1,1]" else res.x * 2 - 1
        grid_path = save_grid(x_grid[: int(cfg.grid_n)], out / f"{sampler.label}.png")
    else:
        from diffusion_lab.lightning.evaluation import EvaluationCallback

        grid_path = EvaluationCallback._save_grid(res.x[: int(cfg.grid_n)], tuple(module.data_shape),
                                                  out / f"{sampler.label}.png")
    npz = out / f"{sampler.label}.npz"
    np.savez_compressed(npz, **arrays)
    summary = {"sampler": sampler.label, "kind": sampler.kind, "n": int(cfg.n), "nfe": res.nfe, "seconds": res.seconds,
               "npz": str(npz), "grid": str(grid_path) if grid_path else None}
    print(json.dumps(summary), flush=True)
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="sample")
def main(cfg: DictConfig) -> None:
    run_reporting_errors(run, cfg, log)


if __name__ == "__main__":
    main()
