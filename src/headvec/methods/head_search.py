"""REINFORCE search for a set of attention heads, shared by every method that must pick heads by a reward.

One independent Bernoulli per ``(layer, head)``; a step samples ``samples_per_step`` masks, scores them
with a caller-supplied loss (lower is better), and moves the logits along the score-function gradient
with a z-normalised advantage. The loss is a callable, so Multimodal Task Vectors (first-answer-token
cross-entropy) and activation reward models (a verdict-token loss) share the same optimiser. The caller's
loss must score all masks of a step in one batched forward; this module never loops over samples.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from headvec.errors import HeadvecError

# masks: bool [S, layers, heads]; items: the training items to score them on -> mean loss per mask [S].
MaskLoss = Callable[[torch.Tensor, Sequence[Any]], torch.Tensor]


@dataclass
class HeadSearchResult:
    """What a search found, and how it got there (everything a loss-curve or head-map plot needs)."""

    mask: torch.Tensor  # bool [layers, heads]: the chosen heads
    theta: torch.Tensor  # final logits [layers, heads]
    theta_history: torch.Tensor  # logits before step 0 and after every step: [steps + 1, layers, heads]
    loss_curve: list[float]  # mean loss of the sampled masks, per step
    expected_heads: list[float]  # sum of the head probabilities, per step
    candidate_losses: list[float] = field(default_factory=list)  # mean loss of each final candidate

    @property
    def probabilities(self) -> torch.Tensor:
        return torch.sigmoid(self.theta)


class ReinforceHeadSearch:
    """Learn which heads to use with REINFORCE, then keep the best of a few sampled masks.

    Defaults follow the MTV paper's code: logits initialised to -1, 32 masks per step, Adam with lr 0.1,
    600 steps, probabilities clamped to ``[1e-3, 1 - 1e-3]``, advantage ``(L - mean) / (std + 1e-3)``,
    and the final mask the best of 10 samples on the selection items. ``threshold`` (Idefics2 in the
    paper: 0.8) zeroes heads below that probability before the final sampling.
    """

    def __init__(
        self,
        n_layers: int,
        n_heads: int,
        *,
        steps: int = 600,
        samples_per_step: int = 32,
        lr: float = 0.1,
        init_logit: float = -1.0,
        clamp: float = 1e-3,
        items_per_step: int = 1,
        n_candidates: int = 10,
        threshold: float | None = None,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        if steps < 0 or samples_per_step < 2 or n_candidates < 1 or items_per_step < 1:
            raise HeadvecError(
                "head search needs steps >= 0, samples_per_step >= 2 (the advantage compares samples), "
                "items_per_step >= 1 and n_candidates >= 1"
            )
        self.n_layers, self.n_heads = n_layers, n_heads
        self.steps, self.samples_per_step, self.lr = steps, samples_per_step, lr
        self.init_logit, self.clamp, self.items_per_step = init_logit, clamp, items_per_step
        self.n_candidates, self.threshold, self.seed, self.progress = n_candidates, threshold, seed, progress

    def probabilities(self, theta: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(theta).clamp(self.clamp, 1 - self.clamp)

    def policy_loss(self, theta: torch.Tensor, masks: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """Score-function surrogate: minimising it makes masks with below-average loss more likely."""
        advantage = (losses - losses.mean()) / (losses.std() + 1e-3)
        p = self.probabilities(theta).unsqueeze(0)
        chosen = masks.float()
        log_prob = (chosen * p.log() + (1 - chosen) * (1 - p).log()).sum(dim=(1, 2))
        return (log_prob * advantage).sum()

    def run(
        self, loss_fn: MaskLoss, train_items: Sequence[Any], selection_items: Sequence[Any] | None = None
    ) -> HeadSearchResult:
        """Optimise on ``train_items`` (``items_per_step`` random ones a step), pick on the selection."""
        if not train_items:
            raise HeadvecError("head search needs at least one training item")
        selection = list(selection_items) if selection_items else list(train_items)
        generator = torch.Generator().manual_seed(self.seed)
        item_rng = random.Random(self.seed)
        theta = torch.full((self.n_layers, self.n_heads), float(self.init_logit), requires_grad=True)
        optimizer = torch.optim.Adam([theta], lr=self.lr)
        history = [theta.detach().clone()]
        loss_curve: list[float] = []
        expected: list[float] = []
        for _ in tqdm(range(self.steps), desc="REINFORCE", disable=not self.progress):
            items = item_rng.sample(list(train_items), min(self.items_per_step, len(train_items)))
            with torch.no_grad():
                p = self.probabilities(theta)
                masks = torch.bernoulli(p.expand(self.samples_per_step, -1, -1), generator=generator).bool()
                losses = loss_fn(masks, items).detach().float().cpu()
            if losses.shape != (self.samples_per_step,):
                raise HeadvecError(
                    f"the head-search loss returned shape {tuple(losses.shape)}; it must return one loss "
                    f"per mask ({self.samples_per_step},)"
                )
            optimizer.zero_grad()
            self.policy_loss(theta, masks, losses).backward()
            optimizer.step()
            history.append(theta.detach().clone())
            loss_curve.append(float(losses.mean()))
            expected.append(float(p.sum()))
        final = theta.detach().clone()
        mask, candidate_losses = self.select(final, loss_fn, selection, generator)
        return HeadSearchResult(
            mask=mask,
            theta=final,
            theta_history=torch.stack(history),
            loss_curve=loss_curve,
            expected_heads=expected,
            candidate_losses=candidate_losses,
        )

    @torch.no_grad()
    def select(
        self, theta: torch.Tensor, loss_fn: MaskLoss, items: Sequence[Any], generator: torch.Generator
    ) -> tuple[torch.Tensor, list[float]]:
        """Sample ``n_candidates`` masks from the learnt policy and keep the one with the lowest loss."""
        p = torch.sigmoid(theta)
        if self.threshold is not None:
            p = torch.where(p < self.threshold, torch.zeros_like(p), p)
        candidates = torch.bernoulli(p.expand(self.n_candidates, -1, -1), generator=generator).bool()
        losses = loss_fn(candidates, list(items)).detach().float().cpu()
        best = int(torch.argmin(losses))
        return candidates[best].clone(), [float(x) for x in losses]
