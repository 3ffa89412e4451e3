"""Tests of the paper's figures (``econ_scenes.figures``) and ``econ figures``.

A tiny untrained ensemble (16×16 images) keeps every test fast; the figures are checked for
the data they draw, not for what a trained model would show.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from matplotlib.figure import Figure
from matplotlib.image import imread
from typer.testing import CliRunner

from econ_scenes import cli
from econ_scenes import figures as F
from econ_scenes.cli import figures as figures_cli
from econ_scenes.config import PRESETS, override
from econ_scenes.data import Scenes, SceneSpec, generate, save_scenes
from econ_scenes.errors import EconError
from econ_scenes.model import ECON
from econ_scenes.scene import SceneModel
from econ_scenes.threads import one_thread

SIZE = 16
TINY = {"model.image_size": SIZE, "model.unet_channels": (4, 8, 8), "model.vae_layers": 2,
        "model.vae_features": 4}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (and the CPUs are shared)."""
    with one_thread():
        yield


def tiny_model(n_experts: int = 4, seed: int = 0) -> SceneModel:
    torch.manual_seed(seed)
    config = override(PRESETS["quick"], {**TINY, "model.n_experts": n_experts})
    return SceneModel(ECON(config.model), config, run_dir=None)


@pytest.fixture(scope="module")
def model() -> SceneModel:
    return tiny_model()


@pytest.fixture(scope="module")
def scenes() -> Scenes:
    return generate(SceneSpec.preset("unique", size=SIZE), 12, seed=0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, model: SceneModel) -> Path:
    path = tmp_path_factory.mktemp("run")
    model.save(path)
    return path


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, run_dir: Path, scenes: Scenes) -> list[Path]:
    """``econ figures RUN --data --out --single --seed --refine`` (in-process): every figure once."""
    data = tmp_path_factory.mktemp("data") / "train.npz"
    save_scenes(data, scenes)
    single = tmp_path_factory.mktemp("single")
    tiny_model(1, seed=1).save(single)
    out = tmp_path_factory.mktemp("figures")
    args = ["figures", str(run_dir), "--data", str(data), "--out", str(out), "--single",
            str(single), "--seed", "3", "--refine", "2"]
    result = CliRunner().invoke(figures_app(), args)
    assert result.exit_code == 0, result.output
    return [Path(line) for line in result.output.splitlines()]


def test_make_all_writes_every_figure(written: list[Path]) -> None:
    assert [p.name for p in written] == list(F.FILES.values())
    for path in written:
        image = imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, path
        assert image.std() > 0.01, f"{path.name} is blank"
    assert not [p for p in written[0].parent.iterdir() if p.suffix != ".png"], "temp files left"


def test_make_all_skips_fig5_without_a_single_expert_model(tmp_path: Path, model: SceneModel,
                                                           scenes: Scenes) -> None:
    ood = generate(SceneSpec.preset("ood", size=SIZE, n_objects=2), 2, seed=1)
    written = F.make_all(model, scenes.images[:4], tmp_path, ood_images=ood)
    assert {p.name for p in written} == set(F.FILES.values()) - {F.FILES["fig5"]}


def test_make_all_rejects_images_of_another_size(tmp_path: Path, model: SceneModel) -> None:
    wrong = generate(SceneSpec.preset("unique", size=32), 2, seed=0).images
    with pytest.raises(EconError, match="32×32 but the model expects 16×16"):
        F.make_all(model, wrong, tmp_path)
    with pytest.raises(EconError, match="uint8"):
        F.make_all(model, wrong.astype(np.float32), tmp_path)
    assert not any(tmp_path.iterdir())


def drawn(figure: Figure) -> list[np.ndarray]:
    """The panels of a figure in drawing order (block by block, row by row)."""
    (ax,) = figure.axes
    return [np.asarray(image.get_array()) for image in ax.images]


def texts(figure: Figure) -> list[str]:
    return [text.get_text() for text in figure.axes[0].texts]


def test_fig4_has_a_row_per_inference_step(model: SceneModel, scenes: Scenes) -> None:
    decomposition = model.decompose(scenes.images[:2], n_steps=3)
    figure = F.fig4_decomposition(scenes.images[1], decomposition, 1)
    panels = drawn(figure)
    assert len(panels) == 2 + 5 * 3
    winners = decomposition.winner[1].tolist()
    labels = [f"$t'={t + 1}$\nexpert {k}" for t, k in enumerate(winners)]
    assert [t for t in texts(figure) if t.startswith(("$t'", "scene"))] == ["scene", *labels]
    # the input and the reconstruction come first
    np.testing.assert_allclose(panels[0], scenes.images[1] / 255.0, atol=1e-6)
    np.testing.assert_allclose(
        panels[1], decomposition.reconstruction[1].permute(1, 2, 0).clamp(0, 1).numpy(), atol=1e-6)
    # step t' = 2: scope, region, r ⊙ x, object, shape
    scope, region, _, obj, shape = panels[2 + 5 : 2 + 10]
    np.testing.assert_allclose(scope, decomposition.scope[1, 1].numpy(), atol=1e-6)
    np.testing.assert_allclose(region, decomposition.region[1, 1].numpy(), atol=1e-6)
    np.testing.assert_allclose(obj, decomposition.appearance[1, 1].permute(1, 2, 0).numpy(),
                               atol=1e-6)
    np.testing.assert_allclose(shape, decomposition.shape[1, 1].numpy(), atol=1e-6)
    with pytest.raises(EconError, match="out of range"):
        F.fig4_decomposition(scenes.images[0], decomposition, 2)


def test_fig7_last_column_is_the_composed_image(model: SceneModel) -> None:
    composition = model.compose([[0, 1, 2], [3, -1, 1]], seed=2, sample_shapes=True)
    canvases = F.layered_canvases(composition)
    assert canvases.shape == (2, 3, SIZE, SIZE, 3)
    expected = composition.image.permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(canvases[:, -1], expected, atol=1e-6)
    np.testing.assert_allclose(canvases[1, 1], canvases[1, 0])  # an empty layer changes nothing
    figure = F.fig7_layered_sampling(composition)
    panels = drawn(figure)
    assert len(panels) == 2 * 3
    np.testing.assert_allclose(np.stack([panels[2], panels[5]]), expected, atol=1e-6)
    assert "(no layer)" in texts(figure)


def test_expert_samples_are_drawn_on_a_checkerboard(scenes: Scenes) -> None:
    appearance = torch.zeros(2, 3, 8, 8)
    appearance[:, 0] = 1.0  # red
    shape = torch.zeros(2, 8, 8)
    shape[:, 2:6, 2:6] = 1.0
    (panels,) = F.expert_sample_panels([(appearance, shape)])
    assert panels.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(panels[:, 2:6, 2:6], np.broadcast_to([1, 0, 0], (2, 4, 4, 3)))
    outside = panels[0, :2]
    assert np.all(outside[..., 0] == outside[..., 1]) and len(np.unique(outside)) == 2
    figure = F.fig6_expert_samples([(appearance, shape)] * 3, title="random colours",
                                   scenes=scenes.images)
    assert len(drawn(figure)) == 2 + 3 * 2 and figure.get_suptitle() == "random colours"
    assert texts(figure)[:2] == ["training scenes", "data"]


def test_compositions_list_the_experts_of_each_scene(model: SceneModel) -> None:
    three = model.compose([0, 1, 2, 3], n=2)
    four = model.compose([[0, 1, 2, 3, 1], [-1, 0, 3, 3, 2]])
    figure = F.fig1_compositions(three, four)
    assert len(drawn(figure)) == 4
    captions = [t for t in texts(figure) if "·" in t]
    assert captions == ["0·1·2·3", "0·1·2·3", "0·1·2·3·1", "0·3·3·2"]


def test_random_sequences_keep_the_background_at_the_back() -> None:
    rng = np.random.default_rng(0)
    sequences = F.random_sequences(2, 4, 3, 50, rng)
    assert all(len(s) == 4 and s[0] == 2 and 2 not in s[1:] for s in sequences)
    assert F.random_sequences(0, 1, 2, 1, rng) == [[0, 0, 0]]


def test_save_writes_atomically(tmp_path: Path) -> None:
    figure = F.fig1_training_scenes(np.zeros((2, 8, 8, 3), np.uint8))
    path = F.save(figure, tmp_path / "a" / "grid.png")
    assert imread(path).ndim == 3 and [p.name for p in path.parent.iterdir()] == ["grid.png"]
    (tmp_path / "file").write_text("")
    with pytest.raises(EconError, match=r"cannot write .*grid\.png"):
        F.save(figure, tmp_path / "file" / "grid.png")


# --- econ figures ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wrong_size_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = SceneSpec.preset("unique", size=32)
    path = tmp_path_factory.mktemp("data") / "big.npz"
    save_scenes(path, generate(spec, 2, seed=0), spec)
    return path


def figures_app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)

    @app.callback()
    def _root() -> None:  # keeps `figures` a subcommand, as in the econ app
        pass

    figures_cli.register(app)
    figures_cli.register(app)  # registering twice is harmless
    return app


def test_cli_rejects_data_of_another_image_size(run_dir: Path, wrong_size_data: Path,
                                                tmp_path: Path) -> None:
    args = ["figures", str(run_dir), "--data", str(wrong_size_data), "--out", str(tmp_path)]
    result = CliRunner().invoke(figures_app(), args)
    assert isinstance(result.exception, EconError)
    assert "32×32 images but the model" in str(result.exception)
    missing = CliRunner().invoke(figures_app(), ["figures", str(tmp_path / "nope"), *args[2:]])
    assert isinstance(missing.exception, EconError)
    negative = CliRunner().invoke(figures_app(), [*args, "--refine", "-1"])
    assert isinstance(negative.exception, EconError)
    assert "--refine must be >= 0" in str(negative.exception)
    assert not any(tmp_path.iterdir())


def test_econ_figures_prints_one_error_line(run_dir: Path, wrong_size_data: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Through ``econ_scenes.cli.main``: exit status 2 and a single ``error:`` line."""
    args = ["figures", str(run_dir), "--data", str(wrong_size_data), "--out", str(tmp_path)]
    registered = '"figures"' in Path(cli.__file__).read_text()
    if registered:  # the real command line, once `figures` is in the module list
        result = subprocess.run([sys.executable, "-m", "econ_scenes", *args], capture_output=True,
                                text=True, timeout=120, check=False)
        code, stderr = result.returncode, result.stderr
    else:
        app = figures_app()
        monkeypatch.setattr(cli, "app", app)
        monkeypatch.setattr(cli, "_register", lambda: None)
        with pytest.raises(SystemExit) as exit_info:
            cli.main(args)
        code, stderr = exit_info.value.code, capsys.readouterr().err
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data ") and "16×16" in lines[0]
