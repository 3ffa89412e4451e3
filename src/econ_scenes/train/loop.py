"""The training loop of Appendix C.3.

Adam (lr 5e-4), batch 32, validation loss every 100 iterations, learning rate divided by √10
after 5 evaluations without improvement, stop after 5 such decreases; plus iteration and
wall-time budgets. Batches are drawn from a generator seeded by (seed, iteration) and the random
state of the competition is checkpointed, so a resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from econ_scenes.config import RunConfig, override
from econ_scenes.data import Scenes, load_scenes
from econ_scenes.errors import EconError
from econ_scenes.model import ECON
from econ_scenes.train.checkpoint import (
    CONFIG,
    RUN_INFO,
    load_checkpoint,
    save_checkpoint,
    save_json,
    save_model,
    save_snapshot,
)
from econ_scenes.train.logging import log_images, win_rates


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    iterations: int
    best_val_loss: float
    stop_reason: str
    minutes: float


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EconError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision where it helps: bf16 on GPUs by default; fp32 on CPUs without bf16 units."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def images_to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W, 3) → float (B, 3, H, W) in [0, 1]."""
    pixels = torch.from_numpy(np.array(images, dtype=np.uint8, copy=True)).to(device)
    return pixels.permute(0, 3, 1, 2).float() / 255


def gt_regions_front_first(scenes: Scenes, n_steps: int) -> np.ndarray:
    """Visible regions (B, T, H, W), front first, from back-to-front ground truth."""
    if scenes.shapes.shape[1] != n_steps:
        raise EconError(
            f"--gt-masks needs T equal to the number of layers ({scenes.shapes.shape[1]}), "
            f"got T={n_steps}"
        )
    return scenes.visible()[:, ::-1].astype(np.float32)


class TrainingData:
    """Train and validation scenes with deterministic batches."""

    def __init__(self, train: Scenes, val: Scenes, config: RunConfig, device: torch.device):
        self.train, self.val, self.config, self.device = train, val, config, device

    @classmethod
    def open(cls, data: Path, val: Path | None, config: RunConfig,
             device: torch.device) -> TrainingData:
        scenes = load_scenes(data)
        if val is not None:
            return cls(scenes, load_scenes(val), config, device)
        n_val = config.train.n_val
        if len(scenes) <= n_val:
            raise EconError(
                f"{data} holds {len(scenes)} scenes: need more than n_val={n_val} to hold out a "
                "validation split (or pass --val)"
            )
        return cls(scenes.subset(slice(0, len(scenes) - n_val)),
                   scenes.subset(slice(len(scenes) - n_val, len(scenes))), config, device)

    def batch(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        rng = np.random.default_rng([self.config.train.seed, iteration])
        index = np.sort(rng.integers(0, len(self.train), self.config.train.batch_size))
        return self._tensors(self.train.subset(index))

    def validation_batches(self, size: int = 50) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        return [self._tensors(self.val.subset(slice(i, i + size)))
                for i in range(0, len(self.val), size)]

    def _tensors(self, scenes: Scenes) -> tuple[torch.Tensor, torch.Tensor | None]:
        images = images_to_tensor(scenes.images, self.device)
        if not self.config.train.gt_masks:
            return images, None
        regions = gt_regions_front_first(scenes, self.config.model.n_steps)
        return images, torch.from_numpy(regions.copy()).to(self.device)


@dataclass
class Plateau:
    """Validation-loss schedule of Appendix C.3."""

    lr: float
    best: float = math.inf
    bad: int = 0
    decreases: int = 0

    def update(self, val_loss: float, patience: int, factor: float) -> None:
        if val_loss < self.best:
            self.best, self.bad = val_loss, 0
            return
        self.bad += 1
        if self.bad >= patience:
            self.lr /= factor
            self.decreases += 1
            self.bad = 0


def validation_loss(model: ECON, data: TrainingData, precision: str) -> float:
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), autocast(data.device, precision):
        for images, gt in data.validation_batches():
            total += model.infer(images, stochastic=False, gt_regions=gt).loss.item() * len(images)
            count += len(images)
    model.train()
    return total / count


def prepare_run(run_dir: Path, config: RunConfig, data: Path, val: Path | None) -> RunConfig:
    """Create a new run directory; the data decides the image size."""
    if (run_dir / CONFIG).exists():
        raise EconError(f"{run_dir} already holds a run: resume it with --resume or pick a new --out")
    scenes = load_scenes(data)
    height, width = scenes.images.shape[1:3]
    if height != width:
        raise EconError(f"{data} holds {height}×{width} images; ECON needs square images")
    size = int(height)
    if size != config.model.image_size:
        config = override(config, {"model.image_size": size})
    config.validate()
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / CONFIG)
    save_json(run_dir / RUN_INFO, {"data": str(Path(data).resolve()),
                                   "val": None if val is None else str(Path(val).resolve())})
    return config


def train(
    run_dir: Path,
    *,
    config: RunConfig | None = None,
    data: Path | None = None,
    val: Path | None = None,
    resume: bool = False,
    budget: dict[str, Any] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a new run (config and data given) or resume one (``resume=True``).

    budget: overrides of ``max_iterations`` / ``max_minutes`` (e.g. to extend a resumed run).
    """
    run_dir = Path(run_dir)
    if resume:
        config = RunConfig.load(run_dir / CONFIG)
        info = _read_run_info(run_dir)
        data = Path(info["data"])
        val = None if info.get("val") is None else Path(info["val"])
    else:
        if config is None or data is None:
            raise EconError("a new run needs a config and --data")
        config = prepare_run(run_dir, config, data, val)
    if budget:
        config = override(config, {f"train.{k}": v for k, v in budget.items() if v is not None})
        config.save(run_dir / CONFIG)
    assert data is not None
    device = resolve_device(config.train.device)
    torch.manual_seed(config.train.seed)
    model = ECON(config.model).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    schedule = Plateau(lr=config.train.lr)
    iteration, elapsed = 0, 0.0
    if resume:
        iteration, elapsed = _restore(run_dir, model, optimiser, schedule)
    elif config.train.init_from:
        _initialise(model, Path(config.train.init_from))
    model.freeze_experts(config.train.frozen_experts)
    training_data = TrainingData.open(data, val, config, device)
    return _loop(run_dir, config, model, optimiser, schedule, training_data, iteration, elapsed,
                 progress)


def _initialise(model: ECON, source: Path) -> None:
    from econ_scenes.train.checkpoint import load_model

    initial, _ = load_model(source)
    try:
        model.load_state_dict(initial.state_dict())
    except RuntimeError as error:
        raise EconError(f"--init {source}: its experts do not fit this config: {error}") from error


def _read_run_info(run_dir: Path) -> dict[str, Any]:
    import json

    path = run_dir / RUN_INFO
    if not path.is_file():
        raise EconError(f"{run_dir} is not a run directory (no {RUN_INFO})")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise EconError(f"corrupt {path}: {error}") from error
    if not isinstance(info, dict) or "data" not in info:
        raise EconError(f"corrupt {path}: no 'data' entry")
    return info


def _restore(run_dir: Path, model: ECON, optimiser: torch.optim.Optimizer,
             schedule: Plateau) -> tuple[int, float]:
    state = load_checkpoint(run_dir)
    try:
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
    except (KeyError, RuntimeError, ValueError) as error:
        raise EconError(f"checkpoint in {run_dir} does not match its config: {error}") from error
    for key, value in state["schedule"].items():
        setattr(schedule, key, value)
    torch.set_rng_state(state["rng"]["torch"])
    if torch.cuda.is_available() and state["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["iteration"]), float(state.get("minutes", 0.0))


def _checkpoint(run_dir: Path, model: ECON, optimiser: torch.optim.Optimizer, schedule: Plateau,
                iteration: int, minutes: float) -> None:
    save_checkpoint(run_dir, {
        "model": model.state_dict(),
        "optimiser": optimiser.state_dict(),
        "schedule": dataclasses.asdict(schedule),
        "iteration": iteration,
        "minutes": minutes,
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
    })


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (a scheduler's or `kill`'s stop) like Ctrl-C: checkpoint, then stop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _loop(
    run_dir: Path, config: RunConfig, model: ECON, optimiser: torch.optim.Optimizer,
    schedule: Plateau, data: TrainingData, iteration: int, minutes: float, progress: bool,
) -> TrainResult:
    tc = config.train
    writer = SummaryWriter(str(run_dir / "tb"), purge_step=iteration or None)
    start = time.monotonic() - minutes * 60
    bar = tqdm(total=tc.max_iterations, initial=iteration, disable=not progress,
               desc="train", unit="it", dynamic_ncols=True)
    model.train()
    with _terminate_as_interrupt():
        return _iterate(run_dir, config, model, optimiser, schedule, data, iteration, minutes,
                        writer, bar, start)


def _iterate(
    run_dir: Path, config: RunConfig, model: ECON, optimiser: torch.optim.Optimizer,
    schedule: Plateau, data: TrainingData, iteration: int, minutes: float,
    writer: SummaryWriter, bar: tqdm, start: float,
) -> TrainResult:
    tc = config.train
    stop_reason = ""
    try:
        while not stop_reason:
            if iteration >= tc.max_iterations:
                stop_reason = "max_iterations"
                break
            for group in optimiser.param_groups:
                group["lr"] = schedule.lr
            images, gt = data.batch(iteration)
            with autocast(data.device, tc.precision):
                out = model.infer(images, stochastic=True, gt_regions=gt,
                                  temperature=config.model.temperature(iteration))
            if not torch.isfinite(out.loss):
                raise EconError(f"loss became {out.loss.item()} at iteration {iteration}: the "
                                "run diverged (try a lower --lr)")
            optimiser.zero_grad(set_to_none=True)
            out.loss.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimiser.step()
            iteration += 1
            minutes = (time.monotonic() - start) / 60
            bar.update(1)
            bar.set_postfix(loss=f"{out.loss.item():.1f}", lr=f"{schedule.lr:.1e}")
            if iteration % 10 == 0:
                _log_train(writer, out, iteration, schedule.lr, config)
            if iteration % tc.eval_every == 0:
                val_loss = validation_loss(model, data, tc.precision)
                schedule.update(val_loss, tc.patience, tc.lr_decay)
                writer.add_scalar("val/loss", val_loss, iteration)
                writer.add_scalar("val/minutes", minutes, iteration)
                bar.write(f"iteration {iteration}: validation loss {val_loss:.2f} "
                          f"(best {schedule.best:.2f}, lr {schedule.lr:.1e})")
                if schedule.decreases >= tc.max_lr_decreases:
                    stop_reason = "converged (learning rate decreased "
                    stop_reason += f"{schedule.decreases} times)"
            if tc.image_every and iteration % tc.image_every == 0:
                log_images(writer, model, data.validation_batches()[0][0][:8], iteration)
            if tc.max_minutes and minutes >= tc.max_minutes:
                stop_reason = "max_minutes"
            if tc.snapshot_every and iteration % tc.snapshot_every == 0:
                save_snapshot(run_dir, model, iteration, minutes)
            if iteration % tc.checkpoint_every == 0 or stop_reason:
                _checkpoint(run_dir, model, optimiser, schedule, iteration, minutes)
    except KeyboardInterrupt:
        _checkpoint(run_dir, model, optimiser, schedule, iteration, minutes)
        bar.close()
        writer.close()
        raise EconError(f"interrupted at iteration {iteration}; checkpoint saved, continue with "
                        f"`econ train --resume {run_dir}`") from None
    bar.close()
    _checkpoint(run_dir, model, optimiser, schedule, iteration, minutes)
    save_model(run_dir, model, config)
    writer.close()
    return TrainResult(run_dir, iteration, schedule.best, stop_reason, minutes)


def _log_train(writer: SummaryWriter, out: Any, iteration: int, lr: float,
               config: RunConfig) -> None:
    writer.add_scalar("train/loss", out.loss.item(), iteration)
    for name, value in out.terms.items():
        writer.add_scalar(f"train/{name}", float(value), iteration)
    writer.add_scalar("train/lr", lr, iteration)
    writer.add_scalar("train/temperature", config.model.temperature(iteration), iteration)
    rates = win_rates(out.decomposition.winner, config.model.n_experts)
    for t, row in enumerate(rates):
        for k, rate in enumerate(row):
            writer.add_scalar(f"win_rate/step{t + 1}/expert{k}", float(rate), iteration)
