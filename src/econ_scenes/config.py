"""Configuration as frozen dataclasses, and the named presets of the paper (Appendix C.3, C.4).

A run directory stores the resolved :class:`RunConfig` as ``config.json``; every command rebuilds
the model from it.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from econ_scenes.errors import EconError

DEFAULT_REFINE_STEPS = 50
"""Gradient steps of latent refinement (model/refine.py) where a caller does not choose: about
what the shipped models need to converge."""

BALANCE_STEPS = ("all", "last", "bonus-last")

SHAPE_DECODERS = ("stack", "template")

EXPERT_PARTS = ("attention", "encoder", "decoder")
"""The networks of every expert: a_k (attention U-Net), g_k (VAE encoder), f_k (decoder)."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and objective of an ECON ensemble.

    Attributes follow the paper: K experts (``n_experts``), T inference steps (``n_steps``),
    latent dimension L, σ_x of the Gaussian likelihood (5), β and γ of objective (13) and the
    competition weight λ of section 5.2.
    """

    image_size: int = 64
    n_experts: int = 4
    n_steps: int = 4
    latent_dim: int = 2
    # > 0: the decoder draws the shape from the first this-many latent dimensions only (a pose:
    # position and size for 3), in a stack of its own; colours use all L. 0 = the paper's
    # decoder. See model/vae.py.
    shape_latent_dim: int = 0
    # "stack": the shape from z[:S] in a conv stack of its own (above); "template": from one
    # learned template per expert placed by z[:3] (position, size; needs S = 3). See model/vae.py.
    shape_decoder: str = "stack"
    vae_layers: int = 4
    vae_features: int = 32
    unet_channels: tuple[int, ...] = (32, 64, 64, 64)
    unet_mlp_hidden: int = 128
    sigma_x: float = 0.1
    beta: float = 9.54
    gamma: float = 0.52
    # Competition (section 5.2): P(k) ∝ exp(-score_k / temperature), with
    # score_k = (λ Σ L_x + Σ L_r + scope_cost Σ s(1 - r̃_k)) / D  (per-pixel mean over the image).
    competition_lambda: float = 1.0
    competition_temperature: float = 0.3
    # Annealing: τ starts at competition_temperature_start and decays geometrically to
    # competition_temperature over competition_anneal_iterations (0 = no annealing). Early
    # exploration lets every expert win, and learn, before the competition sharpens.
    competition_temperature_start: float = 0.0
    competition_anneal_iterations: int = 0
    competition_scope_cost: float = 3.0
    # True: in stochastic inference (training) the experts compete with their posterior means
    # (no latent noise in the scores); the winner is still trained on a sampled latent. False:
    # the sampled latents compete, as in the paper. The noise decides between near-identical
    # experts otherwise. The winner is still drawn with Gumbel noise of scale τ: a deterministic
    # competition also needs a tiny competition_temperature.
    competition_on_means: bool = False
    # Scope-price curriculum: c moves linearly from competition_scope_cost_start (0 = off) to
    # competition_scope_cost over competition_anneal_iterations. A high price early makes
    # experts attend to something at all; a lower one later stops rewarding the largest region
    # (the background) for coming first.
    competition_scope_cost_start: float = 0.0
    # > 0: the price is a hinge, c per pixel a region falls short of this fraction of the image
    # (see model/competition.py): no reward for large regions, so the background need not win
    # the first step.
    competition_min_region: float = 0.0
    # < 1 (with competition_min_region > 0): also c per pixel a region exceeds this fraction of
    # the image, a prior that objects in front are smaller than the background behind them.
    competition_max_region: float = 1.0
    # > 0: usage balance ("conscience"): during training each expert's score carries a
    # handicap that grows by this rate times (its share of the wins − 1/K) every iteration, so
    # an expert that wins too often (e.g. one class and the background) loses its marginal
    # wins to one that wins too rarely (see model/competition.py). 0 = the paper's competition.
    competition_balance: float = 0.0
    # Where the handicap acts (with competition_balance > 0): "all" steps; only the "last"
    # step, whose region (the remaining scope, mostly background) is the same for every expert;
    # or "bonus-last": penalties at every step, bonuses only at the last, so an expert that wins
    # too rarely is pushed towards the background instead of stealing objects at the first steps.
    competition_balance_steps: str = "all"
    # > 0: the usage balance acts for this many training iterations only (a warm-up that gives
    # every expert a share while the experts specialise); after it the handicap is dropped and
    # the competition is the paper's. 0 = for the whole run. Meant for K above the number of
    # classes, where an equal share for every expert would split a class.
    competition_balance_iterations: int = 0
    # Deterministic inference without gradients only (decomposition, evaluation; training's
    # competition and its validation loss are the paper's). True: every expert also competes
    # for the regions the other experts' attention proposed, each expert keeping the region it
    # explains best (K² candidates at every step before the last): an expert whose own
    # attention picked an object of another class can still win the object of its class that
    # another expert proposed.
    competition_cross: bool = False
    # > 0 (the same inference only): before the comparison, every candidate's posterior mean
    # is refined by this many Adam steps (learning rate competition_refine_lr) on
    # λ·L_x + L_r + β·½‖μ‖² (its score's terms that depend on the latent, and the prior),
    # regions held (model/refine.py); with competition_refine_top N > 0 only each image's N
    # best-scoring candidates are refined (the others keep the encoder's answer). Experts are
    # then compared by how well their decoders can explain a region, not by how well their
    # encoders guessed.
    competition_refine_steps: int = 0
    competition_refine_lr: float = 0.1
    competition_refine_top: int = 0
    attention_bias: float = -3.0

    def temperature(self, iteration: int) -> float:
        """Competition temperature τ at a training iteration (geometric annealing)."""
        start, end = self.competition_temperature_start, self.competition_temperature
        steps = self.competition_anneal_iterations
        if start <= 0 or steps <= 0 or iteration >= steps:
            return end
        return start * (end / start) ** (iteration / steps)

    def balance(self, iteration: int) -> float:
        """Rate of the usage balance at a training iteration (0 = no handicap)."""
        stop = self.competition_balance_iterations
        return 0.0 if stop > 0 and iteration >= stop else self.competition_balance

    def scope_cost(self, iteration: int) -> float:
        """Competition scope price c at a training iteration (linear schedule)."""
        start, end = self.competition_scope_cost_start, self.competition_scope_cost
        steps = self.competition_anneal_iterations
        if start <= 0 or steps <= 0 or iteration >= steps:
            return end
        return start + (end - start) * iteration / steps

    def validate(self) -> None:
        if self.n_experts < 1:
            raise EconError(f"n_experts (K) must be >= 1, got {self.n_experts}")
        if self.n_steps < 1:
            raise EconError(f"n_steps (T) must be >= 1, got {self.n_steps}")
        if self.latent_dim < 1:
            raise EconError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if not 0 <= self.shape_latent_dim <= self.latent_dim:
            raise EconError(f"shape_latent_dim must be in 0..latent_dim={self.latent_dim}, "
                            f"got {self.shape_latent_dim}")
        if self.shape_decoder not in SHAPE_DECODERS:
            raise EconError(f"shape_decoder must be one of {', '.join(SHAPE_DECODERS)}, "
                            f"got {self.shape_decoder!r}")
        if self.shape_decoder == "template" and self.shape_latent_dim != 3:
            raise EconError("shape_decoder='template' places the template by a pose of three "
                            f"latent dimensions: set shape_latent_dim=3 (got {self.shape_latent_dim})")
        if self.vae_layers < 1 or self.vae_features < 1:
            raise EconError("vae_layers and vae_features must be >= 1")
        if len(self.unet_channels) < 1 or min(self.unet_channels) < 1:
            raise EconError(f"unet_channels must be positive, got {self.unet_channels}")
        levels = len(self.unet_channels)
        if self.image_size < 8 or self.image_size % (2**levels):
            raise EconError(
                f"image_size {self.image_size} must be >= 8 and divisible by 2**{levels} "
                f"(the attention U-Net halves the resolution {levels} times)"
            )
        if self.image_size < 2**self.vae_layers:
            raise EconError(
                f"image_size {self.image_size} too small for {self.vae_layers} encoder blocks "
                f"(each halves the resolution)"
            )
        for name in ("sigma_x", "competition_temperature"):
            if not getattr(self, name) > 0:
                raise EconError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.competition_min_region < 1.0:
            raise EconError(f"competition_min_region must be in [0, 1), got "
                            f"{self.competition_min_region}")
        if not self.competition_min_region < self.competition_max_region <= 1.0:
            raise EconError(f"competition_max_region must be in (competition_min_region, 1], got "
                            f"{self.competition_max_region}")
        if self.competition_max_region < 1.0 and self.competition_min_region == 0.0:
            raise EconError("competition_max_region needs the hinge price: set "
                            "competition_min_region > 0")
        if self.competition_balance_iterations < 0:
            raise EconError(f"competition_balance_iterations must be >= 0, got "
                            f"{self.competition_balance_iterations}")
        if self.competition_temperature_start < 0 or self.competition_anneal_iterations < 0:
            raise EconError("competition_temperature_start and competition_anneal_iterations "
                            "must be >= 0")
        for name in ("competition_refine_steps", "competition_refine_top"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise EconError(f"{name} must be a whole number, got {value!r}")
        if self.competition_refine_steps < 0 or self.competition_refine_top < 0:
            raise EconError(f"competition_refine_steps and competition_refine_top must be >= 0, "
                            f"got {self.competition_refine_steps}, {self.competition_refine_top}")
        if not (math.isfinite(self.competition_refine_lr) and self.competition_refine_lr > 0):
            raise EconError(f"competition_refine_lr must be a finite number > 0, got "
                            f"{self.competition_refine_lr}")
        if self.competition_balance_steps not in BALANCE_STEPS:
            raise EconError(f"competition_balance_steps must be one of {', '.join(BALANCE_STEPS)}, "
                            f"got {self.competition_balance_steps!r}")
        for name in ("beta", "gamma", "competition_lambda", "competition_scope_cost",
                     "competition_scope_cost_start", "competition_balance"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise EconError(f"{name} must be a finite number >= 0, got {value}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation schedule of Appendix C.3 plus budgets for short runs."""

    batch_size: int = 32
    lr: float = 5e-4
    eval_every: int = 100
    patience: int = 5
    lr_decay: float = math.sqrt(10.0)
    max_lr_decreases: int = 5
    max_iterations: int = 200_000
    max_minutes: float = 0.0  # 0 = no wall-time budget
    grad_clip: float = 10.0
    n_val: int = 100
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    gt_masks: bool = False
    image_every: int = 500
    checkpoint_every: int = 100
    snapshot_every: int = 0  # keep weights every N iterations in snapshots/ (learning curves)
    init_from: str = ""  # run directory whose weights start this run (e.g. a combined ensemble)
    init_parts: tuple[str, ...] = EXPERT_PARTS  # which networks init_from provides; others fresh
    frozen_experts: tuple[int, ...] = ()  # experts that receive no updates

    def validate(self) -> None:
        if self.batch_size < 1:
            raise EconError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise EconError(f"lr must be > 0, got {self.lr}")
        if self.eval_every < 1 or self.max_iterations < 0 or self.patience < 1:
            raise EconError("eval_every and patience must be >= 1, max_iterations >= 0")
        if self.checkpoint_every < 1:
            raise EconError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.n_val < 1:
            raise EconError(f"n_val (validation scenes) must be >= 1, got {self.n_val}")
        if self.image_every < 0 or self.snapshot_every < 0 or self.max_minutes < 0:
            raise EconError("image_every, snapshot_every and max_minutes must be >= 0")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise EconError(f"precision must be auto|fp32|bf16|fp16, got {self.precision!r}")
        unknown = [part for part in self.init_parts if part not in EXPERT_PARTS]
        if unknown or not self.init_parts or len(set(self.init_parts)) != len(self.init_parts):
            raise EconError(f"init_parts must be distinct names among {', '.join(EXPERT_PARTS)}, "
                            f"got {', '.join(self.init_parts) or 'none'}")


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = "custom"

    def validate(self) -> RunConfig:
        self.model.validate()
        self.train.validate()
        if self.train.gt_masks and self.model.n_experts != 1:
            raise EconError("--gt-masks trains the single-expert model: it needs n_experts == 1")
        for k in self.train.frozen_experts:
            if not 0 <= k < self.model.n_experts:
                raise EconError(f"frozen expert {k} out of range 0..{self.model.n_experts - 1}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        try:
            model = dict(data["model"])
            model["unet_channels"] = tuple(model["unet_channels"])
            train = dict(data["train"])
            train["frozen_experts"] = tuple(train.get("frozen_experts", ()))
            train["init_parts"] = _parts(train.get("init_parts", EXPERT_PARTS))
            return cls(
                model=ModelConfig(**model),
                train=TrainConfig(**train),
                preset=str(data.get("preset", "custom")),
            )
        except (KeyError, TypeError) as error:
            raise EconError(f"malformed run configuration: {error}") from error

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        if not path.is_file():
            raise EconError(f"no run configuration at {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise EconError(f"corrupt run configuration {path}: {error}") from error
        return cls.from_dict(data).validate()


PRESETS: dict[str, RunConfig] = {
    # Appendix C.4, Fig 1: L=2, 4 encoder/decoder layers, 32 features, β=9.54, γ=0.52.
    # Competition on L_x and L_r (λ=1) for uniquely coloured objects.
    "paper-unique": RunConfig(
        model=ModelConfig(latent_dim=2, vae_layers=4, vae_features=32, beta=9.54, gamma=0.52,
                          competition_lambda=1.0),
        preset="paper-unique",
    ),
    # Appendix C.4, Fig 6: L=5, 3 layers, 32 features, β=1, γ=3.26; competition on L_r only.
    "paper-random": RunConfig(
        model=ModelConfig(latent_dim=5, vae_layers=3, vae_features=32, beta=1.0, gamma=3.26,
                          competition_lambda=0.0),
        preset="paper-random",
    ),
    # CPU-sized: 32×32 scenes, a slimmer U-Net and decoder, a higher learning rate. L=3 (L=2
    # cannot hold position and size: blurry shapes), the band price (objects before the
    # background; no region above 30 % of the image before the last step) and the usage balance
    # at every step (one expert per class, one for the whole background; bonuses at every step
    # recruit an idle expert to a class no expert proposes yet): docs/competition.md.
    "quick": RunConfig(
        model=ModelConfig(image_size=32, latent_dim=3, vae_layers=3, vae_features=16,
                          unet_channels=(16, 32, 32, 32), unet_mlp_hidden=64,
                          beta=1.0, gamma=1.0, competition_lambda=1.0,
                          competition_temperature_start=2.0, competition_anneal_iterations=800,
                          competition_scope_cost=10.0, competition_min_region=0.05,
                          competition_max_region=0.3, competition_balance=0.1,
                          competition_balance_steps="all"),
        train=TrainConfig(lr=1e-3, eval_every=100, max_iterations=3000),
        preset="quick",
    ),
}
# Random colours: an object's latent must hold its colour as well as its position and size
# (L = 6), and a decoder of 16 features never split the foreground; the same competition as
# `quick`. From scratch the objects separate on some seeds only; first on unique colours, then on
# random ones (`econ train --init`, README) they did on every seed tried (docs/competition.md).
PRESETS["quick-random"] = RunConfig(
    model=dataclasses.replace(PRESETS["quick"].model, latent_dim=6, vae_features=32),
    train=dataclasses.replace(PRESETS["quick"].train, max_iterations=10000),
    preset="quick-random",
)


def preset(name: str) -> RunConfig:
    """Return a named preset, with a clear error for an unknown name."""
    if name not in PRESETS:
        raise EconError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def _parts(value: Any) -> tuple[str, ...]:
    """init_parts from "attention,encoder" or a list of names."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return tuple(value)


def _as_bool(key: str, value: Any) -> bool:
    """A boolean override: True/False, or "true"/"false"/"yes"/"no"/"1"/"0" from the CLI."""
    if isinstance(value, bool):
        return value
    words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    word = str(value).strip().lower()
    if word in words:
        return words[word]
    raise EconError(f"{key} must be true or false, got {value!r}")


SEARCH_SETTINGS = ("competition_lambda", "competition_cross", "competition_refine_steps",
                   "competition_refine_lr", "competition_refine_top")
"""λ and the settings of deterministic inference's search (cross and refined candidates):
what ``econ evaluate`` records and the benchmarks vary; the scope price and its region bounds
are the trained model's."""


def search_settings(config: ModelConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in SEARCH_SETTINGS}


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["model.beta=2", "train.lr=1e-3"]`` → ``{"model.beta": 2, "train.lr": 0.001}``."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise EconError(f"--set expects section.field=value, got {item!r}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        overrides[key.strip()] = value
    return overrides


def override(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Apply ``{"model.beta": 2.0, "train.lr": 1e-3, ...}`` style overrides and validate."""
    model = dataclasses.asdict(config.model)
    train = dataclasses.asdict(config.train)
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        target = {"model": model, "train": train}.get(section)
        if target is None or name not in target:
            raise EconError(f"unknown config field {key!r}")
        if isinstance(target[name], bool):
            value = _as_bool(key, value)
        if name == "init_parts":
            value = _parts(value)
        is_tuple = name in ("unet_channels", "frozen_experts")
        target[name] = tuple(value) if is_tuple and not isinstance(value, int) else value
        if is_tuple and isinstance(value, int):
            target[name] = (value,)
    return RunConfig(model=ModelConfig(**model), train=TrainConfig(**train),
                     preset=config.preset).validate()
