"""Red-teaming aligned models through their implicit rewards: ReMiss suffixes, baselines, backdoors.

- :mod:`~headvec.redteam.attack`: :class:`SuffixAttack` (ReMiss beam search over prompter-proposed
  suffix tokens scored by the reward gap; AdvPrompter-style, GCG-style and random baselines) and
  :func:`evaluate_item` (keyword jailbreak, ReGap, perplexity per suffix);
- :mod:`~headvec.redteam.run`: resumable JSONL runs and the metrics (ASR@k, AUROC with CIs);
- :mod:`~headvec.redteam.backdoor`: rank candidate trigger tokens by how far they lower ReGap;
- :mod:`~headvec.redteam.toy`: the toy-world experiment (aligned and poisoned toy policies, the split).

Nothing here is imported by ``import headvec``.
"""
