"""Semi-amortised inference: refining each step's latent on its own loss (13)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from econ_scenes.config import ModelConfig, RunConfig
from econ_scenes.data import Scenes
from econ_scenes.errors import EconError
from econ_scenes.model import ECON
from econ_scenes.model.experts import Proposal
from econ_scenes.model.objective import LOG_FLOOR, reconstruction_loss, region_kl, step_losses
from econ_scenes.model.refine import refine, refinement_loss
from econ_scenes.scene import SceneModel
from econ_scenes.types import Decomposition

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture
def scene_model(tiny_model_config: ModelConfig) -> SceneModel:
    torch.manual_seed(0)
    return SceneModel(ECON(tiny_model_config), RunConfig(model=tiny_model_config), run_dir=None)


def _images(scenes: Scenes, n: int = 8) -> torch.Tensor:
    return torch.from_numpy(scenes.images[:n].copy()).float().div(255).permute(0, 3, 1, 2)


def _objective(model: SceneModel, images: torch.Tensor, d: Decomposition) -> torch.Tensor:
    """(13) with the variance term left out, summed over steps: what refinement descends."""
    log = lambda t: t.float().clamp_min(1e-30).log().clamp_min(LOG_FLOOR)  # noqa: E731
    cfg = model.config.model
    logit = torch.logit(d.shape.float().clamp(1e-6, 1 - 1e-6))
    return (reconstruction_loss(images.unsqueeze(1), log(d.region), d.appearance.float(),
                                cfg.sigma_x)
            + cfg.beta * 0.5 * d.latent.float().pow(2).sum(-1)
            + cfg.gamma * region_kl(log(d.region), log(d.scope), logit)).sum()


def test_refinement_lowers_the_loss_and_keeps_what_the_competition_decided(
    scene_model: SceneModel, tiny_scenes: Scenes
) -> None:
    images = _images(tiny_scenes)
    before = scene_model.decompose(images)
    assert len(torch.unique(before.winner)) > 1  # the per-expert decoding path is exercised
    few = scene_model.decompose(images, refine_steps=5)
    after = scene_model.decompose(images, refine_steps=20)
    losses = [float(_objective(scene_model, images, d)) for d in (before, few, after)]
    assert losses[0] > losses[1] > losses[2], losses
    for name in ("winner", "region", "scope", "step_scores"):
        torch.testing.assert_close(getattr(after, name), getattr(before, name))
    assert not torch.allclose(after.latent, before.latent)
    torch.testing.assert_close(
        after.reconstruction, (after.region.unsqueeze(2) * after.appearance).sum(1))


def test_refined_latents_decode_through_their_winners(
    scene_model: SceneModel, tiny_scenes: Scenes
) -> None:
    images = _images(tiny_scenes, 4)
    d = scene_model.decompose(images, refine_steps=3)
    with torch.no_grad():
        for i, t in np.ndindex(*d.winner.shape):
            k = d.winner[i, t].reshape(1)
            appearance, shape = scene_model.model.experts.generate(d.latent[i, t][None, None], k)
            torch.testing.assert_close(d.appearance[i, t], appearance[0, 0], atol=1e-5, rtol=0)
            torch.testing.assert_close(d.shape[i, t], shape[0, 0], atol=1e-5, rtol=0)


def test_zero_steps_is_the_encoder_and_negative_steps_are_refused(
    scene_model: SceneModel, tiny_scenes: Scenes
) -> None:
    images = _images(tiny_scenes, 2)
    d = scene_model.decompose(images)
    assert refine(scene_model.model.experts, scene_model.config.model, images, d, 0) is d
    with pytest.raises(EconError, match="refinement steps must be >= 0"):
        refine(scene_model.model.experts, scene_model.config.model, images, d, -1)


def test_the_refinement_loss_is_13_with_unit_posterior_variance(
    scene_model: SceneModel, tiny_scenes: Scenes
) -> None:
    config = dataclasses.replace(scene_model.config.model, beta=2.5, gamma=0.7)
    images = _images(tiny_scenes, 4)
    d = scene_model.decompose(images)
    log = lambda t: t[:, :1].float().clamp_min(1e-30).log().clamp_min(LOG_FLOOR)  # noqa: E731
    latent = d.latent[:, 0]
    appearance, shape_logit = d.appearance[:, :1], torch.logit(d.shape[:, :1].clamp(1e-6, 1 - 1e-6))
    proposal = Proposal(log(d.scope), log(d.region), None, latent[:, None],
                        torch.zeros_like(latent[:, None]), latent[:, None], appearance, shape_logit)
    expected = step_losses(images, proposal, config.sigma_x).total(config.beta, config.gamma)
    got = refinement_loss(images.unsqueeze(1), log(d.region), log(d.scope), latent, appearance,
                          shape_logit, config)
    torch.testing.assert_close(got, expected)


def test_refinement_leaves_the_weights_alone(scene_model: SceneModel, tiny_scenes: Scenes
                                             ) -> None:
    before = {k: v.clone() for k, v in scene_model.model.state_dict().items()}
    scene_model.decompose(_images(tiny_scenes, 2), refine_steps=3)
    assert all(p.grad is None for p in scene_model.model.parameters())
    for k, v in scene_model.model.state_dict().items():
        torch.testing.assert_close(v, before[k])
