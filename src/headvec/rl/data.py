"""Offline-RL datasets made locally: the npz format, behaviour policies and the dataset generator.

D4RL and ExoRL cannot be downloaded here, so :func:`generate` makes D4RL-like datasets with a real
simulator, in stages that each write one file and are skipped when it exists (kill it, rerun it, it
resumes):

1. ``random.npz``: a uniform random policy.
2. ``replay.npz``: every episode a SAC behaviour policy (stable-baselines3, CPU, one thread) saw while
   it trained ("medium-replay"-like). Checkpoints of the policy are written as it trains
   (safetensors + JSON), and training resumes from the last one.
3. ``medium.npz`` / ``expert.npz``: rollouts of the middle and of the best checkpoint with Gaussian
   action noise ("medium"/"expert"-like).
4. ``references.json``: the mean return of the random policy and of the best checkpoint, the 0 and 100
   of our normalised scores (not D4RL's references).

On the point mass the scripted expert replaces SAC (``behaviour="scripted"``), so the whole thing runs
in a second. Each episode stores observations ``[T+1, S]``, actions ``[T, A]``, rewards ``[T]``, whether
it terminated, the simulator states ``[T+1, P]`` and its reset seed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headvec._optional import require
from headvec.errors import DataError, HeadvecError
from headvec.rl.envs import Env, as_gymnasium, make_env

FORMAT_VERSION = 1
Policy = Callable[[np.ndarray], np.ndarray]


@dataclass
class Episode:
    observations: np.ndarray  # [T+1, S]: the last one is the observation after the last action
    actions: np.ndarray  # [T, A]
    rewards: np.ndarray  # [T]
    states: np.ndarray  # [T+1, P]: simulator states aligned with observations
    terminated: bool = False
    seed: int = -1

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def episode_return(self) -> float:
        return float(self.rewards.sum())


@dataclass
class TrajectoryDataset:
    """A list of episodes plus metadata (env id, how it was made, seeds); saved as one npz."""

    episodes: list[Episode]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def n_steps(self) -> int:
        return sum(len(e) for e in self.episodes)

    @property
    def returns(self) -> np.ndarray:
        return np.array([e.episode_return for e in self.episodes])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self.episodes:
            raise DataError(f"refusing to write {path}: the dataset has no episodes")
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(
            tmp,
            observations=np.concatenate([e.observations for e in self.episodes]).astype(np.float32),
            actions=np.concatenate([e.actions for e in self.episodes]).astype(np.float32),
            rewards=np.concatenate([e.rewards for e in self.episodes]).astype(np.float32),
            states=np.concatenate([e.states for e in self.episodes]).astype(np.float64),
            lengths=np.array([len(e) for e in self.episodes], dtype=np.int64),
            terminated=np.array([e.terminated for e in self.episodes], dtype=bool),
            seeds=np.array([e.seed for e in self.episodes], dtype=np.int64),
            meta=np.array(json.dumps({"format_version": FORMAT_VERSION, **self.meta})),
        )
        tmp.replace(path)  # atomic: a killed run never leaves a half-written dataset
        return path

    @classmethod
    def load(cls, path: str | Path) -> TrajectoryDataset:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"no dataset at {path}; make one with `headvec rl data ENV --out DIR`")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"{path} is not a headvec.rl dataset (npz): {exc}") from exc
        missing = {"observations", "actions", "rewards", "states", "lengths", "meta"} - set(arrays)
        if missing:
            raise DataError(f"{path} lacks {sorted(missing)}; regenerate it with `headvec rl data`")
        episodes, o, a = [], 0, 0
        for i, n in enumerate(arrays["lengths"].tolist()):
            episodes.append(
                Episode(
                    observations=arrays["observations"][o : o + n + 1],
                    actions=arrays["actions"][a : a + n],
                    rewards=arrays["rewards"][a : a + n],
                    states=arrays["states"][o : o + n + 1],
                    terminated=bool(arrays["terminated"][i]),
                    seed=int(arrays["seeds"][i]),
                )
            )
            o, a = o + n + 1, a + n
        return cls(episodes, json.loads(str(arrays["meta"])))


def concat(datasets: Sequence[TrajectoryDataset]) -> TrajectoryDataset:
    return TrajectoryDataset(
        [e for d in datasets for e in d.episodes], dict(datasets[0].meta, source="mixed")
    )


def rollout(
    env: Env, policy: Policy, seed: int, noise: float = 0.0, rng: np.random.Generator | None = None
) -> Episode:
    """One episode of ``policy`` (plus Gaussian action noise ``noise``), with simulator states."""
    rng = rng or np.random.default_rng(seed)
    observations, actions, rewards, states = [env.reset(seed)], [], [], [env.get_state()]
    terminated = False
    for _ in range(env.max_steps):
        action = np.asarray(policy(observations[-1]), dtype=np.float32)
        if noise:
            action = np.clip(action + noise * rng.standard_normal(action.shape), -1, 1).astype(np.float32)
        step = env.step(action)
        actions.append(action)
        rewards.append(step.reward)
        observations.append(step.observation)
        states.append(env.get_state())
        if step.terminated or step.truncated:
            terminated = step.terminated
            break
    return Episode(
        np.array(observations),
        np.array(actions),
        np.array(rewards, dtype=np.float32),
        np.array(states),
        terminated,
        seed,
    )


def random_policy(action_dim: int, seed: int) -> Policy:
    rng = np.random.default_rng(seed)
    return lambda _obs: rng.uniform(-1, 1, action_dim).astype(np.float32)


def collect(
    env: Env, policy: Policy, n_episodes: int, seed: int, noise: float = 0.0, desc: str = "rollouts"
) -> list[Episode]:
    tqdm = require("tqdm").tqdm
    rng = np.random.default_rng(seed)
    return [
        rollout(env, policy, seed * 100_003 + i, noise, rng)
        for i in tqdm(range(n_episodes), desc=desc, leave=False)
    ]


# ----------------------------------------------------------------------------------------------------
# SAC behaviour policies (stable-baselines3), resumable through safetensors checkpoints


class _Recorder:
    """Wraps an env and records every finished episode (with states) that SAC generates while training."""

    def __init__(self, env: Env, first_seed: int) -> None:
        self.env, self.episodes, self._seed = env, [], first_seed
        self.env_id, self.observation_dim, self.action_dim = env.env_id, env.observation_dim, env.action_dim
        self.max_steps = env.max_steps
        self._current: dict[str, list] | None = None

    def reset(self, seed: int | None = None) -> np.ndarray:
        self._seed += 1
        observation = self.env.reset(self._seed)
        self._current = {"obs": [observation], "act": [], "rew": [], "state": [self.env.get_state()]}
        return observation

    def step(self, action: np.ndarray) -> Any:
        step = self.env.step(action)
        current = self._current
        current["act"].append(np.asarray(action, dtype=np.float32))
        current["rew"].append(step.reward)
        current["obs"].append(step.observation)
        current["state"].append(self.env.get_state())
        if step.terminated or step.truncated:
            self.episodes.append(
                Episode(
                    np.array(current["obs"]),
                    np.array(current["act"]),
                    np.array(current["rew"], dtype=np.float32),
                    np.array(current["state"]),
                    step.terminated,
                    self._seed,
                )
            )
        return step

    def get_state(self) -> np.ndarray:
        return self.env.get_state()


def _sac(gym_env: Any, seed: int) -> Any:
    sb3 = require("stable_baselines3", extra="rl", feature="SAC behaviour policies")
    return sb3.SAC("MlpPolicy", gym_env, seed=seed, device="cpu", verbose=0, learning_starts=1000)


def _save_sac(model: Any, path: Path) -> None:
    safetensors = require("safetensors.torch")
    tensors = {f"policy.{k}": v.contiguous() for k, v in model.policy.state_dict().items()}
    tensors["log_ent_coef"] = model.log_ent_coef.detach().clone()
    safetensors.save_file(tensors, str(path))


def _load_sac(model: Any, path: Path) -> None:
    import torch

    safetensors = require("safetensors.torch")
    tensors = safetensors.load_file(str(path))
    model.policy.load_state_dict(
        {k.removeprefix("policy."): v for k, v in tensors.items() if k.startswith("policy.")}
    )
    with torch.no_grad():
        model.log_ent_coef.copy_(tensors["log_ent_coef"])


def sac_policy(env: Env, checkpoint: str | Path, deterministic: bool = True) -> Policy:
    """The action function of a saved SAC checkpoint."""
    model = _sac(as_gymnasium(env), seed=0)
    _load_sac(model, Path(checkpoint))
    return lambda obs: model.predict(obs, deterministic=deterministic)[0]


def train_sac(
    env_id: str,
    out_dir: str | Path,
    total_steps: int,
    checkpoint_every: int,
    seed: int = 0,
    eval_episodes: int = 3,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Train SAC for ``total_steps`` env steps, writing a checkpoint, its eval return and the replay
    episodes every ``checkpoint_every`` steps to ``out_dir``; a rerun resumes from the last checkpoint.

    Resuming restores the policy, critics and entropy coefficient and refills the replay buffer from the
    recorded episodes; optimiser moments restart, so a resumed run is close to, not bit-identical with,
    an uninterrupted one (the dataset stages after it are deterministic given its checkpoints).
    """
    import torch

    torch.set_num_threads(1)
    tqdm = require("tqdm").tqdm
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "sac_log.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {"steps": 0, "checkpoints": []}
    env = make_env(env_id, max_steps=max_steps, seed=seed)
    recorder = _Recorder(env, first_seed=seed * 1_000_000 + log["steps"])
    model = _sac(as_gymnasium(recorder), seed=seed + log["steps"])
    replay_path = out / "replay.partial.npz"
    if log["checkpoints"]:
        _load_sac(model, out / log["checkpoints"][-1]["file"])
        recorder.episodes = TrajectoryDataset.load(replay_path).episodes
        for e in recorder.episodes:  # refill SB3's buffer from the recorded episodes
            for t in range(len(e)):
                done = t == len(e) - 1
                model.replay_buffer.add(
                    e.observations[t][None], e.observations[t + 1][None], e.actions[t][None],
                    np.array([e.rewards[t]]), np.array([done and e.terminated]),
                    [{"TimeLimit.truncated": done and not e.terminated}],
                )  # fmt: skip
        model.num_timesteps = log["steps"]
        model.learning_starts = 0
    eval_env = make_env(env_id, max_steps=max_steps, seed=seed + 12345)
    bar = tqdm(total=total_steps, initial=log["steps"], desc=f"SAC {env_id}", unit="step")
    while log["steps"] < total_steps:
        chunk = min(checkpoint_every, total_steps - log["steps"])
        started = time.perf_counter()
        model.learn(chunk, reset_num_timesteps=False)
        log["steps"] += chunk
        name = f"sac_{log['steps']:07d}.safetensors"
        _save_sac(model, out / name)
        policy = lambda obs: model.predict(obs, deterministic=True)[0]  # noqa: E731
        returns = [rollout(eval_env, policy, seed=10_000 + i).episode_return for i in range(eval_episodes)]
        log["checkpoints"].append(
            {"file": name, "steps": log["steps"], "eval_return": float(np.mean(returns)),
             "seconds": time.perf_counter() - started}
        )  # fmt: skip
        TrajectoryDataset(recorder.episodes, {"env_id": env_id, "kind": "replay", "seed": seed}).save(
            replay_path
        )
        log_path.write_text(json.dumps(log, indent=1))
        bar.update(chunk)
        bar.set_postfix(eval_return=f"{np.mean(returns):.1f}")
    bar.close()
    return log


def generate(
    env_id: str,
    out_dir: str | Path,
    *,
    behaviour: str = "sac",
    sac_steps: int = 25_000,
    checkpoint_every: int = 5_000,
    random_episodes: int = 20,
    rollout_episodes: int = 20,
    noise: float = 0.1,
    seed: int = 0,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Make ``random``, ``replay``, ``medium`` and ``expert`` datasets for ``env_id`` in ``out_dir``.

    ``behaviour="scripted"`` (point mass only) uses the scripted expert instead of SAC: replay = the
    expert at decreasing noise levels (1.0 -> 0.1), medium = expert with noise 0.5, expert = noise ``noise``.
    """
    if behaviour not in ("sac", "scripted"):
        raise HeadvecError(f"unknown behaviour {behaviour!r}; use 'sac' or 'scripted'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = make_env(env_id, max_steps=max_steps, seed=seed)
    if behaviour == "scripted" and not hasattr(env, "expert_action"):
        raise HeadvecError(f"{env_id} has no scripted expert; use --behaviour sac")
    meta = {"env_id": env_id, "behaviour": behaviour, "seed": seed, "max_steps": env.max_steps}

    def stage(name: str, make: Callable[[], list[Episode]], **extra: Any) -> TrajectoryDataset:
        path = out / f"{name}.npz"
        if path.exists():
            return TrajectoryDataset.load(path)
        dataset = TrajectoryDataset(make(), {**meta, "kind": name, **extra})
        dataset.save(path)
        return dataset

    random_data = stage(
        "random",
        lambda: collect(env, random_policy(env.action_dim, seed), random_episodes, seed, desc="random"),
    )
    if behaviour == "scripted":
        expert = env.expert_action  # type: ignore[attr-defined]
        levels = np.linspace(1.0, 0.1, rollout_episodes)
        stage(
            "replay", lambda: [rollout(env, expert, seed * 7919 + i, float(n)) for i, n in enumerate(levels)]
        )
        stage("medium", lambda: collect(env, expert, rollout_episodes, seed + 1, noise=0.5, desc="medium"))
        best = stage(
            "expert", lambda: collect(env, expert, rollout_episodes, seed + 2, noise=noise, desc="expert")
        )
        best_return = float(np.mean([rollout(env, expert, 50_000 + i).episode_return for i in range(5)]))
        log: dict[str, Any] = {}
    else:
        log = train_sac(env_id, out / "sac", sac_steps, checkpoint_every, seed=seed, max_steps=max_steps)
        replay = TrajectoryDataset.load(out / "sac" / "replay.partial.npz")
        stage("replay", lambda: replay.episodes)
        checkpoints = log["checkpoints"]
        best_ck = max(checkpoints, key=lambda c: c["eval_return"])
        middle_ck = checkpoints[len(checkpoints) // 2 - 1] if len(checkpoints) > 1 else checkpoints[0]

        def checkpoint_rollouts(checkpoint: dict, offset: int, name: str) -> list[Episode]:
            policy = sac_policy(env, out / "sac" / checkpoint["file"])
            return collect(env, policy, rollout_episodes, seed + offset, noise, name)

        stage("medium", lambda: checkpoint_rollouts(middle_ck, 1, "medium"), checkpoint=middle_ck["file"])
        best = stage("expert", lambda: checkpoint_rollouts(best_ck, 2, "expert"), checkpoint=best_ck["file"])
        best_return = float(best_ck["eval_return"])
    references = {
        "env_id": env_id,
        "random_return": float(random_data.returns.mean()),
        "best_behaviour_return": best_return,
        "expert_dataset_return": float(best.returns.mean()),
        "note": "our own references (random policy = 0, best behaviour policy = 100); not D4RL's",
    }
    (out / "references.json").write_text(json.dumps(references, indent=1))
    return {"references": references, "sac": log}


def relabel(dataset: TrajectoryDataset, task: str) -> TrajectoryDataset:
    """The same episodes with rewards recomputed for ``task`` from the stored simulator states
    (dm_control walker: stand / walk / run share dynamics, so one dataset serves all three)."""
    env = make_env(dataset.meta["env_id"], max_steps=dataset.meta.get("max_steps"))
    episodes = [
        Episode(e.observations, e.actions,
                np.array([env.reward_from_state(s, task) for s in e.states[1:]], dtype=np.float32),
                e.states, e.terminated, e.seed)
        for e in dataset.episodes
    ]  # fmt: skip
    return TrajectoryDataset(episodes, {**dataset.meta, "task": task, "relabelled": True})


def normalised_score(episode_return: float | np.ndarray, references: dict[str, float]) -> float | np.ndarray:
    """100 * (return - random) / (best behaviour - random): our references, not D4RL's."""
    low, high = references["random_return"], references["best_behaviour_return"]
    return 100.0 * (np.asarray(episode_return) - low) / (high - low)


def export_minari(dataset: TrajectoryDataset, dataset_id: str, root: str | Path | None = None) -> Any:
    """Write ``dataset`` as a local Minari dataset (``MINARI_DATASETS_PATH`` or ``root``); no download."""
    import os

    previous = os.environ.get("MINARI_DATASETS_PATH")
    if root is not None:
        os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        return _export_minari(dataset, dataset_id)
    finally:
        if root is not None and previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        elif root is not None:
            os.environ["MINARI_DATASETS_PATH"] = previous


def _export_minari(dataset: TrajectoryDataset, dataset_id: str) -> Any:
    minari = require("minari", extra="rl", feature="Minari export")
    gym = require("gymnasium", extra="rl")
    from minari.data_collector import EpisodeBuffer

    s_dim = dataset.episodes[0].observations.shape[1]
    a_dim = dataset.episodes[0].actions.shape[1]
    buffers = [
        EpisodeBuffer(
            id=i, seed=e.seed, observations=list(e.observations), actions=list(e.actions),
            rewards=e.rewards.tolist(), terminations=[False] * (len(e) - 1) + [e.terminated],
            truncations=[False] * (len(e) - 1) + [not e.terminated],
        )
        for i, e in enumerate(dataset.episodes)
    ]  # fmt: skip
    return minari.create_dataset_from_buffers(
        dataset_id=dataset_id,
        buffer=buffers,
        observation_space=gym.spaces.Box(-np.inf, np.inf, (s_dim,), np.float32),
        action_space=gym.spaces.Box(-1.0, 1.0, (a_dim,), np.float32),
        algorithm_name=str(dataset.meta.get("behaviour", "headvec.rl")),
        description=f"headvec.rl {dataset.meta.get('kind')} data, {dataset.meta.get('env_id')}, made locally",
    )
