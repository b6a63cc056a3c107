"""Evaluate a checkpoint without training: ``python -m diffusion_lab.evaluate ckpt_path=... [evaluation=...]``.

Runs the evaluation callback's work (``EvaluationCallback.prepare`` + ``evaluate``) on the checkpoint's
model and dataset, and prints one JSON line per sampler on stdout — ``sampler`` (its label), ``kind``
(SDE or ODE), ``nfe``, ``seconds`` and one key per metric (``fid``, ``kid``, ``is``, or ``swd``,
``mmd``, ``nll``) — while logs and progress bars go to stderr. Grids and ``eval/table.csv`` go to the
output directory.

- With no ``evaluation=`` it uses the default evaluation (conf/evaluation/default.yaml) on the
  checkpoint's own dataset.
- ``sampler=<conf/sampler file>`` evaluates that one sampler instead of the evaluation's list, so
  ``-m sampler=ddim,heun,dpm_solver_pp_2m`` sweeps samplers over one checkpoint (the feature network
  and the real-data statistics are cached after the first job).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from diffusion_lab.cli import run_reporting_errors
from diffusion_lab.config_checks import ConfigError, check_components
from diffusion_lab.sample import load_trained, pick_device, sampler_for

log = logging.getLogger(__name__)

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    return v


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    trained = load_trained(cfg.ckpt_path, pick_device(cfg.device))
    module, dm = trained["module"], trained["datamodule"]
    if cfg.get("evaluation") is None:
        raise ConfigError("evaluation=null: nothing to evaluate; drop the override to use the default evaluation.")
    callback = instantiate(cfg.evaluation, _convert_="partial")
    if cfg.get("sampler") is not None:
        samplers = [sampler_for(module, dm, cfg.sampler)]
    else:
        samplers = callback.resolve_samplers(module)
        for s in samplers:  # incompatible samplers fail now, with one sentence
            check_components(dataset=dm, schedule=module.schedule, parameterization=module.parameterization,
                             loss=module.loss, net=module.net, sampler=s, data_shape=tuple(module.data_shape))
    callback.prepare(module, dm)
    epoch = int(cfg.epoch) if cfg.get("epoch") is not None else trained["epoch"]
    out = Path(cfg.out_dir)
    rows = callback.evaluate(module, dm, epoch, out_dir=out, samplers=samplers)
    callback.rows.extend(rows)
    callback._write_table(out / "eval" / "table.csv")
    for row in rows:
        line = {"sampler": row["sampler"], "kind": row["kind"], "nfe": row["nfe"], "seconds": row["seconds"],
                **{k: v for k, v in row.items() if k not in ("sampler", "kind", "nfe", "seconds")},
                "ckpt": str(cfg.ckpt_path), "step": trained["step"]}
        print(json.dumps({k: _json_value(v) for k, v in line.items()}), flush=True)
    return rows


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run_reporting_errors(run, cfg, log)


if __name__ == "__main__":
    main()
