"""Tests of the shape classifier used to evaluate generation (econ_scenes.evaluate.classifier)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from econ_scenes.errors import EconError
from econ_scenes.evaluate import classifier as classifier_module
from econ_scenes.evaluate.classifier import (
    CACHE_ENV,
    FEATURE_DIM,
    ShapeClassifier,
    classifier_accuracy,
    classifier_path,
    load_or_train_classifier,
    render_shape_dataset,
    save_classifier,
    shipped_classifier_path,
    train_classifier,
)

TINY = {"n_train": 200, "epochs": 1, "n_test": 100}
"""A training budget for tests that do not care about accuracy."""


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's cache."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env-cache"))


def test_renders_are_balanced_single_objects_on_black() -> None:
    images, labels = render_shape_dataset(32, 200, seed=3)
    assert images.shape == (200, 3, 32, 32) and images.dtype == torch.float32
    assert np.bincount(labels.numpy(), minlength=4).tolist() == [50, 50, 50, 50]
    covered = (images.amax(dim=1) > 0).float().mean(dim=(1, 2))
    assert torch.all(covered[labels == 0] == 1.0)  # plain background images
    objects = covered[labels > 0]
    assert objects.min() > 0.02 and objects.max() < 0.45  # one object on black
    assert images.min() >= 0 and images.max() <= 1
    again, _ = render_shape_dataset(32, 200, seed=3)
    assert torch.equal(images, again)


def test_small_budget_reaches_high_held_out_accuracy() -> None:
    model = train_classifier(32, n_train=400, epochs=5, batch_size=16, n_test=400, seed=0)
    assert model.accuracy is not None and model.accuracy > 0.9
    assert classifier_accuracy(model, n=400, seed=12345) > 0.9
    assert model.info["train_seconds"] > 0


def test_cache_round_trip_loads_without_retraining(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = load_or_train_classifier(16, cache_dir=cache, **TINY)
    path = classifier_path(16, cache)
    assert path.is_file() and path.name == "classifier-16-v1.safetensors"

    def fail(*args: object, **kwargs: object) -> ShapeClassifier:
        raise AssertionError("the cached classifier should have been loaded")

    monkeypatch.setattr(classifier_module, "train_classifier", fail)
    second = load_or_train_classifier(16, cache_dir=cache)
    images, _ = render_shape_dataset(16, 40, seed=9)
    np.testing.assert_array_equal(first.predict(images), second.predict(images))
    np.testing.assert_array_equal(first.features(images), second.features(images))
    assert second.accuracy == first.accuracy
    assert not list(cache.glob("*.tmp"))


@pytest.mark.parametrize("size", [32, 64])
def test_the_shipped_classifiers_are_used_without_training(
    size: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object, **kwargs: object) -> ShapeClassifier:
        raise AssertionError("the shipped classifier should have been loaded")

    monkeypatch.setattr(classifier_module, "train_classifier", fail)
    model = load_or_train_classifier(size, cache_dir=tmp_path / "empty")
    assert model.size == size and model.info["version"] == 1 and model.info["source"] == "shipped"
    assert shipped_classifier_path(size).is_file() and not (tmp_path / "empty").exists()
    assert classifier_accuracy(model, n=300, seed=4242) > 0.97  # held-out renders


def test_an_unreadable_shipped_classifier_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "shipped.safetensors"
    broken.write_bytes(b"damaged")
    monkeypatch.setattr(classifier_module, "shipped_classifier_path", lambda size: broken)
    cache = tmp_path / "cache"
    save_classifier(train_classifier(16, **TINY), classifier_path(16, cache))
    model = load_or_train_classifier(16, cache_dir=cache)
    assert model.info["source"] == "cache"


def test_cache_directory_comes_from_the_environment(tmp_path: Path) -> None:
    assert classifier_path(32) == tmp_path / "env-cache" / "classifier-32-v1.safetensors"
    assert classifier_path(32, tmp_path / "x").parent == tmp_path / "x"


def test_unreadable_cache_file_is_retrained(tmp_path: Path) -> None:
    path = classifier_path(16, tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a safetensors file")
    model = load_or_train_classifier(16, cache_dir=tmp_path, **TINY)
    assert model.size == 16 and path.stat().st_size > 1000


def test_outputs_and_input_checks() -> None:
    torch.manual_seed(0)
    model = ShapeClassifier(64)  # 64×64 is accepted (pooled to 32×32 inside)
    images = torch.rand(5, 3, 64, 64)
    labels = model.predict(images)
    assert labels.shape == (5,) and labels.dtype == np.int64 and labels.max() < 4
    assert model.features(images.numpy()).shape == (5, FEATURE_DIM)
    np.testing.assert_allclose(model.predict_proba(images).sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(EconError, match="64×64"):
        model.predict(torch.rand(2, 3, 32, 32))
    with pytest.raises(EconError, match="float"):
        model.predict(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(EconError, match=r"\(N, 3, H, W\)"):
        model.features(torch.rand(3, 64, 64))
