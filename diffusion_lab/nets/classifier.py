"""Classifiers: a noise-conditional one for classifier guidance and a clean-image one used as the
feature network of FID on MNIST-like data.

``NoiseConditionalClassifier`` — the classifier of classifier guidance (Dhariwal & Nichol 2021,
Sec. 4 and Appendix: guided-diffusion's EncoderUNetModel): the UNet's encoder half (input conv,
levels with down-sampling, middle block; the same blocks and options as ``UNet``) conditioned on
the noise label, then GroupNorm → SiLU → global average pooling → Linear to the class logits.
It is trained with cross-entropy on noisy x_t at random t; guidance uses ∇_x log p_φ(y | x_t, t).

``FeatureClassifier`` — a small clean-image CNN (VGG-style: two conv-BN-ReLU pairs per stage,
max-pooling between stages, global average pooling, a ``feature_dim`` bottleneck, a linear head).
``features(x)`` returns the bottleneck activations, the analogue of Inception's 2048-d pool
features when FID is computed with a network trained on the dataset itself (MNIST on a CPU, or
wherever the Inception weights cannot be downloaded).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_lab.nets.embeddings import TimeEmbeddingMLP, broadcast_label, make_noise_embedding
from diffusion_lab.nets.unet import UNetEncoder, as_tuple, group_norm


class NoiseConditionalClassifier(nn.Module):
    """p_φ(y | x_t, t): UNet encoder half + pooled linear head. ``forward(x, noise_label)``
    returns logits of shape (B, num_classes). Options as in ``UNet``."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        image_size: int = 32,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] | int | None = (16,),
        num_heads: int = 1,
        num_head_channels: int | None = None,
        dropout: float = 0.0,
        time_embedding: str = "sinusoidal",
        fourier_scale: float = 16.0,
        emb_mult: int = 4,
        resblock_updown: bool = False,
        resample_with_conv: bool = True,
        resample_skip_conv: bool = False,
        scale_shift_norm: bool = False,
        skip_rescale: bool = False,
        mid_attention: bool = True,
        norm_groups: int = 32,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.in_channels, self.image_size = in_channels, image_size
        emb_dim = emb_mult * ch
        self.noise_embed = make_noise_embedding(time_embedding, ch, fourier_scale)
        self.noise_mlp = TimeEmbeddingMLP(ch, emb_dim)
        self.encoder = UNetEncoder(
            in_channels, image_size, ch, as_tuple(ch_mult), num_res_blocks, as_tuple(attn_resolutions),
            emb_dim, dropout, num_heads, num_head_channels, resblock_updown, resample_with_conv,
            resample_skip_conv, scale_shift_norm, skip_rescale, norm_groups, norm_eps, mid_attention,
        )
        cur = self.encoder.out_channels
        self.norm_out = group_norm(cur, norm_groups, norm_eps)
        self.head = nn.Linear(cur, num_classes)

    def forward(self, x: Tensor, noise_label: Tensor | float) -> Tensor:
        label = broadcast_label(noise_label, x.shape[0], x.device)
        emb = F.silu(self.noise_mlp(self.noise_embed(label).to(x.dtype)))
        h, _ = self.encoder(x, emb)
        h = F.silu(self.norm_out(h)).mean(dim=(2, 3))
        return self.head(h)

    def log_prob(self, x: Tensor, noise_label: Tensor | float, y: Tensor) -> Tensor:
        """log p_φ(y | x_t) of shape (B,)."""
        return torch.log_softmax(self.forward(x, noise_label).float(), dim=-1).gather(1, y.long()[:, None])[:, 0]


class FeatureClassifier(nn.Module):
    """Small clean-image CNN classifier; ``features(x)`` is the ``feature_dim``-d feature vector
    used by FID/KID on MNIST-like data, ``forward(x)`` the logits.

    Stages of widths ``widths`` (default 32, 64, 128), each conv3x3-BN-ReLU ×2, with 2×2
    max-pooling between stages, global average pooling, Linear → ReLU (the features), dropout,
    Linear head. Call ``.eval()`` before extracting features (batch norm, dropout).
    Inputs in [−1, 1] with ``in_channels`` channels and any size ≥ 2^(stages−1).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        widths: Sequence[int] = (32, 64, 128),
        feature_dim: int = 128,
        dropout: float = 0.3,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        cur = in_channels
        for i, w in enumerate(as_tuple(widths)):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            for _ in range(2):
                layers += [nn.Conv2d(cur, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                cur = w
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(cur, feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        self.num_classes = num_classes

    def features(self, x: Tensor) -> Tensor:
        """The (B, feature_dim) feature vector (post-ReLU bottleneck)."""
        h = self.body(x).mean(dim=(2, 3))
        return F.relu(self.fc(h))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(x)))
