"""``econ data make`` and ``econ data show``: generate scene datasets and look at them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from econ_scenes.data.generator import (
    CHUNK,
    CLASS_NAMES,
    PAPER_SPLITS,
    Scenes,
    SceneSpec,
    generate,
)
from econ_scenes.data.storage import check_output_path, load_scenes, save_scenes
from econ_scenes.errors import EconError

data_app = typer.Typer(
    name="data",
    help="Generate dead-leaves scene datasets (Appendix C.1) and draw them.",
    no_args_is_help=True,
)

_BLANK = np.ones(3)  # panel colour outside a shape
_OCCLUDED = np.full(3, 0.8)  # panel colour of the hidden part of a shape


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group to the ``econ`` app (once)."""
    if any(group.typer_instance is data_app for group in app.registered_groups):
        return
    app.add_typer(data_app, name="data")


@data_app.command("make")
def make_command(
    out: Annotated[Path, typer.Option("--out", help="Output .npz file, or a folder of .npy.")],
    preset: Annotated[str, typer.Option(help="unique | random | ood (Fig. 8).")] = "unique",
    n: Annotated[int | None, typer.Option("--n", help="Number of scenes.")] = None,
    split: Annotated[
        str | None, typer.Option(help="Take --n from the paper's split: train | validation.")
    ] = None,
    size: Annotated[int | None, typer.Option(help="Image side in pixels (default 64).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    n_objects: Annotated[int | None, typer.Option(help="Objects per scene.")] = None,
    min_objects: Annotated[
        int | None, typer.Option(help="Draw the object count from min-objects..n-objects.")
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(help="Object classes, e.g. circle,square (unique/random: one of each)."),
    ] = None,
    min_size: Annotated[
        float | None, typer.Option(help="Smallest object, fraction of the image side.")
    ] = None,
    max_size: Annotated[
        float | None, typer.Option(help="Largest object, fraction of the image side.")
    ] = None,
    repeat_classes: Annotated[
        bool | None,
        typer.Option("--repeat-classes/--no-repeat-classes", help="Allow repeated classes."),
    ] = None,
    near_background: Annotated[
        bool, typer.Option("--near-background", help="Object colours close to the background.")
    ] = False,
    colour_mode: Annotated[
        str | None, typer.Option(help="unique | random | near_background.")
    ] = None,
    colour_mix: Annotated[
        float | None,
        typer.Option(help="random colours only: a in [0, 1], colour = (1 - a)·class colour "
                          "+ a·random colour (1 = the paper's random colours)."),
    ] = None,
) -> None:
    """Generate a dataset of dead-leaves scenes and write it atomically."""
    overrides = {
        "size": size,
        "n_objects": n_objects,
        "min_objects": min_objects,
        "classes": classes,
        "min_size": min_size,
        "max_size": max_size,
        "repeat_classes": repeat_classes,
        "colour_mode": _colour_mode(colour_mode, near_background),
        "colour_mix": colour_mix,
    }
    spec = SceneSpec.preset(preset, **{k: v for k, v in overrides.items() if v is not None})
    count = _scene_count(n, split)
    check_output_path(out)
    start = time.perf_counter()
    scenes = generate(spec, count, seed, progress=count > 2 * CHUNK)
    save_scenes(out, scenes, spec, extra={"preset": preset, "seed": seed, "split": split})
    seconds = time.perf_counter() - start
    typer.echo(
        f"wrote {count} scenes ({spec.size}x{spec.size}, {spec.n_layers} layers, "
        f"preset {preset}, seed {seed}) to {out} in {seconds:.1f} s"
    )


def _colour_mode(colour_mode: str | None, near_background: bool) -> str | None:
    if near_background and colour_mode not in (None, "near_background"):
        raise EconError(f"--near-background contradicts --colour-mode {colour_mode}")
    return "near_background" if near_background else colour_mode


def _scene_count(n: int | None, split: str | None) -> int:
    if split is not None and split not in PAPER_SPLITS:
        raise EconError(f"unknown split {split!r}; choose one of {', '.join(PAPER_SPLITS)}")
    if n is None:
        if split is None:
            raise EconError("give the number of scenes (--n) or a paper split (--split)")
        return PAPER_SPLITS[split]
    if n < 1:
        raise EconError(f"number of scenes (--n) must be positive, got {n}")
    return n


@data_app.command("show")
def show_command(
    path: Annotated[Path, typer.Argument(help="Dataset (.npz or folder).")],
    out: Annotated[Path, typer.Option("--out", help="Output image (e.g. grid.png).")] = Path(
        "grid.png"
    ),
    n: Annotated[int, typer.Option("--n", help="Number of scenes (rows).")] = 8,
) -> None:
    """Draw scenes: the image, then each layer's amodal shape and its visible region."""
    if n < 1:
        raise EconError(f"number of scenes to show (--n) must be positive, got {n}")
    scenes = load_scenes(path, mmap=True)
    if len(scenes) == 0:
        raise EconError(f"dataset {path} holds no scenes")
    figure = scene_grid(scenes.subset(slice(0, n)))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out)
    except (OSError, ValueError) as error:
        message = error.strerror if isinstance(error, OSError) else error
        raise EconError(f"cannot write figure to {out}: {message or error}") from error
    typer.echo(f"wrote {min(n, len(scenes))} scenes to {out}")


def scene_grid(scenes: Scenes) -> Any:
    """A matplotlib Figure: one row per scene, the image then (shape, visible) per layer.

    Shapes are drawn in their layer colour on white; in the visible panel the hidden part of
    the shape is light grey.
    """
    from matplotlib.figure import Figure  # Agg canvas by default, no pyplot state

    n, n_layers = len(scenes), scenes.n_layers
    columns = 1 + 2 * n_layers
    figure = Figure(figsize=(1.2 * columns, 1.3 * n), dpi=100, layout="constrained")
    axes = figure.subplots(n, columns, squeeze=False)
    visible = scenes.visible()
    for row in range(n):
        axes[row, 0].imshow(np.asarray(scenes.images[row]))
        for layer in range(n_layers):
            _draw_layer(axes[row, 1 + 2 * layer : 3 + 2 * layer], scenes, visible, row, layer)
    axes[0, 0].set_title("image", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return figure


def _draw_layer(
    axes: np.ndarray, scenes: Scenes, visible: np.ndarray, row: int, layer: int
) -> None:
    shape = np.asarray(scenes.shapes[row, layer])
    colour = np.asarray(scenes.colors[row, layer], dtype=float) / 255.0
    cls = int(scenes.classes[row, layer])
    name = CLASS_NAMES[cls] if cls >= 0 else "(padding)"
    shape_panel = np.tile(_BLANK, (*shape.shape, 1))
    shape_panel[shape] = colour
    visible_panel = np.tile(_BLANK, (*shape.shape, 1))
    visible_panel[shape] = _OCCLUDED
    visible_panel[visible[row, layer]] = colour
    axes[0].imshow(shape_panel, vmin=0, vmax=1)
    axes[1].imshow(visible_panel, vmin=0, vmax=1)
    axes[0].set_title(f"{layer}: {name}", fontsize=7)
    axes[1].set_title(f"{layer}: visible", fontsize=7)
