"""The model and training on a GPU: skipped where CUDA is not available (CI has none).

The GPU model takes the grouped layout of the experts (one computation for all K, the default)
and the CPU model here the loop over experts, so that the comparison covers both layouts and both
devices; they must give the same decomposition, loss and gradients, and a run trained on the GPU
must resume and load on the CPU.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from econ_scenes.config import ModelConfig, RunConfig, TrainConfig
from econ_scenes.data import Scenes
from econ_scenes.model import ECON
from econ_scenes.scene import SceneModel, as_image_tensor
from econ_scenes.train import load_model, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")


def images_of(scenes: Scenes, n: int = 8) -> Tensor:
    return as_image_tensor(np.asarray(scenes.images[:n]), scenes.images.shape[1])


def loss_and_gradients(model: ECON, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Loss, winners and flat gradients of a deterministic pass (posterior means, argmin
    winners): the competition noise of the two devices' generators differs."""
    model.zero_grad(set_to_none=True)
    out = model.infer(images, stochastic=False)
    out.loss.backward()
    grads = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).flatten().cpu()
                       for p in model.parameters()])
    return out.loss.detach().cpu(), out.decomposition.winner.cpu(), grads


@pytest.fixture
def model_pair(tiny_model_config: ModelConfig) -> tuple[ECON, ECON]:
    torch.manual_seed(0)
    cpu = ECON(tiny_model_config).double()
    gpu = ECON(tiny_model_config).double().to(CUDA)
    gpu.load_state_dict(cpu.state_dict())
    cpu.grouped = False
    return cpu, gpu


def test_gpu_decomposition_equals_cpu(model_pair: tuple[ECON, ECON], tiny_scenes: Scenes) -> None:
    cpu, gpu = model_pair
    x = images_of(tiny_scenes).double()
    with torch.no_grad():
        on_cpu = cpu.infer(x, stochastic=False).decomposition
        on_gpu = gpu.infer(x.to(CUDA), stochastic=False).decomposition
    assert torch.equal(on_cpu.winner, on_gpu.winner.cpu())
    assert on_gpu.appearance.dtype == torch.float64
    # float64 throughout: only the order of the sums differs between the devices
    for name in ("region", "appearance", "shape", "latent", "step_scores"):
        torch.testing.assert_close(getattr(on_gpu, name).cpu(), getattr(on_cpu, name),
                                   rtol=1e-9, atol=1e-11, msg=name)


def test_gpu_search_equals_cpu(model_pair: tuple[ECON, ECON], tiny_scenes: Scenes) -> None:
    """The wider competition at inference (cross and refined candidates) on both devices."""
    cpu, gpu = model_pair
    for model in (cpu, gpu):
        model.config = dataclasses.replace(model.config, competition_cross=True,
                                           competition_refine_steps=5, competition_refine_top=4)
    x = images_of(tiny_scenes).double()
    with torch.no_grad():
        on_cpu = cpu.infer(x, stochastic=False).decomposition
        on_gpu = gpu.infer(x.to(CUDA), stochastic=False).decomposition
    assert torch.equal(on_cpu.winner, on_gpu.winner.cpu())
    for name in ("region", "scope", "latent", "step_scores"):
        torch.testing.assert_close(getattr(on_gpu, name).cpu(), getattr(on_cpu, name),
                                   rtol=1e-7, atol=1e-9, msg=name)


def test_gpu_training_pass_equals_cpu(model_pair: tuple[ECON, ECON], tiny_scenes: Scenes) -> None:
    """Grouped experts on the GPU against the per-expert loop on the CPU: loss and gradients."""
    cpu, gpu = model_pair
    x = images_of(tiny_scenes).double()
    loss_cpu, winner_cpu, grad_cpu = loss_and_gradients(cpu, x)
    loss_gpu, winner_gpu, grad_gpu = loss_and_gradients(gpu, x.to(CUDA))
    assert torch.equal(winner_cpu, winner_gpu)
    torch.testing.assert_close(loss_gpu, loss_cpu, rtol=1e-9, atol=0)
    assert grad_cpu.abs().sum() > 0
    assert (grad_gpu - grad_cpu).norm() < 1e-9 * grad_cpu.norm()


def test_bf16_training_on_gpu_resumes_and_loads_on_cpu(
    tmp_path: Path, tiny_scenes_npz: Path, tiny_model_config: ModelConfig, tiny_scenes: Scenes
) -> None:
    config = RunConfig(
        model=dataclasses.replace(tiny_model_config, n_experts=2),
        train=TrainConfig(batch_size=8, lr=3e-3, n_val=16, eval_every=10, checkpoint_every=10,
                          image_every=0, device="cuda", precision="bf16"),
    ).validate()
    run = tmp_path / "run"
    first = train(run, config=config, data=tiny_scenes_npz, budget={"max_iterations": 20},
                  progress=False)
    resumed = train(run, resume=True, budget={"max_iterations": 40}, progress=False)
    assert (first.iterations, resumed.iterations) == (20, 40)
    assert math.isfinite(resumed.best_val_loss)
    model, saved = load_model(run, "cpu")
    assert saved.train.device == "cuda"
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in model.parameters())
    on_gpu = SceneModel.load(run, "cuda")
    scenes = on_gpu.decompose(tiny_scenes.images[:4])
    assert scenes.region.shape[:2] == (4, tiny_model_config.n_steps)
    torch.testing.assert_close(scenes.region.sum(1), torch.ones(4, 16, 16), rtol=0, atol=1e-3)
    appearance, shape = on_gpu.sample_expert(0, 3)
    assert appearance.shape == (3, 3, 16, 16) and torch.isfinite(shape).all()
