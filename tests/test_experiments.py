"""Each paper configuration (conf/experiment/) builds what the paper used: network size, schedule,
parameterization, loss, optimizer, EMA and sampler — and passes the start-up compatibility checks."""

from __future__ import annotations

import pytest
import torch

from diffusion_lab import runs

# experiment: (parameter count, relative tolerance, schedule class, parameterization, loss class, sampler, NFE)
PAPERS = {
    "ddpm_cifar10": (35_746_307, 0.0, "DDPMLinearSchedule", "eps", "DenoisingScoreMatching", "ddpm", 1000),
    "iddpm_cifar10": (52.5e6, 0.01, "CosineDiscreteSchedule", "eps", "HybridLoss", "ddpm", 100),
    "score_sde_ve_cifar10": (62_758_787, 0.0, "VESchedule", "score", "DenoisingScoreMatching", "pc", 2000),  # NCSN++
    "score_sde_vp_cifar10": (61.8e6, 0.01, "VPLinearSchedule", "eps", "DenoisingScoreMatching", "dopri5", None),
    "edm_cifar10": (55.7e6, 0.01, "EDMSchedule", "edm", "DenoisingScoreMatching", "heun", 35),
    "rectified_flow_cifar10": (61.8e6, 0.01, "RectifiedFlowSchedule", "velocity", "RectifiedFlowLoss", "dopri5", None),
    "ddim_cifar10": (35_746_307, 0.0, "DDPMLinearSchedule", "eps", "DenoisingScoreMatching", "ddim", 50),
}


@pytest.fixture
def networks_on_meta(monkeypatch):
    """Build the networks on the meta device: their parameters have shapes but no memory (counts only)."""
    original = runs.instantiate_group

    def on_meta(cfg, group, **kwargs):
        if group != "model":
            return original(cfg, group, **kwargs)
        with torch.device("meta"):
            return original(cfg, group, **kwargs)

    monkeypatch.setattr(runs, "instantiate_group", on_meta)


@pytest.mark.parametrize("name", sorted(PAPERS))
def test_paper_configuration_builds_what_the_paper_used(compose_cfg, networks_on_meta, name):
    n_params, rtol, schedule_cls, param, loss_cls, sampler_name, nfe = PAPERS[name]
    parts = runs.build_parts(compose_cfg([f"experiment={name}"]), choices={})  # the start-up checks included
    net, schedule, parameterization, loss, sampler, dm = (parts.net, parts.schedule, parts.parameterization, parts.loss,
                                                          parts.sampler, parts.datamodule)
    assert next(net.parameters()).is_meta
    count = sum(p.numel() for p in net.parameters())
    assert count == pytest.approx(n_params, rel=rtol, abs=0), count
    assert type(schedule).__name__ == schedule_cls and parameterization.kind == param and type(loss).__name__ == loss_cls
    assert sampler.name == sampler_name and dm.data_shape == (3, 32, 32)
    if nfe is not None:  # the paper's NFE from our step counting (Heun's last step is Euler: 2N − 1)
        expected = {"ddpm": sampler.steps, "ddim": sampler.steps, "pc": 2 * sampler.steps, "heun": 2 * sampler.steps - 1}
        assert expected[sampler_name] == nfe


def test_paper_hyperparameters(compose_cfg):
    ddpm = compose_cfg(["experiment=ddpm_cifar10"])
    assert ddpm.optimizer.name == "adam" and ddpm.optimizer.lr == 2e-4 and ddpm.optimizer.warmup_steps == 5000
    assert ddpm.ema.decay == 0.9999 and ddpm.trainer.gradient_clip_val == 1.0 and ddpm.dataset.random_flip
    assert ddpm.schedule.num_timesteps == 1000 and ddpm.sampler.clip_x0
    iddpm = compose_cfg(["experiment=iddpm_cifar10"])
    assert iddpm.optimizer.name == "adamw" and iddpm.optimizer.lr == 1e-4 and iddpm.schedule.num_timesteps == 4000
    assert iddpm.loss.vlb_weight == 0.001 and iddpm.model.learned_variance and iddpm.sampler.variance == "learned"
    edm = compose_cfg(["experiment=edm_cifar10"])
    assert edm.optimizer.lr == 1e-3 and edm.dataset.batch_size == 512 and edm.ema.half_life_images == 500_000
    assert edm.loss.time_sampler.p_mean == -1.2 and edm.loss.time_sampler.p_std == 1.2 and edm.model.dropout == 0.13
    ve = compose_cfg(["experiment=score_sde_ve_cifar10"])
    assert ve.dataset.value_range == "[0,1]" and ve.schedule.sigma_min == 0.01 and ve.schedule.sigma_max == 50.0
    assert ve.sampler.snr == 0.16 and ve.ema.decay == 0.999
