"""Shared test set-up: offline W&B, few threads (CI machines have 2 cores), helpers to compose configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(1)  # tiny ops: one thread is faster than two on a loaded 2-core machine

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
# the evaluation's feature classifier and real-data features: trained / computed once, reused by later runs
os.environ.setdefault("DIFFUSION_LAB_CACHE", str(REPO / ".cache" / "diffusion_lab"))


@pytest.fixture
def compose_cfg(tmp_path):
    """compose_cfg(overrides) -> the root config with run_dir/name pointed at tmp_path."""
    from hydra import compose, initialize_config_dir

    def _compose(overrides: list[str] | None = None):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="train", overrides=[f"run_dir={tmp_path}", "name=test", *(overrides or [])])

    return _compose


# a few optimizer steps of the default run, no sanity check, no progress bar: in-process wiring tests
FAST_TRAIN = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.num_sanity_val_steps=0",
              "trainer.check_val_every_n_epoch=100", "trainer.log_every_n_steps=1", "optimizer.warmup_steps=1",
              "callbacks.progress.refresh_rate=0"]
# the default UNet made small (4x fewer parameters): the wiring, not the network, is under test
SMALL_UNET = ["model.ch=16", "model.num_res_blocks=1"]


@pytest.fixture
def build_run(compose_cfg):
    """build_run(overrides) -> (cfg, parts, module): the run layer's parts and LightningModule, untrained."""
    from diffusion_lab.runs import build_module, build_parts

    def _build(overrides: list[str] | None = None):
        torch.manual_seed(0)
        cfg = compose_cfg(overrides)
        parts = build_parts(cfg, choices={})
        return cfg, parts, build_module(cfg, parts)

    return _build
