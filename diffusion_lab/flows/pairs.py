"""Reflow pairs on disk: (noise, sample) pairs drawn by a trained flow with an ODE sampler (Liu et al.
2023, "Flow Straight and Fast", Alg. 1: the coupling (Z_0, Z_1) of a k-rectified flow, on which the
(k+1)-rectified flow is trained).

Our convention: data at t = 0, noise at t = 1. Pair i is (z_i, x_i): z_i ~ N(0, I) (unit variance; the
sampler starts from x(t_max) = σ(t_max) z_i, the prior of ``Schedule.prior_sample``) and x_i the ODE
solution at t = 0. Liu et al.'s Z_0 is our z, their Z_1 our x.

Layout of ``out``:

    manifest.json         what made the pairs: checkpoint, its dataset config, the sampler (name, steps,
                          grid, options), n, chunk_size, seed, data shape; once every chunk exists also
                          the per-chunk NFE and seeds and the mean NFE per sample
    chunk_00000.pt ...    {"noise": (m, *shape) float32, "sample": (m, *shape) float32, "nfe", "seconds",
                          "seed", "chunk"}, written atomically (temporary file, then rename)

Chunk c holds pairs c·chunk_size ... ; its noise comes from a CPU generator seeded
``chunk_seed(seed, c) = seed · 1_000_003 + c`` and the sampler's own noise (none for an ODE sampler) from
one seeded ``chunk_seed + 1``, so a chunk is the same whichever rank draws it and whenever. Rank r of W
draws the chunks c ≡ r (mod W) and skips those already on disk: an interrupted run resumes by running
the same command again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from diffusion_lab.errors import ConfigError, DataError

MANIFEST = "manifest.json"
#: manifest keys that must agree for a resumed run to add chunks to an existing folder
IDENTITY = ("ckpt_path", "sampler", "n", "chunk_size", "seed", "shape", "use_ema")


def chunk_seed(seed: int, chunk: int) -> int:
    """The seed of chunk ``chunk``'s noise (module docstring)."""
    return int(seed) * 1_000_003 + int(chunk)


def chunk_path(out: Path, chunk: int) -> Path:
    return Path(out) / f"chunk_{chunk:05d}.pt"


def chunk_noise(seed: int, chunk: int, size: int, shape: Sequence[int]) -> Tensor:
    """The unit-variance noise z of a chunk, float64 (float32 on disk)."""
    g = torch.Generator().manual_seed(chunk_seed(seed, chunk))
    return torch.randn((size, *shape), generator=g, dtype=torch.float64)


def chunk_sizes(n: int, chunk_size: int) -> list[int]:
    return [min(chunk_size, n - s) for s in range(0, n, chunk_size)]


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _write_json(path: Path, obj: dict) -> None:
    _atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=True)))


@torch.no_grad()
def draw_chunk(denoiser, sampler, seed: int, chunk: int, size: int, shape: Sequence[int],
               device: torch.device | str = "cpu") -> dict[str, Any]:
    """One chunk of pairs: its noise z, the sampler's solution from x(t_max) = σ(t_max) z, the NFE."""
    z = chunk_noise(seed, chunk, size, shape)
    x_T = (z * denoiser.schedule.prior_std()).to(device)
    g = torch.Generator(device=device).manual_seed(chunk_seed(seed, chunk) + 1)
    res = sampler(denoiser, x_T=x_T, generator=g, progress=False)
    return {"noise": z.float(), "sample": res.x.detach().float().cpu(), "nfe": int(res.nfe),
            "seconds": float(res.seconds), "seed": chunk_seed(seed, chunk), "chunk": int(chunk)}


def generate_pairs(denoiser, sampler, out: str | Path, n: int, shape: Sequence[int], chunk_size: int = 1000,
                   seed: int = 0, rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
                   progress: bool = True, info: dict | None = None) -> dict[str, Any]:
    """Draw this rank's missing chunks into ``out`` (module docstring); returns a summary. ``info`` goes into
    the manifest (checkpoint path, dataset config, ...); its IDENTITY keys must match an existing manifest."""
    if n < 1 or chunk_size < 1:
        raise ConfigError(f"n={n} and chunk_size={chunk_size} must be positive integers.")
    if not (world_size >= 1 and 0 <= rank < world_size):
        raise ConfigError(f"rank={rank} must lie in [0, world_size={world_size}); give each process its own rank.")
    if sampler.spec.stochastic:
        raise ConfigError(f"sampler={sampler.name} is stochastic, but reflow pairs must be the deterministic coupling of "
                          "the flow's ODE; choose an ODE sampler (euler, heun, rk4, dopri5, dpm_solver_pp_2m, ...).")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = chunk_sizes(int(n), int(chunk_size))
    manifest = {**(info or {}), "n": int(n), "chunk_size": int(chunk_size), "n_chunks": len(sizes), "seed": int(seed),
                "shape": list(shape), "noise": "unit normal z; the sampler starts at sigma(t_max) * z",
                "sampler": {"name": sampler.name, "steps": sampler.steps, "grid": sampler.grid, "label": sampler.label,
                            "visit_t_min": sampler.visit_t_min, "options": dict(sampler.options)},
                "chunk_seed": "seed * 1000003 + chunk (noise); + 1 for the sampler's own generator"}
    manifest = json.loads(json.dumps(manifest, default=str))
    path = out / MANIFEST
    if path.is_file():
        old = json.loads(path.read_text())
        diffs = [k for k in IDENTITY if old.get(k) != manifest.get(k)]
        if diffs:
            raise ConfigError(f"out={out} holds pairs made with other settings ({', '.join(diffs)} differ); resume with the "
                              "same settings, or choose a new out folder.")
        manifest = {**manifest, **{k: v for k, v in old.items() if k in ("chunks", "nfe_per_sample", "complete")}}
    else:
        _write_json(path, manifest)
    mine = list(range(rank, len(sizes), world_size))
    todo = [c for c in mine if not chunk_path(out, c).is_file()]
    drawn, nfe = 0, 0
    for c in tqdm(todo, desc=f"reflow pairs (rank {rank}/{world_size})", disable=not progress, dynamic_ncols=True):
        chunk = draw_chunk(denoiser, sampler, seed, c, sizes[c], shape, device)
        _atomic_write(chunk_path(out, c), lambda p: torch.save(chunk, p))
        drawn += 1
        nfe += chunk["nfe"]
    summary = {"out": str(out), "rank": rank, "world_size": world_size, "chunks_drawn": drawn,
               "chunks_skipped": len(mine) - len(todo), "nfe_drawn": nfe}
    if all(chunk_path(out, c).is_file() for c in range(len(sizes))):
        summary["complete"] = True
        finish_manifest(out)
    return summary


def finish_manifest(out: str | Path) -> dict:
    """Add each chunk's NFE and seed, and the mean NFE per sample, to a complete folder's manifest."""
    out = Path(out)
    manifest = json.loads((out / MANIFEST).read_text())
    chunks = []
    for c in range(manifest["n_chunks"]):
        d = torch.load(chunk_path(out, c), map_location="cpu", weights_only=True)
        chunks.append({"chunk": c, "size": int(d["noise"].shape[0]), "nfe": int(d["nfe"]), "seed": int(d["seed"]),
                       "seconds": float(d["seconds"])})
    manifest["chunks"] = chunks
    # the NFE of a batch is the NFE of each of its samples (one network call serves the whole batch)
    manifest["nfe_per_sample"] = sum(c["nfe"] * c["size"] for c in chunks) / max(1, sum(c["size"] for c in chunks))
    manifest["complete"] = True
    _write_json(out / MANIFEST, manifest)
    return manifest


def read_manifest(path: str | Path) -> dict:
    p = Path(path) / MANIFEST
    if not p.is_file():
        raise DataError(f"dataset.path={path} has no {MANIFEST}; make pairs first with "
                        "`python -m diffusion_lab.reflow_pairs ckpt_path=... out=...`.")
    return json.loads(p.read_text())


def load_pairs(path: str | Path) -> tuple[Tensor, Tensor, dict]:
    """(noise, sample, manifest) of a complete pairs folder; a missing chunk is one sentence."""
    manifest = read_manifest(path)
    missing = [c for c in range(manifest["n_chunks"]) if not chunk_path(Path(path), c).is_file()]
    if missing:
        raise DataError(f"dataset.path={path} is incomplete ({len(missing)} of {manifest['n_chunks']} chunks missing, "
                        f"e.g. {missing[:3]}); rerun reflow_pairs with the same settings to finish it.")
    noise, sample = [], []
    for c in range(manifest["n_chunks"]):
        d = torch.load(chunk_path(Path(path), c), map_location="cpu", weights_only=True)
        noise.append(d["noise"])
        sample.append(d["sample"])
    return torch.cat(noise), torch.cat(sample), manifest
