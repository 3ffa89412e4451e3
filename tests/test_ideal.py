"""The ideal observer of amodal shapes (the ceiling of the occluded-object amodal IoU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from econ_scenes.data import Scenes, SceneSpec
from econ_scenes.data.generator import CIRCLE, SQUARE, TRIANGLE, compose_layers
from econ_scenes.errors import EconError
from econ_scenes.evaluate.ideal import consistent_shapes, ideal_amodal, ideal_estimate, shape_bank


@pytest.fixture(scope="module")
def spec() -> SceneSpec:
    return SceneSpec.preset("unique", size=16, n_objects=2, min_size=0.3, max_size=0.6)


@pytest.mark.parametrize("class_id", [CIRCLE, SQUARE, TRIANGLE])
def test_the_bank_holds_every_shape_the_generator_draws(
    spec: SceneSpec, tiny_scenes: Scenes, class_id: int
) -> None:
    bank = shape_bank(spec, class_id)
    low, high = spec.size_range_px()
    assert len(bank.masks) == sum((spec.size - s + 1) ** 2 for s in range(low, high + 1))
    assert float(bank.prior.sum()) == pytest.approx(1.0)
    drawn = tiny_scenes.shapes[tiny_scenes.classes == class_id]
    assert len(drawn)
    bank_set = {m.tobytes() for m in bank.masks.numpy().astype(bool)}
    assert all(m.ravel().tobytes() in bank_set for m in drawn)
    # A shape of side s has prior 1 / (#sizes · (S − s + 1)²): sizes first, then positions.
    sides = bank.masks.reshape(len(bank.masks), spec.size, spec.size).any(1).sum(1)
    if class_id == SQUARE:
        expected = 1.0 / ((high - low + 1) * (spec.size - sides.double() + 1) ** 2)
        torch.testing.assert_close(bank.prior, expected)


def _scene(back: np.ndarray, front: np.ndarray, classes: tuple[int, int]) -> Scenes:
    shapes = np.stack([np.ones_like(back), back, front])[None]
    colours = np.array([[[10, 10, 10], [0, 255, 0], [255, 0, 0]]], dtype=np.uint8)
    return Scenes(images=compose_layers(shapes, colours), shapes=shapes,
                  classes=np.array([[0, *classes]]), colors=colours)


def test_a_square_half_hidden_has_several_completions(spec: SceneSpec) -> None:
    back = np.zeros((16, 16), bool)
    back[4:10, 2:8] = True  # a 6-pixel square
    front = np.zeros((16, 16), bool)
    front[:, 5:] = front[7:, :] = True  # an L (not a generator shape; only its cover matters)
    result = ideal_amodal(_scene(back, front, (SQUARE, SQUARE)), spec)
    assert np.isnan(result["expected_iou"][0, 2])  # the front object is not occluded
    assert result["visible_fraction"][0, 1] == pytest.approx(9 / 36)
    # Only the 3×3 top-left corner shows: every side from 5 to 9 at that corner agrees.
    assert result["n_consistent"][0, 1] == 5
    assert 0.5 < result["expected_iou"][0, 1] < 1.0


def test_an_object_whose_visible_part_fixes_its_shape_scores_one(spec: SceneSpec) -> None:
    back = np.zeros((16, 16), bool)
    back[4:10, 4:10] = True
    front = np.zeros((16, 16), bool)
    front[8:10, 8:10] = True  # hides a corner only: the visible rows and columns fix the square
    result = ideal_amodal(_scene(back, front, (SQUARE, SQUARE)), spec)
    assert result["n_consistent"][0, 1] == 1
    assert result["expected_iou"][0, 1] == pytest.approx(1.0)
    assert result["iou"][0, 1] == pytest.approx(1.0)


def test_generated_scenes_always_have_their_true_shape_consistent(
    spec: SceneSpec, tiny_scenes: Scenes
) -> None:
    result = ideal_amodal(tiny_scenes, spec)
    occluded = np.isfinite(result["visible_fraction"])
    assert occluded.sum() > 5
    seen = result["visible_fraction"][occluded] > 0
    assert (result["n_consistent"][occluded][seen] >= 1).all()
    # Directly: each occluded object's true shape is among the shapes it is consistent with.
    shapes = tiny_scenes.shapes
    for i, layer in zip(*np.nonzero(occluded), strict=True):
        if not seen_at(result, i, layer):
            continue
        bank = shape_bank(spec, int(tiny_scenes.classes[i, layer]))
        scope = ~shapes[i, layer + 1:].any(axis=0).ravel()
        visible = shapes[i, layer].ravel() & scope
        consistent = consistent_shapes(bank, torch.from_numpy(visible[:, None].astype(np.float32)),
                                       torch.from_numpy(scope[:, None].astype(np.float32)))[:, 0]
        truth = torch.from_numpy(shapes[i, layer].ravel().astype(np.float32))
        assert (bank.masks[consistent] == truth).all(dim=1).any()
    values = result["expected_iou"][occluded][seen]
    assert ((values > 0) & (values <= 1 + 1e-9)).all()


def test_an_inconsistent_visible_region_is_an_error(spec: SceneSpec) -> None:
    bank = shape_bank(spec, SQUARE)
    visible = torch.zeros(16 * 16, 1)
    visible[0] = visible[17] = 1.0  # two diagonal pixels: no square shows only these
    scope = torch.ones_like(visible)
    consistent = consistent_shapes(bank, visible, scope)[:, 0]
    with pytest.raises(EconError, match="no shape of this class is consistent"):
        ideal_estimate(bank, consistent, torch.zeros(16 * 16))


def seen_at(result: dict[str, np.ndarray], i: int, layer: int) -> bool:
    return bool(result["visible_fraction"][i, layer] > 0)


def test_above_max_shapes_draws_propose_masks_and_the_expectation_stays_exact(
    spec: SceneSpec
) -> None:
    bank = shape_bank(spec, SQUARE)
    visible = torch.zeros(16, 16)
    visible[0, 5:9] = 1.0  # the top-left of a square; below row 0 and right of column 8 hidden
    scope = torch.zeros(16, 16)
    scope[0, :9] = 1.0
    consistent = consistent_shapes(bank, visible.reshape(-1, 1), scope.reshape(-1, 1))[:, 0]
    truth = bank.masks[torch.nonzero(consistent)[0, 0]]
    full = ideal_estimate(bank, consistent, truth)
    drawn = ideal_estimate(bank, consistent, truth, max_shapes=4, seed=1)
    assert full.n_consistent == drawn.n_consistent > 4
    assert drawn == ideal_estimate(bank, consistent, truth, max_shapes=4, seed=1)
    # The same expectation over all consistent shapes: a mask proposed from four draws can
    # score no better than the best of the full posterior's proposals by more than rounding.
    assert 0 < drawn.expected_iou <= full.expected_iou + 0.05
