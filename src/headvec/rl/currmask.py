"""CurrMask: a masked trajectory model pretrained with a curriculum over masking schemes.

Follows ``agent/mdp.py`` of yaotang23/CurrMask (HEAD d85290f) and its MaskDP parent:

- Tokens: each timestep gives a state token and an action token (separate linear embeddings), laid out
  ``s1, a1, s2, a2, ...`` (``L = 2T``), plus a fixed 1-D sin-cos position embedding divided by 2.
- Encoder (MAE-style): only the visible tokens go through pre-LN bidirectional blocks, then a LayerNorm.
- Decoder: a learned ``[MASK]`` token at the masked positions, per-modality linear decoder embeddings,
  the same positions, more blocks; state head LN-ReLU-Linear, action head LN-ReLU-Linear-Tanh.
- Loss ``total`` (the repo default): MSE over all tokens, state targets L2-normalised per token;
  ``masked``: masked tokens only.
- ``causal=True`` gives the GPT baseline: the same tokens through causal blocks, each state token
  predicting its action and each action token the next state.

Deviation (documented in docs/offline-rl.md): inputs are standardised with the dataset mean/std (the
repo feeds raw states); the L2-normalised target is taken of the standardised state.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from headvec._optional import require
from headvec.errors import HeadvecError
from headvec.rl._checkpoint import load_state, save_state
from headvec.rl.data import TrajectoryDataset
from headvec.rl.envs import Env
from headvec.rl.masking import MASK_RATIOS, Curriculum, block_mask, make_curriculum, random_mask


@dataclass
class MaskedModelConfig:
    state_dim: int
    action_dim: int
    horizon: int = 16  # T timesteps per window = 2T tokens
    d_model: int = 64
    n_heads: int = 2
    n_enc_layers: int = 2
    n_dec_layers: int = 1
    causal: bool = False  # True: the GPT baseline (no decoder, causal attention)
    loss: str = "total"  # "total" (all tokens, the repo default) or "masked"


def sincos_positions(length: int, dim: int) -> torch.Tensor:
    """The fixed 1-D sin-cos embedding ``[length, dim]`` (MAE's ``get_1d_sincos_pos_embed``)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = torch.arange(length, dtype=torch.float64)[:, None] * omega[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()


def _blocks(config: MaskedModelConfig, n: int) -> nn.ModuleList:
    return nn.ModuleList(
        nn.TransformerEncoderLayer(
            config.d_model, config.n_heads, 4 * config.d_model, dropout=0.0, activation="gelu",
            batch_first=True, norm_first=True,
        )
        for _ in range(n)
    )  # fmt: skip


def _head(d: int, out: int, tanh: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.LayerNorm(d), nn.ReLU(), nn.Linear(d, out)]
    return nn.Sequential(*layers, nn.Tanh()) if tanh else nn.Sequential(*layers)


class MaskedTrajectoryModel(nn.Module):
    """MAE-style encoder-decoder over interleaved state/action tokens (or a causal GPT)."""

    def __init__(self, config: MaskedModelConfig) -> None:
        super().__init__()
        self.config = config
        d, length = config.d_model, 2 * config.horizon
        self.state_embed = nn.Linear(config.state_dim, d)
        self.action_embed = nn.Linear(config.action_dim, d)
        self.register_buffer("positions", sincos_positions(length, d) / 2, persistent=False)
        self.encoder = _blocks(config, config.n_enc_layers)
        self.encoder_norm = nn.LayerNorm(d)
        if not config.causal:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
            nn.init.normal_(self.mask_token, std=0.02)
            self.decoder_state_embed = nn.Linear(d, d)
            self.decoder_action_embed = nn.Linear(d, d)
            self.decoder = _blocks(config, config.n_dec_layers)
        self.state_head = _head(d, config.state_dim, tanh=False)
        self.action_head = _head(d, config.action_dim, tanh=True)

    def tokens(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        n, t, _ = states.shape
        x = torch.stack([self.state_embed(states), self.action_embed(actions)], dim=2)  # (N, T, 2, d)
        return x.reshape(n, 2 * t, -1) + self.positions[: 2 * t]  # (N, 2T, d)

    def forward(
        self, states: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted (standardised, L2-normalised) states ``[N, T, S]`` and actions ``[N, T, A]``.

        ``mask`` ``[N, 2T]`` (True = hidden) must hide the same number of tokens in every row; the
        causal model ignores it and predicts each action from its state token, each next state from
        the action token before it (the state prediction at ``t`` is for ``s_{t+1}``).
        """
        x = self.tokens(states, actions)
        n, length, d = x.shape
        if self.config.causal:
            causal = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
            for block in self.encoder:
                x = block(x, src_mask=causal)
            h = self.encoder_norm(x)
            return self.state_head(h[:, 1::2]), self.action_head(h[:, 0::2])
        assert mask is not None, "the masked model needs a mask"
        order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)  # visible positions first
        n_visible = int((~mask[0]).sum())
        keep = order[:, :n_visible]
        h = torch.gather(x, 1, keep[..., None].expand(-1, -1, d))  # (N, visible, d)
        for block in self.encoder:
            h = block(h)
        h = self.encoder_norm(h)
        full = self.mask_token.expand(n, length, d).clone()
        full = full.scatter(1, keep[..., None].expand(-1, -1, d), h)  # (N, 2T, d), [MASK] elsewhere
        y = torch.stack(
            [self.decoder_state_embed(full[:, 0::2]), self.decoder_action_embed(full[:, 1::2])], dim=2
        )
        y = y.reshape(n, length, d) + self.positions[:length]
        for block in self.decoder:
            y = block(y)
        return self.state_head(y[:, 0::2]), self.action_head(y[:, 1::2])

    def loss(
        self, states: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The pretraining loss and its state/action parts (see the module docstring)."""
        pred_states, pred_actions = self(states, actions, mask)
        target_states = F.normalize(states, dim=-1)
        if self.config.causal:
            state_err = ((pred_states[:, :-1] - target_states[:, 1:]) ** 2).mean(-1)
            action_err = ((pred_actions - actions) ** 2).mean(-1)
            state_loss, action_loss = state_err.mean(), action_err.mean()
        else:
            state_err = ((pred_states - target_states) ** 2).mean(-1)  # (N, T)
            action_err = ((pred_actions - actions) ** 2).mean(-1)
            if self.config.loss == "masked":
                m_s, m_a = mask[:, 0::2].float(), mask[:, 1::2].float()
                state_loss = (state_err * m_s).sum() / m_s.sum().clamp(min=1)
                action_loss = (action_err * m_a).sum() / m_a.sum().clamp(min=1)
            else:
                state_loss, action_loss = state_err.mean(), action_err.mean()
        loss = state_loss + action_loss
        return loss, {"state": float(state_loss.detach()), "action": float(action_loss.detach())}


# ----------------------------------------------------------------------------------------------------
# data


class WindowSampler:
    """Samples ``horizon``-step windows (standardised states, actions) from a dataset's episodes."""

    def __init__(self, dataset: TrajectoryDataset, horizon: int, mean: np.ndarray, std: np.ndarray) -> None:
        self.episodes = [e for e in dataset.episodes if len(e) >= horizon]
        if not self.episodes:
            longest = max(len(e) for e in dataset.episodes)
            raise HeadvecError(
                f"no episode has {horizon} steps (longest: {longest}); use a shorter --horizon"
            )
        self.horizon, self.mean, self.std = horizon, mean, std
        starts = np.array([len(e) - horizon + 1 for e in self.episodes], dtype=float)
        self.weights = starts / starts.sum()

    def sample(self, batch: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        states, actions = [], []
        for i in rng.choice(len(self.episodes), size=batch, p=self.weights):
            e = self.episodes[i]
            t = int(rng.integers(0, len(e) - self.horizon + 1))
            states.append((e.observations[t : t + self.horizon] - self.mean) / self.std)
            actions.append(e.actions[t : t + self.horizon])
        return torch.tensor(np.array(states), dtype=torch.float32), torch.tensor(
            np.array(actions), dtype=torch.float32
        )


def state_stats(dataset: TrajectoryDataset) -> tuple[np.ndarray, np.ndarray]:
    observations = np.concatenate([e.observations for e in dataset.episodes])
    return observations.mean(0), observations.std(0) + 1e-3


def split_probe(
    dataset: TrajectoryDataset, fraction: float, seed: int
) -> tuple[TrajectoryDataset, TrajectoryDataset]:
    """Hold out ``fraction`` of the episodes (at least one) for the learning-progress probe."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(dataset.episodes))
    n_probe = max(1, round(fraction * len(order)))
    probe = [dataset.episodes[i] for i in sorted(order[:n_probe])]
    train = [dataset.episodes[i] for i in sorted(order[n_probe:])] or probe
    return TrajectoryDataset(train, dataset.meta), TrajectoryDataset(probe, dataset.meta)


# ----------------------------------------------------------------------------------------------------
# pretraining


@dataclass
class PretrainConfig:
    curriculum: str = "currmask"  # currmask | maskdp | mixed | mixed-prog | mixed-inv | gpt
    steps: int = 3000
    batch_size: int = 64
    lr: float = 3e-4  # the repo uses 1e-4 for 300k steps; a short CPU run needs a larger step
    interval: int = 50  # bandit round / probe every this many steps (the repo: 100 of 300k)
    max_block: int = 20  # capped at L/2 tokens
    probe_batches: int = 4
    probe_on_train: bool = False  # True reproduces the repo, whose "validation" data is the train set
    save_every: int = 500
    seed: int = 0


def _probe_set(
    sampler: WindowSampler, config: PretrainConfig, length: int
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Fixed probe batches: random-token masking at a ratio drawn from the five (as the repo's probe),
    drawn once so that consecutive probe losses differ by learning, not by resampling noise."""
    rng = np.random.default_rng(config.seed + 777)
    generator = torch.Generator().manual_seed(config.seed + 777)
    batches = []
    for _ in range(config.probe_batches):
        states, actions = sampler.sample(max(1, config.batch_size // 4), rng)
        ratio = float(rng.choice(MASK_RATIOS))
        batches.append((states, actions, random_mask(len(states), length, ratio, generator)))
    return batches


@torch.no_grad()
def probe_loss(
    model: MaskedTrajectoryModel, probe: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
) -> float:
    was_training = model.training
    model.eval()
    losses = [float(model.loss(s, a, m)[0]) for s, a, m in probe]
    model.train(was_training)
    return float(np.mean(losses))


def pretrain(
    dataset: TrajectoryDataset,
    out_dir: str | Path,
    config: PretrainConfig,
    model_config: MaskedModelConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Pretrain a masked model (or GPT) on ``dataset``; resumable from ``out_dir`` (kill, rerun, same result).

    Writes ``state.safetensors`` + ``state.json`` every ``save_every`` steps and at the end; the JSON
    holds the configs, the probe-loss curve and (CurrMask) the bandit trace with arm probabilities.
    """
    torch.set_num_threads(1)
    tqdm = require("tqdm").tqdm
    out = Path(out_dir)
    s_dim, a_dim = dataset.episodes[0].observations.shape[1], dataset.episodes[0].actions.shape[1]
    model_config = model_config or MaskedModelConfig(s_dim, a_dim)
    if config.curriculum == "gpt":
        model_config.causal = True
    length = 2 * model_config.horizon
    max_block = max(1, min(config.max_block, length // 2))
    torch.manual_seed(config.seed)
    model = MaskedTrajectoryModel(model_config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    curriculum: Curriculum | None = (
        None if config.curriculum == "gpt" else make_curriculum(config.curriculum, max_block, config.interval)
    )
    train_set, probe_set = (
        (dataset, dataset) if config.probe_on_train else split_probe(dataset, 0.1, config.seed)
    )
    mean, std = state_stats(train_set)
    sampler = WindowSampler(train_set, model_config.horizon, mean, std)
    probe = _probe_set(WindowSampler(probe_set, model_config.horizon, mean, std), config, length)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    log: dict[str, Any] = {"probe": [], "arms": []}
    saved = load_state(out, {"model": model}, {"adam": optimizer}, generator, rng)
    step = 0
    if saved is not None:
        step, log = saved["step"], saved["log"]
        if curriculum is not None:
            curriculum.load_state_dict(saved["curriculum"])
    if step == 0 and probe_set is not None and not model_config.causal:
        value = probe_loss(model, probe)
        log["probe"].append([0, value])
        if curriculum is not None:
            curriculum.feedback(0, value)

    def save() -> None:
        save_state(out, {"model": model}, {"adam": optimizer}, generator, rng, {
            "step": step, "log": log, "config": asdict(config), "model_config": asdict(model_config),
            "state_mean": mean.tolist(), "state_std": std.tolist(), "env_id": dataset.meta.get("env_id"),
            "curriculum": curriculum.state_dict() if curriculum is not None else {},
        })  # fmt: skip

    started = time.perf_counter()
    bar = tqdm(total=config.steps, initial=step, desc=f"pretrain {config.curriculum}", disable=not progress)
    while step < config.steps:
        states, actions = sampler.sample(config.batch_size, rng)
        mask = None
        if curriculum is not None:
            block, ratio = curriculum.choose(step, config.steps, rng)
            mask = block_mask(config.batch_size, length, ratio, block, generator)
            log["arms"].append([block, ratio])
        loss, _parts = model.loss(states, actions, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        bar.update(1)
        if step % config.interval == 0:
            value = probe_loss(model, probe) if not model_config.causal else float(loss)
            log["probe"].append([step, value])
            if curriculum is not None:
                curriculum.feedback(step, value)
            bar.set_postfix(loss=f"{float(loss):.4f}", probe=f"{value:.4f}")
        if step % config.save_every == 0 or step == config.steps:
            log["seconds"] = log.get("seconds", 0.0) + time.perf_counter() - started
            started = time.perf_counter()
            save()
    bar.close()
    return {"model": model, "log": log, "mean": mean, "std": std}


def load_pretrained(out_dir: str | Path) -> tuple[MaskedTrajectoryModel, dict[str, Any]]:
    """The model and JSON of a finished (or partial) :func:`pretrain` run."""
    from safetensors.torch import load_file

    out = Path(out_dir)
    if not (out / "state.json").exists():
        raise HeadvecError(f"no pretrained model in {out}; run `headvec rl pretrain` first")
    meta = json.loads((out / "state.json").read_text())
    model = MaskedTrajectoryModel(MaskedModelConfig(**meta["model_config"]))
    tensors = load_file(str(out / "state.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    model.eval()
    return model, meta


# ----------------------------------------------------------------------------------------------------
# downstream: skill prompting and goal-conditioned planning (zero-shot, no fine-tuning)


class Planner:
    """Wraps a pretrained model with its state statistics for in-filling at evaluation time."""

    def __init__(self, model: MaskedTrajectoryModel, mean: np.ndarray, std: np.ndarray) -> None:
        self.model, self.mean, self.std = model, np.asarray(mean), np.asarray(std)
        self.horizon = model.config.horizon

    def _window(
        self, states: list[np.ndarray], actions: list[np.ndarray]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t, s_dim, a_dim = self.horizon, len(self.mean), self.model.config.action_dim
        s, a = np.zeros((1, t, s_dim), np.float32), np.zeros((1, t, a_dim), np.float32)
        for i, x in enumerate(states):
            if x is not None:
                s[0, i] = (x - self.mean) / self.std
        for i, x in enumerate(actions):
            if x is not None:
                a[0, i] = x
        return torch.tensor(s), torch.tensor(a)

    @torch.no_grad()
    def infill(self, states: list[np.ndarray | None], actions: list[np.ndarray | None]) -> np.ndarray:
        """Actions ``[T, A]`` for a window whose given states/actions are visible and the rest masked."""
        states = states + [None] * (self.horizon - len(states))
        actions = actions + [None] * (self.horizon - len(actions))
        s, a = self._window(states, actions)
        mask = torch.tensor([[x is None for pair in zip(states, actions, strict=True) for x in pair]])
        _, pred_actions = self.model(s, a, None if self.model.config.causal else mask)
        return pred_actions[0].numpy()

    def act(self, history: list[tuple[np.ndarray, np.ndarray]], observation: np.ndarray) -> np.ndarray:
        """The action at ``observation`` after ``history`` (kept to the last T/2 steps), future masked."""
        keep = history[-(self.horizon // 2) :] if self.horizon > 1 else []
        states = [s for s, _ in keep] + [observation]
        actions: list[np.ndarray | None] = [a for _, a in keep]
        return self.infill(states, actions)[len(keep)]


def skill_prompting(
    planner: Planner, env: Env, prompts: TrajectoryDataset, *, context: int = 8, horizon: int = 60,
    n_prompts: int = 10, seed: int = 0,
) -> list[dict[str, float]]:  # fmt: skip
    """Zero-shot skill prompting: show ``context`` (s, a) steps of a behaviour-policy trajectory, reset
    the simulator to the state after them, roll out ``horizon`` steps acting with the in-filled action.
    Returns per prompt the model's return and the source trajectory's return over the same steps."""
    rng = np.random.default_rng(seed)
    episodes = [e for e in prompts.episodes if len(e) > context + 1]
    if not episodes:
        raise HeadvecError(f"no prompt episode is longer than the context ({context} steps)")
    results = []
    for _ in range(n_prompts):
        e = episodes[int(rng.integers(len(episodes)))]
        t0 = int(rng.integers(0, len(e) - context))
        history = [(e.observations[t], e.actions[t]) for t in range(t0, t0 + context)]
        env.reset(int(rng.integers(1 << 30)))
        observation = env.set_state(e.states[t0 + context])
        total, steps = 0.0, 0
        for _ in range(horizon):
            action = planner.act(history, observation)
            step = env.step(action)
            history.append((observation, action))
            observation, total, steps = step.observation, total + step.reward, steps + 1
            if step.terminated:
                break
        source = float(e.rewards[t0 + context : t0 + context + horizon].sum())
        results.append({"return": total, "source_return": source, "steps": steps})
    return results


def goal_planning(
    planner: Planner, env: Env, goals_from: TrajectoryDataset, *, n_goals: int = 5, gap: int = 3,
    n_trials: int = 10, seed: int = 0,
) -> list[dict[str, float]]:  # fmt: skip
    """Zero-shot goal-conditioned planning: the start state and ``n_goals`` states ``gap`` steps apart
    (taken from a behaviour trajectory) are visible, every action is in-filled in one shot and executed
    open-loop from the start state. Metric: for each goal, the smallest L2 distance between a visited
    observation and the goal, averaged over goals (lower is better).

    The causal GPT cannot see goals; it acts closed-loop on the real observations (a goal-blind policy).
    """
    span = n_goals * gap
    if span >= planner.horizon:
        raise HeadvecError(f"{n_goals} goals {gap} steps apart need a window longer than {planner.horizon}")
    rng = np.random.default_rng(seed)
    episodes = [e for e in goals_from.episodes if len(e) > span]
    if not episodes:
        raise HeadvecError(f"no episode is longer than {span} steps for goal planning")
    results = []
    for _ in range(n_trials):
        e = episodes[int(rng.integers(len(episodes)))]
        t0 = int(rng.integers(0, len(e) - span + 1))
        goal_steps = [gap * (k + 1) for k in range(n_goals)]
        goals = [e.observations[t0 + g] for g in goal_steps]
        env.reset(int(rng.integers(1 << 30)))
        observation = env.set_state(e.states[t0])
        visited = [observation]
        if planner.model.config.causal:
            history: list[tuple[np.ndarray, np.ndarray]] = []
            for _ in range(span):
                action = planner.act(history, observation)
                history.append((observation, action))
                step = env.step(action)
                observation = step.observation
                visited.append(observation)
                if step.terminated:
                    break
        else:
            states: list[np.ndarray | None] = [None] * (span + 1)
            states[0] = observation
            for g, goal in zip(goal_steps, goals, strict=True):
                states[g] = goal
            actions = planner.infill(states, [])[:span]
            for action in actions:
                step = env.step(action)
                visited.append(step.observation)
                if step.terminated:
                    break
        v = np.array(visited)
        distances = [float(np.min(np.linalg.norm(v - g, axis=1))) for g in goals]
        results.append({"distance": float(np.mean(distances)), "per_goal": distances})
    return results
