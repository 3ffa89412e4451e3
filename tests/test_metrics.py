"""Tests of the evaluation metrics on constructed scenes with known scores."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from econ_scenes.errors import EconError
from econ_scenes.evaluate.metrics import (
    amodal_iou,
    ari,
    bootstrap_ci,
    count_accuracy,
    depth_order_accuracy,
    gt_labels,
    gt_visible,
    kid,
    labels_to_masks,
    matched_iou,
    object_counts,
    occluded_iou,
    pred_labels,
    predicted_counts,
    segmentation_covering,
    specialisation,
    valid_layers,
)

# --------------------------------------------------------------------------- fixtures


def _square(size: int, top: int, left: int, side: int) -> np.ndarray:
    """bool (size, size) with a filled square."""
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


@dataclass
class Scenes:
    """Ground truth and a perfect prediction (steps front first, padding steps empty)."""

    shapes: np.ndarray  # bool (N, L, H, W)
    classes: np.ndarray  # int (N, L)
    regions: np.ndarray  # float (N, T, H, W), T = L
    pred_shapes: np.ndarray  # float (N, T, H, W)
    winners: np.ndarray  # int (N, T)


EXPERT_OF_CLASS = np.array([2, 0, 3, 1])  # class c is won by expert EXPERT_OF_CLASS[c]


def _random_scenes(n: int = 12, size: int = 16, n_layers: int = 4, seed: int = 0) -> Scenes:
    """Random dead-leaves scenes of squares, each object keeping >= 6 visible pixels."""
    rng = np.random.default_rng(seed)
    shapes = np.zeros((n, n_layers, size, size), dtype=bool)
    classes = np.full((n, n_layers), -1, dtype=np.int64)
    i = 0
    while i < n:
        n_objects = int(rng.integers(1, n_layers))
        scene = np.zeros((n_layers, size, size), dtype=bool)
        scene[0] = True
        for layer in range(1, n_objects + 1):
            side = int(rng.integers(4, 9))
            top, left = rng.integers(0, size - side + 1, size=2)
            scene[layer] = _square(size, int(top), int(left), side)
        if gt_visible(scene[None])[0, : n_objects + 1].sum(axis=(1, 2)).min() < 6:
            continue
        shapes[i] = scene
        classes[i, 0] = 0
        classes[i, 1 : n_objects + 1] = rng.integers(1, 4, size=n_objects)
        i += 1
    front_first = slice(None, None, -1)
    regions = gt_visible(shapes)[:, front_first].astype(np.float64)
    pred_shapes = shapes[:, front_first].astype(np.float64)
    winners = EXPERT_OF_CLASS[np.maximum(classes, 0)][:, front_first]
    return Scenes(shapes, classes, regions, pred_shapes, winners)


@pytest.fixture(scope="module")
def scenes() -> Scenes:
    return _random_scenes()


def _visible_match(shapes: np.ndarray, classes: np.ndarray, regions: np.ndarray):
    n_steps = regions.shape[1]
    return matched_iou(
        gt_visible(shapes), valid_layers(classes), labels_to_masks(pred_labels(regions), n_steps)
    )


def _won_objects(scenes: Scenes, winners: np.ndarray, step: np.ndarray):
    """Winning expert and true class of every matched ground-truth layer."""
    n_idx, layer_idx = np.nonzero(step >= 0)
    return winners[n_idx, step[n_idx, layer_idx]], scenes.classes[n_idx, layer_idx]


# Hand-made occlusion case on 8×8: background, square A (5×5 at (1, 1)) behind square B
# (4×4 at (3, 3)). A and B overlap in 3×3 = 9 pixels, so A shows 16 pixels and hides 9.
def _occlusion_case() -> tuple[np.ndarray, np.ndarray]:
    shapes = np.stack([np.ones((8, 8), bool), _square(8, 1, 1, 5), _square(8, 3, 3, 4)])[None]
    classes = np.array([[0, 2, 2]])
    return shapes, classes


# --------------------------------------------------------------------------- ground truth


def test_gt_visible_follows_dead_leaves_layering() -> None:
    shapes, _ = _occlusion_case()
    labels = gt_labels(shapes)[0]
    assert labels[0, 0] == 0 and labels[1, 1] == 1 and labels[4, 4] == 2 and labels[6, 6] == 2
    visible = gt_visible(shapes)[0]
    assert visible.sum(axis=(1, 2)).tolist() == [64 - 25 - 16 + 9, 16, 16]
    assert (visible.sum(axis=0) == 1).all()


# --------------------------------------------------------------------------- perfect scores


def test_perfect_prediction_scores_one(scenes: Scenes) -> None:
    true = gt_labels(scenes.shapes)
    pred = pred_labels(scenes.regions)
    assert np.allclose(ari(true, pred), 1.0)
    assert np.allclose(ari(true, pred, foreground=true > 0), 1.0)
    assert np.allclose(segmentation_covering(true, pred), 1.0)
    assert np.allclose(segmentation_covering(true, pred, mean=False), 1.0)

    match = _visible_match(scenes.shapes, scenes.classes, scenes.regions)
    assert match.mean_iou == pytest.approx(1.0)
    n_layers = scenes.shapes.shape[1]
    valid = valid_layers(scenes.classes)
    assert (match.step[valid] == (n_layers - 1 - np.nonzero(valid)[1])).all()
    assert (match.step[~valid] == -1).all()

    amodal = amodal_iou(scenes.shapes, valid, scenes.pred_shapes, match)
    assert np.allclose(amodal[valid], 1.0) and np.isnan(amodal[~valid]).all()
    occluded = occluded_iou(
        scenes.shapes, valid_layers(scenes.classes, False), scenes.pred_shapes, match
    )
    assert np.isfinite(occluded).sum() > 0
    assert np.allclose(occluded[np.isfinite(occluded)], 1.0)

    accuracy, n_pairs = depth_order_accuracy(scenes.shapes, match)
    assert n_pairs > 0 and accuracy == 1.0
    assert count_accuracy(scenes.regions, scenes.classes, match, min_pixels=6) == 1.0

    experts, classes = _won_objects(scenes, scenes.winners, match.step)
    spec = specialisation(experts, classes, n_experts=4, n_classes=4)
    assert spec["purity"] == 1.0 and spec["hungarian_accuracy"] == 1.0
    assert spec["ami"] == pytest.approx(1.0) and spec["nmi"] == pytest.approx(1.0)
    assert spec["assignment"].tolist() == np.argsort(EXPERT_OF_CLASS).tolist()


# --------------------------------------------------------------------------- invariances


def test_step_permutation_leaves_invariant_scores_unchanged(scenes: Scenes) -> None:
    rng = np.random.default_rng(1)
    noisy = scenes.regions + rng.uniform(0, 1.5, scenes.regions.shape)  # imperfect prediction
    noisy /= noisy.sum(axis=1, keepdims=True)
    order = np.array([2, 0, 3, 1])
    permuted = noisy[:, order]
    true = gt_labels(scenes.shapes)
    base = _visible_match(scenes.shapes, scenes.classes, noisy)
    perm = _visible_match(scenes.shapes, scenes.classes, permuted)
    assert base.mean_iou < 0.99  # the noise matters, so equality below is not trivial
    assert np.allclose(ari(true, pred_labels(noisy)), ari(true, pred_labels(permuted)))
    assert np.allclose(
        segmentation_covering(true, pred_labels(noisy)),
        segmentation_covering(true, pred_labels(permuted)),
    )
    assert np.allclose(base.per_image, perm.per_image)
    assert base.mean_iou == pytest.approx(perm.mean_iou)
    valid = valid_layers(scenes.classes)
    assert np.allclose(
        amodal_iou(scenes.shapes, valid, scenes.pred_shapes, base),
        amodal_iou(scenes.shapes, valid, scenes.pred_shapes[:, order], perm),
        equal_nan=True,
    )


def test_expert_relabeling_leaves_specialisation_unchanged() -> None:
    rng = np.random.default_rng(2)
    classes = rng.integers(0, 4, size=300)
    experts = np.where(rng.random(300) < 0.7, classes, rng.integers(0, 4, size=300))
    relabel = np.array([3, 1, 0, 2])
    base = specialisation(experts, classes, 4, 4)
    moved = specialisation(relabel[experts], classes, 4, 4)
    assert 0.3 < base["ami"] < 0.95
    for key in ("purity", "ami", "nmi", "hungarian_accuracy"):
        assert moved[key] == pytest.approx(base[key])
    assert np.array_equal(moved["contingency"][relabel], base["contingency"])


# --------------------------------------------------------------------------- ARI and covering


def test_ari_matches_sklearn_on_random_cases() -> None:
    rng = np.random.default_rng(3)
    true = rng.integers(0, 4, size=(5, 12, 12))
    pred = np.where(rng.random((5, 12, 12)) < 0.6, true, rng.integers(0, 5, size=(5, 12, 12)))
    foreground = true > 0
    scores = ari(true, pred)
    fg_scores = ari(true, pred, foreground=foreground)
    for i in range(5):
        assert scores[i] == pytest.approx(adjusted_rand_score(true[i].ravel(), pred[i].ravel()))
        expected = adjusted_rand_score(true[i][foreground[i]], pred[i][foreground[i]])
        assert fg_scores[i] == pytest.approx(expected)


def test_random_segmentation_has_near_zero_ari(scenes: Scenes) -> None:
    rng = np.random.default_rng(4)
    true = gt_labels(scenes.shapes)
    random_pred = rng.integers(0, 4, size=true.shape)
    assert abs(np.mean(ari(true, random_pred))) < 0.05
    assert abs(np.nanmean(ari(true, random_pred, foreground=true > 0))) < 0.05


def test_ari_degenerate_cases_follow_sklearn() -> None:
    single = np.zeros((1, 4, 4), dtype=int)
    split = np.arange(16).reshape(1, 4, 4) % 2
    assert ari(single, single)[0] == 1.0
    assert ari(single, split)[0] == pytest.approx(
        adjusted_rand_score(single.ravel(), split.ravel())
    )
    assert np.isnan(ari(single, single, foreground=np.zeros((1, 4, 4), bool))[0])


def test_segmentation_covering_hand_computed() -> None:
    true = np.array([[[0, 0, 0, 1]]])
    pred = np.array([[[0, 0, 1, 1]]])
    # true 0 (3 px): best IoU 2/3 with pred 0; true 1 (1 px): best IoU 1/2 with pred 1.
    assert segmentation_covering(true, pred)[0] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert segmentation_covering(true, pred, mean=False)[0] == pytest.approx((3 * 2 / 3 + 0.5) / 4)
    assert segmentation_covering(true, pred, ignore_background=True)[0] == pytest.approx(0.5)


# --------------------------------------------------------------------------- occlusion case


def _occlusion_prediction(shape_a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Perfect regions, steps front first: B, A, background; A's full shape is ``shape_a``."""
    shapes, _ = _occlusion_case()
    regions = gt_visible(shapes)[:, ::-1].astype(np.float64)
    pred_shapes = np.stack([shapes[0, 2], shape_a, shapes[0, 0]])[None].astype(np.float64)
    return regions, pred_shapes


def test_amodal_and_occluded_iou_hand_computed() -> None:
    shapes, classes = _occlusion_case()
    # Predicted A: rows 1..4, cols 1..6 (24 px). True A: rows 1..5, cols 1..5 (25 px).
    shape_a = np.zeros((8, 8), dtype=bool)
    shape_a[1:5, 1:7] = True
    regions, pred_shapes = _occlusion_prediction(shape_a)
    match = _visible_match(shapes, classes, regions)
    assert match.step[0].tolist() == [2, 1, 0]
    objects = valid_layers(classes, include_background=False)

    amodal = amodal_iou(shapes, objects, pred_shapes, match)[0]
    # intersection rows 1..4 × cols 1..5 = 20, union 25 + 24 - 20 = 29
    assert amodal[1] == pytest.approx(20 / 29)
    assert amodal[2] == pytest.approx(1.0)
    assert np.isnan(amodal[0])

    occluded = occluded_iou(shapes, objects, pred_shapes, match)[0]
    # A hides rows 3..5 × cols 3..5 (9 px). Outside A's visible part the prediction covers
    # rows 3..4 × cols 3..5 (6 px, hidden) and rows 1..4 × col 6 (4 px): IoU 6 / (10 + 9 - 6).
    assert occluded[1] == pytest.approx(6 / 13)
    assert np.isnan(occluded[2])  # B is in front: nothing hidden, skipped


def test_occluded_iou_penalises_missing_completion() -> None:
    shapes, classes = _occlusion_case()
    visible_only = gt_visible(shapes)[0, 1]  # A predicted only where it is seen
    regions, pred_shapes = _occlusion_prediction(visible_only)
    match = _visible_match(shapes, classes, regions)
    objects = valid_layers(classes, include_background=False)
    assert occluded_iou(shapes, objects, pred_shapes, match)[0, 1] == 0.0
    assert amodal_iou(shapes, objects, pred_shapes, match)[0, 1] == pytest.approx(16 / 25)


def test_depth_order_detects_swapped_steps() -> None:
    shapes, classes = _occlusion_case()
    regions, _ = _occlusion_prediction(shapes[0, 1])
    swapped = regions[:, [1, 0, 2]]  # A now explained before B, i.e. claimed to be in front
    good = depth_order_accuracy(shapes, _visible_match(shapes, classes, regions))
    bad = depth_order_accuracy(shapes, _visible_match(shapes, classes, swapped))
    assert good == (1.0, 1)
    assert bad == (0.0, 1)
    assert depth_order_accuracy(shapes, _visible_match(shapes, classes, regions), True)[1] == 3


# --------------------------------------------------------------------------- matching and counts


def test_matching_with_fewer_steps_than_layers() -> None:
    shapes, classes = _occlusion_case()
    visible = gt_visible(shapes)
    # two steps: B, and one region covering the background and A (32 + 16 pixels)
    regions = np.stack([visible[:, 2], visible[:, 0] | visible[:, 1]], axis=1)
    match = matched_iou(visible, valid_layers(classes), regions.astype(np.float64))
    assert match.step[0].tolist() == [1, -1, 0]  # the background wins the shared step
    assert match.iou[0].tolist() == pytest.approx([32 / 48, 0.0, 1.0])
    assert match.per_image[0] == pytest.approx((32 / 48 + 0.0 + 1.0) / 3)


def test_count_accuracy_and_predicted_counts(scenes: Scenes) -> None:
    match = _visible_match(scenes.shapes, scenes.classes, scenes.regions)
    counts = predicted_counts(scenes.regions, match.step[:, 0], min_pixels=6)
    assert np.array_equal(counts, object_counts(scenes.classes))
    # nothing reaches the size threshold: every scene with objects is miscounted
    assert count_accuracy(scenes.regions, scenes.classes, match, min_pixels=10_000) == 0.0
    # without a known background step, the background is counted as one more object
    unknown = np.full(len(counts), -1)
    assert np.array_equal(predicted_counts(scenes.regions, unknown, 6), counts + 1)


# --------------------------------------------------------------------------- specialisation


def test_specialisation_hand_computed() -> None:
    # expert 0 wins 3 circles and 1 square, expert 1 wins 2 squares, expert 2 never wins
    experts = np.array([0, 0, 0, 0, 1, 1])
    classes = np.array([1, 1, 1, 2, 2, 2])
    spec = specialisation(experts, classes, n_experts=3, n_classes=4)
    assert spec["contingency"].tolist() == [[0, 3, 1, 0], [0, 0, 2, 0], [0, 0, 0, 0]]
    assert spec["purity"] == pytest.approx(5 / 6)
    assert spec["hungarian_accuracy"] == pytest.approx(5 / 6)
    assert spec["assignment"][:2].tolist() == [1, 2]
    assert spec["win_rate"].tolist() == pytest.approx([4 / 6, 2 / 6, 0.0])


def test_specialisation_single_expert_is_poor() -> None:
    classes = np.repeat(np.arange(4), 25)
    spec = specialisation(np.zeros(100, dtype=int), classes, 4, 4)
    assert spec["purity"] == 0.25 and spec["hungarian_accuracy"] == 0.25
    assert spec["ami"] == pytest.approx(0.0, abs=1e-9)


# --------------------------------------------------------------------------- statistics


def test_bootstrap_ci_contains_mean() -> None:
    values = np.random.default_rng(5).normal(0.6, 0.2, size=80)
    low, high = bootstrap_ci(values, n_boot=500)
    assert low < values.mean() < high
    assert high - low < 0.2
    assert bootstrap_ci(np.array([0.4, np.nan, 0.4])) == (0.4, 0.4)


def test_kid_zero_for_same_set_and_positive_for_shift() -> None:
    rng = np.random.default_rng(6)
    a = rng.normal(size=(1000, 16))
    b = rng.normal(size=(1000, 16))
    same_mean, _ = kid(a, a, n_subsets=20, subset_size=100)
    other_mean, _ = kid(a, b, n_subsets=20, subset_size=100)
    shifted_mean, shifted_std = kid(a, a + 1.0, n_subsets=20, subset_size=100)
    assert shifted_mean > 5.0 and shifted_mean > 10 * shifted_std
    assert abs(same_mean) < 0.01 * shifted_mean and abs(other_mean) < 0.01 * shifted_mean
    assert kid(a, a + 0.3, n_subsets=20, subset_size=100)[0] < shifted_mean


def test_kid_estimator_hand_computed() -> None:
    # With one subset holding the whole set on both sides, the unbiased MMD² reduces to
    # 2 (mean off-diagonal k - mean k) = -2 (mean diagonal k - mean off-diagonal k) / m.
    x = np.random.default_rng(7).normal(size=(30, 5))
    k = (x @ x.T / 5 + 1.0) ** 3
    off_diag = (k.sum() - np.trace(k)) / (30 * 29)
    expected = -2.0 * (np.trace(k) / 30 - off_diag) / 30
    mean, std = kid(x, x, n_subsets=1, subset_size=30)
    assert mean == pytest.approx(expected) and std == 0.0


# --------------------------------------------------------------------------- errors


def test_shape_mismatches_raise() -> None:
    shapes, classes = _occlusion_case()
    with pytest.raises(EconError, match="same shape"):
        ari(np.zeros((1, 4, 4), int), np.zeros((1, 4, 5), int))
    with pytest.raises(EconError, match=r"\(N, L, H, W\)"):
        gt_visible(shapes[0])
    with pytest.raises(EconError, match="agree"):
        matched_iou(shapes, valid_layers(classes), np.zeros((1, 3, 7, 8)))
    with pytest.raises(EconError, match="gt_valid"):
        matched_iou(shapes, np.ones((1, 2), bool), np.zeros((1, 3, 8, 8)))
    with pytest.raises(EconError, match="same length"):
        specialisation(np.zeros(3, int), np.zeros(4, int), 2, 2)
    with pytest.raises(EconError, match="feature dimensions"):
        kid(np.zeros((5, 3)), np.zeros((5, 4)))
    match = matched_iou(gt_visible(shapes), valid_layers(classes), gt_visible(shapes))
    with pytest.raises(EconError, match="step"):
        amodal_iou(shapes, valid_layers(classes), np.zeros((1, 2, 8, 8)), match)
