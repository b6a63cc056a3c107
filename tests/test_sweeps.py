"""Comparing the runs of a sweep without hand work: job folders and W&B runs named by the swept values,
one aggregated table (CSV, markdown, plot) of the final metrics of every job, a summary at the end of each
run."""

from __future__ import annotations

import csv
import json
import sys

import pytest

from conftest import FAST_TRAIN, SMALL_UNET


# ------------------------------------------------------------------------------------------------ naming
def test_swept_keys_are_the_comma_lists_and_the_sweeper_params_only():
    from diffusion_lab.sweeps import swept_keys

    task = ["sampler=ddim,heun", "trainer.max_steps=20", "optimizer.lr=range(1,3)", "hydra.sweep.dir=/x,/y",
            "dataset.data_dir=a,b", "+ema.decay=choice(0.9,0.99)"]
    assert swept_keys(task, {"loss": "eps_mse,dsm_snr"}) == ["sampler", "optimizer.lr", "ema.decay", "loss"]
    assert swept_keys(["sampler=ddim"], None) == []


def test_job_dirname_keeps_the_number_and_only_the_swept_values(monkeypatch):
    from diffusion_lab.sweeps import SWEPT_ENV, job_dirname

    overrides = ["sampler=ddim", "trainer.max_steps=20", "optimizer.lr=0.0012345678", "hydra.sweep.dir=/tmp/s"]
    monkeypatch.setenv(SWEPT_ENV, json.dumps(["sampler", "optimizer.lr"]))
    assert job_dirname(3, overrides) == "3_sampler-ddim+optimizer.lr-0.001235"
    monkeypatch.setenv(SWEPT_ENV, json.dumps([]))
    assert job_dirname(0, overrides) == "0"
    monkeypatch.delenv(SWEPT_ENV)  # no published keys: every override but the excluded ones
    assert job_dirname(1, overrides) == "1_sampler-ddim+trainer.max_steps-20+optimizer.lr-0.001235"
    assert job_dirname(2, ["dataset=image_folder", "dataset.root=/data/x"]) == "2_dataset-image_folder+dataset.root--data-x"


def test_a_job_folder_can_be_given_to_ckpt_path_unquoted():
    """No `=` or `,` in folder names: Hydra's parser reads the job's checkpoint path as one plain value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from diffusion_lab.sweeps import SWEPT_ENV, job_dirname

    import os
    os.environ[SWEPT_ENV] = json.dumps(["optimizer.lr", "loss.weighting", "sampler"])
    try:
        name = job_dirname(4, ["optimizer.lr=3e-4", "loss.weighting=min_snr", "sampler=ddim", "trainer.max_steps=9"])
    finally:
        del os.environ[SWEPT_ENV]
    assert name == "4_optimizer.lr-0.0003+loss.weighting-min_snr+sampler-ddim"
    path = f"outputs/multirun/d/t/{name}/checkpoints/last.ckpt"
    (override,) = OverridesParser.create().parse_overrides([f"ckpt_path={path}"])
    assert not override.is_sweep_override() and override.value() == path


# ----------------------------------------------------------------------------------- the aggregated table
def _fake_job(sweep, name, overrides, selected, metrics, elapsed=1.0):
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if selected is not None:
        (job / "summary.json").write_text(json.dumps({"run_dir": str(job), "selected": selected, "metrics": metrics,
                                                      "overrides": overrides, "elapsed_seconds": elapsed}))


def test_sweep_summary_has_one_row_per_job_with_the_selected_samplers_metrics(tmp_path):
    from diffusion_lab.sweep_summary import main, sweep_table

    (tmp_path / "multirun.yaml").write_text("hydra:\n  overrides:\n    task: ['optimizer.lr=1e-3,1e-2', 'trainer.max_steps=5']\n"
                                            "  sweeper:\n    params: null\n")
    _fake_job(tmp_path, "0_optimizer.lr-0.001", ["optimizer.lr=1e-3", "trainer.max_steps=5"], "ddim_4",
              {"eval/fid/ddim_4": 10.0, "eval/nfe/ddim_4": 4.0, "eval/fid/heun_3": 12.0, "eval/wall_seconds": 3.0,
               "train/loss_epoch": 0.5})
    _fake_job(tmp_path, "1_optimizer.lr-0.01", ["optimizer.lr=1e-2", "trainer.max_steps=5"], "ddim_4",
              {"eval/fid/ddim_4": 7.5, "eval/nfe/ddim_4": 4.0, "eval/fid/heun_3": 9.0, "train/loss_epoch": 0.4})
    _fake_job(tmp_path, "10_optimizer.lr-0.1", ["optimizer.lr=1e-1", "trainer.max_steps=5"], None, {})  # failed job
    columns, rows, swept = sweep_table(tmp_path)
    assert swept == ["optimizer.lr"]
    assert columns == ["job", "optimizer.lr", "status", "label", "nfe", "fid", "fid/heun_3", "train/loss_epoch", "elapsed_s"]
    assert [r["job"] for r in rows] == ["0_optimizer.lr-0.001", "1_optimizer.lr-0.01", "10_optimizer.lr-0.1"]
    assert [r["optimizer.lr"] for r in rows] == ["0.001", "0.01", "0.1"]
    assert [r.get("fid") for r in rows] == [10.0, 7.5, None] and rows[1]["fid/heun_3"] == 9.0
    assert [r["status"] for r in rows] == ["done", "done", "no summary"]
    main([str(tmp_path)])
    written = list(csv.DictReader(open(tmp_path / "sweep_summary.csv")))
    assert [(r["job"], r["fid"]) for r in written] == [("0_optimizer.lr-0.001", "10.0"), ("1_optimizer.lr-0.01", "7.5"),
                                                       ("10_optimizer.lr-0.1", "")]
    assert (tmp_path / "sweep_summary.md").read_text().splitlines()[2].startswith("| 0_optimizer.lr-0.001 | 0.001 | done")
    assert (tmp_path / "sweep_summary.png").stat().st_size > 1000


def test_without_multirun_yaml_the_swept_keys_are_the_sweeper_params_and_the_values_that_differ(tmp_path):
    """Optuna writes no multirun.yaml: the keys come from a job's hydra.yaml (sweeper params) and from the
    overrides that differ between jobs; the fixed ones stay out."""
    from diffusion_lab.sweep_summary import sweep_table

    _fake_job(tmp_path, "0_a", ["optimizer.lr=0.001", "ema.decay=0.99", "trainer.max_steps=5"], "ddim_4",
              {"eval/fid/ddim_4": 3.0})
    _fake_job(tmp_path, "1_b", ["optimizer.lr=0.002", "ema.decay=0.99", "trainer.max_steps=5", "+seed=3"], "ddim_4",
              {"eval/fid/ddim_4": 4.0})
    (tmp_path / "0_a" / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  sweeper:\n    params:\n      optimizer.lr: tag(log, interval(1e-4, 1e-2))\n      ema.decay: choice(0.99, 0.999)\n")
    columns, rows, swept = sweep_table(tmp_path)
    assert swept == ["optimizer.lr", "ema.decay", "seed"]
    assert columns[:5] == ["job", "optimizer.lr", "ema.decay", "seed", "status"] and "trainer.max_steps" not in columns
    assert [r.get("seed") for r in rows] == [None, "3"]


def test_sweep_summary_of_a_folder_that_is_not_a_sweep_says_so(tmp_path):
    from diffusion_lab.sweep_summary import main

    with pytest.raises(SystemExit, match="no job folders"):
        main([str(tmp_path)])
    with pytest.raises(SystemExit, match="is not a folder"):
        main([str(tmp_path / "missing")])


# ------------------------------------------------------------------------------------------- end to end
def test_a_two_job_sweep_names_folders_and_wandb_runs_by_its_values_and_ends_with_one_table(tmp_path, monkeypatch):
    """`-m sampler=ddim,heun` (logger=wandb, wandb.init spied and run disabled: fast): folders 0_sampler-ddim and
    1_sampler-heun, W&B names and
    tags with the swept value (not the fixed overrides), one group; sweep_summary.csv has one row per job
    whose numbers are the job's own evaluation table's; every job wrote its summary.json."""
    import wandb

    from diffusion_lab import train
    from diffusion_lab.sweeps import SWEPT_ENV

    monkeypatch.setenv("WANDB_MODE", "offline")
    inits: list[dict] = []
    orig_init = wandb.init

    def init_spy(*a, **k):
        inits.append(dict(k))
        return orig_init(*a, **{**k, "mode": "disabled"})

    monkeypatch.setattr(wandb, "init", init_spy)
    monkeypatch.setattr(sys, "argv", ["train", "-m", "sampler=ddim,heun", f"hydra.sweep.dir={tmp_path}", "logger=wandb",
                                      *FAST_TRAIN, *SMALL_UNET, "trainer.max_steps=2", "sampler.steps=2",
                                      "evaluation.n=8", "evaluation.progress=false"])
    train.main()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["0_sampler-ddim", "1_sampler-heun"]
    assert SWEPT_ENV not in __import__("os").environ  # the callback cleaned up after the sweep
    assert [k["name"] for k in inits] == ["digits_vp_eps/sampler=ddim", "digits_vp_eps/sampler=heun"]
    assert "sampler=ddim" in inits[0]["tags"] and "sampler=heun" in inits[1]["tags"]
    assert not any(t.startswith("trainer.") for k in inits for t in k["tags"])  # fixed overrides are no tags
    assert len({k["group"] for k in inits}) == 1 and inits[0]["group"]
    rows = list(csv.DictReader(open(tmp_path / "sweep_summary.csv")))
    assert [(r["job"], r["sampler"], r["label"], r["status"]) for r in rows] == [
        ("0_sampler-ddim", "ddim", "ddim_2", "done"), ("1_sampler-heun", "heun", "heun_2", "done")]
    for r in rows:
        (own,) = list(csv.DictReader(open(tmp_path / r["job"] / "eval" / "table.csv")))
        for m in ("fid", "kid", "is", "nfe"):
            assert float(r[m]) == pytest.approx(float(own[m]), rel=1e-5), (r["job"], m)
        summary = json.loads((tmp_path / r["job"] / "summary.json").read_text())
        assert summary["checkpoint"].endswith("checkpoints/last.ckpt") and summary["table"].endswith("eval/table.csv")
        assert summary["elapsed_seconds"] > 0 and summary["grids"][r["label"]].endswith(".png")
    assert [float(r["nfe"]) for r in rows] == [2.0, 3.0]  # DDIM 2 steps; Heun 2 steps = 3 NFE (Euler last step)
    assert (tmp_path / "sweep_summary.md").is_file() and (tmp_path / "sweep_summary.png").is_file()
