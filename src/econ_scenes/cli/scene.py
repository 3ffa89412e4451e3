"""``econ decompose | sample | compose``: the scene API from the command line.

Each writes an ``.npz`` of arrays and a PNG picture beside it (same name, ``.png``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from econ_scenes.config import DEFAULT_REFINE_STEPS
from econ_scenes.errors import EconError


def read_images(path: Path) -> np.ndarray:
    """Images uint8 (N, H, W, 3) from a dataset, an ``.npz`` with ``images``, PNG files or a
    folder of PNGs."""
    if not path.exists():
        raise EconError(f"no images at {path}")
    if path.is_dir() and not (path / "images.npy").exists():
        files = sorted(path.glob("*.png"))
        if not files:
            raise EconError(f"{path} holds no PNG files and is not a dataset folder")
        return _read_pngs(files)
    if path.suffix.lower() == ".png":
        return _read_pngs([path])
    if path.is_file() and path.suffix == ".npz":
        try:
            with np.load(path) as archive:
                if "shapes" not in archive.files:
                    if "images" not in archive.files:
                        raise EconError(f"{path} has no 'images' array")
                    return _check_images(np.asarray(archive["images"]), path)
        except (OSError, ValueError) as error:
            raise EconError(f"cannot read {path}: {error}") from error
    from econ_scenes.data import load_scenes

    return _check_images(np.asarray(load_scenes(path).images), path)


def _read_pngs(files: list[Path]) -> np.ndarray:
    import matplotlib.image as mpimg

    images = []
    for file in files:
        try:
            pixels = mpimg.imread(file)
        except Exception as error:
            raise EconError(f"cannot read PNG {file}: {error}") from error
        if pixels.ndim != 3 or pixels.shape[-1] not in (3, 4):
            raise EconError(f"{file} is not an RGB image (shape {pixels.shape})")
        if pixels.dtype != np.uint8:
            pixels = np.round(pixels[..., :3] * 255).astype(np.uint8)
        images.append(pixels[..., :3])
    if len({im.shape for im in images}) > 1:
        raise EconError("PNG files have different sizes")
    return np.stack(images)


def _check_images(images: np.ndarray, path: Path) -> np.ndarray:
    if images.dtype != np.uint8:
        raise EconError(f"{path}: images must be uint8, got {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise EconError(f"{path}: images must be (N, H, W, 3), got {images.shape}")
    if images.shape[0] == 0:
        raise EconError(f"{path} holds no images")
    return images


def _save_npz(out: Path, arrays: dict[str, np.ndarray]) -> Path:
    from econ_scenes.io import atomic_write

    out = out if out.suffix == ".npz" else out.with_suffix(".npz")

    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            np.savez(handle, **arrays)

    atomic_write(out, write)
    return out


def _picture(out: Path, rows: list[np.ndarray], titles: list[str]) -> Path:
    """rows: list of (N, H, W, 3) float arrays → one PNG, a row per array."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(8, rows[0].shape[0])
    fig, axes = plt.subplots(len(rows), n, figsize=(1.2 * n, 1.25 * len(rows)), squeeze=False)
    for r, (row, title) in enumerate(zip(rows, titles, strict=True)):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(np.clip(row[c], 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(title, fontsize=7)
    fig.tight_layout()
    path = out.with_suffix(".png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def decompose_command(
    run: Annotated[Path, typer.Argument(help="Run directory or pretrained model folder.")],
    images: Annotated[Path, typer.Option(help="Dataset, .npz with images, PNG file or folder.")],
    out: Annotated[Path, typer.Option(help="Output .npz (a .png picture is written beside).")],
    n_steps: Annotated[int | None, typer.Option(help="Inference steps (default: trained T).")] = None,
    device: Annotated[str, typer.Option()] = "cpu",
    refine: Annotated[int, typer.Option(
        "--refine", help="Refine each step's latent by N gradient steps on its own loss "
        "(sharper full shapes of occluded objects; 0: the encoder's answer).")] = 0,
) -> None:
    """Decompose scenes front to back. The .npz holds (inference order, front first):
    winners (N,T) int, regions/scopes/shapes (N,T,H,W) float32, objects (N,T,H,W,3),
    latents (N,T,L), scores (N,T,K), reconstruction (N,H,W,3)."""
    from econ_scenes.scene import SceneModel

    if refine < 0:
        raise EconError(f"--refine must be >= 0, got {refine}")
    model = SceneModel.load(run, device)
    pixels = read_images(images)
    d = model.decompose(pixels, n_steps=n_steps, refine_steps=refine)
    arrays = d.numpy()
    path = _save_npz(out, arrays)
    steps = [arrays["regions"][:, t, ..., None] * arrays["objects"][:, t]
             for t in range(arrays["regions"].shape[1])]
    picture = _picture(path, [pixels / 255.0, arrays["reconstruction"], *steps],
                       ["input", "reconstruction"] + [f"step {t + 1}" for t in range(len(steps))])
    typer.echo(f"decomposed {len(pixels)} scenes into {len(steps)} steps → {path}, {picture}")


def sample_command(
    run: Annotated[Path, typer.Argument()],
    expert: Annotated[int, typer.Option(help="Expert index k.")],
    n: Annotated[int, typer.Option(help="Number of samples.")] = 16,
    out: Annotated[Path, typer.Option()] = Path("samples.npz"),
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Sample objects from one expert's prior: appearance (N,H,W,3) and shape (N,H,W)."""
    from econ_scenes.scene import SceneModel

    model = SceneModel.load(run)
    appearance, shape = model.sample_expert(expert, n, seed=seed)
    arrays = {"appearance": appearance.permute(0, 2, 3, 1).numpy(), "shape": shape.numpy()}
    path = _save_npz(out, arrays)
    grey = 0.5 * np.ones_like(arrays["appearance"])
    masked = arrays["shape"][..., None] * arrays["appearance"]
    masked = masked + (1 - arrays["shape"][..., None]) * grey
    picture = _picture(path, [arrays["appearance"], masked], ["appearance", "object on grey"])
    typer.echo(f"sampled {n} objects from expert {expert} → {path}, {picture}")


def compose_command(
    run: Annotated[Path, typer.Argument()],
    experts: Annotated[str | None, typer.Option(help="Experts back to front, e.g. 3,1,2.")] = None,
    prior: Annotated[bool, typer.Option(help="Sample expert sequences from the fitted prior.")] = False,
    data: Annotated[Path | None, typer.Option(help="Training scenes to fit the prior on "
                                              "(if the run has none yet).")] = None,
    n: Annotated[int, typer.Option()] = 16,
    out: Annotated[Path, typer.Option()] = Path("compositions.npz"),
    seed: Annotated[int, typer.Option()] = 0,
    refine: Annotated[int, typer.Option(
        "--refine", help="Gradient steps on each latent of the scenes the prior is fitted on "
        "(0: the encoder's latents).")] = DEFAULT_REFINE_STEPS,
) -> None:
    """Compose new scenes layer by layer: images (N,H,W,3), layers (N,T,H,W,3), shapes (N,T,H,W),
    experts (N,T) back to front (-1: no layer)."""
    from econ_scenes.scene import PRIOR_FILE, SceneModel

    model = SceneModel.load(run)
    if prior == (experts is not None):
        raise EconError("give exactly one of --experts K1,K2,... or --prior")
    if n < 1:
        raise EconError(f"--n must be >= 1, got {n}")
    if refine < 0:
        raise EconError(f"--refine must be >= 0, got {refine}")
    if prior:
        if data is not None or not (Path(run) / PRIOR_FILE).exists():
            if data is None:
                raise EconError(f"{run} has no {PRIOR_FILE}: pass --data TRAIN to fit it")
            model.fit_prior(read_images(data)[:1000], refine_steps=refine)
        composition = model.compose_from_prior(n, seed=seed)
    else:
        try:
            sequence = [int(k) for k in str(experts).split(",")]
        except ValueError as error:
            raise EconError(f"--experts must be comma-separated integers, got {experts!r}") from error
        composition = model.compose(sequence, n, seed=seed)
    arrays = {
        "images": composition.image.permute(0, 2, 3, 1).numpy(),
        "layers": composition.appearance.permute(0, 1, 3, 4, 2).numpy(),
        "shapes": composition.shape.numpy(),
        "experts": composition.experts.numpy(),
    }
    path = _save_npz(out, arrays)
    picture = _picture(path, [arrays["images"]], ["composed"])
    typer.echo(f"composed {n} scenes → {path}, {picture}")


def register(app: typer.Typer) -> None:
    app.command("decompose")(decompose_command)
    app.command("sample")(sample_command)
    app.command("compose")(compose_command)
