"""diffusers' ``UNet2DModel`` (von Platen et al. 2022, the 🤗 diffusers library) as a network of ours.

``model=diffusers_unet`` builds one from its constructor arguments (trainable like any net of this
package); ``pretrained=<folder>`` loads one saved with ``save_pretrained`` (a pipeline's ``unet/``).

The timestep convention. Our discrete schedules put step i = 1..T on t = i/T and give the network the
noise label ``time_scale·t`` (``Parameterization.net_inputs``; 1000·t, so i itself when T = 1000).
diffusers indexes the same steps from zero: its timestep τ = 0..T−1 has ``alphas_cumprod[τ]`` =
ᾱ_{τ+1}, the product of the first τ+1 factors (1 − β), i.e. our step i = τ + 1 (Ho et al. 2020's
t = 1..T, shifted). So the network is called with

    τ = label · T / time_scale − 1,

which is τ = i − 1 on the grid and a real-valued τ between grid points (the UNet's sinusoidal
embedding takes real timesteps). On a continuous schedule the same map is just a fixed shift of the
label: a network trained here sees the same τ at sampling as in training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from diffusion_lab.errors import ConfigError


def _unet_class() -> Any:
    try:
        from diffusers import UNet2DModel
    except ImportError:  # pragma: no cover - the diffusers extra
        raise ConfigError("model=diffusers_unet and pretrained= need diffusers; pip install 'diffusion_lab[diffusers]'.") from None
    return UNet2DModel


def _plain(value: Any) -> Any:
    """Hydra's ListConfig → list (diffusers writes its config as JSON)."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return list(value) if isinstance(value, tuple) else value


class DiffusersUNet(nn.Module):
    """``DiffusersUNet(num_train_timesteps=1000, time_scale=1000.0, learned_variance=False,
    pretrained=None, **unet_kwargs)``: ``forward(x, noise_label)`` (unconditional).

    ``unet_kwargs`` go to ``UNet2DModel`` (sample_size, in_channels, out_channels, block_out_channels,
    layers_per_block, down_block_types, up_block_types, norm_num_groups, ...); ``pretrained``: a folder
    with its ``config.json`` and weights instead. ``learned_variance``: the UNet outputs 2C channels
    (prediction, then the variance interpolation v of improved DDPM, diffusers' ``learned_range``)."""

    def __init__(self, num_train_timesteps: int = 1000, time_scale: float = 1000.0, learned_variance: bool = False,
                 pretrained: str | None = None, **unet_kwargs: Any):
        super().__init__()
        cls = _unet_class()
        if pretrained is not None:
            if not (Path(pretrained) / "config.json").is_file():
                raise ConfigError(f"model.pretrained={pretrained} has no config.json; give the unet/ folder of a "
                                  "diffusers pipeline (or a folder written by UNet2DModel.save_pretrained).")
            self.unet = cls.from_pretrained(str(pretrained), low_cpu_mem_usage=False)
        else:
            self.unet = cls(**{k: _plain(v) for k, v in unet_kwargs.items()})
        cfg = self.unet.config
        if cfg.time_embedding_type != "positional":
            raise ConfigError(f"a UNet2DModel with time_embedding_type={cfg.time_embedding_type!r} is conditioned on σ, "
                              "not on a discrete timestep; only 'positional' UNets map to our schedules.")
        self.num_train_timesteps = int(num_train_timesteps)
        self.time_scale = float(time_scale)
        self.learned_variance = bool(learned_variance)
        self.in_channels = int(cfg.in_channels)
        self.out_channels = int(cfg.out_channels)
        size = cfg.sample_size
        self.image_size = int(size if isinstance(size, int) else size[0]) if size is not None else None
        if cfg.num_class_embeds is not None or cfg.class_embed_type is not None:
            raise ConfigError("a class-conditional UNet2DModel (num_class_embeds / class_embed_type set) is not supported "
                              "yet: our class conditioning needs a null label row; use an unconditional UNet2DModel.")
        self.num_classes = None
        expect = 2 * self.in_channels if self.learned_variance else self.in_channels
        if self.out_channels != expect:
            raise ConfigError(f"the UNet2DModel has out_channels={self.out_channels} but "
                              f"{'a learned-variance' if self.learned_variance else 'this'} model needs {expect} "
                              f"(in_channels={self.in_channels}); set model.out_channels or model.learned_variance.")

    def diffusers_timestep(self, noise_label: Tensor) -> Tensor:
        """τ = label·T/time_scale − 1 (see the module docstring)."""
        return noise_label * (self.num_train_timesteps / self.time_scale) - 1.0

    def forward(self, x: Tensor, noise_label: Tensor) -> Tensor:
        tau = self.diffusers_timestep(noise_label.reshape(-1).to(x.dtype))
        if tau.numel() == 1:
            tau = tau.expand(x.shape[0])
        return self.unet(x, tau).sample
