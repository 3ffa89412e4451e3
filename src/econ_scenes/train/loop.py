"""The training loop of Appendix C.3.

Adam (lr 5e-4), batch 32, validation loss every 100 iterations, learning rate divided by √10
after 5 evaluations without improvement, stop after 5 such decreases; plus iteration and
wall-time budgets. Batches are drawn from a generator seeded by (seed, iteration) and the random
state of the competition is checkpointed, so a resumed run continues exactly. Under ``torchrun``
the same loop trains data-parallel (:mod:`econ_scenes.train.distributed`).
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

from econ_scenes.config import EXPERT_PARTS, RunConfig, override
from econ_scenes.data import Scenes, load_scenes
from econ_scenes.errors import EconError
from econ_scenes.model import ECON
from econ_scenes.model.competition import usage_handicap
from econ_scenes.train.checkpoint import (
    CONFIG,
    RUN_INFO,
    load_checkpoint,
    save_checkpoint,
    save_json,
    save_model,
    save_snapshot,
)
from econ_scenes.train.distributed import Cluster, wrap
from econ_scenes.train.logging import log_images, win_rates


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    iterations: int
    best_val_loss: float
    stop_reason: str
    minutes: float


def resolve_device(name: str) -> torch.device:
    """auto | cpu | cuda[:i] → a device (auto: this process's GPU when there is one)."""
    return Cluster.from_env().device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively: CUDA GPUs, and CPUs with AMX or AVX512-BF16
    units (there bf16 convolutions are 3× faster than fp32; on AVX2-only CPUs 10× slower)."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_precision(device: torch.device, precision: str) -> str:
    """auto → bf16 where :func:`native_bf16`, else fp32; other values as they are."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision where it helps (``auto``: bf16 where the device has bf16 units)."""
    precision = resolve_precision(device, precision)
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
    return scenes.regions_front_first()


class TrainingData:
    """Train and validation scenes with deterministic batches (this process's share of them)."""

    def __init__(self, train: Scenes, val: Scenes, config: RunConfig, device: torch.device,
                 cluster: Cluster | None = None):
        self.train, self.val, self.config, self.device = train, val, config, device
        self.cluster = cluster or Cluster()
        self.rows = self.cluster.rows(config.train.batch_size)

    @classmethod
    def open(cls, data: Path, val: Path | None, config: RunConfig,
             device: torch.device, cluster: Cluster | None = None) -> TrainingData:
        scenes = load_scenes(data)
        if val is not None:
            return cls(scenes, load_scenes(val), config, device, cluster)
        n_val = config.train.n_val
        if len(scenes) <= n_val:
            raise EconError(
                f"{data} holds {len(scenes)} scenes: need more than n_val={n_val} to hold out a "
                "validation split (or pass --val)"
            )
        return cls(scenes.subset(slice(0, len(scenes) - n_val)),
                   scenes.subset(slice(len(scenes) - n_val, len(scenes))), config, device,
                   cluster)

    def batch(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This process's rows of the global batch of an iteration."""
        rng = np.random.default_rng([self.config.train.seed, iteration])
        index = np.sort(rng.integers(0, len(self.train), self.config.train.batch_size))
        return self._tensors(self.train.subset(index[self.rows]))

    def validation_batches(self, size: int = 50,
                           shared: bool = False) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Validation scenes in batches; ``shared``: only this process's share of the batches."""
        starts = list(range(0, len(self.val), size))
        if shared:
            starts = starts[self.cluster.rank :: self.cluster.world_size]
        return [self._tensors(self.val.subset(slice(i, i + size))) for i in starts]

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
    """Mean loss per validation scene (deterministic inference), over all processes."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), autocast(data.device, precision):
        for images, gt in data.validation_batches(shared=True):
            total += model.infer(images, stochastic=False, gt_regions=gt,
                                 search=False).loss.item() * len(images)
            count += len(images)
    model.train()
    total, count = data.cluster.sum([total, count], data.device)
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
    Under ``torchrun`` every process calls this; rank 0 creates and writes the run directory.
    """
    run_dir = Path(run_dir)
    cluster = Cluster.from_env()
    if resume:
        config = RunConfig.load(run_dir / CONFIG)
        info = read_run_info(run_dir)
        data = Path(info["data"])
        val = None if info.get("val") is None else Path(info["val"])
    elif config is None or data is None:
        raise EconError("a new run needs a config and --data")
    device = cluster.device(config.train.device)
    cluster.start(device)
    try:
        config = _open_run(run_dir, config, data, val, resume, budget, cluster)
        return _train(run_dir, config, data, val, resume, cluster, device, progress)
    finally:
        cluster.stop()


def _open_run(run_dir: Path, config: RunConfig, data: Path, val: Path | None, resume: bool,
              budget: dict[str, Any] | None, cluster: Cluster) -> RunConfig:
    """Rank 0 writes the run's config (new run, or a resumed one with a new budget); the
    other processes read it once it is there."""
    if cluster.is_main:
        if not resume:
            config = prepare_run(run_dir, config, data, val)
        if budget:
            config = override(config, {f"train.{k}": v for k, v in budget.items() if v is not None})
            config.save(run_dir / CONFIG)
    cluster.barrier()
    return RunConfig.load(run_dir / CONFIG) if cluster.distributed else config


def _train(run_dir: Path, config: RunConfig, data: Path, val: Path | None, resume: bool,
           cluster: Cluster, device: torch.device, progress: bool) -> TrainResult:
    torch.manual_seed(config.train.seed)
    model = ECON(config.model).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    schedule = Plateau(lr=config.train.lr)
    iteration, elapsed = 0, 0.0
    handicap = torch.zeros(config.model.n_experts, dtype=torch.float64)
    precision = resolve_precision(device, config.train.precision)
    trained_in = precision
    if resume:
        iteration, elapsed, handicap, trained_in = _restore(run_dir, model, optimiser, schedule)
    elif config.train.init_from:
        _initialise(model, Path(config.train.init_from), config.train.init_parts)
    model.freeze_experts(config.train.frozen_experts)
    session = _Session(
        run_dir=run_dir, config=config, model=model, objective=wrap(model, cluster, device),
        optimiser=optimiser, schedule=schedule, handicap=handicap.to(device),
        data=TrainingData.open(data, val, config, device, cluster), cluster=cluster,
        precision=precision,
        writer=(SummaryWriter(str(run_dir / "tb"), purge_step=iteration or None)
                if cluster.is_main else None),
        bar=tqdm(total=config.train.max_iterations, initial=iteration,
                 disable=not (progress and cluster.is_main), unit="it",
                 desc=f"train ({device.type}, {precision})",
                 dynamic_ncols=True),
    )
    if trained_in not in (None, precision) and cluster.is_main:
        session.bar.write(f"note: iterations 1-{iteration} of this run were computed in "
                          f"{trained_in}; this {device.type} continues in {precision} "
                          f"(train.precision={config.train.precision!r})")
    model.train()
    with _terminate_as_interrupt():
        return session.run(iteration, elapsed)


def _initialise(model: ECON, source: Path, parts: tuple[str, ...] = EXPERT_PARTS) -> None:
    """Copy the networks named in ``parts`` (attention, encoder, decoder) from the run at
    ``source``; the others keep this model's fresh initialisation."""
    from econ_scenes.train.checkpoint import load_model

    initial, _ = load_model(source)
    prefixes = tuple(f"experts.{part}." for part in parts)
    theirs = {name: value for name, value in initial.state_dict().items()
              if name.startswith(prefixes)}
    ours = {name: value for name, value in model.state_dict().items() if name.startswith(prefixes)}
    problems = ([f"{name} is {tuple(theirs[name].shape)} there, {tuple(ours[name].shape)} here"
                 for name in sorted(theirs.keys() & ours.keys())
                 if theirs[name].shape != ours[name].shape]
                + [f"{name} only in {source}" for name in sorted(theirs.keys() - ours.keys())]
                + [f"{name} only in this config" for name in sorted(ours.keys() - theirs.keys())])
    if problems:
        failing = sorted({name.split(".")[1] for name in problems})
        more = f"; and {len(problems) - 6} more" if len(problems) > 6 else ""
        raise EconError(f"--init {source}: its {', '.join(failing)} do not fit this config: "
                        + "; ".join(problems[:6]) + more
                        + " (leave a network of another size out of --init-parts)")
    # Every parameter lies under one of the parts: with all of them this is a strict load.
    model.load_state_dict(theirs, strict=set(parts) == set(EXPERT_PARTS))


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """The data paths a run was started with (run.json)."""
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
             schedule: Plateau) -> tuple[int, float, torch.Tensor, str | None]:
    """Weights, optimiser, schedule and random state of a checkpoint → iteration, minutes, the
    usage balance's handicap (zeros for checkpoints written before it existed) and the
    precision the run was computed in so far (None for checkpoints that predate the record)."""
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
    handicap = torch.as_tensor(state.get("handicap", [0.0] * model.config.n_experts),
                               dtype=torch.float64)
    if handicap.shape != (model.config.n_experts,):
        raise EconError(f"checkpoint in {run_dir} has a handicap of shape "
                        f"{tuple(handicap.shape)} for {model.config.n_experts} experts")
    return (int(state["iteration"]), float(state.get("minutes", 0.0)), handicap,
            state.get("precision"))


def _checkpoint(run_dir: Path, model: ECON, optimiser: torch.optim.Optimizer, schedule: Plateau,
                handicap: torch.Tensor, iteration: int, minutes: float, precision: str) -> None:
    save_checkpoint(run_dir, {
        "precision": precision,
        "handicap": handicap.tolist(),
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


@dataclass
class _Session:
    """Everything one training process holds while it trains."""

    run_dir: Path
    config: RunConfig
    model: ECON
    objective: torch.nn.Module
    optimiser: torch.optim.Optimizer
    schedule: Plateau
    handicap: torch.Tensor  # (K,) the usage balance's handicap, float64
    data: TrainingData
    cluster: Cluster
    precision: str  # resolved for this device: fp32 | bf16 | fp16
    writer: SummaryWriter | None
    bar: tqdm

    def run(self, iteration: int, minutes: float) -> TrainResult:
        tc = self.config.train
        start = time.monotonic() - minutes * 60
        stop_reason = ""
        try:
            while not stop_reason:
                if iteration >= tc.max_iterations:
                    stop_reason = "max_iterations"
                    break
                out = self.step(iteration)
                iteration += 1
                minutes = self.cluster.from_main((time.monotonic() - start) / 60, self.data.device)
                self.bar.update(1)
                self.bar.set_postfix(loss=f"{out.loss.item():.1f}", lr=f"{self.schedule.lr:.1e}")
                if self.writer is not None and iteration % 10 == 0:
                    _log_train(self.writer, out, iteration, self.schedule.lr, self.config,
                               self.handicap)
                if iteration % tc.eval_every == 0:
                    stop_reason = self.validate(iteration, minutes)
                if tc.max_minutes and minutes >= tc.max_minutes:
                    stop_reason = "max_minutes"
                self.keep(iteration, minutes, final=bool(stop_reason))
        except KeyboardInterrupt:
            self.keep(iteration, minutes, final=True)
            self.close()
            raise EconError(f"interrupted at iteration {iteration}; checkpoint saved, continue "
                            f"with `econ train --resume {self.run_dir}`") from None
        self.keep(iteration, minutes, final=True)
        if self.cluster.is_main:
            save_model(self.run_dir, self.model, self.config)
        self.close()
        return TrainResult(self.run_dir, iteration, self.schedule.best, stop_reason, minutes)

    def step(self, iteration: int) -> Any:
        """One optimisation step on this process's share of the iteration's batch."""
        tc = self.config.train
        for group in self.optimiser.param_groups:
            group["lr"] = self.schedule.lr
        images, gt = self.data.batch(iteration)
        rate = self.config.model.balance(iteration)
        handicap = self.handicap.float() if rate > 0 else None
        with autocast(self.data.device, self.precision):
            loss, out = self.objective(images, gt, iteration, self.cluster.shard, handicap)
        if not torch.isfinite(loss):
            raise EconError(f"loss became {loss.item()} at iteration {iteration}: the run "
                            "diverged (try a lower --lr)")
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.optimiser.step()
        if rate > 0:
            k = self.config.model.n_experts
            wins = torch.bincount(out.decomposition.winner.flatten(), minlength=k)
            total = self.cluster.sum(wins.tolist(), self.data.device)
            self.handicap = usage_handicap(
                self.handicap, torch.tensor(total, dtype=torch.float64, device=self.handicap.device),
                rate)
        return out

    def validate(self, iteration: int, minutes: float) -> str:
        """Validation loss and the plateau schedule; a stop reason once it has converged."""
        tc = self.config.train
        val_loss = validation_loss(self.model, self.data, self.precision)
        self.schedule.update(val_loss, tc.patience, tc.lr_decay)
        if self.writer is not None:
            self.writer.add_scalar("val/loss", val_loss, iteration)
            self.writer.add_scalar("val/minutes", minutes, iteration)
        if self.cluster.is_main:
            self.bar.write(f"iteration {iteration}: validation loss {val_loss:.2f} "
                           f"(best {self.schedule.best:.2f}, lr {self.schedule.lr:.1e})")
        if self.schedule.decreases >= tc.max_lr_decreases:
            return f"converged (learning rate decreased {self.schedule.decreases} times)"
        return ""

    def keep(self, iteration: int, minutes: float, final: bool) -> None:
        """Images, snapshots and checkpoints when they are due (rank 0 only)."""
        tc = self.config.train
        if not self.cluster.is_main:
            return
        if self.writer is not None and tc.image_every and iteration % tc.image_every == 0:
            log_images(self.writer, self.model, self.data.validation_batches()[0][0][:8],
                       iteration)
        if tc.snapshot_every and iteration % tc.snapshot_every == 0:
            save_snapshot(self.run_dir, self.model, iteration, minutes)
        if iteration % tc.checkpoint_every == 0 or final:
            _checkpoint(self.run_dir, self.model, self.optimiser, self.schedule, self.handicap,
                        iteration, minutes, self.precision)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _log_train(writer: SummaryWriter, out: Any, iteration: int, lr: float,
               config: RunConfig, handicap: torch.Tensor) -> None:
    writer.add_scalar("train/loss", out.loss.item(), iteration)
    for name, value in out.terms.items():
        writer.add_scalar(f"train/{name}", float(value), iteration)
    writer.add_scalar("train/lr", lr, iteration)
    writer.add_scalar("train/temperature", config.model.temperature(iteration), iteration)
    writer.add_scalar("train/scope_cost", config.model.scope_cost(iteration), iteration)
    rates = win_rates(out.decomposition.winner, config.model.n_experts)
    for t, row in enumerate(rates):
        for k, rate in enumerate(row):
            writer.add_scalar(f"win_rate/step{t + 1}/expert{k}", float(rate), iteration)
    if config.model.balance(iteration) > 0:  # after a warm-up the handicap no longer acts
        for k, value in enumerate(handicap.tolist()):
            writer.add_scalar(f"handicap/expert{k}", value, iteration)
