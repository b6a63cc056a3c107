"""Evaluate a checkpoint without training: ``python -m diffusion_lab.evaluate ckpt_path=... [sampler=...] [evaluation=...]``.

Runs the ``Evaluator`` on the checkpoint's model and dataset — the checkpoint's sampler (or
``sampler=<conf/sampler file>``) first, then the samplers ``evaluation=`` adds beside it — and prints
one JSON line per sampler on stdout: ``sampler`` (its label), ``kind`` (SDE or ODE), ``nfe``,
``seconds`` and one key per metric (``fid``, ``kid``, ``is``, ``accuracy``, ``precision``, ``recall``, or
``swd``, ``w2``, ``mmd``, ``nll``), and with ``evaluation.likelihood`` the rows ``likelihood_ode`` /
``likelihood_vlb`` (``nll``, ``bpd``, their NFE and seconds), while logs and progress bars go to stderr.
``guidance=cfg|classifier|none`` (with ``guidance.scale=...``) samples with that guidance instead of the
checkpoint's; ``-m guidance.scale=0,1,2,4`` sweeps the scale. Pictures and ``eval/table.csv`` go to the output directory.
The rows are labelled with the checkpoint's step and the epoch that step belongs to, as training
labels its own evaluation of the same step; ``-m sampler=ddim,heun,dpm_solver_pp_2m`` sweeps samplers
over one checkpoint (the feature network and the real-data statistics are cached after the first job).
``pretrained=<diffusers pipeline folder> dataset=<conf/dataset file>`` evaluates a diffusers model instead
(``diffusion_lab.pretrained``; step 0).

``evaluation=sde_vs_ode`` evaluates samplers × NFE (``evaluation.nfe``); ``wandb.project=<p>`` logs the rows
as a W&B study (one group, one run per sampler family, NFE as the x-axis: ``evaluation.table.log_wandb_study``).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.cli import entry_point, run_reporting_errors
from diffusion_lab.errors import ConfigError
from diffusion_lab.evaluation.table import log_wandb_study
from diffusion_lab.pretrained import load_model
from diffusion_lab.runs import CONFIG_DIR, pick_device

log = logging.getLogger(__name__)


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    return v


def study_config(loaded: Any, evaluator: Any, ckpt_path: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The W&B config of a study (checkpoint, dataset, schedule, parameterization, N, seed, the whole config) and
    the sampler settings of each family (name, grid, options)."""
    from diffusion_lab.evaluation.nfe_sweep import family_of

    cfg = loaded.config
    shared = {"ckpt": str(ckpt_path), "ckpt_step": loaded.step, "n": evaluator.n, "seed": evaluator.seed,
              "features": evaluator.suite.features,
              **{g: str(OmegaConf.select(cfg, f"{g}._target_")).rsplit(".", 1)[-1] for g in ("dataset", "schedule", "model")},
              "parameterization": str(OmegaConf.select(cfg, "parameterization.kind")),
              "config": OmegaConf.to_container(cfg, resolve=True)}
    families: dict[str, Any] = {}
    for s in evaluator.samplers:
        families.setdefault(family_of(s), {"sampler": s.name, "grid": s.grid,
                                           **{f"option_{k}": v for k, v in s.options.items() if k not in ("rtol", "atol")}})
    return shared, families


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    if cfg.get("evaluation") is None:
        raise ConfigError("evaluation=null: nothing to evaluate; drop the override to use the default evaluation.")
    device = pick_device(cfg.device)
    loaded = load_model(cfg, device, evaluation=cfg.evaluation)  # ckpt_path=<checkpoint> or pretrained=<folder>
    module, parts = loaded.module, loaded.parts
    evaluator = parts.evaluator
    evaluator.prepare(parts.datamodule, parts.data_shape, device)
    epoch = int(cfg.epoch) if cfg.get("epoch") is not None else loaded.epoch
    out = Path(cfg.out_dir)
    with module.sampling(evaluator.use_ema) as denoiser:
        rows = evaluator.evaluate(denoiser, epoch, loaded.step, out)
    evaluator.table.write_csv(out / "eval" / "table.csv")
    wb = cfg.get("wandb") or {}
    if wb.get("project"):
        shared, families = study_config(loaded, evaluator, cfg.get("ckpt_path"))
        log_wandb_study(evaluator.table, group=str(wb.get("group") or out.name), project=str(wb.project), config=shared,
                        samplers=families, pictures=evaluator.pictures, mode=wb.get("mode"), save_dir=out,
                        tags=list(wb.get("tags") or []))
    for row in rows:
        line = {"sampler": row["sampler"], "kind": row["kind"], "nfe": row["nfe"], "seconds": row["seconds"],
                **{k: v for k, v in row.items() if k not in ("sampler", "kind", "nfe", "seconds")},
                "ckpt": str(cfg.get("pretrained") or cfg.ckpt_path)}
        print(json.dumps({k: _json_value(v) for k, v in line.items()}), flush=True)
    return rows


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run_reporting_errors(run, cfg, log)


if __name__ == "__main__":
    entry_point(main)
