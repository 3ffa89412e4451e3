"""Ship a trained run as ``pretrained/<name>``: config, weights (safetensors), prior and how it
was trained (iterations, minutes, machine). Then run ``econ evaluate`` into the same folder.

    python benchmarks/export_pretrained.py runs/quick unique
    python benchmarks/export_pretrained.py runs/quick unique --snapshot 2500  # a kept snapshot
    econ evaluate pretrained/unique --data data/unique-test.npz --out pretrained/unique
    # an inference setting chosen on validation scenes after training (kept in training.json;
    # the run's prior is then not shipped: fit it again with `econ compose --prior`)
    python benchmarks/export_pretrained.py runs/r random --set model.competition_lambda=0.5
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from econ_scenes.config import EXPERT_PARTS, RunConfig, override, parse_overrides
from econ_scenes.errors import EconError
from econ_scenes.model import ECON
from econ_scenes.train.checkpoint import load_checkpoint, snapshot_path


def machine() -> str:
    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cores = torch.get_num_threads()
    return (f"{cpu}, {cores} threads, {torch.backends.cpu.get_cpu_capability()}, "
            f"torch {torch.__version__}, {platform.system()}")


def stage(run: Path, state: dict) -> dict:
    """Iterations, minutes and training data of one run (``state``: its checkpoint or the
    metadata of the snapshot shipped)."""
    data = json.loads((run / "run.json").read_text())["data"]
    return {"run": run.name, "iterations": int(state["iteration"]),
            "minutes": round(float(state["minutes"]), 2), "data": Path(data).name}


def shipped_stages(folder: Path, run: Path) -> list[dict]:
    """The stages of an exported model (``pretrained/<name>``) before ``run``, from its
    training.json. When ``run`` or a run continued from it was exported into that folder since
    (a run started from ``pretrained/<name>`` and shipped back into it), the folder lists
    ``run``'s stage and those after it: they are left out, being this run's own lineage."""
    info = json.loads((folder / "training.json").read_text())
    stages = info.get("stages") or [{"run": folder.name, "iterations": int(info["iterations"]),
                                     "minutes": float(info["minutes"]), "data": info["data"]}]
    names = [s["run"] for s in stages]
    if run.name not in names:
        return stages
    return stages[: len(names) - 1 - names[::-1].index(run.name)]


def earlier_stages(run: Path) -> list[dict]:
    """The runs or exported models this one was initialised from (``econ train --init``),
    first first: their iterations and minutes count towards the shipped model's training."""
    init = json.loads((run / "config.json").read_text())["train"].get("init_from", "")
    if not init:
        return []
    init_dir = Path(init)
    if (init_dir / "run.json").is_file():
        return [*earlier_stages(init_dir), stage(init_dir, load_checkpoint(init_dir))]
    if (init_dir / "training.json").is_file():
        return shipped_stages(init_dir, run)
    print(f"warning: {run} was initialised from {init_dir}, which has neither run.json nor "
          "training.json: its training is not counted", file=sys.stderr)
    return []


def _field(config: RunConfig, key: str) -> object:
    section, _, name = key.partition(".")
    value = getattr(getattr(config, section), name)
    return list(value) if isinstance(value, tuple) else value


def shipped_config(trained: RunConfig, overrides: dict[str, object]
                   ) -> tuple[list[str], RunConfig]:
    """The config to ship: the run's with ``overrides`` applied, and the fields they change."""
    fixed = {"train.init_from", "train.init_parts"} & set(overrides)
    if fixed:
        raise EconError(f"--set cannot change {', '.join(sorted(fixed))}: an exported model "
                        "loads every part from its own weights")
    shipped = override(trained, overrides)
    return [key for key in overrides if _field(shipped, key) != _field(trained, key)], shipped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("name")
    parser.add_argument("--root", type=Path, default=Path("pretrained"))
    parser.add_argument("--hardware", default=None, help="override the machine description")
    parser.add_argument("--snapshot", type=int, default=None,
                        help="ship the weights of snapshots/iter_<N>.safetensors instead of the "
                             "run's final ones (fit the prior afterwards)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.FIELD=VALUE",
                        help="change the shipped config (e.g. an inference setting chosen on "
                             "validation scenes); recorded in training.json")
    args = parser.parse_args(argv)
    trained = RunConfig.load(args.run / "config.json")
    changes, shipped = shipped_config(trained, parse_overrides(args.overrides))
    if args.snapshot is None:
        weights, state = args.run / "model.safetensors", load_checkpoint(args.run)
        if not weights.is_file():
            raise EconError(f"{args.run} has no model.safetensors (a run that never finished?); "
                            "export one of its snapshots with --snapshot N")
    else:
        weights = snapshot_path(args.run, args.snapshot)
        with safe_open(str(weights), framework="pt") as handle:
            state = handle.metadata()
    try:
        ECON(shipped.model).load_state_dict(load_file(str(weights)))
    except RuntimeError as error:
        raise EconError(f"the shipped config does not fit the weights of {weights}: {error}") from None
    target = args.root / args.name
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(weights, target / "model.safetensors")
    # the run's priors belong to its final weights and to the config that fitted them
    keep_priors = args.snapshot is None and not changes
    for name in ("prior.json", "latents.json"):
        if keep_priors and (args.run / name).exists():
            shutil.copy2(args.run / name, target / name)
        else:  # none, or one fitted to the weights shipped there before
            (target / name).unlink(missing_ok=True)
    if not keep_priors:
        print("no prior shipped: fit one with `econ compose <model> --prior --data <scenes>`")
    config = json.loads(json.dumps(shipped.to_dict()))
    config["train"]["init_from"] = ""  # a path on the training machine; training.json has the stages
    config["train"]["init_parts"] = list(EXPERT_PARTS)
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    stages = [*earlier_stages(args.run), stage(args.run, state)]
    info = {
        "iterations": sum(s["iterations"] for s in stages),
        "minutes": round(sum(s["minutes"] for s in stages), 2),
        "hardware": args.hardware or machine(),
        "data": " → ".join(s["data"] for s in stages),
    }
    if len(stages) > 1:
        info["stages"] = stages
    if changes:  # what the shipped config changes against the one the last stage trained with
        info["config_changes"] = {key: {"trained": _field(trained, key), "shipped": _field(shipped, key)}
                                  for key in changes}
    (target / "training.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    print(f"exported {args.run} → {target}: {info}")


if __name__ == "__main__":
    main()
