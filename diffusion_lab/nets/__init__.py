"""Networks: the diffusion UNet (DDPM / improved DDPM / ADM / DDPM++ options), NCSN++ (score SDE VE), an MLP for
low-dimensional data, a noise-conditional classifier (classifier guidance) and a small clean-image
classifier used as FID feature network on MNIST-like data."""

from diffusion_lab.nets.diffusers_unet import DiffusersUNet
from diffusion_lab.nets.classifier import FeatureClassifier, NoiseConditionalClassifier
from diffusion_lab.nets.mlp import MLP
from diffusion_lab.nets.ncsnpp import NCSNpp
from diffusion_lab.nets.poisson import PoissonFieldNetwork
from diffusion_lab.nets.unet import UNet, count_parameters

__all__ = ["DiffusersUNet", "FeatureClassifier", "MLP", "NCSNpp", "NoiseConditionalClassifier", "PoissonFieldNetwork",
           "UNet", "count_parameters"]
