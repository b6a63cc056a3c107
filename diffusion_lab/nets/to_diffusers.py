"""Our ``UNet`` as diffusers' ``UNet2DModel``: the config and the state-dict mapping, exact where the two
architectures coincide (the DDPM skeleton of Ho et al. 2020, which both implement), refused in one
sentence where they do not.

Module by module (ours → diffusers):

    noise_mlp.fc1 / fc2                       time_embedding.linear_1 / linear_2   (see the timestep below)
    encoder.conv_in                           conv_in
    encoder.blocks: level ℓ's ResBlocks       down_blocks.ℓ.resnets.j   norm0→norm1, conv0→conv1,
                                              emb_proj→time_emb_proj, norm1→norm2, conv1→conv2, skip→conv_shortcut
                    its AttentionBlocks       down_blocks.ℓ.attentions.j   norm→group_norm, qkv→to_q|to_k|to_v
                                              (rows [0:C], [C:2C], [2C:3C]), proj→to_out.0
                    its Downsample            down_blocks.ℓ.downsamplers.0.conv
    encoder.mid (ResBlock, Attn, ResBlock)    mid_block.resnets.0, attentions.0, resnets.1
    decoder, level ℓ (reversed)               up_blocks.(L−1−ℓ).resnets.j / attentions.j / upsamplers.0.conv
    norm_out, conv_out                        conv_norm_out, conv_out

Both compute the sinusoidal embedding [sin(ω_k τ), cos(ω_k τ)], ω_k = 10000^(−k/(d/2−1)) (diffusers:
``flip_sin_to_cos=False, freq_shift=1``), ResBlocks GN → SiLU → conv → + W·SiLU(e) (or GN·(1+s)+b) → GN
→ SiLU → conv plus a skip, attention with one GroupNorm, per-head dot products scaled by 1/√d and a
residual, nearest-neighbour up-sampling and a stride-2 conv3x3 (padding 1) down.

The timestep. Our network sees the label i (our step; the parameterization's time_scale equals the
schedule's T), diffusers' sees τ = i − 1. Shifting the argument of a sinusoid is a rotation of each
(sin, cos) pair: [sin ω(τ+1), cos ω(τ+1)] = R_ω [sin ωτ, cos ωτ] with R_ω = [[cos ω, sin ω], [−sin ω,
cos ω]], a linear map of the embedding, so ``linear_1.weight = fc1.weight · R`` makes the diffusers
UNet at τ compute exactly our network at i (up to the float32 rounding of each side's sin and cos).

Refused (``ConfigError`` naming the option): GroupNorms with different numbers of groups (our narrow
layers take fewer groups, diffusers has one ``norm_num_groups``: set ``model.norm_groups`` so that every
layer gets the same), attention heads of different widths (diffusers has one ``attention_head_dim``),
the Fourier time embedding, ``emb_mult`` ≠ 4, ``resblock_updown``, ``resample_with_conv=false``,
``resample_skip_conv``, ``skip_rescale``, ``attn_decoder=last``, class-conditional nets, and a label that
is not the step (time_scale ≠ T).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from diffusion_lab.errors import ConfigError


def _refuse(reason: str) -> None:
    raise ConfigError(f"model: {reason}, which diffusers' UNet2DModel has no exact counterpart for; "
                      "export a model trained with model=diffusers_unet instead (or one without that option).")


def _levels(unet: Any) -> tuple[list[list[Any]], list[Any]]:
    """Our encoder's blocks grouped by level: ([(resblock, attn | None), ...] per level, the downsamplers)."""
    from diffusion_lab.nets.unet import AttentionBlock, Downsample, ResBlock

    levels: list[list[Any]] = [[]]
    downs: list[Any] = []
    for block in unet.encoder.blocks:
        layers = list(block)
        if isinstance(layers[0], Downsample):
            downs.append(layers[0])
            levels.append([])
            continue
        if not isinstance(layers[0], ResBlock) or layers[0].resample is not None:
            _refuse("resblock_updown=true (BigGAN residual resampling)")
        attn = layers[1] if len(layers) > 1 and isinstance(layers[1], AttentionBlock) else None
        levels[-1].append((layers[0], attn))
    return levels, downs


def unet2d_config(unet: Any, num_train_timesteps: int, time_scale: float) -> dict[str, Any]:
    """The ``UNet2DModel`` config equal to our ``UNet`` (module docstring), or a ConfigError."""
    from diffusion_lab.nets.embeddings import SinusoidalEmbedding
    from diffusion_lab.nets.unet import AttentionBlock, ResBlock, Upsample

    if not isinstance(unet.noise_embed, SinusoidalEmbedding):
        _refuse("time_embedding=fourier (Gaussian Fourier features)")
    if unet.num_classes:
        _refuse(f"num_classes={unet.num_classes} (class-conditional)")
    if abs(time_scale - num_train_timesteps) > 1e-9:
        raise ConfigError(f"parameterization.time_scale={time_scale} is not the schedule's T={num_train_timesteps}, so the "
                          "network's label is not the step diffusers counts; export a model trained with them equal.")
    ch = unet.noise_embed.dim
    if unet.noise_mlp.fc1.out_features != 4 * ch:
        _refuse(f"emb_mult={unet.noise_mlp.fc1.out_features // ch} (diffusers' time embedding is 4·ch wide)")
    levels, downs = _levels(unet)
    if any(d.conv is None for d in downs):
        _refuse("resample_with_conv=false")
    resblocks = [m for m in unet.modules() if isinstance(m, ResBlock)]
    if any(r.skip_rescale for r in resblocks):
        _refuse("skip_rescale=true (residual sums divided by √2)")
    if any(r.resample is not None for r in resblocks) or any(isinstance(m, Upsample) and m.conv is None
                                                             for m in unet.modules()):
        _refuse("resblock_updown=true or resample_with_conv=false")
    if any(isinstance(r.skip, nn.Conv2d) and r.skip.in_channels == r.skip.out_channels for r in resblocks):
        _refuse("resample_skip_conv=true")
    groups = {m.num_groups for m in unet.modules() if isinstance(m, nn.GroupNorm)}
    eps = {m.eps for m in unet.modules() if isinstance(m, nn.GroupNorm)}
    if len(groups) != 1:
        _refuse(f"its GroupNorms have {sorted(groups)} groups in different layers (diffusers has one norm_num_groups; "
                "a model.norm_groups that divides every width, e.g. 8, gives one)")
    attns = [m for m in unet.modules() if isinstance(m, AttentionBlock)]
    head_dims = {a.norm.num_channels // a.num_heads for a in attns}
    if len(head_dims) > 1:
        _refuse(f"its attention heads have widths {sorted(head_dims)} (diffusers has one attention_head_dim; set "
                "model.num_head_channels)")
    scale_shift = {r.scale_shift for r in resblocks}
    widths = [lvl[0][0].conv0.out_channels for lvl in levels]
    num_res = {len(lvl) for lvl in levels}
    if len(num_res) != 1:
        _refuse("levels with different numbers of residual blocks")
    has_attn = [any(a is not None for _, a in lvl) for lvl in levels]
    # decoder: attention after every block of a level (attn_decoder=all) iff the encoder level has it
    n = num_res.pop()
    dec_attn = [sum(isinstance(m, AttentionBlock) for m in block) for block in unet.decoder]
    expect = [int(has_attn[lvl]) for lvl in reversed(range(len(levels))) for _ in range(n + 1)]
    if dec_attn != expect:
        _refuse("attn_decoder=last (attention only after a decoder level's last block)")
    mid_attn = any(isinstance(m, AttentionBlock) for m in unet.encoder.mid)
    out_ch = unet.conv_out.out_channels
    return {
        "sample_size": int(unet.image_size), "in_channels": int(unet.in_channels), "out_channels": int(out_ch),
        "center_input_sample": False, "time_embedding_type": "positional", "flip_sin_to_cos": False, "freq_shift": 1,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in has_attn],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attn)],
        "block_out_channels": widths, "layers_per_block": n, "mid_block_scale_factor": 1.0, "downsample_padding": 1,
        "downsample_type": "conv", "upsample_type": "conv", "dropout": float(resblocks[0].dropout.p),
        "act_fn": "silu", "attention_head_dim": head_dims.pop() if head_dims else None,
        # attn_norm_num_groups: the middle attention's GroupNorm (diffusers drops it under scale_shift otherwise)
        "norm_num_groups": (g := groups.pop()), "attn_norm_num_groups": g, "norm_eps": float(eps.pop()),
        "resnet_time_scale_shift": "scale_shift" if scale_shift == {True} else "default",
        "add_attention": mid_attn, "class_embed_type": None, "num_class_embeds": None,
    }


def _time_shift_rotation(freqs: Tensor) -> Tensor:
    """R (d × d) with emb(τ + 1) = R·emb(τ) for emb = [sin(ωτ), cos(ωτ)] (module docstring)."""
    w = freqs.double()
    half = w.numel()
    c, s = torch.cos(w), torch.sin(w)
    R = torch.zeros(2 * half, 2 * half, dtype=torch.float64)
    idx = torch.arange(half)
    R[idx, idx], R[idx, idx + half] = c, s                     # sin(ω(τ+1)) = cos ω·sin ωτ + sin ω·cos ωτ
    R[idx + half, idx], R[idx + half, idx + half] = -s, c      # cos(ω(τ+1)) = −sin ω·sin ωτ + cos ω·cos ωτ
    return R


def _resnet(prefix: str, block: Any, out: dict[str, Tensor]) -> None:
    names = {"norm0": "norm1", "conv0": "conv1", "emb_proj": "time_emb_proj", "norm1": "norm2", "conv1": "conv2",
             "skip": "conv_shortcut"}
    for name, tensor in block.state_dict().items():
        module, param = name.split(".", 1)
        out[f"{prefix}.{names[module]}.{param}"] = tensor


def _attention(prefix: str, block: Any, out: dict[str, Tensor]) -> None:
    c = block.norm.num_channels
    out[f"{prefix}.group_norm.weight"], out[f"{prefix}.group_norm.bias"] = block.norm.weight, block.norm.bias
    for k, name in enumerate(("to_q", "to_k", "to_v")):
        out[f"{prefix}.{name}.weight"] = block.qkv.weight[k * c:(k + 1) * c]
        out[f"{prefix}.{name}.bias"] = block.qkv.bias[k * c:(k + 1) * c]
    out[f"{prefix}.to_out.0.weight"], out[f"{prefix}.to_out.0.bias"] = block.proj.weight, block.proj.bias


def unet2d_state_dict(unet: Any) -> dict[str, Tensor]:
    """Our UNet's weights under UNet2DModel's names (``unet2d_config`` must accept the net first)."""
    from diffusion_lab.nets.unet import AttentionBlock, ResBlock, Upsample

    out: dict[str, Tensor] = {}
    R = _time_shift_rotation(unet.noise_embed.freqs)
    fc1 = unet.noise_mlp.fc1
    out["time_embedding.linear_1.weight"] = (fc1.weight.double() @ R).to(fc1.weight.dtype)
    out["time_embedding.linear_1.bias"] = fc1.bias
    out["time_embedding.linear_2.weight"], out["time_embedding.linear_2.bias"] = unet.noise_mlp.fc2.weight, unet.noise_mlp.fc2.bias
    out["conv_in.weight"], out["conv_in.bias"] = unet.encoder.conv_in.weight, unet.encoder.conv_in.bias
    levels, downs = _levels(unet)
    for ell, level in enumerate(levels):
        for j, (res, attn) in enumerate(level):
            _resnet(f"down_blocks.{ell}.resnets.{j}", res, out)
            if attn is not None:
                _attention(f"down_blocks.{ell}.attentions.{j}", attn, out)
        if ell < len(downs):
            out[f"down_blocks.{ell}.downsamplers.0.conv.weight"] = downs[ell].conv.weight
            out[f"down_blocks.{ell}.downsamplers.0.conv.bias"] = downs[ell].conv.bias
    mid = list(unet.encoder.mid)
    _resnet("mid_block.resnets.0", mid[0], out)
    if isinstance(mid[1], AttentionBlock):
        _attention("mid_block.attentions.0", mid[1], out)
    _resnet("mid_block.resnets.1", mid[-1], out)
    per_level = len(levels[0]) + 1
    for k, block in enumerate(unet.decoder):
        up, j = divmod(k, per_level)
        for layer in block:
            if isinstance(layer, ResBlock):
                _resnet(f"up_blocks.{up}.resnets.{j}", layer, out)
            elif isinstance(layer, AttentionBlock):
                _attention(f"up_blocks.{up}.attentions.{j}", layer, out)
            elif isinstance(layer, Upsample):
                out[f"up_blocks.{up}.upsamplers.0.conv.weight"] = layer.conv.weight
                out[f"up_blocks.{up}.upsamplers.0.conv.bias"] = layer.conv.bias
    out["conv_norm_out.weight"], out["conv_norm_out.bias"] = unet.norm_out.weight, unet.norm_out.bias
    out["conv_out.weight"], out["conv_out.bias"] = unet.conv_out.weight, unet.conv_out.bias
    return {k: v.detach().clone().float() for k, v in out.items()}


def to_unet2d(unet: Any, num_train_timesteps: int, time_scale: float) -> Any:
    """A ``UNet2DModel`` that computes our ``unet`` at diffusers' τ = our step − 1 (strict load: every
    weight of both sides is mapped)."""
    from diffusers import UNet2DModel

    model = UNet2DModel(**unet2d_config(unet, num_train_timesteps, time_scale))
    model.load_state_dict(unet2d_state_dict(unet), strict=True)
    return model.eval()
