"""Export a trained checkpoint as a diffusers pipeline folder:
``python -m diffusion_lab.export ckpt_path=outputs/<run>/checkpoints/last.ckpt out=exported/``.

Writes ``out/`` as ``DDPMPipeline.save_pretrained`` does: ``unet/`` (a ``UNet2DModel`` with the EMA
weights, or the raw ones with ``use_ema=false``), ``scheduler/scheduler_config.json`` (a
``DDPMScheduler``) and ``model_index.json``, so that ``DDPMPipeline.from_pretrained(out)`` and our
``pretrained=out`` both load it. The scheduler config is the inverse of ``diffusion_lab.pretrained``'s
mapping: DDPMLinearSchedule → ``linear`` (with the β endpoints it really uses), CosineDiscreteSchedule
(s = 0.008, max β 0.999) → ``squaredcos_cap_v2``, any other discrete β sequence → ``trained_betas``;
eps / x0 / v → ``epsilon`` / ``sample`` / ``v_prediction``; learned variances → ``learned_range``;
the run's sampler ``clip_x0`` → ``clip_sample``.

What maps exactly, and what is refused (one sentence each, before anything is written):

* ``model=diffusers_unet``: the network *is* a ``UNet2DModel`` whose timestep is diffusers' τ = our
  step − 1 (``DiffusersUNet``), so the export is exact by construction.
* our ``UNet`` (``model=unet_*``): mapped weight by weight (``diffusion_lab.nets.to_diffusers``, which
  also folds the τ = i − 1 shift into the time embedding), exact to float32 rounding where the
  architectures coincide; an option without a counterpart (e.g. the varying GroupNorm groups of the
  small configs, ``skip_rescale``, BigGAN resampling, Fourier time features) is named in one sentence.
* continuous-time schedules (vp, cosine, ve, edm, rectified_flow, ...) have no diffusers DDPM
  scheduler; score / velocity / EDM-preconditioned parameterizations have no ``prediction_type``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.cli import entry_point, run_reporting_errors
from diffusion_lab.errors import ConfigError
from diffusion_lab.runs import CONFIG_DIR, load_run

log = logging.getLogger(__name__)

PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def scheduler_config(schedule: Any, kind: str, learned_variance: bool, clip_x0: bool) -> dict[str, Any]:
    """The DDPMScheduler config of our schedule and parameterization (module docstring); ConfigError where
    there is none."""
    from diffusion_lab.schedules import CosineDiscreteSchedule, DDPMLinearSchedule, DiscreteSchedule

    if not isinstance(schedule, DiscreteSchedule):
        raise ConfigError(f"schedule {type(schedule).__name__} is continuous-time and diffusers' DDPM schedulers are "
                          "discrete; export a model trained with schedule=ddpm or schedule=cosine_discrete.")
    if kind not in PREDICTION_TYPES:
        raise ConfigError(f"parameterization={kind} has no diffusers prediction_type (epsilon, sample, v_prediction "
                          "are eps, x0, v); export a model trained with one of those.")
    T = schedule.num_timesteps
    cfg: dict[str, Any] = {"num_train_timesteps": T, "prediction_type": PREDICTION_TYPES[kind],
                           "variance_type": "learned_range" if learned_variance else "fixed_small",
                           "clip_sample": bool(clip_x0), "clip_sample_range": 1.0, "thresholding": False,
                           "timestep_spacing": "leading", "steps_offset": 0, "trained_betas": None,
                           "beta_start": 1e-4, "beta_end": 0.02}
    if type(schedule) is DDPMLinearSchedule:
        betas = schedule.betas
        cfg.update(beta_schedule="linear", beta_start=float(betas[0]), beta_end=float(betas[-1]))
    elif type(schedule) is CosineDiscreteSchedule and schedule.s == 0.008 and schedule.max_beta == 0.999:
        cfg.update(beta_schedule="squaredcos_cap_v2")
    else:
        cfg.update(beta_schedule="linear", trained_betas=schedule.betas.tolist())
    return cfg


def export(ckpt_path: str | Path, out: str | Path, use_ema: bool = True) -> Path:
    """Write the diffusers pipeline folder of a checkpoint (module docstring); returns ``out``."""
    from diffusion_lab.nets.diffusers_unet import DiffusersUNet

    loaded = load_run(ckpt_path)
    module, parts = loaded.module, loaded.parts
    from diffusion_lab.nets import UNet
    from diffusion_lab.nets.to_diffusers import to_unet2d

    net = module.ema.net if use_ema else module.net
    if not isinstance(net, (DiffusersUNet, UNet)):
        raise ConfigError(f"model {loaded.config.model.get('_target_')} is not a UNet; only model=diffusers_unet and our "
                          "UNet (model=unet_*) export to diffusers' UNet2DModel.")
    sched_cfg = scheduler_config(parts.schedule, parts.parameterization.kind, bool(net.learned_variance),
                                 bool(parts.sampler.options.get("clip_x0", False)))
    if isinstance(net, DiffusersUNet):
        if net.num_train_timesteps != parts.schedule.num_timesteps:
            raise ConfigError(f"model.num_train_timesteps={net.num_train_timesteps} differs from the schedule's "
                              f"T={parts.schedule.num_timesteps}, so its timesteps are not diffusers'; retrain with them equal.")
        unet2d = net.unet.to(torch.float32)
    else:  # our UNet: the exact state-dict mapping, or one sentence saying which option has no counterpart
        unet2d = to_unet2d(net.float(), parts.schedule.num_timesteps, parts.parameterization.time_scale)
    from diffusers import DDPMPipeline, DDPMScheduler

    out = Path(out)
    scheduler = DDPMScheduler.from_config(sched_cfg)
    DDPMPipeline(unet=unet2d, scheduler=scheduler).save_pretrained(str(out))
    (out / "diffusion_lab.json").write_text(json.dumps({"ckpt_path": str(ckpt_path), "step": loaded.step,
                                                        "use_ema": use_ema}, indent=2) + "\n")
    log.info("exported %s (step %d, %s weights) to %s", ckpt_path, loaded.step, "EMA" if use_ema else "raw", out)
    return out


def run(cfg: DictConfig) -> Path:
    if OmegaConf.is_missing(cfg, "ckpt_path") or OmegaConf.is_missing(cfg, "out"):
        raise ConfigError("export needs ckpt_path=<checkpoint> and out=<folder>, e.g. "
                          "python -m diffusion_lab.export ckpt_path=outputs/<run>/checkpoints/last.ckpt out=exported/.")
    out = export(cfg.ckpt_path, cfg.out, bool(cfg.use_ema))
    print(json.dumps({"out": str(out), "ckpt": str(cfg.ckpt_path)}), flush=True)
    return out


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    run_reporting_errors(run, cfg, log)


if __name__ == "__main__":
    entry_point(main)
