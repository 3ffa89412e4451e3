"""Ship a trained run as ``pretrained/<name>``: config, weights (safetensors), prior and how it
was trained (iterations, minutes, machine). Then run ``econ evaluate`` into the same folder.

    python benchmarks/export_pretrained.py runs/quick unique
    python benchmarks/export_pretrained.py runs/quick unique --snapshot 2500  # a kept snapshot
    econ evaluate pretrained/unique --data data/unique-test.npz --out pretrained/unique
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
from pathlib import Path

import torch
from safetensors import safe_open

from econ_scenes.train.checkpoint import load_checkpoint


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("name")
    parser.add_argument("--root", type=Path, default=Path("pretrained"))
    parser.add_argument("--hardware", default=None, help="override the machine description")
    parser.add_argument("--snapshot", type=int, default=None,
                        help="ship the weights of snapshots/iter_<N>.safetensors instead of the "
                             "run's final ones (fit the prior afterwards)")
    args = parser.parse_args()
    target = args.root / args.name
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(args.run / "config.json", target / "config.json")
    if args.snapshot is None:
        state = load_checkpoint(args.run)
        for name in ("model.safetensors", "prior.json", "latents.json"):
            if (args.run / name).exists():
                shutil.copy2(args.run / name, target / name)
    else:  # the run's priors belong to its final weights
        weights = args.run / "snapshots" / f"iter_{args.snapshot:06d}.safetensors"
        shutil.copy2(weights, target / "model.safetensors")
        for stale in ("prior.json", "latents.json"):
            (target / stale).unlink(missing_ok=True)
        with safe_open(str(weights), framework="pt") as handle:
            state = handle.metadata()
    run_info = json.loads((args.run / "run.json").read_text())
    info = {
        "iterations": int(state["iteration"]),
        "minutes": round(float(state["minutes"]), 2),
        "hardware": args.hardware or machine(),
        "data": Path(run_info["data"]).name,
    }
    (target / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"exported {args.run} → {target}: {info}")


if __name__ == "__main__":
    main()
