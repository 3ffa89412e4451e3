"""Data-parallel training (``torchrun``, gloo on CPU) trains the model one process trains on the
combined batch; rank 0 alone writes the run directory."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from econ_scenes.config import ModelConfig, RunConfig, TrainConfig
from econ_scenes.errors import EconError
from econ_scenes.model import ECON
from econ_scenes.train import train
from econ_scenes.train.checkpoint import load_checkpoint
from econ_scenes.train.distributed import Cluster

pytestmark = pytest.mark.usefixtures("torch_one_thread")

ITERATIONS = 4


def run_config(model: ModelConfig) -> RunConfig:
    """Stochastic competition and latents, as in real training, with the usage balance (its
    handicap needs the wins of the whole batch); batch 8 = 2 × 4."""
    return RunConfig(
        model=dataclasses.replace(model, competition_temperature=0.5, competition_balance=1.0),
        train=TrainConfig(batch_size=8, lr=3e-4, n_val=16, seed=3, eval_every=2, patience=1,
                          checkpoint_every=1000, image_every=0, device="cpu", precision="fp32"),
    ).validate()


def torchrun(args: list[str], processes: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={processes}", "-m", "econ_scenes", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_two_gloo_processes_train_the_one_process_model(
    tmp_path: Path, tiny_scenes_npz: Path, tiny_model_config: ModelConfig
) -> None:
    config = run_config(tiny_model_config)
    config_file = tmp_path / "config.json"
    config.save(config_file)
    single = train(tmp_path / "single", config=config, data=tiny_scenes_npz,
                   budget={"max_iterations": ITERATIONS}, progress=False)

    result = torchrun(["train", "--config", str(config_file), "--data", str(tiny_scenes_npz),
                       "--out", str(tmp_path / "pair"), "--max-iterations", str(ITERATIONS),
                       "--no-progress"], processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"stopped after {ITERATIONS} iterations" in result.stdout

    one = load_file(str(tmp_path / "single" / "model.safetensors"))
    two = load_file(str(tmp_path / "pair" / "model.safetensors"))
    torch.manual_seed(config.train.seed)
    initial = ECON(config.model).state_dict()  # the weights training started from
    assert one.keys() == two.keys()
    moved = 0.0
    # float32 sums over 8 vs 2 × 4 images differ in the last bits, and Adam turns a gradient
    # entry of the size of its eps (1e-8) into a step that float noise decides and that scales
    # with lr (measured up to 1.1e-5 here; at lr 3e-3 four steps amplified one such entry past
    # 1e-4 through the U-Net). A different winner anywhere would move weights by about one
    # step, lr = 3e-4: three times the tolerance.
    for name in set(one) - norm_fed_biases(config.model):
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-4, msg=name)
        moved = max(moved, (one[name] - initial[name]).abs().max().item())
    assert moved > 5e-4, "training did not change the weights: the comparison proves nothing"
    assert single.iterations == ITERATIONS
    handicap = load_checkpoint(tmp_path / "single")["handicap"]
    assert any(abs(h) > 1e-3 for h in handicap)
    assert load_checkpoint(tmp_path / "pair")["handicap"] == pytest.approx(handicap, abs=1e-12)
    # Rank 0 alone wrote logs: one TensorBoard event file.
    assert len(list((tmp_path / "pair" / "tb").iterdir())) == 1


def norm_fed_biases(config: ModelConfig) -> set[str]:
    """Parameters with an analytically zero gradient: biases of convolutions that feed an
    instance norm (it subtracts them again). Adam turns their float-noise gradients into
    ±lr steps in any setting, so they cannot be compared; everything else must match.
    """
    model = ECON(config)
    torch.manual_seed(0)
    model.infer(torch.rand(4, 3, 16, 16), stochastic=True).loss.backward()
    silent = {name for name, p in model.named_parameters()
              if p.grad is not None and p.grad.abs().max() < 1e-5
              and name.endswith("bias") and "convs" in name}
    assert silent, "expected the U-Net's norm-fed conv biases"
    return silent


def test_batch_must_split_evenly_over_processes() -> None:
    assert Cluster(rank=1, world_size=2).rows(8) == slice(4, 8)
    with pytest.raises(EconError, match="divisible by the number of processes"):
        Cluster(rank=0, world_size=3).rows(8)


def test_cluster_reads_torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert Cluster.from_env() == Cluster(rank=2, world_size=4, local_rank=0)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(EconError, match="RANK=4"):
        Cluster.from_env()


def test_shard_slices_the_whole_batch_draws(tiny_model_config: ModelConfig) -> None:
    """The two halves of a batch, inferred as shards, equal the whole batch inferred at once."""
    model = ECON(tiny_model_config)
    images = torch.rand(4, 3, 16, 16)
    torch.manual_seed(5)
    whole = model.infer(images, stochastic=True).decomposition
    halves = []
    for index in range(2):
        torch.manual_seed(5)
        halves.append(model.infer(images[2 * index : 2 * index + 2], stochastic=True,
                                  shard=(index, 2)).decomposition)
    assert torch.equal(torch.cat([h.winner for h in halves]), whole.winner)
    torch.testing.assert_close(torch.cat([h.latent for h in halves]), whole.latent)
