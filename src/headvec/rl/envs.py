"""Environments behind one small interface, with simulator states that can be saved and restored.

Every environment here exposes ``reset(seed)``, ``step(action)``, ``get_state()`` / ``set_state(state)``
(the full simulator state, so datasets can store it, rewards can be relabelled and evaluations can reset
the simulator to a dataset state) and ``reward_from_state(state, task)``. Three kinds:

- ``pointmass``: a 2-D point mass in numpy, with a scripted PD expert. It costs nothing to simulate and
  needs no extra, so tests and CI run the whole pipeline on it in seconds.
- ``Hopper-v5`` / ``HalfCheetah-v5`` / ``Walker2d-v5``: gymnasium MuJoCo (state = qpos ++ qvel).
- ``walker-stand`` / ``walker-walk`` / ``walker-run``: dm_control walker (state = ``physics.get_state()``).
  The three tasks share dynamics, so a reward for any of them is a function of the physics state alone.

:func:`make_env` builds any of them from its id; :func:`as_gymnasium` wraps one for stable-baselines3.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from headvec._optional import require
from headvec.errors import HeadvecError

GYM_MUJOCO = ("Hopper-v5", "HalfCheetah-v5", "Walker2d-v5")
DMC_WALKER_TASKS = ("stand", "walk", "run")
ENV_IDS = ("pointmass", *GYM_MUJOCO, *(f"walker-{t}" for t in DMC_WALKER_TASKS))


@dataclass
class Step:
    observation: np.ndarray
    reward: float
    terminated: bool
    truncated: bool


class Env(Protocol):
    env_id: str
    observation_dim: int
    action_dim: int
    max_steps: int

    def reset(self, seed: int | None = None) -> np.ndarray: ...
    def step(self, action: np.ndarray) -> Step: ...
    def get_state(self) -> np.ndarray: ...
    def set_state(self, state: np.ndarray) -> np.ndarray: ...
    def reward_from_state(self, state: np.ndarray, task: str | None = None) -> float: ...


class PointMass:
    """A 2-D point mass pushed towards a goal; observation = (x, y, vx, vy), action = force in [-1, 1]^2.

    Reward is ``1 - |position - goal|`` clipped at 0 (so the scripted expert earns close to the
    maximum), episodes last ``max_steps`` steps and never terminate early.
    """

    observation_dim = 4
    action_dim = 2

    def __init__(self, max_steps: int = 50, goal: tuple[float, float] = (0.0, 0.0), dt: float = 0.1) -> None:
        self.env_id = "pointmass"
        self.max_steps = max_steps
        self.goal = np.asarray(goal, dtype=np.float64)
        self.dt = dt
        self._state = np.zeros(4)
        self._t = 0
        self._rng = np.random.default_rng(0)

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._state = np.concatenate([self._rng.uniform(-1, 1, 2), np.zeros(2)])
        self._t = 0
        return self._state.astype(np.float32)

    def step(self, action: np.ndarray) -> Step:
        force = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1, 1)
        velocity = 0.9 * self._state[2:] + self.dt * force * 2.0
        position = np.clip(self._state[:2] + self.dt * velocity, -2, 2)
        self._state = np.concatenate([position, velocity])
        self._t += 1
        return Step(
            self._state.astype(np.float32),
            self.reward_from_state(self._state),
            False,
            self._t >= self.max_steps,
        )

    def get_state(self) -> np.ndarray:
        return np.concatenate([self._state, [self._t]])

    def set_state(self, state: np.ndarray) -> np.ndarray:
        self._state = np.asarray(state[:4], dtype=np.float64).copy()
        self._t = int(state[4]) if len(state) > 4 else 0
        return self._state.astype(np.float32)

    def reward_from_state(self, state: np.ndarray, task: str | None = None) -> float:
        return float(max(0.0, 1.0 - np.linalg.norm(np.asarray(state[:2]) - self.goal)))

    def expert_action(self, observation: np.ndarray) -> np.ndarray:
        """The scripted expert: a PD controller towards the goal."""
        position, velocity = np.asarray(observation[:2]), np.asarray(observation[2:4])
        return np.clip(-2.0 * (position - self.goal) - 1.5 * velocity, -1, 1).astype(np.float32)


class GymMujoco:
    """A gymnasium MuJoCo v5 environment; state = qpos ++ qvel (``set_state`` restores both)."""

    def __init__(self, env_id: str, max_steps: int = 1000) -> None:
        gym = require("gymnasium", extra="rl", feature=f"the {env_id} environment")
        self.env_id = env_id
        self.max_steps = max_steps
        self._env = gym.make(env_id, max_episode_steps=max_steps)
        self.observation_dim = int(self._env.observation_space.shape[0])
        self.action_dim = int(self._env.action_space.shape[0])
        self._nq = int(self._env.unwrapped.model.nq)

    def reset(self, seed: int | None = None) -> np.ndarray:
        observation, _ = self._env.reset(seed=seed)
        return observation.astype(np.float32)

    def step(self, action: np.ndarray) -> Step:
        observation, reward, terminated, truncated, _ = self._env.step(np.asarray(action, dtype=np.float64))
        return Step(observation.astype(np.float32), float(reward), bool(terminated), bool(truncated))

    def get_state(self) -> np.ndarray:
        data = self._env.unwrapped.data
        return np.concatenate([data.qpos, data.qvel]).copy()

    def set_state(self, state: np.ndarray) -> np.ndarray:
        unwrapped = self._env.unwrapped
        unwrapped.set_state(state[: self._nq], state[self._nq :])
        return unwrapped._get_obs().astype(np.float32)

    def reward_from_state(self, state: np.ndarray, task: str | None = None) -> float:
        raise HeadvecError(f"{self.env_id} rewards depend on the action and the step; use the stored rewards")

    @property
    def gym_env(self) -> Any:
        return self._env


class DMCWalker:
    """dm_control walker; one physics for stand / walk / run, so rewards can be relabelled from states."""

    observation_dim = 24
    action_dim = 6

    def __init__(self, task: str = "walk", max_steps: int = 1000, seed: int = 0) -> None:
        if task not in DMC_WALKER_TASKS:
            raise HeadvecError(f"unknown walker task {task!r}; use one of {', '.join(DMC_WALKER_TASKS)}")
        with warnings.catch_warnings():  # glfw warns that there is no display; rendering is not used
            warnings.simplefilter("ignore")
            suite = require("dm_control.suite", extra="rl", feature="the dm_control walker")
        self.env_id = f"walker-{task}"
        self.task = task
        self.max_steps = max_steps
        self._suite = suite
        self._env = suite.load("walker", task, task_kwargs={"random": seed})
        self._tasks: dict[str, Any] = {}
        self._t = 0

    def _observation(self) -> np.ndarray:
        obs = self._env.task.get_observation(self._env.physics)
        return np.concatenate([np.ravel(v) for v in obs.values()]).astype(np.float32)

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self._env = self._suite.load("walker", self.task, task_kwargs={"random": seed})
        self._env.reset()
        self._t = 0
        return self._observation()

    def step(self, action: np.ndarray) -> Step:
        time_step = self._env.step(np.asarray(action, dtype=np.float64))
        self._t += 1
        return Step(self._observation(), float(time_step.reward or 0.0), False, self._t >= self.max_steps)

    def get_state(self) -> np.ndarray:
        return np.asarray(self._env.physics.get_state()).copy()

    def set_state(self, state: np.ndarray) -> np.ndarray:
        physics = self._env.physics
        with physics.reset_context():
            physics.set_state(np.asarray(state, dtype=np.float64))
        return self._observation()

    def reward_from_state(self, state: np.ndarray, task: str | None = None) -> float:
        """The reward of ``task`` (default: this env's) in physics ``state``: what a step to it earns."""
        task = task or self.task
        if task not in self._tasks:
            self._tasks[task] = self._suite.load("walker", task, task_kwargs={"random": 0})
        other = self._tasks[task]
        with other.physics.reset_context():
            other.physics.set_state(np.asarray(state, dtype=np.float64))
        return float(other.task.get_reward(other.physics))


def make_env(env_id: str, *, max_steps: int | None = None, seed: int = 0) -> Env:
    """Build an environment from its id (one of :data:`ENV_IDS`)."""
    if env_id == "pointmass":
        return PointMass(max_steps=max_steps or 50)
    if env_id in GYM_MUJOCO:
        return GymMujoco(env_id, max_steps=max_steps or 1000)
    if env_id.startswith("walker-"):
        return DMCWalker(env_id.removeprefix("walker-"), max_steps=max_steps or 1000, seed=seed)
    raise HeadvecError(f"unknown environment {env_id!r}; use one of {', '.join(ENV_IDS)}")


def as_gymnasium(env: Env) -> Any:
    """A gymnasium view of ``env`` (for stable-baselines3), stepping through ``env`` so wrappers see it."""
    gym = require("gymnasium", extra="rl", feature="training a SAC behaviour policy")

    class _Adapter(gym.Env):
        metadata: ClassVar[dict[str, Any]] = {}

        def __init__(self) -> None:
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (env.observation_dim,), np.float32)
            self.action_space = gym.spaces.Box(-1.0, 1.0, (env.action_dim,), np.float32)

        def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
            super().reset(seed=seed)
            return env.reset(seed), {}

        def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
            out = env.step(action)
            return out.observation, out.reward, out.terminated, out.truncated, {}

    return _Adapter()
