"""Datasets: embedded sets, torchvision files read from a folder the test writes in the real IDX
format, clear errors, deterministic sharded shuffling."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch

from diffusion_lab.errors import DataError
from diffusion_lab.data import (DigitsDataModule, EpochSeededSampler, GaussianMixtureDataModule, ImageTransform,
                                ResumableDataLoader, TorchvisionDataModule, ToyDataModule, TOY_SETS, make_toy)
from diffusion_lab.data.base import TransformedTensorDataset


def _write_idx_images(path, images: np.ndarray) -> None:
    n, h, w = images.shape
    path.write_bytes(struct.pack(">IIII", 0x00000803, n, h, w) + images.astype(np.uint8).tobytes())


def _write_idx_labels(path, labels: np.ndarray) -> None:
    path.write_bytes(struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes())


def _fake_mnist(root, n_train=12, n_test=5):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    tr = rng.integers(0, 256, (n_train, 28, 28))
    te = rng.integers(0, 256, (n_test, 28, 28))
    _write_idx_images(raw / "train-images-idx3-ubyte", tr)
    _write_idx_labels(raw / "train-labels-idx1-ubyte", np.arange(n_train) % 10)
    _write_idx_images(raw / "t10k-images-idx3-ubyte", te)
    _write_idx_labels(raw / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10)
    return tr, te


def test_mnist_reads_idx_files_from_data_dir(tmp_path):
    tr, te = _fake_mnist(tmp_path)
    dm = TorchvisionDataModule("mnist", data_dir=str(tmp_path), batch_size=4, val_fraction=0.25)
    dm.setup()
    assert dm.data_shape == (1, 28, 28) and dm.num_classes == 10
    assert len(dm.train_set) == 9 and len(dm.val_set) == 3 and len(dm.test_set) == 5
    x, y = dm.test_set[2]
    assert torch.allclose(x[0], torch.from_numpy(te[2]).float() / 255 * 2 - 1)  # exact [-1, 1] scaling
    assert int(y) == 2
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (4, 1, 28, 28) and xb.min() >= -1 and xb.max() <= 1


def test_missing_dataset_names_directory_and_download_override(tmp_path):
    dm = TorchvisionDataModule("mnist", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as e:
        dm.setup()
    msg = str(e.value)
    assert str((tmp_path / "nowhere").resolve()) in msg and "dataset.download=true" in msg


def test_dataset_metadata_mismatch_is_rejected():
    with pytest.raises(ValueError, match="dataset.channels=3"):
        TorchvisionDataModule("mnist", channels=3)


def test_image_transform_scaling_and_dequantization():
    img = torch.tensor([[[0, 255, 128]]], dtype=torch.uint8)
    assert torch.allclose(ImageTransform("[-1,1]")(img), torch.tensor([[[-1.0, 1.0, 128 / 255 * 2 - 1]]]), atol=1e-6)
    assert torch.allclose(ImageTransform("[0,1]")(img), torch.tensor([[[0.0, 1.0, 128 / 255]]]))
    torch.manual_seed(0)
    deq = torch.stack([ImageTransform("[0,1]", dequantize=True)(img) for _ in range(2000)])
    # (k + U)/256: within the bin [k/256, (k+1)/256), mean (k + 1/2)/256
    k = img.float()
    assert (deq >= k / 256).all() and (deq < (k + 1) / 256).all()
    assert torch.allclose(deq.mean(0), (k + 0.5) / 256, atol=3e-4)


def test_random_flip_flips_half_the_time():
    torch.manual_seed(0)
    img = torch.arange(4, dtype=torch.uint8).reshape(1, 1, 4) * 60
    tf = ImageTransform("[0,1]", random_flip=True)
    flips = sum(bool(tf(img)[0, 0, 0] > 0.5) for _ in range(2000))
    assert abs(flips / 2000 - 0.5) < 0.05


def test_digits_module_range_labels_and_split():
    dm = DigitsDataModule(batch_size=32, val_fraction=0.1, test_fraction=0.1)
    dm.setup()
    n = len(dm.train_set) + len(dm.val_set) + len(dm.test_set)
    assert n == 1797 and abs(len(dm.val_set) - 180) <= 1
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 8, 8) and x.min() >= -1 and x.max() <= 1 and y.dtype == torch.int64
    train_ids = {tuple(dm.train_set[i][0].flatten().tolist()) for i in range(50)}
    assert len(train_ids) == 50


@pytest.mark.parametrize("name", TOY_SETS)
def test_toy_sets_are_2d_standardish_and_seeded(name):
    a, b = make_toy(name, 4000, seed=1), make_toy(name, 4000, seed=1)
    assert a.shape == (4000, 2) and torch.equal(a, b)
    assert 0.2 < float(a.std(0).mean()) < 3.0 and float(a.mean(0).abs().max()) < 0.6


def test_toy_set_geometry():
    r = make_toy("eight_gaussians", 8000).norm(dim=1)
    assert abs(float(r.mean()) - 2.0) < 0.02
    rings = make_toy("rings", 8000).norm(dim=1)
    assert ((rings - 1).abs() < 0.25).float().mean() > 0.45 and ((rings - 2).abs() < 0.25).float().mean() > 0.45
    cb = make_toy("checkerboard", 8000)
    parity = (torch.floor(cb[:, 0]) + torch.floor(cb[:, 1])) % 2
    assert bool((parity == 0).all())  # only the "black" squares


def test_gmm_dataset_matches_its_oracle():
    dm = GaussianMixtureDataModule(dim=3, components=2, n_train=20000, n_val=100)
    dm.setup()
    x = torch.stack([dm.train_set[i][0] for i in range(len(dm.train_set))]).double()
    se = dm.mixture.covariance().diagonal().sqrt() / math.sqrt(len(x))
    assert ((x.mean(0) - dm.mixture.mean()).abs() < 5 * se).all()


def test_epoch_seeded_sampler_is_deterministic_and_shards():
    s = EpochSeededSampler(10, seed=3)
    s.set_epoch(2)
    first = list(s)
    s.set_epoch(5)
    s.set_epoch(2)
    assert list(s) == first and sorted(first) == list(range(10))
    r0, r1 = EpochSeededSampler(10, 3, rank=0, world_size=2), EpochSeededSampler(10, 3, rank=1, world_size=2)
    for r in (r0, r1):
        r.set_epoch(2)
    assert set(r0).isdisjoint(set(r1)) and len(list(r0)) == len(list(r1)) == 5


def test_batch_size_must_divide_across_ranks():
    dm = ToyDataModule(batch_size=255)
    dm._world = lambda: (0, 2)  # as under a 2-process DDP trainer
    with pytest.raises(ValueError, match="batch_size=255 does not divide across 2 processes"):
        dm.per_rank_batch_size()
    dm.batch_size = 256
    assert dm.per_rank_batch_size() == 128


def _augmented_loader(num_workers: int = 0, epoch: int = 1) -> ResumableDataLoader:
    images = torch.arange(40 * 4, dtype=torch.int64).reshape(40, 1, 1, 4).mul(7).remainder(256).to(torch.uint8)
    ds = TransformedTensorDataset(images, torch.arange(40), ImageTransform("[-1,1]", dequantize=True, random_flip=True))
    sampler = EpochSeededSampler(len(ds), seed=5, item_seeds=ds.random)
    sampler.set_epoch(epoch)
    return ResumableDataLoader(ds, batch_size=4, sampler=sampler, drop_last=True, num_workers=num_workers)


def test_augmentations_depend_only_on_seed_epoch_and_item():
    """Flips and dequantization noise come from a generator seeded per (seed, epoch, item): the same
    batches with or without worker processes, and the global generator is not touched."""
    state = torch.get_rng_state()
    main = [b[0] for b in _augmented_loader(0)]
    assert torch.equal(torch.get_rng_state(), state)
    workers = [b[0] for b in _augmented_loader(2)]
    assert all(torch.equal(a, b) for a, b in zip(main, workers)) and len(main) == len(workers) == 10
    # each epoch draws new augmentations for the same item (labels are the item indices here)
    by_item = lambda loader: {int(y): x for xb, yb in loader for x, y in zip(xb, yb)}  # noqa: E731
    epoch1, epoch2 = by_item(_augmented_loader(0)), by_item(_augmented_loader(0, epoch=2))
    both = epoch1.keys() & epoch2.keys()
    assert len(both) >= 30 and all(not torch.equal(epoch1[i], epoch2[i]) for i in both)
    # dequantized values stay in their bins: (k + u)/256 with u in [0, 1), mapped to [-1, 1]
    x = torch.cat(main)
    assert bool((x > -1).all() and (x < 1).all())


def test_loader_state_resumes_at_the_next_batch_of_the_epoch():
    full = [b for b in _augmented_loader(0)]
    cut = _augmented_loader(0)
    it = iter(cut)
    first = [next(it) for _ in range(3)]
    state = cut.state_dict()
    assert state == {"epoch": 1, "batches": 3}
    resumed = _augmented_loader(0, epoch=0)  # a fresh loader; its epoch comes from the state
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == 7 and resumed.state_dict() == {"epoch": 1, "batches": 10}
    for (xa, ya), (xb, yb) in zip(full, first + rest):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    again = list(resumed)  # the next pass over the epoch is whole again
    assert len(again) == 10


def test_a_resume_point_of_another_epoch_is_ignored():
    loader = _augmented_loader(0, epoch=3)
    loader.load_state_dict({"epoch": 3, "batches": 10})  # saved at the end of epoch 3
    loader.sampler.set_epoch(4)  # Lightning moves on to epoch 4
    assert len(list(loader)) == 10
