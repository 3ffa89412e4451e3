"""Semi-amortised inference: refine each step's latent by descending that step's loss (13).

The encoder g_k(x, r) answers in one pass; on objects it rarely sees (a sliver of a triangle
behind two others) that answer can be far from the best latent the decoder f_k admits. Holding
what the competition decided (winners, regions r̃_t, scopes s_t: attention does not depend on
z), each winner's posterior mean μ_t is moved by Adam on

    L_x(f_k(μ_t)) + β·½‖μ_t‖² + γ·L_r(f_k(μ_t))

which is (13) with the posterior's variance held at 1 (Adam, a fixed learning rate: 0.05 converges
in about 50 steps on the shipped models, 0.2 overshoots). Nothing outside the image, its regions
and the model enters: the hidden part of a shape is still the decoder's to imagine, but the
visible part now constrains it as tightly as the objective asks.

The competition can use the same descent before it compares the experts
(``competition_refine_steps``, see :mod:`econ_scenes.model.econ`): every candidate's mean is
moved on its own score, λ·L_x + L_r, plus the same β·½‖μ‖², so that experts are compared by how
well their decoders *can* explain a region rather than by how well their encoders guessed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from econ_scenes.config import ModelConfig
from econ_scenes.errors import EconError
from econ_scenes.model.experts import Experts
from econ_scenes.model.layers import full_precision
from econ_scenes.model.objective import LOG_FLOOR, reconstruction_loss, region_kl
from econ_scenes.types import Decomposition

DEFAULT_LR = 0.05


def _groups(expert: Tensor) -> list[tuple[Tensor, Tensor]]:
    """(expert index (1,), rows it decodes) for each expert among the rows' experts (M,)."""
    return [(k.reshape(1), torch.nonzero(expert == k).squeeze(1)) for k in torch.unique(expert)]


def decode_rows(experts: Experts, latent: Tensor, expert: Tensor | list[tuple[Tensor, Tensor]]
                ) -> tuple[Tensor, Tensor]:
    """Each latent (M, L) through its own expert's decoder (``expert``: (M,), or its
    :func:`_groups`), one dense batch per expert → appearance (M, 3, H, W), shape logits
    (M, H, W) in the latents' dtype."""
    size = experts.decoder.image_size
    appearance = latent.new_empty(len(latent), 3, size, size)
    logit = latent.new_empty(len(latent), size, size)
    for k, rows in _groups(expert) if isinstance(expert, Tensor) else expert:
        out, shape_logit = experts.decoder(latent[rows].unsqueeze(1), k)
        appearance = appearance.index_put((rows,), out[:, 0].to(latent.dtype))
        logit = logit.index_put((rows,), shape_logit[:, 0].to(latent.dtype))
    return appearance, logit


def refinement_loss(image: Tensor, log_region: Tensor, log_scope: Tensor, latent: Tensor,
                    appearance: Tensor, shape_logit: Tensor, config: ModelConfig,
                    weights: tuple[float, float] | None = None) -> Tensor:
    """w_x·L_x + β·½‖μ‖² + w_r·L_r per row, with (w_x, w_r) = ``weights``: (1, γ) by default,
    which is (13) with the posterior variance held at 1, or the competition's (λ, 1).

    image: (M, 1, 3, H, W); log_region, log_scope: (M, 1, H, W); latent: (M, L);
    appearance: (M, 1, 3, H, W); shape_logit: (M, 1, H, W) → (M, 1).
    """
    w_x, w_r = (1.0, config.gamma) if weights is None else weights
    return (w_x * reconstruction_loss(image, log_region, appearance, config.sigma_x)
            + config.beta * 0.5 * latent.pow(2).sum(-1, keepdim=True)
            + w_r * region_kl(log_region, log_scope, shape_logit))


def descend(experts: Experts, config: ModelConfig, image: Tensor, log_region: Tensor,
            log_scope: Tensor, latent: Tensor, expert: Tensor, steps: int, lr: float,
            weights: tuple[float, float] | None = None) -> Tensor:
    """Adam on :func:`refinement_loss` of each row's latent, regions held.

    image: (M, 3, H, W); log_region, log_scope: (M, H, W); latent: (M, L); expert: (M,) whose
    decoder reads each row → the refined latents (M, L), detached, in full precision.
    """
    latent = full_precision(latent.detach()).clone().requires_grad_(True)
    target = image.to(latent.dtype).unsqueeze(1)
    log_region, log_scope = (t.to(latent.dtype).unsqueeze(1) for t in (log_region, log_scope))
    optimiser = torch.optim.Adam([latent], lr=lr)
    groups = _groups(expert)  # once, not at every step
    with torch.enable_grad():
        for _ in range(steps):
            appearance, logit = decode_rows(experts, latent, groups)
            loss = refinement_loss(target, log_region, log_scope, latent, appearance.unsqueeze(1),
                                   logit.unsqueeze(1), config, weights).sum()
            (grad,) = torch.autograd.grad(loss, latent)
            latent.grad = grad
            optimiser.step()
    return latent.detach()


def refine(experts: Experts, config: ModelConfig, images: Tensor, decomposition: Decomposition,
           steps: int, lr: float = DEFAULT_LR) -> Decomposition:
    """Refine the latents of a decomposition of ``images`` (B, 3, H, W) for ``steps`` steps.

    Returns the decomposition with new ``latent`` (B, T, L), ``appearance``, ``shape`` and
    ``reconstruction``; winners, regions, scopes and scores are unchanged.
    """
    if steps < 0:
        raise EconError(f"refinement steps must be >= 0, got {steps}")
    if steps == 0:
        return decomposition
    batch, n_steps = decomposition.winner.shape
    winner = decomposition.winner.reshape(-1)
    region = full_precision(decomposition.region).reshape(batch * n_steps, *images.shape[-2:])
    log_region = region.clamp_min(1e-30).log().clamp_min(LOG_FLOOR)
    log_scope = (full_precision(decomposition.scope).reshape(log_region.shape)
                 .clamp_min(1e-30).log().clamp_min(LOG_FLOOR))
    latent = descend(experts, config, images.repeat_interleave(n_steps, dim=0), log_region,
                     log_scope, decomposition.latent.reshape(batch * n_steps, -1), winner,
                     steps, lr)
    with torch.no_grad():
        appearance, logit = decode_rows(experts, latent, winner)
    appearance = appearance.reshape(batch, n_steps, *appearance.shape[1:])
    shape = torch.sigmoid(logit).reshape(batch, n_steps, *logit.shape[1:])
    reconstruction = (full_precision(decomposition.region).unsqueeze(2) * appearance).sum(dim=1)
    return Decomposition(
        winner=decomposition.winner, region=decomposition.region, scope=decomposition.scope,
        appearance=appearance, shape=shape, latent=latent.reshape(batch, n_steps, -1),
        step_scores=decomposition.step_scores, reconstruction=reconstruction)
