"""The optional integrations that `make test` installs (the `dev` extra): an Optuna sweep minimises the
metric the runs return, the SLURM launcher's config resolves to the submitit plugin (and, slow, the
submitit launcher really runs jobs in their own processes; and so does the joblib launcher of local parallel
sweeps)."""

from __future__ import annotations

import csv
import sys

import pytest
import torch
import yaml
from hydra.utils import get_class

from conftest import FAST_TRAIN, SMALL_UNET


def test_optuna_sweep_minimises_the_returned_metric(tmp_path, monkeypatch):
    from diffusion_lab import train

    monkeypatch.setattr(sys, "argv", ["train", "-m", "hparams_search=optuna_lr", "hydra.sweeper.n_trials=3",
                                      f"hydra.sweep.dir={tmp_path}", *FAST_TRAIN, *SMALL_UNET, "trainer.max_steps=2",
                                      "sampler.steps=2", "evaluation.n=8", "logger=csv"])
    train.main()
    result = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    fids = []
    jobs = sorted((p for p in tmp_path.iterdir() if p.is_dir()), key=lambda p: int(p.name.split("_")[0]))
    assert [p.name.split("_")[0] for p in jobs] == ["0", "1", "2"]
    assert all("optimizer.lr-" in p.name and "+ema.decay-" in p.name for p in jobs)  # named by the trial's values
    for job in jobs:
        lines = (job / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
        header = lines[0].split(",")
        col = header.index("eval/fid/unipc_2_2")
        fids += [float(r.split(",")[col]) for r in lines[1:] if r.split(",")[col]]
    assert len(fids) == 3 and result["best_value"] == pytest.approx(min(fids), rel=1e-6)
    assert set(result["best_params"]) == {"optimizer.lr", "ema.decay"}
    lrs = {yaml.safe_load((j / ".hydra" / "overrides.yaml").read_text())[0] for j in jobs}
    assert len(lrs) == 3  # three different trials
    rows = list(csv.DictReader(open(tmp_path / "sweep_summary.csv")))  # the sweep's table: the trials' FIDs
    assert sorted(float(r["fid"]) for r in rows) == pytest.approx(sorted(fids), rel=1e-6)


def test_slurm_launcher_config_resolves_to_the_submitit_plugin():
    from hydra import compose, initialize_config_dir

    from conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert get_class(launcher._target_).__name__ == "SlurmLauncher"
    assert launcher.tasks_per_node == launcher.gpus_per_node  # one task per GPU: Lightning's DDP under SLURM


@pytest.mark.slow
def test_submitit_local_launcher_runs_each_job_in_its_own_process(tmp_path, monkeypatch):
    """hydra/launcher=submitit_local: the same plugin as SLURM, executing on this machine."""
    from diffusion_lab import train

    monkeypatch.setattr(sys, "argv", ["train", "-m", "hydra/launcher=submitit_local", "sampler=ddim,heun",
                                      f"hydra.sweep.dir={tmp_path}", *FAST_TRAIN, *SMALL_UNET, "trainer.max_steps=2",
                                      "sampler.steps=2", "evaluation.n=8"])
    train.main()
    for job, label in (("0_sampler-ddim", "ddim_2"), ("1_sampler-heun", "heun_2")):
        assert (tmp_path / job / "eval" / "table.csv").read_text().splitlines()[1].split(",")[2] == label
    assert list((tmp_path / ".submitit").glob("*/*_log.out"))


@pytest.mark.slow
def test_joblib_launcher_runs_a_sweep_in_worker_processes(tmp_path, monkeypatch):
    """hydra/launcher=joblib (conf/hydra/launcher/joblib.yaml): two jobs in loky worker processes, folders
    named by the swept value, and the sweep's table at the end."""
    import json
    import os

    from diffusion_lab import train

    monkeypatch.setattr(sys, "argv", ["train", "-m", "hydra/launcher=joblib", "optimizer.lr=1e-3,3e-3",
                                      f"hydra.sweep.dir={tmp_path}", *FAST_TRAIN, *SMALL_UNET, "trainer.max_steps=2",
                                      "sampler.steps=2", "evaluation.n=8", "evaluation.progress=false"])
    train.main()
    jobs = ("0_optimizer.lr-0.001", "1_optimizer.lr-0.003")
    summaries = [json.loads((tmp_path / j / "summary.json").read_text()) for j in jobs]
    assert all(s["pid"] != os.getpid() for s in summaries)  # ran in the launcher's workers, not here
    assert [s["overrides"][0] for s in summaries] == ["optimizer.lr=0.001", "optimizer.lr=0.003"]
    rows = list(csv.DictReader(open(tmp_path / "sweep_summary.csv")))
    assert [(r["job"], r["optimizer.lr"]) for r in rows] == [(jobs[0], "0.001"), (jobs[1], "0.003")]
    assert [float(r["train/loss_epoch"]) for r in rows] == [s["metrics"]["train/loss_epoch"] for s in summaries]


def test_optuna_fid_search_space_tunes_lr_ema_and_a_weighting_every_choice_of_which_builds(build_run):
    """hparams_search=optuna_fid: the learning rate, the EMA decay and the loss weighting, minimising the
    selected sampler's FID; each weighting it can draw is one the default run accepts."""
    from hydra import compose, initialize_config_dir

    from conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hparams_search=optuna_fid", "sampler=ddim", "sampler.steps=7"],
                      return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert set(params) == {"optimizer.lr", "ema.decay", "loss.weighting"}
    assert get_class(cfg.hydra.sweeper._target_).__name__ == "OptunaSweeper" and cfg.hydra.sweeper.direction == "minimize"
    assert cfg.optimized_metric == "eval/fid/ddim_7"
    weightings = params["loss.weighting"].removeprefix("choice(").removesuffix(")").split(", ")
    assert weightings == ["simple", "min_snr", "v", "x0"]
    # each choice is a different loss: its multiplier on the ε-MSE (VP, eps) in closed form, SNR = α²/σ²
    t = torch.tensor([0.05, 0.3, 0.7, 0.95])
    expected = {"simple": lambda snr: torch.ones_like(snr), "min_snr": lambda snr: snr.clamp(max=5.0) / snr,
                "v": lambda snr: (snr + 1) / snr, "x0": lambda snr: 1 / snr}
    for w in weightings:
        _, parts, _ = build_run([f"loss.weighting={w}"])
        sched = parts.schedule
        snr = (sched.alpha(t.double()) / sched.sigma(t.double())) ** 2
        m = parts.loss.multiplier(sched, parts.parameterization, t)
        torch.testing.assert_close(m, expected[w](snr), rtol=1e-9, atol=0)
