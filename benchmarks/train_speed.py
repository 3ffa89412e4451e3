"""Speed of ECON: training (fast path against the reference per-expert loop), decomposition and
generation throughput, each against the machine's measured matmul peaks.

One training iteration is ``model.infer(images, stochastic=True)``, backward, gradient clipping
and an Adam step, as in :mod:`econ_scenes.train.loop`. Both paths start from the same weights and
see the same batch; each is warmed up before it is timed.

FLOPs of one iteration are counted with ``torch.utils.flop_counter.FlopCounterMode``. Its count
for the backward of grouped convolutions (which the fast path uses) is unreliable, so only forward
passes are counted: the competition (all K experts, no grad) and the winners' recomputation; the
backward is estimated as 2× the winners' forward. For the reference loop, which keeps the graph of
every expert and backpropagates through all of them, the backward is estimated as 2× its forward.

The matmul peaks are measured in the same run (1024² and 2048² matmuls, best of several), so the
fractions of peak are on the same machine, thread count and load as the timings. The fraction is
given of the fp32 peak (issue 6's yardstick) and, when the fast path runs in bf16, of the bf16
peak too.

Precision: the fast paths run in ``--precision`` (default ``auto``: bf16 on GPUs and on CPUs with
AMX or AVX512-BF16 units, what ``econ train`` uses); the reference loop, the plain baseline the
speed-up is measured against, in ``--reference-precision`` (default fp32).

Decomposition is ``model.infer(images, stochastic=False)`` without grad (posterior means, the
best-scoring expert at every step: what ``econ decompose`` runs). Generation is
``SceneModel.compose`` with T layers, expert t mod K at layer t (decode and layer, no inference).

    python benchmarks/train_speed.py --preset paper-unique --size 32 --batch 32 --iterations 20
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from econ_scenes.config import PRESETS, RunConfig, override, preset
from econ_scenes.data import SceneSpec, generate
from econ_scenes.model import ECON
from econ_scenes.scene import SceneModel
from econ_scenes.train.loop import autocast, resolve_device, resolve_precision


@dataclass(frozen=True)
class Timing:
    path: str
    seconds_per_iteration: float
    loss: float

    @property
    def iterations_per_second(self) -> float:
        return 1.0 / self.seconds_per_iteration


@dataclass(frozen=True)
class Flops:
    competition: int  # forward of all K experts, no grad (summed over the T steps)
    winners: int  # forward of the winners, with grad
    reference_forward: int  # forward of the reference loop (every expert with grad)

    @property
    def fast_iteration(self) -> int:
        return self.competition + 3 * self.winners  # winners' backward ≈ 2× their forward

    @property
    def reference_iteration(self) -> int:
        return 3 * self.reference_forward


@dataclass(frozen=True)
class Throughput:
    task: str
    seconds_per_batch: float
    flops_per_batch: int


def measure_matmul_peak(device: torch.device, sizes: tuple[int, ...] = (1024, 2048),
                        repeats: int = 8, dtype: torch.dtype = torch.float32) -> float:
    """Best GFLOP/s of square matmuls of the given sizes and dtype on this device and thread
    count."""
    best = 0.0
    for size in sizes:
        a = torch.rand(size, size, device=device, dtype=dtype)
        b = torch.rand(size, size, device=device, dtype=dtype)
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            torch.mm(a, b)
            synchronize(device)
            best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper-unique", choices=sorted(PRESETS))
    parser.add_argument("--size", type=int, default=32, help="image side (default 32)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations per path")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per path")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--experts", "-K", type=int, default=None, help="override K")
    parser.add_argument("--steps", "-T", type=int, default=None, help="override T")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="the fast paths' and inference's precision (default auto)")
    parser.add_argument("--reference-precision", default="fp32",
                        choices=["auto", "fp32", "bf16", "fp16"],
                        help="the reference loop's precision (default fp32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_speed.md"))
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    args.precision = resolve_precision(device, args.precision)
    args.reference_precision = resolve_precision(device, args.reference_precision)
    if args.iterations < 1 or args.warmup < 0 or args.batch < 1:
        parser.error("--iterations and --batch must be >= 1, --warmup >= 0")
    return args


def build_config(args: argparse.Namespace) -> RunConfig:
    overrides: dict[str, object] = {"model.image_size": args.size, "train.batch_size": args.batch}
    if args.experts is not None:
        overrides["model.n_experts"] = args.experts
    if args.steps is not None:
        overrides["model.n_steps"] = args.steps
    return override(preset(args.preset), overrides)


def make_images(config: RunConfig, batch: int, seed: int, device: torch.device) -> torch.Tensor:
    colours = "random" if config.preset == "paper-random" else "unique"
    scenes = generate(SceneSpec.preset(colours, size=config.model.image_size), batch, seed=seed)
    pixels = torch.from_numpy(np.array(scenes.images, dtype=np.uint8))
    return (pixels.permute(0, 3, 1, 2).float() / 255).to(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class TimedPath:
    reference: bool  # every expert's graph kept and back-propagated
    grouped: bool  # the experts as one grouped computation, else a loop over experts
    plain: bool = False  # plain NCHW activations instead of channels-last


PLAIN_REFERENCE = "plain reference loop (NCHW)"
"""The baseline of issue 6's speed-up: a per-expert loop, every expert back-propagated, in
PyTorch's default NCHW layout."""


def paths(config: RunConfig, device: torch.device) -> dict[str, TimedPath]:
    """The fast path in ECON's default layout for this configuration's images on ``device``
    (``ECON.grouped_by_default``), the fast path in the other layout, the reference loop
    (channels-last) and the plain reference loop (NCHW)."""
    size = config.model.image_size
    default = ECON.grouped_by_default(device, size, size)
    name = {True: "experts grouped", False: "experts looped"}
    return {
        f"fast path (default: {name[default]})": TimedPath(False, default),
        f"fast path, {name[not default]}": TimedPath(False, not default),
        "reference loop (channels-last)": TimedPath(True, False),
        PLAIN_REFERENCE: TimedPath(True, False, plain=True),
    }


def time_path(config: RunConfig, images: torch.Tensor, path: str, args: argparse.Namespace,
              device: torch.device) -> Timing:
    timed = paths(config, device)[path]
    reference = timed.reference
    precision = args.reference_precision if reference else args.precision
    torch.manual_seed(args.seed)
    model = ECON(config.model).to(device).train()
    model.grouped = timed.grouped
    if timed.plain:
        model.use_memory_format(torch.contiguous_format)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.train.lr)

    def step() -> float:
        with autocast(device, precision):
            out = model.infer(images, stochastic=True, reference=reference)
        optimiser.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimiser.step()
        return float(out.loss.detach())

    for _ in range(args.warmup):
        step()
    synchronize(device)
    loss = 0.0
    start = time.perf_counter()
    for _ in range(args.iterations):
        loss = step()
    synchronize(device)
    elapsed = time.perf_counter() - start
    return Timing(path, elapsed / args.iterations, loss)


def time_inference(config: RunConfig, images: torch.Tensor, args: argparse.Namespace,
                   device: torch.device) -> list[Throughput]:
    """Decomposition and generation throughput of one batch, with their forward FLOPs."""
    torch.manual_seed(args.seed)
    model = ECON(config.model).to(device).eval()
    scene_model = SceneModel(model, config)
    layers = [t % config.model.n_experts for t in range(config.model.n_steps)]

    def decompose() -> None:
        with torch.no_grad(), autocast(device, args.precision):
            model.infer(images, stochastic=False)

    def compose() -> None:
        with autocast(device, args.precision):
            scene_model.compose(layers, len(images), seed=args.seed)

    results = []
    for task, run in (("decomposition", decompose), ("generation", compose)):
        for _ in range(max(args.warmup, 1)):
            run()
        counter = FlopCounterMode(display=False)
        with counter:
            run()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(args.iterations):
            run()
        synchronize(device)
        elapsed = (time.perf_counter() - start) / args.iterations
        results.append(Throughput(task, elapsed, int(counter.get_total_flops())))
    return results


def count_forward_flops(model: ECON, images: torch.Tensor, *, reference: bool, grad: bool,
                        device: torch.device, precision: str) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.set_grad_enabled(grad), autocast(device, precision):
        model.infer(images, stochastic=True, reference=reference)
    return int(counter.get_total_flops())


def count_flops(config: RunConfig, images: torch.Tensor, args: argparse.Namespace,
                device: torch.device) -> Flops:
    torch.manual_seed(args.seed)
    model = ECON(config.model).to(device).train()
    # Without grad the fast path runs the competition only (the winners are not recomputed).
    competition = count_forward_flops(model, images, reference=False, grad=False, device=device,
                                      precision=args.precision)
    fast_forward = count_forward_flops(model, images, reference=False, grad=True, device=device,
                                       precision=args.precision)
    reference_forward = count_forward_flops(model, images, reference=True, grad=True,
                                            device=device, precision=args.reference_precision)
    return Flops(competition, fast_forward - competition, reference_forward)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> list[tuple[str, str]]:
    info = [
        ("date", datetime.datetime.now().isoformat(timespec="seconds")),
        ("CPU", cpu_model()),
        ("torch", torch.__version__),
        ("threads", str(torch.get_num_threads())),
        ("CPU capability", torch.backends.cpu.get_cpu_capability()),
        ("device", str(device)),
        ("python", platform.python_version()),
    ]
    if device.type == "cuda":
        info.append(("GPU", torch.cuda.get_device_name(device)))
    return info


def percent_of_peaks(rate: float, peaks: dict[str, float]) -> str:
    """A GFLOP/s rate as a percentage of each measured matmul peak, as table cells."""
    return " | ".join(f"{100 * rate / peak:.0f}%" for peak in peaks.values())


def report(config: RunConfig, args: argparse.Namespace, device: torch.device,
           timings: list[Timing], flops: Flops, throughputs: list[Throughput],
           peaks: dict[str, float]) -> str:
    m = config.model
    kinds = paths(config, device)
    plain = next(t for t in timings if t.path == PLAIN_REFERENCE)
    tuned = next(t for t in timings if kinds[t.path].reference and not kinds[t.path].plain)
    peak_columns = " | ".join(f"% of {name} peak" for name in peaks)
    peak_rule = "---:|" * len(peaks)
    lines = [
        "# ECON training speed",
        "",
        f"Preset `{config.preset}`, {m.image_size}×{m.image_size} images, batch {args.batch}, "
        f"K={m.n_experts} experts, T={m.n_steps} steps, U-Net {m.unet_channels}, VAE "
        f"{m.vae_layers}×{m.vae_features}; fast paths and inference in {args.precision}, the "
        f"reference loops in {args.reference_precision}; {args.warmup} warm-up "
        f"and {args.iterations} timed iterations per path (infer + backward + clip + Adam). "
        "Speed-ups are against the plain reference loop (NCHW, the baseline issue 6 names) "
        "and against the channels-last one.",
        "",
        "Measured matmul peaks (best of 1024² and 2048² matmuls, same run): "
        + ", ".join(f"{name} **{peak:.0f} GFLOP/s**" for name, peak in peaks.items()) + ".",
        "",
        "| path | precision | ms / iteration | iterations / s | images / s "
        f"| GFLOP / iteration (est.) | GFLOP/s (est.) | {peak_columns} | speed-up vs plain "
        "| speed-up vs channels-last | last loss |",
        f"|---|---|---:|---:|---:|---:|---:|{peak_rule}---:|---:|---:|",
    ]
    for timing in timings:
        reference = kinds[timing.path].reference
        total = flops.reference_iteration if reference else flops.fast_iteration
        precision = args.reference_precision if reference else args.precision
        rate = total * timing.iterations_per_second / 1e9
        lines.append(
            f"| {timing.path} | {precision} | {1000 * timing.seconds_per_iteration:.1f} "
            f"| {timing.iterations_per_second:.2f} "
            f"| {args.batch * timing.iterations_per_second:.1f} | {total / 1e9:.3f} "
            f"| {rate:.2f} | {percent_of_peaks(rate, peaks)} "
            f"| {plain.seconds_per_iteration / timing.seconds_per_iteration:.2f}× "
            f"| {tuned.seconds_per_iteration / timing.seconds_per_iteration:.2f}× "
            f"| {timing.loss:.1f} |"
        )
    lines += [
        "",
        f"Inference throughput (batch {args.batch}, no grad, {args.precision}):",
        "",
        f"| task | ms / batch | images / s | GFLOP / batch | GFLOP/s | {peak_columns} |",
        f"|---|---:|---:|---:|---:|{peak_rule}",
    ]
    for item in throughputs:
        rate = item.flops_per_batch / item.seconds_per_batch / 1e9
        lines.append(
            f"| {item.task} | {1000 * item.seconds_per_batch:.1f} "
            f"| {args.batch / item.seconds_per_batch:.0f} | {item.flops_per_batch / 1e9:.3f} "
            f"| {rate:.2f} | {percent_of_peaks(rate, peaks)} |"
        )
    lines += [
        "",
        "FLOPs per iteration (torch.utils.flop_counter.FlopCounterMode, forward passes only):",
        "",
        "| pass | GFLOP |",
        "|---|---:|",
        f"| fast: competition, all K experts, no grad | {flops.competition / 1e9:.3f} |",
        f"| fast: winners' forward, with grad | {flops.winners / 1e9:.3f} |",
        f"| fast: winners' backward (estimated: 2× their forward) | "
        f"{2 * flops.winners / 1e9:.3f} |",
        f"| reference: forward, every expert with grad | {flops.reference_forward / 1e9:.3f} |",
        f"| reference: backward (estimated: 2× its forward) | "
        f"{2 * flops.reference_forward / 1e9:.3f} |",
        "",
        "Backward FLOPs are estimates: FlopCounterMode's count for the backward of grouped "
        "convolutions can be wrong, so it is not used.",
        "",
        "Machine:",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {key} | {value} |" for key, value in machine_info(device)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    config = build_config(args)
    images = make_images(config, args.batch, args.seed, device)
    timings = [time_path(config, images, path, args, device)
               for path in paths(config, device)]
    flops = count_flops(config, images, args, device)
    throughputs = time_inference(config, images, args, device)
    peaks = {"fp32": measure_matmul_peak(device)}
    if "bf16" in (args.precision, args.reference_precision):
        peaks["bf16"] = measure_matmul_peak(device, dtype=torch.bfloat16)
    text = report(config, args, device, timings, flops, throughputs, peaks)
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
