"""The ECON model: K stacked experts (attention U-Net, VAE encoder, broadcast decoder),
the competition and objective (13), and T-step front-to-back inference."""

from econ_scenes.model.econ import ECON, Inference
from econ_scenes.model.experts import Experts

__all__ = ["ECON", "Experts", "Inference"]
