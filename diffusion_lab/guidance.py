"""Guidance: transforms of a model's prediction that steer sampling towards a class y.

A ``Prediction`` at (x, t) is the pair (x̂_0, ε̂) (``parameterization``); every other view (score,
v, velocity) is affine in that pair at fixed x. A guidance changes the pair, so all views change
consistently and every sampler, schedule and parameterization gets it through the model adapter
(``denoiser.Denoiser``), which asks the guidance which network passes it needs and batches them
into one network call.

Classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis", §4.1,
Alg. 1–2; in score form Song et al. 2021, "Score-Based Generative Modeling through SDEs", Eq. 48):
with a noise-conditional classifier p_φ(y | x_t, t) and scale s,

    scorẽ = ∇ log p_t(x) + s ∇_x log p_φ(y | x_t, t),
    ε̃     = ε̂ − s σ ∇_x log p_φ(y | x_t, t)                (ε̂ = −σ·score; their Eq. 14 with √(1−ᾱ) = σ)
    x̂_0̃   = x̂_0 + s (σ²/α) ∇_x log p_φ(y | x_t, t)         (x̂_0 = (x − σ ε̂)/α).

s = 1 samples p_t(x | y) exactly when p_φ is the true p_t(y | x) (Bayes: ∇ log p(x|y) = ∇ log p(x) +
∇ log p(y|x)); s > 1 sharpens towards the classifier's modes.

Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", Eq. 6): one
network trained with label dropout (each label replaced by the null label ∅ with probability
p_uncond, their Alg. 1) is both ε(x, y) and ε(x, ∅), and

    ε̃ = (1 + w) ε(x, y) − w ε(x, ∅).

Both passes see the same x, and x̂_0 = (x − σ ε)/α is affine in ε, so the same weights combine x̂_0
and every other view: the rule holds in every parameterization (for the score: (1 + w) s(x|y) −
w s(x)). w = 0 is the conditional model; later papers write γ = 1 + w. The two passes run as one
network call on the doubled batch [x; x] with labels [y; ∅] (∅ = −1: the networks map negative labels
to their null-label row), so NFE counts network calls and ``Denoiser.passes`` counts the per-sample
passes (2 per guided call).

Guidance interval (Kynkäänniemi et al. 2024, "Applying Guidance in a Limited Interval Improves
Sample and Distribution Quality in Diffusion Models"): guide only where the noise level
σ̃ = σ/α lies in (σ_lo, σ_hi]; elsewhere CFG uses the conditional prediction (one pass) and classifier
guidance leaves the prediction unguided. σ̃ is EDM's σ for α = 1, so an interval means the same noise
level under every schedule (their EDM2 values: (0.28, 5.42]).

The classifier sees x / √(α² + σ²) (x itself on variance-preserving schedules; unit scale on VE, EDM and
rectified flow, so one architecture serves every schedule) and the noise label 1000·t:
``classifier_inputs`` is the one place this lives, shared by classifier training and guidance.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from diffusion_lab.denoiser import network_dtype
from diffusion_lab.parameterization import Prediction, from_x0_eps
from diffusion_lab.schedules.base import Schedule, broadcast_like

#: the null label ∅ of classifier-free guidance (the networks map negative labels to their extra row)
NULL_LABEL = -1
#: the classifier's noise label is CLASSIFIER_TIME_SCALE·t (as the diffusion networks' 1000·t)
CLASSIFIER_TIME_SCALE = 1000.0


# ------------------------------------------------------------------------------------------ helpers
def drop_labels(labels: Tensor, p_uncond: float, generator: torch.Generator | None = None) -> Tensor:
    """Label dropout for classifier-free guidance: each label becomes ``NULL_LABEL`` with probability
    ``p_uncond`` (Ho & Salimans 2022, Alg. 1). Draws from ``generator`` (none when p_uncond = 0)."""
    if p_uncond <= 0:
        return labels
    dev = generator.device if generator is not None else labels.device
    drop = torch.rand(labels.shape, generator=generator, device=dev).to(labels.device) < p_uncond
    return torch.where(drop, torch.full_like(labels, NULL_LABEL), labels)


def balanced_labels(n: int, num_classes: int, offset: int = 0) -> Tensor:
    """Class labels of samples offset .. offset + n − 1 of a class-balanced evaluation: i mod K."""
    return (torch.arange(offset, offset + n) % int(num_classes)).long()


def classifier_inputs(x: Tensor, t: Tensor, schedule: Schedule,
                      time_scale: float = CLASSIFIER_TIME_SCALE) -> tuple[Tensor, Tensor]:
    """(x / √(α² + σ²), time_scale·t): what the noise-conditional classifier sees at (x_t, t)."""
    tt = t.to(x.dtype)
    scale = torch.sqrt(schedule.alpha(tt) ** 2 + schedule.sigma(tt) ** 2)
    return x / broadcast_like(scale, x), time_scale * tt


# ------------------------------------------------------------------------------------------ base
class Guidance:
    """A transform of the prediction towards the labels y (see the module docstring).

    The model adapter calls ``branches(labels, t, schedule)`` — the labels of each network pass it must
    batch into its one call (one pass: ``[labels]``) — and then ``guide(predictions, x, t, labels,
    schedule)`` with one prediction per pass.

    Args:
        scale: s (classifier guidance) or w (classifier-free guidance), ≥ 0.
        interval: [σ̃_lo, σ̃_hi]: guide only where σ/α is in (σ̃_lo, σ̃_hi] (null ends are open); null = always.
        class_label: sample this class (an int) instead of a class-balanced set of labels (None).
    """

    name = "guidance"

    def __init__(self, scale: float = 1.0, interval: Sequence[float | None] | None = None,
                 class_label: int | None = None):
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
            raise ValueError(f"guidance.scale={scale!r} must be a number ≥ 0 (0: no guidance).")
        self.scale = float(scale)
        self.interval = self._interval(interval)
        if class_label is not None and (isinstance(class_label, bool) or not isinstance(class_label, int) or class_label < 0):
            raise ValueError(f"guidance.class_label={class_label!r} must be a class index ≥ 0 or null (class-balanced).")
        self.class_label = class_label

    @staticmethod
    def _interval(interval: Sequence[float | None] | None) -> tuple[float, float] | None:
        if interval is None:
            return None
        if isinstance(interval, (str, bytes)) or len(interval) != 2:
            raise ValueError(f"guidance.interval={interval!r} must be [sigma_lo, sigma_hi] (noise levels σ/α) or null.")
        lo = 0.0 if interval[0] is None else float(interval[0])
        hi = math.inf if interval[1] is None else float(interval[1])
        if not 0.0 <= lo < hi:
            raise ValueError(f"guidance.interval={list(interval)} must satisfy 0 ≤ sigma_lo < sigma_hi.")
        return lo, hi

    def active(self, t: Tensor, schedule: Schedule) -> Tensor:
        """(B,) bool: where the guidance acts (σ̃(t) inside the interval; everywhere without one)."""
        if self.interval is None:
            return torch.ones(t.shape, dtype=torch.bool, device=t.device)
        st = schedule.sigma_tilde(t.to(torch.float64))
        lo, hi = self.interval
        return ((st > lo) & (st <= hi)).to(t.device)

    def weight(self, t: Tensor, schedule: Schedule, like: Tensor) -> Tensor:
        """The scale where the guidance acts, 0 elsewhere, broadcast against ``like``."""
        return broadcast_like(self.scale * self.active(t, schedule).to(like.dtype), like)

    def branches(self, labels: Tensor | None, t: Tensor, schedule: Schedule) -> list[Tensor | None]:
        """The labels of each network pass at (·, t); one pass by default."""
        return [labels]

    def guide(self, preds: Sequence[Prediction], x: Tensor, t: Tensor, labels: Tensor | None,
              schedule: Schedule) -> Prediction:
        raise NotImplementedError

    def _need_labels(self, labels: Tensor | None) -> Tensor:
        if labels is None:
            raise ValueError(f"guidance={self.name} needs class labels for the samples; set the denoiser's labels "
                             "(the evaluation does: class-balanced, or guidance.class_label).")
        return labels

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self.scale}, interval={self.interval}, class_label={self.class_label})"


# ------------------------------------------------------------------------------------------ CFG
class ClassifierFreeGuidance(Guidance):
    """ε̃ = (1 + w) ε(x, y) − w ε(x, ∅) in every view; both passes in one network call (module docstring)."""

    name = "cfg"

    def branches(self, labels: Tensor | None, t: Tensor, schedule: Schedule) -> list[Tensor | None]:
        labels = self._need_labels(labels)
        if self.scale == 0 or not bool(self.active(t, schedule).any()):
            return [labels]  # the conditional prediction alone: one pass
        return [labels, torch.full_like(labels, NULL_LABEL)]

    def guide(self, preds: Sequence[Prediction], x: Tensor, t: Tensor, labels: Tensor | None,
              schedule: Schedule) -> Prediction:
        if len(preds) == 1:
            return preds[0]
        cond, uncond = preds
        w = self.weight(t, schedule, x)
        x0 = (1.0 + w) * cond.x0 - w * uncond.x0
        eps = (1.0 + w) * cond.eps - w * uncond.eps
        return from_x0_eps(x0, eps, cond.c, var_interp=cond.var_interp)


# ------------------------------------------------------------------------------------------ classifier
class ClassifierGuidance(Guidance):
    """scorẽ = score + s ∇_x log p_φ(y | x_t, t) (module docstring).

    ``classifier(x_in, noise_label) -> logits`` (a ``NoiseConditionalClassifier``), fed through
    ``classifier_inputs``; it runs in its own dtype and must be in eval mode. ``calls`` counts its
    gradient evaluations (one forward and one backward pass each).

    A class-conditional network gets the labels too (conditional model + classifier, as Dhariwal &
    Nichol 2021 do), unless ``null_label``: then it gets the null label, i.e. classifier guidance of
    the unconditional model inside a network trained with label dropout."""

    name = "classifier"

    def __init__(self, classifier: Callable[[Tensor, Tensor], Tensor], scale: float = 1.0,
                 interval: Sequence[float | None] | None = None, class_label: int | None = None,
                 null_label: bool = False, time_scale: float = CLASSIFIER_TIME_SCALE):
        super().__init__(scale, interval, class_label)
        self.classifier = classifier
        self.null_label = bool(null_label)
        self.time_scale = float(time_scale)
        self.calls = 0

    def branches(self, labels: Tensor | None, t: Tensor, schedule: Schedule) -> list[Tensor | None]:
        labels = self._need_labels(labels)
        return [torch.full_like(labels, NULL_LABEL) if self.null_label else labels]

    @property
    def num_classes(self) -> int | None:
        return getattr(self.classifier, "num_classes", None)

    def log_prob_grad(self, x: Tensor, t: Tensor, labels: Tensor, schedule: Schedule) -> Tensor:
        """∇_x log p_φ(y | x_t, t) in the dtype of x (the classifier in its own)."""
        dtype = network_dtype(self.classifier) or x.dtype
        with torch.enable_grad():
            xi = x.detach().to(dtype).requires_grad_(True)
            x_in, label = classifier_inputs(xi, t.to(dtype), schedule, self.time_scale)
            logits = self.classifier(x_in, label)
            log_p = torch.log_softmax(logits, dim=-1).gather(1, labels.long().to(logits.device)[:, None])
            (grad,) = torch.autograd.grad(log_p.sum(), xi)
        self.calls += 1
        return grad.to(x.dtype)

    def guide(self, preds: Sequence[Prediction], x: Tensor, t: Tensor, labels: Tensor | None,
              schedule: Schedule) -> Prediction:
        pred = preds[0]
        labels = self._need_labels(labels)
        if self.scale == 0 or not bool(self.active(t, schedule).any()):
            return pred
        s = self.weight(t, schedule, x)
        grad = s * self.log_prob_grad(x, t, labels, schedule)
        c = pred.c
        return from_x0_eps(pred.x0 + (c.sigma * c.sigma / c.alpha) * grad, pred.eps - c.sigma * grad, c,
                           var_interp=pred.var_interp)

    def __repr__(self) -> str:
        return (f"ClassifierGuidance(scale={self.scale}, interval={self.interval}, class_label={self.class_label}, "
                f"classifier={type(self.classifier).__name__})")
