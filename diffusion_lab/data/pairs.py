"""Reflow pairs as a dataset: ``dataset=pairs dataset.path=<folder of diffusion_lab.reflow_pairs>``.

Training batches are dicts ``{"x0": sample, "noise": z}``: pair i's sample and the noise it was drawn
from, so that the rectified-flow loss regresses v((1 − t) x_i + t z_i, t) onto z_i − x_i with the
coupling kept (Liu et al. 2023, reflow; ``RectifiedFlowLoss(noise=...)``). Validation, test and the
evaluation's real data come from the *reference* datamodule, by default the dataset the teacher was
trained on (recorded in the pairs' manifest), so that metrics compare against the real data, not the
teacher's samples; its ``mixture`` (Gaussian-mixture oracle) is passed through.
"""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from torch.utils.data import Dataset

from diffusion_lab.data.base import DiffusionDataModule
from diffusion_lab.flows.pairs import load_pairs, read_manifest


class PairsDataset(Dataset):
    """Item i: {"x0": sample_i, "noise": z_i}."""

    random = False

    def __init__(self, noise: torch.Tensor, sample: torch.Tensor):
        if noise.shape != sample.shape:
            raise ValueError(f"pairs have noise of shape {tuple(noise.shape)} but samples of {tuple(sample.shape)}.")
        self.noise, self.sample = noise, sample

    def __len__(self) -> int:
        return len(self.sample)

    def __getitem__(self, key):
        i = key[0] if isinstance(key, tuple) else key
        return {"x0": self.sample[i], "noise": self.noise[i]}


class PairsDataModule(DiffusionDataModule):
    """Pairs for training; the reference datamodule (the teacher's dataset unless ``reference`` is given)
    for validation, test and evaluation statistics."""

    num_classes = None

    def __init__(self, path: str, reference: dict | None = None, batch_size: int = 256, seed: int = 0,
                 num_workers: int = 0, dim: int | None = None, channels: int | None = None,
                 image_size: int | None = None):
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.path = str(path)
        manifest = read_manifest(self.path)
        self.manifest = manifest
        self.data_shape = tuple(manifest["shape"])
        ref_cfg = dict(reference) if reference else manifest.get("dataset")
        if not ref_cfg:
            raise ValueError(f"dataset.path={path}: the manifest records no dataset; set dataset.reference to the "
                             "real data's datamodule config.")
        self.reference = instantiate(ref_cfg)
        while isinstance(self.reference, PairsDataModule):  # pairs of a k-RF trained on pairs: the real data underneath
            self.reference = self.reference.reference
        if tuple(self.reference.data_shape) != self.data_shape:
            raise ValueError(f"dataset.reference has data of shape {tuple(self.reference.data_shape)} but the pairs "
                             f"{self.data_shape}; use the dataset the teacher was trained on.")
        self.dim = getattr(self.reference, "dim", None)
        if dim is not None and len(self.data_shape) == 1 and int(dim) != self.data_shape[0]:
            raise ValueError(f"dataset.dim={dim} but the pairs at {path} are {self.data_shape[0]}-dimensional; set "
                             f"dataset.dim={self.data_shape[0]} (the model's in_dim reads it).")
        if len(self.data_shape) == 3:
            c, h, _ = self.data_shape
            if (channels is not None and int(channels) != c) or (image_size is not None and int(image_size) != h):
                raise ValueError(f"dataset.channels={channels}, dataset.image_size={image_size} but the pairs at {path} are "
                                 f"images of shape {self.data_shape}; set them to {c} and {h} (the model reads them).")
        self.channels = self.data_shape[0] if len(self.data_shape) == 3 else None
        self.image_size = self.data_shape[1] if len(self.data_shape) == 3 else None
        self.mixture = getattr(self.reference, "mixture", None)
        self.value_range = getattr(self.reference, "value_range", None)
        self.eval_tf = getattr(self.reference, "eval_tf", None)

    @property
    def evaluation_data(self) -> DiffusionDataModule:
        """The real data the evaluation compares against (its feature classifier and statistics): the reference."""
        return self.reference

    def _load(self):
        noise, sample, _ = load_pairs(self.path)
        self.reference.setup()
        return PairsDataset(noise, sample), self.reference.val_set, self.reference.test_set

    def sample_data(self, n: int, split: str = "train") -> torch.Tensor:
        """Real data of the reference (the metrics' target), not the teacher's samples."""
        return self.reference.sample_data(n, split)
