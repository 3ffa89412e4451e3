"""The Optuna search of Appendix C.4: the ranges, workers sharing a study (embedded journal file
and PostgreSQL), interrupted trials resumed, the report."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from econ_scenes.errors import EconError
from econ_scenes.sweep import SPACES, SweepSettings, load_study, report, run_worker

pytestmark = pytest.mark.usefixtures("torch_one_thread")

# Every trial: a tiny U-Net and batch, evaluated every 2 iterations (16×16 tiny scenes).
TINY = (("model.unet_channels", (4, 8, 8)), ("model.unet_mlp_hidden", 16),
        ("train.batch_size", 4), ("train.n_val", 8), ("train.eval_every", 2),
        ("train.device", "cpu"), ("train.precision", "fp32"))


def cli_args(data: Path, out: Path, trials: int, iterations: int) -> list[str]:
    args = [sys.executable, "-m", "econ_scenes", "sweep", "--data", str(data), "--out", str(out),
            "--trials", str(trials), "--max-iterations", str(iterations)]
    for key, value in TINY:
        text = "[" + ",".join(map(str, value)) + "]" if isinstance(value, tuple) else value
        args += ["--set", f"{key}={text}"]
    return args


def worker_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def settings(data: Path, out: Path, trials: int, iterations: int, **kw: object) -> SweepSettings:
    return SweepSettings(space="unique", data=data, sweep_dir=out, study="unique",
                         n_trials=trials, overrides=TINY, max_iterations=iterations,
                         **kw)  # type: ignore[arg-type]


def test_search_space_is_appendix_c4() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for name, space in SPACES.items():
        for _ in range(40):
            trial = study.ask()
            config = space.suggest(trial)
            assert space.latent_dim[0] <= config["model.latent_dim"] <= space.latent_dim[1]
            assert space.layers[0] <= config["model.vae_layers"] <= space.layers[1]
            assert space.features[0] <= config["model.vae_features"] <= space.features[1]
            assert space.beta[0] <= config["model.beta"] <= space.beta[1]
            assert space.gamma[0] <= config["model.gamma"] <= space.gamma[1]
            assert config["model.n_experts"] == config["model.n_steps"] == 4
            study.tell(trial, 0.0)
        assert name in ("unique", "random")
    assert SPACES["random"].beta == (1.0, 1.0)  # β fixed at 1 for random colours


def test_two_workers_share_one_embedded_study(tmp_path: Path, tiny_scenes_npz: Path) -> None:
    out = tmp_path / "sweep"
    args = cli_args(tiny_scenes_npz, out, trials=5, iterations=2)
    workers = [subprocess.Popen(args, env=worker_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for worker in workers:
        _, stderr = worker.communicate(timeout=300)
        assert worker.returncode == 0, stderr[-2000:]

    study = load_study("", out, "unique", create=False)
    trials = study.get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 5
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    run_dirs = [t.user_attrs["run_dir"] for t in done]
    assert len(set(run_dirs)) == 5  # no trial trained twice
    assert sorted(p.name for p in out.glob("trial-*")) == sorted(Path(d).name for d in run_dirs)
    for trial in done:
        assert (Path(trial.user_attrs["run_dir"]) / "model.safetensors").is_file()
        assert trial.user_attrs["iterations"] == 2
    workers_seen = {t.user_attrs["worker"] for t in done}
    assert len(workers_seen) == 2, "both workers should have run trials"
    params = [tuple(sorted(t.params.items())) for t in done]
    assert len(set(params)) == 5


def test_an_interrupted_trial_resumes_its_run(tmp_path: Path, tiny_scenes_npz: Path) -> None:
    out = tmp_path / "sweep"
    worker = subprocess.Popen(cli_args(tiny_scenes_npz, out, trials=1, iterations=100_000),
                              env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    events = out / "trial-0000" / "tb"
    deadline = time.monotonic() + 120
    while not (events.is_dir() and any(events.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)
    worker.send_signal(signal.SIGTERM)
    _, stderr = worker.communicate(timeout=120)
    assert worker.returncode != 0 and "interrupted at iteration" in stderr, stderr[-2000:]
    stopped = torch.load(out / "trial-0000" / "checkpoint.pt", weights_only=False)["iteration"]
    assert stopped > 0

    study = run_worker(settings(tiny_scenes_npz, out, trials=1, iterations=stopped + 2))
    states = [(t.number, t.state) for t in study.get_trials()]
    assert states == [(0, TrialState.FAIL), (1, TrialState.COMPLETE)]
    resumed = study.get_trials()[1]
    assert resumed.user_attrs["run_dir"] == str(out / "trial-0000")
    assert resumed.user_attrs["resumes"] == 0
    assert resumed.params == study.get_trials()[0].params
    assert resumed.user_attrs["iterations"] == stopped + 2
    assert not (out / "trial-0001").exists()


def test_report_lists_best_trials_and_plots(tmp_path: Path, tiny_scenes_npz: Path) -> None:
    out = tmp_path / "sweep"
    study = run_worker(settings(tiny_scenes_npz, out, trials=2, iterations=1))
    text = report(study, out / "search.png")
    best = min(t.value for t in study.get_trials())
    assert "2 complete" in text and f"{best:.2f}" in text.splitlines()[2]
    assert (out / "search.png").stat().st_size > 1000
    with pytest.raises(EconError, match="no sweep in"):
        load_study("", tmp_path / "nowhere", "unique", create=False)
    with pytest.raises(EconError, match="no study named"):
        load_study("", out, "other", create=False)
    with pytest.raises(EconError, match="must be a database URL"):
        load_study("sweeps.db", out, "unique", create=True)


def test_bad_sweep_settings_are_named(tmp_path: Path, tiny_scenes_npz: Path) -> None:
    with pytest.raises(EconError, match="unknown search space"):
        run_worker(SweepSettings(space="faces", data=tiny_scenes_npz, sweep_dir=tmp_path,
                                 study="s", n_trials=1))
    with pytest.raises(EconError, match="does not exist"):
        run_worker(SweepSettings(space="unique", data=tmp_path / "missing.npz",
                                 sweep_dir=tmp_path, study="s", n_trials=1))


def test_worker_against_postgresql(tmp_path: Path, tiny_scenes_npz: Path) -> None:
    url = os.environ.get("ECON_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("ECON_TEST_POSTGRES_URL is not set: no PostgreSQL server to test against "
                    "(.ci/run starts one with scripts/postgres.sh)")
    name = f"test-{uuid.uuid4().hex[:8]}"
    worker = settings(tiny_scenes_npz, tmp_path / "sweep", trials=2, iterations=1)
    study = run_worker(SweepSettings(**{**worker.__dict__, "storage": url, "study": name}))
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2
    again = load_study(url, tmp_path / "elsewhere", name, create=False)
    assert len(again.get_trials()) == 2


def test_cli_report(tmp_path: Path, tiny_scenes_npz: Path) -> None:
    out = tmp_path / "sweep"
    run_worker(settings(tiny_scenes_npz, out, trials=1, iterations=1))
    shown = subprocess.run([sys.executable, "-m", "econ_scenes", "sweep", "--report", "unique",
                            "--out", str(out)], capture_output=True, text=True, env=worker_env())
    assert shown.returncode == 0, shown.stderr
    assert "study unique: 1 complete" in shown.stdout and "trial-0000" in shown.stdout
    missing = subprocess.run([sys.executable, "-m", "econ_scenes", "sweep", "--report", "nope"],
                             capture_output=True, text=True, env=worker_env(), cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"error: no sweep in {Path('sweeps') / 'nope'} (no optuna-journal.log); pass --out or "
        "--storage"]
