"""Training (Appendix C.3): it learns, resumes exactly, writes its run directory and reports broken
inputs as :class:`EconError`; ``econ train`` on the command line."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from econ_scenes import cli
from econ_scenes.config import ModelConfig, RunConfig, TrainConfig
from econ_scenes.data import load_scenes
from econ_scenes.errors import EconError
from econ_scenes.model import ECON
from econ_scenes.threads import one_thread
from econ_scenes.train import load_model, train
from econ_scenes.train import loop as loop_module
from econ_scenes.train.checkpoint import load_checkpoint
from econ_scenes.train.loop import (
    TrainingData,
    autocast,
    native_bf16,
    resolve_precision,
    validation_loss,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")

ITERATIONS = 6  # the resumed runs: an uninterrupted run, and one stopped half way


def tiny_run_config(model: ModelConfig, **train: object) -> RunConfig:
    settings: dict[str, object] = {
        "batch_size": 4, "lr": 3e-3, "n_val": 16, "seed": 0, "eval_every": 2, "patience": 1,
        "checkpoint_every": 1000, "image_every": ITERATIONS, "device": "cpu", "precision": "fp32",
    }
    settings.update(train)
    config = RunConfig(model=dataclasses.replace(model, n_experts=2),
                       train=TrainConfig(**settings))  # type: ignore[arg-type]
    return config.validate()


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


@pytest.fixture(scope="module")
def finished_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_scenes_npz: Path, tiny_model_config: ModelConfig
) -> Iterator[Path]:
    """An uninterrupted run of ITERATIONS iterations (evaluated every 2, images at the end)."""
    run_dir = tmp_path_factory.mktemp("runs") / "uninterrupted"
    with one_thread():
        result = train(run_dir, config=tiny_run_config(tiny_model_config), data=tiny_scenes_npz,
                       budget={"max_iterations": ITERATIONS}, progress=False)
    assert result.iterations == ITERATIONS and result.stop_reason == "max_iterations"
    yield run_dir


@pytest.fixture
def run_copy(tmp_path: Path, finished_run: Path) -> Path:
    """A copy of ``finished_run`` to damage or extend."""
    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    return copy


# --- learning ----------------------------------------------------------------------------------


def test_short_training_reduces_validation_loss(
    tmp_path: Path, tiny_scenes_npz: Path, tiny_model_config: ModelConfig
) -> None:
    config = tiny_run_config(tiny_model_config, eval_every=1000, image_every=0)
    data = TrainingData.open(tiny_scenes_npz, None, config, torch.device("cpu"))
    torch.manual_seed(config.train.seed)  # the initial weights of the run below
    before = validation_loss(ECON(config.model), data, "fp32")
    result = train(tmp_path / "run", config=config, data=tiny_scenes_npz,
                   budget={"max_iterations": 40}, progress=False)
    assert result.iterations == 40
    model, saved = load_model(tmp_path / "run")
    assert saved.model == config.model
    after = validation_loss(model, data, "fp32")
    assert after < 0.85 * before, (before, after)


def test_init_parts_takes_the_named_networks_and_leaves_the_others_fresh(
    tmp_path: Path, finished_run: Path, tiny_scenes_npz: Path, tiny_model_config: ModelConfig
) -> None:
    """--init RUN --init-parts attention: the attention networks start as RUN's, the VAEs start
    fresh and may have another size (a wider decoder here)."""
    wider = dataclasses.replace(tiny_model_config, vae_features=12)
    config = tiny_run_config(wider, init_from=str(finished_run), init_parts=("attention",))
    source = weights(finished_run)
    torch.manual_seed(config.train.seed)
    fresh = ECON(config.model).state_dict()
    torch.manual_seed(config.train.seed)
    model = ECON(config.model)
    loop_module._initialise(model, finished_run, config.train.init_parts)
    for name, value in model.state_dict().items():
        expected = source[name] if name.startswith("experts.attention.") else fresh[name]
        assert torch.equal(value, expected), name
    assert any(fresh[name].shape != source[name].shape for name in source
               if name.startswith("experts.decoder."))
    result = train(tmp_path / "run", config=config, data=tiny_scenes_npz,
                   budget={"max_iterations": 2}, progress=False)
    assert result.iterations == 2
    with pytest.raises(EconError, match="do not fit"):
        loop_module._initialise(ECON(config.model), finished_run, ("encoder",))


# --- resume --------------------------------------------------------------------------------------


def test_resume_gives_the_weights_of_an_uninterrupted_run(
    tmp_path: Path, finished_run: Path, tiny_scenes_npz: Path, tiny_model_config: ModelConfig
) -> None:
    run_dir = tmp_path / "halves"
    half = train(run_dir, config=tiny_run_config(tiny_model_config), data=tiny_scenes_npz,
                 budget={"max_iterations": ITERATIONS // 2}, progress=False)
    assert half.iterations == ITERATIONS // 2
    assert load_checkpoint(run_dir)["iteration"] == ITERATIONS // 2
    rest = train(run_dir, resume=True, budget={"max_iterations": ITERATIONS}, progress=False)
    assert rest.iterations == ITERATIONS
    assert rest.best_val_loss == pytest.approx(
        load_checkpoint(finished_run)["schedule"]["best"], rel=0, abs=0
    )
    assert_same_weights(run_dir, finished_run)
    assert load_checkpoint(run_dir)["schedule"] == load_checkpoint(finished_run)["schedule"]


def test_resume_continues_the_usage_balance(
    tmp_path: Path, tiny_scenes_npz: Path, tiny_model_config: ModelConfig
) -> None:
    """The handicap of the usage balance is part of the checkpoint: halves equal one run."""
    model = dataclasses.replace(tiny_model_config, competition_balance=1.0)
    config = tiny_run_config(model, eval_every=1000, image_every=0)
    whole = train(tmp_path / "whole", config=config, data=tiny_scenes_npz,
                  budget={"max_iterations": ITERATIONS}, progress=False)
    train(tmp_path / "halves", config=config, data=tiny_scenes_npz,
          budget={"max_iterations": ITERATIONS // 2}, progress=False)
    rest = train(tmp_path / "halves", resume=True, budget={"max_iterations": ITERATIONS},
                 progress=False)
    assert whole.iterations == rest.iterations == ITERATIONS
    handicap = load_checkpoint(tmp_path / "whole")["handicap"]
    assert len(handicap) == 2 and abs(handicap[0]) > 1e-3
    assert sum(handicap) == pytest.approx(0.0, abs=1e-12)
    assert load_checkpoint(tmp_path / "halves")["handicap"] == handicap
    assert_same_weights(tmp_path / "halves", tmp_path / "whole")


def test_the_usage_balance_stops_after_its_iterations(
    tmp_path: Path, tiny_scenes_npz: Path, tiny_model_config: ModelConfig
) -> None:
    """competition_balance_iterations = 1: the handicap moves once, then no longer acts (a
    small rate, so that the always-on balance keeps moving it)."""
    model = dataclasses.replace(tiny_model_config, competition_balance=0.01,
                                competition_balance_iterations=1)
    train(tmp_path / "warm-up", config=tiny_run_config(model, eval_every=1000, image_every=0),
          data=tiny_scenes_npz, budget={"max_iterations": ITERATIONS}, progress=False)
    always = tiny_run_config(dataclasses.replace(model, competition_balance_iterations=0),
                             eval_every=1000, image_every=0)
    for name, iterations in (("one", 1), ("always", ITERATIONS)):
        train(tmp_path / name, config=always, data=tiny_scenes_npz,
              budget={"max_iterations": iterations}, progress=False)
    handicap = load_checkpoint(tmp_path / "warm-up")["handicap"]
    assert abs(handicap[0]) > 1e-4
    assert handicap == load_checkpoint(tmp_path / "one")["handicap"]
    assert handicap != pytest.approx(load_checkpoint(tmp_path / "always")["handicap"], abs=1e-6)


def test_resume_after_ctrl_c_gives_the_weights_of_an_uninterrupted_run(
    tmp_path: Path, finished_run: Path, tiny_scenes_npz: Path, tiny_model_config: ModelConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = TrainingData.batch

    def interrupt_at_3(self: TrainingData, iteration: int) -> tuple[torch.Tensor, None]:
        if iteration == 3:
            raise KeyboardInterrupt
        return original(self, iteration)  # type: ignore[return-value]

    monkeypatch.setattr(loop_module.TrainingData, "batch", interrupt_at_3)
    run_dir = tmp_path / "interrupted"
    with pytest.raises(EconError, match="interrupted at iteration 3"):
        train(run_dir, config=tiny_run_config(tiny_model_config), data=tiny_scenes_npz,
              budget={"max_iterations": ITERATIONS}, progress=False)
    assert load_checkpoint(run_dir)["iteration"] == 3
    monkeypatch.undo()
    result = train(run_dir, resume=True, progress=False)
    assert result.iterations == ITERATIONS
    assert_same_weights(run_dir, finished_run)


def test_resume_restores_the_learning_rate_schedule(run_copy: Path) -> None:
    """A checkpoint whose schedule has decreased the rate 4 times and never beats its best: one
    more evaluation without improvement (patience 1) is the 5th decrease, which ends the run."""
    path = run_copy / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    state["schedule"] = {"lr": 1e-4, "best": -1.0, "bad": 0, "decreases": 4}
    torch.save(state, path)
    result = train(run_copy, resume=True, budget={"max_iterations": ITERATIONS + 4},
                   progress=False)
    assert result.iterations == ITERATIONS + 2
    assert result.stop_reason.startswith("converged")
    assert load_checkpoint(run_copy)["schedule"] == {
        "lr": pytest.approx(1e-4 / math.sqrt(10)), "best": -1.0, "bad": 0, "decreases": 5,
    }


# --- the run directory ------------------------------------------------------------------------


def test_run_directory_holds_config_checkpoint_and_weights(
    finished_run: Path, tiny_scenes_npz: Path, tiny_model_config: ModelConfig
) -> None:
    expected = tiny_run_config(tiny_model_config, max_iterations=ITERATIONS)
    assert RunConfig.load(finished_run / "config.json") == expected
    state = load_checkpoint(finished_run)
    assert state["iteration"] == ITERATIONS
    assert {"model", "optimiser", "schedule", "rng"} <= set(state)
    model, config = load_model(finished_run)
    assert config == expected
    for name, value in model.state_dict().items():
        assert torch.equal(value, state["model"][name]), name
    assert torch.equal(
        weights(finished_run)["experts.decoder.head.weight"],
        state["model"]["experts.decoder.head.weight"],
    )
    # The model differs from its initialisation: it was trained.
    torch.manual_seed(expected.train.seed)
    initial = ECON(expected.model).state_dict()
    assert not torch.equal(initial["experts.decoder.head.weight"],
                           model.state_dict()["experts.decoder.head.weight"])


def test_tensorboard_events_are_written(finished_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((finished_run / "tb").glob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(finished_run / "tb"))
    accumulator.Reload()
    tags = accumulator.Tags()
    assert "val/loss" in tags["scalars"]
    assert [e.step for e in accumulator.Scalars("val/loss")] == [2, 4, 6]
    assert "decomposition" in tags["images"]


# --- broken inputs ---------------------------------------------------------------------------


def test_corrupt_checkpoint_gives_econ_error(run_copy: Path) -> None:
    (run_copy / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EconError, match="corrupt checkpoint"):
        train(run_copy, resume=True, budget={"max_iterations": ITERATIONS + 1}, progress=False)


def test_missing_checkpoint_gives_econ_error(run_copy: Path) -> None:
    (run_copy / "checkpoint.pt").unlink()
    with pytest.raises(EconError, match="no checkpoint"):
        train(run_copy, resume=True, progress=False)


def test_corrupt_config_gives_econ_error(run_copy: Path) -> None:
    (run_copy / "config.json").write_text('{"model": {"image_size": 16,')
    with pytest.raises(EconError, match="corrupt run configuration"):
        train(run_copy, resume=True, progress=False)
    with pytest.raises(EconError, match="corrupt run configuration"):
        load_model(run_copy)
    (run_copy / "config.json").write_text('{"model": {"no_such_field": 1}, "train": {}}')
    with pytest.raises(EconError, match="malformed run configuration"):
        train(run_copy, resume=True, progress=False)


def test_corrupt_weights_give_econ_error(run_copy: Path) -> None:
    (run_copy / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(EconError, match="corrupt weights"):
        load_model(run_copy)


def test_missing_data_file_gives_econ_error(
    tmp_path: Path, tiny_model_config: ModelConfig, run_copy: Path, tiny_scenes_npz: Path
) -> None:
    with pytest.raises(EconError, match="not found"):
        train(tmp_path / "new", config=tiny_run_config(tiny_model_config),
              data=tmp_path / "missing.npz", progress=False)
    assert not (tmp_path / "new" / "config.json").exists()
    # A resumed run whose data has gone.
    moved = tmp_path / "moved.npz"
    shutil.copy(tiny_scenes_npz, moved)
    (run_copy / "run.json").write_text(f'{{"data": "{moved}", "val": null}}\n')
    moved.unlink()
    with pytest.raises(EconError, match="not found"):
        train(run_copy, resume=True, budget={"max_iterations": ITERATIONS + 1}, progress=False)


def test_corrupt_run_info_gives_econ_error(run_copy: Path) -> None:
    (run_copy / "run.json").write_text("{broken")
    with pytest.raises(EconError, match=r"run\.json"):
        train(run_copy, resume=True, progress=False)


@pytest.mark.parametrize("setting", [{"checkpoint_every": 0}, {"n_val": 0, "eval_every": 1}])
def test_zero_checkpoint_interval_or_validation_split_is_rejected(
    tmp_path: Path, tiny_scenes_npz: Path, tiny_model_config: ModelConfig,
    setting: dict[str, int],
) -> None:
    with pytest.raises(EconError):
        train(tmp_path / "run", config=tiny_run_config(tiny_model_config, **setting),
              data=tiny_scenes_npz, budget={"max_iterations": 2}, progress=False)


def test_existing_run_directory_gives_econ_error(
    finished_run: Path, tiny_scenes_npz: Path, tiny_model_config: ModelConfig
) -> None:
    before = weights(finished_run)
    with pytest.raises(EconError, match="already holds a run"):
        train(finished_run, config=tiny_run_config(tiny_model_config), data=tiny_scenes_npz,
              progress=False)
    after = weights(finished_run)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_too_few_scenes_for_validation_gives_econ_error(
    tmp_path: Path, tiny_scenes_npz: Path, tiny_model_config: ModelConfig
) -> None:
    n = len(load_scenes(tiny_scenes_npz))
    with pytest.raises(EconError, match="n_val"):
        train(tmp_path / "run", config=tiny_run_config(tiny_model_config, n_val=n),
              data=tiny_scenes_npz, progress=False)


# --- the command line ----------------------------------------------------------------------------

TINY_SETTINGS = [
    "--set", "model.unet_channels=(4, 8, 8)", "--set", "model.unet_mlp_hidden=16",
    "--set", "model.vae_layers=2", "--set", "model.vae_features=8",
    "--set", "train.batch_size=4", "--set", "train.n_val=16",
]


def econ_train(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "econ_scenes", "train", *args],
        capture_output=True, text=True, timeout=300, check=False, env=env,
    )


def test_cli_trains_and_resumes(tmp_path: Path, tiny_scenes_npz: Path) -> None:
    out = tmp_path / "run"
    result = econ_train("--data", str(tiny_scenes_npz), "--out", str(out), "-K", "2", "-T", "3",
                        "--seed", "1", "--max-iterations", "2", "--no-progress", *TINY_SETTINGS)
    assert result.returncode == 0, result.stderr
    assert "stopped after 2 iterations" in result.stdout
    config = RunConfig.load(out / "config.json")
    assert (config.model.image_size, config.model.n_experts, config.model.n_steps) == (16, 2, 3)
    assert config.model.unet_channels == (4, 8, 8) and config.train.seed == 1
    assert (out / "model.safetensors").is_file() and load_checkpoint(out)["iteration"] == 2
    # --resume continues the run (in process: the same command without a new interpreter).
    cli._register()
    resumed = CliRunner().invoke(
        cli.app, ["train", "--resume", str(out), "--max-iterations", "3", "--no-progress"]
    )
    assert resumed.exit_code == 0, resumed.output
    assert "stopped after 3 iterations" in resumed.output
    assert load_checkpoint(out)["iteration"] == 3
    # Options that would configure a new run are refused, not silently ignored.
    refused = CliRunner().invoke(cli.app, ["train", "--resume", str(out), "--max-iterations", "4",
                                           "--set", "train.lr=1e-4", "-K", "3", "--seed", "0",
                                           "--no-gt-masks", "--init-parts", "attention",
                                           "--no-progress"])
    assert isinstance(refused.exception, EconError)
    assert "-K, --gt-masks, --seed, --set, --init-parts would be ignored" in str(
        refused.exception)
    # --init-parts without --init says what is missing
    orphan = CliRunner().invoke(cli.app, ["train", "--data", str(tiny_scenes_npz), "--out",
                                          str(tmp_path / "orphan"), "--init-parts", "attention"])
    assert isinstance(orphan.exception, EconError) and "give --init" in str(orphan.exception)
    # --init-parts passes through to the config of a run started from another
    partial = CliRunner().invoke(cli.app, [
        "train", "--data", str(tiny_scenes_npz), "--out", str(tmp_path / "partial"),
        "--config", str(out / "config.json"), "--init", str(out), "--init-parts",
        "attention,encoder", "--max-iterations", "1", "--no-progress"])
    assert partial.exit_code == 0, partial.output
    partial_config = RunConfig.load(tmp_path / "partial" / "config.json").train
    assert partial_config.init_parts == ("attention", "encoder")
    assert partial_config.init_from == str(out.resolve())
    assert load_checkpoint(out)["iteration"] == 3


def test_cli_bad_config_prints_one_error_line(tmp_path: Path, tiny_scenes_npz: Path) -> None:
    out = tmp_path / "run"
    result = econ_train("--data", str(tiny_scenes_npz), "--out", str(out), "-T", "0",
                        "--max-iterations", "2", "--no-progress", *TINY_SETTINGS)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and "n_steps" in lines[0]
    assert not out.exists()


def test_sigterm_saves_a_checkpoint_that_resumes(tmp_path: Path, tiny_scenes_npz: Path) -> None:
    """A scheduler's SIGTERM is handled like Ctrl-C: the checkpoint is written, resume works."""
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    command = [sys.executable, "-m", "econ_scenes", "train", "--data", str(tiny_scenes_npz),
               "--out", str(run), "--preset", "quick", "--no-progress",
               "--set", "model.image_size=16", "--set", "model.unet_channels=(4, 8)",
               "--set", "model.vae_layers=2", "--set", "model.vae_features=4",
               "--set", "train.batch_size=2", "--set", "train.n_val=8",
               "--set", "train.checkpoint_every=100000"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                               env={"OMP_NUM_THREADS": "1", "PATH": ""})
    deadline = time.monotonic() + 120
    while not (run / "tb").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr
    assert "checkpoint saved" in stderr
    assert (run / "checkpoint.pt").is_file()
    result = train(run, resume=True, budget={"max_iterations": 1}, progress=False)
    assert result.iterations >= 1


def test_auto_precision_is_bf16_where_the_device_has_bf16_units() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision(torch.device("cuda"), "auto") == "bf16"
    assert resolve_precision(cpu, "auto") == ("bf16" if native_bf16(cpu) else "fp32")
    for explicit in ("fp32", "bf16", "fp16"):
        assert resolve_precision(cpu, explicit) == explicit
    with autocast(cpu, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(cpu, "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_a_resumed_run_says_when_its_precision_changes(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The checkpoint records the precision the run was computed in; resuming in another one
    (a run started on a bf16 CPU, continued on one without bf16 units) is said, not silent."""
    assert load_checkpoint(run_copy)["precision"] == "fp32"
    capsys.readouterr()
    train(run_copy, resume=True, budget={"max_iterations": ITERATIONS + 1}, progress=False)
    assert "computed in" not in capsys.readouterr().out
    path = run_copy / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    state["precision"] = "bf16"
    torch.save(state, path)
    train(run_copy, resume=True, budget={"max_iterations": ITERATIONS + 2}, progress=False)
    out = capsys.readouterr().out
    assert f"iterations 1-{ITERATIONS + 1} of this run were computed in bf16" in out
    assert "continues in fp32" in out
    assert load_checkpoint(run_copy)["precision"] == "fp32"
