"""Train a diffusion or flow model: ``python -m diffusion_lab.train [group=choice ...] [key=value ...]``.

Composes conf/train.yaml (Hydra), builds and checks the parts (``runs.build_parts``: every
incompatible choice stops here, before any training), writes the resolved config to the run
directory, and fits with Lightning; the evaluation callback evaluates the selected sampler (and the
evaluation's extra ones) every k epochs and at the end. Outputs (config, checkpoints, logs, sample
pictures, the evaluation table) go to the run directory under outputs/; the run logs that folder first and
ends with a short summary (``diffusion_lab.run_summary``, also ``<run dir>/summary.json``). In a multirun the
job folders are named by the swept values and the sweep ends with one table (``diffusion_lab.sweeps``,
``diffusion_lab.sweep_summary``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from diffusion_lab import run_summary
from diffusion_lab.cli import entry_point, run_reporting_errors
from diffusion_lab.runs import (CONFIG_DIR, build_module, build_parts, build_trainer, hydra_choices, prepare_resume,
                                write_text)

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train as configured; returns the module, trainer, parts and the final logged metrics."""
    started = time.perf_counter()
    run_dir = Path(cfg.run_dir)
    log.info("run folder: %s", run_dir.resolve())
    pl.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    parts = build_parts(cfg, hydra_choices())
    module = build_module(cfg, parts)
    ckpt_path = prepare_resume(cfg, module)
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True), "hydra.run.dir")
    parts.datamodule.setup()  # a missing or corrupt dataset stops here, before the trainer starts
    trainer = build_trainer(cfg, parts)
    trainer.fit(module, datamodule=parts.datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    log.info("finished: %s (run dir %s)", metrics, run_dir)
    if trainer.global_rank == 0:  # <run dir>/summary.json: what sweep_summary aggregates
        summary = run_summary.collect(run_dir, trainer, parts, metrics, time.perf_counter() - started,
                                      [str(o) for o in hydra_overrides()])
        run_summary.write(summary)
        log.info("%s", run_summary.format_summary(summary))
    for lg in trainer.loggers:  # each job of a multirun closes its own W&B run
        exp = getattr(lg, "experiment", None)
        if hasattr(exp, "finish"):
            exp.finish()
    return {"module": module, "trainer": trainer, "parts": parts, "metrics": metrics}


def hydra_overrides() -> list[str]:
    """The run's command-line overrides (empty outside Hydra)."""
    from diffusion_lab.sweeps import hydra_job

    return hydra_job()[1]


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """The entry point; returns ``optimized_metric`` of the final metrics (the objective of a sweeper)."""
    out = run_reporting_errors(run, cfg, log)
    key = cfg.get("optimized_metric")
    if key and key not in out["metrics"]:
        log.warning("optimized_metric=%s is not among the final metrics %s", key, sorted(out["metrics"]))
    return out["metrics"].get(key) if key else None


if __name__ == "__main__":
    entry_point(main)
