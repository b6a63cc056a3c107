"""The evaluation callback and its entry points: samplers × metrics from the same seeded noise, per-rank
shares, grids and the comparison table, training runs logging three samplers to CSV and to an offline
W&B run (spied on), `python -m diffusion_lab.evaluate` / `sample`, and FID under 2-process DDP (gloo)
equal to the FID of the same samples on one process."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO
from diffusion_lab.lightning.evaluation import EvaluationCallback, generate_samples, rank_share
from diffusion_lab.samplers import Sampler
from diffusion_lab.train import build

CACHE = os.environ["DIFFUSION_LAB_CACHE"]
TINY_TRAIN = ["trainer.max_epochs=2", "trainer.limit_train_batches=2", "trainer.num_sanity_val_steps=0",
              "trainer.check_val_every_n_epoch=5", "trainer.log_every_n_steps=1", "optimizer.warmup_steps=1",
              "callbacks.progress.refresh_rate=0"]
# evaluation=compare made cheap: same three samplers (SDE Euler–Maruyama, Heun, DPM-Solver++(2M)), few steps
COMPARE = ["evaluation=compare", "evaluation.every_n_epochs=1", "evaluation.n=16", "evaluation.grid_n=16",
           "evaluation.samplers.sde_em.steps=6", "evaluation.samplers.ode_heun.steps=3",
           "evaluation.samplers.dpm_pp_2m.steps=4", "evaluation.progress=false"]
LABELS = ["sde_em_6", "ode_heun_3", "dpm_pp_2m_4"]


def _three_samplers() -> dict:
    return {"ode": Sampler("ddim", steps=4, label="ode_ddim_4"),
            "sde": Sampler("sde_euler_maruyama", steps=4, label="sde_em_4"),
            "heun": Sampler("heun", steps=3, grid="karras", label="ode_heun_3")}


@pytest.fixture
def digits_parts(compose_cfg):
    torch.manual_seed(0)
    return build(compose_cfg())


def test_rank_shares_cover_n_exactly():
    assert [rank_share(10, r, 3) for r in range(3)] == [4, 3, 3]
    assert sum(rank_share(257, r, 4) for r in range(4)) == 257


def test_every_sampler_starts_from_the_same_noise_and_ranks_do_not_share_it(digits_parts, tmp_path, monkeypatch):
    module, dm = digits_parts["module"], digits_parts["datamodule"]
    seen: list[tuple[str, torch.Tensor]] = []
    original = module.generate

    def spy(n, sampler=None, x_T=None, **kw):
        seen.append((sampler.label, x_T.clone()))
        return original(n, sampler=sampler, x_T=x_T, **kw)

    monkeypatch.setattr(module, "generate", spy)
    cb = EvaluationCallback(samplers=_three_samplers(), n=12, grid_n=9, batch_size=8, metrics=["fid", "kid"],
                            cache_dir=str(tmp_path / "cache"), classifier={"epochs": 1}, progress=False)
    rows = cb.evaluate(module, dm, epoch=3, out_dir=tmp_path)
    assert [(r["sampler"], r["kind"]) for r in rows] == [("ode_ddim_4", "ODE"), ("sde_em_4", "SDE"), ("ode_heun_3", "ODE")]
    assert rows[0]["nfe"] == 4 and rows[2]["nfe"] == 5  # Heun: 2 steps of 2 calls + a last Euler step
    assert all(r["fid"] >= 0 and "kid" in r and r["seconds"] > 0 for r in rows)
    # two batches (8 + 4) per sampler; batch b's initial noise is identical for all three samplers
    assert [lb for lb, _ in seen] == ["ode_ddim_4"] * 2 + ["sde_em_4"] * 2 + ["ode_heun_3"] * 2
    for b in range(2):
        assert torch.equal(seen[b][1], seen[2 + b][1]) and torch.equal(seen[b][1], seen[4 + b][1])
    # the grids line up: one per sampler, same file name
    for label in ("ode_ddim_4", "sde_em_4", "ode_heun_3"):
        assert (tmp_path / "samples" / label / "epoch_0003.png").is_file()
    # rank 1 of 2 draws its own share (6) from seed + 1: no sample shared with rank 0
    seen.clear()
    grids_only = EvaluationCallback(samplers=[_three_samplers()["ode"]], n=12, metrics=[], progress=False)
    (row,) = grids_only.evaluate(module, dm, epoch=3, rank=1, world=2, out_dir=tmp_path / "r1")
    assert row["nfe"] == 4 and "fid" not in row
    rank1 = seen[0][1]
    assert rank1.shape[0] == 6
    rank0 = torch.Generator().manual_seed(0)
    assert not torch.isclose(module.schedule.prior_sample((6, 1, 8, 8), generator=rank0, dtype=torch.float64),
                             rank1.cpu()).any()
    assert not (tmp_path / "r1" / "samples").exists()  # only rank 0 writes grids


def test_generate_samples_is_reproducible_from_its_seed(digits_parts):
    module = digits_parts["module"]
    s = Sampler("ddim", steps=3)
    a = generate_samples(module, s, 5, seed=7, batch_size=2, progress=False)
    b = generate_samples(module, s, 5, seed=7, batch_size=2, progress=False)
    c = generate_samples(module, s, 5, seed=8, batch_size=2, progress=False)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x) and a.nfe == 3


def test_inception_features_through_the_evaluation_config(compose_cfg, tmp_path):
    """features=inception with a local weights file (random weights of the real architecture)."""
    from hydra.utils import instantiate

    from diffusion_lab.metrics import write_random_inception_weights

    weights = write_random_inception_weights(tmp_path / "inception.pth")
    cfg = compose_cfg(["evaluation.features=inception", f"evaluation.inception_weights={weights}", "evaluation.n=4",
                       f"evaluation.cache_dir={tmp_path / 'cache'}", "evaluation.progress=false",
                       "evaluation.samplers.dpm_pp_2m.steps=2"])
    parts = build(cfg)
    cb = instantiate(cfg.evaluation)
    (row,) = cb.evaluate(parts["module"], parts["datamodule"], epoch=0, out_dir=tmp_path)
    assert cb.feature_net.num_features == 2048 and {"fid", "kid", "is"} <= set(row)
    assert len(list((tmp_path / "cache" / "real_features").glob("*_train_inception-*_4.pt"))) == 1
    missing = instantiate(cfg.evaluation, inception_weights=str(tmp_path / "none.pth"))
    with pytest.raises(FileNotFoundError, match="download https://.*evaluation.inception_weights="):
        missing.prepare(parts["module"], parts["datamodule"])


def test_low_dimensional_data_gets_sliced_wasserstein_mmd_and_exact_nll(compose_cfg, tmp_path):
    parts = build(compose_cfg(["dataset=gmm", "model=mlp", "dataset.n_train=500", "dataset.n_val=300"]))
    cb = EvaluationCallback(samplers={"a": Sampler("dpm_solver_pp_2m", steps=4, grid="lambda", label="dpm_4")}, n=64,
                            progress=False)
    (row,) = cb.evaluate(parts["module"], parts["datamodule"], epoch=0, out_dir=tmp_path)
    assert {"swd", "w2", "mmd", "nll", "nll_data"} <= set(row) and row["kind"] == "ODE"
    assert (tmp_path / "samples" / "dpm_4" / "epoch_0000.png").is_file()  # a scatter plot for 2-D data


def test_bad_evaluation_settings_fail_with_one_sentence(digits_parts, compose_cfg):
    with pytest.raises(ValueError, match=r"evaluation.n=0 must be an integer ≥ 1"):
        EvaluationCallback(n=0)
    with pytest.raises(ValueError, match="two samplers labelled 'x'"):
        EvaluationCallback(samplers=[Sampler("ddim", label="x"), Sampler("heun", label="x")])
    with pytest.raises(ValueError, match="evaluation.features='vgg' is not a feature network"):
        EvaluationCallback(features="vgg")
    with pytest.raises(ValueError, match="evaluation.metrics='fid'"):
        EvaluationCallback(metrics="fid")
    cb = EvaluationCallback(metrics=["swd"])
    with pytest.raises(ValueError, match="'swd', which does not apply to images"):
        cb.prepare(digits_parts["module"], digits_parts["datamodule"])
    with pytest.raises(ValueError, match="each entry must be a sampler config"):
        EvaluationCallback(samplers=[42])


def _metrics_rows(run_dir):
    return list(csv.DictReader(open(run_dir / "csv" / "version_0" / "metrics.csv")))


def test_training_with_three_samplers_logs_curves_nfe_grids_and_table_to_csv(compose_cfg, tmp_path):
    from diffusion_lab.train import run

    cfg = compose_cfg([*TINY_TRAIN, *COMPARE, "logger=csv"])
    run(cfg)
    rows = _metrics_rows(tmp_path)
    for label in LABELS:
        fids = [float(r[f"eval/fid/{label}"]) for r in rows if r.get(f"eval/fid/{label}")]
        nfes = [float(r[f"eval/nfe/{label}"]) for r in rows if r.get(f"eval/nfe/{label}")]
        assert len(fids) == 2 and len(nfes) == 2, label  # one point per epoch: a curve per sampler
        assert all(r.get(f"eval/seconds/{label}") for r in rows if r.get(f"eval/fid/{label}"))
        assert sorted(p.name for p in (tmp_path / "samples" / label).glob("*.png")) == ["epoch_0000.png", "epoch_0001.png"]
    assert {float(r["eval/nfe/ode_heun_3"]) for r in rows if r.get("eval/nfe/ode_heun_3")} == {5.0}
    table = list(csv.DictReader(open(tmp_path / "eval" / "table.csv")))
    assert [(t["epoch"], t["sampler"], t["kind"]) for t in table] == [
        (str(e), lb, "SDE" if lb.startswith("sde") else "ODE") for e in (0, 1) for lb in LABELS]
    assert {"nfe", "fid", "kid", "is", "seconds"} <= set(table[0])


def test_wandb_offline_run_logs_three_samplers_side_by_side(compose_cfg, tmp_path, monkeypatch):
    import wandb
    import wandb.sdk.wandb_run as wandb_run

    from diffusion_lab.train import run

    monkeypatch.setenv("WANDB_MODE", "offline")
    logged: list[dict] = []
    defined: list[tuple] = []
    finished: list[bool] = []
    orig_log, orig_define, orig_finish = wandb_run.Run.log, wandb_run.Run.define_metric, wandb_run.Run.finish

    def log_spy(self, data, *a, **k):
        logged.append(dict(data))
        return orig_log(self, data, *a, **k)

    def define_spy(self, name, *a, **k):
        defined.append((name, k.get("summary")))
        return orig_define(self, name, *a, **k)

    def finish_spy(self, *a, **k):
        finished.append(True)
        return orig_finish(self, *a, **k)

    monkeypatch.setattr(wandb_run.Run, "log", log_spy)
    monkeypatch.setattr(wandb_run.Run, "define_metric", define_spy)
    monkeypatch.setattr(wandb_run.Run, "finish", finish_spy)
    import wandb.sdk.wandb_config as wandb_config

    config_updates: list[dict] = []
    orig_update = wandb_config.Config.update

    def update_spy(self, d, *a, **k):
        config_updates.append(dict(d))
        return orig_update(self, d, *a, **k)

    monkeypatch.setattr(wandb_config.Config, "update", update_spy)
    cfg = compose_cfg([*TINY_TRAIN, *COMPARE, "logger=wandb", "logger.group=g1", "logger.tags=[t1]"])
    run(cfg)
    assert finished and wandb.run is None  # the job finished its own run
    for label in LABELS:
        fid = [d[f"eval/fid/{label}"] for d in logged if f"eval/fid/{label}" in d]
        nfe = [d[f"eval/nfe/{label}"] for d in logged if f"eval/nfe/{label}" in d]
        images = [d[f"eval/samples/{label}"] for d in logged if f"eval/samples/{label}" in d]
        assert len(fid) == 2 and len(nfe) == 2 and len(images) == 2, label
        assert all(isinstance(im[0], wandb.Image) for im in images)
        assert (f"eval/fid/{label}", "min") in defined
    assert ("eval/fid/*", "min") in defined and ("eval/is/*", "max") in defined
    tables = [d["eval/table"] for d in logged if "eval/table" in d]
    assert len(tables) == 2 and isinstance(tables[-1], wandb.Table)
    assert len(tables[-1].data) == 6 and tables[-1].columns[:4] == ["epoch", "sampler", "kind", "nfe"]
    assert "fid" in tables[-1].columns
    # the resolved config went to wandb.config as plain containers
    (cfg_update,) = [u for u in config_updates if "config" in u]
    assert cfg_update["config"]["schedule"]["_target_"].endswith("VPLinearSchedule")
    assert cfg_update["config"]["evaluation"]["samplers"]["ode_heun"]["label"] == "ode_heun_3"  # resolved

    def plain(v):
        return all(plain(x) for x in v.values()) if isinstance(v, dict) else all(plain(x) for x in v) if isinstance(
            v, list) else isinstance(v, (str, int, float, bool, type(None)))

    assert plain(cfg_update["config"])
    assert next((tmp_path / "wandb").glob("offline-run-*")).is_dir()  # offline run written under the run dir


def test_wandb_logger_groups_tags_and_summaries_from_config(compose_cfg, tmp_path, monkeypatch):
    from hydra.utils import instantiate

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_cfg(["logger=wandb", "logger.group=sweep7", "logger.job_type=eval", "logger.tags=[a,b]"])
    lg = instantiate(cfg.logger)
    assert lg._wandb_init["group"] == "sweep7" and lg._wandb_init["job_type"] == "eval"
    assert lg._wandb_init["tags"] == ["a", "b"]
    assert lg._define_metrics["eval/fid/*"] == "min"
    with pytest.raises(Exception, match="'lowest' is not a W&B summary"):
        instantiate(cfg.logger, define_metrics={"eval/fid/*": "lowest"})


# ------------------------------------------------------------------------------------- entry points
@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory):
    """A checkpoint from a tiny training run (1 epoch of 2 batches, no evaluation)."""
    from hydra import compose, initialize_config_dir

    from conftest import CONF
    from diffusion_lab.train import run

    out = tmp_path_factory.mktemp("run")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"run_dir={out}", "name=t", "trainer.max_epochs=1",
                                                      "trainer.limit_train_batches=2", "trainer.num_sanity_val_steps=0",
                                                      "~evaluation", "logger=csv", "callbacks.progress.refresh_rate=0"])
    run(cfg)
    ckpt = out / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return ckpt


def _entry(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def test_evaluate_entry_point_prints_one_json_line_per_sampler(trained_ckpt, tmp_path):
    res = _entry("diffusion_lab.evaluate", f"ckpt_path={trained_ckpt}", f"hydra.run.dir={tmp_path}", "evaluation.n=16",
                 "evaluation.progress=false")
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [json.loads(x) for x in res.stdout.strip().splitlines()]  # stdout holds only the JSON lines
    assert len(lines) == 1
    row = lines[0]
    assert row["sampler"] == "dpm_pp_2m_10" and row["kind"] == "ODE" and row["nfe"] == 10
    assert {"seconds", "fid", "kid", "is"} <= set(row)
    assert (tmp_path / "eval" / "table.csv").is_file() and (tmp_path / "samples" / "dpm_pp_2m_10").is_dir()


def test_evaluate_sweeps_samplers_over_one_checkpoint(trained_ckpt, tmp_path):
    res = _entry("diffusion_lab.evaluate", "-m", f"ckpt_path={trained_ckpt}", f"hydra.sweep.dir={tmp_path}",
                 "evaluation.n=8", "evaluation.progress=false", "sampler=ddim,heun,ddpm")
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [json.loads(x) for x in res.stdout.strip().splitlines()]
    assert [(r["sampler"], r["kind"], r["nfe"]) for r in lines] == [("ddim_50", "ODE", 50), ("heun_18", "ODE", 35),
                                                                     ("ddpm_100", "SDE", 100)]
    assert all("fid" in r and r["nfe"] > 0 for r in lines)


def test_evaluate_without_a_checkpoint_says_so(tmp_path):
    res = _entry("diffusion_lab.evaluate", f"ckpt_path={tmp_path}/missing.ckpt", f"hydra.run.dir={tmp_path}")
    assert res.returncode != 0 and "missing.ckpt does not exist" in res.stderr and res.stdout == ""


def test_sample_entry_point_writes_grid_and_npz(trained_ckpt, tmp_path):
    res = _entry("diffusion_lab.sample", f"ckpt_path={trained_ckpt}", f"hydra.run.dir={tmp_path}", "sampler=ddim",
                 "sampler.steps=3", "n=10")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["sampler"] == "ddim_3" and summary["nfe"] == 3
    data = np.load(tmp_path / "ddim_3.npz")
    assert data["x"].shape == (10, 1, 8, 8) and data["uint8"].shape == (10, 8, 8, 1) and data["uint8"].dtype == np.uint8
    assert (tmp_path / "ddim_3.png").is_file()
    # seed 0 is the evaluation's rank-0 noise: the same samples as generate_samples(seed=0)
    from diffusion_lab.sample import load_trained

    trained = load_trained(trained_ckpt)
    again = generate_samples(trained["module"], Sampler("ddim", steps=3), 10, seed=0, progress=False)
    np.testing.assert_allclose(data["x"], again.x.numpy(), rtol=1e-5, atol=1e-5)  # other process, other threads


# ------------------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_ddp_two_ranks_fid_equals_one_rank_fid_of_the_same_samples(tmp_path):
    """2 CPU processes (gloo): each rank generates its share from seed + rank; the FID they compute
    together equals the FID of the union of their samples computed in one process."""
    from diffusion_lab.data import DigitsDataModule
    from diffusion_lab.metrics import ImageMetrics, extract_features, load_or_train_classifier, real_features
    from diffusion_lab.sample import load_trained

    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "diffusion_lab.train", f"hydra.run.dir={tmp_path}", "trainer.accelerator=cpu",
           "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
           "trainer.num_sanity_val_steps=0", "evaluation.n=300", "evaluation.save_samples=true",
           "evaluation.progress=false", "callbacks.progress.refresh_rate=0"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    label = "dpm_pp_2m_10"
    (row,) = list(csv.DictReader(open(tmp_path / "eval" / "table.csv")))
    fid_ddp, kid_ddp = float(row["fid"]), float(row["kid"])
    parts = [np.load(tmp_path / "eval" / "samples" / label / f"epoch_0000_rank{r}.npz") for r in (0, 1)]
    x0, x1 = (torch.from_numpy(p["x"]) for p in parts)
    assert len(x0) == len(x1) == 150 and int(parts[1]["seed"]) == 1
    assert not torch.isclose(x0, x1).all(dim=(1, 2, 3)).any()  # no duplicated sample across ranks
    # one process, the same samples, the same feature network and real statistics (from the cache)
    dm = DigitsDataModule()
    net = load_or_train_classifier(dm, cache_dir=CACHE, progress=False, widths=[32, 64, 128], feature_dim=128, epochs=15)
    real = real_features(net, dm, "train", 300, cache_dir=CACHE, progress=False)
    fake = [extract_features(net, x) for x in (x0, x1)]  # in the ranks' batch shapes (float32 convs vary with them)

    def one_process(real_chunks):
        m = ImageMetrics(["fid", "kid"], net.num_features, n_fake=300, n_real=len(real))
        for r in real_chunks:
            m.update_real(r)
        for f, lg in fake:
            m.update_fake(f, lg)
        return m.compute()

    # fed in the ranks' pieces: the synchronised sums are the same additions, so the values are identical
    same = one_process(torch.tensor_split(real, 2))
    assert fid_ddp == same["fid"] and kid_ddp == same["kid"]
    # all real features in one update: float64 round-off of the moments (amplified by the matrix square root)
    one = one_process([real])
    assert fid_ddp == pytest.approx(one["fid"], rel=1e-8)
    assert kid_ddp == pytest.approx(one["kid"], rel=1e-9, abs=1e-12)
    print(f"DDP FID (2 ranks) {fid_ddp!r} vs one process {one['fid']!r}")
    # rank 1's share is what one process draws from seed 1 (ODE sampler, the final weights)
    trained = load_trained(tmp_path / "checkpoints" / "last.ckpt")
    again = generate_samples(trained["module"], Sampler("dpm_solver_pp_2m", steps=10, grid="lambda"), 150, seed=1,
                             progress=False)
    torch.testing.assert_close(again.x, x1, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_multirun_jobs_each_finish_their_own_wandb_run_in_one_group(tmp_path, monkeypatch):
    """`-m` with logger=wandb (offline): every job opens and finishes its own run; the sweep's runs share
    a group."""
    import wandb
    import wandb.sdk.wandb_run as wandb_run

    from diffusion_lab import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    inits: list[dict] = []
    finished: list[str] = []
    orig_init, orig_finish = wandb.init, wandb_run.Run.finish

    def init_spy(*a, **k):
        inits.append(dict(k))
        return orig_init(*a, **k)

    def finish_spy(self, *a, **k):
        finished.append(self.id)
        return orig_finish(self, *a, **k)

    monkeypatch.setattr(wandb, "init", init_spy)
    monkeypatch.setattr(wandb_run.Run, "finish", finish_spy)
    monkeypatch.setattr(sys, "argv", ["train", "-m", f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=${hydra.job.num}",
                                      "logger=wandb", "optimizer.lr=1e-3,2e-3",
                                      *TINY_TRAIN, "trainer.max_epochs=1", "evaluation.n=8", "evaluation.progress=false"])
    train.main()
    assert len(inits) == 2 and len(set(finished)) == 2
    groups = {k["group"] for k in inits}
    assert len(groups) == 1 and None not in groups  # one group: the sweep
    assert all("digits" in k["tags"] and k["job_type"] == "train" for k in inits)
    assert len(list(tmp_path.glob("*/wandb/offline-run-*"))) == 2
