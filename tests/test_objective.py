"""The terms of objective (13) and the competition of section 5.2, checked by hand.

Every expected value is computed with plain Python floats (``math``) from the formulas of the
paper, on inputs of one image and a few pixels, so a wrong sign, factor or mask shows up.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from econ_scenes.model.competition import (
    choose_winner,
    competition_score,
    gumbel_noise,
    usage_handicap,
)
from econ_scenes.model.experts import Proposal
from econ_scenes.model.objective import (
    StepLosses,
    latent_kl,
    log1mexp,
    reconstruction_loss,
    region_kl,
    step_losses,
)

F64 = torch.float64


def t64(values: object) -> Tensor:
    return torch.tensor(values, dtype=F64)


def sigmoid(a: float) -> float:
    return 1.0 / (1.0 + math.exp(-a))


def bernoulli_kl(q: float, p: float) -> float:
    """KL(Bernoulli(q) ‖ Bernoulli(p)) with 0·log 0 = 0."""
    total = 0.0
    if q > 0:
        total += q * math.log(q / p)
    if q < 1:
        total += (1 - q) * math.log((1 - q) / (1 - p))
    return total


def log_or_minus_inf(value: float) -> float:
    return math.log(value) if value > 0 else -math.inf


# --- (10) reconstruction ---------------------------------------------------------------------

IMAGE = [  # (3, 2, 2): x
    [[0.1, 0.9], [0.4, 0.0]],
    [[0.5, 0.2], [1.0, 0.3]],
    [[0.7, 0.6], [0.2, 0.8]],
]
MEAN = [  # (3, 2, 2): μ
    [[0.3, 0.9], [0.0, 0.5]],
    [[0.5, 0.1], [0.6, 0.3]],
    [[0.2, 0.6], [0.9, 0.1]],
]
REGION = [[0.25, 1.0], [0.0, 0.6]]  # (2, 2): r̃


def test_reconstruction_loss_is_region_weighted_squared_error() -> None:
    sigma = 0.1
    expected = 0.0
    for i in range(2):
        for j in range(2):
            error = sum((IMAGE[c][i][j] - MEAN[c][i][j]) ** 2 for c in range(3))
            expected += REGION[i][j] / (2 * sigma**2) * error
    log_region = torch.log(t64(REGION)).reshape(1, 1, 2, 2)
    got = reconstruction_loss(
        t64(IMAGE).reshape(1, 1, 3, 2, 2), log_region, t64(MEAN).reshape(1, 1, 3, 2, 2), sigma
    )
    assert got.shape == (1, 1)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # σ enters as 1/σ²: doubling σ quarters the loss.
    quartered = reconstruction_loss(
        t64(IMAGE).reshape(1, 1, 3, 2, 2), log_region, t64(MEAN).reshape(1, 1, 3, 2, 2), 2 * sigma
    )
    assert quartered.item() == pytest.approx(expected / 4, rel=1e-12)


def test_reconstruction_loss_ignores_pixels_outside_the_region() -> None:
    image = torch.zeros(1, 1, 3, 2, 2, dtype=F64)
    mean = torch.zeros(1, 1, 3, 2, 2, dtype=F64)
    mean[..., 1, 0] = 1.0  # a wrong colour where r̃ = 0
    log_region = torch.log(t64(REGION)).reshape(1, 1, 2, 2)
    assert reconstruction_loss(image, log_region, mean, 0.1).item() == 0.0
    mean[..., 0, 0] = 1.0  # and one where r̃ = 0.25: 0.25 · 3 / (2 · 0.01)
    got = reconstruction_loss(image, log_region, mean, 0.1).item()
    assert got == pytest.approx(0.25 * 3 / 0.02, rel=1e-12)


# --- (11) latent KL ----------------------------------------------------------------------------


def test_latent_kl_matches_the_gaussian_formula() -> None:
    mean = [0.5, -1.0, 0.0]
    log_var = [0.2, -0.3, 0.0]
    expected = 0.5 * sum(m**2 + math.exp(v) - 1 - v for m, v in zip(mean, log_var, strict=True))
    got = latent_kl(t64(mean).reshape(1, 1, 3), t64(log_var).reshape(1, 1, 3))
    assert got.shape == (1, 1)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # The prior itself costs nothing.
    assert latent_kl(torch.zeros(1, 1, 3), torch.zeros(1, 1, 3)).item() == 0.0


# --- (12) region KL ------------------------------------------------------------------------------

# Four pixels (s, r̃, shape logit a with m̃ = σ(a)), p(r | s, z) = Bernoulli(s·m̃):
PIXELS = [
    (1.0, 0.7, 1.0),  # in scope, a region and a shape that disagree a little
    (0.5, 0.2, -1.0),  # half in scope
    (0.0, 0.0, 3.0),  # outside the scope: the shape covers it (m̃ ≈ 0.95) at no cost
    (1.0, 0.0, 3.0),  # in scope, not attended, but the shape covers it: costs -log(1 - m̃)
]


def pixel_kls() -> list[float]:
    return [bernoulli_kl(r, s * sigmoid(a)) for s, r, a in PIXELS]


def region_inputs(layout: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
    log_scope = t64([log_or_minus_inf(s) for s, _, _ in PIXELS]).reshape(layout)
    log_region = t64([log_or_minus_inf(r) for _, r, _ in PIXELS]).reshape(layout)
    logit = t64([a for _, _, a in PIXELS]).reshape(layout)
    return log_region, log_scope, logit


def test_region_kl_per_pixel_matches_hand_computation() -> None:
    expected = pixel_kls()
    assert expected[2] == 0.0 and expected[3] == pytest.approx(math.log1p(math.exp(3.0)))
    # Pixels as four groups of 1×1 images: one KL per pixel.
    got = region_kl(*region_inputs((1, 4, 1, 1)))
    assert got.shape == (1, 4)
    for value, want in zip(got[0].tolist(), expected, strict=True):
        assert value == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_region_kl_sums_over_pixels_of_one_image() -> None:
    got = region_kl(*region_inputs((1, 1, 2, 2)))
    assert got.shape == (1, 1)
    assert got.item() == pytest.approx(sum(pixel_kls()), rel=1e-9)


def test_region_kl_frees_the_shape_outside_the_scope() -> None:
    """Inpainting (section 5.1): outside s the shape may be anything; inside s it must match r̃."""
    log_region = torch.full((1, 2, 1, 1), -math.inf, dtype=F64)
    outside = torch.full((1, 2, 1, 1), -math.inf, dtype=F64)
    inside = torch.zeros(1, 2, 1, 1, dtype=F64)
    logit = t64([-4.0, 4.0]).reshape(1, 2, 1, 1)  # m̃ ≈ 0.02 and m̃ ≈ 0.98
    free = region_kl(log_region, outside, logit)
    assert free.abs().max().item() < 1e-12
    costly = region_kl(log_region, inside, logit)
    assert costly[0, 0].item() == pytest.approx(math.log1p(math.exp(-4.0)), rel=1e-9)
    assert costly[0, 1].item() == pytest.approx(math.log1p(math.exp(4.0)), rel=1e-9)
    # MONet's KL(r̃ ‖ m̃) would charge the second pixel; with the scope it is free.
    assert costly[0, 1].item() > 4.0


def test_region_kl_is_finite_in_float32_at_the_extremes() -> None:
    log_region = torch.tensor([[[[0.0, -1e-9, -80.0, -math.inf]]]])
    log_scope = torch.tensor([[[[0.0, 0.0, -80.0, -math.inf]]]])
    logit = torch.tensor([[[[30.0, -30.0, 30.0, -30.0]]]], requires_grad=True)
    kl = region_kl(log_region, log_scope, logit)
    kl.sum().backward()
    assert torch.isfinite(kl).all()
    assert logit.grad is not None and torch.isfinite(logit.grad).all()


# --- log1mexp ----------------------------------------------------------------------------------


@pytest.mark.parametrize("x", [-1e-5, -1e-3, -0.1, -0.5, -0.6931, -0.7, -1.0, -5.0, -30.0, -50.0])
def test_log1mexp_matches_math(x: float) -> None:
    # The accurate formula on each side of -log 2 (Mächler, 2012).
    want = math.log(-math.expm1(x)) if x > -math.log(2) else math.log1p(-math.exp(x))
    value = torch.tensor(x, dtype=F64, requires_grad=True)
    got = log1mexp(value)
    assert got.item() == pytest.approx(want, rel=1e-12, abs=1e-300)
    got.backward()
    # d/dx log(1 − eˣ) = −eˣ / (1 − eˣ)
    assert value.grad is not None
    assert value.grad.item() == pytest.approx(-math.exp(x) / -math.expm1(x), rel=1e-9)


def test_log1mexp_is_finite_at_zero_in_float32() -> None:
    x = torch.tensor([0.0, -1e-12, -1e-6, -88.0, -200.0], requires_grad=True)
    y = log1mexp(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and x.grad is not None and torch.isfinite(x.grad).all()
    # Capped just below zero: log(1 − e^(−1e-6)) ≈ log(1e-6).
    assert y[0].item() == pytest.approx(math.log(1e-6), rel=1e-3)
    assert y[-1].item() == pytest.approx(0.0, abs=1e-30)


# --- step_losses and the total of (13) -------------------------------------------------------


def make_proposal(log_scope: Tensor, log_region: Tensor, appearance: Tensor | None = None,
                  shape_logit: Tensor | None = None, mean: Tensor | None = None,
                  log_var: Tensor | None = None) -> Proposal:
    n, g, h, w = log_region.shape
    mean = torch.zeros(n, g, 2, dtype=log_region.dtype) if mean is None else mean
    return Proposal(
        log_scope=log_scope,
        log_region=log_region,
        attention=None,
        latent_mean=mean,
        latent_log_var=torch.zeros_like(mean) if log_var is None else log_var,
        latent=mean,
        appearance=(torch.zeros(n, g, 3, h, w, dtype=log_region.dtype) if appearance is None
                    else appearance),
        shape_logit=torch.zeros_like(log_region) if shape_logit is None else shape_logit,
    )


def test_step_losses_combine_the_three_terms() -> None:
    log_region, log_scope, logit = region_inputs((1, 1, 2, 2))
    mean, log_var = t64([[[0.5, -1.0]]]), t64([[[0.2, -0.3]]])
    proposal = make_proposal(log_scope, log_region, t64(MEAN).reshape(1, 1, 3, 2, 2), logit,
                             mean, log_var)
    image = t64(IMAGE).reshape(1, 3, 2, 2)
    losses = step_losses(image, proposal, sigma_x=0.1)
    rec = reconstruction_loss(image.unsqueeze(1), log_region, proposal.appearance, 0.1)
    assert losses.reconstruction.item() == pytest.approx(rec.item(), rel=1e-6)
    assert losses.latent_kl.item() == pytest.approx(latent_kl(mean, log_var).item(), rel=1e-12)
    assert losses.region_kl.item() == pytest.approx(sum(pixel_kls()), rel=1e-9)
    beta, gamma = 2.5, 0.5
    total = losses.total(beta, gamma).item()
    want = losses.reconstruction.item() + beta * losses.latent_kl.item()
    want += gamma * losses.region_kl.item()
    assert total == pytest.approx(want, rel=1e-12)


# --- competition (section 5.2) -----------------------------------------------------------------


def test_competition_score_by_hand() -> None:
    scope = [[1.0, 1.0], [0.5, 0.0]]
    regions = [  # two experts
        [[0.9, 0.2], [0.5, 0.0]],
        [[0.0, 0.0], [0.1, 0.0]],
    ]
    rec, lat, reg = [12.0, 2.0], [100.0, 0.0], [3.0, 1.5]
    lam, cost = 0.5, 3.0
    expected = []
    for k in range(2):
        unexplained = sum(scope[i][j] - regions[k][i][j] for i in range(2) for j in range(2))
        expected.append((lam * rec[k] + reg[k] + cost * unexplained) / 4)
    log_scope = torch.log(t64(scope)).reshape(1, 1, 2, 2).expand(1, 2, 2, 2)
    log_region = torch.log(t64(regions)).reshape(1, 2, 2, 2)
    losses = StepLosses(t64([rec]), t64([lat]), t64([reg]))
    got = competition_score(losses, make_proposal(log_scope, log_region), lam, cost)
    assert got.shape == (1, 2)
    assert got[0].tolist() == pytest.approx(expected, rel=1e-12)
    # The latent KL does not enter the competition.
    cheap = StepLosses(t64([rec]), t64([[0.0, 0.0]]), t64([reg]))
    assert torch.equal(got, competition_score(cheap, make_proposal(log_scope, log_region), lam,
                                              cost))


def test_hinge_price_charges_only_regions_below_the_minimum() -> None:
    """With min_region m, a region is charged c per pixel it falls short of m·D and no more:
    a large region earns nothing over one of exactly m·D, an empty one pays c·m·D."""
    size = 10
    scope = torch.ones(1, 3, size, size, dtype=torch.float64)
    areas = [0, 20, 60]  # pixels attended by three experts, m·D = 20
    region = torch.full((1, 3, size, size), 1e-12, dtype=torch.float64)
    for k, area in enumerate(areas):
        region[0, k].view(-1)[:area] = 1.0
    zero = StepLosses(*(torch.zeros(1, 3, dtype=torch.float64) for _ in range(3)))
    proposal = make_proposal(scope.log(), region.log())
    hinge = competition_score(zero, proposal, lam=1.0, scope_cost=3.0, min_region=0.2)
    assert hinge[0].tolist() == pytest.approx([3.0 * 20 / 100, 0.0, 0.0], abs=1e-9)
    linear = competition_score(zero, proposal, lam=1.0, scope_cost=3.0)
    assert linear[0].tolist() == pytest.approx([3.0 * (100 - a) / 100 for a in areas], abs=1e-9)
    # The upper side of the hinge, M·D = 40: only the 60-pixel region pays, for 20 pixels.
    both = competition_score(zero, proposal, lam=1.0, scope_cost=3.0, min_region=0.2,
                             max_region=0.4)
    assert both[0].tolist() == pytest.approx([3.0 * 20 / 100, 0.0, 3.0 * 20 / 100], abs=1e-9)


def test_usage_handicap_charges_frequent_winners_and_pays_rare_ones() -> None:
    handicap = torch.zeros(4, dtype=torch.float64)
    wins = torch.tensor([10, 5, 5, 0])  # shares 0.5, 0.25, 0.25, 0 against 1/K = 0.25
    updated = usage_handicap(handicap, wins, rate=0.2)
    assert updated.tolist() == pytest.approx([0.2 * 0.25, 0.0, 0.0, -0.2 * 0.25], abs=1e-15)
    assert updated.sum().item() == pytest.approx(0.0, abs=1e-15)
    # Balanced usage leaves it where it is; it integrates over iterations.
    assert torch.equal(usage_handicap(updated, torch.tensor([3, 3, 3, 3]), rate=0.2), updated)
    assert usage_handicap(updated, wins, rate=0.2)[0].item() == pytest.approx(0.1)


def test_choose_winner_without_noise_is_argmin() -> None:
    generator = torch.Generator().manual_seed(3)
    score = torch.randn(64, 5, generator=generator)
    winner = choose_winner(score, temperature=0.3, gumbel=None)
    assert winner.dtype == torch.int64 and winner.shape == (64,)
    assert torch.equal(winner, score.argmin(dim=-1))
    # The temperature does not change a deterministic winner.
    assert torch.equal(winner, choose_winner(score, temperature=7.0, gumbel=None))


def test_gumbel_noise_is_standard_gumbel() -> None:
    torch.manual_seed(0)
    noise = gumbel_noise((200_000,), torch.device("cpu"))
    assert torch.isfinite(noise).all()
    assert noise.mean().item() == pytest.approx(0.5772157, abs=0.01)  # Euler–Mascheroni
    assert noise.var().item() == pytest.approx(math.pi**2 / 6, abs=0.03)


def test_stochastic_winners_follow_softmax_of_negative_score_over_temperature() -> None:
    score = [0.0, 0.2, 0.5]
    temperature = 0.3
    weights = [math.exp(-s / temperature) for s in score]
    probs = [w / sum(weights) for w in weights]
    draws = 40_000
    torch.manual_seed(1)
    winners = choose_winner(
        t64([score]).expand(draws, 3), temperature, gumbel_noise((draws, 3), torch.device("cpu"))
    )
    freq = torch.bincount(winners, minlength=3).double() / draws
    for k in range(3):
        tolerance = 5 * math.sqrt(probs[k] * (1 - probs[k]) / draws)
        assert freq[k].item() == pytest.approx(probs[k], abs=tolerance)
    # The test has power: ignoring the temperature (τ = 1) would give clearly other frequencies.
    untempered = [math.exp(-s) / sum(math.exp(-u) for u in score) for s in score]
    assert abs(untempered[0] - probs[0]) > 20 * math.sqrt(probs[0] * (1 - probs[0]) / draws)
