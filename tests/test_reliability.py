"""Nothing is lost, and bad input gets one sentence: exact resume from any checkpoint, the final step
always checkpointed, the divergence guard, atomic checkpoint writes, one log per run, corrupt and
foreign checkpoints, and incompatible config choices stopped before training. (Signals and kill -9:
test_signals.py.)"""

from __future__ import annotations

import csv
import errno
import logging
import os
import re
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch

from conftest import REPO
from diffusion_lab.checkpoints import CheckpointError, load_checkpoint
from diffusion_lab.lightning import checkpointing
from diffusion_lab.lightning.checkpointing import save_atomically
from diffusion_lab.lightning.divergence import DivergenceError, DivergenceGuard

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


def test_resume_mid_epoch_or_at_epoch_end_equals_uninterrupted(compose_cfg, tmp_path):
    full = _train(compose_cfg, tmp_path / "full", *STATEFUL, "++trainer.max_steps=30")["module"]
    assert full.loss.time_sampler.ready  # the importance-sampling history decides t by the end
    full_losses = _losses(tmp_path / "full")
    # cut at step 13 (mid-epoch 2) and at step 20 (the end of epoch 2, before its validation): the run
    # stops on max_steps and its last step is checkpointed; it resumes with ckpt_path=last to the same end
    for cut in (13, 20):
        run_dir = tmp_path / f"cut{cut}"
        _train(compose_cfg, run_dir, *STATEFUL, f"++trainer.max_steps={cut}")
        assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == cut
        resumed = _train(compose_cfg, run_dir, *STATEFUL, "++trainer.max_steps=30", "ckpt_path=last")["module"]
        _assert_same_weights(full.state_dict(), resumed.state_dict())
        assert float(resumed.ema.num_images) == 30 * 32
        # the same per-step losses, each step once in the run's one CSV (steps before the cut from the first attempt)
        resumed_losses = _losses(run_dir)
        assert sorted(resumed_losses) == list(range(30))
        assert [resumed_losses[s] for s in range(30)] == pytest.approx([full_losses[s] for s in range(30)], abs=1e-6)
        assert not (run_dir / "csv" / "version_1").exists()


# ---------------------------------------------------------------------------------- the final step
class StopAt(pl.Callback):
    """Asks the trainer to stop after training step ``step`` (as early stopping or a time limit do)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


@pytest.mark.parametrize("stop,final_step", [
    (["++trainer.max_steps=11"], 11),  # mid-epoch, off the every-3-steps schedule
    (["trainer.max_epochs=2"], 8),  # end of the last epoch (4 batches each), off the schedule
    (["+callbacks.stop._target_=test_reliability.StopAt", "+callbacks.stop.step=5"], 5),  # should_stop (time, early stop)
    (["+callbacks.early._target_=pytorch_lightning.callbacks.EarlyStopping", "+callbacks.early.monitor=train/loss_epoch",
      "+callbacks.early.patience=0", "+callbacks.early.mode=max", "+callbacks.early.check_on_train_epoch_end=true"], 8),
])
def test_last_checkpoint_holds_the_final_step_however_the_run_stops(compose_cfg, tmp_path, stop, final_step):
    out = _train(compose_cfg, tmp_path, "trainer.max_epochs=50", "callbacks.checkpoint.every_n_train_steps=3", *stop)
    trainer, module = out["trainer"], out["module"]
    assert trainer.global_step == final_step
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == final_step
    _assert_same_weights(module.state_dict(), ckpt["state_dict"], atol=0.0)  # the model of the last step, EMA included
    assert float(ckpt["state_dict"]["ema.num_images"]) == final_step * 64


# ---------------------------------------------------------------------------------- divergence
class RaiseLrAt(pl.Callback):
    """From training step ``step`` + 1 on, the learning rate is ``lr`` (a run that blows up mid-way)."""

    def __init__(self, step: int, lr: float):
        self.step, self.lr = step, lr

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            for group in trainer.optimizers[0].param_groups:
                group["lr"] = self.lr
            trainer.lr_scheduler_configs.clear()


def test_divergence_stops_naming_the_step_and_keeps_the_last_good_checkpoint(compose_cfg, tmp_path):
    """Steps 1-5 train normally; step 6 takes lr=1e9. Checkpoints every 2 steps: the one of step 6 would
    hold the blown-up weights (its own loss is fine: it is measured before the update), so it is not
    written, and last.ckpt stays at step 4."""
    with pytest.raises(DivergenceError) as err:
        _train(compose_cfg, tmp_path, "trainer.max_epochs=50", "callbacks.checkpoint.every_n_train_steps=2",
               "+callbacks.blowup._target_=test_reliability.RaiseLrAt", "+callbacks.blowup.step=5",
               "+callbacks.blowup.lr=1e9")
    msg = str(err.value)
    assert msg.startswith("the loss of the weights after step 6 on its batch "), msg
    assert f"{tmp_path / 'checkpoints' / 'last.ckpt'} (step 4) is kept" in msg and msg.count(". ") == 0
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 4
    assert not (tmp_path / "checkpoints" / "step_0000006.ckpt").exists()


@pytest.mark.parametrize("lr,sentence", [
    (1e9, "the training loss at step 2 ("),  # trains to loss ~1e26, then nan
    (1e38, "optimizer.lr=1e+38 makes the Adam step size lr/(1−β₁^1) = 1e+39 at step 1 overflow torch.float32"),
])
def test_a_learning_rate_that_diverges_stops_with_one_sentence(compose_cfg, tmp_path, lr, sentence):
    from diffusion_lab.cli import run_reporting_errors
    from diffusion_lab.train import run

    cfg = compose_cfg([*FAST, *SMALL_UNET, "trainer.max_epochs=50", f"optimizer.lr={lr}"])
    with pytest.raises(SystemExit) as stop:
        run_reporting_errors(run, cfg, logging.getLogger("test"))
    msg = str(stop.value.code)
    assert msg.startswith("error: ") and "\n" not in msg and sentence in msg, msg
    assert "no checkpoint had been written" in msg and not (tmp_path / "checkpoints" / "last.ckpt").exists()


def test_divergence_guard_decisions():
    guard = DivergenceGuard(factor=100, window=3)
    assert guard._first_diverged([(1, 1.0), (2, 0.5), (3, 2.0), (4, 40.0)]) is None  # median of the last 3 (0.5, 1, 2)
    assert guard._first_diverged([(5, 150.0)]) is None  # 150 < 100 x median(0.5, 2, 40) = 200
    reason = guard._first_diverged([(6, 4001.0), (7, 1.0)])  # 4001 > 100 x median(2, 40, 150) = 4000
    assert reason.startswith("the training loss at step 6 (4e+03) is more than 100×")
    assert "is nan" in guard._first_diverged([(8, float("nan"))])
    finite_only = DivergenceGuard(factor=None)
    assert finite_only._first_diverged([(1, 1.0), (2, 1e30)]) is None
    assert "is inf" in finite_only._first_diverged([(3, float("inf"))])
    negative = DivergenceGuard(factor=10)  # a loss that may be negative: only finiteness is checked
    assert negative._first_diverged([(1, -2.0), (2, -1.0), (3, 5.0)]) is None


# ---------------------------------------------------------------------------------- atomic checkpoints
def _disk_full_after(n_saves: int):
    """A torch.save that works n_saves times, then writes a few bytes and fails as on a full disk."""
    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) <= n_saves:
            return real(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return save


@pytest.mark.parametrize("saves_that_work", [0, 1])
def test_a_failed_checkpoint_write_keeps_the_previous_one_and_stops_with_one_sentence(compose_cfg, tmp_path, monkeypatch,
                                                                                     saves_that_work):
    """last.ckpt every 2 steps (no step files); the write of step 2 (or 4) fails as on a full disk."""
    from diffusion_lab.cli import run_reporting_errors
    from diffusion_lab.train import run

    monkeypatch.setattr(checkpointing.torch, "save", _disk_full_after(saves_that_work))
    cfg = compose_cfg([*FAST, *SMALL_UNET, "trainer.max_epochs=50", "callbacks.checkpoint.every_n_train_steps=2",
                       "callbacks.checkpoint.save_top_k=0"])
    with pytest.raises(SystemExit) as stop:
        run_reporting_errors(run, cfg, logging.getLogger("test"))
    msg = str(stop.value.code)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert msg.startswith(f"error: could not write checkpoint {last} (No space left on device), so training stopped; "), msg
    assert "\n" not in msg
    assert [p.name for p in last.parent.iterdir()] == (["last.ckpt"] if saves_that_work else [])  # no half-written file
    if saves_that_work:  # step 2 was written; the write of step 4 failed and left it as it was
        assert "the checkpoints already written are intact (newest: last.ckpt)" in msg and "resume with ckpt_path=last" in msg
        assert load_checkpoint(last)["global_step"] == 2
    else:
        assert "no checkpoint had been written yet" in msg


def test_atomic_save_replaces_the_file_in_one_step(tmp_path):
    path = tmp_path / "last.ckpt"
    save_atomically({"a": torch.ones(3)}, path)
    save_atomically({"a": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


# ---------------------------------------------------------------------------------- one run, one W&B run
def test_a_resumed_run_continues_its_wandb_run(compose_cfg, tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    inits = []
    real_init = wandb.init
    monkeypatch.setattr(wandb, "init", lambda *a, **kw: inits.append(kw) or real_init(*a, **kw))
    _train(compose_cfg, tmp_path, "logger=wandb", "++trainer.max_steps=3")
    _train(compose_cfg, tmp_path, "logger=wandb", "++trainer.max_steps=6", "ckpt_path=last")
    assert len(inits) == 2 and inits[0]["id"] == inits[1]["id"] and inits[1]["resume"] == "allow"
    assert (tmp_path / "wandb_run_id").read_text() == inits[0]["id"]
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    # offline-run-<time>-<id>; W&B appends -1 when both runs start within the same second
    pattern = re.compile(rf"offline-run-\d{{8}}_\d{{6}}-{inits[0]['id']}(-\d+)?")
    assert len(runs) == 2 and all(pattern.fullmatch(r.name) for r in runs), [r.name for r in runs]


def _cli(tmp_path, *overrides):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "2"}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, "-m", "diffusion_lab.train", f"hydra.run.dir={tmp_path}", *FAST, *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


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
    # the command line's error path (the one subprocess of this kind; tests/test_bad_input.py has the table)
    res = _cli(tmp_path / "run", f"ckpt_path={bad}", "trainer.max_epochs=1")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: checkpoint ") and "cannot be read" in res.stderr


def test_checkpoint_is_plain_and_loads_weights_only(compose_cfg, tmp_path):
    _train(compose_cfg, tmp_path, "trainer.max_epochs=1")
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")  # weights_only=True inside
    assert isinstance(ckpt["hyper_parameters"]["config"], dict)
    assert isinstance(ckpt["rng"], list) and isinstance(ckpt["loss_state"], list)  # one entry per process
    assert any(k.startswith("ema.net.") for k in ckpt["state_dict"])


@pytest.mark.slow
def test_ddp_two_cpu_processes_train_and_checkpoint(tmp_path):
    res = _cli(tmp_path, *SMALL_UNET, "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp")
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 4  # limit_train_batches=4 per epoch, 32 images per rank per batch


@pytest.mark.slow
def test_ddp_resume_mid_epoch_equals_uninterrupted(tmp_path):
    """Two CPU processes: each keeps its own noise generator and importance-sampling history, both
    travel in the checkpoint, and a mid-epoch resume continues exactly."""
    ddp = [*SMALL_UNET, "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "model.dropout=0.1",
           "schedule=ddpm", "schedule.num_timesteps=50", "loss=vlb", "model.learned_variance=true",
           "loss.time_sampler.history=2", "trainer.max_epochs=50"]
    res = _cli(tmp_path / "full", *ddp, "++trainer.max_steps=10")
    assert res.returncode == 0, res.stderr[-3000:]
    res = _cli(tmp_path / "cut", *ddp, "++trainer.max_steps=6")
    assert res.returncode == 0, res.stderr[-3000:]
    cut = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.ckpt")
    assert cut["global_step"] == 6 and len(cut["rng"]) == len(cut["loss_state"]) == 2
    assert not torch.equal(cut["rng"][0]["noise"], cut["rng"][1]["noise"])  # one stream per process
    res = _cli(tmp_path / "cut", *ddp, "++trainer.max_steps=10", "ckpt_path=last")
    assert res.returncode == 0, res.stderr[-3000:]
    full = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.ckpt")["state_dict"]
    _assert_same_weights(full, load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.ckpt")["state_dict"])
