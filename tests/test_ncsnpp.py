"""NCSN++ (Song et al. 2021b): the FIR filters against their closed forms, the fused FIR convolutions against
filter-then-conv, parameter counts of the CIFAR-10 configuration (and its variants) equal to score_sde's own
NCSN++ built from its config (less the 128 Fourier frequencies it stores as a parameter, a buffer here),
and a tiny network's shapes, progressive paths and gradients."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF
from diffusion_lab.nets import NCSNpp
from diffusion_lab.nets.ncsnpp import FIRConv2d, downsample_2d, fir_kernel, upsample_2d


def _down_1d(x: torch.Tensor) -> torch.Tensor:
    """y[i] = (x[2i−1] + 3x[2i] + 3x[2i+1] + x[2i+2]) / 8 along the last axis, zeros outside."""
    n = x.shape[-1]
    at = lambda j: x[..., j] if 0 <= j < n else torch.zeros_like(x[..., 0])  # noqa: E731
    return torch.stack([(at(2 * i - 1) + 3 * at(2 * i) + 3 * at(2 * i + 1) + at(2 * i + 2)) / 8 for i in range(n // 2)], -1)


def _up_1d(x: torch.Tensor) -> torch.Tensor:
    """y[2m] = (x[m−1] + 3x[m]) / 4, y[2m+1] = (3x[m] + x[m+1]) / 4 along the last axis, zeros outside."""
    n = x.shape[-1]
    at = lambda j: x[..., j] if 0 <= j < n else torch.zeros_like(x[..., 0])  # noqa: E731
    out = []
    for m in range(n):
        out += [(at(m - 1) + 3 * at(m)) / 4, (3 * at(m) + at(m + 1)) / 4]
    return torch.stack(out, -1)


def _separable(f, x: torch.Tensor) -> torch.Tensor:
    return f(f(x).transpose(-1, -2)).transpose(-1, -2)


def test_fir_kernel_is_the_normalised_outer_product():
    k = fir_kernel([1, 3, 3, 1])
    one_d = torch.tensor([1.0, 3, 3, 1], dtype=torch.float64)
    assert torch.equal(k, one_d[:, None] * one_d / 64)
    assert fir_kernel([1, 3, 3, 1], gain=4.0).sum() == pytest.approx(4.0)


def test_fir_down_and_up_sampling_equal_their_closed_forms():
    x = torch.randn(2, 3, 8, 6, dtype=torch.float64)
    down, up = downsample_2d(x), upsample_2d(x)
    assert down.shape == (2, 3, 4, 3) and up.shape == (2, 3, 16, 12)
    assert torch.allclose(down, _separable(_down_1d, x), atol=1e-12)
    assert torch.allclose(up, _separable(_up_1d, x), atol=1e-12)
    const = torch.ones(1, 1, 8, 8, dtype=torch.float64)  # constant images stay constant away from the border
    assert torch.allclose(upsample_2d(const)[..., 1:-1, 1:-1], torch.ones(1, 1, 14, 14, dtype=torch.float64))
    assert torch.allclose(downsample_2d(const)[..., 1:-1, 1:-1], torch.ones(1, 1, 2, 2, dtype=torch.float64))


@pytest.mark.parametrize("up", [True, False])
def test_fused_fir_convolution_equals_filtering_with_a_delta_kernel_and_is_linear_in_the_weight(up):
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    conv = FIRConv2d(3, 3, up=up, down=not up).double()
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        for c in range(3):
            conv.weight[c, c, 1, 1] = 1.0  # the identity 3×3 conv: only the FIR resampling is left
    expected = upsample_2d(x) if up else downsample_2d(x)
    assert torch.allclose(conv(x), expected, atol=1e-12)
    with torch.no_grad():  # a shifted delta shifts the result by one pixel (stride 2: two output pixels when up)
        conv.weight.zero_()
        for c in range(3):
            conv.weight[c, c, 1, 2] = 1.0
    shifted = conv(x)
    if up:
        assert torch.allclose(shifted[..., :-1], expected[..., 1:], atol=1e-12)
    else:
        assert torch.allclose(shifted[..., 1:-1], downsample_2d(x[..., 1:])[..., 1:], atol=1e-12)  # away from the border


# score_sde's NCSNpp(config) parameter counts for these settings minus its 128 (deep: 128; tiny: 16) Fourier
# frequencies stored as an nn.Parameter (score_sde_pytorch models/ncsnpp.py, counted by instantiating it)
COUNTS = {
    "cifar10": ({}, 62_758_915 - 128),
    "cifar10_deep": ({"num_res_blocks": 8}, 107_587_075 - 128),
    "cifar10_output_skip": ({"progressive": "output_skip"}, 62_781_196 - 128),
    "cifar10_input_skip_cat": ({"progressive_input": "input_skip", "combine": "cat"}, 65_217_795 - 128),
}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_parameter_counts_equal_score_sde_ncsnpp(name):
    overrides, expected = COUNTS[name]
    node = OmegaConf.merge({"dataset": {"channels": 3, "image_size": 32}},
                           {"model": OmegaConf.load(CONF / "model" / "ncsnpp_cifar10.yaml")}, {"model": overrides})
    with torch.device("meta"):
        net = instantiate(node.model)
    assert sum(p.numel() for p in net.parameters()) == expected


def test_tiny_network_parameter_count_equals_score_sde():
    net = NCSNpp(in_channels=1, image_size=8, nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
    assert sum(p.numel() for p in net.parameters()) == 189_969 - 16


@pytest.mark.parametrize("progressive,progressive_input,combine",
                         [("none", "residual", "sum"), ("output_skip", "input_skip", "cat"), ("residual", "none", "sum")])
def test_tiny_network_shapes_gradients_and_both_pyramids_carry_information(progressive, progressive_input, combine):
    torch.manual_seed(0)
    net = NCSNpp(in_channels=1, image_size=8, nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
                 progressive=progressive, progressive_input=progressive_input, combine=combine)
    with torch.no_grad():  # wake the zero-initialised residual branches so every path matters
        for p in net.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0, 0.05)
    x, label = torch.randn(3, 1, 8, 8, requires_grad=True), torch.tensor([10.0, 500.0, 990.0])
    out = net(x, label)
    assert out.shape == (3, 1, 8, 8) and torch.isfinite(out).all()
    out.square().sum().backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert sum(int(g.abs().sum() > 0) for g in grads.values()) == len(grads)  # every parameter is used
    assert x.grad is not None and x.grad.abs().sum() > 0
    # batch independence and the noise label matters
    assert torch.allclose(net(x[:1], label[:1]), out[:1], atol=1e-5)
    assert not torch.allclose(net(x, label + 100.0), out, atol=1e-4)


def test_bad_options_fail_with_one_sentence():
    with pytest.raises(ValueError, match="model.progressive='skip'"):
        NCSNpp(progressive="skip")
    with pytest.raises(ValueError, match="divisible by 2"):
        NCSNpp(image_size=12, ch_mult=(1, 2, 2, 2))
    with pytest.raises(ValueError, match="no learned-variance output"):
        NCSNpp(learned_variance=True)
