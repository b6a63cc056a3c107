"""Draw reflow pairs from a trained flow: ``python -m diffusion_lab.reflow_pairs ckpt_path=... out=... n=...``.

A Hydra entry point (``conf/reflow_pairs.yaml``), sibling of ``sample``: ``sampler=<conf/sampler file>``
picks any ODE sampler of the zoo (default: the checkpoint's own), e.g. ``sampler=dopri5`` (adaptive) or
``sampler=rk4 sampler.steps=20``; ``rank=r world_size=W`` shards the chunks over W processes (run the
same command W times, or under a job array); running the command again skips the chunks on disk. The
folder's layout, the seeds and the manifest are described in ``diffusion_lab.flows.pairs``. Train the
next rectified flow on it with ``dataset=pairs dataset.path=<out>`` (README, "Reflow").
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.cli import entry_point, run_reporting_errors
from diffusion_lab.errors import ConfigError
from diffusion_lab.flows.pairs import generate_pairs
from diffusion_lab.runs import CONFIG_DIR, load_run, pick_device

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    for key in ("n", "chunk_size", "world_size"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ConfigError(f"{key}={cfg[key]!r} must be a positive integer.")
    if OmegaConf.is_missing(cfg, "out") or not cfg.out:
        raise ConfigError("out is not set; give the folder the pairs go to, e.g. out=outputs/pairs/two_moons_1rf.")
    device = pick_device(cfg.device)
    ckpt = None if OmegaConf.is_missing(cfg, "ckpt_path") else cfg.ckpt_path
    loaded = load_run(ckpt, device, sampler=cfg.get("sampler"))
    module, parts = loaded.module, loaded.parts
    if len(parts.data_shape) and getattr(parts.conditioning, "num_classes", None):
        raise ConfigError(f"ckpt_path={ckpt} is class-conditional; reflow pairs are drawn unconditionally only.")
    info = {"ckpt_path": str(Path(str(ckpt)).resolve()), "ckpt_step": loaded.step, "use_ema": bool(cfg.use_ema),
            "dataset": OmegaConf.to_container(loaded.config.dataset, resolve=True),
            "schedule": OmegaConf.to_container(loaded.config.schedule, resolve=True)}
    with module.sampling(bool(cfg.use_ema)) as denoiser:
        summary = generate_pairs(denoiser, parts.sampler, cfg.out, int(cfg.n), parts.data_shape, int(cfg.chunk_size),
                                 int(cfg.seed), int(cfg.rank), int(cfg.world_size), device, bool(cfg.progress), info)
    print(json.dumps(summary), flush=True)
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="reflow_pairs")
def main(cfg: DictConfig) -> None:
    run_reporting_errors(run, cfg, log)


if __name__ == "__main__":
    entry_point(main)
