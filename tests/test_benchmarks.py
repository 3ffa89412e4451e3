"""The committed benchmark scripts run and report what they claim (tiny settings)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

from econ_scenes.config import ModelConfig, RunConfig, TrainConfig
from econ_scenes.data import SceneSpec, generate, save_scenes
from econ_scenes.errors import EconError
from econ_scenes.scene import SceneModel
from econ_scenes.threads import one_thread
from econ_scenes.train import train

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_speed_reports_every_path_against_the_fp32_reference(
    tmp_path: Path, precision: str
) -> None:
    train_speed = load_script("train_speed")
    out = tmp_path / "speed.md"
    train_speed.main(["--preset", "quick", "--batch", "2", "--iterations", "1", "--warmup", "0",
                      "--threads", "1", "--precision", precision, "--out", str(out)])
    text = out.read_text()
    rows = [line for line in text.splitlines()
            if line.startswith(("| fast path", "| reference loop", "| plain reference loop"))]
    assert len(rows) == 4
    assert f"| {precision} |" in rows[0] and "| fp32 |" in rows[2] and "| fp32 |" in rows[3]
    # the plain reference is the baseline: 1.00× against itself
    assert rows[3].split("|")[-4].strip() == "1.00×"
    assert "(default: experts grouped)" in rows[0] and "experts looped" in rows[1]
    assert "fp32 **" in text and (("bf16 **" in text) == (precision == "bf16"))
    assert "| decomposition |" in text and "| generation |" in text


def test_export_counts_the_run_a_model_was_initialised_from(
    tmp_path: Path, tiny_scenes_npz: Path, tiny_model_config: ModelConfig,
    capsys: pytest.CaptureFixture[str],
) -> None:
    export = load_script("export_pretrained")
    settings = {"batch_size": 4, "n_val": 8, "eval_every": 2, "device": "cpu", "precision": "fp32"}
    first = RunConfig(model=tiny_model_config, train=TrainConfig(**settings))  # type: ignore[arg-type]
    second = RunConfig(model=tiny_model_config, train=TrainConfig(
        **settings, init_from=str(tmp_path / "first"),
        init_parts=("attention",)))  # type: ignore[arg-type]
    with one_thread():
        train(tmp_path / "first", config=first, data=tiny_scenes_npz,
              budget={"max_iterations": 2}, progress=False)
        train(tmp_path / "second", config=second, data=tiny_scenes_npz,
              budget={"max_iterations": 3}, progress=False)
    export.main([str(tmp_path / "second"), "m", "--root", str(tmp_path / "pretrained"),
                 "--hardware", "test"])
    info = json.loads((tmp_path / "pretrained" / "m" / "training.json").read_text())
    assert [s["iterations"] for s in info["stages"]] == [2, 3]
    assert [s["run"] for s in info["stages"]] == ["first", "second"]
    assert info["iterations"] == 5
    assert info["minutes"] == pytest.approx(sum(s["minutes"] for s in info["stages"]), abs=0.02)
    assert info["data"] == f"{tiny_scenes_npz.name} → {tiny_scenes_npz.name}"
    shipped = json.loads((tmp_path / "pretrained" / "m" / "config.json").read_text())
    assert shipped["train"]["init_from"] == "" and shipped["model"]["latent_dim"] == 2
    # the shipped config is loadable on its own: no partial init without its source
    assert RunConfig.load(tmp_path / "pretrained" / "m" / "config.json").train.init_parts == (
        "attention", "encoder", "decoder")
    export.main([str(tmp_path / "first"), "alone", "--root", str(tmp_path / "pretrained")])
    alone = json.loads((tmp_path / "pretrained" / "alone" / "training.json").read_text())
    assert alone["iterations"] == 2 and "stages" not in alone and "config_changes" not in alone
    # an inference setting changed on export: in the shipped config and recorded as a change
    # (as stored, not as typed; a field set to its trained value is no change); a prior
    # fitted under the trained config is not shipped with it
    (tmp_path / "first" / "prior.json").write_text("{}")
    pretrained = ["--root", str(tmp_path / "pretrained")]
    export.main([str(tmp_path / "first"), "changed", *pretrained, "--set",
                 "model.competition_lambda=0.5", "--set", "model.competition_on_means=true",
                 "--set", f"model.latent_dim={tiny_model_config.latent_dim}"])
    shipped_model = RunConfig.load(tmp_path / "pretrained" / "changed" / "config.json").model
    assert (shipped_model.competition_lambda, shipped_model.competition_on_means) == (0.5, True)
    changed = json.loads((tmp_path / "pretrained" / "changed" / "training.json").read_text())
    assert changed["config_changes"] == {
        "model.competition_lambda": {"trained": first.model.competition_lambda, "shipped": 0.5},
        "model.competition_on_means": {"trained": False, "shipped": True}}
    assert not (tmp_path / "pretrained" / "changed" / "prior.json").exists()
    export.main([str(tmp_path / "first"), "same", *pretrained])  # unchanged: the prior is shipped
    assert (tmp_path / "pretrained" / "same" / "prior.json").read_text() == "{}"
    for change, problem in (("model.lambda=0.5", "unknown config field"),
                            ("train.init_from=x", "cannot change train.init_from"),
                            ("model.latent_dim=5", "does not fit the weights")):
        with pytest.raises(EconError, match=problem):
            export.main([str(tmp_path / "first"), "bad", *pretrained, "--set", change])
    assert not (tmp_path / "pretrained" / "bad").exists()
    (tmp_path / "first" / "prior.json").unlink()
    # a run without final weights: a clear error, nothing shipped
    shutil.copytree(tmp_path / "first", tmp_path / "unfinished")
    (tmp_path / "unfinished" / "model.safetensors").unlink()
    with pytest.raises(EconError, match=r"no model\.safetensors"):
        export.main([str(tmp_path / "unfinished"), "bad", *pretrained])
    assert not (tmp_path / "pretrained" / "bad").exists()
    # a run initialised from exported models counts their stages, one or several
    for source, earlier in (("m", [2, 3]), ("alone", [2])):
        third = RunConfig(model=tiny_model_config, train=TrainConfig(
            **settings, init_from=str(tmp_path / "pretrained" / source)))  # type: ignore[arg-type]
        with one_thread():
            train(tmp_path / f"after-{source}", config=third, data=tiny_scenes_npz,
                  budget={"max_iterations": 4}, progress=False)
        export.main([str(tmp_path / f"after-{source}"), source, "--root",
                     str(tmp_path / "pretrained"), "--hardware", "test"])
        info = json.loads((tmp_path / "pretrained" / source / "training.json").read_text())
        assert [s["iterations"] for s in info["stages"]] == [*earlier, 4]
        assert info["stages"][-1]["run"] == f"after-{source}"
        assert info["iterations"] == sum(earlier) + 4
    # exported again into the folder it started from: its own stage is not counted twice,
    # and a prior fitted to the weights shipped there before does not stay beside new weights
    (tmp_path / "pretrained" / "m" / "prior.json").write_text("{}")
    export.main([str(tmp_path / "after-m"), "m", "--root", str(tmp_path / "pretrained")])
    again = json.loads((tmp_path / "pretrained" / "m" / "training.json").read_text())
    assert [s["iterations"] for s in again["stages"]] == [2, 3, 4]
    assert not (tmp_path / "pretrained" / "m" / "prior.json").exists()
    # a run continued from that one, exported there twice: the folder's copy of the lineage
    # is not counted again
    fourth = RunConfig(model=tiny_model_config, train=TrainConfig(
        **settings, init_from=str(tmp_path / "after-m")))  # type: ignore[arg-type]
    with one_thread():
        train(tmp_path / "after-m2", config=fourth, data=tiny_scenes_npz,
              budget={"max_iterations": 2}, progress=False)
    for _ in range(2):
        export.main([str(tmp_path / "after-m2"), "m", "--root", str(tmp_path / "pretrained")])
        again = json.loads((tmp_path / "pretrained" / "m" / "training.json").read_text())
        assert [s["run"] for s in again["stages"]] == ["first", "second", "after-m", "after-m2"]
    # a source that is gone: a warning, and only the run's own training
    shutil.rmtree(tmp_path / "pretrained" / "alone")
    export.main([str(tmp_path / "after-alone"), "lost", "--root", str(tmp_path / "pretrained")])
    assert "neither run.json nor training.json" in capsys.readouterr().err
    lost = json.loads((tmp_path / "pretrained" / "lost" / "training.json").read_text())
    assert lost["iterations"] == 4 and "stages" not in lost


def test_expert_preference_finds_the_shipped_unique_experts_specialised(tmp_path: Path) -> None:
    preference = load_script("expert_preference")
    spec = SceneSpec.preset("unique", size=32)
    data = tmp_path / "unique.npz"
    save_scenes(data, generate(spec, 24, seed=31), spec)
    with one_thread():
        preference.main([str(ROOT / "pretrained" / "unique"), "--data", str(data),
                         "--out", str(tmp_path / "pref")])
        preference.main([str(ROOT / "pretrained" / "unique"), "--data", str(data), "--lam", "0",
                         "--out", str(tmp_path / "shape_only")])
    for name, least_ami in (("pref", 0.9), ("shape_only", 0.5)):  # shape alone tells less
        report = json.loads((tmp_path / f"{name}.json").read_text())
        assert report["n_objects"] == 72 and report["ami"] > least_ami
        # on the class an expert wins most, its mean score is the lowest of all experts'
        scores = report["mean_score"]
        for expert, row in enumerate(report["contingency"]):
            if sum(row[1:]) > 0:
                owned = max(range(1, 4), key=lambda c: row[c])
                assert scores[expert][owned] == min(other[owned] for other in scores)
    assert json.loads((tmp_path / "shape_only.json").read_text())["lambda"] == 0.0
    assert "AMI(winner, class)" in (tmp_path / "pref.md").read_text()
    # refined candidates: recorded, and scored with their refined latents
    for steps in (0, 5):
        with one_thread():
            preference.main([str(ROOT / "pretrained" / "unique"), "--data", str(data), "--n", "4",
                             "--lam", "0", "--refine", str(steps), "--out",
                             str(tmp_path / f"refined{steps}")])
    encoded, refined = (json.loads((tmp_path / f"refined{n}.json").read_text()) for n in (0, 5))
    assert refined["competition"]["competition_refine_steps"] == 5
    assert "refined 5 steps" in (tmp_path / "refined5.md").read_text()
    assert "refined" not in (tmp_path / "refined0.md").read_text()
    assert refined["mean_score"] != encoded["mean_score"]
    # scenes with more objects than the model's T (one step per layer), classes repeated
    crowded = dataclasses.replace(spec, n_objects=5, repeat_classes=True)
    save_scenes(tmp_path / "crowded.npz", generate(crowded, 12, seed=32), crowded)
    with one_thread():
        preference.main([str(ROOT / "pretrained" / "unique"), "--data",
                         str(tmp_path / "crowded.npz"), "--out", str(tmp_path / "crowded")])
    report = json.loads((tmp_path / "crowded.json").read_text())
    # n_objects counts every layer, also those hidden entirely: their empty regions still get
    # a winner, by chance, so the AMI is below the 0.9 of three-object scenes
    assert report["n_objects"] == 60 and report["ami"] > 0.7


def test_template_scripts_draw_templates_and_run_the_vae_competition(
    tmp_path: Path, tiny_scenes_npz: Path, tiny_model_config: ModelConfig,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plot = load_script("plot_templates")
    competition = load_script("vae_competition")
    settings = {"batch_size": 4, "n_val": 8, "eval_every": 2, "device": "cpu", "precision": "fp32",
                "snapshot_every": 2}
    model = dataclasses.replace(tiny_model_config, latent_dim=3, shape_latent_dim=3,
                                shape_decoder="template")
    with one_thread():
        train(tmp_path / "tmpl", config=RunConfig(model=model, train=TrainConfig(**settings)),  # type: ignore[arg-type]
              data=tiny_scenes_npz, budget={"max_iterations": 2}, progress=False)
        train(tmp_path / "plain", config=RunConfig(
            model=tiny_model_config, train=TrainConfig(**settings)),  # type: ignore[arg-type]
              data=tiny_scenes_npz, budget={"max_iterations": 1}, progress=False)
    out = tmp_path / "templates.png"
    plot.main([str(tmp_path / "tmpl"), f"{tmp_path / 'tmpl'}:2", "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(EconError, match="no shape templates"):
        plot.main([str(tmp_path / "plain"), "--out", str(out)])
    with pytest.raises(EconError, match="no snapshot"):
        plot.main([f"{tmp_path / 'tmpl'}:7", "--out", str(out)])
    capsys.readouterr()
    with one_thread():
        competition.main(["--data", str(tiny_scenes_npz), "--test", str(tiny_scenes_npz),
                          "--config", str(tmp_path / "tmpl" / "config.json"), "--iterations", "2",
                          "--every", "1", "--n-test", "5", "--means", "--balance", "0.1",
                          "--template-noise", "1"])
    lines = [line for line in capsys.readouterr().out.splitlines() if "AMI" in line]
    assert len(lines) == 3
    winners = json.loads(lines[-1].split("winners ")[1].split("  handicap")[0])
    assert sum(map(sum, winners)) == 5 * 2  # every object of the 5 test scenes has a winner
    assert "handicap [0.0, 0.0, 0.0]" not in lines[-1]  # the usage balance moved
    with pytest.raises(EconError, match="shape_decoder='template'"):
        competition.main(["--data", str(tiny_scenes_npz), "--test", str(tiny_scenes_npz),
                          "--config", str(tmp_path / "plain" / "config.json"),
                          "--template-noise", "1"])


def test_inference_lambda_scores_each_lambda_on_each_file(tmp_path: Path) -> None:
    sweep = load_script("inference_lambda")
    spec = SceneSpec.preset("unique", size=32)
    crowded = dataclasses.replace(spec, n_objects=5, repeat_classes=True)
    files = [tmp_path / "unique.npz", tmp_path / "crowded.npz"]
    for path, scene_spec, seed in zip(files, (spec, crowded), (33, 34), strict=True):
        save_scenes(path, generate(scene_spec, 16, seed=seed), scene_spec)
    with one_thread():
        sweep.main([str(ROOT / "pretrained" / "unique"), "--lam", "1", "0", "--threads", "1",
                    "--data", *map(str, files), "--out", str(tmp_path / "lam")])
    rows = json.loads((tmp_path / "lam.json").read_text())
    assert [(row["lambda"], row["data"], row["n_steps"]) for row in rows] == [
        (1.0, "unique.npz", 4), (1.0, "crowded.npz", 6), (0.0, "unique.npz", 4),
        (0.0, "crowded.npz", 6)]
    # the shipped unique model, with the λ it was trained with: segmented and specialised
    assert rows[0]["fg_ari"] > 0.95 and rows[0]["ami"] > 0.9
    table = (tmp_path / "lam.md").read_text()
    assert "| λ = 0 | λ = 1 |" in table and table.count("| FG-ARI, ") == 2
    # score() decomposes with the λ it is given
    model = SceneModel.load(ROOT / "pretrained" / "unique")
    with one_thread():
        sweep.score(model, 0.25, files[:1], 2)
    assert model.model.config.competition_lambda == 0.25


def test_inference_lambda_applies_other_competition_settings(tmp_path: Path) -> None:
    sweep = load_script("inference_lambda")
    spec = SceneSpec.preset("unique", size=32)
    path = tmp_path / "unique.npz"
    save_scenes(path, generate(spec, 8, seed=35), spec)
    args = [str(ROOT / "pretrained" / "unique"), "--lam", "1", "--threads", "1", "--data",
            str(path), "--out", str(tmp_path / "cross")]
    with one_thread():
        sweep.main([*args, "--set", "model.competition_cross=True"])
    (row,) = json.loads((tmp_path / "cross.json").read_text())
    assert row["settings"]["competition_cross"] is True
    assert row["settings"]["competition_refine_steps"] == 0
    assert "competition_cross = True" in (tmp_path / "cross.md").read_text()
    for wrong in ("model.beta=2", "model.competition_lambda=2"):  # λ is --lam's
        with pytest.raises(SystemExit):
            sweep.main([*args, "--set", wrong])


def test_norm_kernels_compares_instance_and_group_norm(tmp_path: Path) -> None:
    """Every map and dtype gets a row, and the two kernels agree (to bf16's rounding)."""
    norm_kernels = load_script("norm_kernels")
    out = tmp_path / "norms.md"
    with one_thread():
        norm_kernels.main(["--threads", "1", "--repeats", "1", "--batch", "2", "--out", str(out)])
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines()
            if line.startswith("| (")]
    assert len(rows) == 2 * len(norm_kernels.SHAPES) + 2
    for row in rows:
        dtype, difference = row[1].strip(), float(row[-1])
        assert difference < (0.1 if dtype == "bfloat16" else 1e-4), row
