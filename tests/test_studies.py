"""Samplers × NFE studies: the NFE of a number of steps (against the network calls the denoiser counts, for
every registered sampler), the expansion of samplers over NFE budgets and tolerances, the evaluator's rows
(family, kind, counted NFE, same noise), the table read back from CSV, the quality-vs-NFE plot (SDE solid,
ODE dashed), the W&B study layout read back from W&B's own offline run files (group, one run per family
with kind and family in its config, ``nfe`` as the step metric of ``eval/*``, the table), the
``evaluation=sde_vs_ode`` config through ``python -m diffusion_lab.evaluate`` on a checkpoint, and the
small-scale paper twins (``conf/experiment/*_digits.yaml``) sharing their paper file's recipe."""

from __future__ import annotations

import glob
import json
import struct
from pathlib import Path

import pytest
import torch

from conftest import CONF, FAST_TRAIN, SMALL_UNET
from diffusion_lab.evaluation import EvalTable, Evaluator
from diffusion_lab.evaluation.nfe_sweep import expand, family_of, nfe_of_steps, steps_for_nfe
from diffusion_lab.evaluation.table import log_wandb_study
from diffusion_lab.oracles import GaussianMixture
from diffusion_lab.parameterization import Parameterization
from diffusion_lab.samplers import SAMPLERS, Denoiser, Sampler
from diffusion_lab.schedules import VPLinearSchedule


# ----------------------------------------------------------------------------------- NFE of steps
def _oracle_denoiser() -> Denoiser:
    schedule = VPLinearSchedule()
    p = Parameterization("eps")
    return Denoiser(GaussianMixture.random(2, 3).network(schedule, p), schedule, p)


@pytest.mark.parametrize("name", sorted(set(SAMPLERS) - {"dopri5"}))
def test_nfe_of_steps_is_the_number_of_network_calls_counted(name):
    den = _oracle_denoiser()
    options = [{}] + ([{"corrector_steps": 2}, {"predictor": "none", "corrector_steps": 3}] if name == "pc" else [])
    for opts in options:
        for steps in (1, 2, 3, 5):
            s = Sampler(name, steps=steps, **opts)
            res = s(den, (3, 2), generator=torch.Generator().manual_seed(0), progress=False)
            assert res.nfe == nfe_of_steps(s, steps), (name, opts, steps)


def test_steps_for_nfe_fit_the_budget_exactly_where_they_can():
    assert steps_for_nfe(Sampler("ddim"), 10) == 10
    assert [steps_for_nfe(Sampler("heun"), b) for b in (10, 20, 35)] == [5, 10, 18]  # 9, 19, 35 NFE (EDM: 18 → 35)
    assert [steps_for_nfe(Sampler("pc"), b) for b in (10, 11, 20)] == [5, 5, 10]
    assert steps_for_nfe(Sampler("rk4"), 10) == 3  # 4·2 + 1 = 9 NFE
    assert steps_for_nfe(Sampler("heun"), 1) == 1
    with pytest.raises(ValueError, match="not positive"):
        steps_for_nfe(Sampler("ddim"), 0)


def test_expand_labels_families_budgets_per_kind_and_tolerances():
    samplers = [Sampler("ddim", label="ddim"), Sampler("heun", steps=18), Sampler("pc", label="pc"),
                Sampler("dopri5", label="dopri5")]
    out = expand(samplers, {"ODE": [10, 20], "SDE": [10, 11, 50]}, tolerances=(1e-2, 1e-4))
    assert [(s.label, s.steps, family_of(s)) for s in out] == [
        ("ddim_10", 10, "ddim"), ("ddim_20", 20, "ddim"), ("heun_5", 5, "heun"), ("heun_10", 10, "heun"),
        ("pc_5", 5, "pc"), ("pc_25", 25, "pc"),  # budget 11 gives 5 steps again: evaluated once
        ("dopri5_tol1e-02", 50, "dopri5"), ("dopri5_tol1e-04", 50, "dopri5")]
    assert out[-1].options["rtol"] == out[-1].options["atol"] == 1e-4 and "rtol" not in samplers[3].options
    assert samplers[0].steps == 50 and samplers[0].label == "ddim"  # the configured samplers are left alone
    with pytest.raises(ValueError, match="no budgets for SDE samplers"):
        expand([Sampler("pc")], {"ODE": [10]})
    assert family_of(Sampler("ddim", steps=7, label="ddim_eta1_7")) == "ddim_eta1"


# ----------------------------------------------------------------------------------- the evaluator
def test_evaluator_sweeps_nfe_from_the_same_noise_with_family_and_kind(build_run, tmp_path, monkeypatch):
    _, parts, module = build_run(SMALL_UNET)
    seen: dict[str, torch.Tensor] = {}
    original = Sampler.__call__

    def spy(self, denoiser, shape=None, *, x_T=None, **kw):
        seen[self.label] = x_T.clone()
        return original(self, denoiser, shape, x_T=x_T, **kw)

    monkeypatch.setattr(Sampler, "__call__", spy)
    ev = Evaluator(samplers={"a": Sampler("ddim", label="ddim"), "b": Sampler("sde_euler_maruyama", label="em"),
                             "c": Sampler("heun", label="heun")},
                   selected=Sampler("unipc_2", steps=3), include_selected=False, nfe={"ODE": [3, 5], "SDE": [4]},
                   n=6, metrics=["fid"], cache_dir=str(tmp_path / "cache"), classifier={"epochs": 1}, progress=False)
    ev.prepare(parts.datamodule, parts.data_shape, module.device)
    with module.sampling(True) as den:
        rows = ev.evaluate(den, 0, 0, tmp_path)
    assert [(r["sampler"], r["family"], r["kind"], r["nfe"]) for r in rows] == [
        ("ddim_3", "ddim", "ODE", 3), ("ddim_5", "ddim", "ODE", 5), ("em_4", "em", "SDE", 4),
        ("heun_2", "heun", "ODE", 3), ("heun_3", "heun", "ODE", 5)]
    first = seen["ddim_3"]
    assert all(torch.equal(first, x) for x in seen.values())  # every sampler from the same x_T
    assert ev.table.columns()[:6] == ["epoch", "step", "sampler", "kind", "nfe", "family"]
    with pytest.raises(ValueError, match="include_selected=false and evaluation.samplers is empty"):
        Evaluator(selected=Sampler("ddim"), include_selected=False, metrics=[])


def test_table_round_trips_through_csv_and_groups_families_by_nfe(tmp_path):
    rows = [{"epoch": 0, "step": 5, "sampler": "heun_5", "kind": "ODE", "nfe": 9.0, "family": "heun", "fid": 3.5},
            {"epoch": 0, "step": 5, "sampler": "heun_2", "kind": "ODE", "nfe": 3.0, "family": "heun", "fid": 9.25},
            {"epoch": 0, "step": 5, "sampler": "pc_5", "kind": "SDE", "nfe": 10.0, "family": "pc", "fid": 7.0},
            {"epoch": 0, "step": 5, "sampler": "likelihood_ode", "kind": "likelihood", "nfe": 80.0, "bpd": 2.0}]
    table = EvalTable.read_csv(EvalTable(rows).write_csv(tmp_path / "t.csv"))
    assert table.rows[0] == rows[0] and table.rows[3]["bpd"] == 2.0 and "fid" not in table.rows[3]
    fams = table.families()
    assert list(fams) == ["heun", "pc"] and [r["nfe"] for r in fams["heun"]] == [3.0, 9.0]
    md = table.markdown(["sampler", "nfe", "fid"]).splitlines()
    assert md[0] == "| sampler | nfe | fid |" and md[2] == "| heun_5 | 9 | 3.5 |" and md[3] == "| heun_2 | 3 | 9.25 |"


def test_plot_draws_sde_solid_and_ode_dashed_one_line_per_family(tmp_path):
    from diffusion_lab.evaluation.plots import plot_quality_vs_nfe

    rows = [{"sampler": f"{f}_{n}", "family": f, "kind": k, "nfe": n, "fid": 10.0 / n}
            for f, k in (("ddim", "ODE"), ("heun", "ODE"), ("pc", "SDE")) for n in (10, 20)]
    fig = plot_quality_vs_nfe(EvalTable(rows), ("fid",), tmp_path / "p.png")
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    assert set(lines) == {"ddim (ODE)", "heun (ODE)", "pc (SDE)"}
    assert lines["pc (SDE)"].get_linestyle() == "-" and lines["ddim (ODE)"].get_linestyle() == "--"
    assert lines["ddim (ODE)"].get_color() != lines["heun (ODE)"].get_color()
    assert list(lines["pc (SDE)"].get_xdata()) == [10, 20] and fig.axes[0].get_xscale() == "log"
    assert (tmp_path / "p.png").stat().st_size > 1000


# ----------------------------------------------------------------------------------- W&B, from its own files
def _offline_records(run_dir: Path) -> list:
    """The records of a W&B offline run file (``run-<id>.wandb``: a LevelDB-style log of 32 KiB blocks, each
    record a 7-byte header — CRC32, length, type FULL/FIRST/MIDDLE/LAST — and a protobuf ``Record``), once
    W&B's service has written the run's final ``exit`` record."""
    import time

    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = glob.glob(str(run_dir / "*.wandb"))
    for _ in range(120):
        data, pos, block, buf, out = open(path, "rb").read(), 7, 32768, b"", []
        assert data[:4] == b":W&B"
        while pos + 7 <= len(data):
            if block - pos % block < 7:
                pos += block - pos % block
                continue
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
            if kind in (1, 4):
                rec = pb.Record()
                rec.ParseFromString(buf + chunk if kind == 4 else chunk)
                out.append(rec)
            buf = chunk if kind == 2 else buf + chunk if kind == 3 else b""
        if any(r.WhichOneof("record_type") == "exit" for r in out):
            return out
        time.sleep(0.5)  # the service writes the file on its own
    raise AssertionError(f"{path} has no exit record after 60 s")


def test_wandb_study_one_group_one_run_per_family_nfe_as_x_axis(tmp_path):
    import wandb
    from PIL import Image

    picture = tmp_path / "pc_5.png"
    Image.new("L", (16, 16)).save(picture)
    rows = [{"epoch": 0, "step": 9, "sampler": f"{f}_{n}", "kind": k, "nfe": float(n), "family": f, "fid": 100.0 / n,
             "is": 2.0, "seconds": 0.5} for f, k in (("ddim", "ODE"), ("pc", "SDE")) for n in (5, 10)]
    ids = log_wandb_study(EvalTable(rows), group="study1", project="p", config={"ckpt": "m.ckpt"},
                          samplers={"pc": {"sampler": "pc", "option_snr": 0.16}}, pictures={"pc_5": picture},
                          mode="offline", save_dir=tmp_path, tags=["digits"])
    assert len(ids) == 2
    wandb.teardown()  # stop W&B's service: the offline files are complete
    runs = {}
    for run_dir in sorted((tmp_path / "wandb").glob("offline-run-*")):
        recs = _offline_records(run_dir)
        (run,) = [r.run for r in recs if r.WhichOneof("record_type") == "run"]
        config = {i.key: json.loads(i.value_json) for i in run.config.update}
        metrics = [r.metric for r in recs if r.WhichOneof("record_type") == "metric"]
        history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                   for r in recs if r.WhichOneof("record_type") == "history"]
        runs[config["family"]] = (run, config, metrics, history, run_dir)
    assert set(runs) == {"ddim", "pc"}
    run, config, metrics, history, run_dir = runs["pc"]
    assert run.run_group == "study1" and run.display_name == "study1/pc" and run.job_type == "study"
    assert set(run.tags) == {"digits", "SDE", "pc"}
    assert config["kind"] == "SDE" and config["study"] == "study1" and config["ckpt"] == "m.ckpt"
    assert config["option_snr"] == 0.16 and runs["ddim"][1]["kind"] == "ODE"
    by_name = {m.name or m.glob_name: m for m in metrics}
    assert by_name["eval/*"].step_metric == "nfe" and by_name["eval/fid"].step_metric == "nfe"
    assert by_name["eval/fid"].summary.min and by_name["eval/is"].summary.max and "nfe" in by_name
    points = [(h["nfe"], h["eval/fid"]) for h in history if "eval/fid" in h]
    assert points == [(5, 20), (10, 10)]  # one point per row, at its NFE
    assert [h["eval/samples/_type"] for h in history if "eval/samples/_type" in h] == ["image-file"]
    (table_entry,) = [h for h in history if "eval/table/path" in h]
    table = json.loads((run_dir / "files" / table_entry["eval/table/path"]).read_text())
    assert table["columns"][:6] == ["epoch", "step", "sampler", "kind", "nfe", "family"]
    assert [r[2:4] for r in table["data"]] == [["pc_5", "SDE"], ["pc_10", "SDE"]]


# ----------------------------------------------------------------------------------- the study config, end to end
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from hydra import compose, initialize_config_dir

    from diffusion_lab.train import run

    out = tmp_path_factory.mktemp("run")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"run_dir={out}", "name=t", *FAST_TRAIN, *SMALL_UNET,
                                                      "evaluation.n=4", "evaluation.metrics=[]", "sampler.steps=2",
                                                      "logger=csv"])
    run(cfg)
    return out / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_sde_vs_ode_study_through_the_evaluate_entry_point(tiny_checkpoint, tmp_path, capsys):
    from hydra import compose, initialize_config_dir

    from diffusion_lab.evaluate import run

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[
            f"out_dir={tmp_path}", f"ckpt_path={tiny_checkpoint}", "evaluation=sde_vs_ode", "evaluation.n=4",
            "evaluation.metrics=[]", "evaluation.progress=false", "evaluation.nfe.ODE=[3]", "evaluation.nfe.SDE=[4]",
            "evaluation.tolerances=[0.1]", "wandb.project=p", "wandb.group=g", "wandb.mode=offline"])
    rows = run(cfg)
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    expected = {"ddpm": "SDE", "sde_euler_maruyama": "SDE", "pc": "SDE", "edm_stochastic": "SDE",
                "sde_dpm_solver_pp_2m": "SDE", "ddim": "ODE", "heun": "ODE", "dpm_solver_pp_2m": "ODE",
                "unipc_2": "ODE", "dopri5": "ODE"}
    assert [(r["family"], r["kind"]) for r in lines] == list(expected.items()) and len(rows) == 10
    assert {r["family"]: r["nfe"] for r in lines if r["family"] != "dopri5"} == {
        "ddpm": 4, "sde_euler_maruyama": 4, "pc": 4, "edm_stochastic": 3, "sde_dpm_solver_pp_2m": 4, "ddim": 3,
        "heun": 3, "dpm_solver_pp_2m": 3, "unipc_2": 3}
    assert EvalTable.read_csv(tmp_path / "eval" / "table.csv").rows[0]["family"] == "ddpm"
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 10  # one W&B run per family


# ----------------------------------------------------------------------------------- the paper twins
TWINS = {"ddpm_digits": "ddpm_cifar10", "ddim_digits": "ddim_cifar10", "iddpm_digits": "iddpm_cifar10",
         "edm_digits": "edm_cifar10", "score_sde_ve_digits": "score_sde_ve_cifar10",
         "score_sde_vp_digits": "score_sde_vp_cifar10"}
SIZE_KEYS = ("dataset", "model", "optimizer.lr", "optimizer.warmup_steps", "ema", "trainer.max_epochs")


@pytest.mark.parametrize("twin", sorted(TWINS))
def test_small_scale_twin_shares_everything_but_size_with_its_paper_file(compose_cfg, twin):
    from omegaconf import OmegaConf

    small, full = compose_cfg([f"experiment={twin}"]), compose_cfg([f"experiment={TWINS[twin]}"])
    for group in ("schedule", "parameterization", "loss", "sampler"):
        assert OmegaConf.to_container(small[group]) == OmegaConf.to_container(full[group]), group
    assert small.optimizer.name == full.optimizer.name and small.trainer.gradient_clip_val == full.trainer.gradient_clip_val
    assert small.dataset._target_.endswith("DigitsDataModule") and small.model._target_ == full.model._target_
    assert small.dataset.value_range == full.dataset.value_range
    assert small.model.get("learned_variance") == full.model.get("learned_variance")
    assert small.model.get("time_embedding") == full.model.get("time_embedding")

