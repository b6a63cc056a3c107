"""Nothing lost on a signal or a crash: SIGINT/SIGTERM/SIGUSR1 finish the current step, save it, print
the command that resumes, and that command continues exactly; SLURM pre-emption requeues through
Lightning's SLURM environment; a run killed with SIGKILL resumes from its last checkpoint exactly."""

from __future__ import annotations

import csv
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
import pytorch_lightning as pl
import torch

from conftest import CONF, REPO
from diffusion_lab.checkpoints import load_checkpoint
from diffusion_lab.lightning.signals import TrainingInterrupted, resume_command

# a small stateful run: dropout, importance-sampled VLB, 10-step epochs, validation between epochs
RUN = ["model.ch=16", "model.num_res_blocks=1", "model.dropout=0.1", "schedule=ddpm", "schedule.num_timesteps=50",
       "loss=vlb", "model.learned_variance=true", "loss.time_sampler.history=2", "dataset.batch_size=32",
       "trainer.limit_train_batches=10", "trainer.check_val_every_n_epoch=1", "++trainer.limit_val_batches=2",
       "trainer.num_sanity_val_steps=0", "trainer.log_every_n_steps=1", "~evaluation", "optimizer.warmup_steps=5",
       "trainer.enable_progress_bar=false"]
STEPS = 30


class SignalAt(pl.Callback):
    """Sends ``signum`` to this process during training step ``at_step`` (1-based)."""

    def __init__(self, at_step: int, signum: int):
        self.at_step, self.signum = at_step, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step + 1 == self.at_step:
            os.kill(os.getpid(), self.signum)


def _train(run_dir, *overrides):
    from hydra import compose, initialize_config_dir

    from diffusion_lab.train import run

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"run_dir={run_dir}", "name=test", *RUN, *overrides])
    return run(cfg)


def _weights(module_or_ckpt) -> dict[str, torch.Tensor]:
    if isinstance(module_or_ckpt, dict):
        return module_or_ckpt["state_dict"]
    return module_or_ckpt.state_dict()


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The weights after STEPS uninterrupted steps (raw net, EMA net and EMA image counter)."""
    return _weights(_train(tmp_path_factory.mktemp("full"), f"++trainer.max_steps={STEPS}")["module"])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_signal_saves_current_step_and_resume_is_exact(tmp_path, uninterrupted, signum, caplog):
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as stop:
        _train(run_dir, f"++trainer.max_steps={STEPS}", "+callbacks.kill._target_=test_signals.SignalAt",
               "+callbacks.kill.at_step=13", f"+callbacks.kill.signum={int(signum)}")
    assert stop.value.code == 128 + signum
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers are put back
    # the step in progress (13, mid-epoch) was finished and saved: nothing lost
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 13
    assert f"after step 13, nothing lost: saved {run_dir / 'checkpoints' / 'last.ckpt'}" in caplog.text
    assert f"ckpt_path=last hydra.run.dir={run_dir}" in caplog.text
    resumed = _train(run_dir, f"++trainer.max_steps={STEPS}", "ckpt_path=last")["module"]
    assert _max_diff(uninterrupted, _weights(resumed)) <= 1e-6


def _slurm_env(tmp_path, monkeypatch):
    """As inside a SLURM job (one task), with a fake ``scontrol`` that records its arguments (returned)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol_calls"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for k, v in {"SLURM_NTASKS": "1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_PROCID": "0",
                 "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}.items():
        monkeypatch.setenv(k, v)
    return calls


def test_slurm_preemption_saves_requeues_and_the_requeued_job_resumes(tmp_path, uninterrupted, monkeypatch):
    """SIGUSR1 under SLURM: last.ckpt and Lightning's hpc checkpoint at the current step, ``scontrol
    requeue <job>``; the requeued job (same command, no ckpt_path) resumes from the hpc checkpoint."""
    calls = _slurm_env(tmp_path, monkeypatch)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        _train(run_dir, f"++trainer.max_steps={STEPS}", "+callbacks.kill._target_=test_signals.SignalAt",
               "+callbacks.kill.at_step=13", f"+callbacks.kill.signum={int(signal.SIGUSR1)}")
    assert calls.read_text().split() == ["requeue", "4242"]
    assert load_checkpoint(run_dir / "hpc_ckpt_1.ckpt")["global_step"] == 13
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 13
    resumed = _train(run_dir, f"++trainer.max_steps={STEPS}")["module"]  # the requeued job
    assert _max_diff(uninterrupted, _weights(resumed)) <= 1e-6


def test_submitit_preemption_runs_its_handler_after_the_save_and_the_requeued_job_resumes(tmp_path, uninterrupted,
                                                                                        monkeypatch):
    """SIGUSR2 with a handler installed before training (as submitit's job environment does): the step
    is saved first, then that handler runs (submitit requeues); the requeued job resumes from the
    hpc_ckpt link without ckpt_path."""
    _slurm_env(tmp_path, monkeypatch)
    run_dir, seen = tmp_path / "run", []

    def submitit_like(signum, frame):
        seen.append(load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"])

    previous = signal.signal(signal.SIGUSR2, submitit_like)
    try:
        with pytest.raises(TrainingInterrupted):
            _train(run_dir, f"++trainer.max_steps={STEPS}", "+callbacks.kill._target_=test_signals.SignalAt",
                   "+callbacks.kill.at_step=13", f"+callbacks.kill.signum={int(signal.SIGUSR2)}")
        assert seen == [13] and signal.getsignal(signal.SIGUSR2) is submitit_like
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert load_checkpoint(run_dir / "hpc_ckpt_1.ckpt")["global_step"] == 13
    resumed = _train(run_dir, f"++trainer.max_steps={STEPS}")["module"]  # the requeued job
    assert _max_diff(uninterrupted, _weights(resumed)) <= 1e-6


def test_resume_command_keeps_the_overrides_and_points_at_the_run():
    cmd = resume_command("/runs/a b", ["dataset=mnist", "~evaluation", "ckpt_path=x.ckpt", "hydra.run.dir=/old",
                                       "optimizer.lr=1e-3"])
    assert shlex.split(cmd) == ["python", "-m", "diffusion_lab.train", "dataset=mnist", "~evaluation",
                                "optimizer.lr=1e-3", "ckpt_path=last", "hydra.run.dir=/runs/a b"]


# ---------------------------------------------------------------------------------- real processes
def _env() -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _start(run_dir, *overrides) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "diffusion_lab.train", f"hydra.run.dir={run_dir}", *RUN, *overrides]
    return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    start = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() - start < timeout, f"{path} did not appear"
        time.sleep(0.02)


def _csv_steps(run_dir) -> list[int]:
    rows = csv.DictReader(open(run_dir / "csv" / "version_0" / "metrics.csv"))
    return [int(r["step"]) for r in rows if r.get("train/loss_step")]


def test_ctrl_c_of_a_real_run_loses_at_most_the_current_step_and_its_command_resumes(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    # a long run so that the interrupt arrives mid-training; the resumed run then ends at STEPS
    proc = _start(run_dir, "++trainer.max_steps=100000", "callbacks.checkpoint.every_n_train_steps=5")
    _wait_for(run_dir / "checkpoints" / "step_0000005.ckpt", proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, out[-3000:]
    assert "Traceback" not in out
    step = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"]
    assert 5 <= step < STEPS, out[-2000:]
    # every step trained before the interrupt is in the checkpoint: the last logged step is its own
    assert max(_csv_steps(run_dir)) == step - 1
    # the printed command resumes the run (here to the same end as the uninterrupted run)
    printed = re.search(r"resume with:\s*\n\s*(python -m diffusion_lab\.train .*)", out).group(1)
    args = shlex.split(printed)[3:]
    assert f"hydra.run.dir={run_dir}" in args and "ckpt_path=last" in args and "++trainer.max_steps=100000" in args
    args = [a for a in args if not a.startswith("++trainer.max_steps=")] + [f"++trainer.max_steps={STEPS}"]
    res = subprocess.run([sys.executable, "-m", "diffusion_lab.train", *args], cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    final = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert final["global_step"] == STEPS
    assert _max_diff(uninterrupted, _weights(final)) <= 1e-6
    assert sorted(_csv_steps(run_dir)) == list(range(STEPS))  # one log, each step once


def test_kill_9_mid_epoch_then_resume_equals_uninterrupted(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    proc = _start(run_dir, "++trainer.max_steps=100000", "callbacks.checkpoint.every_n_train_steps=7")
    _wait_for(run_dir / "checkpoints" / "step_0000014.ckpt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    step = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"]  # intact, whenever the kill came
    assert step % 7 == 0 and step % 10 != 0 and step < STEPS  # mid-epoch
    resumed = _train(run_dir, f"++trainer.max_steps={STEPS}", "callbacks.checkpoint.every_n_train_steps=7",
                     "ckpt_path=last")["module"]
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))  # removed at start-up
    diff = _max_diff(uninterrupted, _weights(resumed))
    print(f"kill -9 after the checkpoint of step {step}: max |weight difference| to the uninterrupted run = {diff:.3g}")
    assert diff <= 1e-6
    assert sorted(_csv_steps(run_dir)) == list(range(STEPS))
