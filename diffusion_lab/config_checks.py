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
    if getattr(net, "num_classes", None) and getattr(dataset, "num_classes", None) is None:
        raise ConfigError(
            f"model.num_classes={net.num_classes} makes the model class-conditional, but the dataset has no labels; "
            "set model.num_classes=null or use a labelled dataset."
        )
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


def check_config(cfg: Any, choices: dict[str, str] | None = None) -> None:
    """Checks on the composed config itself, before anything is built (so that an incompatible
    choice is named before an interpolation error or an hour of training). ``choices`` maps each
    group to the chosen file name (Hydra's runtime choices) for the messages."""
    choices = choices or {}
    ds, model = cfg.get("dataset"), cfg.get("model")
    ds_name, model_name = choices.get("dataset", "<dataset>"), choices.get("model", "<model>")
    if ds is None or model is None:
        raise ConfigError("the config needs a dataset and a model group; add dataset=... and model=....")
    is_image_data = "image_size" in ds
    model_target = str(model.get("_target_", ""))
    if model_target.endswith("UNet") and not is_image_data:
        raise ConfigError(
            f"model={model_name} is an image network but dataset={ds_name} gives {ds.get('dim', 'low')}-D vectors; "
            "use model=mlp for low-dimensional data."
        )
    if model_target.endswith("MLP") and is_image_data:
        raise ConfigError(
            f"model={model_name} is for low-dimensional vectors but dataset={ds_name} gives images; use a UNet model "
            "(e.g. model=unet_digits)."
        )
    if model.get("num_classes") and ds.get("num_classes") is None:
        raise ConfigError(
            f"model.num_classes={model.get('num_classes')} makes the model class-conditional, but dataset={ds_name} has no "
            "labels; set model.num_classes=null or use a labelled dataset."
        )
