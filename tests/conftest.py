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
