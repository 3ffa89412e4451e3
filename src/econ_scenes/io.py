"""Atomic file writes: nothing a user made is left half-written by a crash or Ctrl-C."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from econ_scenes.errors import EconError


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it into place.

    The file gets the usual 0o644 permissions (``mkstemp`` creates it private). An OSError
    (unwritable folder, full disk) becomes an :class:`EconError` naming the path.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise EconError(f"cannot write {path}: {error.strerror or error}") from error
    os.close(handle)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as error:
        raise EconError(f"cannot write {path}: {error.strerror or error}") from error
    finally:
        tmp.unlink(missing_ok=True)


def write_report(out: Path, data: object, text: str, indent: int = 2) -> None:
    """A benchmark's result as ``<out>.json`` (``data``) and ``<out>.md`` (``text``), each
    written atomically."""
    out = Path(out)
    atomic_write(out.with_suffix(".json"),
                 lambda tmp: tmp.write_text(json.dumps(data, indent=indent) + "\n"))
    atomic_write(out.with_suffix(".md"), lambda tmp: tmp.write_text(text))
