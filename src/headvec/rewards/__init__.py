"""Reward models and judges behind one protocol, so benchmarks, servers and trainers take any of them."""

from headvec.rewards.protocol import Preference, RewardModel, ScoreBasedComparison

__all__ = ["Preference", "RewardModel", "ScoreBasedComparison"]
