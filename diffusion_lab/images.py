"""Image helpers: [-1, 1] tensors to PNG grids."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torchvision


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → [0, 1], clamped (clamp before any conversion to uint8)."""
    return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def save_grid(x: torch.Tensor, path: str | Path, nrow: int | None = None, min_size: int = 256) -> Path:
    """Save a batch of images in [-1, 1] as one PNG grid, upscaled (nearest) so small images stay visible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nrow = nrow or int(math.ceil(math.sqrt(x.shape[0])))
    grid = torchvision.utils.make_grid(to_unit(x.detach().cpu()), nrow=nrow, padding=1, pad_value=1.0)
    scale = max(1, int(math.ceil(min_size / max(grid.shape[-1], 1))))
    if scale > 1:
        grid = torch.nn.functional.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
    torchvision.utils.save_image(grid, path)
    return path
