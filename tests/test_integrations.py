"""The optional integrations that `make test` installs (the `dev` extra): an Optuna sweep minimises the
metric the runs return, the SLURM launcher's config resolves to the submitit plugin (and, slow, the
submitit launcher really runs jobs in their own processes)."""

from __future__ import annotations

import sys

import pytest
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
    for job in ("0", "1", "2"):
        lines = (tmp_path / job / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
        header = lines[0].split(",")
        col = header.index("eval/fid/unipc_2_2")
        fids += [float(r.split(",")[col]) for r in lines[1:] if r.split(",")[col]]
    assert len(fids) == 3 and result["best_value"] == pytest.approx(min(fids), rel=1e-6)
    assert set(result["best_params"]) == {"optimizer.lr", "ema.decay"}
    lrs = {yaml.safe_load((tmp_path / j / ".hydra" / "overrides.yaml").read_text())[0] for j in ("0", "1", "2")}
    assert len(lrs) == 3  # three different trials


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
    for job, label in (("0", "ddim_2"), ("1", "heun_2")):
        assert (tmp_path / job / "eval" / "table.csv").read_text().splitlines()[1].split(",")[2] == label
    assert list((tmp_path / ".submitit").glob("*/*_log.out"))
