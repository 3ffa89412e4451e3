"""Dead-leaves scene generator (paper section 2, Appendix C.1).

A scene is built back to front: layer 0 is a uniformly coloured background (its shape is the
whole canvas), then ``n_objects`` circles, squares and upright triangles are placed on top, each
entirely inside the image. Later layers occlude earlier ones::

    x ← m_t ⊙ x_t + (1 − m_t) ⊙ x,    t = 0, …, T

Geometry is on the pixel grid: pixel ``(row, col)`` has its centre at ``(row + 0.5, col + 0.5)``
and belongs to a shape when its centre does. An object of size ``s`` (an integer number of pixels)
has its bounding box ``[x, x + s] × [y, y + s]`` with integer ``0 ≤ x, y ≤ S − s``: a circle of
diameter ``s``, an axis-aligned square of side ``s`` (exactly ``s × s`` pixels) or a triangle with
base and height ``s``, apex at the top.

Everything is vectorised over whole batches; the random layout of all scenes is drawn up front
from ``np.random.default_rng(seed)`` and only the rasterisation runs in chunks, so the result
does not depend on the chunk size or on the progress bar.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from econ_scenes.errors import EconError

CLASS_NAMES = ("background", "circle", "square", "triangle")
"""Class id → name; 0 is the background, objects are 1..3; padding layers use -1."""

BACKGROUND, CIRCLE, SQUARE, TRIANGLE = 0, 1, 2, 3
PAD_CLASS = -1
OBJECT_CLASSES = (CIRCLE, SQUARE, TRIANGLE)
COLOUR_MODES = ("unique", "random", "near_background")
PRESETS = ("unique", "random", "ood")
PAPER_SPLITS = {"train": 50_000, "validation": 100}
"""Number of scenes in the paper's splits (Appendix C.1)."""

UNIQUE_COLOURS = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
"""Colour per class id in the ``unique`` colour mode (row 0 is unused)."""

BACKGROUND_RANGE = (0, 127)
RANDOM_RANGE = (128, 255)
NEAR_BACKGROUND_DELTA = (8, 40)
"""Per-channel distance of a ``near_background`` object colour from the background colour."""

MIN_IMAGE_SIZE = 8
MIN_OBJECT_PIXELS = 3
MAX_OBJECTS = 32
CHUNK = 1024
"""Scenes rasterised at once; bounds the memory of the float intermediates."""


@dataclass(frozen=True)
class SceneSpec:
    """Settings of the scene generator.

    Attributes
    ----------
    size : int
        Image side S in pixels (square images).
    n_objects : int
        Objects per scene (the number of layers is ``n_objects + 1``).
    classes : tuple of int
        Object classes to draw from, a subset of ``(1, 2, 3)`` (circle, square, triangle).
    repeat_classes : bool
        Draw classes with replacement (several objects of one class); otherwise every object of
        a scene has a different class and ``n_objects <= len(classes)``.
    colour_mode : str
        ``unique`` (red circles, green squares, blue triangles), ``random`` (each channel an
        integer in 128..255) or ``near_background`` (each channel 8..40 away from the
        background's).
    colour_mix : float
        In ``random`` mode, a in [0, 1]: each object's colour is (1 − a)·its ``unique`` class
        colour + a·a random colour, rounded; 1 (the default) is the paper's random colours, and
        lower values leave colour a partial cue to the class (a curriculum from ``unique`` to
        ``random``: docs/competition.md).
    min_size, max_size : float
        Range of the object size (bounding-box side) as a fraction of ``size``.
    min_objects : int or None
        When set, the number of objects per scene is uniform in ``min_objects..n_objects`` and
        the missing layers are padding (empty shape, class -1, colour 0).
    """

    size: int = 64
    n_objects: int = 3
    classes: tuple[int, ...] = OBJECT_CLASSES
    repeat_classes: bool = False
    colour_mode: str = "unique"
    colour_mix: float = 1.0
    min_size: float = 0.3
    max_size: float = 0.5
    min_objects: int | None = None

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> SceneSpec:
        """Return a named preset (``unique``, ``random`` or ``ood``) with fields overridden.

        ``ood`` is the out-of-distribution data of Fig. 8: five randomly coloured objects whose
        classes repeat; ``colour_mode="near_background"`` adds the third condition. ``unique``
        and ``random`` have one object of each class, so overriding ``classes`` alone also sets
        ``n_objects`` to the number of classes.
        """
        presets: dict[str, dict[str, Any]] = {
            "unique": {},
            "random": {"colour_mode": "random"},
            "ood": {"n_objects": 5, "repeat_classes": True, "colour_mode": "random"},
        }
        if name not in presets:
            raise EconError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        values = {**presets[name], **overrides}
        if "classes" in overrides and "n_objects" not in values:
            values["n_objects"] = len(parse_classes(overrides["classes"]))
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SceneSpec:
        """Build and validate a spec from a dict (e.g. the JSON stored with a dataset)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise EconError(f"unknown scene setting(s): {', '.join(unknown)}")
        values = dict(values)
        if "classes" in values:
            values["classes"] = parse_classes(values["classes"])
        spec = cls(**values)
        spec.validate()
        return spec

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the settings."""
        values = dataclasses.asdict(self)
        values["classes"] = list(self.classes)
        if self.colour_mix == 1.0:  # the default: left out, so earlier versions read the file
            del values["colour_mix"]
        return values

    @property
    def n_layers(self) -> int:
        """Layers per scene, background included."""
        return self.n_objects + 1

    def size_range_px(self) -> tuple[int, int]:
        """Smallest and largest object size in whole pixels."""
        return math.ceil(self.min_size * self.size - 1e-9), math.floor(self.max_size * self.size)

    def validate(self) -> None:
        """Raise :class:`EconError` naming the first invalid setting."""
        self._validate_image()
        self._validate_objects()
        if self.colour_mode not in COLOUR_MODES:
            raise EconError(
                f"unknown colour mode {self.colour_mode!r}; choose one of {', '.join(COLOUR_MODES)}"
            )
        if isinstance(self.colour_mix, bool) or not isinstance(self.colour_mix, (int, float)):
            raise EconError(f"colour_mix must be a number in [0, 1], got {self.colour_mix!r}")
        if not 0.0 <= self.colour_mix <= 1.0:
            raise EconError(f"colour_mix must be in [0, 1], got {self.colour_mix}")
        if self.colour_mix != 1.0 and self.colour_mode != "random":
            raise EconError(f"colour_mix mixes class colours into random ones; it needs colour "
                            f"mode random, got {self.colour_mode!r}")

    def _validate_image(self) -> None:
        if not _is_int(self.size) or self.size < MIN_IMAGE_SIZE:
            raise EconError(f"image size must be an integer >= {MIN_IMAGE_SIZE}, got {self.size}")
        if not 0 < self.min_size <= self.max_size <= 1:
            raise EconError(
                "object sizes need 0 < min_size <= max_size <= 1 (fractions of the image side), "
                f"got min_size={self.min_size}, max_size={self.max_size}"
            )
        low, high = self.size_range_px()
        if self.min_size * self.size < MIN_OBJECT_PIXELS:
            raise EconError(
                f"objects too small: min_size * size = {self.min_size * self.size:.3g} px, "
                f"need >= {MIN_OBJECT_PIXELS} px (raise --min-size or --size)"
            )
        if low > high:
            raise EconError(
                "no whole-pixel object size between min_size * size = "
                f"{self.min_size * self.size:.3g} and max_size * size = "
                f"{self.max_size * self.size:.3g}"
            )

    def _validate_objects(self) -> None:
        if not _is_int(self.n_objects) or not 1 <= self.n_objects <= MAX_OBJECTS:
            raise EconError(f"n_objects must be in 1..{MAX_OBJECTS}, got {self.n_objects}")
        if self.min_objects is not None and (
            not _is_int(self.min_objects) or not 0 <= self.min_objects <= self.n_objects
        ):
            raise EconError(
                f"min_objects must be in 0..n_objects={self.n_objects}, got {self.min_objects}"
            )
        parse_classes(self.classes)
        if not self.repeat_classes and self.n_objects > len(self.classes):
            raise EconError(
                f"{self.n_objects} objects with {len(self.classes)} class(es) need repeated "
                "classes (--repeat-classes)"
            )


@dataclass(frozen=True)
class Scenes:
    """A batch of layered scenes; layers are ordered back to front, layer 0 is the background.

    Attributes
    ----------
    images : np.ndarray
        uint8, shape (N, H, W, 3): the composed images.
    shapes : np.ndarray
        bool, shape (N, L, H, W): amodal (unoccluded) shape masks; layer 0 is all True,
        padding layers all False.
    classes : np.ndarray
        int64, shape (N, L): class per layer (0 background, 1 circle, 2 square, 3 triangle,
        -1 padding).
    colors : np.ndarray
        uint8, shape (N, L, 3): colour per layer (layer 0 the background colour, padding 0).
    """

    images: np.ndarray
    shapes: np.ndarray
    classes: np.ndarray
    colors: np.ndarray

    def __post_init__(self) -> None:
        check_structure(self.images, self.shapes, self.classes, self.colors)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_layers(self) -> int:
        """Layers per scene L (background included)."""
        return int(self.shapes.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """Image height and width."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    def visible(self) -> np.ndarray:
        """Visible regions, bool (N, L, H, W): disjoint and covering every pixel."""
        return visible_regions(np.asarray(self.shapes))

    def regions_front_first(self) -> np.ndarray:
        """Visible regions as float32 (N, L, H, W) in inference order (front layer first): the
        regions given to a model trained with ground-truth masks."""
        return np.ascontiguousarray(self.visible()[:, ::-1], dtype=np.float32)

    def subset(self, index: int | slice | np.ndarray | list[int]) -> Scenes:
        """Scenes selected by an int, a slice, integer indices or a boolean mask."""
        if _is_int(index):
            index = [int(index)]
        return Scenes(
            images=self.images[index],
            shapes=self.shapes[index],
            classes=self.classes[index],
            colors=self.colors[index],
        )


@dataclass(frozen=True)
class Layout:
    """Random parameters of N scenes with O object slots (slot j is layer j + 1).

    Attributes
    ----------
    classes : np.ndarray
        int64 (N, O), object class per slot, -1 for padding.
    sizes, x, y : np.ndarray
        int64 (N, O): object size and bounding-box left column / top row in pixels (0 for
        padding); ``0 <= x, y <= S - size``.
    object_colors : np.ndarray
        uint8 (N, O, 3), colour per slot (0 for padding).
    background : np.ndarray
        uint8 (N, 3), background colour.
    """

    classes: np.ndarray
    sizes: np.ndarray
    x: np.ndarray
    y: np.ndarray
    object_colors: np.ndarray
    background: np.ndarray

    def __len__(self) -> int:
        return int(self.classes.shape[0])

    def slice(self, start: int, stop: int) -> Layout:
        """Scenes ``start:stop`` of the layout."""
        return Layout(*(getattr(self, f.name)[start:stop] for f in dataclasses.fields(self)))


def generate(spec: SceneSpec, n: int, seed: int, progress: bool = False) -> Scenes:
    """Generate ``n`` scenes; the same spec, ``n`` and seed give identical bytes.

    Parameters
    ----------
    spec : SceneSpec
        Generator settings (validated here).
    n : int
        Number of scenes, >= 1.
    seed : int
        Non-negative seed of ``np.random.default_rng``.
    progress : bool
        Show a tqdm progress bar over the chunks (does not change the result).

    Returns
    -------
    Scenes
        images (n, S, S, 3), shapes (n, L, S, S), classes (n, L), colors (n, L, 3) with
        ``L = spec.n_objects + 1``.
    """
    spec.validate()
    if not _is_int(n) or n < 1:
        raise EconError(f"number of scenes must be a positive integer, got {n}")
    layout = sample_layout(spec, int(n), make_rng(seed))
    return render_layout(layout, spec.size, progress=progress)


def make_rng(seed: int) -> np.random.Generator:
    """``np.random.default_rng(seed)`` with an :class:`EconError` for a bad seed."""
    if not _is_int(seed) or seed < 0:
        raise EconError(f"seed must be a non-negative integer, got {seed}")
    return np.random.default_rng(int(seed))


def sample_layout(spec: SceneSpec, n: int, rng: np.random.Generator) -> Layout:
    """Draw classes, sizes, positions and colours of ``n`` scenes (no rasterisation)."""
    classes = _sample_classes(spec, n, rng)
    low, high = spec.size_range_px()
    sizes = rng.integers(low, high, size=classes.shape, endpoint=True)
    x = rng.integers(0, spec.size - sizes, endpoint=True)
    y = rng.integers(0, spec.size - sizes, endpoint=True)
    background = rng.integers(*BACKGROUND_RANGE, size=(n, 3), endpoint=True)
    colours = _sample_colours(spec.colour_mode, classes, background, rng)
    if spec.colour_mix < 1.0:
        cue = UNIQUE_COLOURS[np.clip(classes, 0, None)].astype(np.float64)
        colours = np.rint((1.0 - spec.colour_mix) * cue + spec.colour_mix * colours)
    pad = classes == PAD_CLASS
    for values in (sizes, x, y):
        values[pad] = 0
    colours[pad] = 0
    return Layout(
        classes=classes.astype(np.int64),
        sizes=sizes.astype(np.int64),
        x=x.astype(np.int64),
        y=y.astype(np.int64),
        object_colors=colours.astype(np.uint8),
        background=background.astype(np.uint8),
    )


def _sample_classes(spec: SceneSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    """Class per object slot, int64 (n, O); a uniformly random depth order; -1 for padding."""
    pool = np.asarray(spec.classes, dtype=np.int64)
    if spec.repeat_classes:
        picks = rng.integers(0, len(pool), size=(n, spec.n_objects))
    else:
        picks = np.argsort(rng.random((n, len(pool))), axis=1)[:, : spec.n_objects]
    classes = pool[picks]
    if spec.min_objects is not None and spec.min_objects < spec.n_objects:
        counts = rng.integers(spec.min_objects, spec.n_objects, size=n, endpoint=True)
        classes[np.arange(spec.n_objects)[None, :] >= counts[:, None]] = PAD_CLASS
    return classes


def _sample_colours(
    mode: str, classes: np.ndarray, background: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Object colours, int64 (n, O, 3), for ``classes`` (n, O) on ``background`` (n, 3)."""
    shape = (*classes.shape, 3)
    if mode == "unique":
        return UNIQUE_COLOURS[np.clip(classes, 0, None)].astype(np.int64)
    if mode == "random":
        return rng.integers(*RANDOM_RANGE, size=shape, endpoint=True)
    delta = rng.integers(*NEAR_BACKGROUND_DELTA, size=shape, endpoint=True)
    darker = rng.random(shape) < 0.5
    base = background[:, None, :].astype(np.int64)
    darker &= base - delta >= 0  # flip rather than clip, so every channel keeps its distance
    return np.where(darker, base - delta, base + delta)


def render_layout(layout: Layout, size: int, progress: bool = False) -> Scenes:
    """Rasterise a layout into :class:`Scenes`, chunk by chunk."""
    n, n_slots = layout.classes.shape
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    shapes = np.empty((n, n_slots + 1, size, size), dtype=bool)
    for start, stop in _chunks(n, progress):
        part = layout.slice(start, stop)
        shapes[start:stop] = render_shapes(part, size)
        images[start:stop] = compose_layers(shapes[start:stop], layer_colors(part))
    classes = np.concatenate([np.zeros((n, 1), np.int64), layout.classes], axis=1)
    return Scenes(images=images, shapes=shapes, classes=classes, colors=layer_colors(layout))


def _chunks(n: int, progress: bool) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive chunks of at most ``CHUNK`` scenes."""
    with tqdm(total=n, disable=not progress, unit="scene", desc="generating") as bar:
        for start in range(0, n, CHUNK):
            stop = min(start + CHUNK, n)
            yield start, stop
            bar.update(stop - start)


def layer_colors(layout: Layout) -> np.ndarray:
    """Colour per layer, uint8 (N, O + 1, 3): the background, then the objects."""
    return np.concatenate([layout.background[:, None, :], layout.object_colors], axis=1)


def render_shapes(layout: Layout, size: int) -> np.ndarray:
    """Amodal masks of a layout, bool (N, O + 1, S, S); layer 0 (background) is all True."""
    n, n_slots = layout.classes.shape
    shapes = np.zeros((n, n_slots + 1, size, size), dtype=bool)
    shapes[:, 0] = True
    for cls, rasterise in RASTERISERS.items():
        scene, slot = np.nonzero(layout.classes == cls)
        if scene.size:
            sizes = layout.sizes[scene, slot].astype(np.float32)
            x = layout.x[scene, slot].astype(np.float32)
            y = layout.y[scene, slot].astype(np.float32)
            shapes[scene, slot + 1] = rasterise(x, y, sizes, size)
    return shapes


def _pixel_offsets(start: np.ndarray, size: int, axis: str) -> np.ndarray:
    """Pixel-centre coordinates relative to ``start``: (M, 1, S) for columns, (M, S, 1) rows."""
    centres = np.arange(size, dtype=np.float32) + np.float32(0.5)
    offsets = centres[None, :] - start[:, None]
    return offsets[:, None, :] if axis == "x" else offsets[:, :, None]


def rasterise_circle(x: np.ndarray, y: np.ndarray, sizes: np.ndarray, size: int) -> np.ndarray:
    """Discs of diameter ``sizes`` in boxes at ``(x, y)``; inputs (M,), output bool (M, S, S)."""
    radius = sizes / 2
    dx = _pixel_offsets(x + radius, size, "x")
    dy = _pixel_offsets(y + radius, size, "y")
    return dx * dx + dy * dy <= (radius * radius)[:, None, None]


def rasterise_square(x: np.ndarray, y: np.ndarray, sizes: np.ndarray, size: int) -> np.ndarray:
    """Axis-aligned squares of side ``sizes``; inputs (M,), output bool (M, S, S)."""
    dx = _pixel_offsets(x, size, "x")
    dy = _pixel_offsets(y, size, "y")
    side = sizes[:, None, None]
    return (dx >= 0) & (dx <= side) & (dy >= 0) & (dy <= side)


def rasterise_triangle(x: np.ndarray, y: np.ndarray, sizes: np.ndarray, size: int) -> np.ndarray:
    """Upright triangles (apex on top) with base = height = ``sizes``; output bool (M, S, S)."""
    dx = _pixel_offsets(x + sizes / 2, size, "x")
    depth = _pixel_offsets(y, size, "y")  # distance below the apex
    height = sizes[:, None, None]
    return (depth >= 0) & (depth <= height) & (2 * np.abs(dx) <= depth)


RASTERISERS = {CIRCLE: rasterise_circle, SQUARE: rasterise_square, TRIANGLE: rasterise_triangle}


def top_layer(shapes: np.ndarray) -> np.ndarray:
    """Index of the front-most layer covering each pixel (the painter's algorithm).

    Parameters
    ----------
    shapes : np.ndarray
        bool, shape (..., L, H, W), back to front.

    Returns
    -------
    np.ndarray
        intp, shape (..., H, W); -1 where no layer covers the pixel.
    """
    shapes = _as_layers(shapes, "top_layer")
    top = np.full((*shapes.shape[:-3], *shapes.shape[-2:]), -1, dtype=np.intp)
    for layer in range(shapes.shape[-3]):
        top[shapes[..., layer, :, :]] = layer
    return top


def compose_layers(shapes: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Dead-leaves composition ``x ← m_t ⊙ x_t + (1 − m_t) ⊙ x`` from an empty (black) canvas.

    Parameters
    ----------
    shapes : np.ndarray
        bool, shape (..., L, H, W), back to front.
    colors : np.ndarray
        uint8, shape (..., L, 3).

    Returns
    -------
    np.ndarray
        uint8, shape (..., H, W, 3).
    """
    shapes = _as_layers(shapes, "compose_layers")
    colors = np.asarray(colors)
    if colors.shape != (*shapes.shape[:-2], 3):
        raise EconError(
            f"compose_layers needs colors (..., L, 3) matching shapes (..., L, H, W), "
            f"got {colors.shape} and {shapes.shape}"
        )
    n_layers, height, width = shapes.shape[-3:]
    top = top_layer(shapes).reshape(-1, height, width)
    # One palette row per layer plus a black row last, which index -1 (uncovered) selects.
    palette = np.zeros((top.shape[0], n_layers + 1, 3), dtype=np.uint8)
    palette[:, :n_layers] = colors.reshape(-1, n_layers, 3)
    scene = np.arange(top.shape[0])[:, None, None]
    return palette[scene, top].reshape(*shapes.shape[:-3], height, width, 3)


def visible_regions(shapes: np.ndarray) -> np.ndarray:
    """Visible regions ``r_t = m_t ⊙ s_t`` (eq. 1-2) of amodal shapes.

    Parameters
    ----------
    shapes : np.ndarray
        bool, shape (..., L, H, W), back to front.

    Returns
    -------
    np.ndarray
        bool, shape (..., L, H, W): the pixels of each shape not covered by a later layer.
        Disjoint; they cover every pixel covered by any shape (all pixels when layer 0 is the
        background).
    """
    shapes = _as_layers(shapes, "visible_regions")
    layers = np.arange(shapes.shape[-3])[:, None, None]
    return top_layer(shapes)[..., None, :, :] == layers


def _as_layers(shapes: np.ndarray, caller: str) -> np.ndarray:
    shapes = np.asarray(shapes, dtype=bool)
    if shapes.ndim < 3:
        raise EconError(f"{caller} needs shapes (..., L, H, W), got {shapes.shape}")
    return shapes


ARRAY_DTYPES = {"images": np.uint8, "shapes": np.bool_, "classes": np.int64, "colors": np.uint8}


def check_structure(
    images: np.ndarray, shapes: np.ndarray, classes: np.ndarray, colors: np.ndarray
) -> None:
    """Check dtypes and shape consistency of scene arrays (reads no data).

    Raises
    ------
    EconError
        Naming the array and what is wrong with it.
    """
    arrays = {"images": images, "shapes": shapes, "classes": classes, "colors": colors}
    for name, array in arrays.items():
        if not isinstance(array, np.ndarray):
            raise EconError(f"{name} must be a numpy array, got {type(array).__name__}")
        if array.dtype != ARRAY_DTYPES[name]:
            raise EconError(
                f"{name} must have dtype {np.dtype(ARRAY_DTYPES[name])}, got {array.dtype}"
            )
    if images.ndim != 4 or images.shape[3] != 3:
        raise EconError(f"images must have shape (N, H, W, 3), got {images.shape}")
    n, height, width, _ = images.shape
    expected = {
        "shapes": (n, None, height, width),
        "classes": (n, None),
        "colors": (n, None, 3),
    }
    n_layers = shapes.shape[1] if shapes.ndim == 4 else None
    for name, pattern in expected.items():
        wanted = tuple(n_layers if dim is None else dim for dim in pattern)
        if arrays[name].shape != wanted or n_layers is None or n_layers < 1:
            raise EconError(
                f"{name} has shape {arrays[name].shape}, inconsistent with images "
                f"{images.shape} and shapes {shapes.shape} (expected {wanted})"
            )


def check_content(scenes: Scenes) -> None:
    """Check that the scene arrays agree with each other (reads all data).

    Layer 0 must be an all-True background of class 0, object classes in 1..3, padding layers
    (class -1) empty and black, and the images equal to the composition of shapes and colours.
    """
    classes = np.asarray(scenes.classes)
    if len(scenes) == 0:
        return
    if np.any(classes[:, 0] != BACKGROUND) or not np.all(scenes.shapes[:, 0]):
        raise EconError("layer 0 must be the background: class 0 with an all-True shape")
    objects = classes[:, 1:]
    if np.any((objects != PAD_CLASS) & ((objects < CIRCLE) | (objects > TRIANGLE))):
        raise EconError("object layers must have class 1..3 (or -1 for padding)")
    pad = np.concatenate([np.zeros_like(classes[:, :1], bool), objects == PAD_CLASS], axis=1)
    if np.any(scenes.shapes[pad]) or np.any(np.asarray(scenes.colors)[pad]):
        raise EconError("padding layers (class -1) must have empty shapes and colour 0")
    if not np.array_equal(compose_layers(scenes.shapes, scenes.colors), scenes.images):
        raise EconError("images do not match the composition of shapes and colours")


def parse_classes(classes: Any) -> tuple[int, ...]:
    """Object classes from ids or names: ``(1, 3)``, ``"circle,triangle"`` or ``"1,3"``."""
    items = classes.split(",") if isinstance(classes, str) else list(classes)
    parsed = tuple(_class_id(item) for item in items if str(item).strip() != "")
    if not parsed:
        raise EconError("at least one object class is needed (circle, square, triangle)")
    if len(set(parsed)) != len(parsed):
        raise EconError(f"object classes must not repeat, got {classes!r}")
    return parsed


def _class_id(item: Any) -> int:
    text = str(item).strip().lower()
    if text in CLASS_NAMES[1:]:
        return CLASS_NAMES.index(text)
    if text.lstrip("-").isdigit() and int(text) in OBJECT_CLASSES:
        return int(text)
    raise EconError(f"unknown object class {item!r}; use circle, square, triangle (or 1, 2, 3)")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
