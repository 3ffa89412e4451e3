"""Learning curve of a run: FG-ARI, ARI and AMI(expert, class) against wall-clock minutes.

Reads the weight snapshots a run keeps (``econ train ... --set train.snapshot_every=100``),
evaluates each on freshly generated test scenes (a seed the training data did not use) and
writes ``<out>.json`` (the data) and ``<out>.png`` (the plot).

    python benchmarks/learning_curve.py runs/quick --out benchmarks/results/learning_curve_quick
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors import safe_open

from econ_scenes.data import SceneSpec, generate
from econ_scenes.evaluate.evaluate import decomposition_metrics, given_regions
from econ_scenes.scene import SceneModel


def snapshot_points(model: SceneModel, run: Path, preset: str, scenes_seed: int,
                    n: int, every: int = 1) -> list[dict[str, float]]:
    spec = SceneSpec.preset(preset, size=model.image_size)
    scenes = generate(spec, n, seed=scenes_seed)
    regions = given_regions(model, scenes)  # a --gt-masks model is scored on its shapes
    points = []
    for path in sorted((run / "snapshots").glob("iter_*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata()
            if int(meta["iteration"]) % every:
                continue
            weights = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        model.model.load_state_dict(weights)
        metrics = decomposition_metrics(model.decompose(scenes.images, regions=regions), scenes,
                                        n_experts=model.n_experts)
        points.append({
            "iteration": int(meta["iteration"]), "minutes": float(meta["minutes"]),
            "fg_ari": metrics["segmentation"]["fg_ari"]["mean"],
            "ari": metrics["segmentation"]["ari"]["mean"],
            "ami": metrics["specialisation"]["ami"],
            "amodal_iou": metrics["amodal"]["iou"]["mean"],
            "occluded_object_iou": metrics["amodal"]["occluded_object_iou"]["mean"],
            "occluded_iou": metrics["amodal"]["occluded_iou"]["mean"],
            "depth_accuracy": metrics["depth"]["pair_accuracy"],
        })
        print(json.dumps(points[-1]))
    return points


CURVES = [("fg_ari", "FG-ARI"), ("ami", "AMI(expert, class)"),
          ("amodal_iou", "amodal IoU, all objects"),
          ("occluded_object_iou", "amodal IoU, occluded objects")]
GIVEN_REGION_CURVES = [("amodal_iou", "amodal IoU, all objects"),
                       ("occluded_object_iou", "amodal IoU, occluded objects"),
                       ("occluded_iou", "occluded-pixel IoU")]
"""A model given ground-truth regions is measured on its shapes only."""


def plot(points: list[dict[str, float]], path: Path, title: str,
         curves: list[tuple[str, str]] = CURVES) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    minutes = [p["minutes"] for p in points]
    for key, label in curves:
        if key not in points[0]:  # curves written before the metric existed
            continue
        ax.plot(minutes, [p[key] for p in points], marker="o", ms=3, label=label)
    ax.axhline(0.9, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("training wall time (minutes)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix")
    parser.add_argument("--n", type=int, default=300, help="test scenes")
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--preset", default="unique", help="test scenes: unique | random")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--every", type=int, default=1,
                        help="only the snapshots whose iteration is a multiple of this")
    parser.add_argument("--start-minutes", type=float, default=0.0,
                        help="added to every snapshot's minutes: for a run started with --init "
                        "from another, the minutes that one trained")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = SceneModel.load(args.run, args.device)
    points = snapshot_points(model, args.run, args.preset, args.seed, args.n, args.every)
    for point in points:
        point["minutes"] += args.start_minutes
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(points, indent=1) + "\n")
    given = model.config.train.gt_masks
    plot(points, args.out.with_suffix(".png"), f"{args.run.name}: {args.preset} colours, "
         f"{args.n} test scenes (seed {args.seed})" + (", regions given" if given else ""),
         GIVEN_REGION_CURVES if given else CURVES)


if __name__ == "__main__":
    main()
