"""Metrics: FID / KID / IS numerics against independent float64 computations and closed forms, the
feature networks (Inception from a local weights file, the dataset classifier) and their caches, and
the low-dimensional metrics (sliced Wasserstein, MMD, exact NLL)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from diffusion_lab.data import DigitsDataModule, GaussianMixtureDataModule
from diffusion_lab.metrics import (ImageMetrics, InceptionFeatures, LowDimMetrics, build_feature_network, dataset_key,
                                   exact_nll, extract_features, frechet_distance, load_or_train_classifier, mmd_rbf,
                                   real_features, sliced_wasserstein, wasserstein2, write_random_inception_weights)
from diffusion_lab.metrics import features as features_mod


def _fid_scipy(a: np.ndarray, b: np.ndarray) -> float:
    """Independent FID: float64 moments and scipy's matrix square root."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(root)))


def _features(n: int, d: int, shift: float, seed: int) -> torch.Tensor:
    mix = torch.randn(d, d, generator=torch.Generator().manual_seed(1234)) / math.sqrt(d)  # one distribution per d
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g) @ (torch.eye(d) + mix) + shift).to(torch.float32)


def test_fid_through_torchmetrics_matches_scipy_float64():
    real, fake = _features(600, 16, 0.0, 1), _features(500, 16, 0.3, 2)
    m = ImageMetrics(["fid"], 16, n_fake=500, n_real=600)
    m.update_real(real[:250])  # in pieces, as batches arrive
    m.update_real(real[250:])
    m.update_fake(fake)
    ours = m.compute()["fid"]
    ref = _fid_scipy(real.double().numpy(), fake.double().numpy())
    assert ours == pytest.approx(ref, rel=1e-7)


def test_frechet_distance_closed_form_of_two_gaussians():
    # commuting (diagonal) covariances: FID = |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.0])
    a, b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    exact = float((mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(exact, rel=1e-12)
    # non-commuting: against scipy on the same matrices
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(5, 5, generator=g, dtype=torch.float64), torch.randn(5, 5, generator=g, dtype=torch.float64)
    S1, S2 = A @ A.T + 0.1 * torch.eye(5, dtype=torch.float64), B @ B.T + 0.1 * torch.eye(5, dtype=torch.float64)
    ref = float(np.trace(S1.numpy() + S2.numpy() - 2 * np.real(scipy.linalg.sqrtm(S1.numpy() @ S2.numpy()))))
    assert frechet_distance(torch.zeros(5), S1, torch.zeros(5), S2) == pytest.approx(ref, rel=1e-9)
    # and the sample-based FID of large samples from two known Gaussians approaches the closed form
    n = 40_000
    x = mu1 + a.sqrt() * torch.randn(n, 3, generator=g)
    y = mu2 + b.sqrt() * torch.randn(n, 3, generator=g)
    m = ImageMetrics(["fid"], 3, n_fake=n, n_real=n)
    m.update_real(x)
    m.update_fake(y)
    assert m.compute()["fid"] == pytest.approx(exact, rel=0.03)


def test_kid_is_the_unbiased_cubic_kernel_mmd():
    real, fake = _features(120, 8, 0.0, 3), _features(100, 8, 0.5, 4)
    m = ImageMetrics(["kid"], 8, n_fake=100, n_real=120, kid_subset_size=100)
    m.update_real(real)
    m.update_fake(fake)
    out = m.compute()
    # independent: every subset of size 100 of the fakes is all of them; of the reals, 100 of 120 —
    # so compare with subset size = n on both sides instead
    m2 = ImageMetrics(["kid"], 8, n_fake=100, n_real=100, kid_subset_size=100)
    m2.update_real(real[:100])
    m2.update_fake(fake)
    x, y = real[:100].double().numpy(), fake.double().numpy()
    k = lambda p, q: (p @ q.T / 8 + 1.0) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    mm = 100
    ref = (kxx.sum() - np.trace(kxx)) / (mm * (mm - 1)) + (kyy.sum() - np.trace(kyy)) / (mm * (mm - 1)) - 2 * kxy.mean()
    assert m2.compute()["kid"] == pytest.approx(ref, rel=1e-9)
    assert out["kid"] > 0.05  # shifted features: clearly positive
    same = ImageMetrics(["kid"], 8, n_fake=300, n_real=300, kid_subset_size=100, kid_subsets=50)
    same.update_real(_features(300, 8, 0.0, 5))
    same.update_fake(_features(300, 8, 0.0, 6))
    assert abs(same.compute()["kid"]) < 0.05 * out["kid"]  # unbiased: ~0 for one distribution


def test_inception_score_of_confident_uniform_classes():
    # confident predictions spread evenly over k classes: IS = exp(H(p(y)) - E H(p(y|x))) -> k
    k, n = 5, 500
    logits = torch.full((n, k), -30.0)
    logits[torch.arange(n), torch.arange(n) % k] = 30.0
    m = ImageMetrics(["is"], 4, n_fake=n, n_real=n, is_splits=1)
    m.update_fake(torch.zeros(n, 4), logits)
    assert m.compute()["is"] == pytest.approx(k, rel=1e-6)
    # all samples in one class: IS = 1
    m1 = ImageMetrics(["is"], 4, n_fake=n, n_real=n, is_splits=1)
    m1.update_fake(torch.zeros(n, 4), torch.nn.functional.one_hot(torch.zeros(n, dtype=torch.long), k) * 60.0)
    assert m1.compute()["is"] == pytest.approx(1.0, abs=1e-6)


def test_metrics_leave_the_global_rng_untouched():
    m = ImageMetrics(["kid", "is"], 4, n_fake=50, n_real=50, kid_subset_size=20, kid_subsets=5)
    m.update_real(_features(50, 4, 0, 1))
    m.update_fake(_features(50, 4, 0, 2), torch.randn(50, 3, generator=torch.Generator().manual_seed(0)))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = m.compute()
    assert torch.equal(state, torch.get_rng_state())
    assert m.compute() == a  # seeded: the same value every time (and on every rank)


def test_bad_metric_names_fail_with_one_sentence():
    with pytest.raises(ValueError, match="'swd'.*not an image metric"):
        ImageMetrics(["fid", "swd"], 4, n_fake=10, n_real=10)
    with pytest.raises(ValueError, match="'fid'.*not a low-dimensional metric"):
        LowDimMetrics(["fid"], torch.randn(10, 2))
    with pytest.raises(ValueError, match="no exact density"):
        LowDimMetrics(["nll"], torch.randn(10, 2))


# ------------------------------------------------------------------------------------- feature networks
def test_inception_features_from_a_local_weights_file(tmp_path):
    path = write_random_inception_weights(tmp_path / "inception.pth", seed=0)
    dm = DigitsDataModule()
    net = build_feature_network("inception", dm, inception_weights=str(path))
    assert isinstance(net, InceptionFeatures) and net.num_features == 2048
    x = dm.sample_data(2, "val")  # 1x8x8 in [-1, 1]: grey → RGB, TF1-compatible bilinear resize to 299
    f, logits = extract_features(net, x, batch_size=2)
    assert f.shape == (2, 2048) and logits.shape == (2, 1008) and torch.isfinite(f).all()
    # the protocol by hand: clamp, round to uint8, three channels, torch-fidelity's own forward
    u8 = (((x + 1) / 2).clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)
    ref_f, ref_l = net.net(u8)
    assert torch.equal(f, ref_f.float()) and torch.equal(logits, ref_l.float())
    # values past the range are clamped before the conversion (not wrapped around by uint8)
    f_over, _ = extract_features(net, x.clamp(-1, 1) * 1.5, batch_size=2)
    f_clamped, _ = extract_features(net, (x.clamp(-1, 1) * 1.5).clamp(-1, 1), batch_size=2)
    assert torch.equal(f_over, f_clamped)


def test_missing_inception_weights_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="evaluation.inception_weights=.*does not exist; download https://"):
        build_feature_network("inception", DigitsDataModule(), inception_weights=str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not an InceptionV3 state_dict"):
        build_feature_network("inception", DigitsDataModule(), inception_weights=str(bad))
    with pytest.raises(ValueError, match="evaluation.features='vgg' is not a feature network"):
        build_feature_network("vgg", DigitsDataModule())


def test_classifier_is_trained_once_cached_and_useful(tmp_path, monkeypatch):
    dm = DigitsDataModule()
    net = load_or_train_classifier(dm, cache_dir=tmp_path, progress=False, epochs=3)
    assert net.info["val_accuracy"] > 0.8  # a real classifier of the digits, even after 3 epochs
    x = dm.sample_data(16, "val")
    f, logits = extract_features(net, x)
    assert f.shape == (16, 128) and logits.shape == (16, 10)

    def boom(*a, **k):
        raise AssertionError("retrained although cached")

    monkeypatch.setattr(features_mod, "train_feature_classifier", boom)
    again = load_or_train_classifier(DigitsDataModule(batch_size=7), cache_dir=tmp_path, progress=False, epochs=3)
    assert again.key == net.key  # same weights (batch size is not part of what the data is)
    torch.testing.assert_close(extract_features(again, x)[0], f)
    with pytest.raises(ValueError, match="evaluation.classifier.epoch is not an option"):
        load_or_train_classifier(dm, cache_dir=tmp_path, epoch=3)


def test_classifier_features_need_labelled_images():
    with pytest.raises(ValueError, match="is for images"):
        build_feature_network("classifier", GaussianMixtureDataModule(n_train=10, n_val=10))


def test_real_features_cached_per_dataset_split_network_and_n(tmp_path):
    dm = DigitsDataModule()
    calls = []

    class Tiny(features_mod.FeatureNetwork):
        key, num_features = "tiny-0", 3

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(64, 3, generator=torch.Generator().manual_seed(0)))

        def forward(self, x):
            calls.append(len(x))
            f = x.flatten(1) @ self.w
            return f, f

    net = Tiny()
    a = real_features(net, dm, "train", 50, cache_dir=tmp_path, progress=False)
    b = real_features(net, dm, "train", 50, cache_dir=tmp_path, progress=False)
    assert calls == [50] and torch.equal(a, b)
    real_features(net, dm, "train", 40, cache_dir=tmp_path, progress=False)
    real_features(net, dm, "val", 40, cache_dir=tmp_path, progress=False)
    assert calls == [50, 40, 40]
    files = sorted(p.name for p in (tmp_path / "real_features").glob("*.pt"))
    key = dataset_key(dm)
    assert files == sorted([f"{key}_train_tiny-0_50.pt", f"{key}_train_tiny-0_40.pt", f"{key}_val_tiny-0_40.pt"])
    blob = torch.load(tmp_path / "real_features" / files[0], weights_only=True)
    assert blob["mu"].dtype == torch.float64 and blob["sigma"].dtype == torch.float64
    with pytest.raises(ValueError, match="evaluation.real_split='dev' is not a split"):
        real_features(net, dm, "dev", 10, cache_dir=tmp_path)


# ------------------------------------------------------------------------------------- low-dimensional
def test_sliced_wasserstein_closed_form_and_pot():
    # SW_2(N(0, I), N(m, I)) in d dims: every projection is a 1-D shift by θ·m, E(θ·m)^2 = |m|^2 / d
    d, n = 3, 4000
    g = torch.Generator().manual_seed(0)
    m = torch.tensor([1.0, -2.0, 0.5])
    x, y = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g) + m
    exact = float(m.norm() / math.sqrt(d))
    assert sliced_wasserstein(x, y, n_projections=1000, seed=0) == pytest.approx(exact, rel=0.05)
    assert sliced_wasserstein(x, torch.randn(n, d, generator=g), n_projections=200) < 0.1
    assert sliced_wasserstein(x, y, seed=3) == sliced_wasserstein(x, y, seed=3)  # deterministic
    # the exact 1-D quantile integral, also for sets of different sizes: against POT on one direction
    import ot

    a, b = torch.randn(37, 1, generator=g), torch.randn(53, 1, generator=g) * 2 + 1
    pot = float(ot.wasserstein_1d(a[:, 0].double().numpy(), b[:, 0].double().numpy(), p=2)) ** 0.5
    assert sliced_wasserstein(a, b, n_projections=3) == pytest.approx(pot, rel=1e-10)


def test_exact_w2_between_point_sets():
    # two sets that differ by a translation t: the optimal coupling is the translation, W2 = |t|
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 2, generator=g)
    t = torch.tensor([3.0, 4.0])
    assert wasserstein2(x, x + t) == pytest.approx(5.0, rel=1e-9)
    assert wasserstein2(x, x[torch.randperm(200, generator=g)]) == pytest.approx(0.0, abs=1e-9)


def test_mmd_is_unbiased_and_detects_a_shift():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(400, 2, generator=g)
    same = [mmd_rbf(torch.randn(200, 2, generator=g), ref) for _ in range(20)]
    shifted = mmd_rbf(torch.randn(200, 2, generator=g) + 1.0, ref)
    assert abs(float(np.mean(same))) < 0.1 * shifted and min(same) < 0 < shifted  # unbiased: can go negative
    # independent estimate with one bandwidth
    x, y, h = torch.randn(30, 2, generator=g).double(), torch.randn(40, 2, generator=g).double() + 0.3, 0.7
    kern = lambda a, b: torch.exp(-torch.cdist(a, b) ** 2 / (2 * h * h))  # noqa: E731
    kxx, kyy, kxy = kern(x, x), kern(y, y), kern(x, y)
    ref_val = ((kxx.sum() - kxx.trace()) / (30 * 29) + (kyy.sum() - kyy.trace()) / (40 * 39) - 2 * kxy.mean()).item()
    assert mmd_rbf(x, y, [h]) == pytest.approx(ref_val, rel=1e-12)


def test_exact_nll_on_the_gaussian_mixture_oracle():
    dm = GaussianMixtureDataModule(n_train=2000, n_val=2000)
    dm.setup()
    mix = dm.mixture
    data = dm.sample_data(2000, "val")
    assert exact_nll(data, mix) == pytest.approx(float(-mix.log_prob_data(data.double()).mean()), rel=1e-12)
    m = LowDimMetrics(["swd", "w2", "mmd", "nll"], data, mixture=mix)
    m.update_fake(mix.sample(2000, torch.Generator().manual_seed(5)).float())
    good = m.compute()
    assert good["nll"] == pytest.approx(good["nll_data"], abs=0.1)  # the true distribution: NLL ≈ entropy
    bad = LowDimMetrics(["swd", "w2", "mmd", "nll"], data, mixture=mix)
    bad.update_fake(torch.randn(2000, 2, generator=torch.Generator().manual_seed(6)) * 3)
    worse = bad.compute()
    assert worse["nll"] > good["nll"] + 0.5 and worse["swd"] > 3 * good["swd"] and worse["mmd"] > 10 * abs(good["mmd"])
    assert worse["w2"] > 3 * good["w2"]
