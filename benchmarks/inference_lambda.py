"""How the competition's λ at inference trades segmentation for specialisation.

One model's decompositions of validation scenes, scored for several λ (the weight of the
reconstruction term L_x beside the shape term L_r in the experts' competition): FG-ARI and
AMI(expert, class) per scene file. A model trained with λ = 0 (shape only) can decompose with
another λ; choose it here, on validation scenes, not on the test scenes that `econ evaluate`
reports.

    econ data make --preset random --n 300 --size 32 --seed 791 --out data/random-val-32.npz
    econ data make --preset ood --n 300 --size 32 --seed 790 --out data/ood-val-32.npz
    python benchmarks/inference_lambda.py pretrained/random --lam 0 0.3 0.5 1 3 \\
        --data data/random-val-32.npz data/ood-val-32.npz \\
        --out benchmarks/results/inference_lambda_random

``--set model.competition_NAME=VALUE`` changes a setting of the search for every row
(``competition_cross``, ``competition_refine_steps``, ``_lr``, ``_top``; e.g.
``--set model.competition_cross=False`` for the experts' own regions only).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from econ_scenes.config import SEARCH_SETTINGS, parse_overrides, search_settings
from econ_scenes.data import load_scenes
from econ_scenes.evaluate.evaluate import decompose_scenes, decomposition_metrics
from econ_scenes.io import write_report
from econ_scenes.scene import SceneModel


def score(model: SceneModel, lam: float, data: list[Path], n: int) -> list[dict[str, Any]]:
    """FG-ARI and AMI of the first ``n`` scenes of each file, decomposed with this λ (T: the
    model's or the scenes' layer count, whichever is larger, as in `econ evaluate`)."""
    model.set_competition(competition_lambda=lam)
    rows = []
    for path in data:
        scenes = load_scenes(path).subset(slice(0, n))
        n_steps = max(model.config.model.n_steps, scenes.n_layers)
        decomposition = decompose_scenes(model, scenes.images, n_steps=n_steps, progress=False)
        metrics = decomposition_metrics(decomposition, scenes, n_experts=model.n_experts)
        rows.append({"data": path.name, "lambda": lam, "n_scenes": len(scenes), "n_steps": n_steps,
                     "fg_ari": metrics["segmentation"]["fg_ari"]["mean"],
                     "ami": metrics["specialisation"]["ami"]})
    return rows


def markdown(name: str, rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    lams = sorted({row["lambda"] for row in rows})
    files = list(dict.fromkeys(row["data"] for row in rows))
    cell = {(row["lambda"], row["data"]): row for row in rows}
    shown = ", ".join(f"{key} = {value}" for key, value in settings.items())
    lines = [f"# λ at inference: {name}", "", f"Competition settings: {shown}.", "",
             "| | " + " | ".join(f"λ = {lam:g}" for lam in lams) + " |",
             "|---|" + "---:|" * len(lams)]
    for file in files:
        first = cell[(lams[0], file)]
        label = f"{file} ({first['n_scenes']} scenes, T = {first['n_steps']})"
        for metric, title in (("fg_ari", "FG-ARI"), ("ami", "AMI")):
            values = " | ".join(f"{cell[(lam, file)][metric]:.3f}" for lam in lams)
            lines.append(f"| {title}, {label} | {values} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help="a run or pretrained model directory")
    parser.add_argument("--data", type=Path, nargs="+", required=True,
                        help="validation scenes (.npz), one or more files")
    parser.add_argument("--lam", type=float, nargs="+", required=True, help="λ values to score")
    parser.add_argument("--n", type=int, default=300, help="scenes per file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="model.competition_NAME=VALUE",
                        help="another competition setting for every row (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.md")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be at least 1, got {args.n}")
    if any(lam < 0 for lam in args.lam):
        parser.error(f"λ must be non-negative, got {args.lam}")
    torch.set_num_threads(args.threads)
    model = SceneModel.load(args.model)
    overrides = parse_overrides(args.overrides)
    allowed = {f"model.{name}" for name in SEARCH_SETTINGS if name != "competition_lambda"}
    if not set(overrides) <= allowed:
        parser.error(f"--set takes {', '.join(sorted(allowed))} (λ is --lam), got "
                     f"{sorted(overrides)}")
    model.set_competition(**{key.removeprefix("model."): v for key, v in overrides.items()})
    rows = [row for lam in args.lam for row in score(model, lam, args.data, args.n)]
    settings = {name: value for name, value in search_settings(model.config.model).items()
                if name != "competition_lambda"}
    for row in rows:
        row["settings"] = settings
    text = markdown(args.model.name, rows, settings)
    print(text)
    if args.out is not None:
        write_report(args.out, rows, text)


if __name__ == "__main__":
    main()
