"""Run directories, atomic checkpoints and model files.

A run directory holds ``config.json`` (the resolved :class:`RunConfig`), ``run.json`` (data
paths), ``checkpoint.pt`` (everything needed to resume exactly: weights, optimiser, schedule,
iteration, random states) and ``model.safetensors`` (the weights alone, safe to share).
Every file is written to a temporary name first and moved into place with ``os.replace``, so an
interrupted write never leaves a broken file behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from econ_scenes.config import RunConfig
from econ_scenes.errors import EconError
from econ_scenes.io import atomic_write
from econ_scenes.model import ECON

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
RUN_INFO = "run.json"
FORMAT_VERSION = 1


def save_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    state = {**state, "format_version": FORMAT_VERSION}
    atomic_write(run_dir / CHECKPOINT, lambda tmp: torch.save(state, tmp))


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise EconError(f"no checkpoint to resume in {run_dir} (expected {CHECKPOINT})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a damaged file
        raise EconError(f"corrupt checkpoint {path}: {type(error).__name__}: {error}") from error
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise EconError(f"{path} is not an econ-scenes checkpoint (format {FORMAT_VERSION})")
    return state


def save_model(run_dir: Path, model: ECON, config: RunConfig) -> None:
    """Write ``config.json`` and ``model.safetensors``: all that :func:`load_model` needs."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / CONFIG, config.save)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(run_dir / WEIGHTS, lambda tmp: save_file(weights, str(tmp)))


def snapshot_path(run_dir: Path, iteration: int) -> Path:
    """Where a run keeps its weights at one iteration: ``snapshots/iter_000100.safetensors``."""
    return run_dir / "snapshots" / f"iter_{iteration:06d}.safetensors"


def save_snapshot(run_dir: Path, model: ECON, iteration: int, minutes: float) -> None:
    """Weights at one iteration, for learning curves (:func:`snapshot_path`)."""
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = snapshot_path(run_dir, iteration)
    meta = {"iteration": str(iteration), "minutes": f"{minutes:.4f}"}
    atomic_write(path, lambda tmp: save_file(weights, str(tmp), metadata=meta))


def load_model(run_dir: Path | str, device: str | torch.device = "cpu") -> tuple[ECON, RunConfig]:
    """Rebuild a trained model from a run directory (or a shipped ``pretrained/<name>``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EconError(f"no run directory at {run_dir}")
    config = RunConfig.load(run_dir / CONFIG)
    model = ECON(config.model)
    weights_path = run_dir / WEIGHTS
    if weights_path.is_file():
        try:
            weights = load_file(str(weights_path))
        except (SafetensorError, OSError) as error:
            raise EconError(f"corrupt weights file {weights_path}: {error}") from error
    elif (run_dir / CHECKPOINT).is_file():
        weights = load_checkpoint(run_dir)["model"]
    else:
        raise EconError(f"{run_dir} has neither {WEIGHTS} nor {CHECKPOINT}")
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise EconError(f"weights in {run_dir} do not match its config.json: {error}") from error
    return model.to(device).eval(), config
