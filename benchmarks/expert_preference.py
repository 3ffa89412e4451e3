"""Which expert explains which class best when attention is taken out of the picture.

Every expert is given the same ground-truth visible region of each object (front first, as a
``--gt-masks`` model is), encodes and reconstructs it, and the competition's score
(λ·L_x + L_r + price, per pixel) picks the expert that explains it best. The contingency of
those winners against the objects' classes measures how specialised the experts' VAEs are,
independently of whether their attention networks pick the right objects: AMI near 0 here means
no expert is better than another at any class, so no competition setting can make the
decomposition's AMI high; a high AMI here and a low one in ``econ evaluate`` points at the
attention instead.

    python benchmarks/expert_preference.py pretrained/random --data data/random-test-32.npz \\
        --out benchmarks/results/expert_preference_random

``--snapshot N`` reads a run's snapshot at iteration N; ``--lam`` scores with another λ (e.g.
0: the shape term alone). A model whose config refines the competition's candidates
(``competition_refine_steps``) is scored so; ``--refine N`` sets another number of steps (0: the
encoders' latents).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from econ_scenes.config import search_settings
from econ_scenes.data import load_scenes
from econ_scenes.data.generator import CLASS_NAMES
from econ_scenes.errors import EconError
from econ_scenes.evaluate.metrics import specialisation
from econ_scenes.io import write_report
from econ_scenes.scene import SceneModel
from econ_scenes.train.checkpoint import snapshot_path


def load(model_dir: Path, snapshot: int | None, lam: float | None) -> SceneModel:
    model = SceneModel.load(model_dir)
    if snapshot is not None:
        path = snapshot_path(model_dir, snapshot)
        if not path.is_file():
            raise EconError(f"no snapshot {path}")
        model.model.load_state_dict(load_file(str(path)))
    if lam is not None:
        model.set_competition(competition_lambda=lam)
    return model


def preference(model: SceneModel, data: Path, n: int) -> dict[str, Any]:
    """Winners and per-pixel scores (K experts × classes) on the objects of ``n`` scenes."""
    scenes = load_scenes(data).subset(slice(0, n))  # any layer count: one step per layer
    decomposition = model.decompose(scenes.images, regions=scenes.regions_front_first())
    classes = scenes.classes[:, ::-1]  # front first, like the steps
    objects = classes > 0
    winners = decomposition.winner.numpy()[objects]
    scores = decomposition.step_scores.numpy()[objects]  # (M, K)
    labels = classes[objects]
    k, n_classes = model.n_experts, len(CLASS_NAMES)
    result = specialisation(winners, labels, k, n_classes)
    mean_score = np.full((k, n_classes), np.nan)
    for c in np.unique(labels):
        mean_score[:, c] = scores[labels == c].mean(axis=0)
    return {
        "n_scenes": len(scenes), "n_objects": int(objects.sum()),
        "lambda": model.model.config.competition_lambda,
        "competition": search_settings(model.model.config),
        "ami": result["ami"], "purity": result["purity"],
        "contingency": result["contingency"].tolist(),
        "mean_score": [[None if np.isnan(v) else round(float(v), 4) for v in row]
                       for row in mean_score],
    }


def _refined(report: dict[str, Any]) -> str:
    steps = report["competition"]["competition_refine_steps"]
    return f", latents refined {steps} steps before the comparison" if steps else ""


def markdown(name: str, report: dict[str, Any]) -> str:
    header = "| expert | " + " | ".join(CLASS_NAMES[1:]) + " | mean score (circle, square, triangle) |"
    lines = [f"# Expert preference given ground-truth regions: {name}", "",
             f"{report['n_objects']} objects of {report['n_scenes']} scenes, λ = "
             f"{report['lambda']}; every expert given each object's visible region"
             f"{_refined(report)}. "
             f"AMI(winner, class) **{report['ami']:.3f}**, purity {report['purity']:.3f}.", "",
             header, "|" + "---|" * 5]
    for e, (row, scores) in enumerate(zip(report["contingency"], report["mean_score"],
                                          strict=True)):
        shown = ", ".join("—" if s is None else f"{s:.3f}" for s in scores[1:])
        lines.append(f"| {e} | " + " | ".join(str(v) for v in row[1:]) + f" | {shown} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help="a run or pretrained model directory")
    parser.add_argument("--data", type=Path, required=True, help="scenes (.npz); any object count")
    parser.add_argument("--n", type=int, default=500, help="number of scenes")
    parser.add_argument("--snapshot", type=int, default=None, help="a run's snapshot iteration")
    parser.add_argument("--lam", type=float, default=None, help="score with this λ instead")
    parser.add_argument("--refine", type=int, default=None,
                        help="refine the candidates' latents this many steps instead")
    parser.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.md")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be at least 1, got {args.n}")
    torch.set_num_threads(1)
    if args.refine is not None and args.refine < 0:
        parser.error(f"--refine must be >= 0, got {args.refine}")
    model = load(args.model, args.snapshot, args.lam)
    if args.refine is not None:
        model.set_competition(competition_refine_steps=args.refine)
    report = preference(model, args.data, args.n)
    name = args.model.name + ("" if args.snapshot is None else f" @ {args.snapshot}")
    text = markdown(name, report)
    print(text)
    if args.out is not None:
        write_report(args.out, report, text)


if __name__ == "__main__":
    main()
