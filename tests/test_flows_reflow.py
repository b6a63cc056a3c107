"""Reflow: pairs on disk (resumable, sharded, reproducible from the manifest's seeds), the pairs dataset
whose noise reaches the rectified-flow loss, k-step distillation times, and the chain train → pairs →
reflow through the run layer."""

from __future__ import annotations


import pytest
import torch

from conftest import CONF, FAST_TRAIN
from diffusion_lab.errors import ConfigError, DataError

FLOW = ["experiment=two_moons_flow", "model.hidden_dim=32", "model.num_layers=1", "evaluation.at_end=false",
        "evaluation.every_n_epochs=1000"]
SMALL_DATA = ["dataset.n_train=2000", "dataset.n_val=200"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny 2-D rectified flow trained for a few steps (its checkpoint path)."""
    from hydra import compose, initialize_config_dir

    from diffusion_lab.train import run

    d = tmp_path_factory.mktemp("teacher")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"run_dir={d}", "name=teacher", *FAST_TRAIN, *FLOW,
                                                      *SMALL_DATA, "trainer.limit_train_batches=5"])
    run(cfg)
    return d / "checkpoints" / "last.ckpt"


def pairs_cfg(ckpt, out, *extra):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="reflow_pairs", overrides=[f"ckpt_path={ckpt}", f"out={out}", "n=250",
                                                              "chunk_size=100", "sampler=rk4", "sampler.steps=4",
                                                              "device=cpu", "progress=false", *extra])


def test_pairs_resume_skips_done_chunks_and_gives_identical_pairs(teacher, tmp_path):
    from diffusion_lab.flows.pairs import chunk_path, load_pairs
    from diffusion_lab.reflow_pairs import run

    out = tmp_path / "pairs"
    first = run(pairs_cfg(teacher, out))
    assert (first["chunks_drawn"], first["chunks_skipped"], first.get("complete")) == (3, 0, True)
    noise, sample, manifest = load_pairs(out)
    assert noise.shape == sample.shape == (250, 2)
    assert manifest["sampler"]["name"] == "rk4" and manifest["sampler"]["steps"] == 4
    nfes = [c["nfe"] for c in manifest["chunks"]]
    assert len(set(nfes)) == 1 and nfes[0] > 4 and manifest["nfe_per_sample"] == nfes[0]
    chunk_path(out, 1).unlink()
    kept = {c: chunk_path(out, c).stat().st_mtime_ns for c in (0, 2)}
    again = run(pairs_cfg(teacher, out))
    assert (again["chunks_drawn"], again["chunks_skipped"]) == (1, 2)
    assert {c: chunk_path(out, c).stat().st_mtime_ns for c in (0, 2)} == kept  # not rewritten
    noise2, sample2, _ = load_pairs(out)
    assert torch.equal(noise, noise2) and torch.equal(sample, sample2)
    # sharding over two ranks draws the same chunks
    for r in (0, 1):
        run(pairs_cfg(teacher, tmp_path / "sharded", f"rank={r}", "world_size=2"))
    noise3, sample3, _ = load_pairs(tmp_path / "sharded")
    assert torch.equal(noise, noise3) and torch.equal(sample, sample3)
    # another sampler into the same folder is refused, and so is a stochastic sampler
    with pytest.raises(ConfigError, match="other settings"):
        run(pairs_cfg(teacher, out, "sampler.steps=5"))
    with pytest.raises(ConfigError, match="stochastic"):
        run(pairs_cfg(teacher, tmp_path / "sde", "sampler=ddpm"))


def test_pairs_regenerated_from_the_recorded_seed_match(teacher, tmp_path):
    from diffusion_lab.flows.pairs import chunk_noise, load_pairs
    from diffusion_lab.reflow_pairs import run
    from diffusion_lab.runs import load_run
    from diffusion_lab.samplers import Sampler

    out = tmp_path / "pairs"
    run(pairs_cfg(teacher, out))
    noise, sample, manifest = load_pairs(out)
    rec = manifest["chunks"][2]
    g = torch.Generator().manual_seed(rec["seed"])  # the seed the manifest recorded for chunk 2
    z = torch.randn((rec["size"], *manifest["shape"]), generator=g, dtype=torch.float64)
    torch.testing.assert_close(z.float(), noise[200:])
    torch.testing.assert_close(chunk_noise(manifest["seed"], 2, rec["size"], manifest["shape"]), z)
    loaded = load_run(manifest["ckpt_path"])
    sampler = Sampler(**{k: manifest["sampler"][k] for k in ("name", "steps", "grid", "visit_t_min")},
                      **manifest["sampler"]["options"])
    with loaded.module.sampling() as den:
        res = sampler(den, x_T=z * den.schedule.prior_std(), progress=False)
    torch.testing.assert_close(res.x.float(), sample[200:])
    assert res.nfe == rec["nfe"]


def test_pairs_noise_reaches_the_loss_with_the_index_coupling_kept():
    from diffusion_lab.denoiser import Denoiser
    from diffusion_lab.losses import FixedTime, RectifiedFlowLoss
    from diffusion_lab.nets import MLP
    from diffusion_lab.schedules import RectifiedFlowSchedule

    torch.manual_seed(0)
    model = Denoiser(MLP(in_dim=2, out_dim=2, hidden_dim=16, num_layers=1, emb_dim=8), RectifiedFlowSchedule(), "velocity")
    x0, z = torch.randn(64, 2), torch.randn(64, 2)
    loss = RectifiedFlowLoss(time_sampler=FixedTime(0.3))
    got = loss(model, x0, noise=z, generator=torch.Generator().manual_seed(5)).per_sample
    with torch.no_grad():
        pred = model.output(0.7 * x0 + 0.3 * z, torch.full((64,), 0.3)).prediction
    want = ((pred - (z - x0)) ** 2).mean(1)
    torch.testing.assert_close(got.detach(), want)
    shuffled = loss(model, x0, noise=z.flip(0), generator=torch.Generator().manual_seed(5)).per_sample
    assert not torch.allclose(shuffled, got)  # pair i goes with noise i
    with pytest.raises(ValueError, match="coupling=independent"):
        RectifiedFlowLoss(coupling="exact_ot")(model, x0, noise=z)


def test_k_step_times_are_the_nodes_of_the_k_step_euler_sampler():
    from diffusion_lab.flows.distill import KStepTime
    from diffusion_lab.samplers import Sampler
    from diffusion_lab.schedules import RectifiedFlowSchedule

    sch = RectifiedFlowSchedule()
    for k in (1, 2, 4):
        t, w = KStepTime(k).sample(4000, sch, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        grid = Sampler("euler", steps=k, grid="uniform", visit_t_min=False, variable="t", terminal="denoise").time_grid(sch)
        nodes = grid[:-1]
        assert set(t.tolist()) == set(nodes.tolist())
        counts = torch.stack([(t == n).sum() for n in nodes]).double() / 4000
        assert (counts - 1 / k).abs().max() < 0.03
        assert torch.all(w == 1)
    # Liu et al.'s {0, 1/k, ..., (k−1)/k} (noise at 0) is ours {1, ..., 1/k}, with 1 clipped to t_max
    torch.testing.assert_close(grid[:-1], torch.tensor([0.999, 0.7495, 0.5, 0.2505], dtype=torch.float64))


def test_reflow_run_trains_on_pairs_from_the_teacher(teacher, tmp_path, compose_cfg):
    from diffusion_lab.data.pairs import PairsDataModule
    from diffusion_lab.reflow_pairs import run as make_pairs
    from diffusion_lab.train import run

    out = tmp_path / "pairs"
    make_pairs(pairs_cfg(teacher, out, "n=600", "chunk_size=300"))
    res = run(compose_cfg([*FAST_TRAIN, *FLOW, "dataset=pairs", f"dataset.path={out}", "dataset.batch_size=64",
                           f"ckpt_path={teacher}", "finetune=true", "trainer.limit_train_batches=4"]))
    dm = res["parts"].datamodule
    assert isinstance(dm, PairsDataModule) and dm.reference.name == "two_moons"
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"x0", "noise"} and batch["x0"].shape == (64, 2)
    assert res["trainer"].global_step == 4
    module = res["module"]
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    given = module.batch_loss(batch, g())
    with torch.no_grad():  # the module hands the batch's noise to the loss (pair i with noise i)
        want = module.loss(module.denoiser(use_ema=False), batch["x0"], generator=g(), noise=batch["noise"]).loss
        fresh = module.loss(module.denoiser(use_ema=False), batch["x0"], generator=g()).loss
    torch.testing.assert_close(given, want)
    assert not torch.allclose(given, fresh)
    # validation data is the teacher's real data, not its samples
    torch.testing.assert_close(dm.sample_data(10, "val"), dm.reference.sample_data(10, "val"))
    # pairs of the 2-RF (trained on pairs): the reference is still the real data, not the first pairs
    make_pairs(pairs_cfg(tmp_path / "checkpoints" / "last.ckpt", tmp_path / "pairs2", "n=200", "chunk_size=200"))
    assert type(PairsDataModule(path=str(tmp_path / "pairs2")).evaluation_data).__name__ == "ToyDataModule"
    with pytest.raises(DataError, match="no manifest"):
        PairsDataModule(path=str(tmp_path / "nothing"))
    with pytest.raises(ConfigError, match="dataset.dim"):
        run(compose_cfg([*FAST_TRAIN, *FLOW, "dataset=pairs", f"dataset.path={out}", "dataset.dim=3"]))


def test_image_pairs_train_and_evaluate_against_the_real_digits(compose_cfg, tmp_path):
    import csv

    from omegaconf import OmegaConf

    from diffusion_lab.denoiser import Denoiser
    from diffusion_lab.flows.pairs import generate_pairs
    from diffusion_lab.samplers import Sampler
    from diffusion_lab.schedules import RectifiedFlowSchedule
    from diffusion_lab.train import run

    teacher = Denoiser(lambda x, label, **_: -x, RectifiedFlowSchedule(), "velocity")  # any field will do
    digits = OmegaConf.to_container(compose_cfg(["dataset=digits"]).dataset, resolve=True)
    generate_pairs(teacher, Sampler("euler", steps=2), tmp_path / "pairs", n=256, shape=(1, 8, 8), chunk_size=128,
                   progress=False, info={"dataset": digits})
    res = run(compose_cfg([*FAST_TRAIN, "experiment=digits_reflow_2", f"dataset.path={tmp_path / 'pairs'}",
                           "ckpt_path=null", "finetune=false", "model.ch=16", "model.num_res_blocks=1",
                           "dataset.batch_size=64", "evaluation.n=8"]))
    assert res["trainer"].global_step == 2
    rows = list(csv.DictReader(open(tmp_path / "eval" / "table.csv")))
    assert rows[0]["sampler"] == "euler_1" and all(float(r["fid"]) > 0 for r in rows)  # features of the real digits
    with pytest.raises(ConfigError, match="dataset.channels"):
        run(compose_cfg([*FAST_TRAIN, "experiment=digits_reflow_2", f"dataset.path={tmp_path / 'pairs'}",
                         "ckpt_path=null", "finetune=false", "dataset.channels=3"]))
