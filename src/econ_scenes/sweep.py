"""Random architecture search of Appendix C.4 with Optuna.

The paper cross-validated 512 random architectures per dataset and kept the one with the lowest
validation loss. :func:`run_worker` does the same: every trial samples the C.4 ranges, trains a
normal run directory (``<sweep>/trial-0007``) and reports the validation loss of its final
weights. Several workers, processes or machines, join one study by pointing at one storage:

- embedded (default): an Optuna journal file inside the sweep folder (file-locked, no server);
- across machines: an RDB URL such as ``postgresql://user@host/db`` (heartbeats mark trials of
  dead workers as failed).

An interrupted trial (Ctrl-C, SIGTERM, a dead worker) is not lost: the next worker that starts
re-enqueues it with the same parameters and resumes its run directory from the checkpoint.
"""

from __future__ import annotations

import fcntl
import math
import os
import shutil
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from econ_scenes.config import RunConfig, override, preset
from econ_scenes.errors import EconError

JOURNAL = "optuna-journal.log"


@dataclass(frozen=True)
class SearchSpace:
    """Ranges of Appendix C.4 (inclusive). Equal bounds fix a value (β = 1 for random colours)."""

    base_preset: str
    latent_dim: tuple[int, int]
    layers: tuple[int, int]
    features: tuple[int, int]
    beta: tuple[float, float]
    gamma: tuple[float, float]
    n_experts: int = 4  # three objects + background
    n_steps: int = 4

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Sample one architecture → config overrides. β and γ are sampled log-uniformly (they
        span up to two decades), the integers uniformly."""
        overrides = {
            "model.latent_dim": trial.suggest_int("latent_dim", *self.latent_dim),
            "model.vae_layers": trial.suggest_int("layers", *self.layers),
            "model.vae_features": trial.suggest_int("features", *self.features),
            "model.beta": _suggest_float(trial, "beta", self.beta),
            "model.gamma": _suggest_float(trial, "gamma", self.gamma),
            "model.n_experts": self.n_experts,
            "model.n_steps": self.n_steps,
        }
        return overrides


def _suggest_float(trial: Any, name: str, bounds: tuple[float, float]) -> float:
    low, high = bounds
    if low == high:
        trial.set_user_attr(name, low)
        return low
    return float(trial.suggest_float(name, low, high, log=True))


SPACES: dict[str, SearchSpace] = {
    "unique": SearchSpace("paper-unique", latent_dim=(2, 3), layers=(2, 4), features=(4, 32),
                          beta=(0.5, 2.0), gamma=(0.1, 10.0)),
    "random": SearchSpace("paper-random", latent_dim=(4, 5), layers=(3, 4), features=(16, 32),
                          beta=(1.0, 1.0), gamma=(0.5, 5.0)),
}


@dataclass(frozen=True)
class SweepSettings:
    """One worker's view of a sweep."""

    space: str
    data: Path
    sweep_dir: Path
    study: str
    n_trials: int
    storage: str = ""  # "" = the embedded journal file in sweep_dir
    overrides: tuple[tuple[str, Any], ...] = ()  # applied to every trial (e.g. a smaller U-Net)
    budget_minutes: float = 0.0
    max_iterations: int | None = None
    val: Path | None = None
    seed: int | None = None
    progress: bool = False

    def validate(self) -> SweepSettings:
        if self.space not in SPACES:
            raise EconError(f"unknown search space {self.space!r}: use {' | '.join(SPACES)}")
        if self.n_trials < 1:
            raise EconError(f"--trials must be >= 1, got {self.n_trials}")
        if not self.data.exists():
            raise EconError(f"data file {self.data} does not exist")
        if self.budget_minutes < 0:
            raise EconError("--budget-minutes must be >= 0")
        return self


def open_storage(storage: str, sweep_dir: Path) -> Any:
    """An Optuna storage: the URL given, or the embedded journal file in the sweep folder."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    if not storage:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        path = str(sweep_dir / JOURNAL)
        return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    if "://" not in storage:
        raise EconError(f"--storage must be a database URL (e.g. postgresql://user@host/db), "
                        f"got {storage!r}; leave it out for the embedded journal file")
    try:
        # Heartbeats: a trial whose worker stopped beating is marked failed, then re-enqueued
        # by the next worker's _requeue_interrupted.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(storage, heartbeat_interval=30, grace_period=120)
    except (optuna.exceptions.StorageInternalError, ImportError, ValueError) as error:
        raise EconError(f"cannot open the study storage {storage}: {error}") from error
    except Exception as error:  # SQLAlchemy's OperationalError and friends: the server's message
        raise EconError(f"cannot open the study storage {storage}: "
                        f"{str(error).splitlines()[0]}") from error


def load_study(storage: str, sweep_dir: Path, study: str, create: bool) -> Any:
    import optuna

    if not create and not storage and not (sweep_dir / JOURNAL).is_file():
        raise EconError(f"no sweep in {sweep_dir} (no {JOURNAL}); pass --out or --storage")
    backend = open_storage(storage, sweep_dir)
    if create:
        return optuna.create_study(study_name=study, storage=backend, direction="minimize",
                                   sampler=optuna.samplers.RandomSampler(), load_if_exists=True)
    try:
        return optuna.load_study(study_name=study, storage=backend)
    except KeyError as error:
        raise EconError(f"no study named {study!r} in {storage or sweep_dir / JOURNAL}") from error


def run_worker(settings: SweepSettings) -> Any:
    """Join (or create) the study and run trials until it holds ``n_trials`` of them."""
    import optuna

    settings.validate()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study(settings.storage, settings.sweep_dir, settings.study, create=True)
    study.set_user_attr("space", settings.space)
    while _requeue_interrupted(study) or _free_slots(study, None, settings.n_trials) > 0:
        study.optimize(lambda trial: _objective(trial, settings), n_trials=1,
                       catch=(), gc_after_trial=True)
    return study


def _objective(trial: Any, settings: SweepSettings) -> float:
    import optuna

    trial.set_user_attr("worker", _worker_id())
    resumed = trial.user_attrs.get("run_dir")
    if resumed is None and _free_slots(trial.study, trial.number, settings.n_trials) <= 0:
        # Another worker took the last trial between our check and this trial's creation.
        raise optuna.TrialPruned(f"the study already holds {settings.n_trials} trials")
    run_dir = Path(resumed) if resumed else settings.sweep_dir / f"trial-{trial.number:04d}"
    trial.set_user_attr("run_dir", str(run_dir))
    config = trial_config(SPACES[settings.space], trial, settings)
    with _exclusive(run_dir):
        result = _train_trial(run_dir, config, settings)
    trial.set_user_attr("iterations", result.iterations)
    trial.set_user_attr("minutes", round(result.minutes, 2))
    return final_validation_loss(run_dir)


def trial_config(space: SearchSpace, trial: Any, settings: SweepSettings) -> RunConfig:
    overrides = space.suggest(trial)
    overrides.update(dict(settings.overrides))
    if settings.seed is not None:
        overrides["train.seed"] = settings.seed
    overrides["train.max_minutes"] = settings.budget_minutes
    if settings.max_iterations is not None:
        overrides["train.max_iterations"] = settings.max_iterations
    return override(preset(space.base_preset), overrides)


def _train_trial(run_dir: Path, config: RunConfig, settings: SweepSettings) -> Any:
    from econ_scenes.train import train
    from econ_scenes.train.checkpoint import CHECKPOINT

    if (run_dir / CHECKPOINT).exists():  # an interrupted trial: continue it, with this budget
        budget = {"max_minutes": settings.budget_minutes, "max_iterations": settings.max_iterations}
        return train(run_dir, resume=True, budget=budget, progress=settings.progress)
    if run_dir.exists():  # created but never checkpointed: start again
        shutil.rmtree(run_dir)
    return train(run_dir, config=config, data=settings.data, val=settings.val,
                 progress=settings.progress)


def final_validation_loss(run_dir: Path) -> float:
    """The paper's model-selection criterion: validation loss of the trained weights."""
    from econ_scenes.train.checkpoint import load_model
    from econ_scenes.train.loop import TrainingData, read_run_info, validation_loss

    model, config = load_model(run_dir)
    info = read_run_info(run_dir)
    val = None if info.get("val") is None else Path(info["val"])
    data = TrainingData.open(Path(info["data"]), val, config, next(model.parameters()).device)
    loss = validation_loss(model, data, config.train.precision)
    if not math.isfinite(loss):
        raise EconError(f"trial {run_dir.name}: validation loss is {loss}")
    return loss


def _free_slots(study: Any, number: int | None, n_trials: int) -> int:
    """Trials still to start: ``n_trials`` minus the run directories already claimed by trials
    numbered before ``number`` (all trials if None). Trial numbers are handed out atomically by
    the storage, so racing workers agree on who came first. Pruned trials claim nothing."""
    from optuna.trial import TrialState

    claimed: set[str] = set()
    unnamed = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.PRUNED or (number is not None and trial.number >= number):
            continue
        if "run_dir" in trial.user_attrs:
            claimed.add(trial.user_attrs["run_dir"])
        else:
            unnamed += 1
    return n_trials - len(claimed) - unnamed


def _requeue_interrupted(study: Any) -> bool:
    """Enqueue again, with the same parameters and run directory, every trial that failed
    (interrupted, or its worker died) and that no later trial has taken up. True if there is
    an enqueued trial waiting."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    taken = {t.user_attrs.get("run_dir") for t in trials
             if t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)}
    for trial in trials:
        if trial.state == TrialState.RUNNING and _dead_local_worker(trial.user_attrs.get("worker")):
            study.tell(trial.number, state=TrialState.FAIL)
        elif trial.state != TrialState.FAIL:
            continue
        run_dir = trial.user_attrs.get("run_dir")
        if run_dir is None or run_dir in taken:
            continue
        taken.add(run_dir)
        study.enqueue_trial(trial.params, user_attrs={"run_dir": run_dir,
                                                      "resumes": trial.number})
    return any(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False))


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _dead_local_worker(worker: str | None) -> bool:
    """True for a worker process of this host that no longer runs."""
    if not worker:
        return False
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@contextmanager
def _exclusive(run_dir: Path) -> Iterator[None]:
    """Hold a lock on a trial's run directory: two workers never train the same trial."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / f".{run_dir.name}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            import optuna

            raise optuna.TrialPruned(f"{run_dir} is being trained by another worker") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def report(study: Any, out: Path | None = None, top: int = 10) -> str:
    """The best finished trials as a text table; with ``out``, a plot of the search
    (validation loss against each searched parameter) written there as PNG."""
    from optuna.trial import TrialState

    done = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                  key=lambda t: t.value)
    states: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
    lines = [f"study {study.study_name}: {counts or 'no trials'}"]
    if done:
        names = sorted({name for t in done for name in t.params})
        header = ["trial", "val loss", *names, "iters", "min", "run"]
        rows = [[str(t.number), f"{t.value:.2f}", *(_fmt(t.params.get(n)) for n in names),
                 str(t.user_attrs.get("iterations", "")), str(t.user_attrs.get("minutes", "")),
                 t.user_attrs.get("run_dir", "")] for t in done[:top]]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if out is not None:
            plot_search(done, names, out)
            lines.append(f"plot: {out}")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def plot_search(trials: list[Any], names: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.0), squeeze=False)
    values = [t.value for t in trials]
    for ax, name in zip(axes[0], names, strict=True):
        ax.scatter([t.params.get(name, math.nan) for t in trials], values, s=14, alpha=0.8)
        if name in ("beta", "gamma"):
            ax.set_xscale("log")
        ax.set_xlabel({"beta": "β", "gamma": "γ"}.get(name, name))
    axes[0][0].set_ylabel("validation loss")
    fig.suptitle(f"{len(trials)} finished trials")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
