"""Data-parallel training with ``torch.distributed`` (launched by ``torchrun``).

Every process draws the same global batch (seeded by the iteration), takes its contiguous share,
runs the competition on its own scenes and back-propagates; DistributedDataParallel averages
the gradients (NCCL on GPUs, gloo on CPUs). The random draws of the competition and of the
latents are made for the whole batch and sliced (:meth:`ECON.infer`'s ``shard``), so N
processes train exactly the model one process would train on the combined batch. Only rank 0
writes checkpoints, snapshots and TensorBoard logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from econ_scenes.errors import EconError
from econ_scenes.model import ECON
from econ_scenes.model.econ import Inference


@dataclass(frozen=True)
class Cluster:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Cluster:
        """Read torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (absent: one process)."""
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError as error:
            raise EconError(f"malformed torchrun environment: {error}") from error
        if world < 1 or not 0 <= rank < world:
            raise EconError(f"RANK={rank} must lie in [0, WORLD_SIZE={world})")
        return cls(rank=rank, world_size=world, local_rank=local)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world_size

    def device(self, name: str) -> torch.device:
        """The training device: ``auto`` picks this process's GPU when there is one."""
        cuda = torch.cuda.is_available()
        if name.startswith("cuda") and not cuda:
            raise EconError(f"device {name!r} requested but CUDA is not available")
        if name == "auto":
            name = "cuda" if cuda else "cpu"
        if name == "cuda" and self.distributed:
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return torch.device(name)

    def start(self, device: torch.device) -> None:
        """Join the process group (no-op for one process)."""
        if not self.distributed or dist.is_initialized():
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def stop(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def rows(self, batch_size: int) -> slice:
        """This process's rows of a global batch."""
        if batch_size % self.world_size:
            raise EconError(f"batch_size {batch_size} must be divisible by the number of "
                            f"processes ({self.world_size})")
        share = batch_size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum over processes."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def from_main(self, value: float, device: torch.device) -> float:
        """Rank 0's value on every process (wall-clock budgets must stop all ranks together)."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.broadcast(tensor, src=0)
        return float(tensor.item())


class Objective(nn.Module):
    """ECON's training forward pass as a module, so that DistributedDataParallel can wrap it."""

    def __init__(self, model: ECON) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, gt_regions: Tensor | None, iteration: int,
                shard: tuple[int, int], handicap: Tensor | None = None,
                ) -> tuple[Tensor, Inference]:
        """The loss of one training step, with the competition's schedule at ``iteration``
        and the usage balance's ``handicap`` (K,)."""
        cfg = self.model.config
        out = self.model.infer(images, stochastic=True, gt_regions=gt_regions,
                               temperature=cfg.temperature(iteration),
                               scope_cost=cfg.scope_cost(iteration), handicap=handicap,
                               shard=shard)
        return out.loss, out


def wrap(model: ECON, cluster: Cluster, device: torch.device) -> nn.Module:
    """The module the loop calls: DDP around the objective when several processes train."""
    objective = Objective(model)
    if not cluster.distributed:
        return objective
    kwargs: dict[str, Any] = {"device_ids": [device]} if device.type == "cuda" else {}
    # With ground-truth regions the attention U-Net is never used, and a frozen expert's slices
    # get zero gradients only: let DDP look for unused parameters each iteration.
    return nn.parallel.DistributedDataParallel(objective, find_unused_parameters=True, **kwargs)
