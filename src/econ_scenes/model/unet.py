"""Attention network a_k(x, s) (Appendix C.2.2): a U-Net as in MONet / GENESIS.

Down blocks: 3×3 conv → instance norm → ReLU → 2×2 max-pool; an MLP bottleneck; up blocks:
nearest ×2 upsampling → concatenate the skip → 3×3 conv → instance norm → ReLU; a 1×1 conv
gives one attention logit per pixel. The region and the next scope follow in log space,
log r̃ = log s + log σ(a) and log s' = log s + log σ(-a) (eq. 14), so the scope never leaves [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from econ_scenes.model.layers import (
    StackedConv2d,
    StackedInstanceNorm,
    StackedLinear,
    full_precision,
    group_cat,
)

LOG_SCOPE_FLOOR = -10.0


class AttentionUNet(nn.Module):
    """K stacked attention U-Nets on (RGB, log scope)."""

    def __init__(
        self, n_experts: int, image_size: int, channels: tuple[int, ...], mlp_hidden: int,
        bias: float,
    ) -> None:
        super().__init__()
        self.channels = channels
        c_in = 4
        self.down_convs = nn.ModuleList()
        self.down_norms = nn.ModuleList()
        for c in channels:
            self.down_convs.append(StackedConv2d(n_experts, c_in, c))
            self.down_norms.append(StackedInstanceNorm(n_experts, c))
            c_in = c
        self.bottom = image_size // 2 ** len(channels)
        flat = channels[-1] * self.bottom**2
        self.mlp = nn.ModuleList(
            [StackedLinear(n_experts, flat, mlp_hidden), StackedLinear(n_experts, mlp_hidden, mlp_hidden),
             StackedLinear(n_experts, mlp_hidden, flat)]
        )
        self.up_convs = nn.ModuleList()
        self.up_norms = nn.ModuleList()
        c_cur = channels[-1]
        for i in reversed(range(len(channels))):
            c_out = channels[max(i - 1, 0)]
            self.up_convs.append(StackedConv2d(n_experts, c_cur + channels[i], c_out))
            self.up_norms.append(StackedInstanceNorm(n_experts, c_out))
            c_cur = c_out
        self.head = StackedConv2d(n_experts, c_cur, 1, kernel_size=1)
        with torch.no_grad():
            self.head.bias.fill_(bias)

    def forward(self, inputs: Tensor, experts: Tensor, shared: bool) -> Tensor:
        """inputs: (N, 4, H, W) if shared else (N, G·4, H, W) → attention logits (N, G, H, W)."""
        groups = experts.numel()
        h = inputs
        skips = []
        for i, (conv, norm) in enumerate(zip(self.down_convs, self.down_norms, strict=True)):
            h = F.relu(norm(conv(h, experts, shared=shared and i == 0), experts), inplace=True)
            skips.append(h)
            h = F.max_pool2d(h, 2)
        n = h.shape[0]
        flat = h.reshape(n, groups, -1)
        flat = F.relu(self.mlp[0](flat, experts))
        flat = F.relu(self.mlp[1](flat, experts))
        flat = F.relu(self.mlp[2](flat, experts))
        h = flat.reshape(h.shape)
        for conv, norm, skip in zip(self.up_convs, self.up_norms, reversed(skips), strict=True):
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = F.relu(norm(conv(group_cat(h, skip, groups), experts), experts), inplace=True)
        return full_precision(self.head(h, experts))
