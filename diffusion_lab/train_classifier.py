"""Train the noise-conditional classifier of classifier guidance:
``python -m diffusion_lab.train_classifier [dataset=...] [schedule=...] [classifier=...]``.

Composes conf/train_classifier.yaml, builds and checks the parts (``conditioning.build_classifier_run``:
a labelled image dataset, the schedule of the model to guide, a ``NoiseConditionalClassifier``), and
fits with Lightning (``lightning.classifier.NoiseClassifierModule``). The run directory gets the resolved
config, the checkpoints (``checkpoints/last.ckpt``: pass it as ``guidance.classifier_ckpt``) and the
accuracy by noise level (``eval/accuracy_by_noise.csv``), whose latest rows are printed at the end.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.cli import entry_point, run_reporting_errors
from diffusion_lab.conditioning import build_classifier_run
from diffusion_lab.runs import CONFIG_DIR, build_trainer, hydra_choices, resolve_ckpt_path, write_text

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train as configured; returns the module, trainer, run parts and the latest accuracy by noise level."""
    pl.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    parts = build_classifier_run(cfg, hydra_choices())
    ckpt_path = resolve_ckpt_path(cfg)
    run_dir = Path(cfg.run_dir)
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True), "hydra.run.dir")
    parts.datamodule.setup()
    trainer = build_trainer(cfg, None)
    trainer.fit(parts.module, datamodule=parts.datamodule, ckpt_path=ckpt_path)
    table = parts.module.accuracy_by_noise
    if not table or table[-1]["step"] != trainer.global_step:  # the table at the final weights
        trainer.validate(parts.module, datamodule=parts.datamodule, verbose=False)
        if trainer.is_global_zero:
            parts.module.write_table(run_dir / "eval" / "accuracy_by_noise.csv")
    if trainer.checkpoint_callback is not None:  # every rank calls it; rank 0 writes
        trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")  # with the final table
    rows = parts.module.latest_accuracy()
    for row in rows:
        print(json.dumps(row), flush=True)
    log.info("classifier: mean accuracy over noise levels %.3f (run dir %s)", parts.module.mean_accuracy(), run_dir)
    return {"module": parts.module, "trainer": trainer, "run": parts, "accuracy_by_noise": rows}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train_classifier")
def main(cfg: DictConfig) -> None:
    run_reporting_errors(run, cfg, log)


if __name__ == "__main__":
    entry_point(main)
