"""The ideal observer of amodal shapes: how well can *any* model complete an occluded object?

An occluded object's visible region is consistent with many full shapes of its class. An
observer that knows the generator (Appendix C.1: sizes uniform over whole pixels, boxes uniform
over the positions that keep the object inside the image) and the object's class can list every
full shape ``c`` whose part inside the scope (the pixels no object in front covers) is exactly
the visible region, weight each by its prior probability, and answer with the mask ``M`` that
maximises the expected IoU ``E_c[IoU(M, c)]``. That expectation, averaged over test objects, is
the ceiling of the metric ``amodal.occluded_object_iou``: a model that completes shapes from
what it sees cannot beat it on average. Two standard decision rules give ``M``: the best single
consistent shape, and the posterior marginals thresholded at a level (Nowozin, CVPR 2014, on
optimal decisions under IoU); the observer takes whichever has the higher expectation, computed
exactly over all consistent shapes, so the numbers here are a lower bound of the exact ceiling
(a tight one where they are near 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from econ_scenes.data.generator import RASTERISERS, Scenes, SceneSpec
from econ_scenes.errors import EconError
from econ_scenes.evaluate.metrics import gt_visible, occluded_objects

THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


@dataclass(frozen=True)
class ShapeBank:
    """Every full shape one class can take in an S×S image.

    Attributes:
        masks: float32 (C, S*S), 1 inside the shape.
        prior: float64 (C,), the generator's probability of each shape (sums to 1).
    """

    masks: torch.Tensor
    prior: torch.Tensor


@dataclass(frozen=True)
class IdealEstimate:
    """The ideal observer's answer for one occluded object.

    Attributes:
        expected_iou: ``E_c[IoU(M, c)]`` over the consistent shapes ``c``.
        iou: IoU of ``M`` with the object's true shape.
        n_consistent: how many full shapes agree with what is visible.
        rule: ``"shape"`` (best single shape) or ``"marginal@t"`` (thresholded marginals).
    """

    expected_iou: float
    iou: float
    n_consistent: int
    rule: str


def shape_bank(spec: SceneSpec, class_id: int) -> ShapeBank:
    """All shapes of ``class_id`` under ``spec``'s size range, with their prior weights."""
    if class_id not in RASTERISERS:
        raise EconError(f"no shape class {class_id}; object classes are {sorted(RASTERISERS)}")
    low, high = spec.size_range_px()
    size = spec.size
    sizes, xs, ys, weights = [], [], [], []
    for side in range(low, high + 1):
        n = size - side + 1
        grid_x, grid_y = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        sizes.append(np.full(n * n, side))
        xs.append(grid_x.ravel())
        ys.append(grid_y.ravel())
        weights.append(np.full(n * n, 1.0 / (n * n * (high - low + 1))))
    masks = RASTERISERS[class_id](np.concatenate(xs).astype(np.float32),
                                  np.concatenate(ys).astype(np.float32),
                                  np.concatenate(sizes).astype(np.float32), size)
    return ShapeBank(torch.from_numpy(masks.reshape(len(masks), -1).astype(np.float32)),
                     torch.from_numpy(np.concatenate(weights)))


def consistent_shapes(bank: ShapeBank, visible: torch.Tensor, scope: torch.Tensor) -> torch.Tensor:
    """Which shapes show exactly ``visible`` inside ``scope`` and are hidden somewhere.

    The metric scores occluded objects only, so the observer knows a pixel of the shape lies
    outside the scope.

    Args:
        bank: C shapes.
        visible, scope: float32 (P, n) for n objects (P = S*S pixels).

    Returns:
        bool (C, n).
    """
    covers = bank.masks @ visible >= visible.sum(dim=0) - 0.5  # every visible pixel inside
    spills = bank.masks @ (scope * (1 - visible)) > 0.5  # no in-scope pixel outside
    hidden = bank.masks @ (1 - scope) > 0.5
    return covers & ~spills & hidden


def _expected_ious(estimates: torch.Tensor, shapes: torch.Tensor, weights: torch.Tensor
                   ) -> torch.Tensor:
    """E_c[IoU(estimate, c)] for each estimate (E, P) over shapes (n, P) with weights (n,)."""
    inter = estimates @ shapes.T
    union = estimates.sum(1, keepdim=True) + shapes.sum(1) - inter
    return (inter / union.clamp_min(1)).double() @ weights


def ideal_estimate(bank: ShapeBank, consistent: torch.Tensor, truth: torch.Tensor, *,
                   max_shapes: int = 2000, seed: int = 0) -> IdealEstimate:
    """The ideal observer's best mask for one object and its expected and true IoU.

    Args:
        bank: the object's class.
        consistent: bool (C,) from :func:`consistent_shapes`.
        truth: float32 (P,), the object's true full shape.
        max_shapes: above this many consistent shapes, the posterior is represented by as many
            prior-weighted draws (a Monte Carlo estimate of the same expectation).
    """
    index = torch.nonzero(consistent).squeeze(1)
    if index.numel() == 0:
        raise EconError("no shape of this class is consistent with the visible region; "
                        "the scene does not come from this generator spec")
    shapes, weights = bank.masks[index], bank.prior[index] / bank.prior[index].sum()
    # Candidate masks come from the posterior (drawn, above max_shapes); every candidate's
    # expected IoU is then taken over all consistent shapes, exactly.
    drawn, drawn_weights = shapes, weights
    if len(index) > max_shapes:
        generator = torch.Generator().manual_seed(seed)
        rows = torch.multinomial(weights, max_shapes, replacement=True, generator=generator)
        drawn = shapes[rows]
        drawn_weights = torch.full((max_shapes,), 1.0 / max_shapes, dtype=torch.float64)
    marginal = drawn_weights.float() @ drawn
    masks = torch.cat([(marginal >= t).float()[None] for t in THRESHOLDS])
    rules = [f"marginal@{t}" for t in THRESHOLDS]
    best_drawn = int(_expected_ious(drawn, drawn, drawn_weights).argmax())
    masks = torch.cat([masks, drawn[best_drawn][None]])
    rules.append("shape")
    expected = _expected_ious(masks, shapes, weights)
    best = int(expected.argmax())
    mask = masks[best]
    inter = float(mask @ truth)
    iou = inter / max(float(mask.sum() + truth.sum()) - inter, 1.0)
    return IdealEstimate(float(expected[best]), iou, len(index), rules[best])


def ideal_amodal(scenes: Scenes, spec: SceneSpec, *, max_shapes: int = 2000
                 ) -> dict[str, np.ndarray]:
    """The ideal observer on every occluded object of ``scenes``.

    An object is occluded when one of its pixels is hidden (as in
    :func:`econ_scenes.evaluate.evaluate.decomposition_metrics`); one hidden entirely cannot be
    seen and scores 0, as an unmatched object does there.

    Returns:
        float64 arrays (N, L), NaN where a layer is not an occluded object: ``expected_iou``,
        ``iou`` (against the true shape), ``visible_fraction``, ``n_consistent``.
    """
    shapes = np.asarray(scenes.shapes, dtype=bool)
    classes = np.asarray(scenes.classes)
    n_scenes, n_layers, height, width = shapes.shape
    if (height, width) != (spec.size, spec.size):
        raise EconError(f"scenes are {height}×{width}, the spec draws {spec.size}×{spec.size}")
    visible = gt_visible(shapes)
    hidden = occluded_objects(shapes, classes)
    out = {key: np.full((n_scenes, n_layers), np.nan)
           for key in ("expected_iou", "iou", "visible_fraction", "n_consistent")}
    for class_id in np.unique(classes[hidden]):
        bank = shape_bank(spec, int(class_id))
        scene_ids, layers = np.nonzero(hidden & (classes == class_id))
        seen = visible[scene_ids, layers].reshape(len(layers), -1)
        # The scope of a layer: the pixels no layer in front of it covers.
        front = np.stack([shapes[i, layer + 1:].any(axis=0)
                          for i, layer in zip(scene_ids, layers, strict=True)])
        scope = ~front.reshape(len(layers), -1)
        consistent = consistent_shapes(bank, torch.from_numpy(seen.T.astype(np.float32)),
                                       torch.from_numpy(scope.T.astype(np.float32)))
        for j, (i, layer) in enumerate(zip(scene_ids, layers, strict=True)):
            truth = shapes[i, layer].ravel()
            out["visible_fraction"][i, layer] = seen[j].sum() / truth.sum()
            if not seen[j].any():
                out["expected_iou"][i, layer] = out["iou"][i, layer] = 0.0
                out["n_consistent"][i, layer] = 0
                continue
            estimate = ideal_estimate(bank, consistent[:, j],
                                      torch.from_numpy(truth.astype(np.float32)),
                                      max_shapes=max_shapes, seed=int(i))
            out["expected_iou"][i, layer] = estimate.expected_iou
            out["iou"][i, layer] = estimate.iou
            out["n_consistent"][i, layer] = estimate.n_consistent
    return out
