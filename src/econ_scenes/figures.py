"""The paper's figures (Fig. 1, 4, 5, 6, 7, 8), drawn from results only.

Every ``fig*`` function takes numpy arrays, tensors, :class:`~econ_scenes.types.Decomposition`
or :class:`~econ_scenes.types.Composition` (never the model), returns a matplotlib
:class:`~matplotlib.figure.Figure` on an Agg canvas (no pyplot state, so nothing leaks between
calls) and leaves writing to :func:`save`. :func:`make_all` runs a
:class:`~econ_scenes.scene.SceneModel` (samples, compositions, decompositions) and writes
every PNG.

Images are accepted as uint8 (…, H, W, 3) or float (…, 3, H, W) in [0, 1]; objects are drawn
on a grey checkerboard wherever their shape or region is empty, so that shapes stay visible
on dark objects and backgrounds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from econ_scenes.data import Scenes, SceneSpec, generate
from econ_scenes.errors import EconError
from econ_scenes.io import atomic_write
from econ_scenes.types import Composition, Decomposition

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from econ_scenes.scene import SceneModel, SequencePrior

Array = np.ndarray | Tensor
Grid = Sequence[Sequence[np.ndarray | None]]

FILES = {
    "fig1a": "fig1a_training_scenes.png",
    "fig1b": "fig1b_expert_samples.png",
    "fig1c": "fig1c_compositions.png",
    "fig4": "fig4_decomposition.png",
    "fig5": "fig5_single_expert.png",
    "fig6": "fig6_expert_samples.png",
    "fig7": "fig7_layered_sampling.png",
    "fig8": "fig8_ood.png",
}
"""Figure → file name written by :func:`make_all`."""

PANEL_INCHES = 1.0
GAP_INCHES = 0.08
CAPTION_INCHES = 0.2
COLUMN_TITLE_INCHES = 0.28
BLOCK_TITLE_INCHES = 0.32
BLOCK_GAP_INCHES = 0.15
TITLE_INCHES = 0.45
LABEL_INCHES = 0.85
MARGIN_INCHES = 0.1
DPI = 100
CHECKER_TONES = (0.78, 0.62)
FIG4_COLUMNS = (
    r"scope $s_t$",
    r"region $r_t$",
    r"$r_t \odot x_t$",
    r"object $x_t$",
    r"shape $\tilde{m}_t$",
)
N_TRAINING_SCENES = 16
N_SAMPLES = 8
N_COMPOSITIONS = 8
N_LAYERED = 4
N_OOD_SHOWN = 4
N_OOD_GENERATED = 8
PRIOR_SCENES = 256


# --- arrays ---------------------------------------------------------------------------------
def to_rgb(images: Array) -> np.ndarray:
    """Images as float32 (…, H, W, 3) in [0, 1].

    uint8 input is taken as channels last (the data format); float input as channels first
    (…, 3, H, W), the model's layout, or channels last when the third-last axis is not 3.
    """
    array = images.detach().float().cpu().numpy() if isinstance(images, Tensor) else images
    array = np.asarray(array)
    if array.dtype == np.uint8:
        if array.shape[-1] != 3:
            raise EconError(f"uint8 images must be (…, H, W, 3), got shape {array.shape}")
        return array.astype(np.float32) / 255.0
    if array.ndim >= 3 and array.shape[-3] == 3:
        array = np.moveaxis(array, -3, -1)
    elif array.ndim < 3 or array.shape[-1] != 3:
        raise EconError(f"float images must be (…, 3, H, W) or (…, H, W, 3), got {array.shape}")
    return np.clip(array.astype(np.float32), 0.0, 1.0)


def to_map(values: Array) -> np.ndarray:
    """A per-pixel map (scope, region, shape) as float32 in [0, 1]."""
    array = values.detach().float().cpu().numpy() if isinstance(values, Tensor) else values
    return np.clip(np.asarray(array, dtype=np.float32), 0.0, 1.0)


def checkerboard(height: int, width: int) -> np.ndarray:
    """A neutral grey checkerboard (H, W, 3) with about 8 squares per side."""
    cell = max(1, min(height, width) // 8)
    rows = (np.arange(height) // cell)[:, None]
    columns = (np.arange(width) // cell)[None, :]
    tone = np.where((rows + columns) % 2 == 0, *CHECKER_TONES).astype(np.float32)
    return np.repeat(tone[..., None], 3, axis=-1)


def on_checker(appearance: Array, weight: Array) -> np.ndarray:
    """``weight ⊙ appearance + (1 − weight) ⊙ checker``.

    appearance (…, 3, H, W) or uint8 (…, H, W, 3), weight (…, H, W) → (…, H, W, 3).
    """
    rgb = to_rgb(appearance)
    alpha = to_map(weight)[..., None]
    if alpha.shape[:-1] != rgb.shape[:-1]:
        raise EconError(f"appearance {rgb.shape[:-1]} and shape {alpha.shape[:-1]} differ")
    return alpha * rgb + (1.0 - alpha) * checkerboard(*rgb.shape[-3:-1])


def expert_sample_panels(samples: Sequence[tuple[Array, Array]]) -> list[np.ndarray]:
    """Per expert, its samples drawn on the checkerboard: (n, 3, H, W), (n, H, W) → (n, H, W, 3)."""
    return [on_checker(appearance, shape) for appearance, shape in samples]


def decomposition_panels(decomposition: Decomposition, index: int) -> dict[str, np.ndarray]:
    """What Fig. 4 and Fig. 8 draw for scene ``index``, steps front first.

    scope, region, shape: (T, H, W); region_object (r_t ⊙ x_t on the checkerboard), object:
    (T, H, W, 3); reconstruction: (H, W, 3); winner: (T,).
    """
    batch = decomposition.winner.shape[0]
    if not -batch <= index < batch:
        raise EconError(f"scene index {index} out of range: the decomposition holds {batch}")
    appearance = decomposition.appearance[index]
    region = decomposition.region[index]
    return {
        "scope": to_map(decomposition.scope[index]),
        "region": to_map(region),
        "region_object": on_checker(appearance, region),
        "object": to_rgb(appearance),
        "shape": to_map(decomposition.shape[index]),
        "reconstruction": to_rgb(decomposition.reconstruction[index]),
        "winner": decomposition.winner[index].cpu().numpy(),
    }


def layered_canvases(composition: Composition) -> np.ndarray:
    """The canvas after each layer, back to front (section 2): (B, T, H, W, 3).

    x ← m_t ⊙ x_t + (1 − m_t) ⊙ x from an empty (black) canvas, so the last layer's canvas is
    ``composition.image``.
    """
    appearance = composition.appearance.detach().float().cpu()
    shape = composition.shape.detach().float().cpu().unsqueeze(2)
    canvas = torch.zeros_like(appearance[:, 0])
    steps = []
    for t in range(appearance.shape[1]):
        canvas = shape[:, t] * appearance[:, t] + (1 - shape[:, t]) * canvas
        steps.append(canvas)
    return to_rgb(torch.stack(steps, dim=1))


def layer_experts(composition: Composition) -> np.ndarray:
    """Expert per scene and layer (B, T), -1 for an empty layer."""
    experts = composition.experts.cpu().numpy()
    if experts.ndim == 1:
        experts = np.broadcast_to(experts, composition.shape.shape[:2])
    return experts


# --- drawing --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    """One grid of panels in a figure; a ``None`` cell stays empty.

    RGB panels (H, W, 3) are drawn as they are, maps (H, W) in grey (0 black, 1 white). Row
    labels go left of a row, column titles above the first row, captions under their panel and
    the title above the whole block.
    """

    grid: Grid
    row_labels: Sequence[str] | None = None
    column_titles: Sequence[str] | None = None
    captions: Sequence[Sequence[str | None]] | None = None
    title: str | None = None

    @property
    def n_columns(self) -> int:
        return max(len(row) for row in self.grid)

    def height(self) -> float:
        """Height in inches: heading, column titles and the rows with their captions."""
        rows = len(self.grid)
        caption = CAPTION_INCHES if self.captions is not None else 0.0
        return ((BLOCK_TITLE_INCHES if self.title else 0.0)
                + (COLUMN_TITLE_INCHES if self.column_titles else 0.0)
                + rows * (PANEL_INCHES + caption) + (rows - 1) * GAP_INCHES)


def grid_figure(blocks: Sequence[Block], title: str) -> Figure:
    """A figure of panel grids stacked top to bottom, on an Agg canvas.

    The layout is computed here in inches, not by a layout engine: every panel is PANEL_INCHES
    square. All panels are images of one Axes that spans the figure (data coordinates are
    inches from the top left), which draws far faster than an Axes per panel;
    ``figure.axes[0].images`` holds the panels block by block, row by row.
    """
    labels = any(b.row_labels for b in blocks)
    left = MARGIN_INCHES + (LABEL_INCHES if labels else 0.0)
    columns = max(b.n_columns for b in blocks)
    width = left + columns * PANEL_INCHES + (columns - 1) * GAP_INCHES + MARGIN_INCHES
    height = (TITLE_INCHES + sum(b.height() for b in blocks)
              + (len(blocks) - 1) * BLOCK_GAP_INCHES + MARGIN_INCHES)
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    ax = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    figure.suptitle(title, y=1 - 0.1 / height, va="top", fontsize=12)
    top = TITLE_INCHES
    for block in blocks:
        _draw_block(ax, block, left, top)
        top += block.height() + BLOCK_GAP_INCHES
    ax.set_xlim(0.0, width)
    ax.set_ylim(height, 0.0)
    return figure


def _draw_block(ax: Axes, block: Block, left: float, top: float) -> None:
    if block.title:
        centre = left + (block.n_columns * (PANEL_INCHES + GAP_INCHES) - GAP_INCHES) / 2
        ax.text(centre, top + 0.08, block.title, ha="center", va="top", fontsize=10)
        top += BLOCK_TITLE_INCHES
    if block.column_titles:
        top += COLUMN_TITLE_INCHES
    caption = CAPTION_INCHES if block.captions is not None else 0.0
    titled: set[int] = set()
    for r, row in enumerate(block.grid):
        y = top + r * (PANEL_INCHES + caption + GAP_INCHES)
        if block.row_labels and block.row_labels[r]:
            ax.text(left - 0.06, y + PANEL_INCHES / 2, block.row_labels[r], ha="right",
                    va="center", fontsize=8)
        for c, panel in enumerate(row):
            if panel is None:
                continue
            x = left + c * (PANEL_INCHES + GAP_INCHES)
            _draw_panel(ax, panel, x, y)
            if block.captions is not None and c < len(block.captions[r]) and block.captions[r][c]:
                ax.text(x + PANEL_INCHES / 2, y + PANEL_INCHES + 0.03, block.captions[r][c],
                        ha="center", va="top", fontsize=7)
            if block.column_titles and c not in titled and c < len(block.column_titles):
                ax.text(x + PANEL_INCHES / 2, y - 0.06, block.column_titles[c], ha="center",
                        va="bottom", fontsize=8)
                titled.add(c)


def _draw_panel(ax: Axes, panel: np.ndarray, x: float, y: float) -> None:
    """One image in the PANEL_INCHES square at (x, y), with a thin grey frame."""
    extent = (x, x + PANEL_INCHES, y + PANEL_INCHES, y)
    if panel.ndim == 2:
        ax.imshow(panel, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest",
                  extent=extent, aspect="auto")
    else:
        ax.imshow(panel, interpolation="nearest", extent=extent, aspect="auto")
    ax.add_patch(Rectangle((x, y), PANEL_INCHES, PANEL_INCHES, fill=False, edgecolor="0.6",
                           linewidth=0.5))


def _as_rows(images: np.ndarray, columns: int) -> list[list[np.ndarray | None]]:
    cells: list[np.ndarray | None] = list(images)
    rows = [cells[i : i + columns] for i in range(0, len(cells), columns)]
    rows[-1] = rows[-1] + [None] * (columns - len(rows[-1]))
    return rows


def _check_count(n: int, name: str) -> None:
    if n < 1:
        raise EconError(f"{name} needs at least one image")


# --- figures --------------------------------------------------------------------------------
def fig1_training_scenes(images: Array, *, n: int = N_TRAINING_SCENES, columns: int = 8,
                         title: str = "A: training scenes") -> Figure:
    """Fig. 1A: a grid of training scenes, ``images`` uint8 (N, H, W, 3) or float (N, 3, H, W)."""
    rgb = to_rgb(images)[:n]
    _check_count(len(rgb), "fig1_training_scenes")
    return grid_figure([Block(_as_rows(rgb, min(columns, len(rgb))))], title)


def fig1_expert_samples(
    samples: Sequence[tuple[Array, Array]],
    *,
    title: str = "B: samples from individual experts",
    row_labels: Sequence[str] | None = None,
    scenes: Array | None = None,
    scenes_title: str = "training scenes",
) -> Figure:
    """Fig. 1B (and Fig. 6): one row per expert, its samples μ_k(z) on the checkerboard.

    samples: per expert (appearance (n, 3, H, W), shape probability (n, H, W)), each drawn as
    shape ⊙ appearance + (1 − shape) ⊙ checker. scenes: optional training scenes shown in a
    row above the samples (as in Fig. 6), as many as there are samples per expert.
    """
    if not samples:
        raise EconError("fig1_expert_samples needs the samples of at least one expert")
    panels = expert_sample_panels(samples)
    labels = list(row_labels) if row_labels is not None else [
        f"expert {k}" for k in range(len(panels))]
    blocks = [Block([list(p) for p in panels], row_labels=labels)]
    if scenes is None:
        return grid_figure(blocks, title)
    top = to_rgb(scenes)[: blocks[0].n_columns]
    _check_count(len(top), "the scenes row")
    return grid_figure([Block([list(top)], row_labels=["data"], title=scenes_title), *blocks],
                       title)


def fig6_expert_samples(
    samples: Sequence[tuple[Array, Array]],
    *,
    title: str = "Samples from individual experts (random colours)",
    row_labels: Sequence[str] | None = None,
    scenes: Array | None = None,
) -> Figure:
    """Fig. 6: the layout of Fig. 1B for a model trained on randomly coloured scenes."""
    return fig1_expert_samples(samples, title=title, row_labels=row_labels, scenes=scenes)


def sequence_label(experts: Sequence[int] | np.ndarray) -> str:
    """Experts back to front, padding left out: ``"0·2·1"``."""
    return "·".join(str(int(k)) for k in experts if k >= 0) or "(empty)"


def fig1_compositions(
    composition_3: Composition,
    composition_4: Composition,
    training_order: Composition | None = None,
    *,
    n: int = N_COMPOSITIONS,
    title: str = "C: compositions of the experts' samples",
) -> Figure:
    """Fig. 1C: composed scenes, one row per way of choosing the layers.

    Rows: experts in an order seen in training (when given), three random objects, four random
    objects. The caption under each scene lists its experts back to front.
    """
    rows = [("training\norder", training_order)] if training_order is not None else []
    rows += [("3 random\nobjects", composition_3), ("4 random\nobjects", composition_4)]
    grid, captions = [], []
    for _, composition in rows:
        images = to_rgb(composition.image)[:n]
        _check_count(len(images), "fig1_compositions")
        grid.append(list(images))
        captions.append([sequence_label(s) for s in layer_experts(composition)[:n]])
    block = Block(grid, row_labels=[label for label, _ in rows], captions=captions)
    return grid_figure([block], title)


def fig4_decomposition(image: Array, decomposition: Decomposition, index: int, *,
                       title: str = "Decomposition from front to back") -> Figure:
    """Fig. 4: step-by-step decomposition of scene ``index`` of ``decomposition``.

    Top: the input ``image`` (one scene, uint8 (H, W, 3) or float (3, H, W)) and the full
    reconstruction Σ_t r̃_t ⊙ x_t. Then one row per inference step t' = 1..T (front first,
    labelled with the winning expert): scope s_t, region r_t, r_t ⊙ x_t (checkerboard where
    r_t = 0), object x_t and full shape m̃_t. The figure has 2 + 5T axes.
    """
    panels = decomposition_panels(decomposition, index)
    steps = len(panels["winner"])
    scene = Block([[to_rgb(image), panels["reconstruction"]]], row_labels=["scene"],
                  column_titles=["input $x$", "reconstruction"])
    grid = [
        [panels["scope"][t], panels["region"][t], panels["region_object"][t],
         panels["object"][t], panels["shape"][t]]
        for t in range(steps)
    ]
    labels = [f"$t'={t + 1}$\nexpert {int(k)}" for t, k in enumerate(panels["winner"])]
    return grid_figure([scene, Block(grid, row_labels=labels, column_titles=FIG4_COLUMNS)],
                       title)


def fig5_single_expert_samples(appearance: Array, shape: Array, *, columns: int = 8,
                               title: str = "Samples from a single expert") -> Figure:
    """Fig. 5: a grid of samples (n, 3, H, W), shapes (n, H, W) of a one-expert model."""
    panels = on_checker(appearance, shape)
    _check_count(len(panels), "fig5_single_expert_samples")
    return grid_figure([Block(_as_rows(panels, min(columns, len(panels))))], title)


def fig7_layered_sampling(composition: Composition, *, n: int = N_LAYERED,
                          title: str = "Layer-wise sampling") -> Figure:
    """Fig. 7: one row per scene, the canvas after each added layer (background first).

    The caption under each panel names the expert of the layer just added.
    """
    canvases = layered_canvases(composition)[:n]
    _check_count(len(canvases), "fig7_layered_sampling")
    experts = layer_experts(composition)[:n]
    columns = ["background" if t == 0 else f"+ object {t}" for t in range(canvases.shape[1])]
    captions = [[f"expert {k}" if k >= 0 else "(no layer)" for k in row] for row in experts]
    block = Block([list(row) for row in canvases], column_titles=columns, captions=captions,
                  row_labels=[f"scene {i + 1}" for i in range(len(canvases))])
    return grid_figure([block], title)


def fig8_ood_decompositions(images: Array, decomposition: Decomposition,
                            indices: Sequence[int], *,
                            title: str = "Decompositions of o.o.d. scenes") -> Figure:
    """Fig. 8: per scene ``images[i]``, the input, the reconstruction and r_t ⊙ x_t per step.

    images: the scenes ``decomposition`` explains, uint8 (N, H, W, 3) or float (N, 3, H, W).
    """
    if not indices:
        raise EconError("fig8_ood_decompositions needs at least one scene index")
    rgb = to_rgb(images)
    if len(rgb) != decomposition.winner.shape[0]:
        raise EconError(f"{len(rgb)} images but a decomposition of "
                        f"{decomposition.winner.shape[0]} scenes")
    grid, captions = [], []
    for i in indices:
        panels = decomposition_panels(decomposition, i)
        grid.append([rgb[i], panels["reconstruction"], *panels["region_object"]])
        captions.append([None, None, *[f"expert {int(k)}" for k in panels["winner"]]])
    steps = len(grid[0]) - 2
    block = Block(grid, row_labels=[f"({chr(ord('a') + r)})" for r in range(len(grid))],
                  column_titles=["input", "reconstruction",
                                 *[f"$t'={t + 1}$" for t in range(steps)]],
                  captions=captions)
    return grid_figure([block], title + r": $r_t \odot x_t$ per step")


# --- files ----------------------------------------------------------------------------------
def save(figure: Figure, path: Path | str) -> Path:
    """Write ``figure`` as a PNG atomically."""
    path = Path(path)
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    return path


def background_expert(prior: SequencePrior) -> int | None:
    """The expert most often first (back-most) in the prior's sequences, weighted by frequency."""
    counts: Counter[int] = Counter()
    for sequence, probability in zip(prior.sequences, prior.probabilities, strict=True):
        if sequence:
            counts[sequence[0]] += probability
    return counts.most_common(1)[0][0] if counts else None


def random_sequences(background: int, n_experts: int, n_objects: int, n: int,
                     rng: np.random.Generator) -> list[list[int]]:
    """``n`` layer sequences: the background expert, then ``n_objects`` random other experts."""
    objects = [k for k in range(n_experts) if k != background] or [background]
    return [[background, *(int(k) for k in rng.choice(objects, size=n_objects))]
            for _ in range(n)]


def _check_images(images: np.ndarray, size: int, name: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise EconError(f"{name} must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    if len(images) == 0:
        raise EconError(f"{name} holds no images")
    if images.shape[1:3] != (size, size):
        raise EconError(f"{name} are {images.shape[1]}×{images.shape[2]} but the model expects "
                        f"{size}×{size} images")
    return images


def _prior(scene_model: SceneModel, images: np.ndarray) -> SequencePrior:
    try:
        return scene_model.prior()
    except EconError:
        return scene_model.fit_prior(images[:PRIOR_SCENES], save=False)


def _ood_scenes(scene_model: SceneModel, ood_images: Scenes | np.ndarray | None,
                seed: int) -> tuple[np.ndarray, int]:
    """OOD images and the number of inference steps to explain them (their layer count)."""
    spec = SceneSpec.preset("ood", size=scene_model.image_size)
    if ood_images is None:
        ood_images = generate(spec, N_OOD_GENERATED, seed)
    if isinstance(ood_images, Scenes):
        return np.asarray(ood_images.images), ood_images.n_layers
    return np.asarray(ood_images), spec.n_layers


def make_all(
    scene_model: SceneModel,
    data_images: np.ndarray,
    out_dir: Path | str,
    *,
    ood_images: Scenes | np.ndarray | None = None,
    single_model: SceneModel | None = None,
    seed: int = 0,
    refine_steps: int = 0,
) -> list[Path]:
    """Draw every figure of the paper for ``scene_model`` and write them as PNGs in ``out_dir``.

    data_images: training scenes, uint8 (N, H, W, 3) at the model's image size (Fig. 1A, 4 and
    the sequence prior when the run has none). ood_images: scenes for Fig. 8, the first 4 shown
    (default: 8 generated with the ``ood`` preset); ``Scenes`` are explained with one inference
    step per layer, plain arrays with the ``ood`` preset's layer count. single_model: a
    one-expert model for Fig. 5 (skipped without one). refine_steps: latents of the
    decompositions (Fig. 4, 8) refined by this many steps (:mod:`econ_scenes.model.refine`).
    Returns the written paths.
    """
    if seed < 0:
        raise EconError(f"seed must be >= 0, got {seed}")
    images = _check_images(data_images, scene_model.image_size, "data images")
    out = Path(out_dir)
    written: list[Path] = []

    def emit(key: str, figure: Figure) -> None:
        written.append(save(figure, out / FILES[key]))

    emit("fig1a", fig1_training_scenes(images))

    prior = _prior(scene_model, images)
    background = background_expert(prior)
    experts = range(scene_model.n_experts)
    samples = [scene_model.sample_expert(k, N_SAMPLES, seed=seed) for k in experts]
    labels = [f"expert {k}" + ("\n(background)" if k == background else "") for k in experts]
    emit("fig1b", fig1_expert_samples(samples, row_labels=labels))

    rng = np.random.default_rng(seed)
    base = 0 if background is None else background
    random_3 = scene_model.compose(
        random_sequences(base, scene_model.n_experts, 3, N_COMPOSITIONS, rng), seed=seed + 3)
    random_4 = scene_model.compose(
        random_sequences(base, scene_model.n_experts, 4, N_COMPOSITIONS, rng), seed=seed + 4)
    ordered = scene_model.compose_from_prior(N_COMPOSITIONS, prior=prior, seed=seed)
    emit("fig1c", fig1_compositions(random_3, random_4, ordered))

    emit("fig4", fig4_decomposition(
        images[0], scene_model.decompose(images[:1], refine_steps=refine_steps), 0))

    if single_model is not None:
        appearance, shape = single_model.sample_expert(0, 2 * N_SAMPLES, seed=seed)
        emit("fig5", fig5_single_expert_samples(appearance, shape))

    emit("fig6", fig6_expert_samples(
        samples, row_labels=labels, scenes=images,
        title=f"Samples from individual experts ({scene_model.config.preset} model)"))

    emit("fig7", fig7_layered_sampling(random_4))

    ood, steps = _ood_scenes(scene_model, ood_images, seed)
    ood = _check_images(ood, scene_model.image_size, "o.o.d. images")[:N_OOD_SHOWN]
    decomposition = scene_model.decompose(ood, n_steps=steps, refine_steps=refine_steps)
    emit("fig8", fig8_ood_decompositions(ood, decomposition, list(range(len(ood)))))
    return written
