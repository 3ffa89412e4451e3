"""The competition of section 5.2: P(winner = k) ∝ exp(-score_k / τ).

The paper's score λ·L_x + L_r is a sum over thousands of pixels, so raw it makes the softmax a
hard argmax. We use per-pixel means (divide by the number of pixels D) and a temperature τ.
A second problem: an expert that attends to nothing has L_x ≈ L_r ≈ 0 and wins every step.
We price the scope it leaves unexplained, c per pixel of s·(1 − r̃): an expert must explain a
pixel at a per-pixel cost below c to want it. The price is the same for every expert when the
region is given (the last step), so it changes nothing there.

That linear price also rewards the largest region: the background (most pixels) wins the first
step although it has holes where objects are. With ``min_region`` m > 0 the price becomes a
hinge, c per pixel that the region falls short of m·D: empty proposals still lose, but beyond
m·D more pixels earn nothing, and the shape term L_r (holes cost) decides who comes first.
``max_region`` M < 1 adds the other side of the hinge, c per pixel beyond M·D: a prior that
an object in front covers at most a fraction M of the image, so a background-sized region
loses to an object-sized one at the steps before the last (the last step's region is given,
the same for every expert, so the price does not change its winner).

Winner-take-all training has stable partitions that are not one expert per class: two experts
can share the background (each trained only on the colours it already wins), so neither
becomes better at all of it. ``usage_handicap`` is a conscience in the sense of competitive
learning (DeSieno, 1988): during training an expert that wins more than its share 1/K of the
steps pays a growing handicap on its score, one that wins less gets a bonus, until the usage
is balanced. When every expert owns one of K equally frequent classes the handicaps stop
moving; evaluation uses the scores alone. A handicap at every step lets an expert reach its
share by stealing objects at the first steps instead of winning backgrounds at the last;
``competition_balance_steps`` says where it acts: every step, only the last (where every
expert is given the same region), or penalties everywhere and bonuses only at the last.
"""

from __future__ import annotations

import torch
from torch import Tensor

from econ_scenes.model.experts import Proposal
from econ_scenes.model.objective import StepLosses


def competition_score(losses: StepLosses, proposal: Proposal, lam: float,
                      scope_cost: float, min_region: float = 0.0,
                      max_region: float = 1.0) -> Tensor:
    """Per-pixel score (lower is better) → (N, G): (λ·L_x + L_r + c·Σ s(1 − r̃)) / D, or with
    ``min_region`` m > 0, (λ·L_x + L_r + c·max(0, m·D − Σ r̃) + c·max(0, Σ r̃ − M·D)) / D."""
    pixels = proposal.log_region.shape[-1] * proposal.log_region.shape[-2]
    explained = proposal.log_region.exp().sum(dim=(-2, -1))
    if min_region > 0:
        priced = ((min_region * pixels - explained).clamp_min(0.0)
                  + (explained - max_region * pixels).clamp_min(0.0))
    else:
        priced = proposal.log_scope.exp().sum(dim=(-2, -1)) - explained  # unexplained scope
    score = lam * losses.reconstruction + losses.region_kl + scope_cost * priced
    return score / pixels


def gumbel_noise(shape: tuple[int, ...], device: torch.device) -> Tensor:
    """Standard Gumbel noise: argmax(logits + G) samples from softmax(logits)."""
    uniform = torch.rand(shape, device=device).clamp(1e-10, 1.0 - 1e-7)
    return -torch.log(-torch.log(uniform))


def choose_winner(score: Tensor, temperature: float, gumbel: Tensor | None) -> Tensor:
    """Winner per image (N,): sampled from softmax(-score/τ) with Gumbel noise, else argmin."""
    logits = -score / temperature
    if gumbel is not None:
        logits = logits + gumbel
    return logits.argmax(dim=-1)


def usage_handicap(handicap: Tensor, wins: Tensor, rate: float) -> Tensor:
    """One update of the training-time handicap (K,): handicap + rate·(share of wins − 1/K).

    wins: (K,) number of steps each expert won in this iteration's batch (all processes).
    """
    share = wins.to(handicap.dtype) / wins.sum().clamp_min(1)
    return handicap + rate * (share - 1.0 / handicap.numel())
