"""The ceiling of "amodal IoU of occluded objects": the ideal observer on the test scenes.

Runs :func:`econ_scenes.evaluate.ideal.ideal_amodal` (the best any model can do on average when
it completes a shape from its visible part, knowing the generator and the object's class) on
the test scenes of the README and writes ``<out>.json`` and ``<out>.md``: the same per-scene
mean over occluded objects that ``econ evaluate`` reports, and the same per visible fraction.

    python benchmarks/amodal_ceiling.py --data data/unique-test-32.npz \\
        --out benchmarks/results/amodal_ceiling_32 --models pretrained/single pretrained/unique
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from econ_scenes.data import Scenes, SceneSpec, load_scenes
from econ_scenes.data.storage import load_metadata
from econ_scenes.evaluate.evaluate import (
    decompose_scenes,
    given_regions,
    match_steps,
    nanmean_rows,
    object_amodal_iou,
    summarise,
)
from econ_scenes.evaluate.ideal import ideal_amodal
from econ_scenes.io import write_report
from econ_scenes.scene import SceneModel

BINS = ((0.8, 1.0), (0.6, 0.8), (0.4, 0.6), (0.2, 0.4), (0.0, 0.2))


def model_amodal(path: Path, scenes: Scenes, refine_steps: int = 0) -> np.ndarray:
    """A shipped model's amodal IoU per object (N, L), scored as ``econ evaluate`` scores it."""
    model = SceneModel.load(path)
    decomposition = decompose_scenes(model, scenes.images, regions=given_regions(model, scenes),
                                     progress=False, refine_steps=refine_steps)
    shapes = np.asarray(scenes.shapes, dtype=bool)
    matching = match_steps(decomposition.region.float().numpy(), shapes, scenes.classes)
    return object_amodal_iou(shapes, scenes.classes, decomposition.shape.float().numpy(),
                             matching)


def by_visible_fraction(values: np.ndarray, fraction: np.ndarray) -> list[dict[str, float]]:
    rows = []
    for low, high in BINS:
        inside = (fraction >= low) & (fraction < high) & np.isfinite(values)
        rows.append({"visible": f"{low:.1f}-{high:.1f}", "objects": int(inside.sum()),
                     "mean": float(values[inside].mean()) if inside.any() else float("nan")})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="test scenes (.npz)")
    parser.add_argument("--n", type=int, default=1000, help="scenes")
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix")
    parser.add_argument("--models", type=Path, nargs="*", default=[],
                        help="shipped models to set beside the ceiling (same image size)")
    parser.add_argument("--refine", type=int, default=0,
                        help="also score each model with its latents refined by N steps")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scenes = load_scenes(args.data)
    scenes = scenes.subset(slice(0, min(args.n, len(scenes))))
    stored = load_metadata(args.data).get("spec")
    if stored is None:
        raise SystemExit(f"{args.data} records no generator spec: make it with `econ data make`")
    spec = SceneSpec.from_dict(stored)
    ideal = ideal_amodal(scenes, spec)
    fraction = ideal["visible_fraction"]
    occluded = np.isfinite(fraction)
    result = {
        "data": str(args.data), "scenes": len(scenes), "occluded_objects": int(occluded.sum()),
        "ideal": {
            "occluded_object_iou": summarise(nanmean_rows(ideal["expected_iou"])),
            "occluded_object_iou_true_shapes": summarise(nanmean_rows(ideal["iou"])),
            "by_visible_fraction": by_visible_fraction(ideal["expected_iou"], fraction),
        },
        "models": {},
    }
    runs = [(path, 0) for path in args.models]
    runs += [(path, args.refine) for path in args.models if args.refine]
    for path, steps in runs:
        scores = np.where(occluded, model_amodal(path, scenes, steps), np.nan)
        name = f"{path.name}, refined ({steps} steps)" if steps else path.name
        result["models"][name] = {
            "occluded_object_iou": summarise(nanmean_rows(scores)),
            "by_visible_fraction": by_visible_fraction(scores, fraction),
        }
    write_report(args.out, result, report(result), indent=1)
    print(report(result))


def report(result: dict) -> str:  # type: ignore[type-arg]
    names = ["ideal observer", *result["models"]]
    columns = [result["ideal"], *result["models"].values()]
    lines = [f"# Amodal IoU of occluded objects: the ceiling and the models ({result['data']})",
             "", f"{result['scenes']} scenes, {result['occluded_objects']} occluded objects "
             "(a pixel or more hidden). Per-scene mean over occluded objects, then mean over "
             "scenes (the number `econ evaluate` reports); below, per object by visible "
             "fraction.", "",
             "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names),
             "| amodal IoU, occluded objects | " + " | ".join(
                 f"{c['occluded_object_iou']['mean']:.3f}" for c in columns) + " |"]
    for i, row in enumerate(result["ideal"]["by_visible_fraction"]):
        lines.append(f"| visible {row['visible']} ({row['objects']} objects) | " + " | ".join(
            f"{c['by_visible_fraction'][i]['mean']:.3f}" for c in columns) + " |")
    truth = result["ideal"]["occluded_object_iou_true_shapes"]["mean"]
    lines += ["", f"The ideal observer's answers scored against the true shapes: {truth:.3f} "
              "(its expected IoU above is the average over the shapes it cannot tell apart)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
