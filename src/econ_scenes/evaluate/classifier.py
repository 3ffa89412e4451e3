"""A small CNN that tells background, circles, squares and triangles apart.

Evaluation uses it to judge generated objects (which class does expert k draw?), the layers of
composed scenes, and as the feature extractor of the kernel inception distance (KID) between
generated and real scenes (penultimate-layer features instead of Inception features, which are
meaningless on 32×32 toy scenes).

It is trained on ground-truth renders, each a single object alone on a black canvas in a random
colour (so that it classifies shape, not colour), exactly as evaluation renders a sample
(``appearance ⊙ (shape > 0.5)``), plus plain uniformly coloured images for the background class.
Training uses a fixed seed, but CPUs with different instruction sets give slightly different
weights, and generation scores moved by about a point between machines. So the classifiers for
32×32 and 64×64 (the ones behind the committed metrics) ship with the package
(``econ_scenes/evaluate/weights/``, made by ``save_classifier(train_classifier(size),
shipped_classifier_path(size))``); other sizes are trained on first use and cached on disk
(``$ECON_CACHE/classifier-<size>-v1.safetensors``, by default under ``~/.cache/econ-scenes``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm import tqdm

from econ_scenes.data.generator import CLASS_NAMES, OBJECT_CLASSES, SceneSpec, generate
from econ_scenes.errors import EconError
from econ_scenes.io import atomic_write
from econ_scenes.threads import one_thread

__all__ = [
    "CACHE_ENV",
    "CLASSIFIER_VERSION",
    "ShapeClassifier",
    "atomic_write",
    "cache_directory",
    "classifier_accuracy",
    "classifier_path",
    "load_classifier",
    "load_or_train_classifier",
    "render_shape_dataset",
    "save_classifier",
    "shipped_classifier_path",
    "train_classifier",
]

CACHE_ENV = "ECON_CACHE"
"""Environment variable overriding the cache directory."""
CLASSIFIER_VERSION = 1
"""Bump when the architecture or the training data change (it is part of the file name)."""
N_CLASSES = len(CLASS_NAMES)
FEATURE_DIM = 64
DEFAULT_N_TRAIN = 3000
DEFAULT_EPOCHS = 5
HELD_OUT_SEED_OFFSET = 1_000_003
MAX_SIZE_FRACTION = 0.6
NOISE = 0.04
"""Standard deviation of the pixel noise added to object and background colours."""


# --------------------------------------------------------------------------- the network


class ShapeClassifier(nn.Module):
    """CNN over (N, 3, S, S) images in [0, 1] → 4 classes (background, circle, square, triangle).

    Three convolutions (the first with stride 2, then a max-pool; no normalisation layers, which
    are slow on a busy CPU), global average and max pooling, a 64-unit hidden layer (the
    features used for KID) and a linear head. Images wider than 32 pixels are average-pooled to
    about 32 first, so 64×64 costs the same as 32×32.
    """

    def __init__(self, size: int, width: int = 16) -> None:
        super().__init__()
        if size < 8:
            raise EconError(f"the shape classifier needs images of at least 8×8, got {size}")
        self.size = int(size)
        self.width = int(width)
        self.downsample = max(1, self.size // 32)
        self.info: dict[str, Any] = {}

        self.body = nn.Sequential(
            nn.Conv2d(3, width, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1),
            nn.ReLU(),
        )
        self.hidden = nn.Sequential(nn.Linear(8 * width, FEATURE_DIM), nn.ReLU())
        self.head = nn.Linear(FEATURE_DIM, N_CLASSES)

    @property
    def accuracy(self) -> float | None:
        """Held-out accuracy measured after training (None if unknown)."""
        value = self.info.get("accuracy")
        return None if value is None else float(value)

    def embed(self, images: Tensor) -> Tensor:
        """Penultimate-layer features (N, 64) of float images (N, 3, S, S)."""
        if self.downsample > 1:
            images = F.avg_pool2d(images, self.downsample)
        maps = self.body(images)
        pooled = torch.cat([maps.mean(dim=(2, 3)), maps.amax(dim=(2, 3))], dim=1)
        return self.hidden(pooled)

    def forward(self, images: Tensor) -> Tensor:
        """Class logits (N, 4)."""
        return self.head(self.embed(images))

    # --- numpy-friendly inference -------------------------------------------------------

    def _as_batch(self, images: np.ndarray | Tensor) -> Tensor:
        tensor = torch.as_tensor(np.asarray(images) if isinstance(images, np.ndarray) else images)
        if tensor.ndim != 4 or tensor.shape[1] != 3:
            raise EconError(
                f"the classifier expects float images (N, 3, H, W), got {tuple(tensor.shape)}"
            )
        if tuple(tensor.shape[2:]) != (self.size, self.size):
            raise EconError(
                f"this classifier was trained on {self.size}×{self.size} images, got "
                f"{tensor.shape[2]}×{tensor.shape[3]}"
            )
        if not tensor.is_floating_point():
            raise EconError(f"the classifier expects float images in [0, 1], got {tensor.dtype}")
        return tensor.float()

    @torch.no_grad()
    def _run(self, images: np.ndarray | Tensor, features: bool, batch_size: int) -> np.ndarray:
        tensor = self._as_batch(images)
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        try:
            with one_thread():
                outputs = [
                    (self.embed if features else self.forward)(tensor[i : i + batch_size].to(device))
                    for i in range(0, len(tensor), batch_size)
                ]
        finally:
            self.train(was_training)
        if not outputs:
            return np.zeros((0, FEATURE_DIM if features else N_CLASSES), np.float32)
        return torch.cat(outputs).cpu().numpy()

    def predict(self, images: np.ndarray | Tensor, batch_size: int = 512) -> np.ndarray:
        """Class per image, int64 (N,), of float images (N, 3, S, S) in [0, 1]."""
        return self._run(images, False, batch_size).argmax(axis=1).astype(np.int64)

    def predict_proba(self, images: np.ndarray | Tensor, batch_size: int = 512) -> np.ndarray:
        """Class probabilities, float32 (N, 4)."""
        logits = torch.from_numpy(self._run(images, False, batch_size))
        return torch.softmax(logits, dim=1).numpy()

    def features(self, images: np.ndarray | Tensor, batch_size: int = 512) -> np.ndarray:
        """Penultimate-layer features, float32 (N, 64), of float images (N, 3, S, S)."""
        return self._run(images, True, batch_size)


# --------------------------------------------------------------------------- training data


def _min_size_fraction(size: int) -> float:
    """Smallest object as a fraction of the side: 20 %, but at least 5 pixels."""
    return max(0.2, 5.0 / size)


def _random_colours(n: int, rng: np.random.Generator) -> np.ndarray:
    """float32 (n, 3) colours in [0, 1] with at least one channel >= 0.4 (visible on black)."""
    colours = rng.uniform(0.0, 1.0, size=(n, 3))
    bright = rng.integers(0, 3, size=n)
    colours[np.arange(n), bright] = rng.uniform(0.4, 1.0, size=n)
    return colours.astype(np.float32)


def render_shape_dataset(size: int, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Balanced labelled renders for the classifier.

    Class 0: a plain image of one random colour; classes 1-3: one circle, square or triangle
    (amodal ground-truth mask of the scene generator, side 20-60 % of the image) in a random
    colour on a black canvas. Colours carry small pixel noise.

    Returns:
        images float32 (n, 3, size, size) in [0, 1], labels int64 (n,) in 0..3.
    """
    if n < N_CLASSES:
        raise EconError(f"need at least {N_CLASSES} renders (one per class), got {n}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % N_CLASSES)
    masks = np.ones((n, size, size), dtype=bool)
    for cls in OBJECT_CLASSES:
        index = np.flatnonzero(labels == cls)
        spec = SceneSpec.preset(
            "random",
            size=size,
            classes=(cls,),
            min_size=_min_size_fraction(size),
            max_size=MAX_SIZE_FRACTION,
        )
        scenes = generate(spec, len(index), seed=int(rng.integers(0, 2**31)))
        masks[index] = scenes.shapes[:, 1]
    colours = _random_colours(n, rng)
    noise = rng.normal(0.0, NOISE, size=(n, 3, size, size)).astype(np.float32)
    images = np.clip(colours[:, :, None, None] + noise, 0.0, 1.0) * masks[:, None]
    return torch.from_numpy(images.astype(np.float32)), torch.from_numpy(labels.astype(np.int64))


# --------------------------------------------------------------------------- training


def train_classifier(
    size: int,
    *,
    n_train: int = DEFAULT_N_TRAIN,
    epochs: int = DEFAULT_EPOCHS,
    n_test: int = 1000,
    batch_size: int = 64,
    lr: float = 1e-2,
    seed: int = 0,
    progress: bool = False,
) -> ShapeClassifier:
    """Train a :class:`ShapeClassifier` on fresh renders with a fixed seed (deterministic on
    one device) and measure its accuracy on ``n_test`` held-out renders (``.accuracy``)."""
    if epochs < 1:
        raise EconError(f"epochs must be >= 1, got {epochs}")
    start = time.perf_counter()
    images, labels = render_shape_dataset(size, n_train, seed)
    with torch.random.fork_rng(devices=[]), one_thread():
        torch.manual_seed(seed)
        model = ShapeClassifier(size)
        generator = torch.Generator().manual_seed(seed)
        steps_per_epoch = -(-n_train // batch_size)
        optimiser = torch.optim.Adam(model.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimiser, max_lr=lr, total_steps=epochs * steps_per_epoch
        )
        model.train()
        bar = tqdm(
            total=epochs * steps_per_epoch, disable=not progress, desc="training shape classifier"
        )
        with bar:
            for _ in range(epochs):
                order = torch.randperm(n_train, generator=generator)
                for i in range(0, n_train, batch_size):
                    batch = order[i : i + batch_size]
                    x = images[batch]
                    flip = torch.rand(len(batch), generator=generator) < 0.5
                    x = torch.where(flip[:, None, None, None], x.flip(3), x)  # shapes are symmetric
                    loss = F.cross_entropy(model(x), labels[batch])
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                    schedule.step()
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    accuracy = classifier_accuracy(model, n=n_test, seed=seed + HELD_OUT_SEED_OFFSET)
    model.info = {
        "version": CLASSIFIER_VERSION,
        "size": size,
        "width": model.width,
        "n_train": n_train,
        "epochs": epochs,
        "seed": seed,
        "accuracy": accuracy,
        "n_test": n_test,
        "train_seconds": time.perf_counter() - start,
    }
    return model


def classifier_accuracy(classifier: ShapeClassifier, n: int = 1000, seed: int = 1) -> float:
    """Accuracy on ``n`` renders drawn with ``seed`` (use a seed not used for training)."""
    images, labels = render_shape_dataset(classifier.size, n, seed)
    return float((classifier.predict(images) == labels.numpy()).mean())


# --------------------------------------------------------------------------- cache


def cache_directory(cache_dir: Path | str | None = None) -> Path:
    """``cache_dir`` if given, else ``$ECON_CACHE``, else ``~/.cache/econ-scenes``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "econ-scenes"


def classifier_path(size: int, cache_dir: Path | str | None = None) -> Path:
    """Where the classifier for ``size``×``size`` images is cached."""
    return cache_directory(cache_dir) / f"classifier-{size}-v{CLASSIFIER_VERSION}.safetensors"


def shipped_classifier_path(size: int) -> Path:
    """Where the package keeps its trained classifier for ``size``×``size`` images (present for
    the sizes the shipped models use)."""
    return Path(__file__).parent / "weights" / f"classifier-{size}-v{CLASSIFIER_VERSION}.safetensors"


def save_classifier(classifier: ShapeClassifier, path: Path | str) -> None:
    """Write the weights and ``info`` (as safetensors metadata) atomically."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in classifier.state_dict().items()}
    metadata = {"info": json.dumps({**classifier.info, "size": classifier.size,
                                    "width": classifier.width})}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_classifier(path: Path | str) -> ShapeClassifier:
    """Read a classifier written by :func:`save_classifier`."""
    path = Path(path)
    if not path.is_file():
        raise EconError(f"no classifier at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            info = json.loads((handle.metadata() or {})["info"])
            state = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        model = ShapeClassifier(int(info["size"]), int(info["width"]))
        model.load_state_dict(state)
    except (SafetensorError, KeyError, ValueError, RuntimeError, OSError) as error:
        raise EconError(f"cannot read classifier {path}: {error}") from error
    model.info = info
    return model.eval()


def load_or_train_classifier(
    size: int,
    cache_dir: Path | str | None = None,
    *,
    progress: bool = False,
    **train_options: Any,
) -> ShapeClassifier:
    """The classifier for ``size``×``size`` images: the package's own where it ships one for
    that size, else the cached one, trained and cached on first use. ``info["source"]`` says
    which (``shipped``, ``cache`` or ``trained``); evaluation reports it with its scores.

    ``train_options`` (``n_train``, ``epochs``, ``seed`` ...) only matter when a classifier is
    trained; they skip the shipped one, but an existing cache file is used as is. An unreadable
    shipped or cache file is skipped with a warning (a cache file is then retrained and replaced).
    """
    if not train_options:
        shipped = _load_if_valid(shipped_classifier_path(size), size, "shipped")
        if shipped is not None:
            return shipped
    path = classifier_path(size, cache_dir)
    cached = _load_if_valid(path, size, "cache")
    if cached is not None:
        return cached
    if progress:
        print(f"training the {size}×{size} shape classifier (cached in {path})", file=sys.stderr)
    classifier = train_classifier(size, progress=progress, **train_options)
    save_classifier(classifier, path)
    classifier.info = {**classifier.info, "source": "trained"}
    return classifier


def _load_if_valid(path: Path, size: int, source: str) -> ShapeClassifier | None:
    """The classifier at ``path`` if it is readable and made for ``size``, else None."""
    if not path.is_file():
        return None
    try:
        classifier = load_classifier(path)
    except EconError as error:
        print(f"warning: {error}; not used", file=sys.stderr)
        return None
    if classifier.size != size:
        return None
    classifier.info = {**classifier.info, "source": source}
    return classifier
