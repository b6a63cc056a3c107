"""End to end: `python -m diffusion_lab.train` as a subprocess writes a checkpoint and a sample
grid, and its logged loss goes down."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import torch

from conftest import REPO


def _run_train(tmp_path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "2"}
    cmd = [sys.executable, "-m", "diffusion_lab.train", f"hydra.run.dir={tmp_path}", *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_train_subprocess_writes_checkpoint_grid_and_loss_decreases(tmp_path):
    res = _run_train(tmp_path, "trainer.max_epochs=6", "trainer.check_val_every_n_epoch=3", "trainer.log_every_n_steps=1",
                     "evaluation.every_n_epochs=3", "evaluation.n=4", "sampler.steps=10", "optimizer.warmup_steps=10")
    assert res.returncode == 0, res.stderr[-4000:]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "config.yaml").is_file()
    # the default evaluation: one grid per evaluated epoch under samples/<sampler label>/, and its FID
    grids = sorted((tmp_path / "samples").glob("*/epoch_*.png"))
    assert [(g.parent.name, g.name) for g in grids] == [("dpm_pp_2m_10", "epoch_0002.png"), ("dpm_pp_2m_10", "epoch_0005.png")]
    rows = list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    fids = [float(r["eval/fid/dpm_pp_2m_10"]) for r in rows if r.get("eval/fid/dpm_pp_2m_10")]
    assert len(fids) == 2 and all(f >= 0 for f in fids)
    losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert len(losses) >= 60
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.7 * first, (first, last)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert any(k.startswith("ema.net.") for k in ckpt["state_dict"])
    assert ckpt["hyper_parameters"]["config"]["schedule"]["_target_"].endswith("VPLinearSchedule")
