"""``econ figures``: draw the paper's figures (Fig. 1, 4–8) for a trained run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from econ_scenes.errors import EconError

N_DATA = 256
"""Training scenes read from --data (grids, Fig. 4 and the sequence prior)."""


def figures_command(
    run: Annotated[Path, typer.Argument(help="Run directory of the trained ensemble.")],
    data: Annotated[Path, typer.Option("--data", help="Training scenes (.npz or folder); "
                                       f"the first {N_DATA} are used.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the PNG files.")],
    single: Annotated[Path | None, typer.Option(
        "--single", help="Run directory of a single-expert model (Fig. 5).")] = None,
    ood: Annotated[Path | None, typer.Option(
        "--ood", help="O.o.d. scenes for Fig. 8 (default: 8 generated with the ood preset).")]
        = None,
    seed: Annotated[int, typer.Option(help="Seed of samples, compositions and o.o.d. scenes.")]
        = 0,
    refine: Annotated[int, typer.Option(
        "--refine", help="Refine the latents of the decompositions (Fig. 4, 8) by N steps.")] = 0,
) -> None:
    """Draw Fig. 1A-C, 4, 5 (with --single), 6, 7 and 8 as PNG files in --out."""
    from econ_scenes.config import RunConfig
    from econ_scenes.data import load_scenes

    # check the inputs before torch and matplotlib are imported, so that mistakes fail fast
    if not run.is_dir():
        raise EconError(f"no run directory at {run}")
    if refine < 0:
        raise EconError(f"--refine must be >= 0, got {refine}")
    size = RunConfig.load(run / "config.json").model.image_size
    scenes = load_scenes(data)
    _check_size(scenes.image_size, size, f"data {data}", run)
    ood_scenes = None
    if ood is not None:
        ood_scenes = load_scenes(ood)
        _check_size(ood_scenes.image_size, size, f"o.o.d. data {ood}", run)

    from econ_scenes.figures import make_all
    from econ_scenes.scene import SceneModel

    model = SceneModel.load(run)
    single_model = SceneModel.load(single) if single is not None else None
    images = np.asarray(scenes.images[:N_DATA])
    for path in make_all(model, images, out, ood_images=ood_scenes, single_model=single_model,
                         seed=seed, refine_steps=refine):
        typer.echo(str(path))


def _check_size(image_size: tuple[int, int], size: int, what: str, run: Path) -> None:
    if image_size != (size, size):
        raise EconError(f"{what} has {image_size[0]}×{image_size[1]} images but the model in "
                        f"{run} expects {size}×{size}")


def register(app: typer.Typer) -> None:
    """Add ``econ figures`` to the ``econ`` app (once)."""
    if any(command.name == "figures" for command in app.registered_commands):
        return
    app.command("figures")(figures_command)
