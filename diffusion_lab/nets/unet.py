"""One UNet whose options express the published diffusion architectures.

Skeleton (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", after PixelCNN++ / Wide
ResNet; kept by Nichol & Dhariwal 2021, Dhariwal & Nichol 2021, Song et al. 2021, Karras et al. 2022):

    noise label ─ sinusoidal | Gaussian-Fourier (dim ch) ─ Linear(ch,4ch) ─ SiLU ─ Linear(4ch,4ch)
                  (+ class embedding, a table of num_classes + 1 rows, the last the null label) ─ SiLU = e
    x ─ conv3x3(in, ch)
      ─ encoder: per level ℓ with width ch·mult[ℓ]: num_res_blocks × [ResBlock(e) (+ attention at
                 the listed resolutions)], then a down-sampling (not after the last level)
      ─ middle:  ResBlock, attention, ResBlock
      ─ decoder: per level in reverse: (num_res_blocks + 1) × [concat(skip) → ResBlock (+ attention:
                 after every block, or with attn_decoder="last" only after the level's last block,
                 as score_sde's NCSN++/DDPM++ and EDM's SongUNet do)], then an up-sampling (not after level 0)
      ─ GroupNorm ─ SiLU ─ conv3x3(·, out) → out channels (2·out with learned variance)

Every encoder output (the input conv, each block, each down-sampling) is a skip connection consumed
once by the decoder in reverse order.

ResBlock(x, e):  h = conv3x3(SiLU(GN(x)))
                 plain:       h = SiLU(GN(h + W e))                           (DDPM, DDPM++)
                 scale-shift: h = SiLU(GN(h)·(1 + s) + b), (s, b) = W e       (adaptive group norm, iDDPM/ADM)
                 h = conv3x3(dropout(h))   (zero-initialized)
                 out = skip(x) + h, divided by √2 with ``skip_rescale`` (DDPM++ / NCSN++ / EDM)
  skip is a 1×1 conv when the width changes (and on resampling blocks with ``resample_skip_conv``,
  as in score_sde's BigGAN blocks and EDM; ADM keeps the identity there).

Down/up-sampling: a stride-2 conv3x3 / nearest ×2 then conv3x3 (DDPM), or with
``resblock_updown`` a BigGAN-style ResBlock that average-pools / nearest-upsamples both paths
after its first normalization (Brock et al. 2019; used by ADM and DDPM++).

Attention: GroupNorm, a per-position linear map (= 1×1 conv) to q, k, v, multi-head
``scaled_dot_product_attention`` over the H·W positions, a zero-initialized per-position output
projection, residual (÷√2 with ``skip_rescale``). Computed on (B, HW, C) tokens so that q, k, v
need no copies (and the token view is free for channels_last activations).

GroupNorm: 32 groups, fewer (at least 4 channels per group) for narrow layers; see ``group_norm``.
Heads: ``num_heads`` or, when set, ``num_head_channels`` per head (ADM: 64).

Configurations (conf/model/): DDPM CIFAR-10 35,746,307 parameters exactly; improved DDPM, DDPM++,
EDM's DDPM++ and ADM ImageNet-64 within 1% of the papers (differences stated in each config file).

The network works with channels_last inputs and under autocast (bf16/fp16); it knows nothing of
Lightning. ``forward(x, noise_label, class_labels=None)``; with ``learned_variance`` the output is
the prediction (C channels) then the variance interpolation (C channels), as ``Denoiser`` reads it.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_lab.nets.embeddings import TimeEmbeddingMLP, broadcast_label, make_noise_embedding

_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def group_norm(channels: int, groups: int = 32, eps: float = 1e-6) -> nn.GroupNorm:
    """GroupNorm with min(groups, channels/4) groups (score_sde's rule), lowered to a divisor of
    ``channels``. At least 4 channels per group matters: with one channel per group the
    normalization removes any per-channel offset, i.e. the additive time/label embedding of the
    plain ResBlock. Every paper config here has ≥ 128 channels, hence 32 groups."""
    g = max(1, min(groups, channels // 4))
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels, eps=eps)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block conditioned on the embedding e (see the module docstring)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_dim: int | None,
        dropout: float = 0.0,
        scale_shift: bool = False,
        skip_rescale: bool = False,
        resample: str | None = None,
        resample_skip_conv: bool = False,
        norm_groups: int = 32,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        if resample not in (None, "up", "down"):
            raise ValueError(f"resample must be None, 'up' or 'down', got {resample!r}.")
        self.resample = resample
        self.scale_shift = scale_shift
        self.skip_rescale = skip_rescale
        self.norm0 = group_norm(in_ch, norm_groups, norm_eps)
        self.conv0 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch * (2 if scale_shift else 1)) if emb_dim else None
        self.norm1 = group_norm(out_ch, norm_groups, norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        if in_ch != out_ch or (resample is not None and resample_skip_conv):
            self.skip = nn.Conv2d(in_ch, out_ch, 1)
        else:
            self.skip = nn.Identity()

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: Tensor, emb: Tensor | None) -> Tensor:
        h = F.silu(self.norm0(x))
        if self.resample is not None:
            h, x = self._resample(h), self._resample(x)
        # In-place updates below only touch conv outputs, which autograd does not save.
        h = self.conv0(h)
        if self.emb_proj is not None and emb is not None:
            e = self.emb_proj(emb)[:, :, None, None]
            if self.scale_shift:
                scale, shift = e.chunk(2, dim=1)
                h = torch.addcmul(shift, self.norm1(h), 1 + scale)
            else:
                h = self.norm1(h.add_(e))
        else:
            h = self.norm1(h)
        h = self.conv1(self.dropout(F.silu(h))).add_(self.skip(x))
        return h.mul_(_INV_SQRT2) if self.skip_rescale else h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over spatial positions through
    ``torch.nn.functional.scaled_dot_product_attention``."""

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int | None = None,
        skip_rescale: bool = False,
        norm_groups: int = 32,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        if num_head_channels:
            if channels % num_head_channels:
                raise ValueError(f"{channels} channels do not split into heads of {num_head_channels}.")
            num_heads = channels // num_head_channels
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} heads.")
        self.num_heads = num_heads
        self.skip_rescale = skip_rescale
        self.norm = group_norm(channels, norm_groups, norm_eps)
        self.qkv = nn.Linear(channels, 3 * channels)  # = a 1x1 conv, applied to (B, HW, C) tokens
        self.proj = _zero(nn.Linear(channels, channels))

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        b, c, hgt, wid = x.shape
        n, d = self.num_heads, c // self.num_heads
        # token-major layout, so that q, k, v come out with a unit last stride and
        # scaled_dot_product_attention needs no copies (free view for channels_last inputs)
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.qkv(tokens).view(b, hgt * wid, 3, n, d).permute(2, 0, 3, 1, 4).unbind(0)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, d)
        h = self.proj(h.transpose(1, 2).reshape(b, hgt * wid, c))
        out = h.transpose(1, 2).reshape(b, c, hgt, wid).add_(x)  # in place on the projection's output
        return out.mul_(_INV_SQRT2) if self.skip_rescale else out


class Downsample(nn.Module):
    """DDPM down-sampling: a stride-2 conv3x3 (or 2×2 average pooling without conv)."""

    def __init__(self, channels: int, with_conv: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if with_conv else None

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(x) if self.conv is not None else F.avg_pool2d(x, 2)


class Upsample(nn.Module):
    """DDPM up-sampling: nearest ×2, then a conv3x3."""

    def __init__(self, channels: int, with_conv: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if with_conv else None

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class EmbedSequential(nn.Sequential):
    """A sequence of blocks that each take (x, emb)."""

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb)
        return x


def as_tuple(values: Sequence[int] | int | None) -> tuple[int, ...]:
    if values is None:
        return ()
    if isinstance(values, int):
        return (values,)
    return tuple(int(v) for v in values)


class UNetEncoder(nn.Module):
    """The encoder half of the UNet (input conv, levels with down-sampling, middle block);
    shared by ``UNet`` and the noise-conditional classifier."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        emb_dim: int | None,
        dropout: float,
        num_heads: int,
        num_head_channels: int | None,
        resblock_updown: bool,
        resample_with_conv: bool,
        resample_skip_conv: bool,
        scale_shift_norm: bool,
        skip_rescale: bool,
        norm_groups: int,
        norm_eps: float,
        mid_attention: bool = True,
    ):
        super().__init__()
        if image_size % (2 ** (len(ch_mult) - 1)):
            raise ValueError(f"image_size {image_size} is not divisible by 2^{len(ch_mult) - 1} ({len(ch_mult)} levels).")
        res_kw = dict(
            emb_dim=emb_dim, dropout=dropout, scale_shift=scale_shift_norm, skip_rescale=skip_rescale,
            resample_skip_conv=resample_skip_conv, norm_groups=norm_groups, norm_eps=norm_eps,
        )
        attn_kw = dict(num_heads=num_heads, num_head_channels=num_head_channels, skip_rescale=skip_rescale,
                       norm_groups=norm_groups, norm_eps=norm_eps)
        self.res_kw, self.attn_kw = res_kw, attn_kw
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.blocks = nn.ModuleList()
        self.skip_channels = [ch]
        cur, res = ch, image_size
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(cur, ch * mult, **res_kw)]
                cur = ch * mult
                if res in attn_resolutions:
                    layers.append(AttentionBlock(cur, **attn_kw))
                self.blocks.append(EmbedSequential(*layers))
                self.skip_channels.append(cur)
            if level != len(ch_mult) - 1:
                if resblock_updown:
                    self.blocks.append(EmbedSequential(ResBlock(cur, cur, resample="down", **res_kw)))
                else:
                    self.blocks.append(EmbedSequential(Downsample(cur, resample_with_conv)))
                self.skip_channels.append(cur)
                res //= 2
        mid: list[nn.Module] = [ResBlock(cur, cur, **res_kw)]
        if mid_attention:
            mid.append(AttentionBlock(cur, **attn_kw))
        mid.append(ResBlock(cur, cur, **res_kw))
        self.mid = EmbedSequential(*mid)
        self.out_channels, self.out_resolution = cur, res

    def forward(self, x: Tensor, emb: Tensor | None) -> tuple[Tensor, list[Tensor]]:
        h = self.conv_in(x)
        skips = [h]
        for block in self.blocks:
            h = block(h, emb)
            skips.append(h)
        return self.mid(h, emb), skips


class UNet(nn.Module):
    """Diffusion UNet (DDPM / improved DDPM / ADM / DDPM++ / EDM-DDPM++ options).

    Args:
        in_channels, out_channels, image_size: data shape; the output has ``out_channels``
            channels, or ``2·out_channels`` with ``learned_variance`` (prediction first, then the
            variance interpolation v ∈ [−1, 1] of Nichol & Dhariwal 2021, Eq. 15, unbounded here).
        ch: base width; level ℓ has ``ch·ch_mult[ℓ]`` channels; the input conv has ``ch``.
        num_res_blocks: residual blocks per level in the encoder (the decoder has one more).
        attn_resolutions: spatial sizes (e.g. ``[16]``) where blocks carry self-attention.
        attn_decoder: ``"all"`` — every decoder block at those sizes has attention (DDPM, ADM,
            DDPM++), or ``"last"`` — only the last block of each decoder level (EDM's SongUNet).
        num_heads / num_head_channels: attention heads, or channels per head when set (ADM: 64).
        dropout: inside residual blocks.
        time_embedding: ``"sinusoidal"`` (DDPM) or ``"fourier"`` (Gaussian Fourier, NCSN++) of
            dimension ``ch``, followed by the 2-layer MLP of width ``emb_mult·ch``.
        resblock_updown: BigGAN residual up/down-sampling instead of conv resampling.
        resample_with_conv: conv in the plain resampling layers (DDPM: True).
        resample_skip_conv: 1×1 conv on the skip path of resampling residual blocks (score_sde, EDM).
        scale_shift_norm: adaptive group normalization GN(h)(1 + s) + b (iDDPM, ADM).
        skip_rescale: divide residual sums by √2 (DDPM++, NCSN++, EDM).
        num_classes: class-conditional with a label embedding of ``num_classes + 1`` rows; the last
            row (index ``num_classes``, also used for ``class_labels=None`` and negative labels)
            is the null label of classifier-free guidance.
        norm_groups, norm_eps: GroupNorm (32 groups; fewer for narrow layers, see ``group_norm``).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        image_size: int = 32,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] | int | None = (16,),
        attn_decoder: str = "all",
        num_heads: int = 1,
        num_head_channels: int | None = None,
        dropout: float = 0.1,
        time_embedding: str = "sinusoidal",
        fourier_scale: float = 16.0,
        emb_mult: int = 4,
        resblock_updown: bool = False,
        resample_with_conv: bool = True,
        resample_skip_conv: bool = False,
        scale_shift_norm: bool = False,
        skip_rescale: bool = False,
        learned_variance: bool = False,
        num_classes: int | None = None,
        mid_attention: bool = True,
        norm_groups: int = 32,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        ch_mult = as_tuple(ch_mult)
        attn_resolutions = as_tuple(attn_resolutions)
        if attn_decoder not in ("all", "last"):
            raise ValueError(f"attn_decoder must be 'all' or 'last', got {attn_decoder!r}.")
        self.in_channels, self.image_size = in_channels, image_size
        self.out_channels = out_channels * (2 if learned_variance else 1)
        self.learned_variance = learned_variance
        self.num_classes = int(num_classes) if num_classes else None

        emb_dim = emb_mult * ch
        self.noise_embed = make_noise_embedding(time_embedding, ch, fourier_scale)
        self.noise_mlp = TimeEmbeddingMLP(ch, emb_dim)
        self.label_embed = nn.Embedding(self.num_classes + 1, emb_dim) if self.num_classes else None

        self.encoder = UNetEncoder(
            in_channels, image_size, ch, ch_mult, num_res_blocks, attn_resolutions, emb_dim, dropout,
            num_heads, num_head_channels, resblock_updown, resample_with_conv, resample_skip_conv,
            scale_shift_norm, skip_rescale, norm_groups, norm_eps, mid_attention,
        )
        res_kw, attn_kw = self.encoder.res_kw, self.encoder.attn_kw
        skip_ch = list(self.encoder.skip_channels)
        cur, res = self.encoder.out_channels, self.encoder.out_resolution
        self.decoder = nn.ModuleList()
        for level in reversed(range(len(ch_mult))):
            for i in range(num_res_blocks + 1):
                layers: list[nn.Module] = [ResBlock(cur + skip_ch.pop(), ch * ch_mult[level], **res_kw)]
                cur = ch * ch_mult[level]
                if res in attn_resolutions and (attn_decoder == "all" or i == num_res_blocks):
                    layers.append(AttentionBlock(cur, **attn_kw))
                if level != 0 and i == num_res_blocks:
                    if resblock_updown:
                        layers.append(ResBlock(cur, cur, resample="up", **res_kw))
                    else:
                        layers.append(Upsample(cur, resample_with_conv))
                    res *= 2
                self.decoder.append(EmbedSequential(*layers))
        assert not skip_ch
        self.norm_out = group_norm(cur, norm_groups, norm_eps)
        self.conv_out = _zero(nn.Conv2d(cur, self.out_channels, 3, padding=1))

    @property
    def null_label(self) -> int | None:
        """The class index that means "no label" (classifier-free guidance), or None."""
        return self.num_classes

    def embed(self, noise_label: Tensor | float, batch: int, device: torch.device, dtype: torch.dtype,
              class_labels: Tensor | None = None) -> Tensor:
        """SiLU(MLP(embedding(noise label)) + label embedding): the e every block sees."""
        label = broadcast_label(noise_label, batch, device)
        emb = self.noise_mlp(self.noise_embed(label).to(dtype))
        if self.label_embed is not None:
            if class_labels is None:
                class_labels = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
            class_labels = class_labels.long()
            class_labels = torch.where(class_labels < 0, torch.full_like(class_labels, self.num_classes), class_labels)
            emb = emb + self.label_embed(class_labels).to(emb.dtype)
        elif class_labels is not None:
            raise ValueError("class_labels given to an unconditional UNet (set num_classes).")
        return F.silu(emb)

    def forward(self, x: Tensor, noise_label: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        emb = self.embed(noise_label, x.shape[0], x.device, x.dtype, class_labels)
        h, skips = self.encoder(x, emb)
        for block in self.decoder:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
