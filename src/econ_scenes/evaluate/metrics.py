"""Evaluation metrics for layered scene decompositions.

Conventions (shapes use N images, L ground-truth layers, T inference steps, H×W pixels):

* Ground truth comes from the dead-leaves generator: ``gt_shapes`` bool (N, L, H, W) holds the
  amodal (full) shape of every layer from back to front, layer 0 is the background (all True),
  padding layers are all False and have class -1 in ``gt_classes`` int (N, L).  A pixel is
  visible in the front-most (highest index) layer whose shape covers it.
* Predictions are in inference order, front first: ``regions`` float (N, T, H, W) sum to one over
  T per pixel, ``shapes`` float (N, T, H, W) are full-shape probabilities, ``winners`` int (N, T)
  are the winning experts.

Scores are per image (or per object) arrays so that callers can average them or bootstrap them;
NaN marks "not defined for this image/object" (for example no occluded pixels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import bootstrap
from sklearn.metrics import (
    adjusted_mutual_info_score,
    adjusted_rand_score,
    normalized_mutual_info_score,
)
from sklearn.metrics.cluster import contingency_matrix

from econ_scenes.errors import EconError

__all__ = [
    "MatchResult",
    "amodal_iou",
    "ari",
    "binarize",
    "bootstrap_ci",
    "count_accuracy",
    "depth_order_accuracy",
    "gt_labels",
    "gt_visible",
    "iou_matrix",
    "kid",
    "labels_to_masks",
    "matched_iou",
    "object_counts",
    "occluded_iou",
    "pred_labels",
    "predicted_counts",
    "segmentation_covering",
    "specialisation",
    "valid_layers",
]


# --------------------------------------------------------------------------- input checks


def _check_ndim(name: str, array: np.ndarray, ndim: int, layout: str) -> None:
    if array.ndim != ndim:
        raise EconError(f"{name} must have shape {layout}, got shape {tuple(array.shape)}")


def _check_same_shape(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise EconError(
            f"{name_a} and {name_b} must have the same shape, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def _check_masks_pair(gt_masks: np.ndarray, pred_masks: np.ndarray) -> None:
    """Both (N, *, H, W) with equal N, H, W."""
    _check_ndim("ground-truth masks", gt_masks, 4, "(N, L, H, W)")
    _check_ndim("predicted masks", pred_masks, 4, "(N, T, H, W)")
    if gt_masks.shape[0] != pred_masks.shape[0] or gt_masks.shape[2:] != pred_masks.shape[2:]:
        raise EconError(
            "ground-truth masks (N, L, H, W) and predicted masks (N, T, H, W) must agree in N, H "
            f"and W, got {tuple(gt_masks.shape)} and {tuple(pred_masks.shape)}"
        )


def _check_layer_table(name: str, table: np.ndarray, gt_shapes: np.ndarray) -> None:
    """``table`` must be (N, L) matching the first two axes of ``gt_shapes``."""
    if table.shape != gt_shapes.shape[:2]:
        raise EconError(
            f"{name} must have shape (N, L) = {tuple(gt_shapes.shape[:2])}, "
            f"got {tuple(table.shape)}"
        )


# --------------------------------------------------------------------------- labels and masks


def gt_labels(gt_shapes: np.ndarray) -> np.ndarray:
    """Index of the visible (front-most covering) layer per pixel.

    Args:
        gt_shapes: bool (N, L, H, W) amodal masks, back to front.

    Returns:
        int64 (N, H, W) layer index in [0, L); -1 where no layer covers the pixel (cannot happen
        with an all-True background layer).
    """
    shapes = np.asarray(gt_shapes, dtype=bool)
    _check_ndim("gt_shapes", shapes, 4, "(N, L, H, W)")
    n_layers = shapes.shape[1]
    front_first = shapes[:, ::-1]
    labels = (n_layers - 1 - np.argmax(front_first, axis=1)).astype(np.int64)
    labels[~shapes.any(axis=1)] = -1
    return labels


def labels_to_masks(labels: np.ndarray, n_segments: int) -> np.ndarray:
    """One-hot masks of a label map.

    Args:
        labels: int (N, H, W) with values in [0, n_segments); other values belong to no mask.
        n_segments: number of masks S.

    Returns:
        bool (N, S, H, W), mask s is ``labels == s``.
    """
    labels = np.asarray(labels)
    _check_ndim("labels", labels, 3, "(N, H, W)")
    segments = np.arange(n_segments).reshape(1, n_segments, 1, 1)
    return labels[:, None] == segments


def gt_visible(gt_shapes: np.ndarray) -> np.ndarray:
    """Visible regions of the ground-truth layers under dead-leaves occlusion.

    Args:
        gt_shapes: bool (N, L, H, W) amodal masks, back to front.

    Returns:
        bool (N, L, H, W): layer l is visible where it is the front-most layer covering the pixel.
    """
    shapes = np.asarray(gt_shapes, dtype=bool)
    return labels_to_masks(gt_labels(shapes), shapes.shape[1])


def pred_labels(regions: np.ndarray) -> np.ndarray:
    """Hard segmentation of predicted regions.

    Args:
        regions: float (N, T, H, W) soft visible regions.

    Returns:
        int64 (N, H, W) index of the step with the largest region value per pixel.
    """
    regions = np.asarray(regions)
    _check_ndim("regions", regions, 4, "(N, T, H, W)")
    return np.argmax(regions, axis=1).astype(np.int64)


def binarize(masks: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Boolean masks: bool input unchanged, anything else ``> threshold``. Any shape."""
    masks = np.asarray(masks)
    if masks.dtype == bool:
        return masks
    return masks > threshold


def occluded_objects(gt_shapes: np.ndarray, gt_classes: np.ndarray) -> np.ndarray:
    """Objects that something in front hides in part or entirely: bool (N, L).

    Args:
        gt_shapes: bool (N, L, H, W) amodal masks, back to front.
        gt_classes: int (N, L), 0 background, -1 padding.
    """
    shapes = np.asarray(gt_shapes, dtype=bool)
    hidden = (shapes & ~gt_visible(shapes)).any(axis=(2, 3))
    return hidden & valid_layers(gt_classes, include_background=False)


def valid_layers(gt_classes: np.ndarray, include_background: bool = True) -> np.ndarray:
    """Which ground-truth layers exist.

    Args:
        gt_classes: int (N, L), 0 background, > 0 object classes, -1 padding.
        include_background: whether class-0 layers count as valid.

    Returns:
        bool (N, L).
    """
    classes = np.asarray(gt_classes)
    _check_ndim("gt_classes", classes, 2, "(N, L)")
    return classes >= 0 if include_background else classes > 0


def object_counts(gt_classes: np.ndarray) -> np.ndarray:
    """Number of objects (class > 0) per scene: int64 (N,) from ``gt_classes`` int (N, L)."""
    return valid_layers(gt_classes, include_background=False).sum(axis=1).astype(np.int64)


# --------------------------------------------------------------------------- clustering scores


def ari(
    true_labels: np.ndarray, pred_labels: np.ndarray, foreground: np.ndarray | None = None
) -> np.ndarray:
    """Adjusted Rand index per image (sklearn ``adjusted_rand_score``).

    Args:
        true_labels: int (N, H, W) ground-truth segment ids.
        pred_labels: int (N, H, W) predicted segment ids.
        foreground: optional bool (N, H, W); only these pixels are scored (FG-ARI, with the
            background pixels excluded).

    Returns:
        float64 (N,); NaN for an image whose foreground is empty. A single cluster on both sides
        scores 1, as in sklearn.
    """
    true_labels = np.asarray(true_labels)
    pred_labels = np.asarray(pred_labels)
    _check_ndim("true_labels", true_labels, 3, "(N, H, W)")
    _check_same_shape("true_labels", true_labels, "pred_labels", pred_labels)
    if foreground is None:
        keep = np.ones(true_labels.shape, dtype=bool)
    else:
        keep = np.asarray(foreground, dtype=bool)
        _check_same_shape("true_labels", true_labels, "foreground", keep)
    scores = np.full(true_labels.shape[0], np.nan)
    for i, (truth, pred, mask) in enumerate(zip(true_labels, pred_labels, keep, strict=True)):
        if mask.any():
            scores[i] = adjusted_rand_score(truth[mask], pred[mask])
    return scores


def _segment_ious(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU of every true segment with every predicted segment of one image.

    Args:
        truth, pred: int (P,) segment ids of the same P pixels.

    Returns:
        (ious float (S_true, S_pred), true segment ids int (S_true,)).
    """
    true_ids = np.unique(truth)
    inter = contingency_matrix(truth, pred).astype(np.float64)
    union = inter.sum(axis=1, keepdims=True) + inter.sum(axis=0, keepdims=True) - inter
    return inter / union, true_ids


def segmentation_covering(
    true_labels: np.ndarray,
    pred_labels: np.ndarray,
    mean: bool = True,
    ignore_background: bool = False,
) -> np.ndarray:
    """Segmentation covering of the ground truth by the prediction, per image.

    For each ground-truth segment, take the best IoU with any predicted segment; average over
    ground-truth segments, unweighted (mSC, ``mean=True``) or weighted by segment size (SC).
    Negative true labels are ignored; with ``ignore_background`` the segment with label 0 is not
    scored (IoUs are still computed over all pixels).

    Args:
        true_labels: int (N, H, W).
        pred_labels: int (N, H, W).

    Returns:
        float64 (N,); NaN for an image without scored segments.
    """
    true_labels = np.asarray(true_labels)
    pred_labels = np.asarray(pred_labels)
    _check_ndim("true_labels", true_labels, 3, "(N, H, W)")
    _check_same_shape("true_labels", true_labels, "pred_labels", pred_labels)
    scores = np.full(true_labels.shape[0], np.nan)
    for i, (truth, pred) in enumerate(zip(true_labels, pred_labels, strict=True)):
        truth, pred = truth.ravel(), pred.ravel()
        scored = truth >= 0
        if not scored.any():
            continue
        ious, ids = _segment_ious(truth[scored], pred[scored])
        best = ious.max(axis=1)
        sizes = np.array([(truth == s).sum() for s in ids], dtype=np.float64)
        if ignore_background:
            best, sizes = best[ids != 0], sizes[ids != 0]
        if best.size == 0:
            continue
        scores[i] = best.mean() if mean else float((best * sizes).sum() / sizes.sum())
    return scores


# --------------------------------------------------------------------------- object matching


@dataclass(frozen=True)
class MatchResult:
    """Hungarian matching of ground-truth layers to inference steps.

    Attributes:
        iou: float64 (N, L) IoU of each valid layer with its matched step (0 when unmatched),
            NaN for invalid layers.
        step: int64 (N, L) matched inference step, -1 when unmatched or invalid. Pairs assigned
            with zero IoU count as unmatched.
        per_image: float64 (N,) mean IoU over the valid layers of each image (NaN if none).
    """

    iou: np.ndarray
    step: np.ndarray
    per_image: np.ndarray

    @property
    def mean_iou(self) -> float:
        """Mean over images of the per-image mean IoU (images without valid layers skipped)."""
        finite = self.per_image[np.isfinite(self.per_image)]
        return float(finite.mean()) if finite.size else float("nan")


def iou_matrix(masks_a: np.ndarray, masks_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of two mask stacks of one image.

    Args:
        masks_a: bool (A, H, W).
        masks_b: bool (B, H, W).

    Returns:
        float64 (A, B); 0 where both masks are empty.
    """
    a = np.asarray(masks_a, dtype=bool).reshape(len(masks_a), -1).astype(np.float64)
    b = np.asarray(masks_b, dtype=bool).reshape(len(masks_b), -1).astype(np.float64)
    inter = a @ b.T
    union = a.sum(axis=1)[:, None] + b.sum(axis=1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks of equal shape; NaN when both are empty."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else float("nan")


def matched_iou(
    gt_masks: np.ndarray, gt_valid: np.ndarray, pred_masks: np.ndarray, threshold: float = 0.5
) -> MatchResult:
    """Match ground-truth layers to inference steps one-to-one by maximal total IoU.

    Matching is done per image with ``scipy.optimize.linear_sum_assignment`` on the IoU matrix
    of the valid layers against all steps. Use the visible regions on both sides for the
    visible-region mIoU (e.g. ``gt_visible(gt_shapes)`` and
    ``labels_to_masks(pred_labels(regions), T)``).

    Args:
        gt_masks: bool (N, L, H, W).
        gt_valid: bool (N, L), which layers to match.
        pred_masks: bool or float (N, T, H, W); float masks are thresholded (``> threshold``).

    Returns:
        :class:`MatchResult`.
    """
    gt_masks = np.asarray(gt_masks, dtype=bool)
    gt_valid = np.asarray(gt_valid, dtype=bool)
    pred = binarize(pred_masks, threshold)
    _check_masks_pair(gt_masks, pred)
    _check_layer_table("gt_valid", gt_valid, gt_masks)
    n_images, n_layers = gt_valid.shape
    iou = np.where(gt_valid, 0.0, np.nan)
    step = np.full((n_images, n_layers), -1, dtype=np.int64)
    for i in range(n_images):
        layers = np.flatnonzero(gt_valid[i])
        if layers.size == 0:
            continue
        scores = iou_matrix(gt_masks[i, layers], pred[i])
        rows, cols = linear_sum_assignment(scores, maximize=True)
        hit = scores[rows, cols] > 0
        iou[i, layers[rows[hit]]] = scores[rows[hit], cols[hit]]
        step[i, layers[rows[hit]]] = cols[hit]
    counts = gt_valid.sum(axis=1)
    sums = np.where(gt_valid, iou, 0.0).sum(axis=1)
    per_image = np.divide(sums, counts, out=np.full(n_images, np.nan), where=counts > 0)
    return MatchResult(iou=iou, step=step, per_image=per_image)


def _check_matching(matching: MatchResult, gt_shapes: np.ndarray, n_steps: int | None) -> None:
    _check_layer_table("matching.step", matching.step, gt_shapes)
    if n_steps is not None and matching.step.size and matching.step.max() >= n_steps:
        raise EconError(
            f"matching refers to step {int(matching.step.max())} but the prediction has only "
            f"{n_steps} steps"
        )


def amodal_iou(
    gt_shapes: np.ndarray,
    gt_valid: np.ndarray,
    pred_shapes: np.ndarray,
    matching: MatchResult,
    threshold: float = 0.5,
) -> np.ndarray:
    """IoU of full (amodal) shapes for layers matched through their visible regions.

    Args:
        gt_shapes: bool (N, L, H, W) amodal ground-truth shapes.
        gt_valid: bool (N, L) layers to score.
        pred_shapes: float (N, T, H, W) shape probabilities, thresholded ``> threshold``.
        matching: result of :func:`matched_iou` on visible regions.

    Returns:
        float64 (N, L); NaN for invalid or unmatched layers.
    """
    gt_shapes = np.asarray(gt_shapes, dtype=bool)
    gt_valid = np.asarray(gt_valid, dtype=bool)
    pred = binarize(pred_shapes, threshold)
    _check_masks_pair(gt_shapes, pred)
    _check_layer_table("gt_valid", gt_valid, gt_shapes)
    _check_matching(matching, gt_shapes, pred.shape[1])
    scores = np.full(gt_valid.shape, np.nan)
    for i, layer in zip(*np.nonzero(gt_valid & (matching.step >= 0)), strict=True):
        scores[i, layer] = _mask_iou(gt_shapes[i, layer], pred[i, matching.step[i, layer]])
    return scores


def occluded_iou(
    gt_shapes: np.ndarray,
    gt_valid: np.ndarray,
    pred_shapes: np.ndarray,
    matching: MatchResult,
    threshold: float = 0.5,
) -> np.ndarray:
    """Amodal IoU restricted to the hidden part of each ground-truth object.

    For layer l with visible region v_l and amodal shape m_l, the occluded part is
    o_l = m_l & ~v_l. The score is the IoU computed outside v_l, i.e.
    IoU(pred & ~v_l, o_l): it rewards completing the hidden part and penalises predicted shape
    spilling into pixels that are not part of the object.

    Args:
        gt_shapes: bool (N, L, H, W) amodal ground-truth shapes.
        gt_valid: bool (N, L) layers to score.
        pred_shapes: float (N, T, H, W) shape probabilities, thresholded ``> threshold``.
        matching: result of :func:`matched_iou` on visible regions.

    Returns:
        float64 (N, L); NaN for invalid or unmatched layers and for layers without occluded
        pixels.
    """
    gt_shapes = np.asarray(gt_shapes, dtype=bool)
    gt_valid = np.asarray(gt_valid, dtype=bool)
    pred = binarize(pred_shapes, threshold)
    _check_masks_pair(gt_shapes, pred)
    _check_layer_table("gt_valid", gt_valid, gt_shapes)
    _check_matching(matching, gt_shapes, pred.shape[1])
    visible = gt_visible(gt_shapes)
    occluded = gt_shapes & ~visible
    scores = np.full(gt_valid.shape, np.nan)
    scored = gt_valid & (matching.step >= 0) & occluded.any(axis=(2, 3))
    for i, layer in zip(*np.nonzero(scored), strict=True):
        hidden_pred = pred[i, matching.step[i, layer]] & ~visible[i, layer]
        scores[i, layer] = _mask_iou(hidden_pred, occluded[i, layer])
    return scores


# --------------------------------------------------------------------------- depth and count


def depth_order_accuracy(
    gt_shapes: np.ndarray,
    matching: MatchResult,
    include_background: bool = False,
    min_overlap: int = 1,
) -> tuple[float, int]:
    """Fraction of overlapping object pairs whose inferred order matches the true order.

    Ground truth: higher layer index is in front. Inference: an earlier step is in front. A pair
    of matched layers (i < j) counts when their amodal shapes share at least ``min_overlap``
    pixels; it is correct when ``step[j] < step[i]``.

    Args:
        gt_shapes: bool (N, L, H, W) amodal ground-truth shapes.
        matching: result of :func:`matched_iou` (unmatched layers are skipped).
        include_background: whether layer 0 takes part in pairs.

    Returns:
        (accuracy, number of pairs); accuracy is NaN when there is no pair.
    """
    gt_shapes = np.asarray(gt_shapes, dtype=bool)
    _check_ndim("gt_shapes", gt_shapes, 4, "(N, L, H, W)")
    _check_matching(matching, gt_shapes, None)
    first = 0 if include_background else 1
    correct = 0
    n_pairs = 0
    for i in range(gt_shapes.shape[0]):
        layers = [x for x in range(first, gt_shapes.shape[1]) if matching.step[i, x] >= 0]
        for a_pos, back in enumerate(layers):
            for front in layers[a_pos + 1 :]:
                overlap = np.logical_and(gt_shapes[i, back], gt_shapes[i, front]).sum()
                if overlap < min_overlap:
                    continue
                n_pairs += 1
                correct += int(matching.step[i, front] < matching.step[i, back])
    return (correct / n_pairs if n_pairs else float("nan")), n_pairs


def predicted_counts(
    regions: np.ndarray, background_step: np.ndarray, min_pixels: int = 20, threshold: float = 0.5
) -> np.ndarray:
    """Number of objects found per scene.

    A step counts when its region (``> threshold``) holds at least ``min_pixels`` pixels; the
    background step does not count.

    Args:
        regions: float (N, T, H, W) soft visible regions.
        background_step: int (N,) step explaining the background, -1 when unknown.

    Returns:
        int64 (N,).
    """
    regions = np.asarray(regions)
    _check_ndim("regions", regions, 4, "(N, T, H, W)")
    background_step = np.asarray(background_step, dtype=np.int64)
    if background_step.shape != regions.shape[:1]:
        raise EconError(
            f"background_step must have shape (N,) = ({regions.shape[0]},), "
            f"got {tuple(background_step.shape)}"
        )
    large = binarize(regions, threshold).sum(axis=(2, 3)) >= min_pixels
    steps = np.arange(regions.shape[1])[None, :]
    return (large & (steps != background_step[:, None])).sum(axis=1).astype(np.int64)


def count_accuracy(
    regions: np.ndarray,
    gt_classes: np.ndarray,
    matching: MatchResult,
    min_pixels: int = 20,
    threshold: float = 0.5,
) -> float:
    """Fraction of scenes whose predicted object count equals the true count.

    The background step is the step matched to ground-truth layer 0 (see :func:`matched_iou`).

    Args:
        regions: float (N, T, H, W) soft visible regions.
        gt_classes: int (N, L) classes, objects have class > 0.
        matching: matching of visible regions, with layer 0 the background.

    Returns:
        accuracy in [0, 1].
    """
    gt_classes = np.asarray(gt_classes)
    _check_ndim("gt_classes", gt_classes, 2, "(N, L)")
    if matching.step.shape != gt_classes.shape:
        raise EconError(
            f"matching.step {tuple(matching.step.shape)} and gt_classes "
            f"{tuple(gt_classes.shape)} must have the same shape (N, L)"
        )
    predicted = predicted_counts(regions, matching.step[:, 0], min_pixels, threshold)
    return float(np.mean(predicted == object_counts(gt_classes)))


# --------------------------------------------------------------------------- specialisation


def specialisation(
    winner_experts: np.ndarray, true_classes: np.ndarray, n_experts: int, n_classes: int
) -> dict[str, Any]:
    """How well winning experts align with object classes.

    Args:
        winner_experts: int (M,) expert id in [0, n_experts) that explained each object.
        true_classes: int (M,) class in [0, n_classes) of the same objects.

    Returns:
        dict with ``contingency`` int64 (K, C) expert × class counts, ``purity`` (share of
        objects in their expert's majority class), ``ami`` and ``nmi`` (sklearn),
        ``hungarian_accuracy`` (best one-to-one expert→class assignment), ``assignment`` int64
        (K,) class given to each expert (-1 if none) and ``win_rate`` float (K,) share of
        objects won by each expert.
    """
    experts = np.asarray(winner_experts).ravel()
    classes = np.asarray(true_classes).ravel()
    if experts.shape != classes.shape:
        raise EconError(
            f"winner_experts and true_classes must have the same length, "
            f"got {experts.size} and {classes.size}"
        )
    if experts.size == 0:
        raise EconError("specialisation needs at least one object")
    if experts.min() < 0 or experts.max() >= n_experts:
        raise EconError(
            f"winner_experts must lie in [0, {n_experts}), "
            f"got values from {experts.min()} to {experts.max()}"
        )
    if classes.min() < 0 or classes.max() >= n_classes:
        raise EconError(
            f"true_classes must lie in [0, {n_classes}), "
            f"got values from {classes.min()} to {classes.max()}"
        )
    table = np.zeros((n_experts, n_classes), dtype=np.int64)
    table[np.ix_(np.unique(experts), np.unique(classes))] = contingency_matrix(experts, classes)
    rows, cols = linear_sum_assignment(table, maximize=True)
    assignment = np.full(n_experts, -1, dtype=np.int64)
    assignment[rows] = cols
    total = float(experts.size)
    return {
        "contingency": table,
        "purity": float(table.max(axis=1).sum() / total),
        "ami": float(adjusted_mutual_info_score(classes, experts)),
        "nmi": float(normalized_mutual_info_score(classes, experts)),
        "hungarian_accuracy": float(table[rows, cols].sum() / total),
        "assignment": assignment,
        "win_rate": table.sum(axis=1) / total,
    }


# --------------------------------------------------------------------------- statistics


def bootstrap_ci(
    values: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (scipy ``stats.bootstrap``).

    Args:
        values: float (n,) per-scene values; NaNs are dropped.

    Returns:
        (low, high); both equal the value when only one finite value is given.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise EconError("bootstrap_ci needs at least one finite value")
    if not 0 < level < 1:
        raise EconError(f"level must lie in (0, 1), got {level}")
    if values.size == 1 or np.all(values == values[0]):
        return float(values[0]), float(values[0])
    result = bootstrap(
        (values,),
        np.mean,
        n_resamples=n_boot,
        confidence_level=level,
        method="percentile",
        random_state=seed,
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x·y / d + 1)^3 for x (a, d), y (b, d); returns (a, b)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² between samples x (m, d) and y (m, d) under the cubic kernel."""
    m = x.shape[0]
    k_xx = _polynomial_kernel(x, x)
    k_yy = _polynomial_kernel(y, y)
    k_xy = _polynomial_kernel(x, y)
    off_diag = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(off_diag - 2.0 * k_xy.mean())


def kid(
    features_a: np.ndarray,
    features_b: np.ndarray,
    n_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel inception distance (Bińkowski et al., 2018).

    The unbiased MMD² with kernel k(x, y) = (x·y / d + 1)^3, averaged over ``n_subsets`` random
    subsets of size ``min(subset_size, n, m)`` drawn without replacement from each set.

    Args:
        features_a: float (n, d).
        features_b: float (m, d).

    Returns:
        (mean, std) over subsets.
    """
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    _check_ndim("features_a", a, 2, "(n, d)")
    _check_ndim("features_b", b, 2, "(m, d)")
    if a.shape[1] != b.shape[1]:
        raise EconError(f"feature dimensions differ: {a.shape[1]} and {b.shape[1]}")
    size = min(subset_size, a.shape[0], b.shape[0])
    if size < 2:
        raise EconError(f"kid needs at least 2 samples per set, got {a.shape[0]} and {b.shape[0]}")
    if n_subsets < 1:
        raise EconError(f"n_subsets must be >= 1, got {n_subsets}")
    rng = np.random.default_rng(seed)
    estimates = np.array(
        [
            _mmd2_unbiased(
                a[rng.choice(a.shape[0], size, replace=False)],
                b[rng.choice(b.shape[0], size, replace=False)],
            )
            for _ in range(n_subsets)
        ]
    )
    return float(estimates.mean()), float(estimates.std())
