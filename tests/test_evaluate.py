"""Tests of ``evaluate`` (metric assembly, report) and the ``econ evaluate`` command."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from econ_scenes.config import PRESETS, override
from econ_scenes.data import Scenes, SceneSpec, generate, save_scenes
from econ_scenes.errors import EconError
from econ_scenes.evaluate.classifier import (
    CACHE_ENV,
    ShapeClassifier,
    classifier_path,
    save_classifier,
    train_classifier,
)
from econ_scenes.evaluate.evaluate import (
    HEADLINE,
    HEADLINE_LABELS,
    classify_layers,
    decomposition_metrics,
    evaluate,
    headline_statistic,
    write_report,
)
from econ_scenes.model import ECON
from econ_scenes.scene import SceneModel
from econ_scenes.threads import one_thread
from econ_scenes.types import Decomposition

SIZE = 16


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """The models here are tiny; several OpenMP threads only slow them down on a busy CPU."""
    with one_thread():
        yield


@pytest.fixture(scope="module")
def tiny_model() -> SceneModel:
    config = override(
        PRESETS["quick"],
        {
            "model.image_size": SIZE,
            "model.unet_channels": (4, 8, 8),
            "model.vae_layers": 2,
            "model.vae_features": 4,
        },
    )
    torch.manual_seed(0)
    return SceneModel(ECON(config.model), config, run_dir=None)


@pytest.fixture(scope="module")
def tiny_spec() -> SceneSpec:
    return SceneSpec.preset("unique", size=SIZE)


@pytest.fixture(scope="module")
def tiny_scenes(tiny_spec: SceneSpec) -> Scenes:
    return generate(tiny_spec, 16, seed=0)


@pytest.fixture(scope="module")
def tiny_classifier() -> ShapeClassifier:
    return train_classifier(SIZE, n_train=200, epochs=1, n_test=100)


def _walk(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """All (path, value) pairs of a nested dict/list."""
    items = [(path, node)]
    if isinstance(node, dict):
        for key, value in node.items():
            items += _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            items += _walk(value, f"{path}[{i}]")
    return items


def _check_stat(stat: dict[str, Any], low: float, high: float) -> None:
    mean = stat["mean"]
    assert mean is not None and low <= mean <= high
    assert stat["ci_low"] - 1e-9 <= mean <= stat["ci_high"] + 1e-9


# --------------------------------------------------------------------------- evaluate


def test_evaluate_returns_every_metric_in_range(
    tiny_model: SceneModel, tiny_scenes: Scenes, tiny_classifier: ShapeClassifier
) -> None:
    metrics = evaluate(
        tiny_model,
        tiny_scenes,
        classifier=tiny_classifier,
        n_generated=32,
        n_samples=16,
        n_composed=16,
        progress=False,
    )
    json.dumps(metrics, allow_nan=False)  # plain JSON, no NaN
    assert set(metrics["headline"]) == set(HEADLINE) == set(HEADLINE_LABELS)
    assert headline_statistic(metrics, "fg_ari") is metrics["segmentation"]["fg_ari"]
    assert headline_statistic(metrics, "ami") == metrics["headline"]["ami"]
    assert metrics["n_scenes"] == 16 and metrics["n_steps"] == 4 and metrics["n_experts"] == 4
    for name in ("ari", "fg_ari"):
        _check_stat(metrics["segmentation"][name], -1.0, 1.0)
        assert metrics["segmentation"][name]["n_scenes"] == 16
    for name in ("msc", "sc", "miou"):
        _check_stat(metrics["segmentation"][name], 0.0, 1.0)
    _check_stat(metrics["reconstruction"]["mse"], 0.0, 1.0)
    for name in ("iou", "occluded_iou", "iou_per_object"):
        _check_stat(metrics["amodal"][name], 0.0, 1.0)
    assert metrics["amodal"]["iou_per_object"]["n_objects"] == 48
    _check_stat(metrics["count"]["accuracy"], 0.0, 1.0)
    depth = metrics["depth"]
    assert depth["n_pairs"] >= 0
    assert depth["pair_accuracy"] is None or 0 <= depth["pair_accuracy"] <= 1

    spec = metrics["specialisation"]
    table = np.array(spec["contingency"])
    assert table.shape == (4, 4) and table.sum() == spec["n_objects"] > 0
    assert spec["class_names"] == ["background", "circle", "square", "triangle"]
    for name in ("purity", "nmi", "hungarian_accuracy"):
        assert 0 <= spec[name] <= 1
    assert -1 <= spec["ami"] <= 1
    assert sorted(spec["assignment"]) == [0, 1, 2, 3]
    assert sum(spec["win_rate"]) == pytest.approx(1.0)

    generation = metrics["generation"]
    samples = generation["samples"]
    totals = np.array(samples["p_class"]).sum(axis=1) + np.array(samples["p_empty"])
    np.testing.assert_allclose(totals, 1.0)
    _check_stat(samples["accuracy"], 0.0, 1.0)
    assert samples["accuracy"]["n_samples"] == 64
    compose = generation["compose"]
    for name in ("count_accuracy", "object_class_accuracy", "background_accuracy",
                 "nonempty_rate", "scene_accuracy"):
        _check_stat(compose[name], 0.0, 1.0)
    assert compose["n_scenes"] == 16
    assert np.isfinite(generation["kid"]["mean"]) and generation["kid"]["std"] >= 0
    assert generation["kid"]["prior"].startswith("fitted on 16")
    assert generation["classifier_accuracy"] == tiny_classifier.accuracy

    for path, value in _walk(metrics):
        if isinstance(value, float):
            assert np.isfinite(value), path
    for name, value in metrics["headline"].items():
        assert value is None or isinstance(value, float), name


def test_evaluate_without_classifier_and_with_other_steps(
    tiny_model: SceneModel, tiny_scenes: Scenes
) -> None:
    metrics = evaluate(tiny_model, tiny_scenes.subset(slice(0, 4)), n_steps=2, progress=False)
    assert metrics["generation"] is None and metrics["n_steps"] == 2
    assert metrics["headline"]["kid"] is None
    assert metrics["segmentation"]["ari"]["n_scenes"] == 4


def test_ground_truth_model_is_evaluated_on_given_regions(tiny_scenes: Scenes) -> None:
    """A --gt-masks model (Fig. 5) is scored on the regions it was trained with: its (untrained)
    attention is never used, so the segmentation is exact and only the shapes are measured."""
    config = override(PRESETS["quick"], {
        "model.image_size": SIZE, "model.unet_channels": (4, 8, 8), "model.vae_layers": 2,
        "model.vae_features": 4, "model.n_experts": 1, "train.gt_masks": True})
    torch.manual_seed(0)
    single = SceneModel(ECON(config.model), config, run_dir=None)
    metrics = evaluate(single, tiny_scenes.subset(slice(0, 4)), progress=False)
    assert metrics["settings"]["regions"] == "ground truth"
    assert metrics["headline"]["ari"] == pytest.approx(1.0)
    assert metrics["headline"]["depth_accuracy"] == pytest.approx(1.0)
    assert 0.0 <= metrics["headline"]["amodal_iou"] < 1.0


def test_evaluate_rejects_scenes_of_another_size(tiny_model: SceneModel) -> None:
    scenes = generate(SceneSpec.preset("unique", size=32), 2, seed=0)
    with pytest.raises(EconError, match="16×16"):
        evaluate(tiny_model, scenes, progress=False)


# --------------------------------------------------------------------------- oracle


def _oracle(scenes: Scenes, front_first: bool = True) -> Decomposition:
    """A perfect decomposition built from the ground truth (steps front first)."""
    shapes = np.asarray(scenes.shapes)
    visible = scenes.visible()
    classes = np.asarray(scenes.classes)
    order = slice(None, None, -1) if front_first else slice(None)
    images = torch.from_numpy(scenes.images).permute(0, 3, 1, 2).float() / 255.0
    n, layers, height, width = shapes.shape
    colours = torch.from_numpy(np.asarray(scenes.colors)[:, order].copy()).float() / 255.0
    region = torch.from_numpy(visible[:, order].astype(np.float32))
    return Decomposition(
        winner=torch.from_numpy(np.clip(classes[:, order], 0, None).copy()),
        region=region,
        scope=torch.ones_like(region),
        appearance=colours[:, :, :, None, None].expand(n, layers, 3, height, width),
        shape=torch.from_numpy(shapes[:, order].astype(np.float32)),
        latent=torch.zeros(n, layers, 2),
        step_scores=torch.zeros(n, layers, 4),
        reconstruction=images,
    )


@pytest.fixture(scope="module")
def oracle_scenes() -> Scenes:
    """Random colours, 1-3 objects (so padding layers appear)."""
    return generate(SceneSpec.preset("random", size=32, min_objects=1), 24, seed=5)


def test_oracle_decomposition_scores_perfectly(oracle_scenes: Scenes) -> None:
    metrics = decomposition_metrics(_oracle(oracle_scenes), oracle_scenes, n_experts=4)
    segmentation = metrics["segmentation"]
    assert segmentation["fg_ari"]["mean"] == pytest.approx(1.0)
    assert segmentation["ari"]["mean"] == pytest.approx(1.0)
    assert segmentation["miou"]["mean"] == pytest.approx(1.0)
    assert segmentation["msc"]["mean"] == pytest.approx(1.0)
    assert metrics["amodal"]["iou"]["mean"] == pytest.approx(1.0)
    assert metrics["amodal"]["iou_per_object"]["n_objects"] == int(
        (oracle_scenes.classes > 0).sum()
    )
    assert metrics["amodal"]["occluded_iou"]["mean"] == pytest.approx(1.0)
    assert metrics["amodal"]["occluded_object_iou"]["mean"] == pytest.approx(1.0)
    shapes = np.asarray(oracle_scenes.shapes)
    hidden = (shapes & ~oracle_scenes.visible()).any(axis=(2, 3)) & (oracle_scenes.classes > 0)
    assert metrics["amodal"]["occluded_object_iou_per_object"]["n_objects"] == int(hidden.sum())
    assert metrics["amodal"]["unmatched_objects"] == 0
    assert metrics["depth"]["n_pairs"] > 0 and metrics["depth"]["pair_accuracy"] == 1.0
    assert metrics["count"]["accuracy"]["mean"] >= 0.9
    assert metrics["reconstruction"]["mse"]["mean"] == pytest.approx(0.0)
    spec = metrics["specialisation"]
    assert spec["purity"] == 1.0 and spec["hungarian_accuracy"] == 1.0
    assert spec["ami"] == pytest.approx(1.0) and spec["assignment"] == [0, 1, 2, 3]
    assert spec["n_objects"] == int((oracle_scenes.classes >= 0).sum())
    assert np.array_equal(np.diag(spec["contingency"]), np.array(spec["contingency"]).sum(1))


def test_shapes_without_inpainting_fail_only_on_occluded_objects(oracle_scenes: Scenes) -> None:
    """Shapes equal to the visible regions: exact for unoccluded objects, not for occluded ones."""
    oracle = _oracle(oracle_scenes)
    decomposition = dataclasses.replace(oracle, shape=oracle.region.clone())
    amodal = decomposition_metrics(decomposition, oracle_scenes, n_experts=4)["amodal"]
    assert amodal["occluded_iou"]["mean"] == pytest.approx(0.0)
    occluded = amodal["occluded_object_iou_per_object"]
    n_all, n_occluded = amodal["iou_per_object"]["n_objects"], occluded["n_objects"]
    assert 0 < n_occluded < n_all and occluded["mean"] < 1.0
    # Every unoccluded object scores exactly 1.
    assert amodal["iou_per_object"]["mean"] * n_all == pytest.approx(
        occluded["mean"] * n_occluded + (n_all - n_occluded))


def test_reversed_order_breaks_only_depth(oracle_scenes: Scenes) -> None:
    metrics = decomposition_metrics(
        _oracle(oracle_scenes, front_first=False), oracle_scenes, n_experts=4
    )
    assert metrics["segmentation"]["fg_ari"]["mean"] == pytest.approx(1.0)
    assert metrics["amodal"]["iou"]["mean"] == pytest.approx(1.0)
    assert metrics["depth"]["pair_accuracy"] == 0.0


def test_decomposition_must_match_the_scenes(oracle_scenes: Scenes) -> None:
    decomposition = _oracle(oracle_scenes.subset(slice(0, 3)))
    with pytest.raises(EconError, match="does not match"):
        decomposition_metrics(decomposition, oracle_scenes)


def test_classify_layers_background_and_empty(tiny_classifier: ShapeClassifier) -> None:
    appearance = torch.rand(3, 3, SIZE, SIZE)
    shape = torch.zeros(3, SIZE, SIZE)
    shape[0] = 1.0  # covers everything: background
    shape[2, 4:10, 4:10] = 1.0  # an object for the classifier
    labels = classify_layers(tiny_classifier, appearance, shape, min_pixels=4)
    assert labels[0] == 0 and labels[1] == -1 and 0 <= labels[2] <= 3


def test_write_report_is_atomic_and_readable(
    tiny_model: SceneModel, tiny_scenes: Scenes, tmp_path: Path
) -> None:
    metrics = evaluate(tiny_model, tiny_scenes.subset(slice(0, 4)), progress=False)
    json_path, md_path = write_report(metrics, tmp_path / "report")
    assert json.loads(json_path.read_text()) == metrics
    text = md_path.read_text()
    for heading in ("Segmentation", "Amodal", "Depth order", "specialisation", "Generation"):
        assert heading in text
    assert "| expert | background | circle | square | triangle |" in text
    assert metrics["settings"]["refine_steps"] == 0 and "refined" not in text
    assert sorted(p.name for p in json_path.parent.iterdir()) == ["metrics.json", "metrics.md"]
    with pytest.raises(EconError, match="not a directory"):
        write_report(metrics, json_path)


# --------------------------------------------------------------------------- CLI


def _econ(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "econ_scenes", "evaluate", *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={**os.environ, CACHE_ENV: str(cache)},
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model: SceneModel) -> Path:
    path = tmp_path_factory.mktemp("run") / "tiny"
    tiny_model.save(path)
    return path


def test_cli_rejects_data_of_the_wrong_size(
    run_dir: Path, small_scenes_npz: Path, tmp_path: Path
) -> None:
    result = _econ(str(run_dir), "--data", str(small_scenes_npz), "--out", str(tmp_path / "o"),
                   "--no-generation", "--threads", "1", cache=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "16×16" in lines[0]
    assert not (tmp_path / "o").exists()


def test_cli_writes_the_report(
    run_dir: Path,
    tiny_scenes: Scenes,
    tiny_spec: SceneSpec,
    tiny_classifier: ShapeClassifier,
    tmp_path: Path,
) -> None:
    data = tmp_path / "scenes.npz"
    save_scenes(data, tiny_scenes, tiny_spec)
    save_classifier(tiny_classifier, classifier_path(SIZE, tmp_path / "cache"))
    out = tmp_path / "out"
    result = _econ(str(run_dir), "--data", str(data), "--out", str(out), "--n", "8",
                   "--n-steps", "3", "--seed", "1", "--no-progress", "--threads", "1",
                   "--refine", "2", cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_scenes"] == 8 and metrics["n_steps"] == 3
    assert metrics["settings"]["refine_steps"] == 2
    assert "refined** by 2 gradient steps" in (out / "metrics.md").read_text()
    assert metrics["generation"]["classifier_accuracy"] == tiny_classifier.accuracy
    assert metrics["generation"]["classifier_source"] == "cache"
    assert (out / "metrics.md").read_text().startswith("# ECON evaluation")
    for label in ("FG-ARI", "ARI", "mIoU", "amodal IoU, all objects",
                  "amodal IoU, occluded objects", "occluded-pixel IoU", "AMI",
                  "samples → class", "KID"):
        assert label in result.stdout
    fg_ari = metrics["segmentation"]["fg_ari"]
    assert f"FG-ARI: {fg_ari['mean']:.3f}  [{fg_ari['ci_low']:.3f}, {fg_ari['ci_high']:.3f}]" \
        in result.stdout


def test_scenes_with_more_layers_than_steps_get_a_step_per_layer(tiny_model: SceneModel) -> None:
    """Fig 8's scenes (five objects and a background) are decomposed in six steps by default:
    the model's four could find at most four segments."""
    ood = generate(SceneSpec.preset("ood", size=SIZE), 4, seed=0)
    assert ood.n_layers == 6 > tiny_model.config.model.n_steps
    assert evaluate(tiny_model, ood, progress=False)["n_steps"] == 6
    assert evaluate(tiny_model, ood, n_steps=3, progress=False)["n_steps"] == 3
