"""Which kernel should compute the experts' instance norm on this CPU: ``F.instance_norm`` (it
copies a channels-last input to NCHW and returns NCHW, so the layers' layout costs a copy back),
``F.group_norm`` with one channel per group (one channels-last pass, from 1,024 pixels up), or,
for one image (the winners' layout), ``F.batch_norm`` over (H, W).

``StackedInstanceNorm`` picks by these timings (docs/performance.md); rerun this on a new kind
of machine or torch version before trusting its threshold there.

    python benchmarks/norm_kernels.py --out benchmarks/results/norm_kernels.md
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from econ_scenes.train.loop import native_bf16

SHAPES = ((32, 128, 32, 32), (32, 128, 31, 31), (32, 256, 16, 16), (32, 256, 8, 8),
          (32, 128, 64, 64))
"""(N, C, H, W): the competition's maps (B images, K·C channels) at the U-Net's levels, and a
map one pixel short of the threshold."""


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    """Best of ``repeats`` timed calls after two warm-up calls, in milliseconds."""
    for _ in range(2):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def forward_row(shape: tuple[int, ...], dtype: torch.dtype, repeats: int) -> list[str]:
    """Instance norm (+ copy back to channels-last) against group norm, forward without grad."""
    x = torch.randn(shape, dtype=dtype).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.rand(shape[1], dtype=dtype) + 0.5, torch.randn(shape[1], dtype=dtype)

    def instance() -> Tensor:
        return F.instance_norm(x, weight=weight, bias=bias, eps=1e-5).contiguous(
            memory_format=torch.channels_last)

    def group() -> Tensor:
        return F.group_norm(x, shape[1], weight, bias, eps=1e-5)

    with torch.no_grad():
        error = (instance().float() - group().float()).abs().max().item()
        a, b = best_ms(instance, repeats), best_ms(group, repeats)
    return [str(shape), str(dtype).removeprefix("torch."), "forward", f"{a:.2f}", f"{b:.2f}",
            f"{a / b:.2f}×", f"{error:.1e}"]


def winners_row(shape: tuple[int, ...], dtype: torch.dtype, repeats: int) -> list[str]:
    """One image, forward and backward: batch norm over (H, W) against group norm (with
    gradients for the input and the affine parameters, as in training)."""
    x0 = torch.randn(shape, dtype=dtype).contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(shape, dtype=dtype).contiguous(memory_format=torch.channels_last)

    def run(group: bool) -> Tensor:
        x = x0.clone().requires_grad_()
        weight = torch.ones(shape[1], dtype=dtype, requires_grad=True)
        bias = torch.zeros(shape[1], dtype=dtype, requires_grad=True)
        if group:
            y = F.group_norm(x, shape[1], weight, bias, eps=1e-5)
        else:
            y = F.batch_norm(x, None, None, weight, bias, training=True, eps=1e-5)
        y.backward(upstream)
        assert x.grad is not None
        return x.grad

    error = (run(False).float() - run(True).float()).abs().max().item()
    a, b = best_ms(lambda: run(False), repeats), best_ms(lambda: run(True), repeats)
    return [str(shape), str(dtype).removeprefix("torch."), "forward + backward (batch norm)",
            f"{a:.2f}", f"{b:.2f}", f"{a / b:.2f}×", f"{error:.1e}"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32, help="N of the competition's maps")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/norm_kernels.md"))
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeats < 1 or args.batch < 1:
        parser.error("--threads, --repeats and --batch must be >= 1")
    torch.set_num_threads(args.threads)
    shapes = [(args.batch, *shape[1:]) for shape in SHAPES]
    rows = [forward_row(shape, dtype, args.repeats)
            for shape in shapes for dtype in (torch.float32, torch.bfloat16)]
    rows += [winners_row((1, args.batch * 32, 32, 32), dtype, args.repeats)
             for dtype in (torch.float32, torch.bfloat16)]
    header = ["map (N, C, H, W)", "dtype", "pass", "instance norm ms", "group norm ms",
              "group norm speed-up", "max difference"]
    lines = [
        "# Instance norm kernels on this CPU",
        "",
        f"Channels-last input, best of {args.repeats} calls, {args.threads} threads. "
        "\"instance norm\" is `F.instance_norm` plus the copy back to channels-last (forward) "
        "or `F.batch_norm` over (H, W) for one image (forward + backward); \"group norm\" is "
        "`F.group_norm` with one channel per group.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * 3 + "---:|" * 4,
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        f"{datetime.datetime.now().isoformat(timespec='seconds')}, {platform.machine()}, "
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"bf16 units: {native_bf16(torch.device('cpu'))}.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
