"""Reading checkpoints safely. diffusion_lab checkpoints hold plain containers and tensors only (the
config is saved resolved, as dicts and lists), so they load with ``torch.load(weights_only=True)``;
a truncated, corrupt or foreign file gives one sentence instead of a pickle traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from diffusion_lab.errors import CheckpointError


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and sanity-check a diffusion_lab checkpoint (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; give the path of a .ckpt file (ckpt_path=...).")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, random bytes, pickled foreign objects, ...
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:120]}); it is truncated, "
            "corrupt or not a diffusion_lab checkpoint — use an intact .ckpt (e.g. the previous step_*.ckpt)."
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt.get("hyper_parameters", {}):
        raise CheckpointError(
            f"checkpoint {path} is not a diffusion_lab checkpoint (no state_dict or saved config); "
            "give a checkpoint written by python -m diffusion_lab.train."
        )
    return ckpt


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_differences(saved: dict, current: dict, groups: tuple[str, ...]) -> list[str]:
    """``key: saved → current`` for every value of ``groups`` that differs between two resolved configs."""
    diffs = []
    for g in groups:
        a, b = _flatten(saved.get(g) or {}, f"{g}."), _flatten(current.get(g) or {}, f"{g}.")
        for key in sorted(set(a) | set(b)):
            if a.get(key, "<unset>") != b.get(key, "<unset>"):
                diffs.append(f"{key}: {a.get(key, '<unset>')} → {b.get(key, '<unset>')}")
    return diffs


def state_dict_differences(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> list[str]:
    """Keys missing from ``found``, unexpected in it, or of another shape than in ``expected``."""
    diffs = [f"missing {k}" for k in expected if k not in found]
    diffs += [f"unexpected {k}" for k in found if k not in expected]
    diffs += [f"{k}: shape {tuple(found[k].shape)} in the checkpoint, {tuple(v.shape)} in this model"
              for k, v in expected.items() if k in found and tuple(found[k].shape) != tuple(v.shape)]
    return diffs
