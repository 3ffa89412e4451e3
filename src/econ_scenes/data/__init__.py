"""Scene data: the dead-leaves generator, the on-disk format and a torch ``Dataset``.

``SceneDataset`` is imported lazily so that generating or inspecting data does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from econ_scenes.data.generator import (
    CLASS_NAMES,
    COLOUR_MODES,
    PAPER_SPLITS,
    PRESETS,
    Scenes,
    SceneSpec,
    check_content,
    compose_layers,
    generate,
    top_layer,
    visible_regions,
)
from econ_scenes.data.storage import load_metadata, load_scenes, save_scenes

if TYPE_CHECKING:
    from econ_scenes.data.dataset import SceneDataset

__all__ = [
    "CLASS_NAMES",
    "COLOUR_MODES",
    "PAPER_SPLITS",
    "PRESETS",
    "SceneDataset",
    "SceneSpec",
    "Scenes",
    "check_content",
    "compose_layers",
    "generate",
    "load_metadata",
    "load_scenes",
    "save_scenes",
    "top_layer",
    "visible_regions",
]


def __getattr__(name: str) -> Any:
    if name == "SceneDataset":
        from econ_scenes.data.dataset import SceneDataset

        return SceneDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
