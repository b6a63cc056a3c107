"""diffusers models in and out (the `diffusers` extra): a random small UNet2DModel saved as a pipeline folder
loads with `pretrained=`, its scheduler config maps onto our schedule / parameterization / sampler options,
our DDIM equals diffusers' DDIMScheduler on the same timesteps, and other samplers of ours run on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

UNET = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=8, attention_head_dim=8)


def save_pipeline(folder, beta_schedule="linear", prediction_type="epsilon", clip_sample=True, **scheduler_kwargs):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**UNET)
    with torch.no_grad():  # a random UNet's output has std ≈ 0.3; make it ≈ 1 (a trained ε-net's)
        unet.conv_out.weight.mul_(3.0)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule,
                                    prediction_type=prediction_type, clip_sample=clip_sample, **scheduler_kwargs)
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(folder)
    return unet, sched


def diffusers_ddim(unet, scheduler_config, x, steps, alphas_cumprod=None):
    """diffusers' own DDIM loop (DDIMPipeline's, with use_clipped_model_output=True)."""
    sched = diffusers.DDIMScheduler.from_config(scheduler_config)
    sched.set_timesteps(steps)
    if alphas_cumprod is not None:  # float64 tables: compare the algorithms, not float32 rounding
        sched.alphas_cumprod = alphas_cumprod
        sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    for tau in sched.timesteps:
        eps = unet(x, tau).sample
        x = sched.step(eps, tau, x, use_clipped_model_output=True).prev_sample
    return x, sched.timesteps


@pytest.mark.parametrize("beta_schedule,prediction_type", [("linear", "epsilon"), ("squaredcos_cap_v2", "v_prediction"),
                                                            ("linear", "sample")])
def test_our_ddim_on_a_diffusers_folder_equals_diffusers_ddim_to_1e6(tmp_path, beta_schedule, prediction_type):
    from diffusion_lab.pretrained import load_pretrained
    from diffusion_lab.samplers import Sampler

    unet, sched = save_pipeline(tmp_path, beta_schedule, prediction_type)
    run = load_pretrained(tmp_path, sampler={"_target_": "diffusion_lab.samplers.Sampler", "name": "ddim", "steps": 10,
                                             "grid": "leading", "eta": 0.0})
    ours = run.parts.schedule
    assert type(ours).__name__ == {"linear": "DDPMLinearSchedule", "squaredcos_cap_v2": "CosineDiscreteSchedule"}[beta_schedule]
    assert run.parts.parameterization.kind == {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[prediction_type]
    torch.testing.assert_close(ours.betas.float(), sched.betas, rtol=2e-6, atol=0)  # the same β (float32 in diffusers)
    assert run.parts.sampler.options["clip_x0"] is True  # clip_sample=true
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # float64 throughout: the UNet, diffusers' tables (ᾱ from our β), our sampler state
    run.module.to(torch.float64)
    sampler: Sampler = run.parts.sampler
    with run.module.sampling(use_ema=True) as denoiser:
        x_ours = sampler(denoiser, x_T=x_T, progress=False).x
        grid = sampler.time_grid(ours)
    ref, timesteps = diffusers_ddim(unet.double(), sched.config, x_T, 10, ours.alphas_cumprod.clone())
    torch.testing.assert_close(grid[:-1] * 1000, (timesteps + 1).double())  # our step i = diffusers' τ + 1
    assert float((x_ours - x_T).abs().max()) > 0.5  # the samples moved
    torch.testing.assert_close(x_ours, ref, rtol=0, atol=1e-6)


def test_float32_pipeline_as_saved_matches_to_float32_precision(tmp_path):
    """No float64 help: diffusers' scheduler exactly as saved (float32 β) against ours."""
    from diffusion_lab.pretrained import load_pretrained

    unet, sched = save_pipeline(tmp_path, clip_sample=False)
    run = load_pretrained(tmp_path, sampler={"_target_": "diffusion_lab.samplers.Sampler", "name": "ddim", "steps": 20,
                                             "grid": "leading"})
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with run.module.sampling(use_ema=True) as denoiser, torch.no_grad():
        x_ours = run.parts.sampler(denoiser, x_T=x_T, progress=False).x
        ref, _ = diffusers_ddim(unet, sched.config, x_T, 20)
    torch.testing.assert_close(x_ours.float(), ref, rtol=1e-4, atol=1e-4)  # values up to ~100: float32 β and steps


def _sample(tmp_path, folder, overrides):
    from hydra import compose, initialize_config_dir

    from conftest import CONF
    from diffusion_lab.sample import run

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="sample", overrides=[f"pretrained={folder}", f"out_dir={tmp_path}", "n=6",
                                                        "progress=false", "device=cpu", *overrides])
    summary = run(cfg)
    return np.load(summary["npz"])["x"], summary


def test_three_of_our_ode_samplers_solve_the_same_flow_on_a_pretrained_folder(tmp_path):
    """`python -m diffusion_lab.sample pretrained=<folder> sampler=...`: Heun, DPM-Solver++(2M) and UniPC-2 at 40
    steps integrate the same PF-ODE of the loaded model from the same noise, so they agree with each other far
    better than with a 4-step DDIM; and DDPM (the config's variance) runs too."""
    folder = tmp_path / "pipe"
    save_pipeline(folder, clip_sample=False)
    xs = {name: _sample(tmp_path / name, folder, [f"sampler={name}", "sampler.steps=40", "sampler.grid=lambda"])[0]
          for name in ("heun", "dpm_solver_pp_2m", "unipc_2")}
    coarse, _ = _sample(tmp_path / "ddim4", folder, ["sampler=ddim", "sampler.steps=4", "sampler.grid=lambda"])
    spread = max(np.abs(xs[a] - xs[b]).max() for a in xs for b in xs)
    assert spread < 0.05 * np.abs(coarse - xs["heun"]).max(), spread
    ddpm, summary = _sample(tmp_path / "ddpm", folder, ["sampler=ddpm", "sampler.steps=20"])
    assert np.isfinite(ddpm).all() and summary["nfe"] == 20


def test_scheduler_configs_without_a_counterpart_stop_with_the_value_named(tmp_path):
    from diffusion_lab.errors import ConfigError
    from diffusion_lab.pretrained import load_pretrained, schedule_config, sampler_options

    with pytest.raises(ConfigError, match="beta_schedule='sigmoid'"):
        schedule_config({"_class_name": "DDPMScheduler", "beta_schedule": "sigmoid"})
    with pytest.raises(ConfigError, match="ScoreSdeVeScheduler"):
        schedule_config({"_class_name": "ScoreSdeVeScheduler"})
    with pytest.raises(ConfigError, match="thresholding=true"):
        sampler_options({"thresholding": True})
    with pytest.raises(ConfigError, match="variance_type='learned'"):
        sampler_options({"variance_type": "learned"})
    save_pipeline(tmp_path, prediction_type="epsilon", rescale_betas_zero_snr=True)
    with pytest.raises(ConfigError, match="rescale_betas_zero_snr=true"):
        load_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="no scheduler/scheduler_config.json"):
        load_pretrained(tmp_path / "unet")


def test_scheduler_options_map_to_our_ddpm_variance_and_clipping(tmp_path):
    from diffusion_lab.pretrained import load_pretrained, schedule_config

    save_pipeline(tmp_path, clip_sample=True, variance_type="fixed_large")
    run = load_pretrained(tmp_path, sampler={"_target_": "diffusion_lab.samplers.Sampler", "name": "ddpm", "steps": 5})
    assert run.parts.sampler.options == {"clip_x0": True, "variance": "large"}
    run = load_pretrained(tmp_path, sampler={"_target_": "diffusion_lab.samplers.Sampler", "name": "heun", "steps": 5})
    assert run.parts.sampler.options == {}  # options only where the sampler has them
    from diffusion_lab.pretrained import apply_options

    ddim = {"_target_": "diffusion_lab.samplers.Sampler", "name": "ddim", "clip_x0": False}
    assert apply_options(ddim, {"clip_x0": True}, set())["clip_x0"] is True
    assert apply_options(ddim, {"clip_x0": True}, {"clip_x0"})["clip_x0"] is False  # sampler.clip_x0= on the command line wins
    cfg = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    cfg["beta_schedule"], cfg["beta_start"], cfg["beta_end"] = "scaled_linear", 0.00085, 0.012
    from diffusion_lab.schedules import DiscreteSchedule

    ours = DiscreteSchedule(schedule_config(cfg)["betas"])
    theirs = diffusers.DDPMScheduler.from_config(cfg)
    torch.testing.assert_close(ours.betas.float(), theirs.betas, rtol=1e-6, atol=0)


@pytest.mark.parametrize("schedule,parameterization", [("ddpm", "eps"), ("cosine_discrete", "v")])
def test_export_of_a_diffusers_unet_checkpoint_reloads_in_diffusers_with_the_same_outputs(compose_cfg, tmp_path,
                                                                                           schedule, parameterization):
    """Train model=diffusers_unet a few steps, export, reload with DDPMPipeline: the UNet gives our network's
    outputs at every timestep (τ = our step − 1), the scheduler has our β; diffusers' DDIM on the export
    equals ours on the checkpoint."""
    from conftest import FAST_TRAIN
    from diffusion_lab.export import export
    from diffusion_lab.runs import load_run
    from diffusion_lab.train import run

    run(compose_cfg([*FAST_TRAIN, "model=diffusers_unet", "model.block_out_channels=[16,32]", "model.layers_per_block=1",
                     f"schedule={schedule}", f"parameterization={parameterization}", "trainer.max_steps=3",
                     "evaluation.at_end=false", "evaluation.every_n_epochs=1000", "ema.decay=0.5"]))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    out = export(ckpt, tmp_path / "exported")
    pipe = diffusers.DDPMPipeline.from_pretrained(str(out))
    loaded = load_run(ckpt, sampler={"_target_": "diffusion_lab.samplers.Sampler", "name": "ddim", "steps": 8,
                                     "grid": "leading"})
    ours = loaded.parts.schedule
    torch.testing.assert_close(pipe.scheduler.betas.double(), ours.betas, rtol=2e-6, atol=0)
    assert pipe.scheduler.config.prediction_type == {"eps": "epsilon", "v": "v_prediction"}[parameterization]
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with loaded.module.sampling(use_ema=True) as denoiser, torch.no_grad():
        for i in (1, 250, 1000):
            t = torch.full((2,), i / 1000.0)
            mine = denoiser.output(x, t, dtype=torch.float32).prediction
            torch.testing.assert_close(pipe.unet(x, i - 1).sample, mine, rtol=0, atol=1e-6)
    loaded.module.to(torch.float64)  # the sampling comparison in float64 on both sides, as above
    with loaded.module.sampling(use_ema=True) as denoiser, torch.no_grad():
        x_ours = loaded.parts.sampler(denoiser, x_T=x.double(), progress=False).x
    ref, _ = diffusers_ddim(pipe.unet.double(), pipe.scheduler.config, x.double(), 8, ours.alphas_cumprod.clone())
    torch.testing.assert_close(x_ours, ref, rtol=0, atol=1e-6)
    # and our own loader reads the export back as the same model
    back = load_pretrained_and_sample(out, x)
    torch.testing.assert_close(back, x_ours, rtol=0, atol=1e-6)


def load_pretrained_and_sample(folder, x):
    from diffusion_lab.pretrained import load_pretrained

    run = load_pretrained(folder, sampler={"_target_": "diffusion_lab.samplers.Sampler", "name": "ddim", "steps": 8,
                                           "grid": "leading"})
    run.module.to(torch.float64)
    with run.module.sampling(use_ema=True) as denoiser, torch.no_grad():
        return run.parts.sampler(denoiser, x_T=x.double(), progress=False).x


def test_export_refuses_our_unet_and_continuous_schedules_in_one_sentence(build_run):
    from diffusion_lab.errors import ConfigError
    from diffusion_lab.export import scheduler_config

    _, parts, _ = build_run([])  # the default: schedule=vp (continuous)
    with pytest.raises(ConfigError, match="continuous-time"):
        scheduler_config(parts.schedule, "eps", False, False)
    _, parts, _ = build_run(["schedule=ddpm", "parameterization=velocity"])
    with pytest.raises(ConfigError, match="parameterization=velocity"):
        scheduler_config(parts.schedule, "velocity", False, False)


def _our_unet(**kw):
    from diffusion_lab.nets import UNet

    torch.manual_seed(0)
    net = UNet(in_channels=1, image_size=8, ch=32, ch_mult=(1, 2), num_res_blocks=2, attn_resolutions=(4,), num_heads=4,
               dropout=0.0, norm_groups=8, **kw).eval()
    with torch.no_grad():  # randomize the zero-initialized layers too, so that every weight matters
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


@pytest.mark.parametrize("scale_shift_norm", [False, True])
def test_our_unet_maps_onto_unet2d_exactly_with_the_timestep_shift_folded_in(scale_shift_norm):
    """to_unet2d: the UNet2DModel at τ = i − 1 computes our UNet at label i, at the first, a middle and the last
    step (float32 rounding of the two sides' sin/cos only)."""
    from diffusion_lab.nets.to_diffusers import to_unet2d

    net = _our_unet(scale_shift_norm=scale_shift_norm)
    theirs = to_unet2d(net, 1000, 1000.0)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for i in (1, 37, 500, 1000):
            ours = net(x, torch.full((3,), float(i)))
            assert float(ours.abs().max()) > 0.5
            torch.testing.assert_close(theirs(x, torch.full((3,), i - 1)).sample, ours, rtol=0, atol=1e-5)


def test_our_unet_options_without_a_counterpart_are_refused_by_name():
    from diffusion_lab.errors import ConfigError
    from diffusion_lab.nets import UNet
    from diffusion_lab.nets.to_diffusers import unet2d_config

    digits = UNet(in_channels=1, image_size=8, ch=32, ch_mult=(1, 2), num_res_blocks=2, attn_resolutions=(4,), num_heads=4)
    with pytest.raises(ConfigError, match=r"GroupNorms have \[8, 16, 24, 32\] groups"):
        unet2d_config(digits, 1000, 1000.0)  # the default digits UNet: narrow layers take fewer groups
    with pytest.raises(ConfigError, match="skip_rescale"):
        unet2d_config(_our_unet(skip_rescale=True), 1000, 1000.0)
    with pytest.raises(ConfigError, match="time_scale=1.0"):
        unet2d_config(_our_unet(), 1000, 1.0)


def test_export_of_our_unet_checkpoint_reloads_in_diffusers(compose_cfg, tmp_path):
    from conftest import FAST_TRAIN
    from diffusion_lab.export import export

    from diffusion_lab.runs import load_run
    from diffusion_lab.train import run

    run(compose_cfg([*FAST_TRAIN, "model.ch=16", "model.num_res_blocks=1", "+model.norm_groups=4", "schedule=ddpm",
                     "trainer.max_steps=2", "evaluation.at_end=false", "evaluation.every_n_epochs=1000"]))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    pipe = diffusers.DDPMPipeline.from_pretrained(str(export(ckpt, tmp_path / "exported")))
    loaded = load_run(ckpt)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with loaded.module.sampling(use_ema=True) as denoiser, torch.no_grad():
        for i in (1, 400, 1000):
            mine = denoiser.output(x, torch.full((2,), i / 1000.0), dtype=torch.float32).prediction
            torch.testing.assert_close(pipe.unet(x, i - 1).sample, mine, rtol=0, atol=1e-5)


def test_evaluate_a_pretrained_folder_against_a_dataset(tmp_path):
    """`python -m diffusion_lab.evaluate pretrained=<folder> dataset=digits sampler=ddim`: one row with the metrics of
    the sampler; without dataset= an evaluation says it needs one."""
    from hydra import compose, initialize_config_dir

    from conftest import CONF
    from diffusion_lab.errors import DataError
    from diffusion_lab.evaluate import run

    save_pipeline(tmp_path / "pipe", clip_sample=True)
    common = [f"pretrained={tmp_path / 'pipe'}", f"out_dir={tmp_path / 'eval'}", "sampler=ddim", "sampler.steps=3",
              "evaluation.n=16", "evaluation.progress=false", "device=cpu"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[*common, "dataset=digits"])
        bare = compose(config_name="evaluate", overrides=common)
    (row,) = run(cfg)
    assert row["sampler"] == "ddim_3" and row["nfe"] == 3 and row["fid"] > 0 and row["step"] == 0
    with pytest.raises(DataError, match="pass dataset="):
        run(bare)
