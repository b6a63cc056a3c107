"""diffusers pipeline folders in: ``sample``/``evaluate`` with ``pretrained=<folder>``.

A pipeline folder (``DDPMPipeline.save_pretrained``, or any folder with ``unet/`` and
``scheduler/scheduler_config.json``) holds a ``UNet2DModel`` and the scheduler it was trained with.
The scheduler config is read as a model description and mapped onto our groups:

=======================================  ==========================================================
``beta_schedule: linear``                schedule ``DDPMLinearSchedule(T, beta_start, beta_end,
                                         scale_with_T=false)`` (schedule=ddpm, Ho et al. 2020)
``beta_schedule: squaredcos_cap_v2``     ``CosineDiscreteSchedule(T, s=0.008, max_beta=0.999)``
                                         (schedule=cosine_discrete, Nichol & Dhariwal 2021, Eq. 17)
``beta_schedule: scaled_linear``         ``DiscreteSchedule(β = linspace(√β_start, √β_end, T)²)``
``trained_betas: [...]``                 ``DiscreteSchedule(β)``
``prediction_type``                      epsilon → eps, sample → x0, v_prediction → v (diffusers'
                                         v = α ε − σ x_0 is ours)
``variance_type``                        fixed_small(_log) → ddpm ``variance=small`` (β̃),
                                         fixed_large(_log) → ``large`` (β), learned_range → the
                                         UNet's 2C outputs as improved DDPM's learned variance
``clip_sample`` (``clip_sample_range``   ``clip_x0`` of the samplers that have it (ddim, ddpm);
= 1)                                     our DDIM then uses the ε̂ of the clipped x̂_0, as diffusers'
                                         ``use_clipped_model_output=True``
=======================================  ==========================================================

These have no counterpart and stop with a ConfigError naming the value: other beta schedules,
``thresholding: true`` (dynamic thresholding), ``clip_sample_range`` ≠ 1, ``rescale_betas_zero_snr:
true``, ``variance_type: learned``, schedulers of σ-conditioned or flow models (``ScoreSdeVeScheduler``,
``EDMEulerScheduler``, ``FlowMatchEulerDiscreteScheduler``, ...: any ``_class_name`` outside
``DISCRETE_SCHEDULERS`` is named), and UNets that are
class-conditional or embed σ instead of the timestep. The sampling-only keys (``timestep_spacing``,
``steps_offset``, ``set_alpha_to_one``, ...) are ignored: ``sampler=`` chooses the sampler and its
grid (``grid=leading|trailing|linspace`` are diffusers' spacings), so every sampler of the zoo runs on
the model. The timestep convention (diffusers' τ = our step i − 1) is handled by
``diffusion_lab.nets.DiffusersUNet``.
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CONF = Path(__file__).resolve().parent.parent / "conf"
PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
VARIANCE_TYPES = {"fixed_small": "small", "fixed_small_log": "small", "fixed_large": "large",
                  "fixed_large_log": "large", "learned_range": "learned"}
#: scheduler classes whose config describes a discrete-time VP model (the rest are σ-conditioned)
DISCRETE_SCHEDULERS = {"DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
                       "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler",
                       "DDPMParallelScheduler", "DDIMParallelScheduler", "LMSDiscreteScheduler",
                       "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
                       "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", None}


class PretrainedData:
    """The data shape of a pretrained model, for sampling; it has no data (``setup`` says so)."""

    def __init__(self, channels: int, image_size: int, value_range: str = "[-1,1]", name: str = "pretrained"):
        self.channels, self.image_size, self.value_range, self.name = int(channels), int(image_size), value_range, name
        self.num_classes = None

    @property
    def data_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def setup(self, stage: str | None = None) -> None:
        raise DataError("pretrained= gives a model but no data; pass dataset=<conf/dataset file> (the data the model "
                        "was trained on) for an evaluation against real images.")


def read_scheduler_config(folder: Path) -> dict[str, Any]:
    path = folder / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        raise ConfigError(f"pretrained={folder} has no scheduler/scheduler_config.json; give the folder of a diffusers "
                          "pipeline (written by DDPMPipeline.save_pretrained or python -m diffusion_lab.export).")
    return json.loads(path.read_text())


def schedule_config(sc: dict[str, Any]) -> dict[str, Any]:
    """Our schedule config for a diffusers scheduler config (module docstring)."""
    name = sc.get("_class_name")
    if name not in DISCRETE_SCHEDULERS:
        raise ConfigError(f"scheduler _class_name={name} is not a discrete-time DDPM scheduler; only β-schedule "
                          f"schedulers ({', '.join(sorted(n for n in DISCRETE_SCHEDULERS if n))}) map to our schedules.")
    if sc.get("rescale_betas_zero_snr"):
        raise ConfigError("scheduler rescale_betas_zero_snr=true has no exact counterpart here (diffusers clamps ᾱ_T "
                          "to 2^-24, schedule=ddpm_zero_snr stops at t_max = 1 - 1/T); use a pipeline without it.")
    T = int(sc.get("num_train_timesteps", 1000))
    trained = sc.get("trained_betas")
    kind = sc.get("beta_schedule", "linear")
    b0, b1 = float(sc.get("beta_start", 1e-4)), float(sc.get("beta_end", 0.02))
    if trained is not None:
        return {"_target_": "diffusion_lab.schedules.DiscreteSchedule", "betas": [float(b) for b in trained]}
    if kind == "linear":
        return {"_target_": "diffusion_lab.schedules.DDPMLinearSchedule", "num_timesteps": T, "beta_start": b0,
                "beta_end": b1, "scale_with_T": False}
    if kind == "squaredcos_cap_v2":
        return {"_target_": "diffusion_lab.schedules.CosineDiscreteSchedule", "num_timesteps": T, "s": 0.008,
                "max_beta": 0.999}
    if kind == "scaled_linear":
        betas = torch.linspace(b0 ** 0.5, b1 ** 0.5, T, dtype=torch.float64) ** 2
        return {"_target_": "diffusion_lab.schedules.DiscreteSchedule", "betas": betas.tolist()}
    raise ConfigError(f"scheduler beta_schedule={kind!r} has no counterpart here; the supported ones are linear, "
                      "scaled_linear, squaredcos_cap_v2 (or trained_betas).")


def parameterization_config(sc: dict[str, Any]) -> dict[str, Any]:
    kind = sc.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ConfigError(f"scheduler prediction_type={kind!r} has no counterpart; supported: {', '.join(PREDICTION_TYPES)}.")
    return {"_target_": "diffusion_lab.parameterization.Parameterization", "kind": PREDICTION_TYPES[kind],
            "time_scale": 1000.0}


def sampler_options(sc: dict[str, Any]) -> dict[str, Any]:
    """The sampler options the scheduler config implies: ``clip_x0`` and the DDPM ``variance``."""
    if sc.get("thresholding"):
        raise ConfigError("scheduler thresholding=true (dynamic thresholding, Saharia et al. 2022) has no counterpart "
                          "here; use a pipeline with thresholding=false.")
    clip = bool(sc.get("clip_sample", False))
    if clip and float(sc.get("clip_sample_range", 1.0)) != 1.0:
        raise ConfigError(f"scheduler clip_sample_range={sc.get('clip_sample_range')} has no counterpart: clip_x0 "
                          "clips x̂0 to [-1, 1] only.")
    variance = sc.get("variance_type", "fixed_small")
    if variance not in VARIANCE_TYPES:
        raise ConfigError(f"scheduler variance_type={variance!r} has no counterpart; supported: {', '.join(VARIANCE_TYPES)}.")
    return {"clip_x0": clip, "variance": VARIANCE_TYPES[variance]}


def apply_options(sampler_cfg: dict[str, Any], options: dict[str, Any], user_keys: set[str]) -> dict[str, Any]:
    """The sampler config with the scheduler's options set where the sampler function takes them and the
    command line did not set them (``user_keys``: e.g. {"clip_x0"})."""
    from diffusion_lab.samplers import SAMPLERS

    spec = SAMPLERS.get(sampler_cfg.get("name"))
    if spec is None:
        return sampler_cfg
    params = inspect.signature(spec.fn).parameters
    out = dict(sampler_cfg)
    for key, value in options.items():
        if key in params and key not in user_keys:
            out[key] = value
    return out


def pretrained_config(folder: str | Path, sampler: Any = None, evaluation: Any = None, guidance: Any = None,
                      dataset: Any = None, user_sampler_keys: set[str] | None = None) -> DictConfig:
    """A run config (as a checkpoint would hold) for a diffusers pipeline folder."""
    folder = Path(str(folder))
    if not folder.is_dir():
        raise ConfigError(f"pretrained={folder} is not a folder; give a diffusers pipeline folder (with unet/ and scheduler/).")
    sc = read_scheduler_config(folder)
    unet_dir = folder / "unet"
    if not (unet_dir / "config.json").is_file():
        raise ConfigError(f"pretrained={folder} has no unet/config.json; only UNet2DModel pipelines (DDPM, DDIM) are supported.")
    unet_cfg = json.loads((unet_dir / "config.json").read_text())
    if unet_cfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ConfigError(f"pretrained={folder}: unet _class_name={unet_cfg.get('_class_name')} is not a UNet2DModel; "
                          "text-conditional or latent pipelines are not supported.")
    schedule = schedule_config(sc)
    parameterization = parameterization_config(sc)
    options = sampler_options(sc)
    learned = options["variance"] == "learned"
    size = unet_cfg.get("sample_size")
    size = size[0] if isinstance(size, (list, tuple)) else size
    model = {"_target_": "diffusion_lab.nets.DiffusersUNet", "pretrained": str(unet_dir),
             "num_train_timesteps": int(sc.get("num_train_timesteps", 1000)), "time_scale": 1000.0,
             "learned_variance": learned}
    if dataset is None:
        dataset = {"_target_": "diffusion_lab.pretrained.PretrainedData", "channels": int(unet_cfg.get("in_channels", 3)),
                   "image_size": int(size), "name": f"pretrained:{folder.name}"}
    train_root = OmegaConf.load(CONF / "train.yaml")
    if sampler is None:
        sampler = OmegaConf.load(CONF / "sampler" / f"{_default_sampler(train_root)}.yaml")
    sampler = OmegaConf.to_container(sampler, resolve=True) if OmegaConf.is_config(sampler) else dict(sampler)
    if "_target_" not in sampler:
        keys = ", ".join(f"sampler.{k}" for k in sampler)
        raise ConfigError(f"{keys} set without a sampler: choose one with sampler=<name> (conf/sampler), e.g. "
                          "sampler=ddim sampler.steps=20.")
    sampler = apply_options(sampler, {k: v for k, v in options.items() if k != "variance" or sampler.get("name") == "ddpm"},
                            user_sampler_keys or set())
    cfg = {
        "seed": 0, "name": f"pretrained_{folder.name}", "run_dir": None, "p_uncond": 0.0, "pretrained": str(folder),
        "dataset": OmegaConf.to_container(dataset, resolve=True) if OmegaConf.is_config(dataset) else dataset,
        "schedule": schedule, "parameterization": parameterization,
        "loss": OmegaConf.to_container(OmegaConf.load(CONF / "loss" / "eps_mse.yaml")),
        "model": model, "sampler": sampler,
        "guidance": (OmegaConf.to_container(guidance, resolve=True) if OmegaConf.is_config(guidance) else guidance)
        or {"_target_": None, "class_label": None},
        "evaluation": OmegaConf.to_container(evaluation, resolve=True) if OmegaConf.is_config(evaluation) else evaluation,
        "optimizer": OmegaConf.to_container(train_root.optimizer), "ema": OmegaConf.to_container(train_root.ema),
        "fast": OmegaConf.to_container(train_root.fast),
    }
    if learned:
        cfg["loss"] = OmegaConf.to_container(OmegaConf.load(CONF / "loss" / "hybrid.yaml"))
    return OmegaConf.create(cfg)


def _default_sampler(train_root: DictConfig) -> str:
    for entry in train_root.defaults:
        if isinstance(entry, DictConfig) and "sampler" in entry:
            return str(entry.sampler)
    return "ddim"


def load_pretrained(folder: str | Path, device: str | torch.device = "cpu", sampler: Any = None, evaluation: Any = None,
                    guidance: Any = None, dataset: Any = None, user_sampler_keys: set[str] | None = None) -> Any:
    """A ``runs.LoadedRun`` of a diffusers pipeline folder (step 0; the weights are the UNet's, EMA = net)."""
    from diffusion_lab.runs import LoadedRun, build_module, build_parts

    cfg = pretrained_config(folder, sampler, evaluation, guidance, dataset, user_sampler_keys)
    parts = build_parts(cfg, choices={})
    module = build_module(cfg, parts)
    module.ema.net.load_state_dict(module.net.state_dict())
    module.to(device).eval()
    log.info("pretrained %s: schedule %s, parameterization %s, sampler %s", folder, parts.schedule,
             parts.parameterization.kind, parts.sampler)
    return LoadedRun(module, parts, cfg, 0, 0)


def load_model(cfg: DictConfig, device: Any, evaluation: Any = None) -> Any:
    """What ``sample`` and ``evaluate`` load: ``pretrained=<folder>`` (a diffusers pipeline) or
    ``ckpt_path=<checkpoint>``, with the command line's sampler, guidance (and evaluation); ``dataset=``
    only goes with ``pretrained=`` (a checkpoint's data is its own)."""
    from diffusion_lab.runs import load_run
    from diffusion_lab.sweeps import hydra_job

    folder = cfg.get("pretrained")
    if folder:
        if not OmegaConf.is_missing(cfg, "ckpt_path") and cfg.get("ckpt_path") is not None:
            raise ConfigError(f"both pretrained={folder} and ckpt_path={cfg.ckpt_path} are set; give one of them.")
        user = {o.split("=", 1)[0].split(".", 1)[1] for o in hydra_job()[1] if o.lstrip("+~").startswith("sampler.")}
        return load_pretrained(folder, device, sampler=cfg.get("sampler"), evaluation=evaluation,
                               guidance=cfg.get("guidance"), dataset=cfg.get("dataset"), user_sampler_keys=user)
    if cfg.get("dataset") is not None:
        raise ConfigError("dataset= is for pretrained= models only: a checkpoint evaluates on the dataset it was trained on.")
    return load_run(None if OmegaConf.is_missing(cfg, "ckpt_path") else cfg.ckpt_path, device, sampler=cfg.get("sampler"),
                    evaluation=evaluation, guidance=cfg.get("guidance"))
