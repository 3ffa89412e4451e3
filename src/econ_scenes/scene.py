"""The scene model users touch: decompose, sample, compose, a prior over expert sequences, and
modular experts (save one, combine experts of several runs, freeze some and train another).

Generation follows section 2: start from an empty canvas and, back to front, pick an expert k_t,
sample z_t ~ N(0, I), decode the appearance μ_k(z_t) and the shape m̃_k(z_t), draw the shape
m_t and place the object: x ← m_t ⊙ x_t + (1 − m_t) ⊙ x.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from econ_scenes.config import DEFAULT_REFINE_STEPS, RunConfig, override
from econ_scenes.errors import EconError
from econ_scenes.io import atomic_write
from econ_scenes.model import ECON
from econ_scenes.model.refine import refine
from econ_scenes.train.checkpoint import load_model, save_model
from econ_scenes.types import Composition, Decomposition

PRIOR_FILE = "prior.json"
LATENT_FILE = "latents.json"


def as_image_tensor(images: np.ndarray | Tensor, size: int) -> Tensor:
    """Accept uint8 (N, H, W, 3) arrays or float (N, 3, H, W) tensors in [0, 1]; check them."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise EconError(f"image arrays must be uint8 (N, H, W, 3), got dtype {images.dtype}")
        if images.ndim != 4 or images.shape[-1] != 3:
            raise EconError(f"image arrays must be (N, H, W, 3), got shape {images.shape}")
        if images.shape[0] == 0:
            raise EconError("no images given")
        if images.shape[1:3] != (size, size):
            raise EconError(f"the model expects {size}×{size} images, got "
                            f"{images.shape[1]}×{images.shape[2]}")
        tensor = torch.from_numpy(np.array(images, copy=True)).permute(0, 3, 1, 2)
        return tensor.float() / 255.0
    if not isinstance(images, Tensor):
        raise EconError(f"images must be a numpy array or a torch tensor, got {type(images)}")
    return images


def visible_steps(decomposition: Decomposition, min_pixels: int) -> Tensor:
    """(N, T) bool: the steps whose region holds at least ``min_pixels`` pixels (objects that
    priors learn from; the rest are empty steps)."""
    return (decomposition.region > 0.5).sum(dim=(-2, -1)).cpu() >= min_pixels


@dataclass(frozen=True)
class SequencePrior:
    """p(k_1..k_T): empirical distribution of expert sequences (back to front) on training scenes.

    sequences: distinct sequences; probabilities: their frequencies.
    """

    sequences: tuple[tuple[int, ...], ...]
    probabilities: tuple[float, ...]

    @classmethod
    def fit(cls, decomposition: Decomposition, min_pixels: int = 8) -> SequencePrior:
        """Keep the steps whose region holds at least ``min_pixels`` pixels; reverse to back first."""
        visible = visible_steps(decomposition, min_pixels).numpy()
        winners = decomposition.winner.cpu().numpy()
        counts: Counter[tuple[int, ...]] = Counter()
        for row_visible, row_winner in zip(visible, winners, strict=True):
            kept = [int(k) for v, k in zip(row_visible, row_winner, strict=True) if v]
            counts[tuple(reversed(kept))] += 1
        total = sum(counts.values())
        ordered = counts.most_common()
        return cls(tuple(s for s, _ in ordered), tuple(c / total for _, c in ordered))

    def sample(self, n: int, generator: np.random.Generator) -> list[tuple[int, ...]]:
        index = generator.choice(len(self.sequences), size=n, p=np.asarray(self.probabilities))
        return [self.sequences[i] for i in index]

    def save(self, path: Path) -> None:
        data = {"sequences": [list(s) for s in self.sequences],
                "probabilities": list(self.probabilities)}
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1) + "\n"))

    @classmethod
    def load(cls, path: Path) -> SequencePrior:
        if not path.is_file():
            raise EconError(f"no prior at {path}: fit one with `econ compose RUN --prior "
                            "--data TRAIN.npz`")
        data = json.loads(path.read_text())
        return cls(tuple(tuple(s) for s in data["sequences"]), tuple(data["probabilities"]))


@dataclass(frozen=True)
class LatentPrior:
    """Per-expert Gaussian mixtures fitted to the posterior means of the latents each expert
    used on training scenes: an ex-post density (Ghosh et al., 2020) to sample from instead of
    N(0, I), whose regions the aggregate posterior of a small VAE leaves partly empty.

    mixtures: expert → (weights (C,), means (C, L), Cholesky factors of the covariances
    (C, L, L)); experts without enough latents are absent and sample from N(0, I).
    """

    mixtures: dict[int, tuple[Tensor, Tensor, Tensor]]

    @classmethod
    def fit(cls, decomposition: Decomposition, min_pixels: int, *, min_latents: int = 20,
            max_components: int = 8, seed: int = 0) -> LatentPrior:
        from sklearn.mixture import GaussianMixture

        visible = visible_steps(decomposition, min_pixels)
        latents = decomposition.latent.cpu().double()
        winners = decomposition.winner.cpu()
        mixtures = {}
        for k in winners.unique().tolist():
            points = latents[(winners == k) & visible].numpy()
            if len(points) < min_latents:
                continue
            components = max(1, min(max_components, len(points) // 50))
            gmm = GaussianMixture(components, covariance_type="full", reg_covar=1e-4,
                                  random_state=seed).fit(points)
            mixtures[int(k)] = (torch.as_tensor(gmm.weights_, dtype=torch.float64),
                                torch.as_tensor(gmm.means_, dtype=torch.float64),
                                torch.linalg.cholesky(torch.as_tensor(gmm.covariances_)))
        return cls(mixtures)

    def sample(self, experts: Tensor, latent_dim: int, generator: torch.Generator) -> Tensor:
        """One latent per entry of ``experts`` (any shape; −1 = none) → (*experts.shape, L)."""
        flat = experts.reshape(-1)
        noise = torch.randn(flat.numel(), latent_dim, generator=generator, dtype=torch.float64)
        out = noise.clone()
        for k, (weights, means, chol) in self.mixtures.items():
            rows = (flat == k).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            component = torch.multinomial(weights, rows.numel(), replacement=True,
                                          generator=generator)
            out[rows] = means[component] + (chol[component] @ noise[rows].unsqueeze(-1)).squeeze(-1)
        return out.float().reshape(*experts.shape, latent_dim)

    def save(self, path: Path) -> None:
        data = {str(k): {"weights": w.tolist(), "means": m.tolist(), "cholesky": c.tolist()}
                for k, (w, m, c) in self.mixtures.items()}
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data) + "\n"))

    @classmethod
    def load(cls, path: Path) -> LatentPrior:
        try:
            data = json.loads(path.read_text())
            mixtures = {int(k): tuple(torch.tensor(v[name], dtype=torch.float64)
                                      for name in ("weights", "means", "cholesky"))
                        for k, v in data.items()}
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise EconError(f"corrupt latent prior {path}: {error}") from error
        return cls(mixtures)  # type: ignore[arg-type]


class SceneModel:
    """A trained ECON ensemble, ready to take scenes apart and put new ones together.

    latent_prior: where sampled latents come from: the fitted :class:`LatentPrior` of the run
    (``latents.json``, written by :meth:`fit_prior`) when there is one, else N(0, I) (None).
    """

    def __init__(self, model: ECON, config: RunConfig, run_dir: Path | None = None) -> None:
        self.model = model.eval()
        self.config = config
        self.run_dir = run_dir
        self.latent_prior: LatentPrior | None = None
        if run_dir is not None and (run_dir / LATENT_FILE).is_file():
            self.latent_prior = LatentPrior.load(run_dir / LATENT_FILE)

    def _draw_latents(self, experts: Tensor, generator: torch.Generator) -> Tensor:
        """Latents for experts (any shape) → (*experts.shape, L)."""
        dim = self.config.model.latent_dim
        if self.latent_prior is None:
            return torch.randn(*experts.shape, dim, generator=generator)
        return self.latent_prior.sample(experts, dim, generator)

    @classmethod
    def load(cls, run_dir: Path | str, device: str = "cpu") -> SceneModel:
        """Load a run directory (``config.json`` + ``model.safetensors``) in one call."""
        model, config = load_model(run_dir, device)
        return cls(model, config, Path(run_dir))

    def set_competition(self, **settings: float | bool) -> None:
        """Change the competition's settings for the coming decompositions, e.g.
        ``competition_lambda=0.5``, in the model and in :attr:`config` alike (they need no new
        weights; :meth:`save` keeps them)."""
        other = sorted(name for name in settings if not name.startswith("competition_"))
        if other:
            raise EconError(f"not a competition setting: {', '.join(other)}")
        self.config = override(self.config, {f"model.{name}": v for name, v in settings.items()})
        self.model.config = self.config.model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def n_experts(self) -> int:
        return self.config.model.n_experts

    @property
    def image_size(self) -> int:
        return self.config.model.image_size

    def check_expert(self, k: int) -> None:
        if not 0 <= k < self.n_experts:
            raise EconError(f"expert index {k} out of range: this model has experts "
                            f"0..{self.n_experts - 1}")

    @torch.no_grad()
    def decompose(self, images: np.ndarray | Tensor, *, n_steps: int | None = None,
                  regions: np.ndarray | Tensor | None = None,
                  batch_size: int = 64, refine_steps: int = 0) -> Decomposition:
        """Explain scenes front to back: uint8 (N, H, W, 3) or float (N, 3, H, W) in [0, 1].

        regions: (N, T, H, W) visible regions front first to use instead of attention (a model
        trained with ``--gt-masks``). refine_steps: after the encoder's answer, refine each
        step's latent by this many gradient steps on its own loss (:mod:`econ_scenes.model.refine`).
        """
        tensor = as_image_tensor(images, self.image_size)
        given = None if regions is None else torch.as_tensor(np.asarray(regions), dtype=torch.float32)
        if given is not None and (given.ndim != 4 or given.shape[0] != len(tensor)):
            raise EconError(f"regions must be (N, T, H, W) for N={len(tensor)} images, "
                            f"got {tuple(given.shape)}")
        steps = n_steps if given is None else given.shape[1]
        parts = []
        for i in range(0, len(tensor), batch_size):
            images_i = tensor[i : i + batch_size].to(self.device)
            decomposition = self.model.infer(
                images_i, stochastic=False, n_steps=steps,
                gt_regions=None if given is None else given[i : i + batch_size].to(self.device),
            ).decomposition
            decomposition = refine(self.model.experts, self.config.model, images_i,
                                   decomposition, refine_steps)
            parts.append(decomposition.to("cpu"))
        return Decomposition(**{
            name: torch.cat([getattr(p, name) for p in parts])
            for name in Decomposition.__dataclass_fields__
        })

    @torch.no_grad()
    def sample_expert(self, k: int, n: int, *, seed: int = 0) -> tuple[Tensor, Tensor]:
        """n objects from expert k's prior → appearance (n, 3, H, W), shape probability (n, H, W)."""
        self.check_expert(k)
        if n < 1:
            raise EconError(f"n must be >= 1, got {n}")
        generator = torch.Generator().manual_seed(seed)
        latent = self._draw_latents(torch.full((1, n), k, dtype=torch.long), generator)
        experts = torch.full((n,), k, dtype=torch.long, device=self.device)
        appearance, shape = self.model.experts.generate(latent.to(self.device), experts)
        return appearance[0].cpu(), shape[0].cpu()

    @torch.no_grad()
    def compose(self, experts: Sequence[int] | Sequence[Sequence[int]] | Tensor, n: int | None = None,
                *, seed: int = 0, sample_shapes: bool = False,
                background: bool = True) -> Composition:
        """Generate scenes with the given experts back to front (section 2).

        experts: one sequence (T,) for all n scenes, or one per scene (B, T); -1 marks no layer.
        sample_shapes: draw m_t ~ Bernoulli(m̃) instead of thresholding m̃ at 0.5.
        background: the back-most layer of each scene is the background, m_1 = 1 (the paper's
        footnote 2), so no pixel is left empty where its sampled shape falls short; False
        draws its shape like any other layer's.
        """
        layers = torch.as_tensor(experts, dtype=torch.long)
        if layers.ndim == 1:
            if n is None or n < 1:
                raise EconError(f"compose needs n >= 1 scenes, got {n}")
            layers = layers.unsqueeze(0).expand(n, -1)
        if layers.ndim != 2 or layers.shape[1] == 0:
            raise EconError("experts must be a non-empty sequence of expert indices")
        for k in layers.unique().tolist():
            if k != -1:
                self.check_expert(int(k))
        generator = torch.Generator().manual_seed(seed)
        batch, steps = layers.shape
        latent = self._draw_latents(layers, generator)
        flat = layers.reshape(-1).clamp_min(0).to(self.device)
        appearance, shape = self.model.experts.generate(
            latent.reshape(1, batch * steps, -1).to(self.device), flat)
        size = self.image_size
        appearance = appearance.reshape(batch, steps, 3, size, size).cpu()
        shape = shape.reshape(batch, steps, size, size).cpu()
        drawn = torch.bernoulli(shape, generator=generator) if sample_shapes else (shape > 0.5).float()
        present = layers >= 0
        if background:
            drawn[present & (present.long().cumsum(dim=1) == 1)] = 1.0  # the back-most layer
        drawn = drawn * present.float()[:, :, None, None]
        return Composition(experts=layers.clone(), appearance=appearance, shape=drawn,
                           latent=latent, image=layer_scene(appearance, drawn))

    def fit_prior(self, images: np.ndarray | Tensor, *, min_pixels: int | None = None,
                  refine_steps: int = DEFAULT_REFINE_STEPS, save: bool = True) -> SequencePrior:
        """Fit p(k_1..k_T) from the winners on training scenes (``prior.json``) and each expert's
        latent density (:class:`LatentPrior`, ``latents.json``; used by sampling from now on).

        The density is fitted to latents refined by ``refine_steps`` (see :meth:`decompose`):
        the encoder's latent for a partly hidden object tends to describe the visible part, and
        a density fitted to those puts mass on shapes that are not whole objects.
        """
        pixels = min_pixels if min_pixels is not None else max(4, self.image_size**2 // 200)
        decomposition = self.decompose(images, refine_steps=refine_steps)
        prior = SequencePrior.fit(decomposition, pixels)
        self.latent_prior = LatentPrior.fit(decomposition, pixels)
        if save and self.run_dir is not None:
            prior.save(self.run_dir / PRIOR_FILE)
            self.latent_prior.save(self.run_dir / LATENT_FILE)
        return prior

    def prior(self) -> SequencePrior:
        if self.run_dir is None:
            raise EconError("this model has no run directory holding a prior")
        return SequencePrior.load(self.run_dir / PRIOR_FILE)

    def compose_from_prior(self, n: int, *, prior: SequencePrior | None = None,
                           seed: int = 0) -> Composition:
        """Unconditional generation: expert sequences from the prior, then :meth:`compose`."""
        prior = prior or self.prior()
        sequences = prior.sample(n, np.random.default_rng(seed))
        longest = max(len(s) for s in sequences) or 1
        padded = [[-1] * (longest - len(s)) + list(s) for s in sequences]
        return self.compose(padded, seed=seed)

    # --- modularity ----------------------------------------------------------------------
    def save_expert(self, k: int, path: Path | str) -> None:
        """Write expert k alone (its slice of every stacked parameter) to a safetensors file."""
        self.check_expert(k)
        tensors = {name: value[k].detach().cpu().contiguous()
                   for name, value in self.model.state_dict().items()}
        config = json.dumps(self.config.to_dict())
        atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp),
                                                       metadata={"config": config}))

    @classmethod
    def from_experts(cls, files: Sequence[Path | str], *, extra: int = 0,
                     seed: int = 0) -> SceneModel:
        """A new ensemble from saved experts (e.g. of different runs), plus ``extra`` new ones.

        All experts must share the architecture (image size, latent and layer sizes).
        """
        if not files:
            raise EconError("from_experts needs at least one expert file")
        loaded = [_read_expert(Path(f)) for f in files]
        config = loaded[0][1]
        for path, (_, other) in zip(files, loaded, strict=True):
            if _architecture(other) != _architecture(config):
                raise EconError(f"expert {path} has another architecture than {files[0]}")
        config = override(config, {"model.n_experts": len(files) + extra})
        torch.manual_seed(seed)
        model = ECON(config.model)
        state = model.state_dict()
        for k, (tensors, _) in enumerate(loaded):
            for name, value in tensors.items():
                state[name][k] = value
        model.load_state_dict(state)
        return cls(model, config)

    def save(self, run_dir: Path | str) -> None:
        """Write this ensemble as a run directory that ``load`` and ``econ train --init`` read."""
        save_model(Path(run_dir), self.model, self.config)


def _architecture(config: RunConfig) -> dict[str, object]:
    fields = config.to_dict()["model"]
    fields.pop("n_experts")
    return {k: v for k, v in fields.items() if not k.startswith(("beta", "gamma", "competition"))}


def _read_expert(path: Path) -> tuple[dict[str, Tensor], RunConfig]:
    if not path.is_file():
        raise EconError(f"no expert file at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except Exception as error:
        raise EconError(f"cannot read expert file {path}: {error}") from error
    if "config" not in metadata:
        raise EconError(f"{path} is not an expert file (no config metadata)")
    return tensors, RunConfig.from_dict(json.loads(metadata["config"]))


def layer_scene(appearance: Tensor, shape: Tensor) -> Tensor:
    """Dead-leaves layering, back to front: appearance (B, T, 3, H, W), shape (B, T, H, W) →
    image (B, 3, H, W), starting from an empty (black) canvas."""
    canvas = torch.zeros_like(appearance[:, 0])
    for t in range(appearance.shape[1]):
        m = shape[:, t].unsqueeze(1)
        canvas = m * appearance[:, t] + (1 - m) * canvas
    return canvas


def load(run_dir: Path | str, device: str = "cpu") -> SceneModel:
    """``econ_scenes.load(run_dir)``: the one call that gives a trained :class:`SceneModel`."""
    return SceneModel.load(run_dir, device)
