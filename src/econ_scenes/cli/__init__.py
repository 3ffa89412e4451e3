"""The ``econ`` command line: ``econ data|train|decompose|sample|compose|evaluate|figures|sweep|demo``.

Each sub-module registers its commands on the one Typer app. Errors a user can cause
(:class:`~econ_scenes.errors.EconError`, missing or unwritable files) print one line and exit 2.
"""

from __future__ import annotations

import sys

import typer

from econ_scenes.errors import EconError

app = typer.Typer(
    name="econ",
    help="ECON: Ensemble of Competing Object Networks (layered scene decomposition and generation).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    from econ_scenes.cli import data as data_cli

    data_cli.register(app)
    for name in ("train", "scene", "evaluate", "figures", "sweep", "demo"):
        try:
            module = __import__(f"econ_scenes.cli.{name}", fromlist=["register"])
        except ModuleNotFoundError as error:
            if error.name != f"econ_scenes.cli.{name}":
                raise
            continue
        module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``econ``)."""
    _register()
    try:
        app(args=argv, standalone_mode=True)
    except (EconError, FileNotFoundError, PermissionError, IsADirectoryError) as error:
        message = str(error) if isinstance(error, EconError) else f"{type(error).__name__}: {error}"
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
