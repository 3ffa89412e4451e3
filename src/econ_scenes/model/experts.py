"""The ensemble of K experts: each attends a_k(x, s), encodes g_k(x, r) and decodes f_k(z)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from econ_scenes.config import ModelConfig
from econ_scenes.model.layers import channels_last, group_cat
from econ_scenes.model.unet import LOG_SCOPE_FLOOR, AttentionUNet
from econ_scenes.model.vae import BroadcastDecoder, Encoder


@dataclass(frozen=True)
class Proposal:
    """What G experts propose for N images at one inference step (all tensors lead with N, G).

    log_scope: (N, G, H, W) log s_t; log_region: (N, G, H, W) log r̃_t (region probabilities);
    attention: (N, G, H, W) attention logits, or None where the region was given;
    latent_mean, latent_log_var, latent: (N, G, L); appearance: (N, G, 3, H, W) μ_k(z);
    shape_logit: (N, G, H, W) logit of the unoccluded shape m̃_k(z).
    """

    log_scope: Tensor
    log_region: Tensor
    attention: Tensor | None
    latent_mean: Tensor
    latent_log_var: Tensor
    latent: Tensor
    appearance: Tensor
    shape_logit: Tensor

    def _map(self, fn) -> Proposal:  # type: ignore[no-untyped-def]
        return Proposal(**{
            f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name))
            for f in fields(self)
        })

    def select(self, winner: Tensor) -> Proposal:
        """Keep the winner's proposal per image: (B, K, ...) → (B, 1, ...)."""
        rows = torch.arange(winner.shape[0], device=winner.device)
        return self._map(lambda t: t[rows, winner].unsqueeze(1))

    def per_image(self) -> Proposal:
        """Winner layout (1, B, ...) → (B, 1, ...)."""
        return self._map(lambda t: t.transpose(0, 1))

    def take(self, rows: Tensor) -> Proposal:
        """Reorder the images: (N, ...) → (len(rows), ...)."""
        return self._map(lambda t: t[rows])

    def replace(self, **tensors: Tensor | None) -> Proposal:
        """The same proposal with some tensors replaced."""
        return Proposal(**{f.name: tensors.get(f.name, getattr(self, f.name)) for f in fields(self)})

    def fold(self, n_regions: int) -> Proposal:
        """Candidates made region by region, (J·N, G, ...) with rows (j, n) → (N, J·G, ...) with
        candidate c = j·G + g of image n."""
        def fold(t: Tensor) -> Tensor:
            n = t.shape[0] // n_regions
            return t.reshape(n_regions, n, *t.shape[1:]).transpose(0, 1).reshape(
                n, n_regions * t.shape[1], *t.shape[2:])
        return self._map(fold)

    def gather(self, index: Tensor) -> Proposal:
        """Per image, the candidates ``index``: (N, G') of (N, C, ...) → (N, G', ...)."""
        rows = torch.arange(index.shape[0], device=index.device).unsqueeze(1)
        return self._map(lambda t: t[rows, index])

    @staticmethod
    def cat(proposals: list[Proposal], dim: int = 1) -> Proposal:
        """Concatenate along the expert axis, list of (N, 1, ...) → (N, G, ...), or with dim=0
        along the image axis, list of (N_i, G, ...) → (Σ N_i, G, ...)."""
        return Proposal(**{
            f.name: None if getattr(proposals[0], f.name) is None
            else torch.cat([getattr(p, f.name) for p in proposals], dim=dim)
            for f in fields(Proposal)
        })


class Experts(nn.Module):
    """K experts with stacked parameters (see :mod:`econ_scenes.model.layers` for the layouts)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        k, size = config.n_experts, config.image_size
        self.n_experts = k
        self.latent_dim = config.latent_dim
        self.attention = AttentionUNet(
            k, size, config.unet_channels, config.unet_mlp_hidden, config.attention_bias
        )
        self.encoder = Encoder(k, size, config.vae_layers, config.vae_features, config.latent_dim)
        self.decoder = BroadcastDecoder(
            k, size, config.vae_layers, config.vae_features, config.latent_dim,
            config.shape_latent_dim, config.shape_decoder == "template",
        )

    def forward(
        self,
        image: Tensor,
        log_scope: Tensor,
        experts: Tensor,
        *,
        shared: bool,
        noise: Tensor | None,
        log_region: Tensor | None = None,
    ) -> Proposal:
        """Attend, encode and decode with the experts ``experts: (G,)``.

        shared=True: image (N, 3, H, W) and log_scope (N, 1, H, W) are seen by every expert.
        shared=False: image (N, G·3, H, W) and log_scope (N, G, H, W), one per group.
        noise: (N, G, L) standard normal for the reparametrised latent, or None for the mean.
        log_region: (N, 1 or G, H, W) to use instead of attention (last step, ground truth).
        """
        n, _, height, width = image.shape
        groups = experts.numel()
        attention = None
        if log_region is None:
            scope_input = log_scope.clamp_min(LOG_SCOPE_FLOOR)
            inputs = channels_last(torch.cat([image, scope_input], 1) if shared
                                   else group_cat(image, scope_input, groups))
            attention = self.attention(inputs.to(image.dtype), experts, shared=shared)
            log_region = log_scope + F.logsigmoid(attention)
        log_region = log_region.expand(n, groups, height, width)
        log_scope = log_scope.expand(n, groups, height, width)

        pixels = image.reshape(n, 1 if shared else groups, 3, height, width)
        pixels = pixels.expand(n, groups, 3, height, width).reshape(n, groups * 3, height, width)
        region = log_region.exp().to(image.dtype)
        encoder_input = group_cat(pixels, region, groups)
        mean, log_var = self.encoder(encoder_input, experts)
        latent = mean if noise is None else mean + (0.5 * log_var).exp() * noise
        appearance, shape_logit = self.decoder(latent.to(image.dtype), experts)
        return Proposal(log_scope, log_region, attention, mean, log_var, latent, appearance,
                        shape_logit)

    def generate(self, latent: Tensor, experts: Tensor) -> tuple[Tensor, Tensor]:
        """Decode latents (N, G, L) → appearance (N, G, 3, H, W), shape probability (N, G, H, W)."""
        appearance, shape_logit = self.decoder(latent, experts)
        return appearance, torch.sigmoid(shape_logit)
