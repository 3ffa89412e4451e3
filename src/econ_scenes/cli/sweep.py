"""``econ sweep``: the random architecture search of Appendix C.4 (Optuna), and its report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from econ_scenes.errors import EconError


def sweep_command(
    preset: Annotated[str, typer.Option(help="Search space of Appendix C.4: unique | random")] = "unique",
    data: Annotated[Path | None, typer.Option(help="Training scenes (.npz or folder).")] = None,
    trials: Annotated[int, typer.Option(help="Trials in the whole study (all workers).")] = 512,
    storage: Annotated[str, typer.Option(help="Optuna storage URL shared by workers on several "
                                         "machines, e.g. postgresql://user@host/db (default: "
                                         "a journal file in the sweep folder).")] = "",
    study: Annotated[str | None, typer.Option(help="Study name (default: the preset).")] = None,
    out: Annotated[Path | None, typer.Option(help="Sweep folder (default: sweeps/STUDY).")] = None,
    budget_minutes: Annotated[float, typer.Option(help="Wall-time budget of each trial "
                                                  "(0 = train to convergence).")] = 0.0,
    max_iterations: Annotated[int | None, typer.Option(help="Iteration budget per trial.")] = None,
    val: Annotated[Path | None, typer.Option(help="Validation scenes.")] = None,
    seed: Annotated[int | None, typer.Option(help="Training seed of every trial.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Config overrides for every "
                                                   "trial, e.g. --set train.lr=1e-3")] = None,
    report: Annotated[str | None, typer.Option(help="Print the best trials of this study and "
                                               "plot the search instead of running trials.")] = None,
    progress: Annotated[bool, typer.Option(help="Progress bars per trial.")] = False,
) -> None:
    """Run one search worker (start several, on one or many machines, to search in parallel),
    or report on a study with --report."""
    from econ_scenes import sweep
    from econ_scenes.config import parse_overrides

    name = report or study or preset
    folder = out if out is not None else Path("sweeps") / name
    if report is not None:
        found = sweep.load_study(storage, folder, name, create=False)
        typer.echo(sweep.report(found, folder / "search.png"))
        return
    if data is None:
        raise EconError("a sweep needs --data (or --report STUDY)")
    settings = sweep.SweepSettings(
        space=preset, data=data, sweep_dir=folder, study=name, n_trials=trials, storage=storage,
        overrides=tuple(parse_overrides(set_ or []).items()), budget_minutes=budget_minutes,
        max_iterations=max_iterations, val=val, seed=seed, progress=progress,
    )
    done = sweep.run_worker(settings)
    typer.echo(sweep.report(done, folder / "search.png"))


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep_command)
