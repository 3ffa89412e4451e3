"""The scene API: decompose, sample_expert, compose, the sequence prior and modular experts."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from econ_scenes.config import ModelConfig, RunConfig, TrainConfig
from econ_scenes.data import Scenes
from econ_scenes.errors import EconError
from econ_scenes.model import ECON
from econ_scenes.scene import LatentPrior, SceneModel, SequencePrior, layer_scene
from econ_scenes.train import train
from econ_scenes.types import Decomposition

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture
def scene_model(tiny_model_config: ModelConfig) -> SceneModel:
    torch.manual_seed(0)
    config = RunConfig(model=tiny_model_config)
    return SceneModel(ECON(tiny_model_config), config, run_dir=None)


def test_compose_equals_layering_of_its_layers(scene_model: SceneModel) -> None:
    c = scene_model.compose([0, 2, 1, 2], 5, seed=3)
    assert c.image.shape == (5, 3, 16, 16)
    assert c.appearance.shape == (5, 4, 3, 16, 16)
    assert c.shape.shape == (5, 4, 16, 16)
    assert set(c.shape.unique().tolist()) <= {0.0, 1.0}
    expected = torch.zeros(5, 3, 16, 16)
    for t in range(4):  # back to front, by hand
        m = c.shape[:, t : t + 1]
        expected = m * c.appearance[:, t] + (1 - m) * expected
    torch.testing.assert_close(c.image, expected)
    # the front layer is visible wherever its shape is
    front = c.shape[:, 3].bool()
    torch.testing.assert_close(c.image.permute(0, 2, 3, 1)[front],
                               c.appearance[:, 3].permute(0, 2, 3, 1)[front])


def test_the_background_layer_is_full_unless_asked_otherwise(scene_model: SceneModel) -> None:
    """m_1 = 1 (footnote 2): the back layer covers the canvas, so no pixel stays black; with
    background=False it is thresholded like the others and, untrained, leaves holes."""
    full = scene_model.compose([1, 0, 2], 4, seed=2)
    drawn = scene_model.compose([1, 0, 2], 4, seed=2, background=False)
    assert (full.shape[:, 0] == 1).all()
    torch.testing.assert_close(full.shape[:, 1:], drawn.shape[:, 1:])
    assert not (drawn.shape[:, 0] == 1).all()
    torch.testing.assert_close(full.latent, drawn.latent)


def test_compose_is_seeded_and_accepts_per_scene_sequences(scene_model: SceneModel) -> None:
    a = scene_model.compose([1, 0], 3, seed=1)
    b = scene_model.compose([1, 0], 3, seed=1)
    torch.testing.assert_close(a.image, b.image)
    ragged = scene_model.compose([[-1, 0, 1], [2, 1, 0]], seed=0)
    assert ragged.shape[0, 0].sum() == 0  # -1 marks no layer
    assert (ragged.shape[0, 1] == 1).all() and (ragged.shape[1, 0] == 1).all()
    with pytest.raises(EconError, match="out of range"):
        scene_model.compose([0, 7], 2)
    with pytest.raises(EconError, match="n >= 1"):
        scene_model.compose([0], 0)


def test_sample_expert_shapes_and_range(scene_model: SceneModel) -> None:
    appearance, shape = scene_model.sample_expert(1, 6, seed=0)
    assert appearance.shape == (6, 3, 16, 16) and shape.shape == (6, 16, 16)
    assert appearance.min() >= 0 and appearance.max() <= 1
    assert shape.min() >= 0 and shape.max() <= 1
    with pytest.raises(EconError, match="out of range"):
        scene_model.sample_expert(3, 2)
    with pytest.raises(EconError, match="out of range"):
        scene_model.sample_expert(-1, 2)


def test_decompose_arrays_and_partition(scene_model: SceneModel, tiny_scenes: Scenes) -> None:
    d = scene_model.decompose(tiny_scenes.images[:10], batch_size=4)
    arrays = d.numpy()
    assert arrays["winners"].shape == (10, 3)
    for name in ("regions", "scopes", "shapes"):
        assert arrays[name].shape == (10, 3, 16, 16)
    assert arrays["objects"].shape == (10, 3, 16, 16, 3)
    assert arrays["reconstruction"].shape == (10, 16, 16, 3)
    np.testing.assert_allclose(arrays["regions"].sum(axis=1), 1.0, atol=1e-5)
    more = scene_model.decompose(tiny_scenes.images[:2], n_steps=5)
    assert more.region.shape[1] == 5
    torch.testing.assert_close(more.region.sum(1), torch.ones(2, 16, 16), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((2, 16, 16, 3), dtype=np.float32), "uint8"),
        (np.zeros((2, 16, 16, 4), dtype=np.uint8), r"\(N, H, W, 3\)"),
        (np.zeros((2, 32, 32, 3), dtype=np.uint8), "16×16"),
        (np.zeros((0, 16, 16, 3), dtype=np.uint8), "no images"),
    ],
)
def test_decompose_rejects_bad_images(scene_model: SceneModel, images: np.ndarray,
                                      message: str) -> None:
    with pytest.raises(EconError, match=message):
        scene_model.decompose(images)


def test_decompose_rejects_nan(scene_model: SceneModel) -> None:
    images = torch.rand(2, 3, 16, 16)
    images[0, 0, 0, 0] = float("nan")
    with pytest.raises(EconError, match="NaN"):
        scene_model.decompose(images)


def test_sequence_prior_fit_and_sample() -> None:
    region = torch.zeros(4, 3, 8, 8)
    region[:, 0, :2] = 1  # front object: 16 pixels
    region[:, 1, 2:] = 1  # background: 48 pixels; step 3 empty
    winner = torch.tensor([[1, 0, 2], [1, 0, 2], [2, 0, 1], [1, 0, 1]])
    d = Decomposition(winner=winner, region=region, scope=region, appearance=torch.zeros(4, 3, 3, 8, 8),
                      shape=region, latent=torch.zeros(4, 3, 2), step_scores=torch.zeros(4, 3, 3),
                      reconstruction=torch.zeros(4, 3, 8, 8))
    prior = SequencePrior.fit(d, min_pixels=4)
    assert dict(zip(prior.sequences, prior.probabilities, strict=True)) == {(0, 1): 0.75, (0, 2): 0.25}
    draws = prior.sample(2000, np.random.default_rng(0))
    assert abs(sum(s == (0, 1) for s in draws) / 2000 - 0.75) < 0.05


def test_latent_prior_fits_each_experts_latents_and_samples_them() -> None:
    """Expert 0's latents sit around (3, −2), expert 1's around (−4, 1); expert 2 has too few
    and keeps N(0, I). Samples follow the fitted densities; the file round-trips."""
    generator = torch.Generator().manual_seed(0)
    n = 200
    latent = torch.zeros(n, 2, 2)
    latent[:, 0] = torch.tensor([3.0, -2.0]) + 0.1 * torch.randn(n, 2, generator=generator)
    latent[:, 1] = torch.tensor([-4.0, 1.0]) + 0.5 * torch.randn(n, 2, generator=generator)
    winner = torch.tensor([[0, 1]]).repeat(n, 1)
    winner[:5, 1] = 2
    region = torch.ones(n, 2, 4, 4)
    d = Decomposition(winner=winner, region=region, scope=region,
                      appearance=torch.zeros(n, 2, 3, 4, 4), shape=region, latent=latent,
                      step_scores=torch.zeros(n, 2, 3), reconstruction=torch.zeros(n, 3, 4, 4))
    prior = LatentPrior.fit(d, min_pixels=1)
    assert set(prior.mixtures) == {0, 1}
    experts = torch.tensor([0] * 3000 + [1] * 3000 + [2] * 3000)
    z = prior.sample(experts, 2, torch.Generator().manual_seed(1))
    assert z.shape == (9000, 2)
    # against the data each mixture was fitted to (sampling error: σ/√3000)
    torch.testing.assert_close(z[:3000].mean(0), latent[:, 0].mean(0), atol=0.01, rtol=0)
    torch.testing.assert_close(z[:3000].std(0), latent[:, 0].std(0), atol=0.01, rtol=0)
    torch.testing.assert_close(z[3000:6000].mean(0), latent[5:, 1].mean(0), atol=0.04, rtol=0)
    torch.testing.assert_close(z[6000:].mean(0), torch.zeros(2), atol=0.06, rtol=0)
    torch.testing.assert_close(z[6000:].std(0), torch.ones(2), atol=0.06, rtol=0)


def test_fit_prior_writes_the_latent_prior_that_sampling_then_uses(
        scene_model: SceneModel, tiny_scenes: Scenes, tmp_path: Path) -> None:
    scene_model.save(tmp_path / "run")
    loaded = SceneModel.load(tmp_path / "run")
    assert loaded.latent_prior is None
    standard = loaded.sample_expert(0, 4, seed=3)
    loaded.fit_prior(tiny_scenes.images[:40], min_pixels=1)
    assert (tmp_path / "run" / "latents.json").is_file()
    again = SceneModel.load(tmp_path / "run")
    assert again.latent_prior is not None and again.latent_prior.mixtures
    fitted = next(iter(again.latent_prior.mixtures))
    a = again.sample_expert(fitted, 4, seed=3)
    b = loaded.sample_expert(fitted, 4, seed=3)
    torch.testing.assert_close(a[0], b[0])
    if fitted == 0:
        assert not torch.equal(a[0], standard[0])
    (tmp_path / "run" / "latents.json").write_text("{not json")
    with pytest.raises(EconError, match="corrupt latent prior"):
        SceneModel.load(tmp_path / "run")


def test_the_latent_prior_is_fitted_to_refined_latents(scene_model: SceneModel,
                                                      tiny_scenes: Scenes) -> None:
    images = tiny_scenes.images[:40]
    scene_model.fit_prior(images, min_pixels=1, refine_steps=3, save=False)
    fitted = scene_model.latent_prior
    expected = LatentPrior.fit(scene_model.decompose(images, refine_steps=3), 1)
    assert fitted is not None and fitted.mixtures.keys() == expected.mixtures.keys()
    for k, (weights, means, chol) in expected.mixtures.items():
        torch.testing.assert_close(fitted.mixtures[k][1], means)
        torch.testing.assert_close(fitted.mixtures[k][0], weights)
        torch.testing.assert_close(fitted.mixtures[k][2], chol)
    scene_model.fit_prior(images, min_pixels=1, refine_steps=0, save=False)
    encoder_only = scene_model.latent_prior
    assert encoder_only is not None
    k = next(iter(expected.mixtures))
    assert not torch.allclose(encoder_only.mixtures[k][1], expected.mixtures[k][1])


def test_prior_round_trip_and_unconditional_generation(scene_model: SceneModel, tiny_scenes: Scenes,
                                                       tmp_path: Path) -> None:
    scene_model.save(tmp_path / "run")
    loaded = SceneModel.load(tmp_path / "run")
    with pytest.raises(EconError, match="no prior"):
        loaded.prior()
    prior = loaded.fit_prior(tiny_scenes.images[:12], min_pixels=1)
    assert (tmp_path / "run" / "prior.json").is_file()
    assert loaded.prior() == prior
    c = loaded.compose_from_prior(6, seed=1)
    assert c.image.shape == (6, 3, 16, 16)
    assert torch.isfinite(c.image).all()


def test_load_round_trip_gives_same_decomposition(scene_model: SceneModel, tiny_scenes: Scenes,
                                                  tmp_path: Path) -> None:
    scene_model.save(tmp_path / "run")
    loaded = SceneModel.load(tmp_path / "run")
    a = scene_model.decompose(tiny_scenes.images[:4])
    b = loaded.decompose(tiny_scenes.images[:4])
    torch.testing.assert_close(a.region, b.region)
    assert torch.equal(a.winner, b.winner)


def test_modular_experts_save_combine_and_freeze(scene_model: SceneModel, tiny_scenes: Scenes,
                                                 tmp_path: Path, tiny_scenes_npz: Path) -> None:
    scene_model.save_expert(2, tmp_path / "e2.safetensors")
    scene_model.save_expert(0, tmp_path / "e0.safetensors")
    mixed = SceneModel.from_experts([tmp_path / "e2.safetensors", tmp_path / "e0.safetensors"], extra=1)
    assert mixed.n_experts == 3
    # expert 0 of the new ensemble is expert 2 of the old one: same samples
    torch.testing.assert_close(mixed.sample_expert(0, 3, seed=5)[0],
                               scene_model.sample_expert(2, 3, seed=5)[0])
    torch.testing.assert_close(mixed.sample_expert(1, 3, seed=5)[1],
                               scene_model.sample_expert(0, 3, seed=5)[1])
    mixed.save(tmp_path / "mixed")
    config = RunConfig(
        model=mixed.config.model,
        train=TrainConfig(batch_size=4, n_val=8, eval_every=5, checkpoint_every=100,
                          image_every=0, device="cpu", precision="fp32",
                          init_from=str(tmp_path / "mixed"), frozen_experts=(0, 1)),
    )
    train(tmp_path / "run", config=config, data=tiny_scenes_npz, budget={"max_iterations": 5},
          progress=False)
    trained = SceneModel.load(tmp_path / "run")
    before = mixed.model.state_dict()
    after = trained.model.state_dict()
    changed_new = False
    for name, value in after.items():
        torch.testing.assert_close(value[:2], before[name][:2], rtol=0, atol=0)  # frozen
        changed_new |= not torch.equal(value[2], before[name][2])
    assert changed_new, "the added expert did not learn"


def test_combining_experts_of_different_architectures_fails(scene_model: SceneModel,
                                                            tiny_model_config: ModelConfig,
                                                            tmp_path: Path) -> None:
    other_config = dataclasses.replace(tiny_model_config, latent_dim=3)
    other = SceneModel(ECON(other_config), RunConfig(model=other_config))
    scene_model.save_expert(0, tmp_path / "a.safetensors")
    other.save_expert(0, tmp_path / "b.safetensors")
    with pytest.raises(EconError, match="architecture"):
        SceneModel.from_experts([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])
    (tmp_path / "broken.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(EconError, match="cannot read"):
        SceneModel.from_experts([tmp_path / "broken.safetensors"])


def test_gt_trained_single_expert_shapes_contain_regions(tiny_scenes_npz: Path, tiny_scenes: Scenes,
                                                         tiny_model_config: ModelConfig,
                                                         tmp_path: Path) -> None:
    """K=1 trained on ground-truth regions (the MONet extension). The background is the layer
    every object occludes: its region has holes, but thanks to the scope in the mask KL (12) its
    full shape is free to cover them. After a short training the background's shape contains its
    region and inpaints the occluded pixels. (Object shapes need longer training: `econ evaluate`
    measures their amodal IoU on trained models.)"""
    model_config = dataclasses.replace(tiny_model_config, n_experts=1, n_steps=3, gamma=3.0)
    config = RunConfig(model=model_config, train=TrainConfig(
        batch_size=8, lr=3e-3, n_val=8, eval_every=50, checkpoint_every=1000, image_every=0,
        device="cpu", precision="fp32", gt_masks=True)).validate()
    train(tmp_path / "single", config=config, data=tiny_scenes_npz,
          budget={"max_iterations": 250}, progress=False)
    model = SceneModel.load(tmp_path / "single")
    regions = tiny_scenes.visible()[:16, ::-1].astype(np.float32)
    d = model.decompose(tiny_scenes.images[:16], regions=regions)
    torch.testing.assert_close(d.region, torch.from_numpy(regions.copy()))
    torch.testing.assert_close(d.region.sum(1), torch.ones(16, 16, 16))
    background_region = d.region[:, -1] > 0.5
    background_shape = d.shape[:, -1] > 0.5
    occluded = ~background_region
    assert occluded.any()
    contained = (background_shape & background_region).sum() / background_region.sum()
    inpainted = (background_shape & occluded).sum() / occluded.sum()
    assert contained > 0.95, f"background shape covers only {contained:.2f} of its region"
    assert inpainted > 0.9, f"background shape fills only {inpainted:.2f} of the occluded pixels"


def test_cli_decompose_sample_compose(scene_model: SceneModel, tiny_scenes_npz: Path,
                                      tmp_path: Path) -> None:
    run = tmp_path / "run"
    scene_model.save(run)

    def econ(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "econ_scenes", *args], capture_output=True,
                              text=True, timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": ""})

    result = econ("decompose", str(run), "--images", str(tiny_scenes_npz), "--out", str(tmp_path / "d.npz"))
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "d.npz") as d:
        assert d["regions"].shape[1:] == (3, 16, 16)
        assert d["winners"].dtype.kind == "i"
    assert (tmp_path / "d.png").is_file()
    result = econ("decompose", str(run), "--images", str(tiny_scenes_npz), "--out",
                  str(tmp_path / "r.npz"), "--refine", "3")
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "d.npz") as d, np.load(tmp_path / "r.npz") as r:
        np.testing.assert_array_equal(r["winners"], d["winners"])
        assert not np.allclose(r["latents"], d["latents"])
    result = econ("compose", str(run), "--experts", "0,1,2", "--n", "4", "--out", str(tmp_path / "c.npz"))
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "c.npz") as c:
        assert c["images"].shape == (4, 16, 16, 3)
    result = econ("compose", str(run), "--prior", "--data", str(tiny_scenes_npz), "--refine", "2",
                  "--n", "3", "--out", str(tmp_path / "p.npz"))
    assert result.returncode == 0, result.stderr
    assert (run / "prior.json").is_file() and (run / "latents.json").is_file()
    with np.load(tmp_path / "p.npz") as c:
        assert c["images"].shape == (3, 16, 16, 3)
    for args, message in [
        (("sample", str(run), "--expert", "9", "--out", str(tmp_path / "s.npz")), "out of range"),
        (("decompose", str(run), "--images", str(tmp_path / "missing.npz"), "--out", "x.npz"), "no images"),
        (("compose", str(run), "--experts", "a,b", "--out", str(tmp_path / "c.npz")), "integers"),
        (("decompose", str(run), "--images", str(tiny_scenes_npz), "--out", "x.npz", "--refine",
          "-1"), "--refine must be >= 0"),
        (("compose", str(run), "--prior", "--data", str(tiny_scenes_npz), "--refine", "-2",
          "--out", str(tmp_path / "c.npz")), "--refine must be >= 0"),
    ]:
        result = econ(*args)
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
    empty = tmp_path / "empty.npz"
    np.savez(empty, images=np.zeros((0, 16, 16, 3), dtype=np.uint8))
    result = econ("decompose", str(run), "--images", str(empty), "--out", str(tmp_path / "e.npz"))
    assert result.returncode == 2 and "no images" in result.stderr


def test_layer_scene_front_occludes_back() -> None:
    appearance = torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)]).unsqueeze(0)
    shape = torch.zeros(1, 2, 4, 4)
    shape[0, 0] = 1
    shape[0, 1, :2] = 1
    image = layer_scene(appearance, shape)
    assert image[0, :, :2].eq(1).all() and image[0, :, 2:].eq(0).all()
