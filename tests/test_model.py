"""The ECON model (sections 4-5): decomposition invariants, gradient routing to the winners, the
fast path against the reference loop, ground-truth regions and input validation."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from econ_scenes.config import ModelConfig, RunConfig, TrainConfig
from econ_scenes.data import Scenes
from econ_scenes.errors import EconError
from econ_scenes.model import ECON, layers
from econ_scenes.model import econ as econ_module
from econ_scenes.model.layers import (
    StackedConv2d,
    StackedInstanceNorm,
    _BandedWeightGradConv2d,
    select_experts,
)
from econ_scenes.model.vae import Encoder
from econ_scenes.types import Decomposition

pytestmark = pytest.mark.usefixtures("torch_one_thread")

BATCH = 4


def images_of(scenes: Scenes, n: int = BATCH) -> Tensor:
    return torch.from_numpy(np.array(scenes.images[:n])).permute(0, 3, 1, 2).float() / 255


def build(config: ModelConfig, seed: int = 0) -> ECON:
    torch.manual_seed(seed)
    return ECON(config)


@pytest.fixture
def images(tiny_scenes: Scenes) -> Tensor:
    return images_of(tiny_scenes)


@pytest.fixture
def model(tiny_model_config: ModelConfig) -> ECON:
    return build(tiny_model_config)


# --- the decomposition ---------------------------------------------------------------------


@pytest.mark.parametrize(("n_experts", "n_steps"), [(3, 3), (1, 2), (2, 1)])
def test_decomposition_shapes(
    tiny_model_config: ModelConfig, images: Tensor, n_experts: int, n_steps: int
) -> None:
    config = dataclasses.replace(tiny_model_config, n_experts=n_experts, n_steps=n_steps)
    model = build(config)
    b, t, k, size, latent = BATCH, n_steps, n_experts, config.image_size, config.latent_dim
    for stochastic in (False, True):
        d = model.infer(images, stochastic=stochastic).decomposition
        expected = {
            "winner": (b, t), "region": (b, t, size, size), "scope": (b, t, size, size),
            "appearance": (b, t, 3, size, size), "shape": (b, t, size, size),
            "latent": (b, t, latent), "step_scores": (b, t, k),
            "reconstruction": (b, 3, size, size),
        }
        assert {f.name for f in dataclasses.fields(Decomposition)} == set(expected)
        for name, shape in expected.items():
            assert tuple(getattr(d, name).shape) == shape, name
        assert d.winner.dtype == torch.int64
        assert int(d.winner.min()) >= 0 and int(d.winner.max()) < k
        for name in ("region", "scope", "appearance", "shape"):
            value = getattr(d, name)
            assert value.min() >= 0 and value.max() <= 1, name
        # The winner is the expert with the best score at a deterministic step.
        if not stochastic:
            assert torch.equal(d.winner, d.step_scores.argmin(dim=-1))


@pytest.mark.parametrize("training", [False, True])
def test_regions_partition_the_image_and_scopes_shrink(
    model: ECON, images: Tensor, training: bool
) -> None:
    model.train(training)
    with torch.set_grad_enabled(training):
        d = model.infer(images, stochastic=training).decomposition
    ones = torch.ones_like(d.region[:, 0])
    torch.testing.assert_close(d.region.sum(dim=1), ones, atol=1e-5, rtol=0)
    # s_T = 1 (nothing explained before the first step) and s_{t-1} = s_t − r̃_t ≤ s_t.
    assert torch.equal(d.scope[:, 0], ones)
    assert (d.scope[:, 1:] <= d.scope[:, :-1] + 1e-6).all()
    assert (d.region <= d.scope + 1e-6).all()
    cumulative = ones.unsqueeze(1) - torch.cumsum(d.region, dim=1)[:, :-1]
    torch.testing.assert_close(d.scope[:, 1:], cumulative, atol=1e-5, rtol=0)
    # The last step takes what is left of the scope.
    torch.testing.assert_close(d.region[:, -1], d.scope[:, -1], atol=1e-6, rtol=0)
    # The attention actually splits the image: earlier steps take something.
    assert d.region[:, :-1].sum() > 0


def test_reconstruction_is_the_region_weighted_sum_of_objects(model: ECON, images: Tensor) -> None:
    for stochastic in (False, True):
        d = model.infer(images, stochastic=stochastic).decomposition
        expected = (d.region.unsqueeze(2) * d.appearance).sum(dim=1)
        torch.testing.assert_close(d.reconstruction, expected, atol=1e-6, rtol=1e-6)


def test_deterministic_decomposition_is_deterministic(model: ECON, images: Tensor) -> None:
    model.eval()
    torch.manual_seed(1)
    first = model(images)
    torch.manual_seed(2)
    second = model.infer(images, stochastic=False).decomposition
    for field in dataclasses.fields(Decomposition):
        assert torch.equal(getattr(first, field.name), getattr(second, field.name)), field.name


def test_loss_is_the_sum_of_the_step_terms(model: ECON, images: Tensor) -> None:
    cfg = model.config
    out = model.infer(images, stochastic=False)
    terms = out.terms
    expected = terms["reconstruction"] + cfg.beta * terms["latent_kl"]
    expected = expected + cfg.gamma * terms["region_kl"]
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=0)


# --- gradients reach only the winners --------------------------------------------------------


def weight_gradients(model: ECON) -> Iterator[tuple[str, Tensor]]:
    """(name, grad) of every weight: biases directly before an instance norm have analytically
    zero gradient, so they cannot show that an expert was updated."""
    for name, parameter in model.named_parameters():
        if name.endswith("weight"):
            grad = parameter.grad
            yield name, torch.zeros_like(parameter) if grad is None else grad


def assert_gradients_follow_winners(model: ECON, winner: Tensor) -> None:
    n_experts = model.config.n_experts
    won = [bool((winner == k).any()) for k in range(n_experts)]
    won_attending = [bool((winner[:, :-1] == k).any()) for k in range(n_experts)]
    for name, grad in weight_gradients(model):
        active = won_attending if ".attention." in name else won
        for k in range(n_experts):
            nonzero = bool(grad[k].abs().sum() > 0)
            assert nonzero == active[k], (
                f"{name}[{k}]: gradient {'nonzero' if nonzero else 'zero'}, winners "
                f"{winner.tolist()}"
            )
    # Losers get no gradient at all, biases included.
    for name, parameter in model.named_parameters():
        active = won_attending if ".attention." in name else won
        for k in range(n_experts):
            if not active[k] and parameter.grad is not None:
                assert not parameter.grad[k].any(), f"{name}[{k}]"


@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_gradients_reach_only_the_winners(
    model: ECON, images: Tensor, seed: int, reference: bool
) -> None:
    torch.manual_seed(seed)
    out = model.infer(images[:2], stochastic=True, reference=reference)
    out.loss.backward()
    assert_gradients_follow_winners(model, out.decomposition.winner)


@pytest.mark.parametrize("reference", [False, True])
def test_gradients_follow_a_forced_competition(
    model: ECON, images: Tensor, monkeypatch: pytest.MonkeyPatch, reference: bool
) -> None:
    """Expert 0 wins the attending steps, expert 1 only the last step (no attention there),
    expert 2 never: exactly expert 0's attention and experts 0 and 1's VAEs get gradient."""
    plan = iter([torch.tensor([0, 0]), torch.tensor([0, 0]), torch.tensor([1, 0])])
    monkeypatch.setattr(econ_module, "choose_winner", lambda score, temperature, gumbel: next(plan))
    out = model.infer(images[:2], stochastic=True, reference=reference)
    assert out.decomposition.winner.tolist() == [[0, 0, 1], [0, 0, 0]]
    out.loss.backward()
    assert_gradients_follow_winners(model, out.decomposition.winner)
    attention = model.experts.attention.down_convs[0].weight.grad
    decoder = model.experts.decoder.convs[0].weight.grad
    assert attention is not None and decoder is not None
    assert attention[0].any() and not attention[1].any() and not attention[2].any()
    assert decoder[0].any() and decoder[1].any() and not decoder[2].any()


# --- the fast path equals the reference loop ---------------------------------------------------


def run_path(model: ECON, images: Tensor, reference: bool, seed: int) -> tuple[Tensor, Tensor,
                                                                                Tensor, Tensor]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model.infer(images, stochastic=True, reference=reference)
    out.loss.backward()
    grads = torch.cat([
        (torch.zeros_like(p) if p.grad is None else p.grad).flatten()
        for p in model.parameters()
    ])
    d = out.decomposition
    return out.loss.detach(), d.winner, grads, d.step_scores


def assert_fast_path_equals_reference(model: ECON, images: Tensor) -> None:
    """Winners, scores, loss and gradients of one training pass agree between the paths."""
    loss_fast, winner_fast, grad_fast, score_fast = run_path(model, images, False, 0)
    loss_ref, winner_ref, grad_ref, score_ref = run_path(model, images, True, 0)
    assert torch.equal(winner_fast, winner_ref)
    torch.testing.assert_close(score_fast, score_ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(loss_fast, loss_ref, rtol=1e-10, atol=0)
    assert grad_fast.abs().sum() > 0
    torch.testing.assert_close(grad_fast, grad_ref, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize(("seed", "grouped"), [(0, False), (3, False), (0, True), (3, True)])
def test_fast_path_equals_reference_in_float64(
    model: ECON, images: Tensor, seed: int, grouped: bool
) -> None:
    """Both layouts of the experts (one grouped computation, a loop over experts), for the
    competition and for the winners' recomputation."""
    model.grouped = grouped
    model.double()
    x = images.double()
    loss_fast, winner_fast, grad_fast, score_fast = run_path(model, x, False, seed)
    loss_ref, winner_ref, grad_ref, score_ref = run_path(model, x, True, seed)
    assert torch.equal(winner_fast, winner_ref)
    # several experts win within a step, in no sorted order: the winners' sub-batches are
    # scattered back to their images
    assert any(torch.unique(w).numel() > 1 and not torch.equal(w, w.sort().values)
               for w in winner_fast.T)
    torch.testing.assert_close(score_fast, score_ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(loss_fast, loss_ref, rtol=1e-10, atol=0)
    assert grad_fast.abs().sum() > 0
    torch.testing.assert_close(grad_fast, grad_ref, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("grouped", [False, True])
def test_a_pose_only_shape_latent(tiny_model_config: ModelConfig, images: Tensor,
                                  grouped: bool) -> None:
    """shape_latent_dim S: an expert's shape depends on z[:S] alone, its colours on all of z; the
    fast path still equals the reference with the second decoder stack."""
    config = dataclasses.replace(tiny_model_config, latent_dim=3, shape_latent_dim=2)
    model = build(config).double()
    model.grouped = grouped
    z = torch.randn(5, 1, 3, dtype=torch.float64)
    moved = z.clone()
    moved[..., 2:] += 3.0
    experts = torch.tensor([1])
    appearance, shape = model.experts.decoder(z, experts)
    appearance_moved, shape_moved = model.experts.decoder(moved, experts)
    torch.testing.assert_close(shape, shape_moved, rtol=0, atol=0)
    assert not torch.allclose(appearance, appearance_moved)
    posed = z.clone()
    posed[..., :2] += 3.0
    assert not torch.allclose(model.experts.decoder(posed, experts)[1], shape)
    assert model.experts.decoder.head.weight.shape[1] == 3  # RGB only; the shape has its stack
    x = images.double()
    assert_fast_path_equals_reference(model, x)


@pytest.mark.parametrize("grouped", [False, True])
def test_a_template_shape_is_placed_by_the_pose(tiny_model_config: ModelConfig, images: Tensor,
                                                grouped: bool) -> None:
    """shape_decoder='template': z[:2] moves an expert's shape, z[2] scales it about its centre,
    z[3:] leaves it alone, experts draw their own templates, and the fast path still equals the
    reference."""
    config = dataclasses.replace(tiny_model_config, latent_dim=4, shape_latent_dim=3,
                                 shape_decoder="template")
    model = build(config).double()
    model.grouped = grouped
    decoder = model.experts.decoder
    assert not hasattr(decoder, "shape_convs")
    expert = torch.tensor([1])

    def shape(z: list[float]) -> Tensor:
        return torch.sigmoid(decoder(torch.tensor([[z]], dtype=torch.float64), expert)[1])[0, 0]

    centred = shape([0.0, 0.0, 0.0, 0.0])
    assert centred[8, 8] > 0.8 and centred[0, 0] < 1e-3  # a disc in the middle at the start
    torch.testing.assert_close(shape([0.0, 0.0, 0.0, 5.0]), centred, rtol=0, atol=0)
    right = shape([1.0, 0.0, 0.0, 0.0])  # centre moves right by 0.4 of the half-image
    columns = torch.arange(16, dtype=torch.float64)
    shift = (right.sum(0) @ columns) / right.sum() - (centred.sum(0) @ columns) / centred.sum()
    assert 2.0 < shift < 4.5
    assert shape([0.0, 0.0, 2.0, 0.0]).sum() > 1.5 * centred.sum()  # larger: z[2] > 0
    with torch.no_grad():
        decoder.template.logits[2] = -decoder.template.logits[2]
    other = torch.sigmoid(decoder(torch.zeros(1, 1, 4, dtype=torch.float64),
                                  torch.tensor([2]))[1])[0, 0]
    assert other[8, 8] < 0.1  # each expert reads its own template
    x = images.double()
    assert_fast_path_equals_reference(model, x)


@pytest.mark.parametrize("grouped", [False, True])
def test_a_competition_on_posterior_means(tiny_model_config: ModelConfig, images: Tensor,
                                          grouped: bool) -> None:
    """competition_on_means: the first step's scores do not depend on the latent noise (they
    do in the paper's competition); with a tiny τ the winners are those of a deterministic pass,
    but they are trained on sampled latents; the fast path equals the reference."""
    x = images.double()

    def first_scores(on_means: bool, seed: int) -> Tensor:
        model = build(dataclasses.replace(tiny_model_config, competition_on_means=on_means))
        model = model.double()
        model.grouped = grouped
        torch.manual_seed(seed)
        with torch.no_grad():
            return model.infer(x, stochastic=True).decomposition.step_scores[:, 0]

    torch.testing.assert_close(first_scores(True, 1), first_scores(True, 2), rtol=0, atol=0)
    assert not torch.allclose(first_scores(False, 1), first_scores(False, 2))
    model = build(dataclasses.replace(tiny_model_config, competition_on_means=True)).double()
    model.grouped = grouped
    assert_fast_path_equals_reference(model, x)
    sharp = build(dataclasses.replace(tiny_model_config, competition_on_means=True,
                                      competition_temperature=1e-9)).double()
    sharp.grouped = grouped
    with torch.no_grad():
        torch.manual_seed(5)
        sampled = sharp.infer(x, stochastic=True).decomposition
        means = sharp.infer(x, stochastic=False).decomposition
    torch.testing.assert_close(sampled.step_scores[:, 0], means.step_scores[:, 0], rtol=0, atol=0)
    assert torch.equal(sampled.winner[:, 0], means.winner[:, 0])
    # the same winner, decoded from a sampled latent instead of its posterior mean
    assert (sampled.latent[:, 0] - means.latent[:, 0]).abs().amin(dim=-1).gt(1e-6).all()


def test_the_template_learns_the_pose_and_the_shape() -> None:
    """Fitting one expert's template and the poses of squares of several sizes and positions by
    gradient descent recovers squares (the mechanism that makes a template expert a class
    specialist)."""
    from econ_scenes.model.vae import TemplateShape

    torch.manual_seed(0)
    template = TemplateShape(1, 16)
    targets = torch.zeros(6, 16, 16)
    for i, (x, y, s) in enumerate([(2, 3, 6), (8, 7, 7), (5, 5, 5), (1, 9, 6), (9, 1, 6),
                                   (4, 2, 8)]):
        targets[i, y:y + s, x:x + s] = 1.0
    pose = torch.zeros(6, 1, 3, requires_grad=True)
    optimiser = torch.optim.Adam([pose, *template.parameters()], lr=0.05)
    for _ in range(300):
        logits = template(pose, torch.tensor([0]))[:, 0]
        loss = F.binary_cross_entropy_with_logits(logits, targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    fitted = torch.sigmoid(template(pose, torch.tensor([0]))[:, 0]) > 0.5
    iou = (fitted & (targets > 0)).sum() / (fitted | (targets > 0)).sum()
    assert iou > 0.97


def test_a_float64_model_computes_in_float64(model: ECON, images: Tensor) -> None:
    """The casts that keep autocast's half-precision outputs in float32 leave float64 alone."""
    out = model.double().infer(images.double(), stochastic=True)
    d = out.decomposition
    for name in ("region", "scope", "appearance", "shape", "latent", "step_scores",
                 "reconstruction"):
        assert getattr(d, name).dtype == torch.float64, name
    assert out.loss.dtype == torch.float64


def test_competition_layouts_agree(model: ECON, images: Tensor) -> None:
    """One grouped computation and the loop over experts give the same scores and winners."""
    model.double()
    x = images.double()
    outputs = []
    for grouped in (True, False):
        model.grouped = grouped
        torch.manual_seed(1)
        outputs.append(model.infer(x, stochastic=True).decomposition)
    grouped_out, loop_out = outputs
    assert torch.equal(grouped_out.winner, loop_out.winner)
    torch.testing.assert_close(grouped_out.step_scores, loop_out.step_scores, rtol=1e-10, atol=0)
    torch.testing.assert_close(grouped_out.region, loop_out.region, rtol=1e-10, atol=1e-12)


def test_plain_nchw_activations_give_the_same_inference(model: ECON, images: Tensor) -> None:
    """The benchmarks' plain NCHW baseline computes what the channels-last default does."""
    model.double()
    outputs = []
    for memory_format in (torch.channels_last, torch.contiguous_format):
        model.use_memory_format(memory_format)
        torch.manual_seed(2)
        outputs.append(model.infer(images.double(), stochastic=True))
    last, plain = outputs
    assert torch.equal(last.decomposition.winner, plain.decomposition.winner)
    torch.testing.assert_close(last.loss, plain.loss, rtol=1e-10, atol=0)
    torch.testing.assert_close(last.decomposition.region, plain.decomposition.region,
                               rtol=1e-9, atol=1e-12)
    with pytest.raises(EconError, match="memory format"):
        model.use_memory_format(torch.preserve_format)


def test_selecting_experts_parameters_and_their_gradients() -> None:
    """select_experts = index_select, forward and backward (G images picking K experts, some
    twice, one never), in float64; under bf16 autocast the selection comes out in bf16 and the
    gradient in the parameter's dtype."""
    torch.manual_seed(0)
    param = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    experts = torch.tensor([2, 0, 2, 2, 1, 0])
    upstream = torch.randn(6, 3, 5, dtype=torch.float64)
    selected = select_experts(param, experts)
    (grad,) = torch.autograd.grad((selected * upstream).sum(), param)
    expected = param.index_select(0, experts)
    (expected_grad,) = torch.autograd.grad((expected * upstream).sum(), param)
    assert torch.equal(selected, expected)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=0)
    assert torch.equal(grad[3], torch.zeros(3, 5, dtype=torch.float64))  # expert 3 unused
    weight = param.detach().float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = select_experts(weight, experts)
    assert low.dtype == torch.bfloat16
    assert torch.equal(low, weight.detach().to(torch.bfloat16).index_select(0, experts))
    low.float().sum().backward()
    assert weight.grad is not None and weight.grad.dtype == torch.float32
    torch.testing.assert_close(weight.grad[:, 0, 0], torch.tensor([2.0, 1.0, 3.0, 0.0]))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast leaves float64 alone
        assert select_experts(param, experts).dtype == torch.float64
    none = select_experts(param, experts[:0])
    assert none.shape == (0, 3, 5)
    (grad,) = torch.autograd.grad(none.sum(), param)
    assert torch.equal(grad, torch.zeros_like(param))


@pytest.mark.parametrize("gradient_layout", [torch.channels_last, torch.contiguous_format])
def test_selecting_convolution_weights_channels_last(gradient_layout: torch.memory_format) -> None:
    """Convolution weights (K, C_out, C_in, kh, kw) selected channels-last: index_select's
    values in channels-last memory, and its gradients whatever the upstream gradient's layout."""
    torch.manual_seed(0)
    param = torch.randn(3, 4, 5, 3, 2, dtype=torch.float64, requires_grad=True)
    experts = torch.tensor([2, 0, 2, 2])
    selected = select_experts(param, experts, channels_last=True)
    expected = param.index_select(0, experts)
    assert torch.equal(selected, expected)
    flat = selected.reshape(16, 5, 3, 2)
    assert flat.is_contiguous(memory_format=torch.channels_last)
    assert flat.data_ptr() == selected.data_ptr()  # a view: no copy
    upstream = torch.randn(16, 5, 3, 2, dtype=torch.float64).contiguous(
        memory_format=gradient_layout)
    (grad,) = torch.autograd.grad(flat, param, upstream)
    (expected_grad,) = torch.autograd.grad(expected.reshape(16, 5, 3, 2), param, upstream)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=0)
    assert torch.equal(grad[1], torch.zeros(4, 5, 3, 2, dtype=torch.float64))  # expert 1 unused


@pytest.mark.parametrize(("height", "width", "kernel", "rows", "groups", "input_grad"),
                         [(64, 64, 3, 16, 3, True), (50, 37, 3, 7, 3, True),
                          (64, 64, 1, 16, 3, True), (9, 9, 3, 20, 3, True),
                          (45, 40, 3, 11, 1, False), (32, 48, 3, 8, 3, False)])
def test_banded_weight_gradient_is_the_convolutions(
        height: int, width: int, kernel: int, rows: int, groups: int, input_grad: bool) -> None:
    """The banded convolution's output and gradients (input, weight, bias) are F.conv2d's, for
    bands that divide the image, bands that do not (zero rows padded), 1×1 kernels, a band
    taller than the image, one group or several, an input with or without a gradient (the
    image at the first layer) and an upstream gradient that is not channels-last."""
    torch.manual_seed(0)
    c_in, c_out = 4, 5
    x = torch.randn(1, groups * c_in, height, width, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last).requires_grad_(input_grad)
    weight = (0.3 * torch.randn(groups * c_out, c_in, kernel, kernel, dtype=torch.float64)
              ).requires_grad_()
    bias = torch.randn(groups * c_out, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(1, groups * c_out, width, height, dtype=torch.float64).transpose(2, 3)
    expected = F.conv2d(x, weight, bias, padding=kernel // 2, groups=groups)
    banded = _BandedWeightGradConv2d.apply(x, weight, bias, groups, rows)
    torch.testing.assert_close(banded, expected, rtol=1e-12, atol=1e-12)
    inputs = (x, weight, bias) if input_grad else (weight, bias)
    for got, want in zip(torch.autograd.grad(banded, inputs, upstream),
                         torch.autograd.grad(expected, inputs, upstream), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-11)


def test_winners_convolutions_band_their_weight_gradient_in_bf16(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A stacked convolution bands its weight gradient exactly when one bf16 image larger than
    BAND_PIXELS needs it on a CPU (the winners' layout under autocast), and its gradients are
    then those of the plain grouped convolution."""
    torch.manual_seed(0)
    conv = StackedConv2d(n_experts=3, c_in=4, c_out=8)
    experts = torch.tensor([2, 0, 2, 1])
    calls: list[int] = []
    apply = _BandedWeightGradConv2d.apply

    def spy(*args: object) -> Tensor:
        calls.append(int(args[-1]))  # type: ignore[call-overload]
        return apply(*args)

    monkeypatch.setattr(_BandedWeightGradConv2d, "apply", spy)

    def gradients(x: Tensor) -> tuple[Tensor, ...]:
        conv.zero_grad()
        x = x.detach().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = conv(x, experts)
        out.float().square().sum().backward()
        assert conv.weight.grad is not None and conv.bias.grad is not None and x.grad is not None
        return conv.weight.grad.clone(), conv.bias.grad.clone(), x.grad.clone()

    x = torch.randn(1, 16, 40, 48)
    banded = gradients(x)
    assert calls == [StackedConv2d.BAND_PIXELS // 48]
    monkeypatch.setattr(conv, "BAND_PIXELS", 40 * 48)
    plain = gradients(x)
    assert len(calls) == 1
    for got, want in zip(banded, plain, strict=True):  # bf16 sums in another order
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
    monkeypatch.setattr(conv, "BAND_PIXELS", StackedConv2d.BAND_PIXELS)
    gradients(torch.randn(2, 16, 40, 48))  # a batch of images: oneDNN is fast there
    gradients(torch.randn(1, 16, 32, 32))  # not above BAND_PIXELS
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        conv(x, experts)
    conv(x, experts).sum().backward()  # float32
    assert len(calls) == 1


def test_encoder_pooling_before_its_relu_is_relu_then_pooling() -> None:
    """The encoder pools before its ReLU; the outputs and gradients are those of the paper's
    order (conv → ReLU → max-pool), the two operations commuting."""
    torch.manual_seed(0)
    encoder = Encoder(n_experts=3, image_size=16, layers=2, features=5, latent_dim=2).double()
    experts = torch.tensor([2, 0])
    inputs = torch.randn(4, 8, 16, 16, dtype=torch.float64)

    def paper_order() -> Tensor:
        h = inputs
        for conv in encoder.convs:
            h = F.max_pool2d(F.relu(conv(h, experts)), 2)
        flat = h.reshape(4, 2, -1)
        return encoder.fc2(F.relu(encoder.fc1(flat, experts)), experts)

    mean, log_var = encoder(inputs, experts)
    expected_mean, expected_log_var = paper_order().chunk(2, dim=-1)
    torch.testing.assert_close(mean, expected_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(log_var, expected_log_var.clamp(-10.0, 10.0), rtol=1e-12,
                               atol=1e-12)
    params = list(encoder.parameters())
    got = torch.autograd.grad(mean.square().sum() + log_var.sum(), params)
    want = torch.autograd.grad(expected_mean.square().sum() + expected_log_var.sum(), params)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def _random_norm() -> tuple[StackedInstanceNorm, Tensor]:
    """A float64 stacked norm of 3 experts × 4 channels with random affine parameters, and
    the experts (2, 0) of two groups."""
    torch.manual_seed(0)
    norm = StackedInstanceNorm(n_experts=3, channels=4).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    return norm, torch.tensor([2, 0])


@pytest.mark.parametrize("images", [1, 5])
def test_instance_norm_stays_channels_last(images: int) -> None:
    """The stacked instance norm returns the layers' memory format and F.instance_norm's values
    and gradients, for one image (the winners' layout, computed as batch norm) and for several."""
    norm, experts = _random_norm()
    x = torch.randn(images, 8, 6, 6, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    upstream = torch.randn(images, 8, 6, 6, dtype=torch.float64)
    out = norm(x, experts)
    assert out.is_contiguous(memory_format=torch.channels_last)
    grads = torch.autograd.grad((out * upstream).sum(), (x, norm.weight, norm.bias))
    expected = F.instance_norm(x, weight=norm.weight[experts].reshape(-1),
                               bias=norm.bias[experts].reshape(-1), eps=1e-5)
    expected_grads = torch.autograd.grad((expected * upstream).sum(),
                                         (x, norm.weight, norm.bias))
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)
    norm.memory_format = torch.contiguous_format
    assert norm(x, experts).is_contiguous()


@pytest.mark.parametrize("size", [32, 16])
def test_instance_norm_without_gradients(size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without gradients (the competition) the norm of several images gives instance norm's
    values in channels-last, through the group-norm kernel on maps of at least
    GROUP_NORM_MIN_PIXELS pixels and through instance norm on smaller ones; whenever a gradient
    is needed (of the input, the scale or the shift) it is instance norm."""
    norm, experts = _random_norm()
    x = (3 + 2 * torch.randn(5, 8, size, size, dtype=torch.float64)).contiguous(
        memory_format=torch.channels_last)
    calls = []
    group_norm = F.group_norm

    def spy(*args: Any, **kwargs: Any) -> Tensor:
        calls.append(args[0].shape)
        return group_norm(*args, **kwargs)

    monkeypatch.setattr(layers.F, "group_norm", spy)
    expected = F.instance_norm(x, weight=norm.weight[experts].reshape(-1).detach(),
                               bias=norm.bias[experts].reshape(-1).detach(), eps=1e-5)
    large = size * size >= StackedInstanceNorm.GROUP_NORM_MIN_PIXELS
    for no_grad in (torch.no_grad, torch.inference_mode):
        with no_grad():
            out = norm(x, experts)
        assert out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    assert len(calls) == (2 if large else 0)
    calls.clear()
    norm(x, experts).sum().backward()  # the parameters need gradients
    norm.requires_grad_(False)
    norm(x.clone().requires_grad_(), experts)  # the input needs one
    norm.bias.requires_grad_(True)
    norm(x, experts)  # only the shift needs one
    assert not calls


def test_convolution_weights_are_selected_channels_last(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stacked convolution hands oneDNN channels-last weights when its activations are
    channels-last (no weight copies), contiguous ones in the plain NCHW layout."""
    conv = StackedConv2d(n_experts=3, c_in=4, c_out=5)
    layouts = []
    conv2d = F.conv2d

    def spy(x: Tensor, weight: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        layouts.append((weight.is_contiguous(memory_format=torch.channels_last),
                        weight.is_contiguous()))
        return conv2d(x, weight, *args, **kwargs)

    monkeypatch.setattr(layers.F, "conv2d", spy)
    x = torch.randn(2, 8, 6, 6)
    out = conv(x, torch.tensor([2, 0]))
    conv.memory_format = torch.contiguous_format
    plain = conv(x, torch.tensor([2, 0]))
    assert layouts == [(True, False), (False, True)]
    torch.testing.assert_close(out, plain)


def test_the_default_layout_depends_on_device_and_size_and_an_instance_can_choose(
        model: ECON, monkeypatch: pytest.MonkeyPatch) -> None:
    """By default grouped on GPUs and for CPU images up to GROUPED_MAX_PIXELS, looped for larger
    CPU images, and the layout actually taken follows; setting it on one model changes only that
    model."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert ECON.grouped is None and model.grouped is None
    assert ECON.grouped_by_default(cpu, 32, 32) and ECON.grouped_by_default(cuda, 64, 64)
    assert not ECON.grouped_by_default(cpu, 64, 64) and not ECON.grouped_by_default(cpu, 33, 32)
    small = torch.zeros(2, 3, 32, 32)
    large = torch.zeros(2, 3, 64, 64)
    assert model.layout_is_grouped(small) and not model.layout_is_grouped(large)
    model.grouped = False
    assert not model.layout_is_grouped(small) and ECON.grouped is None
    assert ECON(model.config).layout_is_grouped(small)
    model.grouped = True
    assert model.layout_is_grouped(large)
    config = dataclasses.replace(model.config, image_size=64)
    wide = ECON(config)
    monkeypatch.setattr(ECON, "GROUPED_MAX_PIXELS", 64 * 64)
    assert wide.layout_is_grouped(large)
    shared: list[bool] = []
    forward = wide.experts.forward

    def spy(*args: Any, **kwargs: Any) -> Any:
        shared.append(kwargs["shared"])
        return forward(*args, **kwargs)

    monkeypatch.setattr(wide.experts, "forward", spy)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        wide.infer(images, stochastic=False, n_steps=1)  # grouped: one call, all experts
    assert len(shared) == 1
    monkeypatch.setattr(ECON, "GROUPED_MAX_PIXELS", 1024)
    with torch.no_grad():
        wide.infer(images, stochastic=False, n_steps=1)  # looped: one call per expert
    assert len(shared) == 1 + config.n_experts


def test_a_handicap_moves_the_winners_but_not_the_scores(model: ECON, images: Tensor) -> None:
    """infer's handicap (K,) is added to the scores before the winner is chosen."""
    k = model.config.n_experts
    with torch.no_grad():
        plain = model.infer(images, stochastic=False).decomposition
        favour = torch.zeros(k)
        favour[1] = -1e6  # a bonus far beyond any score difference
        favoured = model.infer(images, stochastic=False, handicap=favour).decomposition
        barred = model.infer(images, stochastic=False,
                             handicap=torch.full((k,), 1e6).index_fill(0, torch.tensor([2]), 0.0)
                             ).decomposition
    assert (favoured.winner == 1).all() and (barred.winner == 2).all()
    assert not (plain.winner == 1).all()
    torch.testing.assert_close(favoured.step_scores[:, 0], plain.step_scores[:, 0])


@pytest.mark.parametrize("where", ["last", "bonus-last"])
def test_a_bonus_only_at_the_last_step(tiny_model_config: ModelConfig, images: Tensor,
                                       where: str) -> None:
    """competition_balance_steps "last" and "bonus-last": a bonus leaves the object steps alone;
    a penalty acts at every step with "bonus-last" and only at the last with "last"."""
    model = build(dataclasses.replace(tiny_model_config, competition_balance=0.1,
                                      competition_balance_steps=where))
    k = tiny_model_config.n_experts
    with torch.no_grad():
        plain = model.infer(images, stochastic=False).decomposition
        early = plain.winner[:, :-1]
        expert = next(e for e in range(k) if not (early == e).all())
        bonus = torch.zeros(k).index_fill(0, torch.tensor([expert]), -1e6)
        favoured = model.infer(images, stochastic=False, handicap=bonus).decomposition
        frequent = int(early.flatten().mode().values)
        penalty = torch.zeros(k).index_fill(0, torch.tensor([frequent]), 1e6)
        barred = model.infer(images, stochastic=False, handicap=penalty).decomposition
    assert (favoured.winner[:, -1] == expert).all()
    assert torch.equal(favoured.winner[:, :-1], early)
    assert not (barred.winner[:, -1] == frequent).any()
    if where == "last":
        assert torch.equal(barred.winner[:, :-1], early)
    else:
        assert not (barred.winner[:, :-1] == frequent).any()


def test_the_band_price_enters_the_competition(tiny_model_config: ModelConfig,
                                               images: Tensor) -> None:
    """competition_max_region reaches the scores: with M below every region's area, each
    proposal pays c per pixel above M·D; the last step (given region) is priced the same."""
    hinge = dataclasses.replace(tiny_model_config, competition_min_region=0.001,
                                competition_scope_cost=10.0)
    band = dataclasses.replace(hinge, competition_max_region=0.002)
    scores = [build(c).infer(images, stochastic=False).decomposition.step_scores
              for c in (hinge, band)]
    assert scores[0].shape[-1] == tiny_model_config.n_experts  # (B, T, K)
    extra = scores[1] - scores[0]
    assert (extra[:, :-1] > 0).all()
    assert extra.max() <= 10.0 * (1 - 0.002) + 1e-4
    torch.testing.assert_close(extra[:, -1], extra[:, -1, :1].expand_as(extra[:, -1]))


def test_fast_path_equals_reference_in_float32(model: ECON, images: Tensor) -> None:
    loss_fast, winner_fast, grad_fast, _ = run_path(model, images, False, seed=5)
    loss_ref, winner_ref, grad_ref, _ = run_path(model, images, True, seed=5)
    assert torch.equal(winner_fast, winner_ref)
    torch.testing.assert_close(loss_fast, loss_ref, rtol=1e-5, atol=0)
    relative = (grad_fast - grad_ref).norm() / grad_ref.norm()
    assert relative < 1e-4


@pytest.mark.parametrize(
    "name",
    ["experts.attention.head.weight", "experts.encoder.fc2.weight", "experts.decoder.head.weight"],
)
def test_gradient_matches_finite_differences(model: ECON, images: Tensor, name: str) -> None:
    """With the winners fixed, the loss is smooth in the parameters: the fast path's gradient is
    its derivative, the attention's included (it reaches later steps through the scope (14))."""
    model.double()
    x = images.double()
    out = model.infer(x, stochastic=False)
    out.loss.backward()
    parameter = dict(model.named_parameters())[name]
    assert parameter.grad is not None
    direction = torch.randn(parameter.shape, generator=torch.Generator().manual_seed(0),
                            dtype=parameter.dtype)
    analytic = (parameter.grad * direction).sum().item()
    eps = 1e-3
    losses = []
    with torch.no_grad():
        for sign in (1.0, -1.0):
            parameter.add_(sign * eps * direction)
            shifted = model.infer(x, stochastic=False)
            parameter.sub_(sign * eps * direction)
            assert torch.equal(shifted.decomposition.winner, out.decomposition.winner)
            losses.append(shifted.loss.item())
    numeric = (losses[0] - losses[1]) / (2 * eps)
    assert abs(analytic) > 0.1
    assert numeric == pytest.approx(analytic, rel=1e-2)


def test_decomposition_without_grad_equals_with_grad(model: ECON, images: Tensor) -> None:
    """Under no_grad the fast path keeps the competition's proposals instead of recomputing the
    winners: the same numbers."""
    model.eval()
    with_grad = model.infer(images, stochastic=False).decomposition
    with torch.no_grad():
        without = model.infer(images, stochastic=False).decomposition
    assert torch.equal(with_grad.winner, without.winner)
    torch.testing.assert_close(with_grad.region, without.region, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(with_grad.reconstruction, without.reconstruction, atol=1e-5,
                               rtol=1e-5)


# --- ground-truth regions (--gt-masks, K = 1) ----------------------------------------------------


def test_gt_regions_are_reproduced(tiny_model_config: ModelConfig, tiny_scenes: Scenes) -> None:
    config = dataclasses.replace(tiny_model_config, n_experts=1)
    model = build(config)
    scenes = tiny_scenes.subset(slice(0, BATCH))
    assert scenes.n_layers == config.n_steps
    gt = torch.from_numpy(scenes.visible()[:, ::-1].astype(np.float32).copy())  # front first
    x = images_of(scenes)
    for stochastic in (False, True):
        out = model.infer(x, stochastic=stochastic, gt_regions=gt)
        torch.testing.assert_close(out.decomposition.region, gt, atol=1e-6, rtol=0)
        assert (out.decomposition.winner == 0).all()
        assert torch.isfinite(out.loss)
    # Soft regions (a partition of unity) are reproduced as well.
    soft = torch.softmax(torch.randn(BATCH, config.n_steps, 16, 16), dim=1)
    d = model.infer(x, stochastic=False, gt_regions=soft).decomposition
    torch.testing.assert_close(d.region, soft, atol=1e-5, rtol=0)
    # The attention is not used: its parameters get no gradient.
    out = model.infer(x, stochastic=True, gt_regions=gt)
    out.loss.backward()
    for name, parameter in model.named_parameters():
        if ".attention." in name:
            assert parameter.grad is None or not parameter.grad.any(), name
    assert model.experts.encoder.convs[0].weight.grad is not None
    assert model.experts.encoder.convs[0].weight.grad.any()


def test_gt_regions_of_the_wrong_shape_are_rejected(tiny_model_config: ModelConfig,
                                                    images: Tensor) -> None:
    model = build(dataclasses.replace(tiny_model_config, n_experts=1))
    with pytest.raises(EconError, match="gt_regions"):
        model.infer(images, stochastic=False, gt_regions=torch.ones(BATCH, 2, 16, 16))


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_steps": 0}, "n_steps"),
        ({"n_experts": 0}, "n_experts"),
        ({"image_size": 20}, "divisible"),
        ({"image_size": 16, "unet_channels": (4, 8, 8, 8, 8)}, "divisible"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"latent_dim": 2, "shape_latent_dim": 3}, "shape_latent_dim"),
        ({"shape_latent_dim": -1}, "shape_latent_dim"),
        ({"shape_decoder": "blob"}, "shape_decoder"),
        ({"latent_dim": 4, "shape_latent_dim": 2, "shape_decoder": "template"}, "pose"),
        ({"sigma_x": 0.0}, "sigma_x"),
        ({"beta": -1.0}, "beta"),
        ({"competition_min_region": 0.3, "competition_max_region": 0.2}, "max_region"),
        ({"competition_max_region": 0.5}, "needs the hinge"),
        ({"competition_min_region": 0.1, "competition_max_region": 1.5}, "max_region"),
        ({"competition_min_region": 0.1, "competition_max_region": 0.1}, "max_region"),
    ],
)
def test_bad_model_config_raises(
    tiny_model_config: ModelConfig, changes: dict[str, object], message: str
) -> None:
    config = dataclasses.replace(tiny_model_config, **changes)  # type: ignore[arg-type]
    with pytest.raises(EconError, match=message):
        ECON(config)


def test_gt_masks_with_several_experts_raises(tiny_model_config: ModelConfig) -> None:
    config = RunConfig(model=tiny_model_config, train=TrainConfig(gt_masks=True))
    with pytest.raises(EconError, match="n_experts == 1"):
        config.validate()
    RunConfig(model=dataclasses.replace(tiny_model_config, n_experts=1),
              train=TrainConfig(gt_masks=True)).validate()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.rand(2, 4, 16, 16), r"\(B, 3, H, W\)"),
        (torch.rand(3, 16, 16), r"\(B, 3, H, W\)"),
        (torch.rand(2, 3, 32, 32), "16×16"),
        (torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8), "float"),
        (torch.full((2, 3, 16, 16), float("nan")), "NaN"),
        (torch.tensor([float("inf")]).expand(2, 3, 16, 16), "infinite"),
    ],
)
def test_bad_images_raise(model: ECON, bad: Tensor, message: str) -> None:
    with pytest.raises(EconError, match=message):
        model.infer(bad, stochastic=False)
    with pytest.raises(EconError, match=message):
        model(bad)
