"""Evaluation of scene decompositions: segmentation, amodal shapes, depth order, counts,
expert specialisation and generative quality (KID). See :mod:`econ_scenes.evaluate.metrics`.

The whole evaluation (:func:`evaluate`, :func:`decomposition_metrics`, :func:`write_report`) and
the shape classifier used to judge generation (:class:`ShapeClassifier`,
:func:`load_or_train_classifier`) are exported here too.
"""

from __future__ import annotations

from econ_scenes.evaluate.classifier import (
    ShapeClassifier,
    load_or_train_classifier,
    train_classifier,
)
from econ_scenes.evaluate.evaluate import (
    decomposition_metrics,
    evaluate,
    generation_metrics,
    write_report,
)
from econ_scenes.evaluate.metrics import (
    MatchResult,
    amodal_iou,
    ari,
    binarize,
    bootstrap_ci,
    count_accuracy,
    depth_order_accuracy,
    gt_labels,
    gt_visible,
    iou_matrix,
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

__all__ = [
    "MatchResult",
    "ShapeClassifier",
    "amodal_iou",
    "ari",
    "binarize",
    "bootstrap_ci",
    "count_accuracy",
    "decomposition_metrics",
    "depth_order_accuracy",
    "evaluate",
    "generation_metrics",
    "gt_labels",
    "gt_visible",
    "iou_matrix",
    "kid",
    "labels_to_masks",
    "load_or_train_classifier",
    "matched_iou",
    "object_counts",
    "occluded_iou",
    "pred_labels",
    "predicted_counts",
    "segmentation_covering",
    "specialisation",
    "train_classifier",
    "valid_layers",
    "write_report",
]
