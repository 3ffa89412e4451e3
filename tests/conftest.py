"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from econ_scenes.data import Scenes, SceneSpec, generate, save_scenes

if TYPE_CHECKING:
    from econ_scenes.config import ModelConfig

# --- scene data fixtures (econ_scenes.data) --------------------------------------------------


@pytest.fixture(scope="session")
def small_scene_spec() -> SceneSpec:
    """The paper's uniquely coloured scenes at the quick-run size 32×32."""
    return SceneSpec.preset("unique", size=32)


@pytest.fixture(scope="session")
def small_scenes(small_scene_spec: SceneSpec) -> Scenes:
    """64 uniquely coloured 32×32 scenes (seed 0); treat as read-only."""
    return generate(small_scene_spec, 64, seed=0)


@pytest.fixture(scope="session")
def small_scenes_npz(
    tmp_path_factory: pytest.TempPathFactory, small_scenes: Scenes, small_scene_spec: SceneSpec
) -> Path:
    """``small_scenes`` saved as an ``.npz`` dataset."""
    path = tmp_path_factory.mktemp("scenes") / "small.npz"
    save_scenes(path, small_scenes, small_scene_spec, extra={"seed": 0})
    return path


# --- tiny ECON fixtures (model and training tests) --------------------------------------------


@pytest.fixture
def torch_one_thread() -> Iterator[None]:
    """Run a test on one intra-op thread: tiny models are slower on two threads, and much slower
    when another process is using the other core (OpenMP threads then wait on each other)."""
    from econ_scenes.threads import one_thread

    with one_thread():
        yield


@pytest.fixture(scope="session")
def tiny_scene_spec() -> SceneSpec:
    """16×16 uniquely coloured scenes with two objects (three layers, so T=3 fits --gt-masks)."""
    return SceneSpec.preset("unique", size=16, n_objects=2, min_size=0.3, max_size=0.6)


@pytest.fixture(scope="session")
def tiny_scenes(tiny_scene_spec: SceneSpec) -> Scenes:
    """48 tiny scenes (seed 1); treat as read-only."""
    return generate(tiny_scene_spec, 48, seed=1)


@pytest.fixture(scope="session")
def tiny_scenes_npz(
    tmp_path_factory: pytest.TempPathFactory, tiny_scenes: Scenes, tiny_scene_spec: SceneSpec
) -> Path:
    """``tiny_scenes`` saved as an ``.npz`` dataset."""
    path = tmp_path_factory.mktemp("tiny_scenes") / "tiny.npz"
    save_scenes(path, tiny_scenes, tiny_scene_spec, extra={"seed": 1})
    return path


@pytest.fixture(scope="session")
def tiny_model_config() -> ModelConfig:
    """An ECON small enough for CPU tests: 16×16 images, K=3 experts, T=3 steps."""
    from econ_scenes.config import ModelConfig

    return ModelConfig(
        image_size=16, n_experts=3, n_steps=3, latent_dim=2, vae_layers=2, vae_features=8,
        unet_channels=(4, 8, 8), unet_mlp_hidden=16,
    )
