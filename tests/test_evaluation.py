"""The evaluation and the entry points: the selected sampler (and the evaluation's extra ones) from the
same seeded noise, per-rank shares, pictures and the comparison table, runs logging several samplers
to CSV and to an offline W&B run (spied on), `evaluate` / `sample` on a checkpoint (in-process), and
FID under 2-process DDP (gloo) equal to the FID of the same samples on one process."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import CONF, FAST_TRAIN, REPO, SMALL_UNET
from diffusion_lab.errors import ConfigError
from diffusion_lab.evaluation import Evaluator, generate_samples, rank_share
from diffusion_lab.samplers import Sampler

CACHE = os.environ["DIFFUSION_LAB_CACHE"]
TINY_TRAIN = [*FAST_TRAIN, "trainer.max_epochs=2", *SMALL_UNET]
# evaluation=compare made cheap: the selected sampler (DDIM, 2 steps) and the three comparison samplers
COMPARE = ["sampler=ddim", "sampler.steps=2", "evaluation=compare", "evaluation.every_n_epochs=1", "evaluation.n=16",
           "evaluation.grid_n=16", "evaluation.samplers.sde_em.steps=6", "evaluation.samplers.ode_heun.steps=3",
           "evaluation.samplers.dpm_pp_2m.steps=4", "evaluation.progress=false"]
LABELS = ["ddim_2", "sde_em_6", "ode_heun_3", "dpm_pp_2m_4"]


def _three_samplers() -> dict:
    return {"ode": Sampler("ddim", steps=4, label="ode_ddim_4"),
            "sde": Sampler("sde_euler_maruyama", steps=4, label="sde_em_4"),
            "heun": Sampler("heun", steps=3, grid="karras", label="ode_heun_3")}


def _evaluate(evaluator: Evaluator, parts, module, out, epoch=0, step=0, rank=0, world=1, use_ema=True):
    evaluator.prepare(parts.datamodule, parts.data_shape, module.device, rank=rank)
    with module.sampling(use_ema) as den:
        return evaluator.evaluate(den, epoch, step, out, rank=rank, world=world)


def test_rank_shares_cover_n_exactly():
    assert [rank_share(10, r, 3) for r in range(3)] == [4, 3, 3]
    assert sum(rank_share(257, r, 4) for r in range(4)) == 257


def test_selected_sampler_comes_first_and_extras_beside_it():
    ev = Evaluator(samplers=_three_samplers(), selected=Sampler("ddpm", steps=5), metrics=[], progress=False)
    assert [s.label for s in ev.samplers] == ["ddpm_5", "ode_ddim_4", "sde_em_4", "ode_heun_3"]
    # an extra with the selected sampler's label is the same sampler: evaluated once
    same = Evaluator(samplers={"a": Sampler("ddim", steps=4, label="ode_ddim_4")}, selected=Sampler("ddim", steps=4,
                     label="ode_ddim_4"), metrics=[])
    assert [s.label for s in same.samplers] == ["ode_ddim_4"]


def test_every_sampler_starts_from_the_same_noise_and_ranks_do_not_share_it(build_run, tmp_path, monkeypatch):
    _, parts, module = build_run(SMALL_UNET)
    seen: list[tuple[str, torch.Tensor]] = []
    original = Sampler.__call__

    def spy(self, denoiser, shape=None, *, x_T=None, **kw):
        seen.append((self.label, x_T.clone()))
        return original(self, denoiser, shape, x_T=x_T, **kw)

    monkeypatch.setattr(Sampler, "__call__", spy)
    ev = Evaluator(samplers=_three_samplers(), n=12, grid_n=9, batch_size=8, metrics=["fid", "kid"],
                   cache_dir=str(tmp_path / "cache"), classifier={"epochs": 1}, progress=False)
    rows = _evaluate(ev, parts, module, tmp_path, epoch=3, step=40)
    assert [(r["sampler"], r["kind"], r["epoch"], r["step"]) for r in rows] == [
        ("ode_ddim_4", "ODE", 3, 40), ("sde_em_4", "SDE", 3, 40), ("ode_heun_3", "ODE", 3, 40)]
    assert rows[0]["nfe"] == 4 and rows[2]["nfe"] == 5  # Heun: 2 steps of 2 calls + a last Euler step
    assert all(r["fid"] >= 0 and "kid" in r and r["seconds"] > 0 for r in rows)
    assert "kid_std" not in rows[0]  # 12 samples: one KID subset, no spread to report
    # two batches (8 + 4) per sampler; batch b's initial noise is identical for all three samplers
    assert [lb for lb, _ in seen] == ["ode_ddim_4"] * 2 + ["sde_em_4"] * 2 + ["ode_heun_3"] * 2
    for b in range(2):
        assert torch.equal(seen[b][1], seen[2 + b][1]) and torch.equal(seen[b][1], seen[4 + b][1])
    for label in ("ode_ddim_4", "sde_em_4", "ode_heun_3"):  # the pictures line up: one per sampler, same name
        assert (tmp_path / "samples" / label / "epoch_0003.png").is_file()
    assert [r[:2] for r in ev.table.data()] == [[3, 40]] * 3
    # rank 1 of 2 draws its own share (6) from seed + 1: no sample shared with rank 0
    seen.clear()
    grids_only = Evaluator(samplers=[_three_samplers()["ode"]], n=12, metrics=[], progress=False)
    (row,) = _evaluate(grids_only, parts, module, tmp_path / "r1", epoch=3, rank=1, world=2)
    assert row["nfe"] == 4 and "fid" not in row
    rank1 = seen[0][1]
    assert rank1.shape[0] == 6
    rank0 = torch.Generator().manual_seed(0)
    assert not torch.isclose(module.schedule.prior_sample((6, 1, 8, 8), generator=rank0, dtype=torch.float64),
                             rank1.cpu()).any()
    assert not (tmp_path / "r1" / "samples").exists()  # only rank 0 writes pictures


def test_evaluation_samples_with_the_ema_weights_not_the_raw_ones(build_run, tmp_path):
    """use_ema=true must sample the EMA network: here the EMA and the raw weights differ, and the evaluation's
    samples are exactly the EMA network's."""
    _, parts, module = build_run([*SMALL_UNET, "model.dropout=0.3"])
    with torch.no_grad():
        for p in module.net.parameters():
            p.add_(0.05 * torch.randn_like(p))  # raw weights move on; the EMA copy stays where it was
    sampler = Sampler("ddim", steps=3)
    ev = Evaluator(selected=sampler, n=6, metrics=[], progress=False, save_samples=True)
    _evaluate(ev, parts, module, tmp_path)
    got = np.load(tmp_path / "eval" / "samples" / "ddim_3" / "epoch_0000_rank0.npz")["x"]
    from diffusion_lab.denoiser import Denoiser

    for net, expect_equal in ((module.ema.net, True), (module.net, False)):
        net.eval()
        res = generate_samples(Denoiser(net, parts.schedule, parts.parameterization), sampler, 6, parts.data_shape,
                               seed=0, progress=False)
        assert np.allclose(got, res.x.numpy(), atol=1e-6) == expect_equal
    # the raw weights sample in eval mode (no dropout): two evaluations with use_ema=false agree
    raw = Evaluator(selected=sampler, n=6, metrics=[], progress=False, save_samples=True)
    module.net.train()
    a = _evaluate(raw, parts, module, tmp_path / "a", use_ema=False)
    b = _evaluate(raw, parts, module, tmp_path / "b", use_ema=False)
    assert module.net.training  # restored after sampling
    xa = np.load(tmp_path / "a" / "eval" / "samples" / "ddim_3" / "epoch_0000_rank0.npz")["x"]
    xb = np.load(tmp_path / "b" / "eval" / "samples" / "ddim_3" / "epoch_0000_rank0.npz")["x"]
    assert a[0]["nfe"] == b[0]["nfe"] == 3 and np.array_equal(xa, xb)


def test_generate_samples_is_reproducible_from_its_seed(build_run):
    _, parts, module = build_run(SMALL_UNET)
    s = Sampler("ddim", steps=3)
    with module.sampling() as den:
        a, b, c = (generate_samples(den, s, 5, parts.data_shape, seed=seed, batch_size=2, progress=False)
                   for seed in (7, 7, 8))
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x) and a.nfe == 3


def test_inception_features_through_the_evaluation_config(build_run, tmp_path):
    """features=inception with a local weights file (random weights of the real architecture)."""
    from hydra.utils import instantiate

    from diffusion_lab.metrics import write_random_inception_weights

    weights = write_random_inception_weights(tmp_path / "inception.pth")
    cfg, parts, module = build_run([*SMALL_UNET, "evaluation.features=inception", f"evaluation.inception_weights={weights}",
                                    "evaluation.n=4", f"evaluation.cache_dir={tmp_path / 'cache'}",
                                    "evaluation.progress=false", "sampler.steps=2"])
    (row,) = _evaluate(parts.evaluator, parts, module, tmp_path)
    assert parts.evaluator.suite.feature_net.num_features == 2048 and {"fid", "kid", "is"} <= set(row)
    assert len(list((tmp_path / "cache" / "real_features").glob("*_train_inception-*_4.pt"))) == 1
    missing = instantiate(cfg.evaluation, inception_weights=str(tmp_path / "none.pth"))
    with pytest.raises(FileNotFoundError, match="download https://.*evaluation.inception_weights="):
        missing.prepare(parts.datamodule, parts.data_shape)


def test_low_dimensional_data_gets_sliced_wasserstein_mmd_and_exact_nll(build_run, tmp_path):
    _, parts, module = build_run(["dataset=gmm", "model=mlp", "dataset.n_train=500", "dataset.n_val=300"])
    ev = Evaluator(selected=Sampler("dpm_solver_pp_2m", steps=4, grid="lambda", label="dpm_4"), n=64, progress=False)
    (row,) = _evaluate(ev, parts, module, tmp_path)
    assert {"swd", "w2", "mmd", "nll", "nll_data"} <= set(row) and row["kind"] == "ODE"
    assert (tmp_path / "samples" / "dpm_4" / "epoch_0000.png").is_file()  # a scatter plot for 2-D data


def test_bad_evaluation_settings_fail_with_one_sentence(build_run):
    with pytest.raises(ValueError, match=r"evaluation.n=0 must be an integer ≥ 1"):
        Evaluator(n=0)
    with pytest.raises(ValueError, match="two samplers labelled 'x'"):
        Evaluator(samplers=[Sampler("ddim", label="x"), Sampler("heun", label="x")])
    with pytest.raises(ValueError, match="evaluation.features='vgg' is not a feature network"):
        Evaluator(features="vgg")
    with pytest.raises(ValueError, match="evaluation.metrics='fid'"):
        Evaluator(metrics="fid")
    with pytest.raises(ValueError, match="evaluation.out_dir is not an evaluation setting"):
        Evaluator(out_dir="x")
    with pytest.raises(ValueError, match="each entry must be a sampler config"):
        Evaluator(samplers=[42])
    with pytest.raises(ConfigError, match="'swd', which does not apply to images"):
        build_run(["evaluation.metrics=[swd]"])
    with pytest.raises(ConfigError, match="evaluation.n=100000 is more generated vectors"):
        build_run(["dataset=two_moons", "model=mlp", "evaluation.n=100000"])


def _metrics_rows(run_dir):
    return list(csv.DictReader(open(run_dir / "csv" / "version_0" / "metrics.csv")))


def test_training_with_four_samplers_logs_curves_nfe_grids_and_table_to_csv(compose_cfg, tmp_path):
    from diffusion_lab.train import run

    run(compose_cfg([*TINY_TRAIN, *COMPARE, "logger=csv"]))
    rows = _metrics_rows(tmp_path)
    for label in LABELS:
        fids = [float(r[f"eval/fid/{label}"]) for r in rows if r.get(f"eval/fid/{label}")]
        nfes = [float(r[f"eval/nfe/{label}"]) for r in rows if r.get(f"eval/nfe/{label}")]
        assert len(fids) == 2 and len(nfes) == 2, label  # one point per epoch: a curve per sampler
        assert all(r.get(f"eval/seconds/{label}") for r in rows if r.get(f"eval/fid/{label}"))
        assert sorted(p.name for p in (tmp_path / "samples" / label).glob("*.png")) == ["epoch_0000.png", "epoch_0001.png"]
    assert {float(r["eval/nfe/ode_heun_3"]) for r in rows if r.get("eval/nfe/ode_heun_3")} == {5.0}
    table = list(csv.DictReader(open(tmp_path / "eval" / "table.csv")))
    assert [(t["epoch"], t["step"], t["sampler"], t["kind"]) for t in table] == [
        (str(e), str(2 * (e + 1)), lb, "SDE" if lb.startswith("sde") else "ODE") for e in (0, 1) for lb in LABELS]
    assert {"nfe", "fid", "kid", "is", "seconds"} <= set(table[0])


@pytest.mark.parametrize("stop", ["trainer.max_steps=3", "trainer.max_time=00:00:00:01"])
def test_a_run_stopped_by_steps_or_time_evaluates_at_the_end(compose_cfg, tmp_path, stop):
    """The end of training is evaluated whatever stopped it (here mid-epoch, with every_n_epochs far away)."""
    from diffusion_lab.train import run

    out = run(compose_cfg([*FAST_TRAIN, *SMALL_UNET, "trainer.max_epochs=1000", "trainer.limit_train_batches=4",
                           stop, "sampler.steps=2", "evaluation.n=8", "evaluation.every_n_epochs=500"]))
    step = out["trainer"].global_step
    (row,) = list(csv.DictReader(open(tmp_path / "eval" / "table.csv")))
    assert row["sampler"] == "unipc_2_2" and int(row["step"]) == step
    assert int(row["epoch"]) == (step - 1) // 4  # the epoch the last step belongs to
    assert (tmp_path / "samples" / "unipc_2_2" / f"epoch_{int(row['epoch']):04d}.png").is_file()
    if "max_steps" in stop:
        assert step == 3


def test_wandb_offline_run_logs_four_samplers_side_by_side(compose_cfg, tmp_path, monkeypatch):
    import wandb
    import wandb.sdk.wandb_config as wandb_config
    import wandb.sdk.wandb_run as wandb_run

    from diffusion_lab.train import run

    monkeypatch.setenv("WANDB_MODE", "offline")
    logged: list[dict] = []
    defined: list[tuple] = []
    finished: list[bool] = []
    config_updates: list[dict] = []
    orig_log, orig_define, orig_finish = wandb_run.Run.log, wandb_run.Run.define_metric, wandb_run.Run.finish
    orig_update = wandb_config.Config.update

    def log_spy(self, data, *a, **k):
        logged.append(dict(data))
        return orig_log(self, data, *a, **k)

    def define_spy(self, name, *a, **k):
        defined.append((name, k.get("summary")))
        return orig_define(self, name, *a, **k)

    def finish_spy(self, *a, **k):
        finished.append(True)
        return orig_finish(self, *a, **k)

    def update_spy(self, d, *a, **k):
        config_updates.append(dict(d))
        return orig_update(self, d, *a, **k)

    monkeypatch.setattr(wandb_run.Run, "log", log_spy)
    monkeypatch.setattr(wandb_run.Run, "define_metric", define_spy)
    monkeypatch.setattr(wandb_run.Run, "finish", finish_spy)
    monkeypatch.setattr(wandb_config.Config, "update", update_spy)
    run(compose_cfg([*TINY_TRAIN, *COMPARE, "logger=wandb", "logger.group=g1", "logger.tags=[t1]"]))
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
    assert len(tables[-1].data) == 8 and tables[-1].columns[:5] == ["epoch", "step", "sampler", "kind", "nfe"]
    assert "fid" in tables[-1].columns
    # the resolved config went to wandb.config as plain containers
    (cfg_update,) = [u for u in config_updates if "config" in u]
    assert cfg_update["config"]["schedule"]["_target_"].endswith("VPLinearSchedule")
    assert cfg_update["config"]["evaluation"]["samplers"]["ode_heun"]["label"] == "ode_heun_3"  # resolved
    assert cfg_update["config"]["sampler"]["name"] == "ddim"

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
def trained(tmp_path_factory):
    """A tiny training run (1 epoch of 2 batches) with its final evaluation: (run dir, checkpoint)."""
    from hydra import compose, initialize_config_dir

    from diffusion_lab.train import run

    out = tmp_path_factory.mktemp("run")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"run_dir={out}", "name=t", *FAST_TRAIN, *SMALL_UNET,
                                                      "sampler.steps=4", "evaluation.n=16", "logger=csv"])
    run(cfg)
    ckpt = out / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return out, ckpt


def _entry_cfg(name: str, out, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=[f"out_dir={out}", *overrides])


def test_evaluate_reproduces_the_final_evaluation_of_training(trained, tmp_path, capsys):
    from diffusion_lab.evaluate import run

    run_dir, ckpt = trained
    rows = run(_entry_cfg("evaluate", tmp_path, [f"ckpt_path={ckpt}", "evaluation.n=16", "evaluation.progress=false",
                                                 "device=cpu"]))
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]  # stdout: only the JSON lines
    (train_row,) = list(csv.DictReader(open(run_dir / "eval" / "table.csv")))
    assert len(lines) == len(rows) == 1
    row = lines[0]
    assert row["sampler"] == train_row["sampler"] == "unipc_2_4" and row["kind"] == "ODE" and row["nfe"] == 4
    # the same label (epoch the step belongs to, step) and the same numbers as training's final evaluation
    assert (row["epoch"], row["step"]) == (int(train_row["epoch"]), int(train_row["step"])) == (0, 2)
    assert row["fid"] == pytest.approx(float(train_row["fid"]), rel=1e-6)
    assert (tmp_path / "eval" / "table.csv").is_file() and (tmp_path / "samples" / "unipc_2_4").is_dir()


def test_evaluate_another_sampler_beside_the_comparison(trained, tmp_path, capsys):
    from diffusion_lab.evaluate import run

    _, ckpt = trained
    run(_entry_cfg("evaluate", tmp_path, [f"ckpt_path={ckpt}", "sampler=heun", "sampler.steps=3", "evaluation=compare",
                                          "evaluation.n=8", "evaluation.progress=false",
                                          "evaluation.samplers.sde_em.steps=4", "evaluation.samplers.ode_heun.steps=2"]))
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [(r["sampler"], r["kind"], r["nfe"]) for r in lines] == [
        ("heun_3", "ODE", 5), ("sde_em_4", "SDE", 4), ("ode_heun_2", "ODE", 3), ("dpm_pp_2m_10", "ODE", 10)]
    assert all("fid" in r for r in lines)


def test_entry_points_refuse_bad_checkpoints_with_one_sentence(tmp_path):
    from diffusion_lab.errors import CheckpointError
    from diffusion_lab.evaluate import run as evaluate
    from diffusion_lab.sample import run as sample

    with pytest.raises(CheckpointError, match="missing.ckpt does not exist"):
        evaluate(_entry_cfg("evaluate", tmp_path, [f"ckpt_path={tmp_path}/missing.ckpt"]))
    with pytest.raises(CheckpointError, match="is a directory; give a checkpoint file inside it"):
        sample(_entry_cfg("sample", tmp_path, [f"ckpt_path={tmp_path}"]))
    with pytest.raises(CheckpointError, match="ckpt_path is not set"):
        sample(_entry_cfg("sample", tmp_path, []))


def test_sample_entry_point_writes_grid_and_npz(trained, tmp_path, capsys):
    from diffusion_lab.runs import load_run
    from diffusion_lab.sample import run

    _, ckpt = trained
    cfg = _entry_cfg("sample", tmp_path, [f"ckpt_path={ckpt}", "sampler=ddim", "sampler.steps=3", "n=10", "progress=false"])
    run(cfg)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["sampler"] == "ddim_3" and summary["nfe"] == 3 and summary["step"] == 2
    data = np.load(tmp_path / "ddim_3.npz")
    assert data["x"].shape == (10, 1, 8, 8) and data["uint8"].shape == (10, 8, 8, 1) and data["uint8"].dtype == np.uint8
    assert (tmp_path / "ddim_3.png").is_file()
    # seed 0 is the evaluation's rank-0 noise: the same samples as generate_samples(seed=0)
    loaded = load_run(ckpt, sampler=cfg.sampler)
    assert loaded.parts.sampler.label == "ddim_3"
    with loaded.module.sampling() as den:
        again = generate_samples(den, loaded.parts.sampler, 10, (1, 8, 8), seed=0, progress=False)
    np.testing.assert_allclose(data["x"], again.x.numpy(), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_ddp_two_ranks_fid_equals_one_rank_fid_of_the_same_samples(tmp_path):
    """2 CPU processes (gloo): each rank generates its share from seed + rank; the FID they compute
    together equals the FID of the union of their samples computed in one process."""
    from diffusion_lab.data import DigitsDataModule
    from diffusion_lab.metrics import ImageMetrics, extract_features, load_or_train_classifier, real_features
    from diffusion_lab.runs import load_run

    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "diffusion_lab.train", f"hydra.run.dir={tmp_path}", "trainer.accelerator=cpu",
           "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
           "trainer.num_sanity_val_steps=0", "sampler.steps=10", "evaluation.n=300", "evaluation.save_samples=true",
           "evaluation.progress=false", "callbacks.progress.refresh_rate=0"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    label = "unipc_2_10"
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
    loaded = load_run(tmp_path / "checkpoints" / "last.ckpt")
    with loaded.module.sampling() as den:
        again = generate_samples(den, loaded.parts.sampler, 150, (1, 8, 8), seed=1,
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
                                      *TINY_TRAIN, "trainer.max_epochs=1", "evaluation.n=8", "sampler.steps=2"])
    train.main()
    assert len(inits) == 2 and len(set(finished)) == 2
    groups = {k["group"] for k in inits}
    assert len(groups) == 1 and None not in groups  # one group: the sweep
    assert all("digits" in k["tags"] and k["job_type"] == "train" for k in inits)
    assert len(list(tmp_path.glob("*/wandb/offline-run-*"))) == 2
