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


def _rows(run_dir):
    return list(csv.DictReader(open(run_dir / "csv" / "version_0" / "metrics.csv")))


def _losses(run_dir) -> dict[int, float]:
    """{logged step: train/loss_step} from the run's one CSV (each step must be there once)."""
    rows = [r for r in _rows(run_dir) if r.get("train/loss_step")]
    steps = [int(r["step"]) for r in rows]
    assert len(steps) == len(set(steps)), f"steps logged twice: {sorted(steps)}"
    return {int(r["step"]): float(r["train/loss_step"]) for r in rows}


def _assert_same_weights(a: dict, b: dict, atol: float = 1e-6) -> float:
    """Every tensor of two state dicts equal within atol (raw net, EMA net, EMA image counter); the worst gap."""
    assert a.keys() == b.keys()
    worst = 0.0
    for k in a:
        diff = float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0
        assert diff <= atol, (k, diff)
        worst = max(worst, diff)
    return worst


# Everything that carries state across steps is on: dropout (global generator), the VLB loss with
# importance sampling (its history is full after ~10 steps with T=50 and history=2, then it decides t),
# the training-noise generator, validation between epochs (must not shift any stream), 10-step epochs.
STATEFUL = ["model.dropout=0.1", "schedule=ddpm", "schedule.num_timesteps=50", "loss=vlb", "model.learned_variance=true",
            "loss.time_sampler.history=2", "dataset.batch_size=32", "trainer.limit_train_batches=10",
            "trainer.check_val_every_n_epoch=1", "++trainer.limit_val_batches=2", "optimizer.warmup_steps=5"]


def test_resume_mid_epoch_equals_uninterrupted(compose_cfg, tmp_path):
    full = _train(compose_cfg, tmp_path / "full", *STATEFUL, "++trainer.max_steps=30")["module"]
    assert full.loss.time_sampler.ready  # the importance-sampling history decides t by the end
    # cut at step 13 (mid-epoch 2): the run stops on max_steps and its last step is checkpointed ...
    _train(compose_cfg, tmp_path / "cut", *STATEFUL, "++trainer.max_steps=13")
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.ckpt")["global_step"] == 13
    # ... and resumes with ckpt_path=last to the same end
    resumed = _train(compose_cfg, tmp_path / "cut", *STATEFUL, "++trainer.max_steps=30", "ckpt_path=last")["module"]
    _assert_same_weights(full.state_dict(), resumed.state_dict())
    assert float(resumed.ema.num_images) == 30 * 32
    # the same per-step losses, each step once in the run's one CSV (steps 0-12 from the first attempt)
    full_losses, resumed_losses = _losses(tmp_path / "full"), _losses(tmp_path / "cut")
    assert sorted(resumed_losses) == list(range(30))
    assert [resumed_losses[s] for s in range(30)] == pytest.approx([full_losses[s] for s in range(30)], abs=1e-6)
    assert not (tmp_path / "cut" / "csv" / "version_1").exists()


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
