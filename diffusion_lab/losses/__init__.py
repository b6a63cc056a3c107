"""Training objectives and time sampling (plain PyTorch; no Lightning or Hydra).

Every loss implements ``Loss`` (``base``): ``loss(model, x0, *, generator, net_kwargs) -> LossOutput``
with ``model`` the model adapter (``diffusion_lab.denoiser.Denoiser``), ``validate(schedule,
parameterization)``, ``state_dict``. Configs live in ``conf/loss/``.

* ``DenoisingScoreMatching`` (``dsm``): any parameterization, weightings simple / likelihood / snr /
  min_snr / edm / per-space MSE, written once in x_0 space (``weighting``).
* ``RectifiedFlowLoss``: the velocity MSE on the linear path (DSM with weighting "velocity").
* ``VariationalBoundLoss``, ``HybridLoss``, ``variational_bound`` (``vlb``): improved DDPM.
* ``ScoreMatching``, ``SlicedScoreMatching`` (``score_matching``): Hyvärinen 2005, Song et al. 2019.
* ``PoissonFieldLoss`` (``poisson_field``): PFGM's normalised empirical Poisson field (Xu et al. 2022).
* ``ForwardProcessLoss`` (``forward_mse``): x̂0 MSE of a general forward process (blur, masking);
  ``DiscreteForwardLoss`` (``forward_ce``): the cross-entropy of discrete corruption (absorbing, uniform).
* Time samplers (``time_sampling``): ``UniformTime``, ``LogNormalTime``, ``ImportanceTime``, ``FixedTime``.
"""

from diffusion_lab.losses.base import Loss, LossOutput
from diffusion_lab.losses.dsm import DenoisingScoreMatching, RectifiedFlowLoss
from diffusion_lab.losses.forward_process import DiscreteForwardLoss, ForwardProcessLoss
from diffusion_lab.losses.poisson_field import PoissonFieldLoss
from diffusion_lab.losses.score_matching import ScoreMatching, SlicedScoreMatching
from diffusion_lab.losses.time_sampling import (
    TIME_SAMPLERS,
    FixedTime,
    ImportanceTime,
    LogNormalTime,
    TimeSampler,
    UniformTime,
    make_time_sampler,
)
from diffusion_lab.losses.vlb import HybridLoss, VariationalBound, VariationalBoundLoss, variational_bound
from diffusion_lab.losses.weighting import WEIGHTINGS, space_factor2, target_multiplier, x0_weight

__all__ = [
    "Loss", "LossOutput",
    "DenoisingScoreMatching", "RectifiedFlowLoss", "PoissonFieldLoss", "ForwardProcessLoss", "DiscreteForwardLoss",
    "VariationalBoundLoss", "HybridLoss", "VariationalBound", "variational_bound",
    "ScoreMatching", "SlicedScoreMatching",
    "TimeSampler", "UniformTime", "LogNormalTime", "ImportanceTime", "FixedTime", "TIME_SAMPLERS", "make_time_sampler",
    "WEIGHTINGS", "x0_weight", "space_factor2", "target_multiplier",
]
