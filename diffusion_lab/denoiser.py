"""The model adapter: the one object through which losses, samplers, guidance and evaluation see a network.

    Denoiser(net, schedule, parameterization, learned_variance=False)

A network F is trained to output one parameterization of the denoising problem (ε, x_0, score, v,
flow velocity, or EDM's preconditioned F; see ``diffusion_lab.parameterization``). Everything
around it needs the same three steps, done here once (Karras et al. 2022 put the preconditioning
and the network behind one interface for the same reason):

1. the network's inputs: ``parameterization.net_inputs(x, t)`` (x itself, or EDM's c_in·x̃) and the
   noise label (1000·t, or c_noise = ¼ ln σ̃);
2. the call, counted (``nfe``) and, for sampling, in the network's own dtype while the sampler keeps
   float64 (for an ``nn.Module`` the dtype of its parameters; for a plain callable, ``net_dtype``);
3. the reading of the output: with learned variances (Nichol & Dhariwal 2021, §3.1) the network
   returns 2C channels, the prediction then v ∈ [−1, 1], and the variance fraction is ν = (v + 1)/2
   (their Eq. 15, applied by ``posterior.log_variance``); the prediction becomes a ``Prediction``
   whose views (x̂_0, ε̂, score, v, velocity) are computed on demand.

``output(x_t, t)`` gives the raw ``NetOutput`` with gradients (losses regress it onto their target);
``read(out, x, t)`` turns it into a ``Prediction`` (losses that need x̂_0 or the score);
``predict(x, t)`` does both for the current ``labels``, with gradients and unguided (likelihood);
``denoiser(x, t)`` does all three without gradients and applies the guidance (samplers).

Class labels and guidance. ``labels`` (shape (B,), or None) are the classes the samples are drawn for:
a class-conditional network (one with ``num_classes``) receives them as ``class_labels``; an
unconditional one never does (classifier guidance uses them instead). A guidance object
(``diffusion_lab.guidance``) is asked for the labels of each network pass it needs
(``branches``: classifier-free guidance wants y and the null label); the passes are batched into
one network call on [x; x; …] and the predictions handed to its ``guide``. So ``nfe`` counts network
calls, and ``passes`` counts per-sample passes (a guided CFG call is 1 NFE and 2 passes). A plain
callable ``guidance(prediction, x, t) -> prediction`` is applied as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor

from diffusion_lab.parameterization import Parameterization, Prediction
from diffusion_lab.schedules.base import Schedule

#: guidance(prediction, x, t) -> modified prediction: the plain form of the guidance hook
Guidance = Callable[[Prediction, Tensor, Tensor], Prediction]


def network_dtype(net: Callable) -> torch.dtype | None:
    """The dtype a network declares: its ``dtype`` attribute, else its first parameter's (None if neither)."""
    declared = getattr(net, "dtype", None)
    if isinstance(declared, torch.dtype):
        return declared
    if isinstance(net, torch.nn.Module):
        for p in net.parameters():
            return p.dtype
    return None


class BatchedGuidance(Protocol):
    """The guidance objects of ``diffusion_lab.guidance``: the labels of each network pass, then the
    combination of their predictions."""

    def branches(self, labels: Tensor | None, t: Tensor, schedule: Schedule) -> list[Tensor | None]: ...

    def guide(self, preds: Sequence[Prediction], x: Tensor, t: Tensor, labels: Tensor | None,
              schedule: Schedule) -> Prediction: ...


class CountingNetwork(torch.nn.Module):
    """Wraps a network and counts its forward calls (the NFE of a sampler)."""

    def __init__(self, net: Callable[..., Tensor]):
        super().__init__()
        self.net = net
        self.calls = 0

    def forward(self, *args, **kwargs) -> Tensor:
        self.calls += 1
        return self.net(*args, **kwargs)


@dataclass
class NetOutput:
    """What the network returned, split: ``prediction`` (the parameterization's C channels) and, with
    learned variances, ``var_raw`` (the other C channels, v ∈ [−1, 1]; None otherwise)."""

    prediction: Tensor
    var_raw: Tensor | None = None


class DenoiserLike(Protocol):
    """What a sampler needs: a schedule, ``(x, t) → Prediction`` and the count of network calls."""

    schedule: Schedule

    def __call__(self, x: Tensor, t: Tensor | float) -> Prediction: ...

    @property
    def nfe(self) -> int: ...


def variance_fraction(var_raw: Tensor) -> Tensor:
    """ν = (v + 1)/2 ∈ [0, 1] from the network's variance output v ∈ [−1, 1] (Nichol & Dhariwal 2021, Eq. 15)."""
    return (var_raw + 1.0) / 2.0


class Denoiser:
    """net + schedule + parameterization → raw outputs for losses, ``Prediction``s for samplers.

    Args:
        net: an ``nn.Module`` or any callable ``net(x, noise_label, **net_kwargs)``.
        schedule, parameterization: the model's (a parameterization name is accepted).
        guidance: applied by ``__call__``: a ``diffusion_lab.guidance`` object (``BatchedGuidance``) or a
            plain transform of the prediction (``Guidance``).
        net_kwargs: extra keyword arguments of every call.
        labels: the class of each sample (see the module docstring); settable between sampler calls.
        learned_variance: the network outputs 2C channels (prediction, then variance).
        net_dtype: the dtype the network computes in (default: read from an ``nn.Module``'s parameters
            or a ``dtype`` attribute; float32 for a plain callable).
    """

    def __init__(self, net: Callable[..., Tensor], schedule: Schedule, parameterization: Parameterization | str = "eps",
                 guidance: Guidance | BatchedGuidance | None = None, net_kwargs: dict | None = None,
                 learned_variance: bool = False, net_dtype: torch.dtype | None = None, labels: Tensor | None = None):
        self.net = CountingNetwork(net)
        self.labels = labels
        self.passes = 0  # per-sample network passes of __call__ and predict (CFG: 2 per guided call)
        self.schedule = schedule
        self.parameterization = Parameterization(parameterization) if isinstance(parameterization, str) else parameterization
        self.guidance = guidance
        self.net_kwargs = net_kwargs or {}
        self.learned_variance = bool(learned_variance)
        self.net_dtype = net_dtype

    # ------------------------------------------------------------------ counting
    @property
    def nfe(self) -> int:
        return self.net.calls

    def reset_nfe(self) -> None:
        self.net.calls = 0
        self.passes = 0

    @property
    def num_classes(self) -> int | None:
        """The network's number of classes (None: unconditional)."""
        return getattr(self.net.net, "num_classes", None) or None

    def _label_kwargs(self, labels: Tensor | None, batch: int, device: torch.device) -> dict:
        """``class_labels`` for a class-conditional network (nothing for an unconditional one)."""
        if labels is None or not self.num_classes:
            return {}
        if labels.shape[0] != batch:
            raise ValueError(f"the denoiser has {labels.shape[0]} labels for a batch of {batch} samples; set one "
                             "label per sample.")
        return {"class_labels": labels.to(device)}

    @property
    def gives_score(self) -> bool:
        """Whether predictions carry a true score ∇ log p_t (Gaussian noising): samplers that need the
        score (reverse SDE, Langevin) refuse a denoiser where this is False."""
        return bool(getattr(self.parameterization, "gives_score", True))

    def dtype(self) -> torch.dtype | None:
        """The dtype the network computes in: ``net_dtype`` if given, else the network's ``dtype``
        attribute, else an ``nn.Module``'s parameter (or floating buffer) dtype, else None for a module
        with neither (its inputs are passed uncast), else float32 for a plain callable (PyTorch's
        default: a function around a float32 network)."""
        if self.net_dtype is not None:
            return self.net_dtype
        net = self.net.net
        declared = network_dtype(net)
        if declared is not None:
            return declared
        if isinstance(net, torch.nn.Module):
            for b in net.buffers():
                if b.is_floating_point():
                    return b.dtype
            return None
        return torch.float32

    # ------------------------------------------------------------------ the three steps
    def output(self, x: Tensor, t: Tensor, dtype: torch.dtype | None = None, **net_kwargs) -> NetOutput:
        """The network's raw output at (x, t), with gradients, split into prediction and variance.

        ``dtype``: cast the network's inputs to it (sampling); None leaves them as they are (training,
        where autocast decides). Checks the output's shape against x (a learned-variance model must
        give 2C channels)."""
        out = self.raw(x, t, dtype, **net_kwargs)
        if self.learned_variance:
            expect = (x.shape[0], 2 * x.shape[1], *x.shape[2:])
            if tuple(out.shape) != expect:
                raise ValueError(f"a learned-variance model must output {expect} (prediction then variance channels "
                                 f"along dim 1), got {tuple(out.shape)}; set the model's out_channels to twice the data channels.")
            pred, var_raw = out.chunk(2, dim=1)
            return NetOutput(pred, var_raw)
        if out.shape != x.shape:
            hint = (" (a learned-variance network needs a loss with learned variances, e.g. loss=hybrid)"
                    if out.dim() == x.dim() and out.shape[1] == 2 * x.shape[1] else "")
            raise ValueError(f"the network's output shape {tuple(out.shape)} differs from the data shape "
                             f"{tuple(x.shape)}{hint}.")
        return NetOutput(out)

    def raw(self, x: Tensor, t: Tensor, dtype: torch.dtype | None = None, **net_kwargs) -> Tensor:
        """The network's output at (x, t) as it is, counted, with gradients: for models whose output is not
        a prediction of x (the K logits per pixel of a discrete forward process). ``dtype`` as in ``output``."""
        x_in, label = self.parameterization.net_inputs(x, t, self.schedule)
        if dtype is not None:
            x_in, label = x_in.to(dtype), label.to(dtype)
        return self.net(x_in, label, **{**self.net_kwargs, **net_kwargs})

    def read(self, out: NetOutput, x: Tensor, t: Tensor) -> Prediction:
        """The prediction (all views on demand, in the dtype of x) of a raw output at (x, t)."""
        pred = self.parameterization.predict(out.prediction, x, t, self.schedule)
        if out.var_raw is not None:
            pred.var_interp = variance_fraction(out.var_raw.to(x.dtype))
        return pred

    def _predictions(self, x: Tensor, t: Tensor, branches: Sequence[Tensor | None]) -> list[Prediction]:
        """One prediction per branch (labels of a pass), all from ONE network call on the stacked batch;
        the network in its own dtype, the predictions in the dtype of x."""
        k, batch = len(branches), x.shape[0]
        if k == 1:
            kwargs = self._label_kwargs(branches[0], batch, x.device)
            xs, ts = x, t
        else:
            if not self.num_classes or any(b is None for b in branches):
                raise ValueError("a guidance with several network passes needs a class-conditional network and "
                                 "labels for every pass.")
            kwargs = {"class_labels": torch.cat([b.to(x.device) for b in branches])}
            xs, ts = torch.cat([x] * k), torch.cat([t] * k)
        out = self.output(xs, ts, dtype=self.dtype(), **kwargs)
        self.passes += k
        preds = out.prediction.to(x.dtype).chunk(k)
        vars_ = out.var_raw.chunk(k) if out.var_raw is not None else [None] * k
        return [self.read(NetOutput(p, v), x, t) for p, v in zip(preds, vars_)]

    def _times(self, x: Tensor, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return t.expand(x.shape[0]) if t.dim() == 0 else t

    def predict(self, x: Tensor, t: Tensor | float) -> Prediction:
        """The unguided prediction at (x, t) for the current ``labels``, with gradients (the PF-ODE
        likelihood differentiates it): the network in its own dtype, the prediction in the dtype of x."""
        return self._predictions(x, self._times(x, t), [self.labels])[0]

    @torch.no_grad()
    def __call__(self, x: Tensor, t: Tensor | float) -> Prediction:
        """Sampling: the network in its own dtype, the prediction in the dtype of x (float64), guided."""
        t = self._times(x, t)
        guidance = self.guidance
        if guidance is not None and hasattr(guidance, "branches"):
            preds = self._predictions(x, t, guidance.branches(self.labels, t, self.schedule))
            return guidance.guide(preds, x, t, self.labels, self.schedule)
        pred = self._predictions(x, t, [self.labels])[0]
        if guidance is not None:
            pred = guidance(pred, x, t)
        return pred
