"""``econ demo``: the project's main job in one command.

Uses the shipped ``pretrained/unique`` model when present (otherwise trains the ``quick`` preset
for a few minutes), then decomposes test scenes, samples every expert, composes new scenes,
draws the paper's figures and evaluates, all under ``--out``. The shipped single-expert model
(``pretrained/single``) adds Fig. 5 and the shipped random-colour model (``pretrained/random``)
draws its own set of figures (the paper's Figs. 4, 6, 7 and 8 come from that setting).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from econ_scenes.config import DEFAULT_REFINE_STEPS
from econ_scenes.errors import EconError

REPO_ROOT = Path(__file__).resolve().parents[3]


def shipped(name: str) -> Path | None:
    """A model shipped in ``pretrained/NAME`` with the source tree, if present."""
    candidate = REPO_ROOT / "pretrained" / name
    return candidate if (candidate / "config.json").is_file() else None


def default_model() -> Path | None:
    return shipped("unique")


def demo_command(
    out: Annotated[Path, typer.Option(help="Where figures, arrays and metrics go.")] = Path("demo-out"),
    model: Annotated[Path | None, typer.Option(help="Run directory to use (default: the shipped "
                                               "pretrained/unique, else train one).")] = None,
    train_minutes: Annotated[float, typer.Option(help="Training budget when no model is given "
                                                 "or shipped.")] = 6.0,
    retrain: Annotated[bool, typer.Option(help="Train even if a shipped model exists.")] = False,
    n_eval: Annotated[int, typer.Option(help="Test scenes to evaluate.")] = 500,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Train or load a model, decompose, sample, compose; write figures and metrics."""
    from econ_scenes.data import SceneSpec, generate, save_scenes
    from econ_scenes.scene import SceneModel

    out.mkdir(parents=True, exist_ok=True)
    run = model if model is not None else (None if retrain else default_model())
    if run is None:
        run = out / "run"
        size = 32
        train_path = out / "data" / "train.npz"
        if not train_path.exists():
            typer.echo("generating 20,000 uniquely coloured 32×32 training scenes")
            save_scenes(train_path, generate(SceneSpec.preset("unique", size=size), 20_000,
                                             seed=seed), SceneSpec.preset("unique", size=size))
        if not (run / "model.safetensors").exists():
            _train(run, train_path, train_minutes, seed)
        typer.echo(f"model: trained here in {run}")
    else:
        typer.echo(f"model: {run}")
    scene_model = SceneModel.load(run)
    size = scene_model.image_size
    spec = SceneSpec.preset("unique", size=size)
    test = generate(spec, n_eval, seed=seed + 12345)
    save_scenes(out / "data" / "test.npz", test, spec)

    from econ_scenes.cli.scene import _picture, _save_npz

    decomposition = scene_model.decompose(test.images[:16], refine_steps=DEFAULT_REFINE_STEPS)
    arrays = decomposition.numpy()
    _save_npz(out / "decomposition.npz", arrays)
    typer.echo(f"decomposed 16 test scenes (latents refined by {DEFAULT_REFINE_STEPS} steps) → "
               f"{out / 'decomposition.npz'}")
    if scene_model.run_dir is not None and not (scene_model.run_dir / "prior.json").exists():
        scene_model.fit_prior(generate(spec, 500, seed=seed + 1).images)
    composition = scene_model.compose_from_prior(16, seed=seed)
    _save_npz(out / "compositions.npz", {"images": composition.image.permute(0, 2, 3, 1).numpy(),
                                          "experts": composition.experts.numpy()})
    _picture(out / "compositions.png", [composition.image.permute(0, 2, 3, 1).numpy()],
             ["composed from the prior"])

    from econ_scenes.figures import make_all

    single = shipped("single")
    paths = make_all(scene_model, test.images[:256], out / "figures", seed=seed,
                     single_model=None if single is None else SceneModel.load(single),
                     refine_steps=DEFAULT_REFINE_STEPS)
    typer.echo(f"figures: {', '.join(p.name for p in paths)} in {out / 'figures'}")
    _random_colour_figures(out / "figures" / "random", seed)

    from econ_scenes.evaluate.classifier import load_or_train_classifier
    from econ_scenes.evaluate.evaluate import evaluate, write_report

    classifier = load_or_train_classifier(size)
    metrics = evaluate(scene_model, test, classifier=classifier, seed=seed)
    write_report(metrics, out)
    typer.echo(headline(metrics))
    typer.echo(f"metrics: {out / 'metrics.md'} (the encoder's latents; `econ evaluate RUN --data "
               f"{out / 'data' / 'test.npz'} --out DIR --refine {DEFAULT_REFINE_STEPS}` scores refined ones)")


def _random_colour_figures(out: Path, seed: int) -> None:
    """The shipped random-colour model's figures, on freshly generated random-colour scenes."""
    from econ_scenes.data import SceneSpec, generate
    from econ_scenes.figures import make_all
    from econ_scenes.scene import SceneModel

    run = shipped("random")
    if run is None:
        return
    scene_model = SceneModel.load(run)
    scenes = generate(SceneSpec.preset("random", size=scene_model.image_size), 256, seed=seed + 7)
    ood = generate(SceneSpec.preset("ood", size=scene_model.image_size), 8, seed=seed + 8)
    paths = make_all(scene_model, scenes.images, out, ood_images=ood, seed=seed)
    typer.echo(f"random-colour model ({run}): {', '.join(p.name for p in paths)} in {out}")


def headline(metrics: dict) -> str:
    """One line of the numbers a reader looks for first."""
    def pick(*keys: str) -> str:
        node = metrics
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                return "n/a"
            node = node[key]
        if isinstance(node, dict) and "mean" in node:
            node = node["mean"]
        return f"{node:.3f}" if isinstance(node, float | int) else json.dumps(node)

    return ("FG-ARI {} | ARI {} | mIoU {} | amodal IoU {} (occluded objects {}) | "
            "AMI(expert, class) {}".format(
                pick("segmentation", "fg_ari"), pick("segmentation", "ari"),
                pick("segmentation", "miou"), pick("amodal", "iou"),
                pick("amodal", "occluded_object_iou"), pick("specialisation", "ami")))


def _train(run: Path, data: Path, minutes: float, seed: int) -> None:
    from econ_scenes.config import override, preset
    from econ_scenes.train import train

    if minutes <= 0:
        raise EconError("--train-minutes must be > 0 when no model is shipped or given")
    config = override(preset("quick"), {"train.seed": seed, "train.max_minutes": minutes})
    typer.echo(f"training the quick preset for {minutes:g} minutes → {run}")
    if (run / "config.json").exists():
        result = train(run, resume=True, budget={"max_minutes": minutes})
    else:
        result = train(run, config=config, data=data)
    typer.echo(f"trained {result.iterations} iterations in {result.minutes:.1f} min")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
