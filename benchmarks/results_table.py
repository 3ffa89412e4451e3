"""Regenerate the README's results table from the committed ``pretrained/*/metrics.json``.

    python benchmarks/results_table.py            # rewrites the block between the markers
"""

from __future__ import annotations

import json
from pathlib import Path

from econ_scenes.evaluate.evaluate import HEADLINE_LABELS

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
COLUMNS = ("fg_ari", "ari", "miou", "amodal_iou", "occluded_object_iou", "occluded_iou", "ami",
           "sample_class_accuracy")
"""Headline numbers in the table, labelled as ``econ evaluate`` labels them."""
NEEDS_EXPERTS = ("ami", "sample_class_accuracy")  # undefined for a single expert


def _value(metrics: dict, name: str) -> str:
    value = (metrics.get("headline") or {}).get(name)
    return "–" if value is None else f"{value:.3f}"


def _competition(model_folder: Path) -> dict:
    """The shipped config's model settings: the competition ``econ evaluate`` decomposed with,
    for metrics that predate its record in their ``settings``."""
    path = model_folder / "config.json"
    return json.loads(path.read_text()).get("model", {}) if path.exists() else {}


def table(root: Path) -> str:
    header = ["model", "image", "scenes", "regions", "latents",
              *[HEADLINE_LABELS[c] for c in COLUMNS], "training"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    # A model's own test set in pretrained/<name>/, other test sets (e.g. ood) one level down.
    folders = sorted({p.parent for p in [*root.glob("*/metrics.json"), *root.glob("*/*/metrics.json")]})
    for folder in folders:
        metrics = json.loads((folder / "metrics.json").read_text())
        nested = folder.parent != root  # e.g. pretrained/random/ood: the parent's model
        model_folder = folder.parent if nested else folder
        info_path = model_folder / "training.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        training = (f"{info.get('iterations', '?')} it, {info.get('minutes', '?')} min, "
                    f"{info.get('hardware', '?')}")
        single = metrics.get("n_experts") == 1  # AMI and samples → class need several experts
        values = [("–" if single and name in NEEDS_EXPERTS
                   else _value(metrics, name)) for name in COLUMNS]
        settings = metrics.get("settings") or {}
        regions = settings.get("regions", "attention")
        refined = settings.get("refine_steps") or 0
        competition = settings.get("competition") or _competition(model_folder)
        if (regions != "ground truth" and competition.get("competition_cross")
                and metrics.get("n_experts", 1) > 1):
            regions = "attention, crossed"
        latents = f"refined ({refined} steps)" if refined else "encoder"
        if competition.get("competition_refine_steps"):
            latents += f", refined in the competition ({competition['competition_refine_steps']} steps)"
        row = [f"`{folder.relative_to(root).as_posix()}`", f"{metrics.get('image_size', '?')}²",
               str(metrics.get("n_scenes", "?")), "given" if regions == "ground truth" else regions,
               latents, *values, training]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    readme = Path("README.md")
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md has no {BEGIN} … {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{table(Path('pretrained'))}\n{END}{tail}")
    print(table(Path("pretrained")))


if __name__ == "__main__":
    main()
