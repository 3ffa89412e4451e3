"""Scene datasets on disk, readable with numpy alone.

A dataset is either an uncompressed ``.npz`` archive (``np.savez``) or a folder of ``.npy``
files, holding the arrays

=========  ======  ============  ==================================================
name       dtype   shape         meaning
=========  ======  ============  ==================================================
images     uint8   (N, H, W, 3)  composed images
shapes     bool    (N, L, H, W)  amodal shapes back to front, layer 0 all True
classes    int64   (N, L)        0 background, 1 circle, 2 square, 3 triangle, -1 pad
colors     uint8   (N, L, 3)     layer colours, layer 0 the background, padding 0
spec       str     ()            JSON with the generator settings (``spec.json`` in a folder)
=========  ======  ============  ==================================================

Loading memory-maps every array by default, the members of an ``.npz`` archive included (they
are stored uncompressed, so each one is a plain ``.npy`` at some offset in the file).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from econ_scenes.data.generator import (
    ARRAY_DTYPES,
    CLASS_NAMES,
    Scenes,
    SceneSpec,
    check_content,
)
from econ_scenes.errors import EconError
from econ_scenes.io import atomic_write

FORMAT = "econ-scenes/1"
ARRAY_NAMES = tuple(ARRAY_DTYPES)
SPEC_NAME = "spec"
SPEC_FILE = "spec.json"
_ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, …, name length, extra length
_ZIP_LOCAL_SIGNATURE = b"PK\x03\x04"


def save_scenes(
    path: Path | str,
    scenes: Scenes,
    spec: SceneSpec | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write a dataset atomically (temporary file or folder, then ``os.replace``).

    Parameters
    ----------
    path : Path
        ``*.npz`` for an archive, anything else for a folder of ``.npy`` files.
    scenes : Scenes
        The arrays to store.
    spec : SceneSpec, optional
        Generator settings, stored in the JSON ``spec``.
    extra : mapping, optional
        More JSON-serialisable metadata for the ``spec`` record (e.g. the seed).
    """
    path = Path(path)
    metadata = json.dumps(_metadata(scenes, spec, extra), sort_keys=True)
    arrays = {name: getattr(scenes, name) for name in ARRAY_NAMES}
    check_output_path(path)
    try:
        if path.suffix == ".npz":
            _save_npz(path, arrays, metadata)
        else:
            _save_folder(path, arrays, metadata)
    except OSError as error:
        raise EconError(f"cannot write dataset to {path}: {error.strerror or error}") from error


def _metadata(
    scenes: Scenes, spec: SceneSpec | None, extra: Mapping[str, Any] | None
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "format": FORMAT,
        "n": len(scenes),
        "n_layers": scenes.n_layers,
        "spec": None if spec is None else spec.to_dict(),
    }
    record.update(extra or {})
    return record


def check_output_path(path: Path | str) -> None:
    """Raise :class:`EconError` unless :func:`save_scenes` can write ``path``.

    Creates the parent folder; meant to fail fast before a long generation.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise EconError(f"cannot write dataset to {path}: {error.strerror or error}") from error
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise EconError(f"cannot write dataset to {path}: {path.parent} is not writable")
    if path.suffix == ".npz" and path.is_dir():
        raise EconError(f"cannot write dataset to {path}: it is a directory")
    if path.suffix != ".npz" and path.exists() and not _is_replaceable_folder(path):
        raise EconError(
            f"cannot write dataset to {path}: it exists and is not a dataset folder "
            "(use a new path, or *.npz for an archive)"
        )


def _save_npz(path: Path, arrays: dict[str, np.ndarray], metadata: str) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as file:
            np.savez(file, **arrays, **{SPEC_NAME: np.array(metadata)})

    atomic_write(path, write)


def _save_folder(path: Path, arrays: dict[str, np.ndarray], metadata: str) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array)
        (tmp / SPEC_FILE).write_text(metadata)
        tmp.chmod(0o755)  # mkdtemp creates the folder private
        _replace_folder(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _is_replaceable_folder(path: Path) -> bool:
    """An existing folder may be overwritten when it is empty or holds a dataset."""
    return path.is_dir() and (not any(path.iterdir()) or (path / "images.npy").is_file())


def _replace_folder(new: Path, path: Path) -> None:
    """Move ``new`` to ``path``, replacing an old folder there (``os.replace`` of each)."""
    if not path.exists():
        os.replace(new, path)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    os.replace(path, old / "data")
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)


def load_scenes(path: Path | str, mmap: bool = True, verify: bool = False) -> Scenes:
    """Load a dataset written by :func:`save_scenes` (or any files in the same format).

    Parameters
    ----------
    path : Path
        An ``.npz`` archive or a folder of ``.npy`` files.
    mmap : bool
        Memory-map the arrays read-only instead of reading them into memory.
    verify : bool
        Also check the content (layer 0 background, padding, images = composition); this
        reads every array.

    Raises
    ------
    EconError
        When the path is missing or the file is not a dataset: missing arrays, wrong dtypes,
        inconsistent shapes (and, with ``verify``, inconsistent content).
    """
    path = Path(path)
    if not path.exists():
        raise EconError(f"dataset not found: {path}")
    arrays = _read_folder(path, mmap) if path.is_dir() else _read_npz(path, mmap)
    try:
        scenes = Scenes(**arrays)
        _check_classes(np.asarray(scenes.classes))
        if verify:
            check_content(scenes)
    except EconError as error:
        raise EconError(f"malformed dataset {path}: {error}") from error
    return scenes


def _check_classes(classes: np.ndarray) -> None:
    """Class ids (small, so always read): 0 for layer 0, then 1..3 or -1 for padding."""
    if classes.size and np.any(classes[:, 0] != 0):
        raise EconError("classes of layer 0 (the background) must be 0")
    objects = classes[:, 1:]
    if np.any((objects != -1) & ((objects < 1) | (objects > len(CLASS_NAMES) - 1))):
        raise EconError("classes of object layers must be 1..3, or -1 for padding")


def load_metadata(path: Path | str) -> dict[str, Any]:
    """The JSON record stored with a dataset (``{}`` when there is none)."""
    path = Path(path)
    if path.is_dir():
        spec_file = path / SPEC_FILE
        text = spec_file.read_text() if spec_file.is_file() else None
    else:
        text = _read_npz_spec(path)
    if text is None:
        return {}
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise EconError(f"malformed dataset {path}: spec is not valid JSON ({error})") from error
    if not isinstance(record, dict):
        raise EconError(f"malformed dataset {path}: spec must be a JSON object")
    return record


def _read_folder(path: Path, mmap: bool) -> dict[str, np.ndarray]:
    arrays = {}
    for name in ARRAY_NAMES:
        file = path / f"{name}.npy"
        if not file.is_file():
            raise EconError(f"malformed dataset {path}: missing {file.name}")
        try:
            arrays[name] = np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            raise EconError(
                f"malformed dataset {path}: cannot read {file.name} ({error})"
            ) from error
    return arrays


def _read_npz(path: Path, mmap: bool) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(path):
        raise EconError(f"malformed dataset {path}: not an .npz archive or a dataset folder")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {Path(info.filename).stem: info for info in archive.infolist()}
            missing = [name for name in ARRAY_NAMES if name not in members]
            if missing:
                raise EconError(f"malformed dataset {path}: missing array(s) {', '.join(missing)}")
            return {name: _read_member(path, archive, members[name], mmap) for name in ARRAY_NAMES}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise EconError(f"malformed dataset {path}: {error}") from error


def _read_member(
    path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, mmap: bool
) -> np.ndarray:
    """One array of an archive: memory-mapped when stored uncompressed, else read."""
    if mmap and info.compress_type == zipfile.ZIP_STORED:
        mapped = _memmap_member(path, info)
        if mapped is not None:
            return mapped
    with archive.open(info) as file:
        return np.lib.format.read_array(file, allow_pickle=False)


def _memmap_member(path: Path, info: zipfile.ZipInfo) -> np.ndarray | None:
    """Memory-map an uncompressed ``.npy`` member; ``None`` when that is not possible."""
    with open(path, "rb") as file:
        file.seek(info.header_offset)
        signature, name_length, extra_length = _ZIP_LOCAL_HEADER.unpack(
            file.read(_ZIP_LOCAL_HEADER.size)
        )
        if signature != _ZIP_LOCAL_SIGNATURE:
            raise EconError(f"malformed dataset {path}: broken archive entry {info.filename}")
        file.seek(name_length + extra_length, os.SEEK_CUR)
        version = np.lib.format.read_magic(file)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(file)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(file)
        else:
            return None
        offset = file.tell()
    if dtype.hasobject or 0 in shape:
        return None
    order = "F" if fortran else "C"
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)


def _read_npz_spec(path: Path) -> str | None:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if SPEC_NAME not in archive.files:
                return None
            return str(archive[SPEC_NAME][()])
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise EconError(f"malformed dataset {path}: {error}") from error
