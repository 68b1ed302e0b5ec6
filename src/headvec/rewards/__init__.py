"""Reward models and judges behind two protocols, so benchmarks, servers and trainers take any of them.

- :mod:`~headvec.rewards.protocol`: :class:`Scorer` (a reward per response), :class:`Judge` (which of two
  responses is better), :func:`as_judge` (any scorer as a judge), :class:`Preference`, :class:`Comparison`;
- :mod:`~headvec.rewards.pairs`: :class:`PreferencePair`, the one pair type, and pair/verdict readers;
- :mod:`~headvec.rewards.activation`: activation reward models; :mod:`~headvec.rewards.baselines`: the
  verdict judges they are compared with; :mod:`~headvec.rewards.judges`: generative judges (local model,
  OpenAI-compatible endpoint); :mod:`~headvec.rewards.classifier`: Hugging Face classifier RMs;
  :mod:`~headvec.rewards.simple`: model-free floors;
- :mod:`~headvec.rewards.loading`: the one registry of reward-model specs and saved directories;
- :mod:`~headvec.rewards.runner`: the one runner (seeded order, k samples, resumable, local or Ray);
  :mod:`~headvec.rewards.best_of_n`: Best-of-N.
"""

from headvec.rewards.pairs import PreferencePair
from headvec.rewards.protocol import (
    BaseJudge,
    Comparison,
    Judge,
    Preference,
    Scorer,
    ScorerJudge,
    as_judge,
    preference_from_scores,
)

__all__ = [
    "BaseJudge",
    "Comparison",
    "Judge",
    "Preference",
    "PreferencePair",
    "Scorer",
    "ScorerJudge",
    "as_judge",
    "preference_from_scores",
]
