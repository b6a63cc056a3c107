"""Flows with straight paths (Liu et al. 2023, "Flow Straight and Fast"; Tong et al. 2023; Pooladian et
al. 2023): minibatch couplings of noise and data (``couplings``), the straightness of a trained flow and
the Euler steps it needs (``straightness``), reflow pairs on disk (``pairs``; the command is
``diffusion_lab.reflow_pairs``), k-step distillation times (``distill``) and the theory diagnostics of
score matching (``diagnostics``: SM vs DSM, Vincent 2011; the W₂ bound of Kwon, Fan & Lee 2022).

Convention: data at t = 0, noise at t = 1, x_t = (1 − t) x_0 + t ε, velocity ε − x_0. The papers' Z_0
(noise, their t = 0) is our ε at t = 1 and their X_1 / Z_1 (data) our x_0.
"""
