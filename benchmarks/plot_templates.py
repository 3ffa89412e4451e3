"""Draw the learned shape templates of models with ``model.shape_decoder=template``.

One row per model (or snapshot), one column per expert: the template's shape probability over
its own frame [-1, 1]², which a pose z[:3] places and scales in the image.

    python benchmarks/plot_templates.py runs/a runs/b:1000 --out docs/figures/templates.png

``RUN:N`` reads the run's snapshot at iteration N.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file

from econ_scenes.errors import EconError
from econ_scenes.train.checkpoint import load_model, snapshot_path

KEY = "experts.decoder.template.logits"


def templates(source: str) -> torch.Tensor:
    """``RUN`` or ``RUN:N`` → template probabilities (K, H, W)."""
    run, colon, snapshot = source.rpartition(":")
    if not colon or not snapshot.isdigit():
        run, snapshot = source, ""
    if snapshot:
        path = snapshot_path(Path(run), int(snapshot))
        if not path.is_file():
            raise EconError(f"no snapshot at {path}")
        logits = load_file(str(path)).get(KEY)
    else:
        logits = load_model(run)[0].state_dict().get(KEY)
    if logits is None:
        raise EconError(f"{source} has no shape templates (model.shape_decoder is not 'template')")
    return torch.sigmoid(logits[:, 0].float())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="run or pretrained directories, RUN:N snapshots")
    parser.add_argument("--labels", nargs="*", default=None, help="row labels (default: sources)")
    parser.add_argument("--out", type=Path, required=True, help="output image (.png)")
    args = parser.parse_args(argv)
    rows = [templates(m) for m in args.models]
    labels = args.labels or args.models
    if len(labels) != len(rows):
        raise EconError(f"{len(labels)} labels for {len(rows)} models")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = max(r.shape[0] for r in rows)
    fig, axes = plt.subplots(len(rows), k, figsize=(1.6 * k + 1.5, 1.6 * len(rows)),
                             squeeze=False)
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        for e in range(k):
            ax = axes[i, e]
            ax.set_xticks([])
            ax.set_yticks([])
            if e < row.shape[0]:
                ax.imshow(row[e].numpy(), cmap="gray", vmin=0, vmax=1)
            if i == 0:
                ax.set_title(f"expert {e}", fontsize=9)
        axes[i, 0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
