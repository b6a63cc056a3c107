"""A residual MLP with a noise-level embedding, for 2-D and low-dimensional data (Gaussian
mixtures, the toy sets).

    e = SiLU(MLP(embedding(noise label)) [+ class embedding])      (as in the UNet)
    h = Linear(in_dim, hidden)(x)
    num_layers × [ h ← h + Linear(SiLU(Linear(SiLU(h)) + W e)) ]     (zero-initialized last layer)
    out = Linear(SiLU(h), out_dim)   (2·out_dim with learned variance)

The residual form with the embedding added inside each block is the usual toy-data denoiser
(e.g. the 2-D experiments of Song et al. 2021 and of the flow-matching papers use a few hidden
layers of 128–512 units with the time concatenated or added); residual blocks make 4–6 layers
train as easily as 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_lab.nets.embeddings import TimeEmbeddingMLP, broadcast_label, make_noise_embedding


class _MLPBlock(nn.Module):
    def __init__(self, hidden: int, emb_dim: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb = nn.Linear(emb_dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = F.silu(self.fc1(F.silu(h)) + self.emb(emb))
        return h + self.fc2(self.dropout(z))


class MLP(nn.Module):
    """Time-conditioned residual MLP: ``forward(x, noise_label, class_labels=None)`` with x of
    shape (B, in_dim); returns (B, out_dim), or (B, 2·out_dim) with ``learned_variance``.

    ``num_classes`` adds a label embedding with a null label (index ``num_classes``, also used
    for ``class_labels=None`` and negative labels), as in ``UNet``.
    """

    def __init__(
        self,
        in_dim: int = 2,
        out_dim: int | None = None,
        hidden_dim: int = 256,
        num_layers: int = 4,
        emb_dim: int = 128,
        time_embedding: str = "sinusoidal",
        fourier_scale: float = 16.0,
        dropout: float = 0.0,
        learned_variance: bool = False,
        num_classes: int | None = None,
    ):
        super().__init__()
        out_dim = in_dim if out_dim is None else out_dim
        self.in_dim = in_dim
        self.out_dim = out_dim * (2 if learned_variance else 1)
        self.learned_variance = learned_variance
        self.num_classes = int(num_classes) if num_classes else None
        self.noise_embed = make_noise_embedding(time_embedding, emb_dim, fourier_scale)
        self.noise_mlp = TimeEmbeddingMLP(emb_dim, emb_dim)
        self.label_embed = nn.Embedding(self.num_classes + 1, emb_dim) if self.num_classes else None
        self.inp = nn.Linear(in_dim, hidden_dim)
        self.blocks = nn.ModuleList(_MLPBlock(hidden_dim, emb_dim, dropout) for _ in range(num_layers))
        self.out = nn.Linear(hidden_dim, self.out_dim)

    @property
    def null_label(self) -> int | None:
        return self.num_classes

    def forward(self, x: Tensor, noise_label: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"MLP expects x of shape (B, {self.in_dim}), got {tuple(x.shape)}.")
        label = broadcast_label(noise_label, x.shape[0], x.device)
        emb = self.noise_mlp(self.noise_embed(label).to(x.dtype))
        if self.label_embed is not None:
            if class_labels is None:
                class_labels = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            class_labels = class_labels.long()
            class_labels = torch.where(class_labels < 0, torch.full_like(class_labels, self.num_classes), class_labels)
            emb = emb + self.label_embed(class_labels).to(emb.dtype)
        elif class_labels is not None:
            raise ValueError("class_labels given to an unconditional MLP (set num_classes).")
        emb = F.silu(emb)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(h))
