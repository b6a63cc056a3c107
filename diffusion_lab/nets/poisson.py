"""A network with PFGM's extra z output (Xu et al. 2022, "Poisson Flow Generative Models", Sec. 3.2):
it predicts the normalised (N+1)-dimensional Poisson field v = (v_x, v_z) at the augmented point (x, z).

``PoissonFieldNetwork(backbone, **kwargs)`` builds the backbone with one extra output: the MLP with
``out_dim = in_dim + 1`` (the last coordinate is v_z), the UNet with one extra output channel whose
spatial mean is v_z. ``forward(x, noise_label, field=True)`` returns the flattened field (B, N+1) for
the loss; ``forward(x, noise_label)`` returns ε̂ = v_x / v_z in the shape of x, the slope dx/dz of the
field line, so that with α = 1, σ = z and the ``eps`` parameterization the model adapter gives
x̂_0 = x − z·v_x/v_z and the samplers integrate dx/dz = (x − x̂_0)/z = v_x/v_z, PFGM's backward ODE.
v_z < 0 along a field line that descends to the data; it is capped at −``min_vz`` so that an untrained
network cannot divide by zero (PFGM's code adds 1e-5 to the denominator for the same reason).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffusion_lab.nets.mlp import MLP
from diffusion_lab.nets.unet import UNet
from diffusion_lab.schedules.poisson_flow import empirical_field


class _FieldReader(nn.Module):
    """``forward``: the field (``field=True``) or the slope ε̂ = v_x/v_z of the field line (module docstring)."""

    min_vz: float = 1e-5

    def field(self, x: Tensor, noise_label: Tensor, **kwargs) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, noise_label: Tensor, field: bool = False, **kwargs) -> Tensor:
        v = self.field(x, noise_label, **kwargs)
        if field:
            return v
        vz = v[:, -1:].clamp(max=-self.min_vz)
        return (v[:, :-1] / vz).reshape(x.shape)


class PoissonFieldNetwork(_FieldReader):
    """An MLP or UNet backbone with the extra z output of PFGM (module docstring)."""

    def __init__(self, backbone: str = "mlp", min_vz: float = 1e-5, **kwargs):
        super().__init__()
        if backbone == "mlp":
            in_dim = int(kwargs.pop("in_dim", 2))
            kwargs.pop("out_dim", None)
            self.net = MLP(in_dim=in_dim, out_dim=in_dim + 1, **kwargs)
            self.in_dim = in_dim
        elif backbone == "unet":
            channels = int(kwargs.pop("in_channels"))
            kwargs.pop("out_channels", None)
            self.net = UNet(in_channels=channels, out_channels=channels + 1, **kwargs)
            self.in_channels, self.image_size = channels, int(kwargs["image_size"])
        else:
            raise ValueError(f"model.backbone={backbone!r} is not a PFGM backbone; use mlp or unet.")
        if kwargs.get("learned_variance"):
            raise ValueError("model.learned_variance=true has no meaning for PFGM's field network; set it to false.")
        self.backbone, self.min_vz = backbone, float(min_vz)
        self.learned_variance = False
        self.num_classes = getattr(self.net, "num_classes", None)

    def field(self, x: Tensor, noise_label: Tensor, **kwargs) -> Tensor:
        """(v_x, v_z) flattened: shape (B, N+1)."""
        out = self.net(x, noise_label, **kwargs)
        if self.backbone == "mlp":
            return out
        vx, vz = out[:, :-1], out[:, -1:].mean(dim=(1, 2, 3))
        return torch.cat([vx.flatten(1), vz[:, None]], dim=1)


class EmpiricalFieldNetwork(_FieldReader):
    """The exact normalised empirical field of a reference set (``schedules.poisson_flow.empirical_field``)
    as a parameter-free network: what a perfectly trained PFGM network outputs for that set (tests and
    benchmarks). Reads z from the ``eps`` parameterization's noise label 1000·t, σ(t) = z."""

    dtype = torch.float64

    def __init__(self, reference: Tensor, schedule, time_scale: float = 1000.0):
        super().__init__()
        self.register_buffer("reference", reference.flatten(1).to(torch.float64))
        self.schedule, self.time_scale = schedule, float(time_scale)

    def field(self, x: Tensor, noise_label: Tensor, **kwargs) -> Tensor:
        z = self.schedule.sigma(noise_label.to(torch.float64) / self.time_scale)
        return empirical_field(x.flatten(1), z, self.reference, self.schedule.gamma)
