"""Layers whose parameters are stacked over K experts.

Activations are kept as 4-D tensors ``(N, G·C, H, W)``: N images, each processed by G experts,
where ``experts: (G,)`` says which of the K parameter sets group g uses. Two layouts use the same
layers:

* competition, every expert on every image: ``N = B``, ``experts = arange(K)``;
* winners only, each image with its own expert: ``N = 1``, ``G = B``, ``experts = winner``.

A grouped convolution computes all groups in one kernel, so neither layout loops over experts.
A ``shared`` input ``(N, C, H, W)`` is the same for all G groups (the image and scope at the first
layer of the competition layout) and is convolved once with the G weight sets concatenated.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def full_precision(x: Tensor) -> Tensor:
    """Outputs of half-precision (autocast) layers → float32; float32 and float64 as they are,
    so that a float64 model stays float64 end to end."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


_C_IN_LAST = (0, 1, 3, 4, 2)
"""(K, C_out, C_in, kh, kw) → (K, C_out, kh, kw, C_in): the channels-last order of stacked
convolution weights; ``_C_IN_BACK`` is its inverse."""
_C_IN_BACK = (0, 1, 4, 2, 3)


class _SelectExperts(torch.autograd.Function):
    """Stacked parameters (K, ...) → the rows of ``experts`` (G,), in the compute dtype.

    Cast before selecting (under autocast the K rows are cast once, not the G ≥ K selected
    copies), and the backward sums the G gradients into K rows with a one-hot matmul (a
    multithreaded GEMM, where index_select's backward is an index_add that runs as a serial
    ``scatter_add_`` on CPUs; under autocast the sum is accumulated in fp32 and rounded once to
    bf16, like the convolutions' own weight gradients).

    With ``channels_last`` (convolution weights (K, C_out, C_in, kh, kw)) the selection is
    written in channels-last order, (C_in) innermost: oneDNN would otherwise copy the G weight
    sets to that layout in the forward and again in the backward, and copy their gradient back.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, param: Tensor, experts: Tensor, dtype: torch.dtype, channels_last: bool
    ) -> Tensor:
        ctx.save_for_backward(experts)
        ctx.n_experts = param.shape[0]
        ctx.channels_last = channels_last
        source = param.to(dtype)
        if channels_last:
            return source.permute(_C_IN_LAST).index_select(0, experts).permute(_C_IN_BACK)
        return source.index_select(0, experts)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad: Tensor
    ) -> tuple[Tensor, None, None, None]:
        (experts,) = ctx.saved_tensors
        groups = experts.numel()
        if ctx.channels_last:
            grad = grad.permute(_C_IN_LAST)  # a view where the gradient is channels-last
        # (K, G); a comparison, where F.one_hot would check the indices' range with a host sync
        one_hot = (torch.arange(ctx.n_experts, device=experts.device).unsqueeze(1)
                   == experts.unsqueeze(0)).to(grad.dtype)
        summed = torch.mm(one_hot, grad.reshape(groups, math.prod(grad.shape[1:])))
        summed = summed.reshape(ctx.n_experts, *grad.shape[1:])
        return (summed.permute(_C_IN_BACK) if ctx.channels_last else summed), None, None, None


def select_experts(param: Tensor, experts: Tensor, channels_last: bool = False) -> Tensor:
    """The parameters of experts ``experts: (G,)`` from a stack (K, ...) → (G, ...), cast as
    autocast would cast them (to its dtype when it is on for the parameter's device; float64
    stays float64). ``channels_last``: convolution weights (K, C_out, C_in, kh, kw), selected
    into channels-last memory."""
    device = param.device.type
    dtype = param.dtype
    if (dtype != torch.float64 and torch.amp.is_autocast_available(device)
            and torch.is_autocast_enabled(device)):
        dtype = torch.get_autocast_dtype(device)
    return _SelectExperts.apply(param, experts, dtype, channels_last)


class _BandedWeightGradConv2d(torch.autograd.Function):
    """A stride-1 'same' convolution of one image whose weight gradient is computed over
    horizontal bands of the image stacked as a batch.

    Each band carries the ``kernel // 2`` rows above and below it (zeros beyond the image), so
    the bands' weight gradients, summed over the batch by the convolution's own backward, are
    exactly the whole image's. Why: oneDNN's bf16 (AMX) weight-gradient kernel with a batch of
    one runs 4-10× slower on maps above 1,024 pixels than on the same pixels as a batch of
    smaller maps (the winners' layout at 64×64; docs/performance.md). The forward and the input
    gradient are PyTorch's own.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, groups: int, rows: int
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.groups, ctx.rows = groups, rows
        return F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=groups)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        x, weight = ctx.saved_tensors
        pad = weight.shape[-1] // 2
        groups, rows = ctx.groups, ctx.rows
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], groups,
                [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            height = x.shape[2]
            bands = -(-height // rows)
            extra = bands * rows - height  # zero rows of gradient add nothing
            # (1, C, H, W) → (bands, C, rows + 2·pad, W), band i = padded rows [i·rows, (i+1)·rows + 2·pad)
            x_bands = F.pad(x, (0, 0, pad, pad + extra)).unfold(2, rows + 2 * pad, rows)
            x_bands = x_bands.permute(2, 1, 4, 3, 0).squeeze(-1)  # (bands, C, rows + 2·pad, W)
            grad_bands = F.pad(grad, (0, 0, 0, extra)).reshape(
                grad.shape[1], bands, rows, grad.shape[3]).transpose(0, 1)
            grad_w = torch.ops.aten.convolution_backward(
                grad_bands.contiguous(memory_format=torch.channels_last),
                x_bands.contiguous(memory_format=torch.channels_last), weight, None, [1, 1],
                [0, pad], [1, 1], False, [0, 0], groups, [False, True, False])[1]
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


def _kaiming_uniform_(weight: Tensor, fan_in: int) -> None:
    # PyTorch's default for Conv2d/Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bound = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(weight, -bound, bound)


class StackedConv2d(nn.Module):
    """K independent ``Conv2d(c_in, c_out, kernel_size)`` layers with 'same' padding."""

    BAND_PIXELS = 1024
    """Largest band (pixels) of :class:`_BandedWeightGradConv2d`: oneDNN's bf16 weight gradient
    of one image is fast up to this size and several times slower above it."""

    def __init__(self, n_experts: int, c_in: int, c_out: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.c_in, self.c_out, self.kernel_size = c_in, c_out, kernel_size
        # The activations' layout: channels-last (2-3× faster oneDNN convolutions on CPUs) or
        # torch.contiguous_format, the plain NCHW layout (benchmarks' baseline).
        self.memory_format = torch.channels_last
        self.weight = nn.Parameter(torch.empty(n_experts, c_out, c_in, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(n_experts, c_out))
        fan_in = c_in * kernel_size * kernel_size
        _kaiming_uniform_(self.weight, fan_in)
        _kaiming_uniform_(self.bias, fan_in)

    def forward(self, x: Tensor, experts: Tensor, shared: bool = False) -> Tensor:
        """x: (N, G·c_in, H, W), or (N, c_in, H, W) if shared → (N, G·c_out, H, W)."""
        groups = experts.numel()
        k = self.kernel_size
        weight = select_experts(self.weight, experts, self.memory_format == torch.channels_last)
        weight = weight.reshape(groups * self.c_out, self.c_in, k, k)
        bias = select_experts(self.bias, experts).reshape(-1)
        x = x.contiguous(memory_format=self.memory_format)
        groups = 1 if shared else groups
        rows = self._band_rows(x, weight)
        if rows:
            return _BandedWeightGradConv2d.apply(x.to(weight.dtype), weight, bias, groups, rows)
        return F.conv2d(x, weight, bias, padding=k // 2, groups=groups)

    def _band_rows(self, x: Tensor, weight: Tensor) -> int:
        """Rows per band when this convolution's weight gradient should be banded, else 0: one
        bf16 image on a CPU, channels-last, larger than :attr:`BAND_PIXELS`, weights that need a
        gradient."""
        _, _, height, width = x.shape
        if (x.shape[0] != 1 or x.device.type != "cpu" or weight.dtype != torch.bfloat16
                or self.memory_format != torch.channels_last or height * width <= self.BAND_PIXELS
                or not (torch.is_grad_enabled() and weight.requires_grad)):
            return 0
        return max(1, self.BAND_PIXELS // width)


class StackedInstanceNorm(nn.Module):
    """K independent affine ``InstanceNorm2d(c)`` layers.

    The output keeps the layers' memory format, and the kernel is chosen for it (timings in
    docs/performance.md): ``F.instance_norm`` copies a channels-last input to NCHW and returns
    NCHW, so

    * with one image (the winners' layout, N = 1) it is batch norm over (H, W), which PyTorch's
      CPU kernel runs channels-last without a copy;
    * without gradients (the competition, decompositions) on CPU maps of at least
      :attr:`GROUP_NORM_MIN_PIXELS` pixels it is group norm with one channel per group, whose CPU
      kernel runs channels-last in one pass (4-6× faster; on smaller maps and in its backward it
      is several times slower than instance norm, and in torch 2.13 its backward crashes on a
      channels-last input when only the scale and shift need gradients);
    * otherwise ``F.instance_norm``, its output put back in the layers' layout.
    """

    GROUP_NORM_MIN_PIXELS = 1024

    def __init__(self, n_experts: int, channels: int) -> None:
        super().__init__()
        self.memory_format = torch.channels_last
        self.weight = nn.Parameter(torch.ones(n_experts, channels))
        self.bias = nn.Parameter(torch.zeros(n_experts, channels))

    def forward(self, x: Tensor, experts: Tensor) -> Tensor:
        """x: (N, G·C, H, W) → same shape, in ``self.memory_format``."""
        weight = self.weight.index_select(0, experts).reshape(-1)
        bias = self.bias.index_select(0, experts).reshape(-1)
        x = x.contiguous(memory_format=self.memory_format)  # a no-op after the layers' convolutions
        if x.shape[0] == 1:
            return F.batch_norm(x, None, None, weight, bias, training=True, eps=1e-5)
        if self._group_norm_is_faster(x, weight, bias):
            return F.group_norm(x, x.shape[1], weight, bias, eps=1e-5)
        return F.instance_norm(x, weight=weight, bias=bias, eps=1e-5).contiguous(
            memory_format=self.memory_format)

    def _group_norm_is_faster(self, x: Tensor, weight: Tensor, bias: Tensor) -> bool:
        needs_grad = torch.is_grad_enabled() and any(
            t.requires_grad for t in (x, weight, bias))
        return (x.device.type == "cpu" and self.memory_format == torch.channels_last
                and x.shape[2] * x.shape[3] >= self.GROUP_NORM_MIN_PIXELS and not needs_grad)


class StackedLinear(nn.Module):
    """K independent ``Linear(d_in, d_out)`` layers."""

    def __init__(self, n_experts: int, d_in: int, d_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_experts, d_out, d_in))
        self.bias = nn.Parameter(torch.empty(n_experts, d_out))
        _kaiming_uniform_(self.weight, d_in)
        _kaiming_uniform_(self.bias, d_in)

    def forward(self, x: Tensor, experts: Tensor) -> Tensor:
        """x: (N, G, d_in) → (N, G, d_out)."""
        weight = select_experts(self.weight, experts)
        # the bias in the parameters' precision, so that under autocast the sum (e.g. the
        # latents' statistics) is float32
        return torch.einsum("ngi,goi->ngo", x, weight) + self.bias.index_select(0, experts)


def channels_last(x: Tensor) -> Tensor:
    """Channels-last memory: 2-3× faster convolutions than NCHW on CPU (oneDNN)."""
    return x.contiguous(memory_format=torch.channels_last)


def group_cat(a: Tensor, b: Tensor, groups: int) -> Tensor:
    """Concatenate channels group by group: (N, G·Ca, H, W), (N, G·Cb, H, W) → (N, G·(Ca+Cb), H, W).

    Works in (N, H, W, G, C) order so that the result is channels-last without another copy.
    """
    n, _, h, w = a.shape
    a5 = a.permute(0, 2, 3, 1).reshape(n, h, w, groups, -1)
    b5 = b.permute(0, 2, 3, 1).reshape(n, h, w, groups, -1)
    return torch.cat([a5, b5], dim=-1).reshape(n, h, w, -1).permute(0, 3, 1, 2)
