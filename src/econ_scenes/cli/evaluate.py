"""``econ evaluate``: score a trained run on ground-truth scenes and write a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from econ_scenes.errors import EconError

SHOWN = ("fg_ari", "ari", "miou", "amodal_iou", "occluded_object_iou", "occluded_iou",
         "depth_accuracy", "count_accuracy", "ami", "sample_class_accuracy",
         "compose_scene_accuracy", "kid")
"""The headline numbers ``econ evaluate`` prints."""


def _headline_lines(metrics: dict[str, Any]) -> list[str]:
    """The headline numbers, one per line, with their 95 % CI where there is one; the
    generation numbers only when generation was evaluated."""
    from econ_scenes.evaluate.evaluate import HEADLINE, HEADLINE_LABELS, headline_statistic

    lines = []
    for key in SHOWN:
        label = HEADLINE_LABELS[key]
        value = metrics["headline"].get(key)
        if value is None:
            if HEADLINE[key][0] != "generation":  # not scored with --no-generation
                lines.append(f"{label:>29}: –")
            continue
        text = f"{value:.4f}" if key == "kid" else f"{value:.3f}"
        stat = headline_statistic(metrics, key)
        if isinstance(stat, dict) and stat.get("ci_low") is not None:
            text += f"  [{stat['ci_low']:.3f}, {stat['ci_high']:.3f}]"
        lines.append(f"{label:>29}: {text}")
    return lines


def evaluate_command(
    run: Annotated[Path, typer.Argument(help="Run directory (config.json + model weights).")],
    data: Annotated[Path, typer.Option("--data", help="Ground-truth scenes (.npz or folder).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json and metrics.md.")],
    n: Annotated[int, typer.Option("--n", help="Evaluate the first N scenes.")] = 1000,
    n_steps: Annotated[
        int | None, typer.Option("--n-steps", "-T", help="Inference steps (default: the run's, or the "
                                                  "scenes' layer count if larger).")
    ] = None,
    generation: Annotated[
        bool,
        typer.Option("--generation/--no-generation",
                     help="Also score generation (trains a small shape classifier once)."),
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed of sampling and bootstrap.")] = 0,
    refine: Annotated[int, typer.Option(
        "--refine", help="Refine each step's latent by N gradient steps on its own loss before "
        "scoring (semi-amortised inference; 0: the encoder's answer).")] = 0,
    device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
    threads: Annotated[
        int | None,
        typer.Option(help="CPU threads for torch (1 is often fastest on a busy machine)."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Evaluate decomposition (ARI, mIoU, amodal IoU, depth, counts, specialisation) and
    generation (sample classes, composed scenes, KID) of a trained run."""
    from econ_scenes.data import load_scenes
    from econ_scenes.evaluate.evaluate import evaluate, write_report
    from econ_scenes.scene import SceneModel

    if n < 1:
        raise EconError(f"--n must be >= 1, got {n}")
    if n_steps is not None and n_steps < 1:
        raise EconError(f"--n-steps must be >= 1, got {n_steps}")
    if refine < 0:
        raise EconError(f"--refine must be >= 0, got {refine}")
    if threads is not None:
        if threads < 1:
            raise EconError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    if out.exists() and not out.is_dir():
        raise EconError(f"--out {out} exists and is not a directory")
    scenes = load_scenes(data)
    model = SceneModel.load(run, device)
    size = model.image_size
    if scenes.image_size != (size, size):
        height, width = scenes.image_size
        raise EconError(f"{data} holds {height}×{width} images but the model in {run} expects "
                        f"{size}×{size}")
    scenes = scenes.subset(slice(0, min(n, len(scenes))))
    classifier = None
    if generation:
        from econ_scenes.evaluate.classifier import load_or_train_classifier

        classifier = load_or_train_classifier(size, progress=progress)
    metrics = evaluate(model, scenes, n_steps=n_steps, classifier=classifier, seed=seed,
                       progress=progress, refine_steps=refine)
    json_path, md_path = write_report(metrics, out)
    typer.echo(f"evaluated {metrics['n_scenes']} scenes (T = {metrics['n_steps']}, "
               f"K = {metrics['n_experts']}); wrote {json_path} and {md_path}")
    for line in _headline_lines(metrics):
        typer.echo(line)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)
