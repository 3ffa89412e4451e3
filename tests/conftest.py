"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from econ_scenes.data import Scenes, SceneSpec, generate, save_scenes

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
