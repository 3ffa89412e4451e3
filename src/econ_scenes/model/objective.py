"""The learning objective (13): L_x + β·L_z + γ·L_r at one inference step, per (image, expert).

All three terms are sums over pixels (and latent dimensions), as in Appendix A.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from econ_scenes.model.experts import Proposal
from econ_scenes.model.layers import full_precision

LOG_FLOOR = -50.0


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, computed stably; x is capped just below 0."""
    x = x.clamp(max=-1e-6)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def reconstruction_loss(image: Tensor, log_region: Tensor, appearance: Tensor,
                        sigma_x: float) -> Tensor:
    """(10): Σ_pixels r̃ / (2σ_x²) · ‖x − μ‖².

    image: (N, 1, 3, H, W); log_region: (N, G, H, W); appearance: (N, G, 3, H, W) → (N, G).
    """
    error = (image - appearance).pow(2).sum(dim=2)
    return (log_region.exp() * error).sum(dim=(-2, -1)) / (2.0 * sigma_x**2)


def latent_kl(mean: Tensor, log_var: Tensor) -> Tensor:
    """(11): KL(N(μ, σ²) ‖ N(0, I)) summed over latent dimensions; (N, G, L) → (N, G)."""
    return 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(dim=-1)


def region_kl(log_region: Tensor, log_scope: Tensor, shape_logit: Tensor) -> Tensor:
    """(12): Σ_pixels KL(Bernoulli(r̃) ‖ Bernoulli(s·m̃)), with (7) p(r | s, z) = Bernoulli(s·m̃).

    The scope is what frees the shape: outside s both r̃ and s·m̃ vanish, so m̃ may cover the
    occluded part of the object at no cost. All inputs (N, G, H, W) → (N, G).
    """
    log_q = log_region.clamp_min(LOG_FLOOR)
    log_p = (log_scope + F.logsigmoid(shape_logit)).clamp_min(LOG_FLOOR)
    q = log_q.exp()
    kl = q * (log_q - log_p) + (1.0 - q) * (log1mexp(log_q) - log1mexp(log_p))
    return kl.sum(dim=(-2, -1))


@dataclass(frozen=True)
class StepLosses:
    """The terms of (13) at one step, each (N, G)."""

    reconstruction: Tensor
    latent_kl: Tensor
    region_kl: Tensor

    def total(self, beta: float, gamma: float) -> Tensor:
        return self.reconstruction + beta * self.latent_kl + gamma * self.region_kl


def step_losses(image: Tensor, proposal: Proposal, sigma_x: float) -> StepLosses:
    """image: (N, 3, H, W); proposal tensors (N, G, ...) → :class:`StepLosses` of (N, G)."""
    target = full_precision(image.unsqueeze(1))
    return StepLosses(
        reconstruction=reconstruction_loss(target, proposal.log_region, proposal.appearance,
                                           sigma_x),
        latent_kl=latent_kl(proposal.latent_mean, proposal.latent_log_var),
        region_kl=region_kl(proposal.log_region, proposal.log_scope, proposal.shape_logit),
    )
