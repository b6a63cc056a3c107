"""Nothing is lost, and bad input gets one sentence: exact resume, the NaN guard, corrupt and foreign
checkpoints, and incompatible config choices stopped before training."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from diffusion_lab.checkpoints import CheckpointError, load_checkpoint

FAST = ["dataset.batch_size=64", "trainer.limit_train_batches=4", "trainer.check_val_every_n_epoch=100",
        "trainer.num_sanity_val_steps=0", "trainer.log_every_n_steps=1", "~evaluation", "optimizer.warmup_steps=0",
        "callbacks.checkpoint.every_n_train_steps=1000"]
SMALL_UNET = ["model.ch=16", "model.num_res_blocks=1"]


def _train(compose_cfg, run_dir, *overrides):
    from diffusion_lab.train import run

    cfg = compose_cfg([*FAST, *SMALL_UNET, *overrides])
    cfg.run_dir = str(run_dir)
    return run(cfg)


def _losses(run_dir):
    rows = list(csv.DictReader(open(run_dir / "csv" / "version_0" / "metrics.csv")))
    return [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]


def test_resume_equals_uninterrupted(compose_cfg, tmp_path):
    full = _train(compose_cfg, tmp_path / "full", "trainer.max_epochs=3")["module"]
    _train(compose_cfg, tmp_path / "cut", "trainer.max_epochs=1")
    resumed = _train(compose_cfg, tmp_path / "cut", "trainer.max_epochs=3", "ckpt_path=last")["module"]
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), atol=1e-6, rtol=0), k
    # the same loss curve: the resumed run's steps 5-12 equal the uninterrupted run's
    full_losses = _losses(tmp_path / "full")
    resumed_losses = [float(r["train/loss_step"]) for r in csv.DictReader(open(next((tmp_path / "cut" / "csv").glob("version_1/metrics.csv"))))
                      if r.get("train/loss_step")]
    assert len(full_losses) == 12 and len(resumed_losses) == 8
    assert resumed_losses == pytest.approx(full_losses[4:], abs=1e-6)


def _cli(tmp_path, *overrides):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "2"}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, "-m", "diffusion_lab.train", f"hydra.run.dir={tmp_path}", *FAST, *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_nan_guard_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    res = _cli(tmp_path, *SMALL_UNET, "optimizer.lr=1e12", "trainer.gradient_clip_val=null", "trainer.max_epochs=50",
               "callbacks.checkpoint.every_n_train_steps=1")
    assert res.returncode != 0
    err = res.stderr + res.stdout
    assert "at step" in err and ("not finite" in err or "train/loss is" in err), err[-2000:]
    assert "Traceback" not in res.stderr
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_corrupt_and_foreign_checkpoints_give_one_sentence(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(os.urandom(1000))
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a diffusion_lab checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")
    res = _cli(tmp_path / "run", f"ckpt_path={bad}", "trainer.max_epochs=1")
    assert res.returncode != 0 and "cannot be read" in res.stderr and "Traceback" not in res.stderr


def test_checkpoint_is_plain_and_loads_weights_only(compose_cfg, tmp_path):
    _train(compose_cfg, tmp_path, "trainer.max_epochs=1")
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")  # weights_only=True inside
    assert isinstance(ckpt["hyper_parameters"]["config"], dict)
    assert "rng" in ckpt and "loss_state" in ckpt
    assert any(k.startswith("ema.net.") for k in ckpt["state_dict"])


@pytest.mark.parametrize("overrides,sentence", [
    (["loss=hybrid", "schedule=vp", "model.learned_variance=true"], "discrete"),
    (["loss=hybrid", "schedule=ddpm"], "learned_variance"),
    (["dataset=two_moons"], "model=unet_digits is an image network but dataset=two_moons"),
    (["model=mlp"], "model=mlp is for low-dimensional vectors but dataset=digits gives images"),
    (["dataset=two_moons", "model=mlp", "model.num_classes=10"], "model.num_classes=10 makes the model class-conditional"),
    (["sampler=ddim", "sampler.grid=trailing"], "sampler.grid=trailing needs a discrete schedule"),
])
def test_incompatible_choices_stop_before_training(tmp_path, overrides, sentence):
    res = _cli(tmp_path, "trainer.max_epochs=1", *overrides)
    assert res.returncode != 0
    assert sentence in res.stderr, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_ddp_two_cpu_processes_train_and_checkpoint(tmp_path):
    res = _cli(tmp_path, *SMALL_UNET, "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp")
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 4  # limit_train_batches=4 per epoch, 32 images per rank per batch
