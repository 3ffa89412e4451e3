"""``evaluate``: every score of a trained ECON model on ground-truth scenes, as one JSON report.

Decomposition (sections 2 and 5): reconstruction error, segmentation of the visible regions
(ARI, FG-ARI, mSC, Hungarian-matched mIoU), amodal shapes of the matched objects (IoU of the
full shape over all objects and over the occluded ones, and IoU of the occluded part alone),
depth order of overlapping objects, object counts and the
specialisation of the winning experts on object classes.

Generation (section 6, needs a :class:`~econ_scenes.evaluate.classifier.ShapeClassifier`): which
class each expert draws, whether scenes composed from chosen experts hold the intended number
and classes of objects, and a kernel inception distance (KID) between scenes generated from the
prior over expert sequences and real scenes, on the classifier's penultimate-layer features.

Every per-scene score is reported as its mean, a 95 % percentile-bootstrap confidence interval
and the number of scenes (or objects, samples) it is defined on; undefined values are ``null``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from econ_scenes.config import search_settings
from econ_scenes.data.generator import CLASS_NAMES, Scenes
from econ_scenes.errors import EconError
from econ_scenes.evaluate.metrics import (
    MatchResult,
    amodal_iou,
    ari,
    bootstrap_ci,
    depth_order_accuracy,
    gt_labels,
    gt_visible,
    kid,
    labels_to_masks,
    matched_iou,
    object_counts,
    occluded_iou,
    occluded_objects,
    pred_labels,
    predicted_counts,
    segmentation_covering,
    specialisation,
    valid_layers,
)
from econ_scenes.io import atomic_write
from econ_scenes.types import Decomposition

if TYPE_CHECKING:
    from econ_scenes.evaluate.classifier import ShapeClassifier
    from econ_scenes.scene import SceneModel, SequencePrior

__all__ = [
    "BACKGROUND_COVERAGE",
    "HEADLINE",
    "HEADLINE_LABELS",
    "class_experts",
    "classify_layers",
    "decompose_scenes",
    "decomposition_metrics",
    "evaluate",
    "format_report",
    "generation_metrics",
    "given_regions",
    "headline_statistic",
    "min_object_pixels",
    "summarise",
    "to_jsonable",
    "write_report",
]

N_CLASSES = len(CLASS_NAMES)
BACKGROUND_COVERAGE = 0.6
"""A generated layer whose shape covers more than this share of the image is a background."""
PRIOR_SCENES = 256
"""Scenes the expert-sequence prior is fitted on when the run has none."""
CHUNK = 256
"""Scenes generated at once."""

HEADLINE: dict[str, tuple[str, ...]] = {
    "fg_ari": ("segmentation", "fg_ari", "mean"),
    "ari": ("segmentation", "ari", "mean"),
    "miou": ("segmentation", "miou", "mean"),
    "msc": ("segmentation", "msc", "mean"),
    "amodal_iou": ("amodal", "iou", "mean"),
    "occluded_object_iou": ("amodal", "occluded_object_iou", "mean"),
    "occluded_iou": ("amodal", "occluded_iou", "mean"),
    "depth_accuracy": ("depth", "pair_accuracy"),
    "count_accuracy": ("count", "accuracy", "mean"),
    "mse": ("reconstruction", "mse", "mean"),
    "ami": ("specialisation", "ami"),
    "hungarian_accuracy": ("specialisation", "hungarian_accuracy"),
    "sample_class_accuracy": ("generation", "samples", "accuracy", "mean"),
    "compose_scene_accuracy": ("generation", "compose", "scene_accuracy", "mean"),
    "kid": ("generation", "kid", "mean"),
}
"""Headline number → its path in the metrics dict."""

HEADLINE_LABELS: dict[str, str] = {
    "fg_ari": "FG-ARI",
    "ari": "ARI",
    "miou": "mIoU",
    "msc": "mSC",
    "amodal_iou": "amodal IoU, all objects",
    "occluded_object_iou": "amodal IoU, occluded objects",
    "occluded_iou": "occluded-pixel IoU",
    "depth_accuracy": "depth-order accuracy",
    "count_accuracy": "count accuracy",
    "mse": "reconstruction MSE",
    "ami": "AMI (experts vs classes)",
    "hungarian_accuracy": "expert-class accuracy (Hungarian)",
    "sample_class_accuracy": "samples → class",
    "compose_scene_accuracy": "composed-scene accuracy",
    "kid": "KID",
}
"""Headline number → the label the CLI, reports and the README's results table give it."""


def headline_statistic(metrics: dict[str, Any], name: str) -> Any:
    """The statistic behind a headline number: its dict (mean, CI) when it has one, else the
    value itself; None when the metrics lack it."""
    path = HEADLINE[name]
    return _lookup(metrics, path[:-1] if path[-1] == "mean" else path)


# --------------------------------------------------------------------------- helpers


def min_object_pixels(image_size: int) -> int:
    """Pixels a region needs to count as an object: 0.5 % of the image, at least 4 (as the
    expert-sequence prior of :meth:`SceneModel.fit_prior`)."""
    return max(4, image_size * image_size // 200)


def summarise(values: np.ndarray, unit: str = "scenes", seed: int = 0) -> dict[str, Any]:
    """Mean, 95 % bootstrap CI and count of the finite values (NaN = undefined, skipped)."""
    array = np.asarray(values, dtype=np.float64).ravel()
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, f"n_{unit}": 0}
    low, high = bootstrap_ci(finite, seed=seed)
    return {"mean": float(finite.mean()), "ci_low": low, "ci_high": high,
            f"n_{unit}": int(finite.size)}


def nanmean_rows(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN for rows without a finite value."""
    finite = np.isfinite(values)
    counts = finite.sum(axis=-1)
    sums = np.where(finite, values, 0.0).sum(axis=-1)
    return np.divide(sums, counts, out=np.full(counts.shape, np.nan), where=counts > 0)


def to_jsonable(value: Any) -> Any:
    """Nested dicts/lists of numpy values → plain JSON types; NaN and inf become ``None``."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.detach().cpu().numpy())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot convert {type(value).__name__} to JSON")


def _lookup(metrics: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = metrics
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _chunks(n: int, size: int, progress: bool, desc: str) -> Iterator[tuple[int, int]]:
    with tqdm(total=n, disable=not progress, desc=desc, unit="scene") as bar:
        for start in range(0, n, size):
            stop = min(start + size, n)
            yield start, stop
            bar.update(stop - start)


def _images_float(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) → float32 (N, 3, H, W) in [0, 1]."""
    return np.asarray(images, dtype=np.float32).transpose(0, 3, 1, 2) / 255.0


def _check_scenes(scenes: Scenes, image_size: int) -> None:
    if len(scenes) == 0:
        raise EconError("no scenes to evaluate")
    if scenes.image_size != (image_size, image_size):
        height, width = scenes.image_size
        raise EconError(f"the scenes are {height}×{width} but the model expects "
                        f"{image_size}×{image_size} images")


# --------------------------------------------------------------------------- decomposition


def given_regions(scene_model: SceneModel, scenes: Scenes) -> np.ndarray | None:
    """The visible regions (N, L, H, W), front first, that a model trained with ``--gt-masks``
    is given instead of its attention; None for every other model."""
    return scenes.regions_front_first() if scene_model.config.train.gt_masks else None


def decompose_scenes(scene_model: SceneModel, images: np.ndarray, *, n_steps: int | None = None,
                     regions: np.ndarray | None = None, batch_size: int = 64,
                     progress: bool = True, refine_steps: int = 0) -> Decomposition:
    """:meth:`SceneModel.decompose` batch by batch with a progress bar; results on the CPU.
    regions: visible regions (N, T, H, W) front first, given instead of attention;
    refine_steps: gradient steps on each latent after the encoder (:mod:`econ_scenes.model.refine`)."""
    parts = [
        scene_model.decompose(images[start:stop], n_steps=n_steps, batch_size=batch_size,
                              regions=None if regions is None else regions[start:stop],
                              refine_steps=refine_steps)
        for start, stop in _chunks(len(images), batch_size, progress, "decomposing")
    ]
    return Decomposition(**{f.name: torch.cat([getattr(p, f.name) for p in parts])
                            for f in fields(Decomposition)})


def _subset(decomposition: Decomposition, stop: int) -> Decomposition:
    return Decomposition(**{f.name: getattr(decomposition, f.name)[:stop]
                            for f in fields(Decomposition)})


def match_steps(regions: np.ndarray, gt_shapes: np.ndarray, classes: np.ndarray) -> MatchResult:
    """Ground-truth layers (background included) matched one-to-one to inference steps by their
    visible regions: regions float (N, T, H, W), gt_shapes bool (N, L, H, W), classes (N, L)."""
    return matched_iou(gt_visible(gt_shapes), valid_layers(classes, include_background=True),
                       labels_to_masks(pred_labels(regions), regions.shape[1]))


def object_amodal_iou(gt_shapes: np.ndarray, classes: np.ndarray, shapes: np.ndarray,
                      matching: MatchResult) -> np.ndarray:
    """Amodal IoU per object (N, L) of the predicted full shapes (N, T, H, W) through
    ``matching``; an unmatched object scores 0, layers that are not objects are NaN."""
    objects = valid_layers(classes, include_background=False)
    amodal = amodal_iou(gt_shapes, objects, shapes, matching)
    amodal[objects & (matching.step < 0)] = 0.0
    return amodal


def decomposition_metrics(decomposition: Decomposition, scenes: Scenes, *,
                          n_experts: int | None = None, min_pixels: int | None = None,
                          seed: int = 0) -> dict[str, Any]:
    """Scores of a decomposition (front first) against the ground truth (back to front).

    Predicted visible segments are the argmax of the regions; ground-truth layers (background
    included) are matched to inference steps by Hungarian matching of visible regions, and the
    matching is reused for amodal shapes (``shape > 0.5``), depth order, counts and expert
    specialisation. An object left unmatched scores an amodal (and occluded) IoU of 0.

    Args:
        decomposition: N scenes, T steps (e.g. from :func:`decompose_scenes`).
        scenes: the N ground-truth scenes.
        n_experts: K (default: the largest winner + 1).
        min_pixels: visible pixels a step needs to count as an object (default
            :func:`min_object_pixels`).

    Returns:
        JSON-ready dict with ``n_scenes``, ``n_steps``, ``reconstruction``, ``segmentation``,
        ``amodal``, ``depth``, ``count`` and ``specialisation`` (None when no layer was matched).
    """
    winners = decomposition.winner.cpu().numpy().astype(np.int64)
    regions = decomposition.region.float().cpu().numpy()
    shapes = decomposition.shape.float().cpu().numpy()
    reconstruction = decomposition.reconstruction.float().cpu().numpy()
    n_scenes, n_steps, height, width = regions.shape
    if n_scenes != len(scenes) or (height, width) != scenes.image_size:
        raise EconError(f"decomposition of {n_scenes} {height}×{width} scenes does not match "
                        f"{len(scenes)} {scenes.image_size[0]}×{scenes.image_size[1]} scenes")
    n_experts = int(winners.max()) + 1 if n_experts is None else int(n_experts)
    min_pixels = min_object_pixels(height) if min_pixels is None else int(min_pixels)

    gt_shapes = np.asarray(scenes.shapes, dtype=bool)
    classes = np.asarray(scenes.classes, dtype=np.int64)
    images = _images_float(scenes.images)

    # Reconstruction.
    mse = ((reconstruction - images) ** 2).mean(axis=(1, 2, 3))

    # Segmentation of visible regions.
    truth = gt_labels(gt_shapes)
    predicted = pred_labels(regions)
    every_layer = valid_layers(classes, include_background=True)
    objects = valid_layers(classes, include_background=False)
    matching = match_steps(regions, gt_shapes, classes)
    segmentation = {
        "ari": summarise(ari(truth, predicted), seed=seed),
        "fg_ari": summarise(ari(truth, predicted, foreground=truth > 0), seed=seed),
        "msc": summarise(segmentation_covering(truth, predicted, mean=True), seed=seed),
        "sc": summarise(segmentation_covering(truth, predicted, mean=False), seed=seed),
        "miou": summarise(matching.per_image, seed=seed),
    }

    # Amodal shapes of matched objects; unmatched objects score 0.
    unmatched = objects & (matching.step < 0)
    amodal = object_amodal_iou(gt_shapes, classes, shapes, matching)
    hidden = occluded_objects(gt_shapes, classes)
    occluded = occluded_iou(gt_shapes, objects, shapes, matching)
    occluded[unmatched & hidden] = 0.0
    # Amodal IoU of the full shape, over the objects that something occludes.
    amodal_of_occluded = np.where(hidden, amodal, np.nan)
    amodal_section = {
        "iou": summarise(nanmean_rows(amodal), seed=seed),
        "occluded_object_iou": summarise(nanmean_rows(amodal_of_occluded), seed=seed),
        "occluded_iou": summarise(nanmean_rows(occluded), seed=seed),
        "iou_per_object": summarise(amodal, unit="objects", seed=seed),
        "occluded_object_iou_per_object": summarise(amodal_of_occluded, unit="objects",
                                                    seed=seed),
        "occluded_iou_per_object": summarise(occluded, unit="objects", seed=seed),
        "unmatched_objects": int(unmatched.sum()),
    }

    # Depth order of overlapping object pairs, per scene and pooled over pairs.
    per_scene_depth = np.full(n_scenes, np.nan)
    correct_pairs = 0
    n_pairs = 0
    for i in range(n_scenes):
        one = MatchResult(iou=matching.iou[i : i + 1], step=matching.step[i : i + 1],
                          per_image=matching.per_image[i : i + 1])
        accuracy, pairs = depth_order_accuracy(gt_shapes[i : i + 1], one)
        if pairs:
            per_scene_depth[i] = accuracy
            correct_pairs += round(accuracy * pairs)
            n_pairs += pairs
    depth = {
        "accuracy": summarise(per_scene_depth, seed=seed),
        "pair_accuracy": correct_pairs / n_pairs if n_pairs else None,
        "n_pairs": n_pairs,
    }

    # Object counts (steps with >= min_pixels visible pixels, the background step excluded).
    found = predicted_counts(regions, matching.step[:, 0], min_pixels)
    true_counts = object_counts(classes)
    count = {
        "accuracy": summarise((found == true_counts).astype(np.float64), seed=seed),
        "mean_abs_error": float(np.abs(found - true_counts).mean()),
        "mean_true": float(true_counts.mean()),
        "mean_found": float(found.mean()),
        "min_pixels": min_pixels,
    }

    # Specialisation: winner of every matched ground-truth layer (background = class 0).
    matched = every_layer & (matching.step >= 0)
    scene_index, layer_index = np.nonzero(matched)
    spec: dict[str, Any] | None = None
    if scene_index.size:
        experts = winners[scene_index, matching.step[scene_index, layer_index]]
        result = specialisation(experts, classes[scene_index, layer_index], n_experts, N_CLASSES)
        spec = {
            "class_names": list(CLASS_NAMES),
            "contingency": result["contingency"],
            "purity": result["purity"],
            "ami": result["ami"],
            "nmi": result["nmi"],
            "hungarian_accuracy": result["hungarian_accuracy"],
            "assignment": result["assignment"],
            "win_rate": result["win_rate"],
            "n_objects": int(scene_index.size),
            "matched_fraction": float(matched.sum() / every_layer.sum()),
        }

    return to_jsonable({
        "n_scenes": n_scenes,
        "n_steps": n_steps,
        "n_experts": n_experts,
        "image_size": height,
        "reconstruction": {"mse": summarise(mse, seed=seed)},
        "segmentation": segmentation,
        "amodal": amodal_section,
        "depth": depth,
        "count": count,
        "specialisation": spec,
    })


# --------------------------------------------------------------------------- generation


def classify_layers(classifier: ShapeClassifier, appearance: torch.Tensor | np.ndarray,
                    shape: torch.Tensor | np.ndarray, min_pixels: int) -> np.ndarray:
    """Class of generated layers rendered as the data: the object ``appearance ⊙ (shape > 0.5)``
    on a black canvas.

    A layer covering more than :data:`BACKGROUND_COVERAGE` of the image is a background (0);
    one with fewer than ``min_pixels`` shape pixels is empty (-1); the classifier decides the rest.

    Args:
        appearance: float (n, 3, H, W); shape: float or binary (n, H, W).

    Returns:
        int64 (n,) in -1..3.
    """
    appearance = torch.as_tensor(appearance).float().clamp(0.0, 1.0)
    mask = torch.as_tensor(shape).float() > 0.5
    rendered = appearance * mask[:, None]
    labels = classifier.predict(rendered)
    pixels = mask.sum(dim=(1, 2)).numpy()
    labels[pixels > BACKGROUND_COVERAGE * mask.shape[1] * mask.shape[2]] = 0
    labels[pixels < min_pixels] = -1
    return labels


def class_experts(specialisation_metrics: dict[str, Any]) -> dict[int, int]:
    """Expert chosen to draw each class: the Hungarian assignment, else the expert that won the
    class most often; classes that no expert ever explained are left out."""
    table = np.asarray(specialisation_metrics["contingency"], dtype=np.int64)
    assignment = np.asarray(specialisation_metrics["assignment"], dtype=np.int64)
    chosen: dict[int, int] = {}
    for cls in range(table.shape[1]):
        assigned = np.flatnonzero(assignment == cls)
        if assigned.size:
            chosen[cls] = int(assigned[0])
        elif table[:, cls].sum() > 0:
            chosen[cls] = int(table[:, cls].argmax())
    return chosen


def _sample_metrics(scene_model: SceneModel, classifier: ShapeClassifier,
                    assignment: np.ndarray | None, n_samples: int, min_pixels: int, seed: int,
                    progress: bool) -> dict[str, Any]:
    """P(class | expert k) over ``n_samples`` objects of each expert."""
    n_experts = scene_model.n_experts
    p_class = np.zeros((n_experts, N_CLASSES))
    p_empty = np.zeros(n_experts)
    per_expert: list[float | None] = []
    correct: list[np.ndarray] = []
    for k in tqdm(range(n_experts), disable=not progress, desc="sampling experts"):
        appearance, shape = scene_model.sample_expert(k, n_samples, seed=seed + k)
        labels = classify_layers(classifier, appearance, shape, min_pixels)
        p_class[k] = np.bincount(labels[labels >= 0], minlength=N_CLASSES) / n_samples
        p_empty[k] = float((labels < 0).mean())
        intended = -1 if assignment is None else int(assignment[k])
        if intended >= 0:
            hits = (labels == intended).astype(np.float64)
            correct.append(hits)
            per_expert.append(float(hits.mean()))
        else:
            per_expert.append(None)
    hits_all = np.concatenate(correct) if correct else np.zeros(0)
    return {
        "n_per_expert": n_samples,
        "p_class": p_class,
        "p_empty": p_empty,
        "intended_class": assignment if assignment is not None else [-1] * n_experts,
        "per_expert_accuracy": per_expert,
        "accuracy": summarise(hits_all, unit="samples", seed=seed),
    }


def _compose_metrics(scene_model: SceneModel, classifier: ShapeClassifier,
                     chosen: dict[int, int], n_scenes: int, min_pixels: int, seed: int,
                     progress: bool) -> dict[str, Any]:
    """Scenes composed from the background expert and 1-3 object experts: are the layers there
    (visible) and of the intended class?"""
    object_classes = [c for c in range(1, N_CLASSES) if c in chosen]
    if 0 not in chosen or not object_classes:
        return {"skipped": "no expert is assigned to the background or to any object class"}
    rng = np.random.default_rng(seed)
    max_objects = 3
    intended = np.full((n_scenes, max_objects + 1), -1, dtype=np.int64)
    intended[:, 0] = 0
    n_objects = rng.integers(1, max_objects, size=n_scenes, endpoint=True)
    for i, count in enumerate(n_objects):
        replace = count > len(object_classes)
        intended[i, 1 : count + 1] = rng.choice(object_classes, size=count, replace=replace)
    lookup = np.full(N_CLASSES, -1, dtype=np.int64)
    for cls, expert in chosen.items():
        lookup[cls] = expert
    experts = np.where(intended >= 0, lookup[np.clip(intended, 0, None)], -1)
    labels = np.empty_like(intended)
    visible_pixels = np.empty(intended.shape, dtype=np.int64)
    shape_pixels = np.empty(intended.shape, dtype=np.int64)
    size = scene_model.image_size
    for start, stop in _chunks(n_scenes, CHUNK, progress, "composing scenes"):
        composition = scene_model.compose(experts[start:stop].tolist(), seed=seed + start)
        drawn = composition.shape.numpy() > 0.5
        layer_labels = classify_layers(classifier,
                                       composition.appearance.reshape(-1, 3, size, size),
                                       composition.shape.reshape(-1, size, size), min_pixels)
        labels[start:stop] = layer_labels.reshape(stop - start, -1)
        shape_pixels[start:stop] = drawn.sum(axis=(2, 3))
        visible_pixels[start:stop] = gt_visible(drawn).sum(axis=(2, 3))
    present = intended >= 0
    is_object = intended > 0
    right_class = labels == intended
    found_objects = (is_object & (visible_pixels >= min_pixels)).sum(axis=1)
    count_ok = found_objects == n_objects
    classes_ok = np.where(present, right_class, True).all(axis=1)
    return {
        "n_scenes": n_scenes,
        "class_to_expert": {CLASS_NAMES[c]: k for c, k in sorted(chosen.items())},
        "count_accuracy": summarise(count_ok.astype(np.float64), seed=seed),
        "object_class_accuracy": summarise(right_class[is_object].astype(np.float64),
                                           unit="objects", seed=seed),
        "background_accuracy": summarise(right_class[:, 0].astype(np.float64), seed=seed),
        "nonempty_rate": summarise((shape_pixels[present] >= min_pixels).astype(np.float64),
                                   unit="layers", seed=seed),
        "scene_accuracy": summarise((count_ok & classes_ok).astype(np.float64), seed=seed),
    }


def _generate_from_prior(scene_model: SceneModel, prior: SequencePrior, n: int, seed: int,
                         progress: bool) -> torch.Tensor:
    images = [
        scene_model.compose_from_prior(stop - start, prior=prior, seed=seed + start).image
        for start, stop in _chunks(n, CHUNK, progress, "generating scenes")
    ]
    return torch.cat(images).clamp(0.0, 1.0)


def _kid_subset(n: int, m: int) -> int:
    """Subsets of half the smaller set (at most 1000), so that the KID spread is meaningful."""
    return max(2, min(1000, min(n, m) // 2))


def generation_metrics(scene_model: SceneModel, scenes: Scenes, classifier: ShapeClassifier, *,
                       specialisation_metrics: dict[str, Any] | None,
                       decomposition: Decomposition | None = None, n_generated: int = 1000,
                       n_samples: int = 200, n_composed: int = 300, seed: int = 0,
                       progress: bool = True) -> dict[str, Any]:
    """Controllable and unconditional generation, judged by the shape classifier.

    * ``samples``: P(class | expert k) of ``n_samples`` objects per expert, and the share drawn
      in the class the Hungarian assignment of the specialisation gives to k.
    * ``compose``: ``n_composed`` scenes of the background expert plus 1-3 object experts.
    * ``kid``: ``n_generated`` scenes from the run's expert-sequence prior (fitted on the first
      256 decomposed scenes when the run has none) against the data, on classifier features;
      ``kid_reference`` is the KID between the two halves of the data (the noise floor).
      Features are centred on the data mean and divided by one scale (the root mean variance
      of the data features), so that the cubic kernel sees O(1) values; KID is averaged over
      100 subsets of half the smaller set (at most 1000).
    """
    from econ_scenes.scene import SequencePrior

    min_pixels = min_object_pixels(scene_model.image_size)
    assignment = None
    chosen: dict[int, int] = {}
    if specialisation_metrics is not None:
        assignment = np.asarray(specialisation_metrics["assignment"], dtype=np.int64)
        chosen = class_experts(specialisation_metrics)
    samples = _sample_metrics(scene_model, classifier, assignment, n_samples, min_pixels, seed,
                              progress)
    compose = (_compose_metrics(scene_model, classifier, chosen, n_composed, min_pixels, seed,
                                progress)
               if chosen else {"skipped": "no specialisation (no matched objects)"})

    try:
        prior = scene_model.prior()
        prior_source = "run"
    except EconError:
        if decomposition is not None:
            count = min(PRIOR_SCENES, decomposition.winner.shape[0])
            prior = SequencePrior.fit(_subset(decomposition, count), min_pixels)
        else:
            count = min(PRIOR_SCENES, len(scenes))
            prior = scene_model.fit_prior(scenes.images[:count], save=False)
        prior_source = f"fitted on {count} evaluation scenes"
    generated = _generate_from_prior(scene_model, prior, n_generated, seed, progress)
    data_features = classifier.features(_images_float(scenes.images)).astype(np.float64)
    centre = data_features.mean(axis=0)
    scale = float(np.sqrt(data_features.var(axis=0).mean())) or 1.0
    data_features = (data_features - centre) / scale
    generated_features = (classifier.features(generated) - centre) / scale
    kid_mean, kid_std = kid(generated_features, data_features, seed=seed,
                            subset_size=_kid_subset(len(generated_features), len(data_features)))
    reference: dict[str, Any] | None = None
    if len(data_features) >= 4:
        halves = data_features[0::2], data_features[1::2]
        ref_mean, ref_std = kid(*halves, seed=seed,
                                subset_size=_kid_subset(len(halves[0]), len(halves[1])))
        reference = {"mean": ref_mean, "std": ref_std}
    return to_jsonable({
        "classifier_accuracy": classifier.accuracy,
        # shipped with the package, read from the cache or trained here (None: given directly)
        "classifier_source": classifier.info.get("source"),
        "min_pixels": min_pixels,
        "samples": samples,
        "compose": compose,
        "kid": {"mean": kid_mean, "std": kid_std, "n_generated": n_generated,
                "n_data": len(data_features), "prior": prior_source,
                "subset_size": _kid_subset(n_generated, len(data_features)),
                "features": "shape classifier, penultimate layer, standardised on the data"},
        "kid_reference": reference,
    })


# --------------------------------------------------------------------------- the whole evaluation


def evaluate(scene_model: SceneModel, scenes: Scenes, *, n_steps: int | None = None,
             classifier: ShapeClassifier | None = None, n_generated: int = 1000,
             n_samples: int = 200, n_composed: int = 300, seed: int = 0, batch_size: int = 64,
             progress: bool = True, refine_steps: int = 0) -> dict[str, Any]:
    """Decompose ``scenes`` with ``scene_model`` and score everything (see the module doc).

    Args:
        n_steps: inference steps T (default: the model's, or the scenes' layer count when they
            have more layers, e.g. the six of Fig 8's scenes: T steps find at most T segments).
        classifier: shape classifier for the generation scores (skipped when None).
        n_generated: scenes generated for KID; n_samples: objects per expert; n_composed:
            composed scenes.
        refine_steps: refine each step's latent by this many gradient steps on its own loss
            before scoring (semi-amortised inference, :mod:`econ_scenes.model.refine`).

    Returns:
        JSON-ready nested dict: ``headline`` plus the sections of
        :func:`decomposition_metrics` and ``generation`` (None without a classifier).
    """
    if n_steps is not None and n_steps < 1:
        raise EconError(f"n_steps must be >= 1, got {n_steps}")
    if refine_steps < 0:
        raise EconError(f"refine_steps must be >= 0, got {refine_steps}")
    _check_scenes(scenes, scene_model.image_size)
    # A model trained on ground-truth regions (--gt-masks, Fig. 5) is evaluated the same way:
    # given the visible regions, how well does it complete the full shapes?
    regions = given_regions(scene_model, scenes)
    given = regions is not None
    if n_steps is None and not given:
        n_steps = max(scene_model.config.model.n_steps, scenes.n_layers)
    decomposition = decompose_scenes(scene_model, scenes.images, n_steps=n_steps, regions=regions,
                                     batch_size=batch_size, progress=progress,
                                     refine_steps=refine_steps)
    metrics = decomposition_metrics(decomposition, scenes, n_experts=scene_model.n_experts,
                                    seed=seed)
    metrics["generation"] = None
    if classifier is not None:
        metrics["generation"] = generation_metrics(
            scene_model, scenes, classifier, specialisation_metrics=metrics["specialisation"],
            decomposition=decomposition, n_generated=n_generated, n_samples=n_samples,
            n_composed=n_composed, seed=seed, progress=progress)
    metrics["settings"] = {"seed": seed, "n_steps": metrics["n_steps"],
                           "regions": "ground truth" if given else "attention",
                           "refine_steps": refine_steps,
                           "competition": search_settings(scene_model.config.model),
                           "n_generated": n_generated if classifier else None,
                           "n_samples": n_samples if classifier else None,
                           "n_composed": n_composed if classifier else None,
                           "run_dir": scene_model.run_dir}
    metrics = {"headline": {name: _lookup(metrics, path) for name, path in HEADLINE.items()},
               **metrics}
    return to_jsonable(metrics)


# --------------------------------------------------------------------------- report


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def _stat_row(name: str, stat: dict[str, Any] | None) -> str:
    if not stat:
        return f"| {name} | – | – | – |"
    count = next((v for k, v in stat.items() if k.startswith("n_")), None)
    interval = (f"[{_fmt(stat['ci_low'])}, {_fmt(stat['ci_high'])}]"
                if stat.get("ci_low") is not None else "–")
    return f"| {name} | {_fmt(stat.get('mean'))} | {interval} | {_fmt(count)} |"


def _stat_table(rows: list[tuple[str, dict[str, Any] | None]]) -> list[str]:
    return ["| metric | mean | 95% CI | n |", "|---|---|---|---|",
            *(_stat_row(name, stat) for name, stat in rows), ""]


def format_report(metrics: dict[str, Any]) -> str:
    """Markdown tables of a metrics dict from :func:`evaluate`."""
    seg = metrics.get("segmentation", {})
    amodal = metrics.get("amodal", {})
    depth = metrics.get("depth", {})
    count = metrics.get("count", {})
    lines = ["# ECON evaluation", "",
             f"{metrics.get('n_scenes')} scenes of {metrics.get('image_size')}×"
             f"{metrics.get('image_size')} pixels, T = {metrics.get('n_steps')} inference steps, "
             f"K = {metrics.get('n_experts')} experts.", ""]
    if (metrics.get("settings") or {}).get("regions") == "ground truth":
        lines += ["Visible regions are **given** (ground truth; the model was trained with "
                  "`--gt-masks`): segmentation is exact by construction, the amodal shapes are "
                  "the model's.", ""]
    refined = (metrics.get("settings") or {}).get("refine_steps") or 0
    if refined:
        lines += [f"Each step's latent was **refined** by {refined} gradient steps on its own "
                  "loss (13) after the encoder (`--refine`, semi-amortised inference): winners "
                  "and regions are the encoder pass's, appearances and shapes the refined ones.",
                  ""]
    lines += ["## Segmentation (visible regions)", ""]
    lines += _stat_table([("FG-ARI", seg.get("fg_ari")), ("ARI", seg.get("ari")),
                          ("mSC", seg.get("msc")), ("SC", seg.get("sc")),
                          ("mIoU (Hungarian, incl. background)", seg.get("miou")),
                          ("reconstruction MSE", metrics.get("reconstruction", {}).get("mse"))])
    lines += ["## Amodal shapes (matched objects)", ""]
    lines += _stat_table([
        ("amodal IoU, all objects (per scene)", amodal.get("iou")),
        ("amodal IoU, occluded objects (per scene)", amodal.get("occluded_object_iou")),
        ("occluded-pixel IoU (per scene)", amodal.get("occluded_iou")),
        ("amodal IoU, all objects (per object)", amodal.get("iou_per_object")),
        ("amodal IoU, occluded objects (per object)",
         amodal.get("occluded_object_iou_per_object")),
        ("occluded-pixel IoU (per object)", amodal.get("occluded_iou_per_object"))])
    lines += [f"Unmatched objects (scored 0): {_fmt(amodal.get('unmatched_objects'))}.", ""]
    lines += ["## Depth order and object counts", ""]
    lines += _stat_table([("depth-order accuracy (per scene)", depth.get("accuracy")),
                          ("count accuracy", count.get("accuracy"))])
    lines += [f"Depth order pooled over {_fmt(depth.get('n_pairs'))} overlapping object pairs: "
              f"{_fmt(depth.get('pair_accuracy'))}. Counts: mean true "
              f"{_fmt(count.get('mean_true'))}, found {_fmt(count.get('mean_found'))}, mean "
              f"absolute error {_fmt(count.get('mean_abs_error'))} (a step counts with ≥ "
              f"{_fmt(count.get('min_pixels'))} visible pixels).", ""]
    lines += _specialisation_section(metrics.get("specialisation"))
    lines += _generation_section(metrics.get("generation"))
    return "\n".join(lines).rstrip() + "\n"


def _specialisation_section(spec: dict[str, Any] | None) -> list[str]:
    lines = ["## Expert specialisation (winners of matched ground-truth layers)", ""]
    if not spec:
        return [*lines, "No ground-truth layer was matched.", ""]
    names = spec["class_names"]
    lines += ["| expert | " + " | ".join(names) + " | win rate | assigned class |",
              "|---" * (len(names) + 3) + "|"]
    for k, row in enumerate(spec["contingency"]):
        assigned = spec["assignment"][k]
        lines.append(f"| {k} | " + " | ".join(str(v) for v in row)
                     + f" | {_fmt(spec['win_rate'][k])} | "
                     + (names[assigned] if assigned >= 0 else "–") + " |")
    lines += ["", f"Purity {_fmt(spec['purity'])}, AMI {_fmt(spec['ami'])}, NMI "
              f"{_fmt(spec['nmi'])}, Hungarian accuracy {_fmt(spec['hungarian_accuracy'])} over "
              f"{spec['n_objects']} layers ({_fmt(spec['matched_fraction'])} of all layers "
              "matched).", ""]
    return lines


def _generation_section(gen: dict[str, Any] | None) -> list[str]:
    lines = ["## Generation", ""]
    if not gen:
        return [*lines, "Not evaluated (no classifier).", ""]
    samples = gen["samples"]
    source = gen.get("classifier_source")
    lines += [f"Shape classifier held-out accuracy: {_fmt(gen.get('classifier_accuracy'))}"
              + (f" ({source})." if source else "."), "",
              f"P(class | expert) over {samples['n_per_expert']} samples per expert "
              "(a sample covering > 60 % of the image is background):", "",
              "| expert | " + " | ".join(CLASS_NAMES) + " | empty | intended | accuracy |",
              "|---" * (N_CLASSES + 4) + "|"]
    for k, row in enumerate(samples["p_class"]):
        intended = samples["intended_class"][k]
        lines.append(f"| {k} | " + " | ".join(_fmt(v, 2) for v in row)
                     + f" | {_fmt(samples['p_empty'][k], 2)} | "
                     + (CLASS_NAMES[intended] if intended >= 0 else "–")
                     + f" | {_fmt(samples['per_expert_accuracy'][k])} |")
    lines.append("")
    compose = gen["compose"]
    rows: list[tuple[str, dict[str, Any] | None]] = [
        ("sample-class accuracy", samples["accuracy"])]
    if "skipped" not in compose:
        rows += [("composed: count accuracy", compose["count_accuracy"]),
                 ("composed: object class accuracy", compose["object_class_accuracy"]),
                 ("composed: background accuracy", compose["background_accuracy"]),
                 ("composed: non-empty layers", compose["nonempty_rate"]),
                 ("composed: scene accuracy", compose["scene_accuracy"])]
    lines += _stat_table(rows)
    if "skipped" in compose:
        lines += [f"Composition skipped: {compose['skipped']}.", ""]
    else:
        mapping = ", ".join(f"{name} → expert {k}" for name, k in
                            compose["class_to_expert"].items())
        lines += [f"Composed scenes use {mapping}.", ""]
    kid_info = gen["kid"]
    reference = gen.get("kid_reference") or {}
    lines += [f"KID {_fmt(kid_info['mean'], 4)} ± {_fmt(kid_info['std'], 4)} between "
              f"{kid_info['n_generated']} generated scenes (prior: {kid_info['prior']}) and "
              f"{kid_info['n_data']} data scenes, on {kid_info['features']} features; data "
              f"half vs half: {_fmt(reference.get('mean'), 4)}.", ""]
    return lines


def write_report(metrics: dict[str, Any], out_dir: Path | str) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``metrics.md`` into ``out_dir`` (each atomically).

    Returns:
        (json path, markdown path).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise EconError(f"--out {out_dir} exists and is not a directory")
    text = json.dumps(to_jsonable(metrics), indent=2, allow_nan=False) + "\n"
    json_path = out_dir / "metrics.json"
    md_path = out_dir / "metrics.md"
    atomic_write(json_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    report = format_report(metrics)
    atomic_write(md_path, lambda tmp: tmp.write_text(report, encoding="utf-8"))
    return json_path, md_path
