"""NCSN++ (Song et al. 2021b, "Score-Based Generative Modeling through Stochastic Differential
Equations", Sec. 4.4 and App. H): the score network of the VE recipe.

What sets it apart from the DDPM UNet (``nets.unet``):

* **FIR resampling** (Karras et al. 2019/2020, StyleGAN2's ``upfirdn2d``): up- and down-sampling filter
  with the separable kernel k ⊗ k, k = [1, 3, 3, 1] normalised to sum 1 (×4 for up-sampling, so that a
  constant image stays constant). In one dimension, with zero padding outside the signal,

      down:  y[i]    = (x[2i−1] + 3·x[2i] + 3·x[2i+1] + x[2i+2]) / 8
      up:    y[2m]   = (x[m−1] + 3·x[m]) / 4,      y[2m+1] = (3·x[m] + x[m+1]) / 4

  and a resampling convolution applies the filter after a stride-2 transposed conv (up) or before a
  stride-2 conv (down) (``FIRConv2d``).
* **BigGAN residual blocks** that resample both paths with the FIR filter, a 1×1 conv on the skip path
  when the width changes or the block resamples, residual sums divided by √2 (``skip_rescale``).
* **Progressive input** (``progressive_input``): the input image is carried down a pyramid beside the
  encoder — ``input_skip``: FIR-downsampled and added (1×1 conv, ``combine`` sum or cat) after each
  down-sampling; ``residual``: a FIR conv down-sampling of the pyramid added to the features, ÷√2.
* **Progressive output** (``progressive``): ``output_skip``: every decoder level emits an image
  (GroupNorm, SiLU, conv3×3 to C channels) added to the FIR-upsampled image of the level below, the top
  one being the output; ``residual``: the same with feature maps and FIR conv up-sampling.
* **Gaussian Fourier time embedding** (Tancik et al. 2020): sin/cos of 2π·label·f with nf fixed random
  frequencies f ~ N(0, 16²), then Linear(2nf, 4nf), SiLU, Linear(4nf, 4nf).
* GroupNorm with min(C/4, 32) groups, ε = 1e-6; attention with one head on 1×1 projections.

The CIFAR-10 VE configuration (score_sde ``configs/ve/cifar10_ncsnpp_continuous.py``): nf 128, mult
(1, 2, 2, 2), 4 blocks per level, attention at 16×16, BigGAN blocks, FIR, progressive input ``residual``
(sum), progressive output ``none``, dropout 0.1, Fourier scale 16: 62,758,787 parameters here; score_sde's
NCSN++ counts 62,758,915 because it also stores its 128 fixed Fourier frequencies as a (non-trainable)
parameter, which is a buffer here (paper: 62.8M; the deep variant with 8 blocks: 107.6M).

Differences from score_sde that change no parameter: the noise label is whatever the parameterization
feeds (``time_scale``·t; score_sde feeds log σ, an affine function of t on the VE schedule), the output is
not divided by σ (the parameterization layer reads the output), and the data are not re-centred to
[−1, 1] inside the network. ``forward(x, noise_label)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_lab.nets.embeddings import broadcast_label, make_noise_embedding

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")


# ----------------------------------------------------------------------------------- FIR filtering
def fir_kernel(k: Sequence[float], gain: float = 1.0) -> Tensor:
    """The separable 2-D kernel k ⊗ k normalised to sum ``gain``."""
    k1 = torch.as_tensor(k, dtype=torch.float64)
    k2 = torch.outer(k1, k1)
    return k2 / k2.sum() * gain


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Up-sample by zero insertion, pad (before, after) with zeros, convolve with ``kernel``, keep every
    ``down``-th pixel — per channel (StyleGAN2's upfirdn2d)."""
    b, c, h, w = x.shape
    y = x.reshape(b * c, 1, h, w)
    if up > 1:
        z = y.new_zeros(b * c, 1, h * up, w * up)
        z[:, :, ::up, ::up] = y
        y = z
    y = F.pad(y, (pad[0], pad[1], pad[0], pad[1]))
    k = kernel.flip(-1, -2).to(dtype=y.dtype, device=y.device)[None, None]  # convolution, not correlation
    y = F.conv2d(y, k)
    y = y[:, :, ::down, ::down]
    return y.reshape(b, c, y.shape[-2], y.shape[-1])


def upsample_2d(x: Tensor, k: Sequence[float] = (1, 3, 3, 1)) -> Tensor:
    """×2 FIR up-sampling (a constant image stays constant away from the border)."""
    p = len(k) - 2
    return upfirdn2d(x, fir_kernel(k, gain=4.0), up=2, pad=((p + 1) // 2 + 1, p // 2))


def downsample_2d(x: Tensor, k: Sequence[float] = (1, 3, 3, 1)) -> Tensor:
    """×½ FIR down-sampling."""
    p = len(k) - 2
    return upfirdn2d(x, fir_kernel(k), down=2, pad=((p + 1) // 2, p // 2))


class FIRConv2d(nn.Module):
    """A 3×3 convolution fused with ×2 FIR up-sampling (transposed stride-2 conv, then the filter) or ×½
    FIR down-sampling (the filter, then a stride-2 conv), with bias."""

    def __init__(self, in_ch: int, out_ch: int, up: bool = False, down: bool = False,
                 kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        if up == down:
            raise ValueError("FIRConv2d resamples: set exactly one of up / down.")
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.up, self.kernel = up, tuple(kernel)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.to(x.dtype)
        if self.up:
            p = (len(self.kernel) - 2) - 2
            y = F.conv_transpose2d(x, w.flip(-1, -2).transpose(0, 1), stride=2)
            y = upfirdn2d(y, fir_kernel(self.kernel, gain=4.0), pad=((p + 1) // 2 + 1, p // 2 + 1))
        else:
            p = (len(self.kernel) - 2) + 2
            y = F.conv2d(upfirdn2d(x, fir_kernel(self.kernel), pad=((p + 1) // 2, p // 2)), w, stride=2)
        return y + self.bias.to(x.dtype)[None, :, None, None]


# ----------------------------------------------------------------------------------- blocks
def group_norm(channels: int) -> nn.GroupNorm:
    """score_sde's GroupNorm: min(C/4, 32) groups, ε = 1e-6."""
    return nn.GroupNorm(min(channels // 4, 32), channels, eps=1e-6)


class BigGANBlock(nn.Module):
    """Residual block; ``up`` / ``down`` FIR-resample both paths after the first normalization."""

    def __init__(self, in_ch: int, out_ch: int | None, emb_dim: int, dropout: float, up: bool = False,
                 down: bool = False, kernel: Sequence[float] = (1, 3, 3, 1), skip_rescale: bool = True):
        super().__init__()
        out_ch = out_ch or in_ch
        self.norm0, self.conv0 = group_norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.dense = nn.Linear(emb_dim, out_ch)
        self.norm1, self.drop = group_norm(out_ch), nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv1.weight)
        nn.init.zeros_(self.conv1.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if (in_ch != out_ch or up or down) else None
        self.up, self.down, self.kernel, self.skip_rescale = up, down, tuple(kernel), skip_rescale

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = F.silu(self.norm0(x))
        if self.up:
            h, x = upsample_2d(h, self.kernel), upsample_2d(x, self.kernel)
        elif self.down:
            h, x = downsample_2d(h, self.kernel), downsample_2d(x, self.kernel)
        h = self.conv0(h) + self.dense(F.silu(emb))[:, :, None, None]
        h = self.conv1(self.drop(F.silu(self.norm1(h))))
        x = self.skip(x) if self.skip is not None else x
        return (x + h) * _INV_SQRT2 if self.skip_rescale else x + h


class Attention(nn.Module):
    """Single-head self-attention over the H·W positions with 1×1 q, k, v and output projections."""

    def __init__(self, channels: int, skip_rescale: bool = True):
        super().__init__()
        self.norm = group_norm(channels)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.skip_rescale = skip_rescale

    def forward(self, x: Tensor) -> Tensor:
        b, c, hh, ww = x.shape
        h = self.norm(x)
        q, k, v = (f(h).flatten(2).transpose(1, 2) for f in (self.q, self.k, self.v))  # (B, HW, C)
        a = F.scaled_dot_product_attention(q, k, v)
        h = self.proj(a.transpose(1, 2).reshape(b, c, hh, ww))
        return (x + h) * _INV_SQRT2 if self.skip_rescale else x + h


# ----------------------------------------------------------------------------------- the network
class NCSNpp(nn.Module):
    """NCSN++ (see the module docstring).

    Args:
        in_channels, out_channels, image_size: data shape (image_size divisible by 2^(levels − 1)).
        nf: base width; level ℓ has nf·ch_mult[ℓ] channels.
        num_res_blocks: blocks per encoder level (the decoder has one more per level).
        attn_resolutions: spatial sizes with self-attention (after each encoder block, once per decoder level).
        dropout, fourier_scale: as named; fir_kernel: the 1-D FIR taps.
        progressive: ``none`` | ``output_skip`` | ``residual`` (the output pyramid).
        progressive_input: ``none`` | ``input_skip`` | ``residual`` (the input pyramid).
        combine: ``sum`` | ``cat`` (how ``input_skip`` joins the pyramid to the features).
        skip_rescale: divide residual sums by √2.
    """

    def __init__(self, in_channels: int = 3, out_channels: int | None = None, image_size: int = 32, nf: int = 128,
                 ch_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 4, attn_resolutions: Sequence[int] = (16,),
                 dropout: float = 0.1, fourier_scale: float = 16.0, fir_kernel: Sequence[float] = (1, 3, 3, 1),
                 progressive: str = "none", progressive_input: str = "residual", combine: str = "sum",
                 skip_rescale: bool = True, time_embedding: str = "fourier", learned_variance: bool = False,
                 num_classes: int | None = None):
        super().__init__()
        if progressive not in PROGRESSIVE:
            raise ValueError(f"model.progressive={progressive!r}; choose one of {PROGRESSIVE}.")
        if progressive_input not in PROGRESSIVE_INPUT:
            raise ValueError(f"model.progressive_input={progressive_input!r}; choose one of {PROGRESSIVE_INPUT}.")
        if combine not in ("sum", "cat"):
            raise ValueError(f"model.combine={combine!r}; choose sum or cat.")
        if learned_variance or num_classes is not None:
            raise ValueError("model=ncsnpp has no learned-variance output or class embedding (score_sde's NCSN++ has "
                             "neither); use the UNet (model=unet_*) for those.")
        levels = len(ch_mult)
        if image_size % (2 ** (levels - 1)):
            raise ValueError(f"model.image_size={image_size} must be divisible by 2^{levels - 1} for {levels} levels.")
        out_channels = out_channels or in_channels
        self.learned_variance, self.num_classes = False, None
        self.progressive, self.progressive_input, self.combine = progressive, progressive_input, combine
        self.skip_rescale, self.attn_resolutions, self.levels = skip_rescale, tuple(attn_resolutions), levels
        self.num_res_blocks, self.kernel = num_res_blocks, tuple(fir_kernel)
        emb = 4 * nf
        self.embed = make_noise_embedding(time_embedding, 2 * nf, fourier_scale)
        self.emb_mlp = nn.Sequential(nn.Linear(2 * nf, emb), nn.SiLU(), nn.Linear(emb, emb))

        def block(cin: int, cout: int | None = None, up: bool = False, down: bool = False) -> BigGANBlock:
            return BigGANBlock(cin, cout, emb, dropout, up=up, down=down, kernel=fir_kernel, skip_rescale=skip_rescale)

        res = [image_size // 2 ** i for i in range(levels)]
        self.conv_in = nn.Conv2d(in_channels, nf, 3, padding=1)
        skips, ch, pyr = [nf], nf, in_channels
        self.enc_blocks, self.enc_attn = nn.ModuleList(), nn.ModuleList()
        self.downs, self.pyr_down = nn.ModuleList(), nn.ModuleList()
        for lvl in range(levels):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(block(ch, nf * ch_mult[lvl]))
                ch = nf * ch_mult[lvl]
                attns.append(Attention(ch, skip_rescale) if res[lvl] in self.attn_resolutions else nn.Identity())
                skips.append(ch)
            self.enc_blocks.append(blocks)
            self.enc_attn.append(attns)
            if lvl == levels - 1:
                continue
            self.downs.append(block(ch, down=True))
            if progressive_input == "input_skip":
                self.pyr_down.append(nn.Conv2d(pyr, ch, 1))  # the 1×1 conv of the combination
                ch = 2 * ch if combine == "cat" else ch
            elif progressive_input == "residual":
                self.pyr_down.append(FIRConv2d(pyr, ch, down=True, kernel=fir_kernel))
                pyr = ch
            skips.append(ch)
        self.mid = nn.ModuleList([block(ch), Attention(ch, skip_rescale), block(ch)])
        self.dec_blocks, self.dec_attn, self.ups = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        self.pyr_out = nn.ModuleList()
        pyr_ch = 0
        for lvl in reversed(range(levels)):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(block(ch + skips.pop(), nf * ch_mult[lvl]))
                ch = nf * ch_mult[lvl]
            self.dec_blocks.append(blocks)
            self.dec_attn.append(Attention(ch, skip_rescale) if res[lvl] in self.attn_resolutions else nn.Identity())
            if progressive == "output_skip":
                self.pyr_out.append(nn.ModuleDict({"norm": group_norm(ch), "conv": nn.Conv2d(ch, out_channels, 3, padding=1)}))
            elif progressive == "residual":
                if lvl == levels - 1:
                    self.pyr_out.append(nn.ModuleDict({"norm": group_norm(ch), "conv": nn.Conv2d(ch, ch, 3, padding=1)}))
                else:
                    self.pyr_out.append(nn.ModuleDict({"up": FIRConv2d(pyr_ch, ch, up=True, kernel=fir_kernel)}))
                pyr_ch = ch
            if lvl != 0:
                self.ups.append(block(ch, up=True))
        assert not skips
        if progressive != "output_skip":
            self.norm_out, self.conv_out = group_norm(ch), nn.Conv2d(ch, out_channels, 3, padding=1)

    def forward(self, x: Tensor, noise_label: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        if class_labels is not None:
            raise ValueError("model=ncsnpp is not class-conditional; sample without class labels.")
        label = broadcast_label(noise_label, x.shape[0], x.device)
        emb = self.emb_mlp(self.embed(label).to(x.dtype))
        pyramid = x if self.progressive_input != "none" else None
        hs = [self.conv_in(x)]
        for lvl in range(self.levels):
            for blk, attn in zip(self.enc_blocks[lvl], self.enc_attn[lvl]):
                hs.append(attn(blk(hs[-1], emb)))
            if lvl == self.levels - 1:
                continue
            h = self.downs[lvl](hs[-1], emb)
            if self.progressive_input == "input_skip":
                pyramid = downsample_2d(pyramid, self.kernel)
                skip = self.pyr_down[lvl](pyramid)
                h = torch.cat([skip, h], dim=1) if self.combine == "cat" else skip + h
            elif self.progressive_input == "residual":
                pyramid = self.pyr_down[lvl](pyramid)
                pyramid = (pyramid + h) * _INV_SQRT2 if self.skip_rescale else pyramid + h
                h = pyramid
            hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](hs[-1], emb)), emb)
        out_pyr = None
        for i, lvl in enumerate(reversed(range(self.levels))):
            for blk in self.dec_blocks[i]:
                h = blk(torch.cat([h, hs.pop()], dim=1), emb)
            h = self.dec_attn[i](h)
            if self.progressive == "output_skip":
                img = self.pyr_out[i]["conv"](F.silu(self.pyr_out[i]["norm"](h)))
                out_pyr = img if out_pyr is None else upsample_2d(out_pyr, self.kernel) + img
            elif self.progressive == "residual":
                if out_pyr is None:
                    out_pyr = self.pyr_out[i]["conv"](F.silu(self.pyr_out[i]["norm"](h)))
                else:
                    out_pyr = self.pyr_out[i]["up"](out_pyr)
                    out_pyr = (out_pyr + h) * _INV_SQRT2 if self.skip_rescale else out_pyr + h
                    h = out_pyr
            if lvl != 0:
                h = self.ups[i](h, emb)
        if self.progressive == "output_skip":
            return out_pyr
        return self.conv_out(F.silu(self.norm_out(h)))
