"""Tests of the dead-leaves scene generator, the dataset format and the torch Dataset."""

from __future__ import annotations

import itertools
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from econ_scenes.data import (
    CLASS_NAMES,
    SceneDataset,
    Scenes,
    SceneSpec,
    compose_layers,
    generate,
    load_metadata,
    load_scenes,
    save_scenes,
    visible_regions,
)
from econ_scenes.data import generator as gen
from econ_scenes.errors import EconError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)

# ------------------------------------------------------------------- independent references


def paint(shapes: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Reference painter: uint8 (N, H, W, 3) from shapes (N, L, H, W) and colors (N, L, 3)."""
    n, n_layers, height, width = shapes.shape
    images = np.zeros((n, height, width, 3), dtype=np.uint8)
    for i, layer in itertools.product(range(n), range(n_layers)):
        images[i][shapes[i, layer]] = colors[i, layer]
    return images


def scope_regions(shapes: np.ndarray) -> np.ndarray:
    """Reference r_t = m_t ⊙ Π_{t' > t} (1 − m_t'), eq. (1)-(2) of the paper."""
    regions = np.zeros_like(shapes)
    for layer in range(shapes.shape[1]):
        later = shapes[:, layer + 1 :].any(axis=1)
        regions[:, layer] = shapes[:, layer] & ~later
    return regions


def object_boxes(scenes: Scenes) -> list[tuple[int, int, int, int, int, int]]:
    """(class, top, left, height, width, area) of every object layer's amodal mask."""
    boxes = []
    for i, layer in zip(*np.nonzero(scenes.classes > 0), strict=True):
        mask = scenes.shapes[i, layer]
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        boxes.append((int(scenes.classes[i, layer]), rows[0], cols[0], height, width, mask.sum()))
    return boxes


def spec_of(name: str, **overrides: object) -> SceneSpec:
    return SceneSpec.preset(name, size=32, **overrides)


# ---------------------------------------------------------------------------- composition


@pytest.mark.parametrize(
    "spec",
    [
        spec_of("unique"),
        spec_of("random"),
        spec_of("ood"),
        spec_of("ood", colour_mode="near_background"),
        spec_of("unique", min_objects=0),
    ],
    ids=["unique", "random", "ood", "near-background", "padded"],
)
def test_image_is_the_layered_composition(spec: SceneSpec) -> None:
    scenes = generate(spec, 40, seed=3)
    assert scenes.images.dtype == np.uint8 and scenes.images.shape == (40, 32, 32, 3)
    assert scenes.shapes.shape == (40, spec.n_objects + 1, 32, 32)
    np.testing.assert_array_equal(scenes.images, paint(scenes.shapes, scenes.colors))
    assert scenes.shapes[:, 0].all(), "layer 0 is the background and covers everything"
    assert (scenes.classes[:, 0] == 0).all()
    gen.check_content(scenes)


def test_compose_layers_on_a_hand_built_scene() -> None:
    shapes = np.zeros((3, 4, 4), dtype=bool)
    shapes[0] = True
    shapes[1, :2, :2] = True
    shapes[2, 1:3, 1:3] = True
    colors = np.array([[10, 20, 30], [255, 0, 0], [0, 0, 255]], dtype=np.uint8)
    image = compose_layers(shapes, colors)
    assert image.shape == (4, 4, 3)
    assert tuple(image[0, 0]) == (255, 0, 0)
    assert tuple(image[1, 1]) == (0, 0, 255), "the later layer occludes the earlier one"
    assert tuple(image[3, 3]) == (10, 20, 30)
    assert tuple(compose_layers(shapes[1:], colors[1:])[3, 3]) == (0, 0, 0), "empty canvas"


def test_visible_regions_are_disjoint_cover_and_match_the_image(small_scenes: Scenes) -> None:
    visible = small_scenes.visible()
    assert visible.dtype == bool and visible.shape == small_scenes.shapes.shape
    np.testing.assert_array_equal(visible.sum(axis=1), 1)
    np.testing.assert_array_equal(visible, scope_regions(small_scenes.shapes))
    assert not (visible & ~small_scenes.shapes).any(), "a region lies inside its shape"
    for i, layer in itertools.product(range(8), range(small_scenes.n_layers)):
        pixels = small_scenes.images[i][visible[i, layer]]
        assert (pixels == small_scenes.colors[i, layer]).all()


def test_visible_regions_of_one_scene_and_of_a_batch_agree(small_scenes: Scenes) -> None:
    one = visible_regions(small_scenes.shapes[5])
    np.testing.assert_array_equal(one, small_scenes.visible()[5])


def test_some_objects_are_partly_occluded(small_scenes: Scenes) -> None:
    visible = small_scenes.visible()
    hidden = (small_scenes.shapes & ~visible)[:, 1:].sum(axis=(2, 3))
    assert (hidden > 0).mean() > 0.2, "the data set must contain occlusions"


# -------------------------------------------------------------------------------- colours


def test_unique_preset_colours_and_classes(small_scenes: Scenes) -> None:
    objects, colours = small_scenes.classes[:, 1:], small_scenes.colors[:, 1:]
    np.testing.assert_array_equal(np.sort(objects, axis=1), [[1, 2, 3]] * len(small_scenes))
    for cls, rgb in zip((1, 2, 3), (RED, GREEN, BLUE), strict=True):
        assert (colours[objects == cls] == rgb).all(), CLASS_NAMES[cls]
    background = small_scenes.colors[:, 0]
    assert background.max() <= 127
    assert len(np.unique(background, axis=0)) > 50, "backgrounds are random"


def test_background_channels_span_0_to_127() -> None:
    background = generate(spec_of("unique"), 2000, seed=1).colors[:, 0]
    assert background.min() == 0 and background.max() == 127


def test_random_preset_colours() -> None:
    scenes = generate(spec_of("random"), 500, seed=2)
    colours = scenes.colors[:, 1:]
    assert colours.min() == 128 and colours.max() == 255
    assert scenes.colors[:, 0].max() <= 127
    np.testing.assert_array_equal(np.sort(scenes.classes[:, 1:], axis=1), [[1, 2, 3]] * 500)


def test_colour_mix_moves_random_colours_towards_the_class_colours() -> None:
    random = generate(spec_of("random"), 300, seed=6)
    classes = random.classes[:, 1:]
    class_colours = np.array([RED, GREEN, BLUE])[classes - 1].astype(float)
    for mix in (0.0, 0.4, 1.0):
        mixed = generate(spec_of("random", colour_mix=mix), 300, seed=6)
        np.testing.assert_array_equal(mixed.shapes, random.shapes)  # the same layouts
        np.testing.assert_array_equal(mixed.colors[:, 0], random.colors[:, 0])
        expected = np.rint((1 - mix) * class_colours + mix * random.colors[:, 1:])
        np.testing.assert_array_equal(mixed.colors[:, 1:], expected.astype(np.uint8))
    unique = generate(spec_of("random", colour_mix=0.0), 300, seed=6)
    assert {tuple(c) for c in unique.colors[:, 1:].reshape(-1, 3)} == {RED, GREEN, BLUE}


@pytest.mark.parametrize(("overrides", "message"), [
    ({"colour_mix": 1.5}, "colour_mix must be in"),
    ({"colour_mix": -0.1}, "colour_mix must be in"),
    ({"colour_mix": 0.5, "colour_mode": "unique"}, "needs colour mode random"),
    ({"colour_mix": "0.5"}, "must be a number"),
    ({"colour_mix": None}, "must be a number"),
])
def test_bad_colour_mix_is_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(EconError, match=message):
        spec_of("random", **overrides)


def test_colour_mix_is_stored_only_when_it_is_not_the_default() -> None:
    assert "colour_mix" not in spec_of("random").to_dict()  # files earlier versions can read
    mixed = spec_of("random", colour_mix=0.25)
    assert SceneSpec.from_dict(mixed.to_dict()) == mixed


def test_near_background_colours_are_close_but_distinct() -> None:
    scenes = generate(spec_of("ood", colour_mode="near_background"), 300, seed=4)
    background = scenes.colors[:, :1].astype(int)
    distance = np.abs(scenes.colors[:, 1:].astype(int) - background)
    assert distance.min() >= gen.NEAR_BACKGROUND_DELTA[0]
    assert distance.max() <= gen.NEAR_BACKGROUND_DELTA[1]


def test_ood_preset_has_five_objects_with_repeated_classes() -> None:
    spec = SceneSpec.preset("ood")
    assert (spec.n_objects, spec.repeat_classes, spec.colour_mode) == (5, True, "random")
    scenes = generate(spec_of("ood"), 200, seed=5)
    objects = scenes.classes[:, 1:]
    assert objects.shape == (200, 5) and set(np.unique(objects)) == {1, 2, 3}
    assert all(len(set(row)) < 5 for row in objects), "5 objects of 3 classes repeat"
    assert scenes.colors[:, 1:].min() >= 128


def test_class_subset_and_fewer_objects() -> None:
    scenes = generate(spec_of("unique", classes=(1, 3), n_objects=2), 50, seed=6)
    np.testing.assert_array_equal(np.sort(scenes.classes[:, 1:], axis=1), [[1, 3]] * 50)


# ------------------------------------------------------------------------------- geometry


def test_depth_order_is_uniform_over_the_six_permutations() -> None:
    scenes = generate(spec_of("unique"), 3000, seed=7)
    orders = [tuple(row) for row in scenes.classes[:, 1:]]
    permutations = list(itertools.permutations((1, 2, 3)))
    counts = [orders.count(p) for p in permutations]
    assert sum(counts) == 3000
    assert stats.chisquare(counts).pvalue > 0.001


def test_objects_are_whole_shapes_of_their_class_inside_the_image() -> None:
    spec = spec_of("ood", n_objects=6)
    low, high = spec.size_range_px()
    boxes = object_boxes(generate(spec, 150, seed=8))
    touching = 0
    for cls, top, left, height, width, area in boxes:
        # The apex of an even-sized triangle falls between two pixel centres: one row less.
        apex_row = int(cls == 3 and width % 2 == 0)
        assert height == width - apex_row, "a clipped object would lose its bounding box"
        assert low <= width <= high
        assert top >= 0 and left >= 0 and top + height <= 32 and left + width <= 32
        touching += top == 0 or left == 0 or top + height == 32 or left + width == 32
        expected = {1: np.pi / 4, 2: 1.0, 3: 0.5}[cls] * width * width
        tolerance = 0 if cls == 2 else 0.12 * expected
        assert abs(area - expected) <= tolerance, (CLASS_NAMES[cls], width, area)
    assert touching > 10, "objects must be able to touch the border (without crossing it)"


def test_objects_are_clearly_visible_at_32_pixels() -> None:
    spec = spec_of("unique")
    low, high = spec.size_range_px()
    assert (low, high) == (10, 16)


def test_layout_boxes_lie_inside_the_image() -> None:
    spec = spec_of("ood", min_size=0.2, max_size=1.0)
    layout = gen.sample_layout(spec, 2000, np.random.default_rng(0))
    objects = layout.classes > 0
    assert (layout.x[objects] >= 0).all() and (layout.y[objects] >= 0).all()
    assert (layout.x + layout.sizes <= 32).all() and (layout.y + layout.sizes <= 32).all()
    assert (layout.sizes[objects] == 32).any() and (layout.x[objects] == 0).any()


def test_rasterised_shapes_have_the_documented_geometry() -> None:
    layout = gen.Layout(
        classes=np.array([[2, 1, 3]]),
        sizes=np.array([[5, 6, 8]]),
        x=np.array([[2, 0, 10]]),
        y=np.array([[3, 0, 12]]),
        object_colors=np.zeros((1, 3, 3), np.uint8),
        background=np.zeros((1, 3), np.uint8),
    )
    shapes = gen.render_shapes(layout, 20)[0]
    square = np.zeros((20, 20), bool)
    square[3:8, 2:7] = True
    np.testing.assert_array_equal(shapes[1], square)
    circle = shapes[2][:6, :6]
    assert shapes[2].sum() == circle.sum() == 32  # pixel centres within radius 3
    np.testing.assert_array_equal(circle, circle.T)
    np.testing.assert_array_equal(circle, circle[::-1])
    triangle = shapes[3][12:20, 10:18]
    widths = triangle.sum(axis=1)
    assert shapes[3].sum() == widths.sum() and widths[-1] == 8 and widths[0] <= 2
    assert (np.diff(widths) >= 0).all(), "upright: widest at the base"
    np.testing.assert_array_equal(triangle, triangle[:, ::-1])


# -------------------------------------------------------------------------- seeds, chunks


def _assert_same(a: Scenes, b: Scenes) -> None:
    for name in ("images", "shapes", "classes", "colors"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name


def test_same_seed_same_bytes_different_seed_differs() -> None:
    spec = spec_of("random")
    _assert_same(generate(spec, 30, seed=11), generate(spec, 30, seed=11, progress=True))
    other = generate(spec, 30, seed=12)
    assert not np.array_equal(generate(spec, 30, seed=11).images, other.images)


def test_result_does_not_depend_on_the_chunk_size(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = spec_of("ood")
    whole = generate(spec, 50, seed=13)
    monkeypatch.setattr(gen, "CHUNK", 7)
    _assert_same(whole, generate(spec, 50, seed=13, progress=True))


# ---------------------------------------------------------------------------------- padding


def test_fewer_objects_pad_with_empty_layers_of_class_minus_one() -> None:
    scenes = generate(spec_of("unique", min_objects=1), 300, seed=14)
    objects = scenes.classes[:, 1:]
    counts = (objects > 0).sum(axis=1)
    assert set(np.unique(counts)) == {1, 2, 3}
    pad = scenes.classes == -1
    assert pad.any()
    assert not scenes.shapes[pad].any() and not scenes.colors[pad].any()
    for row, count in zip(objects, counts, strict=True):
        assert (row[:count] > 0).all() and (row[count:] == -1).all(), "padding goes on top"


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"size": 6}, "image size"),
        ({"size": 16, "min_size": 0.1}, "too small"),
        ({"min_size": 0.6, "max_size": 0.5}, "min_size"),
        ({"max_size": 1.5}, "max_size"),
        ({"n_objects": 0}, "n_objects"),
        ({"n_objects": 4}, "repeated classes"),
        ({"classes": ()}, "at least one"),
        ({"classes": (1, 1)}, "repeat"),
        ({"classes": (4,)}, "unknown object class"),
        ({"colour_mode": "pink"}, "colour mode"),
        ({"min_objects": 5}, "min_objects"),
        ({"shape": "star"}, "unknown scene setting"),
        ({"size": 32, "min_size": 0.33, "max_size": 0.34}, "whole-pixel"),
    ],
)
def test_bad_settings_raise_econ_error(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(EconError, match=message):
        SceneSpec.preset("unique", **overrides)


def test_unknown_preset_and_bad_counts() -> None:
    with pytest.raises(EconError, match="unknown preset 'foo'"):
        SceneSpec.preset("foo")
    with pytest.raises(EconError, match="positive"):
        generate(SceneSpec(), 0, seed=0)
    with pytest.raises(EconError, match="seed"):
        generate(SceneSpec(), 1, seed=-1)
    with pytest.raises(EconError, match="repeated classes"):
        generate(SceneSpec(n_objects=5), 1, seed=0)


def test_classes_by_name() -> None:
    spec = SceneSpec.preset("unique", classes="triangle, circle")
    assert (spec.classes, spec.n_objects) == ((3, 1), 2), "one object of each class"
    assert SceneSpec.preset("ood", classes="square").n_objects == 5


def test_scenes_reject_inconsistent_arrays(small_scenes: Scenes) -> None:
    with pytest.raises(EconError, match="classes must have dtype int64"):
        Scenes(
            small_scenes.images,
            small_scenes.shapes,
            small_scenes.classes.astype(np.int32),
            small_scenes.colors,
        )
    with pytest.raises(EconError, match="colors has shape"):
        Scenes(
            small_scenes.images,
            small_scenes.shapes,
            small_scenes.classes,
            small_scenes.colors[:, :2],
        )


def test_subset(small_scenes: Scenes) -> None:
    assert len(small_scenes.subset(slice(2, 5))) == 3
    assert len(small_scenes.subset(-1)) == 1
    np.testing.assert_array_equal(small_scenes.subset(4).images[0], small_scenes.images[4])
    chosen = small_scenes.subset(np.array([0, 3]))
    np.testing.assert_array_equal(chosen.classes, small_scenes.classes[[0, 3]])


# -------------------------------------------------------------------------------- storage


@pytest.mark.parametrize("name", ["scenes.npz", "scenes"])
@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(
    tmp_path: Path, small_scenes: Scenes, small_scene_spec: SceneSpec, name: str, mmap: bool
) -> None:
    path = tmp_path / "sub" / name
    save_scenes(path, small_scenes, small_scene_spec, extra={"seed": 0})
    loaded = load_scenes(path, mmap=mmap, verify=True)
    _assert_same(small_scenes, loaded)
    assert isinstance(loaded.shapes, np.memmap) == mmap
    record = load_metadata(path)
    assert record["seed"] == 0 and record["n"] == 64
    assert SceneSpec.from_dict(record["spec"]) == small_scene_spec
    assert sorted(p.name for p in path.parent.iterdir()) == [name], "no temporary files left"


def test_npz_is_plain_numpy(small_scenes_npz: Path, small_scenes: Scenes) -> None:
    with zipfile.ZipFile(small_scenes_npz) as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}
    with np.load(small_scenes_npz, allow_pickle=False) as archive:
        assert set(archive.files) == {"images", "shapes", "classes", "colors", "spec"}
        assert archive["shapes"].dtype == bool and archive["classes"].dtype == np.int64
        np.testing.assert_array_equal(archive["images"], small_scenes.images)
        assert archive["spec"].shape == ()


def test_saving_overwrites_a_dataset_atomically(tmp_path: Path, small_scenes: Scenes) -> None:
    for name in ("d.npz", "d"):
        save_scenes(tmp_path / name, small_scenes.subset(slice(0, 3)))
        save_scenes(tmp_path / name, small_scenes.subset(slice(0, 5)))
        assert len(load_scenes(tmp_path / name)) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "d.npz"]


def test_saving_refuses_to_replace_other_folders(tmp_path: Path, small_scenes: Scenes) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("precious")
    with pytest.raises(EconError, match="not a dataset folder"):
        save_scenes(tmp_path / "notes", small_scenes)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(EconError, match="cannot write"):
        save_scenes(blocker / "x.npz", small_scenes)


def _write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _arrays(scenes: Scenes) -> dict[str, np.ndarray]:
    return {name: np.array(getattr(scenes, name)) for name in gen.ARRAY_DTYPES}  # copies


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.pop("shapes"), "missing array"),
        (lambda a: a.update(classes=a["classes"].astype(np.int32)), "dtype int64"),
        (lambda a: a.update(images=a["images"].astype(np.float32)), "dtype uint8"),
        (lambda a: a.update(shapes=a["shapes"][:-1]), "shapes has shape"),
        (lambda a: a.update(colors=a["colors"][:, :, :2]), "colors has shape"),
        (lambda a: a.update(images=a["images"][..., 0]), r"\(N, H, W, 3\)"),
        (lambda a: a["classes"].__setitem__((0, 0), 2), "layer 0"),
        (lambda a: a["classes"].__setitem__((1, 2), 7), "1..3"),
    ],
)
def test_loader_rejects_malformed_archives(
    tmp_path: Path, small_scenes: Scenes, change: object, message: str
) -> None:
    arrays = _arrays(small_scenes.subset(slice(0, 4)))
    change(arrays)  # type: ignore[operator]
    path = _write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(EconError, match=message):
        load_scenes(path)


def test_loader_rejects_missing_garbage_and_truncated_files(
    tmp_path: Path, small_scenes_npz: Path
) -> None:
    with pytest.raises(EconError, match="not found"):
        load_scenes(tmp_path / "nothing.npz")
    (tmp_path / "garbage.npz").write_bytes(b"this is not a zip archive")
    with pytest.raises(EconError, match=r"not an \.npz archive"):
        load_scenes(tmp_path / "garbage.npz")
    data = small_scenes_npz.read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(EconError, match="malformed"):
        load_scenes(tmp_path / "truncated.npz")


def test_loader_rejects_broken_folders(tmp_path: Path, small_scenes: Scenes) -> None:
    folder = tmp_path / "ds"
    save_scenes(folder, small_scenes.subset(slice(0, 4)))
    (folder / "colors.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(EconError, match=r"cannot read colors\.npy"):
        load_scenes(folder)
    (folder / "colors.npy").unlink()
    with pytest.raises(EconError, match=r"missing colors\.npy"):
        load_scenes(folder)


def test_verify_catches_images_that_do_not_match_the_layers(
    tmp_path: Path, small_scenes: Scenes
) -> None:
    arrays = _arrays(small_scenes.subset(slice(0, 4)))
    arrays["images"][0, 0, 0] += 1
    path = _write_npz(tmp_path / "wrong.npz", **arrays)
    assert len(load_scenes(path)) == 4, "structure alone is fine"
    with pytest.raises(EconError, match="composition"):
        load_scenes(path, verify=True)


# -------------------------------------------------------------------------- torch Dataset


def test_scene_dataset_items(small_scenes_npz: Path, small_scenes: Scenes) -> None:
    dataset = SceneDataset(small_scenes_npz)
    assert len(dataset) == 64
    item = dataset[3]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["image"].min() >= 0 and item["image"].max() <= 1
    np.testing.assert_allclose(
        item["image"].permute(1, 2, 0).numpy() * 255, small_scenes.images[3], atol=1e-3
    )
    assert item["shapes"].shape == item["visible"].shape == (4, 32, 32)
    assert item["shapes"].dtype == item["visible"].dtype == torch.float32
    torch.testing.assert_close(item["visible"].sum(0), torch.ones(32, 32))
    assert item["classes"].dtype == torch.int64
    assert item["classes"].tolist() == small_scenes.classes[3].tolist()
    with pytest.raises(IndexError):
        dataset[64]


def test_scene_dataset_batches_and_pickles(small_scenes_npz: Path, small_scenes: Scenes) -> None:
    in_memory = SceneDataset(small_scenes)
    batch = next(iter(torch.utils.data.DataLoader(in_memory, batch_size=8)))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["classes"].shape == (8, 4)
    from_path = SceneDataset(small_scenes_npz)
    from_path[0]
    clone = pickle.loads(pickle.dumps(from_path))
    assert len(pickle.dumps(from_path)) < 2000, "arrays are re-opened, not pickled"
    torch.testing.assert_close(clone[5]["shapes"], in_memory[5]["shapes"])
