"""``econ train``: train a new run from a preset, or resume one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from econ_scenes.config import parse_overrides
from econ_scenes.errors import EconError


def train_command(
    data: Annotated[Path | None, typer.Option(help="Training scenes (.npz or folder).")] = None,
    out: Annotated[Path | None, typer.Option(help="New run directory.")] = None,
    preset: Annotated[str | None, typer.Option(
        help="paper-unique | paper-random | quick | quick-random (default: quick)")] = None,
    config_file: Annotated[Path | None, typer.Option(
        "--config", help="Start from this run configuration (e.g. another run's config.json) "
        "instead of --preset.")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this directory.")] = None,
    val: Annotated[Path | None, typer.Option(help="Validation scenes (default: hold out the "
                                             "last n_val training scenes).")] = None,
    n_experts: Annotated[int | None, typer.Option("--n-experts", "-K")] = None,
    n_steps: Annotated[int | None, typer.Option("--n-steps", "-T")] = None,
    gt_masks: Annotated[bool | None, typer.Option(
        help="Train K=1 on ground-truth regions (default: as the preset or --config).")] = None,
    max_iterations: Annotated[int | None, typer.Option()] = None,
    max_minutes: Annotated[float | None, typer.Option()] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda")] = None,
    precision: Annotated[str | None, typer.Option(help="auto | fp32 | bf16 | fp16")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Any config field, e.g. "
                                                   "--set model.beta=2 --set train.lr=1e-3")] = None,
    init: Annotated[Path | None, typer.Option(help="Start from the weights of this run or "
                                              "combined ensemble.")] = None,
    init_parts: Annotated[str | None, typer.Option(help="With --init: the networks to take "
                                                   "from it, e.g. attention (default: "
                                                   "attention,encoder,decoder). Networks not "
                                                   "listed start fresh, so they may differ in "
                                                   "size.")] = None,
    freeze: Annotated[str | None, typer.Option(help="Experts to keep fixed, e.g. 0,1,2.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train ECON (Adam, plateau schedule of Appendix C.3) and write a run directory."""
    from econ_scenes.config import EXPERT_PARTS, RunConfig, override
    from econ_scenes.config import preset as get_preset
    from econ_scenes.train import train

    budget = {"max_iterations": max_iterations, "max_minutes": max_minutes}
    if resume is not None:
        _check_resume_options({
            "--data": data, "--out": out, "--preset": preset, "--config": config_file,
            "--val": val, "-K": n_experts, "-T": n_steps, "--gt-masks": gt_masks,
            "--seed": seed, "--device": device, "--precision": precision, "--set": set_,
            "--init": init, "--init-parts": init_parts, "--freeze": freeze})
        result = train(resume, resume=True, budget=budget, progress=progress)
    else:
        if data is None or out is None:
            raise EconError("a new run needs --data and --out (or --resume RUN_DIR)")
        if not data.exists():
            raise EconError(f"data file {data} does not exist")
        if preset is not None and config_file is not None:
            raise EconError("give --preset or --config, not both (--config replaces the preset)")
        if init_parts is not None and init is None:
            raise EconError("--init-parts chooses networks of the run given by --init: give --init")
        overrides = parse_overrides(set_ or [])
        for key, value in {
            "model.n_experts": 1 if gt_masks and n_experts is None else n_experts,
            "model.n_steps": n_steps, "train.gt_masks": gt_masks, "train.seed": seed,
            "train.device": device, "train.precision": precision,
            "train.init_from": None if init is None else str(init.resolve()),
            # --init alone takes every network, whatever a --config run took
            "train.init_parts": init_parts or (EXPERT_PARTS if init is not None else None),
            "train.frozen_experts": None if freeze is None else _indices(freeze),
        }.items():
            if value is not None:
                overrides[key] = value
        base = (RunConfig.load(config_file) if config_file is not None
                else get_preset(preset or "quick"))
        config = override(base, overrides)
        result = train(out, config=config, data=data, val=val, budget=budget, progress=progress)
    typer.echo(f"stopped after {result.iterations} iterations ({result.stop_reason}), "
               f"{result.minutes:.1f} min; best validation loss {result.best_val_loss:.2f}; "
               f"run in {result.run_dir}")


def _check_resume_options(options: dict[str, Any]) -> None:
    """A resumed run keeps its own data and configuration; only the budget may change."""
    given = [name for name, value in options.items() if value is not None and value != []]
    if given:
        raise EconError(
            f"--resume continues a run with its own data and config.json; {', '.join(given)} "
            "would be ignored. Only --max-iterations, --max-minutes and --progress apply to a "
            "resumed run (start a new run with --init RUN to change anything else).")


def _indices(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError as error:
        raise EconError(f"--freeze expects comma-separated expert indices, got {text!r}") from error


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
