"""Tests of ``econ data make`` and ``econ data show``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from econ_scenes import cli
from econ_scenes.data import load_metadata, load_scenes

RUNNER = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def _registered() -> None:
    cli._register()


def invoke(*args: str) -> str:
    result = RUNNER.invoke(cli.app, ["data", *args])
    assert result.exit_code == 0, result.output
    return result.output


def econ(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "econ_scenes", "data", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_make_writes_a_dataset_with_its_settings(tmp_path: Path) -> None:
    out = tmp_path / "train.npz"
    output = invoke(
        "make", "--preset", "random", "--n", "20", "--size", "32", "--seed", "4", "--out", str(out)
    )
    assert "wrote 20 scenes" in output
    scenes = load_scenes(out, verify=True)
    assert len(scenes) == 20 and scenes.images.shape[1:] == (32, 32, 3)
    assert scenes.colors[:, 1:].min() >= 128
    record = load_metadata(out)
    assert (record["preset"], record["seed"], record["spec"]["colour_mode"]) == (
        "random",
        4,
        "random",
    )


def test_make_is_reproducible(tmp_path: Path) -> None:
    for name in ("a.npz", "b.npz"):
        invoke(
            "make",
            "--n",
            "5",
            "--size",
            "16",
            "--min-size",
            "0.3",
            "--seed",
            "9",
            "--out",
            str(tmp_path / name),
        )
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_make_options_reach_the_generator(tmp_path: Path) -> None:
    out = tmp_path / "ood"
    invoke(
        "make",
        "--preset",
        "ood",
        "--n",
        "30",
        "--size",
        "32",
        "--n-objects",
        "4",
        "--classes",
        "circle,square",
        "--min-size",
        "0.2",
        "--max-size",
        "0.25",
        "--near-background",
        "--out",
        str(out),
    )
    scenes = load_scenes(out)
    assert scenes.n_layers == 5 and set(np.unique(scenes.classes[:, 1:])) == {1, 2}
    spec = load_metadata(out)["spec"]
    assert spec["colour_mode"] == "near_background" and spec["repeat_classes"] is True
    assert (spec["min_size"], spec["max_size"]) == (0.2, 0.25)
    areas = scenes.shapes[:, 1:].sum(axis=(2, 3))
    assert areas.max() <= 8 * 8, "objects are at most 0.25 * 32 = 8 px wide"


def test_make_mixes_class_colours_into_random_ones(tmp_path: Path) -> None:
    out = tmp_path / "mixed.npz"
    invoke("make", "--preset", "random", "--n", "20", "--size", "16", "--min-size", "0.3",
           "--colour-mix", "0.5", "--out", str(out))
    assert load_metadata(out)["spec"]["colour_mix"] == 0.5
    scenes = load_scenes(out)
    reds = scenes.colors[:, 1:][scenes.classes[:, 1:] == 1].astype(int)
    assert reds[:, 0].min() >= 192 and reds[:, 1:].max() <= 128  # half of 255, half 128..255


def test_make_with_a_paper_split(tmp_path: Path) -> None:
    out = tmp_path / "val.npz"
    invoke("make", "--split", "validation", "--size", "32", "--seed", "1", "--out", str(out))
    assert len(load_scenes(out)) == 100


def test_show_draws_a_grid(tmp_path: Path, small_scenes_npz: Path) -> None:
    out = tmp_path / "figs" / "grid.png"
    output = invoke("show", str(small_scenes_npz), "--out", str(out), "--n", "3")
    assert "wrote 3 scenes" in output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["make", "--n", "0", "--out", "{tmp}/x.npz"], "must be positive"),
        (["make", "--n", "-3", "--out", "{tmp}/x.npz"], "must be positive"),
        (["make", "--n", "5", "--size", "4", "--out", "{tmp}/x.npz"], "image size"),
        (
            ["make", "--n", "5", "--size", "8", "--min-size", "0.2", "--out", "{tmp}/x.npz"],
            "too small",
        ),
        (["make", "--preset", "fancy", "--n", "5", "--out", "{tmp}/x.npz"], "unknown preset"),
        (["make", "--n", "5", "--out", "{tmp}/file/x.npz"], "cannot write"),
        (["make", "--n", "5", "--out", "{tmp}/folder"], "not a dataset folder"),
        (
            [
                "make",
                "--n",
                "5",
                "--near-background",
                "--colour-mode",
                "unique",
                "--out",
                "{tmp}/x.npz",
            ],
            "contradicts",
        ),
        (["show", "{tmp}/missing.npz"], "dataset not found"),
        (["show", "{tmp}/file", "--n", "0"], "--n"),
        (["show", "{tmp}/file"], "malformed dataset"),
    ],
)
def test_bad_arguments_give_one_error_line(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "file").write_text("not a dataset")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("keep me")
    result = econ(*(arg.format(tmp=tmp_path) for arg in args))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "x.npz").exists()
    assert (tmp_path / "folder" / "notes.txt").read_text() == "keep me"
