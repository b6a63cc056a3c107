"""The run layer: from a config (or a checkpoint) to the parts of a run, shared by the entry points.

``train``, ``sample`` and ``evaluate`` are thin siblings over this module:

* ``build_parts(cfg)`` instantiates each config group (dataset, schedule, parameterization, loss,
  model, sampler, evaluation, guidance) and runs the start-up checks once (``config_checks``): what the
  config decides, then what the built parts decide, for the selected sampler and every evaluated one;
  the guidance and the class labels of the samples (``conditioning``) go to the evaluator;
* ``build_module`` wraps the parts in the LightningModule, ``build_trainer`` builds the Trainer with the
  configured callbacks and the evaluation callback around the parts' ``Evaluator``;
* ``load_run(ckpt_path)`` rebuilds a run from the config saved in a checkpoint (optionally with
  another sampler or evaluation) and loads its weights, EMA included.

The path of a config value: ``sampler.steps=7`` on the command line → Hydra composes it into
``cfg.sampler`` → ``build_parts`` instantiates ``Sampler(name, steps=7, ...)`` and passes it as the
evaluator's ``selected`` sampler → at evaluation the callback opens ``module.sampling()``, a
``Denoiser`` (the model adapter) over the EMA network → the sampler calls ``denoiser(x, t)``, which
calls the network with ``parameterization.net_inputs(x, t)`` and reads its output as a ``Prediction``.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.checkpoints import config_differences, load_checkpoint, state_dict_differences
from diffusion_lab.conditioning import Conditioning, build_conditioning
from diffusion_lab.config_checks import check_components, check_config
from diffusion_lab.errors import CheckpointError, ConfigError, DiffusionLabError
from diffusion_lab.evaluation import Evaluator, epoch_of_step
from diffusion_lab.lightning.module import DiffusionModule
from diffusion_lab.samplers import Sampler
from diffusion_lab.schedules.poisson_flow import PFGMPrior

log = logging.getLogger(__name__)

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@dataclass
class Parts:
    """The built components of one run."""

    datamodule: Any
    schedule: Any
    parameterization: Any
    loss: Any
    net: torch.nn.Module
    sampler: Sampler
    data_shape: tuple[int, ...]
    evaluator: Evaluator | None = None
    conditioning: Conditioning | None = None  # guidance and class labels of the samples


def hydra_choices() -> dict[str, str]:
    """The chosen file of each config group (for messages), when running under Hydra; else {}."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items()}
    except ValueError:
        return {}


def instantiate_group(cfg: DictConfig, group: str, **kwargs: Any) -> Any:
    """``instantiate(cfg[group])``; a constructor's complaint about a value (ValueError, TypeError: an
    unknown or badly typed key) becomes a ConfigError naming the group, any other error stays a bug.
    ``group`` may be a dotted key (``callbacks.checkpoint``)."""
    try:
        return instantiate(OmegaConf.select(cfg, group), **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, DiffusionLabError):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError)):
            message = _first_line(cause)
            raise ConfigError(message if f"{group}." in message or f"{group}=" in message else f"{group}: {message}") from None
        raise


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _check_noise(cfg: DictConfig, schedule: Any, noise: Any) -> None:
    """Non-Gaussian noise (PFGM++ with a finite D) against what cannot take it."""
    if getattr(noise, "D", None) is None:
        return
    if isinstance(getattr(schedule, "noise", None), PFGMPrior):
        raise ConfigError(f"noise.D={noise.D} would replace the prior of schedule=pfgm, which brings its own (PFGM is "
                          "PFGM++ with D = 1 on the z axis); drop the noise= override.")
    if "ClassifierGuidance" in str((cfg.get("guidance") or {}).get("_target_", "")):
        raise ConfigError(f"guidance=classifier adds a classifier's gradient to a Gaussian score, which PFGM++ noise "
                          f"(noise.D={noise.D}) does not have; use guidance=cfg, or noise.D=null for the Gaussian case.")


def build_parts(cfg: DictConfig, choices: dict[str, str] | None = None) -> Parts:
    """Instantiate every group and check that the parts fit together (see the module docstring)."""
    check_config(cfg, choices or hydra_choices())
    datamodule = instantiate_group(cfg, "dataset")
    schedule = instantiate_group(cfg, "schedule")
    if cfg.get("noise") is not None:  # conf/noise: the schedule's ε (PFGM++); absent = Gaussian
        noise = instantiate_group(cfg, "noise")
        _check_noise(cfg, schedule, noise)
        schedule = schedule.with_noise(noise)
    parameterization = instantiate_group(cfg, "parameterization")
    loss = instantiate_group(cfg, "loss")
    net = instantiate_group(cfg, "model")
    sampler = instantiate_group(cfg, "sampler")
    data_shape = tuple(datamodule.data_shape)
    evaluator = None
    if cfg.get("evaluation") is not None:
        evaluator = instantiate_group(cfg, "evaluation", selected=sampler)
    samplers = evaluator.samplers if evaluator is not None else [sampler]
    keys = ["sampler"] + [f"evaluation.samplers[{s.label}]" for s in samplers[1:]]
    check_components(schedule=schedule, parameterization=parameterization, loss=loss, net=net, data_shape=data_shape,
                     samplers=samplers, sampler_keys=keys)
    conditioning = build_conditioning(cfg, datamodule, net, choices)
    if evaluator is not None:
        try:
            evaluator.set_conditioning(conditioning.guidance, conditioning.num_classes, conditioning.class_label)
            evaluator.check(data_shape, getattr(datamodule, "mixture", None) is not None, schedule,
                            bool(getattr(net, "learned_variance", False)))
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return Parts(datamodule, schedule, parameterization, loss, net, sampler, data_shape, evaluator, conditioning)


def build_module(cfg: DictConfig, parts: Parts) -> DiffusionModule:
    """The LightningModule of the parts, with the optimizer, EMA and speed options of the config."""
    try:
        return DiffusionModule(
            net=parts.net, schedule=parts.schedule, parameterization=parts.parameterization, loss=parts.loss,
            data_shape=parts.data_shape, optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
            ema=OmegaConf.to_container(cfg.ema, resolve=True), channels_last=cfg.fast.channels_last,
            compile=cfg.fast.compile, config=OmegaConf.to_container(cfg, resolve=True), seed=cfg.seed,
            p_uncond=float(cfg.get("p_uncond") or 0.0))
    except ValueError as e:
        raise ConfigError(_first_line(e)) from None


def build_trainer(cfg: DictConfig, parts: Parts | None) -> pl.Trainer:
    """The Trainer of ``cfg.trainer`` with the configured logger and callbacks, plus the evaluation of
    ``parts`` (None: no evaluation callback, e.g. the classifier runs)."""
    from diffusion_lab.lightning.evaluation import EvaluationCallback

    logger = False
    if cfg.get("logger") is not None and cfg.logger.get("_target_"):
        if "wandb" in str(cfg.logger._target_).lower():
            check_wandb_login()
        logger = instantiate_group(cfg, "logger")
    callbacks = [instantiate_group(cfg, f"callbacks.{k}") for k, c in (cfg.get("callbacks") or {}).items() if c is not None]
    if not logger:  # nothing to monitor the learning rate into
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    if cfg.trainer.get("enable_progress_bar") is False:
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.ProgressBar)]
    if parts is not None and parts.evaluator is not None:
        callbacks.append(EvaluationCallback(parts.evaluator, out_dir=cfg.run_dir))
    return instantiate_group(cfg, "trainer", logger=logger, callbacks=callbacks, default_root_dir=cfg.run_dir)


def check_wandb_login() -> None:
    """logger=wandb online needs credentials (WANDB_API_KEY or ``wandb login``'s netrc entry): without them
    W&B would stop the run with a prompt or a traceback, so say so first."""
    import os

    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "disabled", "dryrun") or os.environ.get("WANDB_API_KEY"):
        return
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return
    raise ConfigError("logger=wandb needs a W&B login (run `wandb login` or set WANDB_API_KEY); to log without one, "
                      "set WANDB_MODE=offline and upload later with `wandb sync`.")


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """``ckpt_path=last`` means <run_dir>/checkpoints/last.ckpt; anything else must be a checkpoint file."""
    p = cfg.get("ckpt_path")
    if p is None:
        return None
    path = Path(cfg.run_dir) / "checkpoints" / "last.ckpt" if p == "last" else Path(p)
    if path.is_dir():
        raise CheckpointError(f"ckpt_path={p} is a directory; give a checkpoint file inside it, e.g. "
                              f"{path / 'checkpoints' / 'last.ckpt'} or {path / 'last.ckpt'}.")
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={p}: no checkpoint at {path}; give an existing .ckpt file "
                              "(ckpt_path=last resumes <run_dir>/checkpoints/last.ckpt, so set hydra.run.dir to the old run).")
    return str(path)


#: the groups a resumed run must share with its checkpoint (the model the weights belong to)
RESUME_GROUPS = ("model", "schedule", "noise", "parameterization", "loss")


def prepare_resume(cfg: DictConfig, module: DiffusionModule) -> str | None:
    """The checkpoint ``trainer.fit`` resumes from (None: a fresh start), checked against this run.

    A checkpoint whose model, schedule, parameterization or loss differ from this run's is refused
    with the differing keys named, and so is one whose weights do not fit the network; with
    ``finetune=true`` its weights (EMA included) are loaded into this run, which then starts afresh
    (step 0, new optimizer) instead of resuming."""
    path = resolve_ckpt_path(cfg)
    if path is None:
        return None
    ckpt = load_checkpoint(path)  # one sentence for a truncated or foreign file
    finetune = bool(cfg.get("finetune", False))
    current = OmegaConf.to_container(cfg, resolve=True)
    diffs = config_differences(ckpt["hyper_parameters"]["config"], current, RESUME_GROUPS)
    if diffs and not finetune:
        raise CheckpointError(f"ckpt_path={cfg.ckpt_path} was trained with other settings ({'; '.join(diffs[:4])}"
                              f"{'; ...' if len(diffs) > 4 else ''}); resume with the checkpoint's settings, or set "
                              "finetune=true to start a new run from its weights.")
    shapes = state_dict_differences(module.state_dict(), ckpt["state_dict"])
    if shapes:
        raise CheckpointError(f"ckpt_path={cfg.ckpt_path} does not fit this network ({'; '.join(shapes[:3])}"
                              f"{'; ...' if len(shapes) > 3 else ''}); use a checkpoint of the same model.")
    if finetune:
        module.load_state_dict(ckpt["state_dict"])
        log.info("finetune: loaded the weights of %s (step %s); training starts at step 0", path, ckpt.get("global_step"))
        return None
    return path


def write_text(path: Path, text: str, key: str) -> Path:
    """Write a small file of the run (creating its folder); an unwritable folder or a full disk becomes one
    sentence naming the file and the config ``key`` that moves it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as e:
        reason = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or type(e).__name__).lower()
        raise ConfigError(f"cannot write {path} ({reason}); set {key} to a writable folder with free space.") from None
    return path


def pick_device(device: str | None) -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else as given."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device={device!r} is not a torch device; use auto, cpu or cuda[:k].") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device} but CUDA is not available here; use device=cpu or device=auto.")
    return dev


@dataclass
class LoadedRun:
    """A trained run rebuilt from its checkpoint."""

    module: DiffusionModule
    parts: Parts
    config: DictConfig  # the checkpoint's config, with the overrides of load_run applied
    epoch: int          # 0-based index of the epoch the checkpoint's last step belongs to
    step: int           # global step of the checkpoint


def load_run(ckpt_path: Any, device: str | torch.device = "cpu", sampler: Any = None,
             evaluation: Any = None, guidance: Any = None) -> LoadedRun:
    """Rebuild the run of a checkpoint from its saved config and load its weights (EMA included).

    ``sampler`` / ``evaluation`` / ``guidance``: a sampler / evaluation / guidance config replacing the
    checkpoint's own (the saved config has the run's own); None keeps the checkpoint's sampler and
    guidance and drops the evaluation."""
    if ckpt_path in (None, "", "???"):
        raise CheckpointError("ckpt_path is not set; pass ckpt_path=outputs/<run>/checkpoints/last.ckpt.")
    path = Path(str(ckpt_path))
    if path.is_dir():
        raise CheckpointError(f"ckpt_path={ckpt_path} is a directory; give a checkpoint file inside it, e.g. "
                              f"{path / 'checkpoints' / 'last.ckpt'}.")
    ckpt = load_checkpoint(path)
    cfg = OmegaConf.create(ckpt["hyper_parameters"]["config"])
    if sampler is not None and "_target_" not in sampler:
        keys = ", ".join(f"sampler.{k}" for k in sampler)
        raise ConfigError(f"{keys} set without a sampler: choose one with sampler=<name> (conf/sampler), e.g. "
                          "sampler=ddim sampler.steps=20.")
    if sampler is not None:  # assignment replaces the group (a merge would keep the old sampler's options)
        cfg.sampler = OmegaConf.to_container(sampler, resolve=True) if OmegaConf.is_config(sampler) else sampler
    if guidance is not None and "_target_" not in guidance:
        keys = ", ".join(f"guidance.{k}" for k in guidance)
        raise ConfigError(f"{keys} set without a guidance: choose one with guidance=<name> (conf/guidance: none, cfg, "
                          "classifier), e.g. guidance=cfg guidance.scale=2.")
    if guidance is not None:
        cfg.guidance = OmegaConf.to_container(guidance, resolve=True) if OmegaConf.is_config(guidance) else guidance
    cfg.evaluation = (OmegaConf.to_container(evaluation, resolve=True) if OmegaConf.is_config(evaluation)
                      else evaluation)
    parts = build_parts(cfg, choices={})
    module = build_module(cfg, parts)
    diffs = state_dict_differences(module.state_dict(), ckpt["state_dict"])
    if diffs:
        raise CheckpointError(f"checkpoint {ckpt_path} does not match the network its config builds "
                              f"({'; '.join(diffs[:3])}); was the model code changed since?")
    module.load_state_dict(ckpt["state_dict"])
    module.to(device).eval()
    step = int(ckpt.get("global_step", 0))
    return LoadedRun(module, parts, cfg, epoch_of_step(step, ckpt.get("steps_per_epoch")), step)
