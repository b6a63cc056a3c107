"""Pictures of samples: image batches as one PNG grid, 2-D vectors as a scatter plot."""

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


def save_scatter(x: torch.Tensor, path: str | Path) -> Path:
    """Save 2-D points as a square scatter plot (matplotlib's object API: no global pyplot state)."""
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(4, 4), dpi=80)
    ax = fig.subplots()
    ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=4, alpha=0.6)
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path)
    return path


def save_picture(x: torch.Tensor, data_shape: tuple[int, ...], path: str | Path, value_range: str = "[-1,1]") -> Path | None:
    """The picture of a batch of samples: a grid for images (in ``value_range``), a scatter plot for 2-D
    vectors, nothing (None) for other shapes."""
    x = x.detach().float().cpu()
    if len(data_shape) == 3:
        return save_grid(x if value_range == "[-1,1]" else x * 2.0 - 1.0, path)
    if tuple(data_shape) == (2,):
        return save_scatter(x, path)
    return None
