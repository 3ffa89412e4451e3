"""ECON inference (section 5): T steps front to back, K experts competing at every step.

At step t every expert proposes a region within the scope s_t, encodes it and reconstructs it;
the competition picks the winner k̂_t; only the winner's terms of (13) enter the loss; the scope
shrinks by the winner's region (14); the last step gives every expert the remaining scope.

Two paths give the same losses, winners and gradients:

* fast (default): the competition runs all K experts without grad, then the winners alone are
  recomputed with gradient, each image with its own expert's parameters. No graph is built for
  the losers.
* reference: every expert's graph is kept and the winners' terms gathered afterwards. It exists
  for tests and benchmarks.

With ``competition_on_means`` the experts compete with their posterior means and, in both
paths, the winners are recomputed with their sampled latents (the reference path then builds
and discards the graph of the mean proposals).

Both the competition and the winners' recomputation run the experts in one of two layouts: one
grouped computation (stacked parameters, grouped convolutions; the winners as B groups, one
per image), or a loop over experts with dense convolutions (the winners as one sub-batch per
expert). Both give the same proposals. By default (``ECON.grouped = None``) the layout is the one
measured faster (docs/performance.md): grouped on GPUs and for CPU images up to
``GROUPED_MAX_PIXELS`` pixels (32×32: an H200, bf16 on an AMX CPU, fp32 on an AVX-512 CPU), the
loop for larger CPU images (64×64 on an AMX CPU, where grouped bf16 maps of 2²⁴ elements and
grouped convolutions of 32 images run well below their small-map speed).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from econ_scenes.config import ModelConfig
from econ_scenes.errors import EconError
from econ_scenes.model.competition import choose_winner, competition_score, gumbel_noise
from econ_scenes.model.experts import Experts, Proposal
from econ_scenes.model.layers import StackedConv2d, StackedInstanceNorm
from econ_scenes.model.objective import LOG_FLOOR, StepLosses, step_losses
from econ_scenes.model.refine import decode_rows, descend
from econ_scenes.types import Decomposition


@dataclass(frozen=True)
class Inference:
    """Result of :meth:`ECON.infer`.

    loss: scalar, objective (13) of the winners summed over steps, mean over images (a
    minimisation target: the negative ELBO); terms: batch means of each term for logging.
    """

    decomposition: Decomposition
    loss: Tensor
    terms: dict[str, Tensor]


class ECON(nn.Module):
    """Ensemble of Competing Object Networks."""

    grouped: bool | None = None
    """Layout of the experts' computations: True for one grouped computation, False for a loop
    over experts, None (the default) for the faster one by device and image size
    (:meth:`grouped_by_default`). Set on an instance to choose."""

    GROUPED_MAX_PIXELS = 1024
    """Largest CPU image (pixels) that the default layout computes grouped."""

    @classmethod
    def grouped_by_default(cls, device: torch.device, height: int, width: int) -> bool:
        """The default layout for images of this size on this device: grouped on GPUs and for
        CPU images up to :attr:`GROUPED_MAX_PIXELS` pixels, else the loop over experts."""
        return device.type != "cpu" or height * width <= cls.GROUPED_MAX_PIXELS

    def layout_is_grouped(self, images: Tensor) -> bool:
        """Whether these images (N, C, H, W) go through the experts as one grouped computation."""
        if self.grouped is not None:
            return self.grouped
        return self.grouped_by_default(images.device, images.shape[-2], images.shape[-1])

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.experts = Experts(config)

    def use_memory_format(self, memory_format: torch.memory_format) -> None:
        """Lay the experts' activations out channels-last (the default) or as plain NCHW
        (``torch.contiguous_format``: the baseline of ``benchmarks/train_speed.py``)."""
        if memory_format not in (torch.channels_last, torch.contiguous_format):
            raise EconError(f"memory format must be channels_last or contiguous_format, "
                            f"got {memory_format}")
        for module in self.modules():
            if isinstance(module, (StackedConv2d, StackedInstanceNorm)):
                module.memory_format = memory_format

    def freeze_experts(self, experts: tuple[int, ...]) -> None:
        """Zero the gradients of the given experts' slices of every stacked parameter, so that
        only the other experts learn (e.g. a new expert added to a trained ensemble)."""
        if not experts:
            return
        keep = torch.ones(self.config.n_experts)
        keep[list(experts)] = 0.0
        for parameter in self.parameters():
            scale = keep.to(parameter.device).reshape(-1, *([1] * (parameter.ndim - 1)))
            parameter.register_hook(lambda grad, scale=scale: grad * scale)

    def check_images(self, images: Tensor) -> None:
        size = self.config.image_size
        if images.ndim != 4 or images.shape[1] != 3:
            raise EconError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[-2:] != (size, size):
            raise EconError(
                f"this model was built for {size}×{size} images, got "
                f"{images.shape[-2]}×{images.shape[-1]}"
            )
        if not images.is_floating_point():
            raise EconError(f"images must be float in [0, 1], got {images.dtype}")
        if not torch.isfinite(images).all():
            raise EconError("images contain NaN or infinite values")

    def infer(
        self,
        images: Tensor,
        *,
        stochastic: bool,
        gt_regions: Tensor | None = None,
        reference: bool = False,
        n_steps: int | None = None,
        temperature: float | None = None,
        scope_cost: float | None = None,
        handicap: Tensor | None = None,
        shard: tuple[int, int] = (0, 1),
        search: bool = True,
    ) -> Inference:
        """Decompose images (B, 3, H, W) in [0, 1] front to back.

        stochastic: sample latents and winners (training); otherwise posterior means and the
        best-scoring expert. gt_regions: (B, T, H, W) visible regions front first, used instead
        of attention (the single-expert MONet extension trained on ground truth).
        n_steps: number of inference steps T (default: the configured T; more steps decompose
        scenes with more objects than seen in training). temperature: competition τ (default:
        the configured one; training passes the annealed value). scope_cost: the competition's
        price c per unexplained pixel (default: the configured one; training passes the
        scheduled value). handicap: (K,) added to every image's scores before the winner is
        chosen (training's usage balance, see :func:`usage_handicap`; at the steps that
        ``competition_balance_steps`` names); the recorded step_scores are the scores without
        it.
        shard: (index, count) when these images are rows [index·B, (index+1)·B) of a batch of
        count·B split over processes: the random draws are made for the whole batch and sliced,
        so data-parallel training samples exactly what one process would on the whole batch.
        search: widen the competition as configured (``competition_cross``,
        ``competition_refine_steps``); acts only on deterministic inference without gradients
        (decompositions; training's validation loss passes False, to score training's
        competition).
        """
        self.check_images(images)
        cfg = self.config
        steps = cfg.n_steps if n_steps is None else n_steps
        if steps < 1:
            raise EconError(f"n_steps must be >= 1, got {steps}")
        if not 0 <= shard[0] < shard[1]:
            raise EconError(f"shard index must be in [0, count), got {shard}")
        batch, _, height, width = images.shape
        if gt_regions is not None and gt_regions.shape != (batch, steps, height, width):
            raise EconError(
                f"gt_regions must be (B, T={steps}, H, W), got {tuple(gt_regions.shape)}"
            )
        log_scope = images.new_zeros(batch, 1, height, width)
        loss = images.new_zeros(())
        totals = {"reconstruction": 0.0, "latent_kl": 0.0, "region_kl": 0.0}
        record: dict[str, list[Tensor]] = {k: [] for k in (
            "winner", "region", "scope", "appearance", "shape", "latent", "score")}
        for t in range(steps):
            given = None
            if t == steps - 1:
                given = log_scope
            elif gt_regions is not None:
                given = gt_regions[:, t : t + 1].clamp_min(0).log().clamp_min(LOG_FLOOR)
            chosen, terms, winner, score = self._step(
                images, log_scope, given, stochastic, reference,
                cfg.competition_temperature if temperature is None else temperature,
                cfg.competition_scope_cost if scope_cost is None else scope_cost,
                self._step_handicap(handicap, last=t == steps - 1), shard, search)
            step_total = terms.total(cfg.beta, cfg.gamma).mean()
            loss = loss + step_total
            for name in totals:
                totals[name] = totals[name] + getattr(terms, name).mean()
            record["winner"].append(winner)
            record["region"].append(chosen.log_region[:, 0].exp())
            record["scope"].append(log_scope[:, 0].exp())
            record["appearance"].append(chosen.appearance[:, 0])
            record["shape"].append(torch.sigmoid(chosen.shape_logit[:, 0]))
            record["latent"].append(chosen.latent[:, 0])
            record["score"].append(score)
            log_scope = self._next_scope(log_scope, chosen, given)
        stacked = {k: torch.stack(v, dim=1) for k, v in record.items()}
        reconstruction = (stacked["region"].unsqueeze(2) * stacked["appearance"]).sum(dim=1)
        decomposition = Decomposition(
            winner=stacked["winner"], region=stacked["region"], scope=stacked["scope"],
            appearance=stacked["appearance"], shape=stacked["shape"], latent=stacked["latent"],
            step_scores=stacked["score"], reconstruction=reconstruction,
        )
        terms_out = {k: torch.as_tensor(v).detach() for k, v in totals.items()}
        return Inference(decomposition, loss, terms_out)

    def _step_handicap(self, handicap: Tensor | None, last: bool) -> Tensor | None:
        """The part of the usage balance's handicap (K,) that acts at this step."""
        where = self.config.competition_balance_steps
        if handicap is None or last or where == "all":
            return handicap
        return None if where == "last" else handicap.clamp_min(0.0)  # bonus-last: penalties

    def _step(
        self, images: Tensor, log_scope: Tensor, given: Tensor | None, stochastic: bool,
        reference: bool, temperature: float, scope_cost: float, handicap: Tensor | None,
        shard: tuple[int, int], search: bool,
    ) -> tuple[Proposal, StepLosses, Tensor, Tensor]:
        """One inference step → winner's proposal (B, 1, ...), its losses (B, 1), winner (B,),
        competition scores (B, K)."""
        cfg = self.config
        batch = images.shape[0]
        device = images.device
        noise, gumbel = None, None
        if stochastic:
            rows = slice(shard[0] * batch, (shard[0] + 1) * batch)
            noise = torch.randn(batch * shard[1], cfg.n_experts, cfg.latent_dim, device=device)[rows]
            gumbel = gumbel_noise((batch * shard[1], cfg.n_experts), device)[rows]
        track = torch.is_grad_enabled()
        # With competition_on_means the experts compete with their posterior means; the winner's
        # proposal is then recomputed with its sampled latent below, in every mode.
        on_means = noise is not None and cfg.competition_on_means
        score_noise = None if on_means else noise
        with contextlib.nullcontext() if reference or not track else torch.no_grad():
            proposals = self._propose(images, log_scope, score_noise, given)
        cross = cfg.competition_cross and given is None and cfg.n_experts > 1
        if search and noise is None and not track and (cross or cfg.competition_refine_steps > 0):
            proposals = self._search(images, log_scope, proposals, scope_cost, cross)
        losses = step_losses(images, proposals, cfg.sigma_x)
        score = self._score(losses, proposals, scope_cost).detach()
        winner = choose_winner(score if handicap is None else score + handicap, temperature,
                               gumbel)
        if (reference or not track) and not on_means:
            chosen = proposals.select(winner)
            rows = torch.arange(batch, device=device)
            chosen_losses = StepLosses(*(getattr(losses, f)[rows, winner].unsqueeze(1) for f in
                                         ("reconstruction", "latent_kl", "region_kl")))
            return chosen, chosen_losses, winner, score
        chosen = self._winners_forward(images, log_scope, given, winner, noise)
        return chosen, step_losses(images, chosen, cfg.sigma_x), winner, score

    def _score(self, losses: StepLosses, proposals: Proposal, scope_cost: float) -> Tensor:
        cfg = self.config
        return competition_score(losses, proposals, cfg.competition_lambda, scope_cost,
                                 cfg.competition_min_region, cfg.competition_max_region)

    def _search(self, images: Tensor, log_scope: Tensor, proposals: Proposal, scope_cost: float,
                cross: bool) -> Proposal:
        """Deterministic inference's wider competition → every expert's best candidate (B, K, ...).

        Candidates are the experts' own proposals (B, K, ...), or with ``cross`` every expert
        on every expert's proposed region (B, K·K, ...; candidate j·K + k is expert k on expert
        j's region, whose attention then shrinks the scope if it wins; the K own-region
        candidates are recomputed with the others, the encoders being the cheap part). With
        ``competition_refine_steps`` the candidates' latents are refined on their own scores
        first. Each expert keeps its best-scoring candidate.
        """
        cfg = self.config
        k = cfg.n_experts
        candidates = proposals
        if cross:
            candidates = self._cross_candidates(images, log_scope, proposals)
        n_candidates = candidates.log_region.shape[1]
        expert = torch.arange(n_candidates, device=images.device) % k
        score = self._score(step_losses(images, candidates, cfg.sigma_x), candidates, scope_cost)
        if cfg.competition_refine_steps > 0:
            candidates = self._refine_candidates(images, candidates, score, expert)
            score = self._score(step_losses(images, candidates, cfg.sigma_x), candidates,
                                scope_cost)
        best_region = score.reshape(len(images), n_candidates // k, k).argmin(dim=1)  # (B, K)
        return candidates.gather(best_region * k + torch.arange(k, device=images.device))

    def _cross_candidates(self, images: Tensor, log_scope: Tensor, proposals: Proposal
                          ) -> Proposal:
        """Every expert encodes and decodes every expert's proposed region → (B, K·K, ...)."""
        k = self.config.n_experts
        batch, _, height, width = images.shape
        assert proposals.attention is not None  # regions proposed by attention, not given

        def by_region(t: Tensor) -> Tensor:  # (B, K, H, W) → (K·B, 1, H, W), rows (j, b)
            return t.transpose(0, 1).reshape(k * batch, 1, height, width)

        candidates = self._propose(images.repeat(k, 1, 1, 1), log_scope.repeat(k, 1, 1, 1), None,
                                   by_region(proposals.log_region))
        attention = by_region(proposals.attention).expand(k * batch, k, height, width)
        return candidates.replace(attention=attention).fold(k)

    def _refine_candidates(self, images: Tensor, candidates: Proposal, score: Tensor,
                           expert: Tensor) -> Proposal:
        """Refine the latents of candidates (B, C, ...) of experts ``expert`` (C,) on their own
        scores; with ``competition_refine_top`` N only each image's N best (by ``score``, (B, C))."""
        cfg = self.config
        batch, n_candidates = score.shape
        top = cfg.competition_refine_top
        if 0 < top < n_candidates:
            chosen = score.topk(top, dim=1, largest=False).indices
        else:
            chosen = torch.arange(n_candidates, device=score.device).expand(batch, n_candidates)
        rows = torch.arange(batch, device=score.device).unsqueeze(1).expand_as(chosen).reshape(-1)
        cols = chosen.reshape(-1)
        latent = descend(self.experts, cfg, images[rows], candidates.log_region[rows, cols],
                         candidates.log_scope[rows, cols], candidates.latent_mean[rows, cols],
                         expert[cols], cfg.competition_refine_steps, cfg.competition_refine_lr,
                         weights=(cfg.competition_lambda, 1.0))
        appearance, logit = decode_rows(self.experts, latent, expert[cols])

        def put(t: Tensor, values: Tensor) -> Tensor:
            return t.index_put((rows, cols), values.to(t.dtype))

        mean = put(candidates.latent_mean, latent)
        return candidates.replace(latent_mean=mean, latent=mean,
                                  appearance=put(candidates.appearance, appearance),
                                  shape_logit=put(candidates.shape_logit, logit))

    def _propose(self, images: Tensor, log_scope: Tensor, noise: Tensor | None,
                 given: Tensor | None) -> Proposal:
        """Every expert's proposal for every image → (B, K, ...)."""
        k = self.config.n_experts
        everyone = torch.arange(k, device=images.device)
        if self.layout_is_grouped(images):
            return self.experts(images, log_scope, everyone, shared=True, noise=noise,
                                log_region=given)
        return Proposal.cat([
            self.experts(images, log_scope, everyone[e : e + 1], shared=True,
                         noise=None if noise is None else noise[:, e : e + 1], log_region=given)
            for e in range(k)
        ])

    def _winners_forward(
        self, images: Tensor, log_scope: Tensor, given: Tensor | None, winner: Tensor,
        noise: Tensor | None,
    ) -> Proposal:
        """Recompute each image (B, ...) with its winner's parameters, with grad → (B, 1, ...)."""
        batch, _, height, width = images.shape
        rows = torch.arange(batch, device=images.device)
        if self.layout_is_grouped(images):
            return self.experts(
                images.reshape(1, batch * 3, height, width),
                log_scope.reshape(1, batch, height, width),
                winner,
                shared=False,
                noise=None if noise is None else noise[rows, winner].unsqueeze(0),
                log_region=None if given is None else given.reshape(1, batch, height, width),
            ).per_image()
        parts, order = [], []
        for e in torch.unique(winner).tolist():
            mine = (winner == e).nonzero().squeeze(1)
            parts.append(self.experts(
                images[mine], log_scope[mine], winner[mine[:1]], shared=True,
                noise=None if noise is None else noise[mine, e : e + 1],
                log_region=None if given is None else given[mine]))
            order.append(mine)
        inverse = torch.empty_like(winner)
        inverse[torch.cat(order)] = rows
        return Proposal.cat(parts, dim=0).take(inverse)

    @staticmethod
    def _next_scope(log_scope: Tensor, chosen: Proposal, given: Tensor | None) -> Tensor:
        """(14): s_{t+1} = s_t ⊙ (1 − r̃_t/s_t), in log space: log s + log σ(−a) for attention."""
        if chosen.attention is not None:
            return log_scope + torch.nn.functional.logsigmoid(-chosen.attention)
        remaining = (log_scope.exp() - chosen.log_region.exp()).clamp_min(0.0)
        return remaining.log().clamp_min(LOG_FLOOR)

    def forward(self, images: Tensor) -> Decomposition:
        """Deterministic decomposition (posterior means, best expert per step)."""
        return self.infer(images, stochastic=False).decomposition
