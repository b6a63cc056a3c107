"""Train a diffusion or flow model: ``python -m diffusion_lab.train [group=choice ...] [key=value ...]``.

Composes conf/train.yaml (Hydra), builds every component, checks that they fit together before any
training (``config_checks``), then runs Lightning. Outputs (resolved config, checkpoints, logs,
sample grids) go to the run directory under outputs/.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.checkpoints import CheckpointError, load_checkpoint
from diffusion_lab.cli import run_reporting_errors
from diffusion_lab.config_checks import check_components, check_config
from diffusion_lab.lightning.module import DiffusionModule

log = logging.getLogger(__name__)

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def _choices() -> dict[str, str]:
    """The chosen file of each config group (for error messages), when running under Hydra."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items()}
    except ValueError:
        return {}


def build(cfg: DictConfig) -> dict[str, Any]:
    """Instantiate dataset, schedule, parameterization, loss, network and sampler, and check them."""
    datamodule = instantiate(cfg.dataset)
    schedule = instantiate(cfg.schedule)
    parameterization = instantiate(cfg.parameterization)
    loss = instantiate(cfg.loss)
    net = instantiate(cfg.model)
    sampler = instantiate(cfg.sampler)
    data_shape = tuple(datamodule.data_shape)
    check_components(dataset=datamodule, schedule=schedule, parameterization=parameterization, loss=loss, net=net,
                     sampler=sampler, data_shape=data_shape)
    module = DiffusionModule(
        net=net, schedule=schedule, parameterization=parameterization, loss=loss, sampler=sampler,
        data_shape=data_shape, optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        ema=OmegaConf.to_container(cfg.ema, resolve=True), channels_last=cfg.fast.channels_last,
        compile=cfg.fast.compile, config=OmegaConf.to_container(cfg, resolve=True), seed=cfg.seed,
    )
    return {"datamodule": datamodule, "module": module}


def build_trainer(cfg: DictConfig) -> pl.Trainer:
    logger = instantiate(cfg.logger) if cfg.get("logger") is not None and cfg.logger.get("_target_") else False
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    if not logger:  # nothing to monitor the learning rate into
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    if cfg.trainer.get("enable_progress_bar") is False:
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.ProgressBar)]
    if cfg.get("evaluation") is not None:
        callbacks.append(instantiate(cfg.evaluation))
    return instantiate(cfg.trainer, logger=logger, callbacks=callbacks, default_root_dir=cfg.run_dir)


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """``ckpt_path=last`` means <run_dir>/checkpoints/last.ckpt; anything else must exist."""
    p = cfg.get("ckpt_path")
    if p is None:
        return None
    path = Path(cfg.run_dir) / "checkpoints" / "last.ckpt" if p == "last" else Path(p)
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={p}: no checkpoint at {path}; give an existing .ckpt file "
                              "(ckpt_path=last resumes <run_dir>/checkpoints/last.ckpt, so set hydra.run.dir to the old run).")
    load_checkpoint(path)  # fails with one sentence on a truncated or foreign file
    return str(path)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train as configured; returns the module, trainer and the final logged metrics."""
    pl.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    check_config(cfg, _choices())  # before anything resolves or is built
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    parts = build(cfg)
    trainer = build_trainer(cfg)
    ckpt_path = resolve_ckpt_path(cfg)
    trainer.fit(parts["module"], datamodule=parts["datamodule"], ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    log.info("finished: %s (run dir %s)", metrics, run_dir)
    for lg in trainer.loggers:  # each job of a multirun closes its own W&B run
        exp = getattr(lg, "experiment", None)
        if hasattr(exp, "finish"):
            exp.finish()
    return {"module": parts["module"], "trainer": trainer, "metrics": metrics}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    out = run_reporting_errors(run, cfg, log)
    return out["metrics"].get("train/loss_epoch")


if __name__ == "__main__":
    main()
