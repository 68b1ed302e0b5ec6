"""Transformer pretraining for offline RL on locally generated data.

- :mod:`headvec.rl.envs`: one small interface over a numpy point-mass (tests, CI), gymnasium MuJoCo v5
  and dm_control walker, with simulator states that can be saved, restored and relabelled.
- :mod:`headvec.rl.data`: the trajectory npz format, SAC behaviour policies (stable-baselines3) and the
  random / replay / checkpoint-rollout datasets, Minari export.
- :mod:`headvec.rl.masking`: CurrMask's random and block-wise masking, the arm pool, the baseline
  curricula and the EXP3 teacher.
- :mod:`headvec.rl.currmask`: the masked trajectory model (MAE encoder-decoder), a causal GPT baseline,
  pretraining, skill prompting and goal-conditioned planning.
- :mod:`headvec.rl.pdt`: the future-conditioned pretrained Decision Transformer, ODT/DT baselines and the
  online fine-tuning loop.

Nothing here is imported by ``import headvec``; simulators come with the ``rl`` extra.
"""
