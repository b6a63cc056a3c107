"""Start-up validation of a composed configuration: incompatible choices stop the run before any
training, with one sentence that names the offending config keys and the fix."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration that cannot work; the message names the keys to change."""


def check_components(*, dataset: Any, schedule: Any, parameterization: Any, loss: Any, net: Any, sampler: Any,
                     data_shape: tuple[int, ...]) -> None:
    """Raise ConfigError for the first incompatible combination found."""
    if hasattr(loss, "validate"):
        try:
            loss.validate(schedule, parameterization)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    learned = bool(getattr(loss, "learned_variance", False))
    net_learned = bool(getattr(net, "learned_variance", False))
    if learned != net_learned:
        raise ConfigError(
            f"loss.learned_variance={learned} but model.learned_variance={net_learned}: a loss with learned variances "
            "needs a network with the extra output channels; set model.learned_variance to match."
        )
    if sampler.spec.needs_score and not getattr(parameterization, "gives_score", True):
        raise ConfigError(
            f"sampler={sampler.name} needs the score, but parameterization={parameterization.kind} cannot give one; "
            "choose an ODE sampler."
        )
    if sampler.grid in ("linspace", "leading", "trailing") and getattr(schedule, "num_timesteps", None) is None:
        raise ConfigError(
            f"sampler.grid={sampler.grid} needs a discrete schedule, but schedule={type(schedule).__name__} is "
            "continuous; use sampler.grid=uniform, lambda, quadratic or karras."
        )
    image_net = getattr(net, "image_size", None) is not None
    if image_net and len(data_shape) != 3:
        raise ConfigError(
            f"model={type(net).__name__} is an image network but the dataset gives vectors of shape {data_shape}; "
            "use model=mlp for low-dimensional data."
        )
    if image_net and (getattr(net, "in_channels", data_shape[0]) != data_shape[0]
                      or getattr(net, "image_size", data_shape[-1]) != data_shape[-1]):
        raise ConfigError(
            f"model.in_channels={getattr(net, 'in_channels', None)}, model.image_size={getattr(net, 'image_size', None)} "
            f"do not match the dataset's images {data_shape}; set them to ${{dataset.channels}} and ${{dataset.image_size}}."
        )
