"""headvec.rl on the real simulators: state round trips, reward relabelling, Minari export, SAC resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from headvec.rl.data import (
    TrajectoryDataset,
    export_minari,
    generate,
    random_policy,
    relabel,
    rollout,
    train_sac,
)
from headvec.rl.envs import make_env


def test_walker_rewards_relabel_from_physics():
    env = make_env("walker-walk", max_steps=30)
    episode = rollout(env, random_policy(6, 0), seed=3)
    # the reward of step t is a function of the physics state after it, for any of the three tasks
    for t in (0, 10, 25):
        assert env.reward_from_state(episode.states[t + 1], "walk") == pytest.approx(
            episode.rewards[t], abs=1e-6
        )
    stand = [env.reward_from_state(s, "stand") for s in episode.states[1:]]
    run = [env.reward_from_state(s, "run") for s in episode.states[1:]]
    assert np.all(np.array(stand) >= np.array(run) - 1e-9)  # run = stand x a speed factor <= 1
    assert not np.allclose(stand, episode.rewards)
    data = TrajectoryDataset([episode], {"env_id": "walker-walk", "max_steps": 30})
    assert np.allclose(relabel(data, "walk").episodes[0].rewards, episode.rewards, atol=1e-6)
    assert np.allclose(relabel(data, "stand").episodes[0].rewards, stand, atol=1e-6)


def test_walker_and_hopper_states_restore_observations():
    for env_id in ("walker-walk", "Hopper-v5"):
        env = make_env(env_id, max_steps=20)
        episode = rollout(env, random_policy(env.action_dim, 1), seed=5)
        env.reset(99)
        t = len(episode) // 2
        assert np.allclose(env.set_state(episode.states[t]), episode.observations[t], atol=1e-5)
        step = env.step(episode.actions[t])
        assert np.allclose(step.observation, episode.observations[t + 1], atol=1e-4)


def test_minari_export_round_trip(tmp_path, monkeypatch):
    minari = pytest.importorskip("minari")
    generate("pointmass", tmp_path / "pm", behaviour="scripted", random_episodes=3, rollout_episodes=3)
    data = TrajectoryDataset.load(tmp_path / "pm" / "expert.npz")
    export_minari(data, "headvec/pointmass-expert-v0", root=tmp_path / "minari")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    loaded = minari.load_dataset("headvec/pointmass-expert-v0")
    assert loaded.total_episodes == 3 and loaded.total_steps == data.n_steps
    first = next(iter(loaded.iterate_episodes()))
    assert np.allclose(first.actions, data.episodes[0].actions)


@pytest.mark.slow
def test_sac_generation_resumes_from_its_checkpoint(tmp_path):
    log = train_sac("pointmass", tmp_path, total_steps=1100, checkpoint_every=1100, seed=0)
    assert [c["steps"] for c in log["checkpoints"]] == [1100]
    log = train_sac("pointmass", tmp_path, total_steps=1300, checkpoint_every=100, seed=0)
    assert [c["steps"] for c in log["checkpoints"]] == [1100, 1200, 1300]
    replay = TrajectoryDataset.load(tmp_path / "replay.partial.npz")
    assert replay.n_steps >= 1100 and json.loads((tmp_path / "sac_log.json").read_text())["steps"] == 1300
