"""TensorBoard summaries: win rates per step and expert, image grids of decompositions."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from econ_scenes.model import ECON


def win_rates(winner: Tensor, n_experts: int) -> Tensor:
    """winner: (B, T) → (T, K) fraction of images each expert wins at each step."""
    one_hot = torch.nn.functional.one_hot(winner, n_experts).float()
    return one_hot.mean(dim=0)


def decomposition_grid(model: ECON, images: Tensor) -> Tensor:
    """Rows: input, reconstruction, then each step's region ⊙ object. → (3, H·rows, W·B)."""
    with torch.no_grad():
        was_training = model.training
        model.eval()
        d = model.infer(images, stochastic=False, search=False).decomposition  # training's
        model.train(was_training)
    rows = [images, d.reconstruction.clamp(0, 1)]
    rows += [(d.region[:, t : t + 1] * d.appearance[:, t]).clamp(0, 1)
             for t in range(d.region.shape[1])]
    grid = torch.stack(rows)  # (R, B, 3, H, W)
    r, b, c, h, w = grid.shape
    return grid.permute(2, 0, 3, 1, 4).reshape(c, r * h, b * w).float().cpu()


def log_images(writer: SummaryWriter, model: ECON, images: Tensor, iteration: int) -> None:
    writer.add_image("decomposition", decomposition_grid(model, images), iteration)
