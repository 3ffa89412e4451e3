"""Expert VAE (Appendix C.2.1): encoder g_k(x, r) and spatial-broadcast decoder f_k(z)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from econ_scenes.model.layers import StackedConv2d, StackedLinear, full_precision


def coordinate_grid(size: int) -> Tensor:
    """(H, W, 2) pixel centres as (x, y) in [-1, 1]: the decoders' coordinate maps."""
    axis = torch.linspace(-1.0, 1.0, size)
    grid_y, grid_x = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([grid_x, grid_y], -1)


class Encoder(nn.Module):
    """K stacked encoders: blocks of 3×3 conv → ReLU → 2×2 max-pool, then FC 4L → ReLU → FC 2L."""

    def __init__(
        self, n_experts: int, image_size: int, layers: int, features: int, latent_dim: int
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [StackedConv2d(n_experts, 4 if i == 0 else features, features) for i in range(layers)]
        )
        flat = features * (image_size // 2**layers) ** 2
        self.fc1 = StackedLinear(n_experts, flat, 4 * latent_dim)
        self.fc2 = StackedLinear(n_experts, 4 * latent_dim, 2 * latent_dim)

    def forward(self, inputs: Tensor, experts: Tensor) -> tuple[Tensor, Tensor]:
        """inputs: (N, G·4, H, W) image and region → posterior mean, log-variance (N, G, L)."""
        h = inputs
        for conv in self.convs:
            # max-pool and ReLU commute: pooling first leaves ReLU a quarter of the pixels
            h = F.relu(F.max_pool2d(conv(h, experts), 2), inplace=True)
        flat = h.reshape(h.shape[0], experts.numel(), -1)
        stats = full_precision(self.fc2(F.relu(self.fc1(flat, experts)), experts))
        mean, log_var = stats.chunk(2, dim=-1)
        return mean, log_var.clamp(-10.0, 10.0)


class BroadcastDecoder(nn.Module):
    """K stacked spatial-broadcast decoders: z tiled + 2 coordinate maps → conv-ReLU blocks → 1×1
    conv to an RGB mean (sigmoid) and an unoccluded-shape logit.

    With ``shape_dim`` S > 0 the shape logit comes from a second stack of the same blocks that
    sees only z[:S] (and the coordinates): an expert's shape is then a function of S numbers
    (position and size for S = 3), so it cannot hold several shape classes, while its colours
    use the whole latent. S = 0 is the paper's decoder: one stack, both outputs from all of z.
    With ``template`` (S = 3) that shape is the expert's :class:`TemplateShape` placed by z[:3].
    """

    def __init__(
        self, n_experts: int, image_size: int, layers: int, features: int, latent_dim: int,
        shape_dim: int = 0, template: bool = False,
    ) -> None:
        super().__init__()
        if template and shape_dim != 3:
            raise ValueError(f"a template shape is placed by 3 latent dimensions, got {shape_dim}")
        self.image_size = image_size
        self.shape_dim = shape_dim
        self.convs = self._blocks(n_experts, layers, features, latent_dim)
        self.head = StackedConv2d(n_experts, features, 3 if shape_dim else 4, kernel_size=1)
        self.template = TemplateShape(n_experts, image_size) if template else None
        if shape_dim and not template:
            self.shape_convs = self._blocks(n_experts, layers, features, shape_dim)
            self.shape_head = StackedConv2d(n_experts, features, 1, kernel_size=1)
        self.register_buffer("coords", coordinate_grid(image_size), persistent=False)

    @staticmethod
    def _blocks(n_experts: int, layers: int, features: int, latent_dim: int) -> nn.ModuleList:
        return nn.ModuleList([StackedConv2d(n_experts, latent_dim + 2 if i == 0 else features,
                                            features) for i in range(layers)])

    def _broadcast(self, z: Tensor, convs: nn.ModuleList, head: StackedConv2d,
                   experts: Tensor) -> Tensor:
        """z: (N, G, L') → head output (N, G, C, H, W) in full precision."""
        n, groups, latent = z.shape
        size = self.image_size
        tiled = z.reshape(n, 1, 1, groups, latent).expand(n, size, size, groups, latent)
        coords = self.coords.to(z.dtype).reshape(1, size, size, 1, 2)
        coords = coords.expand(n, size, size, groups, 2)
        # (N, H, W, G·(L'+2)) viewed as NCHW: a channels-last tensor without a copy.
        h = torch.cat([tiled, coords], dim=-1).reshape(n, size, size, -1).permute(0, 3, 1, 2)
        for conv in convs:
            h = F.relu(conv(h, experts), inplace=True)
        return full_precision(head(h, experts)).reshape(n, groups, -1, size, size)

    def forward(self, z: Tensor, experts: Tensor) -> tuple[Tensor, Tensor]:
        """z: (N, G, L) → appearance μ (N, G, 3, H, W) in [0, 1], shape logits (N, G, H, W)."""
        out = self._broadcast(z, self.convs, self.head, experts)
        if not self.shape_dim:
            return torch.sigmoid(out[:, :, :3]), out[:, :, 3]
        if self.template is not None:
            return torch.sigmoid(out), self.template(z[..., :3], experts)
        shape = self._broadcast(z[..., : self.shape_dim], self.shape_convs, self.shape_head,
                                experts)
        return torch.sigmoid(out), shape[:, :, 0]


class TemplateShape(nn.Module):
    """K learned shape templates, one per expert, each placed in the image by a pose of three
    latent dimensions: centre (x, y) and log half-width.

    The template is a logit map over its own square frame [-1, 1]²; a pose maps pixel p to frame
    coordinates (p − centre) / half-width and the template is read there (bilinear); outside the
    frame the shape is off. An expert can draw one shape at any position and size, not several
    shape classes: the capacity limit that sorts objects by shape when colour does not.
    The pose is an affine function of z[:3] per expert, started so that z ~ N(0, I) covers the
    dataset's objects (centres within ±0.4·2σ, half-widths 0.4·e^{±0.15·2}).
    """

    OFF = 10.0
    """Outside the template's frame the shape logit is −OFF (sigmoid ≈ 5·10⁻⁵)."""

    def __init__(self, n_experts: int, image_size: int) -> None:
        super().__init__()
        coords = coordinate_grid(image_size)
        # Start: the same soft disc in every frame (radius 0.8), plus noise to break symmetry.
        disc = 4.0 * (0.8 - coords.norm(dim=-1))
        self.logits = nn.Parameter(disc.expand(n_experts, 1, image_size, image_size)
                                   + 0.1 * torch.randn(n_experts, 1, image_size, image_size))
        self.pose_scale = nn.Parameter(torch.tensor([[0.4, 0.4, 0.15]]).repeat(n_experts, 1))
        self.pose_shift = nn.Parameter(torch.tensor([[0.0, 0.0, math.log(0.4)]])
                                       .repeat(n_experts, 1))
        self.register_buffer("coords", coords, persistent=False)

    def forward(self, pose: Tensor, experts: Tensor) -> Tensor:
        """pose: (N, G, 3) latent z[:3] of the experts ``experts: (G,)`` → shape logits (N, G, H, W)."""
        n, groups, _ = pose.shape
        with torch.autocast(pose.device.type, enabled=False):  # logits near ±OFF need fp32
            pose = full_precision(pose)
            pose = pose * self.pose_scale.index_select(0, experts) + self.pose_shift.index_select(
                0, experts)
            centre = pose[..., None, None, :2]
            # bounded, so that a runaway size cannot leave the template outside every pixel
            half_width = pose[..., None, None, 2:].clamp(-4.0, 3.0).exp()
            frame = (self.coords.to(pose.dtype) - centre) / half_width  # (N, G, H, W, 2)
            size = frame.shape[2]
            # one grid_sample batch per expert: its template read at the frames of all N images
            frame = frame.transpose(0, 1).reshape(groups, n * size, size, 2)
            shape = F.grid_sample(self.logits.index_select(0, experts) + self.OFF, frame,
                                  mode="bilinear", padding_mode="zeros", align_corners=True)
        return shape.reshape(groups, n, size, size).transpose(0, 1) - self.OFF
