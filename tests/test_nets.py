"""Networks: parameter counts of the paper configurations, output shapes of every config, the
learned-variance head, the null label, skip connections that carry information, batch
independence, channels_last / autocast, and torch.compile agreement."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF
from diffusion_lab.nets import MLP, FeatureClassifier, NoiseConditionalClassifier, UNet, count_parameters

CIFAR = {"channels": 3, "image_size": 32}
# config -> (dataset keys, parameter count of the paper, relative tolerance; 0 = exact)
PAPER = {
    "unet_ddpm_cifar10": (CIFAR, 35_746_307, 0.0),
    "unet_iddpm_cifar10": (CIFAR, 52.5e6, 0.01),
    "unet_ddpmpp_cifar10": (CIFAR, 61.8e6, 0.01),
    "unet_edm_ddpmpp_cifar10": (CIFAR, 55.7e6, 0.01),
    "unet_adm_imagenet64": ({"channels": 3, "image_size": 64}, 295.9e6, 0.01),
}
SMALL = {
    "unet_digits": ({"channels": 1, "image_size": 8}, 1_080_161),
    "unet_mnist": ({"channels": 1, "image_size": 28}, 1_742_881),
    "unet_cifar_small": (CIFAR, 4_118_051),
}


def model_cfg(name: str, dataset: dict, **overrides):
    node = OmegaConf.load(CONF / "model" / f"{name}.yaml")
    cfg = OmegaConf.merge({"dataset": dataset}, {"model": node}, {"model": overrides})
    return cfg.model


def randomize_(module: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Fill the zero-initialized layers (residual branch outputs, output conv) with small noise so
    that outputs depend on everything."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


@pytest.fixture(autouse=True)
def one_thread():
    """Small networks run faster on one thread (OpenMP barriers crawl on a shared 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_unet(**kw) -> UNet:
    args = dict(in_channels=1, out_channels=1, image_size=8, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                attn_resolutions=[4], num_heads=2, dropout=0.0)
    args.update(kw)
    return UNet(**args)


# --- parameter counts -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_parameter_counts(name):
    dataset, expected, rtol = PAPER[name]
    with torch.device("meta"):  # count without allocating (ADM has 296M parameters)
        model = instantiate(model_cfg(name, dataset))
    n = count_parameters(model)
    if rtol == 0:
        assert n == expected
    else:
        assert abs(n - expected) <= rtol * expected, f"{name}: {n:,} vs paper {expected:,.0f}"


def test_exact_counts_of_documented_variants():
    """The counts written in the config comments (regression guard for the architecture)."""
    exact = {"unet_iddpm_cifar10": 52_546_438, "unet_ddpmpp_cifar10": 61_804_419,
             "unet_edm_ddpmpp_cifar10": 55_732_739, "unet_adm_imagenet64": 295_905_222}
    for name, n in exact.items():
        with torch.device("meta"):
            model = instantiate(model_cfg(name, PAPER[name][0]))
        assert count_parameters(model) == n, name
    for name, (dataset, n) in SMALL.items():
        assert count_parameters(instantiate(model_cfg(name, dataset))) == n, name


# --- output shapes ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_config_shapes(name):
    dataset, _ = SMALL[name]
    model = instantiate(model_cfg(name, dataset)).eval()
    c, s = dataset["channels"], dataset["image_size"]
    x = torch.randn(2, c, s, s)
    with torch.no_grad():
        out = model(x, torch.tensor([3.0, 900.0]))
    assert out.shape == x.shape


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_config_shapes_narrow(name):
    """Each paper config's layout at its real image size, with the width cut to 32 channels (fast)."""
    dataset, _, _ = PAPER[name]
    model = instantiate(model_cfg(name, dataset, ch=32, num_head_channels=None)).eval()
    c, s = dataset["channels"], dataset["image_size"]
    x = torch.randn(1, c, s, s)
    labels = torch.tensor([7]) if model.num_classes else None
    with torch.no_grad():
        out = model(x, torch.tensor([10.0]), labels)
    assert out.shape == (1, c * (2 if model.learned_variance else 1), s, s)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_config_shapes_full(name):
    dataset, _, _ = PAPER[name]
    model = instantiate(model_cfg(name, dataset)).eval()
    c, s = dataset["channels"], dataset["image_size"]
    with torch.no_grad():
        out = model(torch.randn(1, c, s, s), torch.tensor([10.0]), torch.tensor([1]) if model.num_classes else None)
    assert out.shape == (1, c * (2 if model.learned_variance else 1), s, s)


def test_mlp_config_and_shapes():
    model = instantiate(model_cfg("mlp", {"dim": 2}))
    assert isinstance(model, MLP)
    assert model(torch.randn(5, 2), torch.rand(5) * 1000).shape == (5, 2)
    assert model(torch.randn(5, 2), 0.3).shape == (5, 2)  # scalar label
    lv = MLP(in_dim=3, learned_variance=True, hidden_dim=32, num_layers=2, emb_dim=16)
    assert lv(torch.randn(4, 3), torch.rand(4)).shape == (4, 6)
    with pytest.raises(ValueError, match="expects x of shape"):
        model(torch.randn(5, 1, 8, 8), torch.rand(5))


def test_unet_accepts_scalar_label_and_rejects_bad_sizes():
    model = tiny_unet()
    assert model(torch.randn(3, 1, 8, 8), 5.0).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="not divisible"):
        tiny_unet(image_size=6, ch_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.randn(3, 1, 8, 8), 5.0, torch.tensor([0, 1, 2]))


# --- heads and conditioning -------------------------------------------------------------------


def test_learned_variance_head_through_denoiser():
    from diffusion_lab.denoiser import Denoiser
    from diffusion_lab.schedules.discrete import DDPMLinearSchedule

    model = randomize_(tiny_unet(learned_variance=True, scale_shift_norm=True)).eval()
    x = torch.randn(4, 1, 8, 8)
    out = model(x, torch.full((4,), 500.0))
    assert out.shape == (4, 2, 8, 8)
    # the prediction half does not depend on how the variance half is read, and vice versa
    den = Denoiser(model, DDPMLinearSchedule(), "eps", learned_variance=True)
    pred = den(x.double(), torch.full((4,), 0.5, dtype=torch.float64))
    assert pred.var_interp is not None and pred.var_interp.shape == x.shape
    torch.testing.assert_close(pred.eps, out[:, :1].double(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pred.var_interp, (out[:, 1:].double() + 1) / 2, atol=1e-5, rtol=1e-5)
    # at initialization the output conv is zero: the variance starts midway between β and β̃
    fresh = tiny_unet(learned_variance=True)
    assert torch.all(fresh(x, 500.0) == 0)


@pytest.mark.parametrize("kind", ["unet", "mlp"])
def test_null_label_is_the_unconditional_model(kind):
    torch.manual_seed(0)
    if kind == "unet":
        model = randomize_(tiny_unet(num_classes=10)).eval()
        x = torch.randn(4, 1, 8, 8)
    else:
        model = randomize_(MLP(in_dim=2, hidden_dim=32, num_layers=2, emb_dim=16, num_classes=10)).eval()
        x = torch.randn(4, 2)
    with torch.no_grad():
        model.label_embed.weight.normal_()  # make labels matter
        t = torch.full((4,), 300.0)
        none = model(x, t)
        null = model(x, t, torch.full((4,), model.null_label))
        neg = model(x, t, torch.full((4,), -1))
        y3 = model(x, t, torch.full((4,), 3))
        y5 = model(x, t, torch.full((4,), 5))
    torch.testing.assert_close(none, null)
    torch.testing.assert_close(none, neg)
    assert not torch.allclose(y3, y5, atol=1e-4)
    assert not torch.allclose(y3, null, atol=1e-4)
    assert not torch.allclose(model(x, t * 0.5, torch.full((4,), 3)), y3, atol=1e-4)  # the noise label matters
    assert model.null_label == 10


def test_time_embeddings_and_options_build_and_differ():
    x = torch.randn(2, 1, 8, 8)
    outs = []
    for kw in [dict(), dict(time_embedding="fourier"), dict(resblock_updown=True, resample_skip_conv=True, skip_rescale=True),
               dict(scale_shift_norm=True, num_head_channels=4), dict(attn_decoder="last")]:
        torch.manual_seed(0)
        model = randomize_(tiny_unet(**kw)).eval()
        with torch.no_grad():
            outs.append(model(x, torch.tensor([0.5, -1.2])))  # EDM-style c_noise labels
        assert outs[-1].shape == x.shape and torch.isfinite(outs[-1]).all()
    assert not torch.allclose(outs[0], outs[1])


# --- structure: skips, batch independence ------------------------------------------------------


def test_skip_connections_carry_full_resolution_detail():
    """Learning the identity on fresh white noise through a 2x2x8 bottleneck is only possible through
    the skip connections: a UNet with its skips cut plateaus near 0.7 (measured), one with
    only the top skips cut near 0.035; the intact one reaches ~0.004 within 200 steps."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = tiny_unet(ch_mult=(1, 1, 1), attn_resolutions=[4])
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    losses = []
    for _ in range(200):
        x = torch.randn(32, 1, 8, 8, generator=g)
        loss = F.mse_loss(model(x, torch.rand(32, generator=g) * 1000), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) / 20 < 0.015, losses[-20:]


def test_outputs_are_independent_across_the_batch():
    model = randomize_(tiny_unet(num_classes=3)).eval()
    x = torch.randn(4, 1, 8, 8)
    t = torch.tensor([1.0, 200.0, 600.0, 999.0])
    y = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        full = model(x, t, y)
        single = torch.cat([model(x[i : i + 1], t[i : i + 1], y[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(full, single, atol=1e-5, rtol=1e-4)


def test_every_input_pixel_reaches_every_output_pixel():
    """Attention at 4x4 plus the middle block give a global receptive field."""
    model = randomize_(tiny_unet()).eval()
    x = torch.randn(1, 1, 8, 8, requires_grad=True)
    model(x, 100.0)[0, 0, 0, 0].backward()
    assert (x.grad.abs() > 0).all()


# --- fast paths ---------------------------------------------------------------------------------


def test_channels_last_and_autocast():
    model = randomize_(tiny_unet(ch=16, scale_shift_norm=True)).eval()
    x = torch.randn(3, 1, 8, 8)
    t = torch.tensor([5.0, 50.0, 500.0])
    with torch.no_grad():
        ref = model(x, t)
        cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        out_cl = cl_model(x.to(memory_format=torch.channels_last), t)
        torch.testing.assert_close(out_cl, ref, atol=1e-5, rtol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_bf = model(x, t)
    assert torch.isfinite(out_bf).all()
    assert (out_bf.float() - ref).abs().max() < 0.05 * ref.abs().max() + 1e-3


def test_backward_under_autocast_gives_float32_grads():
    model = tiny_unet()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(torch.randn(2, 1, 8, 8), 10.0).float().pow(2).mean() + 0 * sum(p.sum() for p in model.parameters())
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def test_compile_matches_eager_aot_eager():
    """Graph capture through dynamo (aot_eager backend: no C++ compiler, seconds)."""
    model = randomize_(tiny_unet(num_classes=4)).eval()
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3.0, 700.0]), torch.tensor([1, 4])
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t, y), model(x, t, y), atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_compile_matches_eager_inductor():
    model = randomize_(tiny_unet(scale_shift_norm=True, resblock_updown=True)).eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3.0, 700.0])
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t), model(x, t), atol=1e-4, rtol=1e-3)


# --- classifiers --------------------------------------------------------------------------------


def test_noise_conditional_classifier_trains_on_noisy_inputs_and_gives_input_gradients():
    torch.manual_seed(0)
    clf = NoiseConditionalClassifier(in_channels=1, num_classes=2, image_size=8, ch=8, ch_mult=(1, 2),
                                     num_res_blocks=1, attn_resolutions=[4], num_heads=2)
    # two classes: bright top half vs bright bottom half, seen through noise
    base = torch.zeros(2, 1, 8, 8)
    base[0, :, :4], base[1, :, 4:] = 1.0, 1.0
    opt = torch.optim.Adam(clf.parameters(), 3e-3)
    for _ in range(60):
        y = torch.randint(0, 2, (32,))
        t = torch.rand(32) * 0.5
        xt = base[y] * (1 - t).view(-1, 1, 1, 1) + t.view(-1, 1, 1, 1) * torch.randn(32, 1, 8, 8)
        loss = F.cross_entropy(clf(xt, 1000 * t), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    y = torch.randint(0, 2, (64,))
    xt = base[y] + 0.3 * torch.randn(64, 1, 8, 8)
    with torch.no_grad():
        acc = (clf(xt, 300.0).argmax(1) == y).float().mean()
    assert acc > 0.9
    x = xt[:4].clone().requires_grad_(True)
    clf.log_prob(x, 300.0, y[:4]).sum().backward()  # the classifier-guidance gradient
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_feature_classifier_features():
    clf = FeatureClassifier(in_channels=1, num_classes=10, feature_dim=64).eval()
    for size in (8, 28):
        x = torch.rand(3, 1, size, size) * 2 - 1
        f = clf.features(x)
        assert f.shape == (3, 64) and (f >= 0).all()
        assert clf(x).shape == (3, 10)
    rgb = FeatureClassifier(in_channels=3, num_classes=10)
    assert rgb.features(torch.randn(2, 3, 32, 32)).shape == (2, 128)
