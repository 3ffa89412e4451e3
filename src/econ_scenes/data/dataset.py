"""A torch ``Dataset`` over stored or in-memory scenes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from econ_scenes.data.generator import Scenes, visible_regions
from econ_scenes.data.storage import load_scenes


class SceneDataset(Dataset):
    """Scenes as tensors, one dict per scene.

    Parameters
    ----------
    source : Scenes or path
        In-memory scenes, or the path of a dataset (``.npz`` or folder), memory-mapped.

    Notes
    -----
    ``dataset[i]`` is a dict of

    - ``image``: float32 (3, H, W) in [0, 1]
    - ``shapes``: float32 (L, H, W) amodal shapes, back to front
    - ``visible``: float32 (L, H, W) visible regions (disjoint, covering the image)
    - ``classes``: int64 (L,), -1 for padding layers
    - ``colors``: float32 (L, 3) in [0, 1]

    A dataset built from a path re-opens the file in each DataLoader worker instead of
    pickling the arrays.
    """

    def __init__(self, source: Scenes | Path | str) -> None:
        self._path: Path | None = None if isinstance(source, Scenes) else Path(source)
        self._scenes: Scenes | None = source if isinstance(source, Scenes) else None
        self._length = len(self.scenes)

    @property
    def scenes(self) -> Scenes:
        """The underlying arrays (loaded lazily after unpickling)."""
        if self._scenes is None:
            assert self._path is not None
            self._scenes = load_scenes(self._path, mmap=True)
        return self._scenes

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index)
        if not -self._length <= index < self._length:
            raise IndexError(f"scene index {index} out of range for {self._length} scenes")
        scenes = self.scenes
        shapes = np.asarray(scenes.shapes[index])
        image = np.asarray(scenes.images[index]).transpose(2, 0, 1)
        return {
            "image": torch.from_numpy(image.astype(np.float32) / 255.0),
            "shapes": torch.from_numpy(shapes.astype(np.float32)),
            "visible": torch.from_numpy(visible_regions(shapes).astype(np.float32)),
            "classes": torch.from_numpy(np.array(scenes.classes[index], dtype=np.int64)),
            "colors": torch.from_numpy(np.asarray(scenes.colors[index], np.float32) / 255.0),
        }

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self._path is not None:
            state["_scenes"] = None
        return state
