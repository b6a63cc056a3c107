"""End to end. In-process: the default run's loss goes down and it writes its checkpoint, config and
evaluation. One subprocess smoke test of the command line: a Hydra sweep over `sampler=` gives one run
per sampler, each evaluating the sampler it was given."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FAST_TRAIN, REPO, SMALL_UNET


def test_default_run_learns_and_writes_checkpoint_config_and_evaluation(compose_cfg, tmp_path):
    from diffusion_lab.train import run

    out = run(compose_cfg([*FAST_TRAIN, "trainer.max_epochs=5", "trainer.limit_train_batches=12",
                           "optimizer.warmup_steps=10", "evaluation.every_n_epochs=3", "evaluation.n=8",
                           "sampler.steps=4"]))
    assert out["trainer"].global_step == 60
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file() and (tmp_path / "config.yaml").is_file()
    # evaluated after epoch index 2 (every 3rd) and at the end (epoch index 4), the selected sampler each time
    pictures = sorted((tmp_path / "samples").glob("*/epoch_*.png"))
    assert [(p.parent.name, p.name) for p in pictures] == [("unipc_2_4", "epoch_0002.png"), ("unipc_2_4", "epoch_0004.png")]
    rows = list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert len(losses) == 60
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.7 * first, (first, last)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert any(k.startswith("ema.net.") for k in ckpt["state_dict"])
    assert ckpt["hyper_parameters"]["config"]["schedule"]["_target_"].endswith("VPLinearSchedule")


def test_sweep_over_samplers_evaluates_each_sampler(tmp_path):
    """`python -m diffusion_lab.train -m sampler=ddim,heun trainer.max_steps=N`: two runs, each evaluated at
    its last step with its own sampler (labelled <name>_<steps>), with different numbers and pictures."""
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "2"}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, "-m", "diffusion_lab.train", "-m", "sampler=ddim,heun", "trainer.max_steps=12",
           "sampler.steps=5", f"hydra.sweep.dir={tmp_path}", *SMALL_UNET, "dataset.batch_size=32", "evaluation.n=32",
           "evaluation.progress=false", "trainer.num_sanity_val_steps=0", "callbacks.progress.refresh_rate=0"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    # job folders named by the swept value only (not the fixed overrides), one aggregated table of the sweep
    jobs = ("0_sampler-ddim", "1_sampler-heun")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == list(jobs)
    tables = {job: list(csv.DictReader(open(tmp_path / job / "eval" / "table.csv"))) for job in jobs}
    (ddim,), (heun,) = tables[jobs[0]], tables[jobs[1]]
    summary = list(csv.DictReader(open(tmp_path / "sweep_summary.csv")))
    assert [(r["sampler"], r["label"]) for r in summary] == [("ddim", "ddim_5"), ("heun", "heun_5")]
    assert [float(r["fid"]) for r in summary] == pytest.approx([float(ddim["fid"]), float(heun["fid"])], rel=1e-6)
    out = res.stdout + res.stderr
    assert "run summary" in out and f"run folder: {tmp_path / jobs[1]}" in out
    assert (ddim["sampler"], ddim["nfe"], ddim["step"]) == ("ddim_5", "5.0", "12")
    assert (heun["sampler"], heun["nfe"], heun["step"]) == ("heun_5", "9.0", "12")
    assert float(ddim["fid"]) != float(heun["fid"])
    pictures = [np.asarray(Image.open(tmp_path / job / "samples" / label / "epoch_0000.png"))
                for job, label in (("0_sampler-ddim", "ddim_5"), ("1_sampler-heun", "heun_5"))]
    assert pictures[0].shape == pictures[1].shape and not np.array_equal(*pictures)
