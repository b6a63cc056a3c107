"""General forward processes x_t = F_t(x_0, ε), ε ~ q(ε), data at t = 0 (the "unified" view of
diffusion: Bansal et al. 2023, Cold Diffusion; Rissanen et al. 2023; Austin et al. 2021, D3PM).

* ``additive``: F_t = D_t(x_0) + σ_t ε — the Gaussian schedules (``GaussianProcess``), heat-dissipation
  blur (``HeatBlurProcess``), progressive masking (``MaskProcess``);
* ``discrete``: absorbing-state and uniform corruption of quantised data (``DiscreteCorruption``);
* ``schedule``: a continuous process as a schedule (``schedule=blur`` / ``mask``), trained by
  ``losses.ForwardProcessLoss`` and sampled by the zoo's ``forward_process`` sampler;
* ``sampling``: the x̂_0-then-step sampler (naive, cold-diffusion corrected, posterior) and the loss
  −log q(x_0 | x_t) (MSE / cross-entropy).

The Gaussian ε of PFGM++ (Student-t) is a noise distribution of the schedules instead
(``diffusion_lab.noise``), so that the ODE samplers keep working.
"""

from diffusion_lab.forward.additive import (UPDATES, AdditiveProcess, GaussianProcess, HeatBlurProcess, MaskProcess,
                                            dct_matrix)
from diffusion_lab.forward.discrete import DiscreteCorruption, dequantize, quantize
from diffusion_lab.forward.schedule import ForwardProcessSchedule
from diffusion_lab.forward.sampling import forward_loss, sample_continuous, sample_discrete, uniform_grid

__all__ = ["UPDATES", "AdditiveProcess", "GaussianProcess", "HeatBlurProcess", "MaskProcess", "dct_matrix",
           "DiscreteCorruption", "quantize", "dequantize", "forward_loss", "sample_continuous", "sample_discrete",
           "uniform_grid", "ForwardProcessSchedule"]
