"""The DPO loss (Rafailov et al., 2023) and the preference metrics TRL reports beside it.

For a pair with preferred reply c and non-preferred reply r, the policy's implicit rewards are
    reward_c = beta * (log pi(c | x) - log ref(c | x)),   reward_r = beta * (log pi(r | x) - log ref(r | x))
and the loss is -log sigmoid(reward_c - reward_r). Sequence log-probabilities sum over the reply's tokens only
(positions with loss weight > 0), computed a chunk of positions at a time (chunked_loss.py), so a batch's
vocabulary logits never exist whole. Reward accuracy is the share of pairs with reward_c > reward_r; the margin
is reward_c - reward_r.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ember.tuning.batching import PackedBatch
from ember.tuning.chunked_loss import chunked_target_logprobs


def sequence_logprobs(
    hidden: torch.Tensor,
    batch: PackedBatch,
    compute_logits: Callable[[torch.Tensor], torch.Tensor],
    chunk: int,
) -> torch.Tensor:
    """hidden [T, H] of a packed batch -> [S] fp32: each sequence's summed log-probability of its trained
    tokens (differentiable when `hidden` is)."""
    trained = (batch.loss_weights > 0).nonzero().squeeze(1)  # [N]
    lengths = torch.tensor(batch.seq_lens, dtype=torch.int64)
    sequence_of = torch.repeat_interleave(torch.arange(len(batch.seq_lens)), lengths)  # [T]
    token_logprobs = chunked_target_logprobs(
        hidden[trained], batch.target_ids[trained], compute_logits, chunk
    )  # [N]
    sums = torch.zeros(len(batch.seq_lens), dtype=torch.float32)
    return sums.index_add(0, sequence_of[trained], token_logprobs)


@dataclass(frozen=True)
class PreferenceLoss:
    """Per-pair terms of one batch; `losses` is differentiable, the rest are detached."""

    losses: torch.Tensor  # [P]
    preferred_rewards: torch.Tensor  # [P]
    non_preferred_rewards: torch.Tensor  # [P]
    policy_logprobs: torch.Tensor  # [P, 2] (preferred, non-preferred), summed over each reply's tokens


def dpo_loss(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> PreferenceLoss:
    """policy, reference [P, 2] sequence log-probabilities (preferred, non-preferred) -> per-pair DPO terms."""
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta}")
    rewards = beta * (policy - reference)  # [P, 2]
    margins = rewards[:, 0] - rewards[:, 1]  # [P]
    detached = rewards.detach()
    return PreferenceLoss(-F.logsigmoid(margins), detached[:, 0], detached[:, 1], policy.detach())


@dataclass
class PreferenceTotals:
    """Sums of a preference loss over any number of pairs, turned into the means a user reads."""

    pairs: int = 0
    loss: float = 0.0
    correct: int = 0  # pairs whose preferred reward is the higher
    margin: float = 0.0
    preferred_reward: float = 0.0
    non_preferred_reward: float = 0.0
    preferred_logps: float = 0.0
    non_preferred_logps: float = 0.0

    def add(self, terms: PreferenceLoss) -> None:
        self.pairs += int(terms.losses.numel())
        self.loss += float(terms.losses.detach().sum())
        margin = terms.preferred_rewards - terms.non_preferred_rewards
        self.correct += int((margin > 0).sum())
        self.margin += float(margin.sum())
        self.preferred_reward += float(terms.preferred_rewards.sum())
        self.non_preferred_reward += float(terms.non_preferred_rewards.sum())
        self.preferred_logps += float(terms.policy_logprobs[:, 0].sum())
        self.non_preferred_logps += float(terms.policy_logprobs[:, 1].sum())

    def merge(self, other: PreferenceTotals) -> None:
        for name in vars(other):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def means(self, prefix: str) -> dict[str, float]:
        """`<prefix>_loss`, `<prefix>_reward_accuracy`, `<prefix>_reward_margin`, the mean rewards and
        log-probabilities of each side (TRL's rewards/* and logps/*)."""
        n = max(self.pairs, 1)
        return {
            f"{prefix}_loss": self.loss / n,
            f"{prefix}_reward_accuracy": self.correct / n,
            f"{prefix}_reward_margin": self.margin / n,
            f"{prefix}_preferred_reward": self.preferred_reward / n,
            f"{prefix}_non_preferred_reward": self.non_preferred_reward / n,
            f"{prefix}_preferred_logps": self.preferred_logps / n,
            f"{prefix}_non_preferred_logps": self.non_preferred_logps / n,
        }
