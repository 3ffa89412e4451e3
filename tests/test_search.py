"""Deterministic inference's wider competition: cross candidates and refined candidates."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from econ_scenes.config import ModelConfig, RunConfig
from econ_scenes.data import Scenes
from econ_scenes.errors import EconError
from econ_scenes.model import ECON
from econ_scenes.scene import SceneModel
from econ_scenes.types import Decomposition

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _model(config: ModelConfig, **settings: float | bool) -> SceneModel:
    torch.manual_seed(0)
    model = SceneModel(ECON(config), RunConfig(model=config), run_dir=None)
    model.set_competition(**settings)
    return model


def _images(scenes: Scenes, n: int = 16) -> torch.Tensor:
    return torch.from_numpy(scenes.images[:n].copy()).float().div(255).permute(0, 3, 1, 2)


def _with(model: SceneModel, images: torch.Tensor, n_steps: int, **settings: float | bool
          ) -> Decomposition:
    """Decompose with some competition settings, then put the model's settings back."""
    before = {name: getattr(model.config.model, name) for name in settings}
    model.set_competition(**settings)
    try:
        return model.decompose(images, n_steps=n_steps)
    finally:
        model.set_competition(**before)


def _assert_drawn_by_winners(model: SceneModel, d: Decomposition) -> None:
    """The first step's appearance and shape are the winner's decoder on the recorded latent."""
    for k in range(model.n_experts):
        mine = d.winner[:, 0] == k
        if not mine.any():
            continue
        with torch.no_grad():
            appearance, shape = model.model.experts.generate(d.latent[mine, 0].unsqueeze(1),
                                                             torch.tensor([k]))
        torch.testing.assert_close(d.appearance[mine, 0], appearance[:, 0], atol=1e-5, rtol=0)
        torch.testing.assert_close(d.shape[mine, 0], shape[:, 0], atol=1e-5, rtol=0)


def test_cross_candidates_give_each_expert_its_best_proposed_region(
    tiny_model_config: ModelConfig, tiny_scenes: Scenes
) -> None:
    model = _model(tiny_model_config)
    images = _images(tiny_scenes)
    plain = _with(model, images, 2)
    crossed = _with(model, images, 2, competition_cross=True)
    # at the first step every expert's own region is among its candidates, so its score can
    # only fall, and somewhere another expert's region suits it better
    assert (crossed.step_scores[:, 0] <= plain.step_scores[:, 0] + 1e-5).all()
    assert (crossed.step_scores[:, 0] < plain.step_scores[:, 0] - 1e-4).any()
    # the winning region is one that some expert's attention proposed at that step
    with torch.no_grad():
        proposed = model.model.experts(images, images.new_zeros(len(images), 1, 16, 16),
                                       torch.arange(3), shared=True, noise=None)
    distance = (proposed.log_region.exp() - crossed.region[:, :1]).abs().amax(dim=(-2, -1))
    assert (distance.min(dim=1).values < 1e-5).all()
    assert crossed.region[:, 0].ne(plain.region[:, 0]).any()
    # the winner's latent is its own encoding of that region (an expert given another
    # expert's latent, or the region's proposer, would not draw it)
    _assert_drawn_by_winners(model, crossed)
    # the scope shrinks by the chosen region (that of the attention network that proposed it)
    torch.testing.assert_close(crossed.scope[:, 1], (1 - crossed.region[:, 0]).clamp_min(0),
                               atol=1e-4, rtol=0)


def test_cross_candidates_change_nothing_for_one_expert(
    tiny_model_config: ModelConfig, tiny_scenes: Scenes
) -> None:
    model = _model(dataclasses.replace(tiny_model_config, n_experts=1))
    images = _images(tiny_scenes, 8)
    plain = _with(model, images, 3)
    crossed = _with(model, images, 3, competition_cross=True)
    for name in ("winner", "region", "scope", "latent", "step_scores"):
        torch.testing.assert_close(getattr(crossed, name), getattr(plain, name))


def test_refined_candidates_compete_with_lower_scores(
    tiny_model_config: ModelConfig, tiny_scenes: Scenes
) -> None:
    model = _model(tiny_model_config)
    images = _images(tiny_scenes)
    # one step: every expert is given the whole image, so only the latents differ
    plain = _with(model, images, 1)
    refined = _with(model, images, 1, competition_refine_steps=20, competition_refine_lr=0.05)
    assert refined.step_scores.mean() < plain.step_scores.mean() - 0.05
    assert not torch.allclose(refined.latent, plain.latent)
    _assert_drawn_by_winners(model, refined)  # the recorded latent is what the winner drew


def test_refine_top_refines_only_the_best_candidates(
    tiny_model_config: ModelConfig, tiny_scenes: Scenes
) -> None:
    model = _model(tiny_model_config)
    images = _images(tiny_scenes)
    plain = _with(model, images, 1)
    top = _with(model, images, 1, competition_refine_steps=10, competition_refine_top=1)
    changed = (top.step_scores - plain.step_scores).abs() > 1e-6
    assert changed.sum(dim=-1).le(1).all() and changed.any()
    best = plain.step_scores[:, 0].argmin(dim=1)
    rows = changed[:, 0].any(dim=1)  # the one refined candidate is the best unrefined one
    assert (changed[rows, 0].float().argmax(dim=1) == best[rows]).all()


def test_the_search_needs_inference_without_gradients(
    tiny_model_config: ModelConfig, tiny_scenes: Scenes
) -> None:
    model = _model(tiny_model_config)
    images = _images(tiny_scenes, 8)
    plain = model.model.infer(images, stochastic=False).loss.detach()
    model.set_competition(competition_cross=True, competition_refine_steps=3)
    with torch.no_grad():
        searched = model.model.infer(images, stochastic=False)
        unsearched = model.model.infer(images, stochastic=False, search=False)
    # with gradients (a deterministic objective being trained) and with search=False (the
    # validation loss of training) the competition is the configured one without the search
    with_grad = model.model.infer(images, stochastic=False)
    torch.testing.assert_close(with_grad.loss.detach(), plain)
    torch.testing.assert_close(unsearched.loss, plain)
    assert with_grad.loss.requires_grad
    assert not torch.allclose(searched.loss, plain)


def test_training_competition_is_unchanged(tiny_model_config: ModelConfig, tiny_scenes: Scenes
                                           ) -> None:
    model = _model(tiny_model_config)
    images = _images(tiny_scenes, 8)
    losses = []
    for settings in ({}, {"competition_cross": True, "competition_refine_steps": 3}):
        model.set_competition(**settings)
        for grad in (True, False):  # a training step, and a validation-style pass without grad
            torch.manual_seed(1)
            with torch.set_grad_enabled(grad):
                losses.append(model.model.infer(images, stochastic=True).loss.detach())
    torch.testing.assert_close(losses[0], losses[2])
    torch.testing.assert_close(losses[1], losses[3])


@pytest.mark.parametrize("settings, message", [
    ({"competition_refine_steps": -1}, "competition_refine_steps"),
    ({"competition_refine_top": -2}, "competition_refine_top"),
    ({"competition_refine_lr": 0.0}, "competition_refine_lr"),
    ({"competition_refine_lr": float("nan")}, "competition_refine_lr"),
    ({"competition_refine_steps": 20.0}, "competition_refine_steps must be a whole number"),
    ({"competition_refine_top": True}, "competition_refine_top must be a whole number"),
])
def test_impossible_search_settings_are_refused(
    tiny_model_config: ModelConfig, settings: dict[str, float], message: str
) -> None:
    with pytest.raises(EconError, match=message):
        dataclasses.replace(tiny_model_config, **settings).validate()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_both_layouts_search_alike(tiny_model_config: ModelConfig, tiny_scenes: Scenes,
                                   dtype: torch.dtype) -> None:
    model = _model(tiny_model_config, competition_cross=True, competition_refine_steps=3,
                   competition_refine_top=4)
    model.model.to(dtype)
    images = _images(tiny_scenes, 8).to(dtype)
    results = []
    for grouped in (False, True):  # a loop over experts, one grouped computation
        model.model.grouped = grouped
        with torch.no_grad():
            results.append(model.model.infer(images, stochastic=False).decomposition)
    assert results[0].latent.dtype == dtype  # the refined latents keep the model's precision
    for name in ("winner", "region", "scope", "latent", "step_scores"):
        torch.testing.assert_close(getattr(results[1], name), getattr(results[0], name),
                                   atol=1e-4, rtol=1e-4)
