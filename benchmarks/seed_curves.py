"""Time to quality over seeds: learning curves of several runs (``learning_curve.py`` JSONs) in
one figure, and the first minute at which each run reaches the targets. AMI is computed over the
layers matched to an expert only, so a class no expert takes does not lower it: the table also
gives the ARI (background included), which does drop.

    python benchmarks/seed_curves.py benchmarks/results/learning_curve_quick_2cores.json \\
        benchmarks/results/learning_curve_quick_2cores_seed1.json ... \\
        --labels "seed 0" "seed 1" --out benchmarks/results/time_to_quality_seeds

``--axis iterations`` counts iterations instead of minutes, for runs that shared the machine
(their wall time says nothing about a run alone on it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PANELS = [("fg_ari", "FG-ARI"), ("ari", "ARI (background included)"), ("ami", "AMI(expert, class)"),
          ("amodal_iou", "amodal IoU, all objects")]


AXES = {"minutes": ("minutes", "training wall time (minutes)"),
        "iterations": ("iteration", "training iterations")}
"""--axis → (the snapshot field used as time, the plot's x label)."""


def first_time(points: list[dict[str, float]], keys: tuple[str, ...], target: float,
               time: str = "minutes") -> float | None:
    """Time (``time`` field) of the first snapshot at which every metric in ``keys`` is ≥
    ``target``."""
    for point in points:
        if all(point[key] >= target for key in keys):
            return point[time]
    return None


def held_from(points: list[dict[str, float]], keys: tuple[str, ...], target: float,
              time: str = "minutes") -> float | None:
    """Time from which every metric in ``keys`` stays ≥ ``target`` to the last snapshot."""
    start = None
    for point in points:
        if all(point[key] >= target for key in keys):
            start = point[time] if start is None else start
        else:
            start = None
    return start


def _when(found: float | None, time: str) -> str:
    if found is None:
        return "never"
    return f"{found:.1f} min" if time == "minutes" else f"{found:.0f} it"


def table(curves: dict[str, list[dict[str, float]]], target: float, axis: str = "minutes") -> str:
    time = AXES[axis][0]
    lines = [f"| run | iterations | minutes | FG-ARI ≥ {target} first | FG-ARI and AMI ≥ {target} first "
             f"| FG-ARI and AMI ≥ {target} from then on | last FG-ARI | last ARI | last AMI "
             "| last amodal IoU (all objects) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    both = ("fg_ari", "ami")
    for label, points in curves.items():
        last = points[-1]
        lines.append(f"| {label} | {last['iteration']} | {last['minutes']:.1f} "
                     f"| {_when(first_time(points, ('fg_ari',), target, time), time)} "
                     f"| {_when(first_time(points, both, target, time), time)} "
                     f"| {_when(held_from(points, both, target, time), time)} "
                     f"| {last['fg_ari']:.3f} | {last['ari']:.3f} "
                     f"| {last['ami']:.3f} | {last['amodal_iou']:.3f} |")
    return "\n".join(lines)


def plot(curves: dict[str, list[dict[str, float]]], path: Path, target: float,
         axis: str = "minutes") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(3.4 * len(PANELS), 3.0), sharey=True)
    for ax, (key, name) in zip(axes, PANELS, strict=True):
        for label, points in curves.items():
            ax.plot([p[AXES[axis][0]] for p in points], [p[key] for p in points], marker="o",
                    ms=2.5, label=label)
        ax.axhline(target, color="grey", lw=0.8, ls="--")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(AXES[axis][1])
        ax.set_ylim(0, 1.02)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("curves", type=Path, nargs="+", help="learning_curve.py JSON files")
    parser.add_argument("--labels", nargs="+", default=None)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix")
    parser.add_argument("--axis", choices=sorted(AXES), default="minutes",
                        help="time axis: wall-clock minutes, or iterations for runs that shared "
                             "the machine")
    args = parser.parse_args()
    labels = args.labels or [path.stem for path in args.curves]
    if len(labels) != len(args.curves):
        raise SystemExit(f"{len(args.curves)} curves but {len(labels)} labels")
    curves = {label: json.loads(path.read_text()) for label, path in zip(labels, args.curves,
                                                                          strict=True)}
    text = table(curves, args.target, args.axis)
    args.out.with_suffix(".md").write_text(text + "\n")
    plot(curves, args.out.with_suffix(".png"), args.target, args.axis)
    print(text)


if __name__ == "__main__":
    main()
