"""PDT: future-conditioned unsupervised pretraining for Decision Transformer, and its baselines.

Follows zhxieml/PDT (HEAD 292f38b, built on facebookresearch/online-dt):

- Policy: a causal transformer over ``(s_t, z_t, a_t)`` triples (linear embeddings + LayerNorm, no
  position embeddings), the action read from the ``z_t`` token through a tanh-squashed diagonal Gaussian
  (log-std in [-5, 2]), with ODT's learned entropy temperature (target entropy ``-|A|``).
- Future encoder: a causal transformer over the future ``(s, a)`` window giving a diagonal Gaussian
  ``q(z | future)`` (16-d, log-std in [-10, 2]).
- Prior ``p(z | s_t)`` and return head ``f(R | s_t, z_t)``: diagonal Gaussians on ReLU(embeddings).
- Pretraining (reward-free): ``NLL(a) - alpha H + beta KL(q || N(0, I)) + KL(sg q || p)``.
  Fine-tuning adds ``-log f(R_t | s_t, z_t ~ q)`` on returns-to-go scaled by ``reward_scale``.
- Online: the buffer starts empty, a warm-up with the pretrained policy, a return-head warm-up, then per
  iteration one rollout with the return-maximising z (``n_z_samples`` from the prior) and
  ``updates_per_iter`` updates on windows sampled in proportion to trajectory return.

``conditioning="return"`` turns the same backbone into the ODT/DT baseline: ``(R_t, s_t, a_t)`` tokens,
the action read from the state token, trained on reward-labelled offline data; online, its buffer
starts with the offline trajectories (as in ODT).

Index alignment (``future_alignment``): ``"repo"`` reproduces the official code, where history step j
gets the encoder output at position j of the future window that starts after the context, so the last
step (the one used when acting) sees the whole future and earlier steps see prefixes of it;
``"per-step"`` gives every step the summary of its own next ``future_len`` steps (the paper's
``z ~ g(tau_{t+1:t+F})``), at ``context`` times the encoder cost.
"""

from __future__ import annotations

import json
import math
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
from headvec.rl.data import Episode, TrajectoryDataset, normalised_score
from headvec.rl.envs import Env, make_env


@dataclass
class PDTConfig:
    state_dim: int
    action_dim: int
    conditioning: str = "future"  # "future" (PDT) or "return" (ODT / DT baseline)
    context: int = 10  # K history steps (paper 20)
    future_len: int = 10  # future window (paper 20)
    eval_context: int = 5
    z_dim: int = 16
    d_model: int = 64  # paper 512
    n_layers: int = 2  # paper 4
    n_heads: int = 2
    dropout: float = 0.1
    kl_weight: float = 1.0  # beta
    reward_scale: float = 0.001
    future_alignment: str = "repo"  # "repo" or "per-step"


class CausalTransformer(nn.Module):
    def __init__(self, d: int, n_layers: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d, n_heads, 4 * d, dropout, activation="relu", batch_first=True, norm_first=True
            )
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
        for block in self.blocks:
            x = block(x, src_mask=causal)
        return self.norm(x)


def gaussian_kl(
    mu_q: torch.Tensor, logstd_q: torch.Tensor, mu_p: torch.Tensor, logstd_p: torch.Tensor
) -> torch.Tensor:
    """KL(N(mu_q, s_q) || N(mu_p, s_p)) summed over the last dim."""
    var_q, var_p = torch.exp(2 * logstd_q), torch.exp(2 * logstd_p)
    return (logstd_p - logstd_q + (var_q + (mu_q - mu_p) ** 2) / (2 * var_p) - 0.5).sum(-1)


def gaussian_nll(x: torch.Tensor, mu: torch.Tensor, logstd: torch.Tensor) -> torch.Tensor:
    return (0.5 * ((x - mu) / logstd.exp()) ** 2 + logstd + 0.5 * math.log(2 * math.pi)).sum(-1)


def tanh_gaussian_log_prob(action: torch.Tensor, mu: torch.Tensor, logstd: torch.Tensor) -> torch.Tensor:
    """log pi(a) of a tanh-squashed Gaussian; actions are clamped inside (-1, 1) to avoid atanh overflow."""
    action = action.clamp(-1 + 1e-6, 1 - 1e-6)
    pre = torch.atanh(action)
    return -gaussian_nll(pre, mu, logstd) - torch.log(1 - action**2 + 1e-6).sum(-1)


class SequencePolicy(nn.Module):
    """PDT (``conditioning="future"``) or ODT/DT (``"return"``) over interleaved triples."""

    def __init__(self, config: PDTConfig) -> None:
        super().__init__()
        self.config = config
        c, d = config, config.d_model
        if c.conditioning not in ("future", "return"):
            raise HeadvecError(f"unknown conditioning {c.conditioning!r}; use 'future' or 'return'")
        if c.future_alignment not in ("repo", "per-step"):
            raise HeadvecError(f"unknown future_alignment {c.future_alignment!r}; use 'repo' or 'per-step'")
        self.embed_state = nn.Linear(c.state_dim, d)
        self.embed_action = nn.Linear(c.action_dim, d)
        self.embed_cond = nn.Linear(c.z_dim if c.conditioning == "future" else 1, d)
        self.embed_ln = nn.LayerNorm(d)
        self.transformer = CausalTransformer(d, c.n_layers, c.n_heads, c.dropout)
        self.action_mu = nn.Linear(d, c.action_dim)
        self.action_logstd = nn.Linear(d, c.action_dim)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(0.1)))
        if c.conditioning == "future":
            self.future_state = nn.Linear(c.state_dim, d)
            self.future_action = nn.Linear(c.action_dim, d)
            self.future_ln = nn.LayerNorm(d)
            self.future_encoder = CausalTransformer(d, c.n_layers, c.n_heads, c.dropout)
            self.future_mu = nn.Linear(d, c.z_dim)
            self.future_logstd = nn.Linear(d, c.z_dim)
            self.prior_mu = nn.Linear(d, c.z_dim)
            self.prior_logstd = nn.Linear(d, c.z_dim)
            self.return_mu = nn.Linear(2 * d, 1)
            self.return_logstd = nn.Linear(2 * d, 1)

    # -- pieces
    def prior(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.embed_state(states))
        return self.prior_mu(h), self.prior_logstd(h).clamp(-10, 2)

    def return_head(self, states: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(torch.cat([self.embed_state(states), self.embed_cond(z)], dim=-1))
        return self.return_mu(h), self.return_logstd(h).clamp(-5, 2)

    def encode_future(self, states: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | future) at every future position ``[N, F, z]`` (position j summarises steps 0..j)."""
        n, f, _ = states.shape
        x = torch.stack([self.future_state(states), self.future_action(actions)], dim=2).reshape(n, 2 * f, -1)
        h = self.future_encoder(self.future_ln(x))[:, 1::2]  # outputs at the action tokens
        return self.future_mu(h), self.future_logstd(h).clamp(-10, 2)

    def action_distribution(
        self, states: torch.Tensor, actions: torch.Tensor, cond: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-std ``[N, K, A]`` of the action at each step (future: cond = z; return: cond = R)."""
        n, k, _ = states.shape
        s, c, a = self.embed_state(states), self.embed_cond(cond), self.embed_action(actions)
        order = (s, c, a) if self.config.conditioning == "future" else (c, s, a)
        x = self.embed_ln(torch.stack(order, dim=2).reshape(n, 3 * k, -1))
        h = self.transformer(x).reshape(n, k, 3, -1)[:, :, 1]  # the z token (future) / state token (return)
        return self.action_mu(h), self.action_logstd(h).clamp(-5, 2)


@dataclass
class Batch:
    states: torch.Tensor  # [N, K, S] (standardised)
    actions: torch.Tensor  # [N, K, A]
    valid: torch.Tensor  # [N, K] False on left padding
    rtg: torch.Tensor  # [N, K] scaled returns-to-go
    future_states: torch.Tensor  # [N, K, F, S] per step (per-step) or [N, 1, F, S] (repo)
    future_actions: torch.Tensor


class Sampler:
    """Windows of ``context`` steps ending anywhere in an episode (left-padded), with their futures."""

    def __init__(self, config: PDTConfig, mean: np.ndarray, std: np.ndarray) -> None:
        self.config, self.mean, self.std = config, mean, std

    def sample(
        self, episodes: list[Episode], weights: np.ndarray, batch: int, rng: np.random.Generator
    ) -> Batch:
        c = self.config
        k, f, s_dim, a_dim = c.context, c.future_len, c.state_dim, c.action_dim
        per_step = c.future_alignment == "per-step"
        n_fut = k if per_step else 1
        out = {
            "states": np.zeros((batch, k, s_dim), np.float32),
            "actions": np.zeros((batch, k, a_dim), np.float32),
            "valid": np.zeros((batch, k), bool),
            "rtg": np.zeros((batch, k), np.float32),
            "fs": np.zeros((batch, n_fut, f, s_dim), np.float32),
            "fa": np.zeros((batch, n_fut, f, a_dim), np.float32),
        }
        for b, i in enumerate(rng.choice(len(episodes), size=batch, p=weights)):
            e = episodes[i]
            obs = (e.observations[:-1] - self.mean) / self.std
            end = int(rng.integers(1, len(e) + 1))  # the window is steps [end-k, end)
            start = max(0, end - k)
            pad = k - (end - start)
            out["states"][b, pad:] = obs[start:end]
            out["actions"][b, pad:] = e.actions[start:end]
            out["valid"][b, pad:] = True
            rtg = np.cumsum(e.rewards[::-1])[::-1] * c.reward_scale
            out["rtg"][b, pad:] = rtg[start:end]
            firsts = [start + j - pad + 1 for j in range(k)] if per_step else [end]
            for slot, first in enumerate(firsts):
                if first < 0:
                    continue
                seg = slice(first, min(first + f, len(e)))
                n = seg.stop - seg.start
                if n > 0:
                    out["fs"][b, slot, :n] = obs[seg]
                    out["fa"][b, slot, :n] = e.actions[seg]
        t = torch.tensor
        return Batch(
            t(out["states"]), t(out["actions"]), t(out["valid"]), t(out["rtg"]), t(out["fs"]), t(out["fa"])
        )


def posterior(model: SequencePolicy, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """q(z | future) for each history step ``[N, K, z]`` under the configured index alignment."""
    n, k = batch.states.shape[:2]
    f = batch.future_states.shape[2]
    if model.config.future_alignment == "per-step":
        mu, logstd = model.encode_future(
            batch.future_states.reshape(n * k, f, -1), batch.future_actions.reshape(n * k, f, -1)
        )
        return mu[:, -1].reshape(n, k, -1), logstd[:, -1].reshape(n, k, -1)
    mu, logstd = model.encode_future(batch.future_states[:, 0], batch.future_actions[:, 0])  # [N, F, z]
    # repo alignment: history step j <- future position j, windows right-aligned so the last step gets F-1
    index = torch.arange(k) - k + f
    index = index.clamp(min=0)
    return mu[:, index], logstd[:, index]


def losses(model: SequencePolicy, batch: Batch, with_return: bool) -> tuple[torch.Tensor, dict[str, float]]:
    """The PDT (or ODT) training loss and its parts, averaged over the valid (unpadded) steps."""
    valid = batch.valid.float()
    denom = valid.sum().clamp(min=1)
    parts: dict[str, torch.Tensor] = {}
    if model.config.conditioning == "future":
        mu_q, logstd_q = posterior(model, batch)
        z = mu_q + logstd_q.exp() * torch.randn_like(mu_q)
        mu_a, logstd_a = model.action_distribution(batch.states, batch.actions, z)
        zeros = torch.zeros_like(mu_q)
        parts["kl_standard"] = (gaussian_kl(mu_q, logstd_q, zeros, zeros) * valid).sum() / denom
        mu_p, logstd_p = model.prior(batch.states)
        parts["kl_prior"] = (
            gaussian_kl(mu_q.detach(), logstd_q.detach(), mu_p, logstd_p) * valid
        ).sum() / denom
        if with_return:
            mu_r, logstd_r = model.return_head(batch.states, z)
            parts["return_nll"] = (gaussian_nll(batch.rtg[..., None], mu_r, logstd_r) * valid).sum() / denom
    else:
        mu_a, logstd_a = model.action_distribution(batch.states, batch.actions, batch.rtg[..., None])
    log_prob = tanh_gaussian_log_prob(batch.actions, mu_a, logstd_a)
    parts["action_nll"] = -(log_prob * valid).sum() / denom
    # entropy of the squashed Gaussian, one-sample estimate (as ODT)
    sample = torch.tanh(mu_a + logstd_a.exp() * torch.randn_like(mu_a))
    entropy = -(tanh_gaussian_log_prob(sample, mu_a, logstd_a) * valid).sum() / denom
    parts["entropy"] = entropy
    alpha = model.log_temperature.exp().detach()
    loss = parts["action_nll"] - alpha * entropy
    if model.config.conditioning == "future":
        loss = loss + model.config.kl_weight * parts["kl_standard"] + parts["kl_prior"]
        if with_return:
            loss = loss + parts["return_nll"]
    return loss, {k: float(v.detach()) for k, v in parts.items()}


def temperature_loss(model: SequencePolicy, entropy: float) -> torch.Tensor:
    return model.log_temperature.exp() * (entropy + model.config.action_dim)  # target entropy = -|A|


class Agent:
    """Acts with a :class:`SequencePolicy`, keeping the last ``eval_context`` (s, cond, a) steps."""

    def __init__(
        self,
        model: SequencePolicy,
        mean: np.ndarray,
        std: np.ndarray,
        *,
        mode: str,
        target_return: float = 0.0,
        n_z_samples: int = 256,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.model, self.mean, self.std, self.mode = model, mean, std, mode  # mode: prior | best-return | rtg
        self.target_return, self.n_z = target_return, n_z_samples
        self.rng = rng or np.random.default_rng(0)

    def reset(self) -> None:
        self.states: list[np.ndarray] = []
        self.conds: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.rtg = self.target_return * self.model.config.reward_scale

    @torch.no_grad()
    def act(self, observation: np.ndarray, deterministic: bool) -> np.ndarray:
        c = self.model.config
        s = torch.tensor((observation - self.mean) / self.std, dtype=torch.float32)
        if c.conditioning == "future":
            mu_p, logstd_p = self.model.prior(s[None])
            if self.mode == "best-return":
                zs = mu_p + logstd_p.exp() * torch.randn(self.n_z, c.z_dim)
                mu_r, _ = self.model.return_head(s[None].expand(self.n_z, -1), zs)
                cond = zs[int(torch.argmax(mu_r[:, 0]))].numpy()
            else:
                cond = (mu_p + logstd_p.exp() * torch.randn_like(mu_p))[0].numpy()
        else:
            cond = np.array([self.rtg], np.float32)
        self.states.append(s.numpy())
        self.conds.append(cond)
        self.actions.append(np.zeros(c.action_dim, np.float32))
        k = c.eval_context
        states = torch.tensor(np.array(self.states[-k:]))[None]
        conds = torch.tensor(np.array(self.conds[-k:]))[None]
        actions = torch.tensor(np.array(self.actions[-k:]))[None]
        mu, logstd = self.model.action_distribution(states, actions, conds)
        mu, logstd = mu[0, -1], logstd[0, -1]
        pre = mu if deterministic else mu + logstd.exp() * torch.randn_like(mu)
        action = torch.tanh(pre).numpy()
        self.actions[-1] = action.astype(np.float32)
        return action

    def observe_reward(self, reward: float) -> None:
        self.rtg -= reward * self.model.config.reward_scale


@dataclass
class TrainConfig:
    pretrain_steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-4 * 5  # the repo: LAMB 1e-4 with 10k warm-up steps over 50k updates; AdamW here
    weight_decay: float = 5e-4
    warmup_steps: int = 200
    grad_clip: float = 0.25
    online_samples: int = 10_000  # online budget in environment steps, warm-up included (paper: 200k)
    online_warmup_samples: int = 2_000  # paper: 10k
    return_warmup_updates: int = 300  # paper: 5 x 300
    updates_per_iter: int = 50  # paper: 300
    buffer_trajectories: int = 1000
    eval_every_samples: int = 2_000
    eval_episodes: int = 3
    n_z_samples: int = 256
    target_return_scale: float = 1.0  # ODT target return = this x the best offline return
    seed: int = 0
    save_every: int = 500


def _optimizer(
    model: SequencePolicy, cfg: TrainConfig
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    params = [p for n, p in model.named_parameters() if n != "log_temperature"]
    main = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    temperature = torch.optim.Adam([model.log_temperature], lr=1e-4)
    return main, temperature


def _update(model: SequencePolicy, opt: torch.optim.Optimizer, temp_opt: torch.optim.Optimizer, batch: Batch,
            cfg: TrainConfig, with_return: bool, step: int) -> dict[str, float]:  # fmt: skip
    for group in opt.param_groups:  # linear warm-up
        group["lr"] = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
    loss, parts = losses(model, batch, with_return)
    opt.zero_grad()
    loss.backward()
    # clip the policy's gradients only: log_temperature has its own optimiser (and a stale gradient here)
    torch.nn.utils.clip_grad_norm_([p for group in opt.param_groups for p in group["params"]], cfg.grad_clip)
    opt.step()
    temp_opt.zero_grad()
    temperature_loss(model, parts["entropy"]).backward()
    temp_opt.step()
    return parts


def _weights(episodes: list[Episode], by: str) -> np.ndarray:
    if by == "length":
        w = np.array([len(e) for e in episodes], float)
    else:  # by return, shifted to be positive
        r = np.array([e.episode_return for e in episodes], float)
        w = r - r.min() + 1e-3 * (abs(r).max() + 1)
    return w / w.sum()


def _stats(dataset: TrajectoryDataset) -> tuple[np.ndarray, np.ndarray]:
    obs = np.concatenate([e.observations for e in dataset.episodes])
    return obs.mean(0), obs.std(0) + 1e-3


def evaluate(agent: Agent, env: Env, n: int, seed: int) -> list[float]:
    returns = []
    for i in range(n):
        returns.append(_run(agent, env, seed + i, deterministic=True).episode_return)
    return returns


def _run(agent: Agent, env: Env, seed: int, deterministic: bool) -> Episode:
    """One episode; ODT's return-to-go is decremented by each reward."""
    agent.reset()
    observations, actions, rewards, states = [env.reset(seed)], [], [], [env.get_state()]
    terminated = False
    for _ in range(env.max_steps):
        action = agent.act(observations[-1], deterministic)
        step = env.step(action)
        agent.observe_reward(step.reward)
        actions.append(action.astype(np.float32))
        rewards.append(step.reward)
        observations.append(step.observation)
        states.append(env.get_state())
        if step.terminated or step.truncated:
            terminated = step.terminated
            break
    return Episode(np.array(observations), np.array(actions), np.array(rewards, np.float32), np.array(states),
                   terminated, seed)  # fmt: skip


def run(
    method: str,
    dataset: TrajectoryDataset,
    out_dir: str | Path,
    cfg: TrainConfig,
    model_config: dict[str, Any] | None = None,
    references: dict[str, float] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Pretrain offline then fine-tune online: ``method`` = ``pdt`` or ``odt`` (``dt`` = ODT's offline
    model, evaluated without online fine-tuning). Resumable: the offline phase from ``out_dir/pretrain``,
    the online phase restarts from the saved pretrained model (its results are written as they come).

    Returns and writes ``curve.json``: (online samples, mean eval return, normalised score) rows.
    """
    torch.set_num_threads(1)
    tqdm = require("tqdm").tqdm
    if method not in ("pdt", "odt", "dt"):
        raise HeadvecError(f"unknown method {method!r}; use pdt, odt or dt")
    out = Path(out_dir)
    env_id = dataset.meta.get("env_id", "pointmass")
    s_dim, a_dim = dataset.episodes[0].observations.shape[1], dataset.episodes[0].actions.shape[1]
    conditioning = "future" if method == "pdt" else "return"
    config = PDTConfig(s_dim, a_dim, conditioning=conditioning, **(model_config or {}))
    torch.manual_seed(cfg.seed)
    model = SequencePolicy(config)
    opt, temp_opt = _optimizer(model, cfg)
    mean, std = _stats(dataset)
    sampler = Sampler(config, mean, std)
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    offline = [e for e in dataset.episodes if len(e) > 0]
    weights = _weights(offline, "length")
    pre_dir = out / "pretrain"
    saved = load_state(pre_dir, {"model": model}, {"main": opt, "temperature": temp_opt}, generator, rng)
    step = saved["step"] if saved else 0
    log: dict[str, Any] = saved["log"] if saved else {"pretrain": []}
    started = time.perf_counter()
    bar = tqdm(total=cfg.pretrain_steps, initial=step, desc=f"{method} pretrain", disable=not progress)
    while step < cfg.pretrain_steps:
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout/reparameterisation noise, resumable
        parts = _update(
            model, opt, temp_opt, sampler.sample(offline, weights, cfg.batch_size, rng), cfg, False, step
        )
        step += 1
        bar.update(1)
        if step % 100 == 0:
            log["pretrain"].append([step, parts])
            bar.set_postfix(nll=f"{parts['action_nll']:.3f}")
        if step % cfg.save_every == 0 or step == cfg.pretrain_steps:
            log["pretrain_seconds"] = log.get("pretrain_seconds", 0.0) + time.perf_counter() - started
            started = time.perf_counter()
            save_state(pre_dir, {"model": model}, {"main": opt, "temperature": temp_opt}, generator, rng,
                       {"step": step, "log": log, "config": asdict(config), "train": asdict(cfg),
                        "mean": mean.tolist(), "std": std.tolist(), "env_id": env_id})  # fmt: skip
    bar.close()

    env = make_env(env_id, seed=cfg.seed, max_steps=dataset.meta.get("max_steps"))
    best_offline = max(e.episode_return for e in offline)
    agent = Agent(
        model,
        mean,
        std,
        mode="prior" if method == "pdt" else "rtg",
        target_return=cfg.target_return_scale * best_offline,
        n_z_samples=cfg.n_z_samples,
        rng=rng,
    )
    curve_path = out / "curve.json"

    def record(samples: int, curve: list) -> None:
        model.eval()
        returns = evaluate(agent, env, cfg.eval_episodes, seed=90_000)
        model.train()
        score = float(np.mean(normalised_score(np.array(returns), references))) if references else None
        curve.append(
            {"samples": samples, "return": float(np.mean(returns)), "returns": returns, "score": score}
        )
        curve_path.write_text(
            json.dumps({"method": method, "seed": cfg.seed, "env_id": env_id, "curve": curve}, indent=1)
        )

    curve: list[dict[str, Any]] = []
    record(0, curve)
    if method == "dt" or cfg.online_samples <= 0:  # offline only
        return {"curve": curve, "model": model}

    # online fine-tuning
    buffer: list[Episode] = (
        [] if method == "pdt" else list(offline)
    )  # PDT starts empty, ODT with the offline data
    samples = 0
    episode_seed = 1_000_000 * (cfg.seed + 1)
    bar = tqdm(total=cfg.online_samples, desc=f"{method} online", unit="step", disable=not progress)
    while samples < cfg.online_warmup_samples:  # warm-up with the pretrained policy (sampled actions)
        e = _run(agent, env, episode_seed, deterministic=False)
        episode_seed += 1
        buffer.append(e)
        samples += len(e)
        bar.update(len(e))
    if method == "pdt":
        head = [p for n, p in model.named_parameters() if n.startswith("return_")]
        head_opt = torch.optim.Adam(head, lr=1e-3)
        w = _weights(buffer, "return")
        for _ in range(cfg.return_warmup_updates):  # only the return head learns here
            batch = sampler.sample(buffer, w, cfg.batch_size, rng)
            with torch.no_grad():
                mu_q, logstd_q = posterior(model, batch)
                z = mu_q + logstd_q.exp() * torch.randn_like(mu_q)
            mu_r, logstd_r = model.return_head(batch.states, z)
            nll = (gaussian_nll(batch.rtg[..., None], mu_r, logstd_r) * batch.valid).sum() / batch.valid.sum()
            head_opt.zero_grad()
            nll.backward()
            head_opt.step()
        agent.mode = "best-return"
    next_eval = cfg.eval_every_samples
    update_step = 0
    while samples < cfg.online_samples:
        e = _run(agent, env, episode_seed, deterministic=False)
        episode_seed += 1
        buffer.append(e)
        buffer = buffer[-cfg.buffer_trajectories :]
        samples += len(e)
        bar.update(len(e))
        w = _weights(buffer, "return")
        for _ in range(cfg.updates_per_iter):
            _update(model, opt, temp_opt, sampler.sample(buffer, w, cfg.batch_size, rng), cfg,
                    method == "pdt", cfg.warmup_steps + update_step)  # fmt: skip
            update_step += 1
        if samples >= next_eval:
            record(samples, curve)
            bar.set_postfix(ret=f"{curve[-1]['return']:.1f}")
            next_eval += cfg.eval_every_samples
    bar.close()
    if curve[-1]["samples"] != samples:
        record(samples, curve)
    from safetensors.torch import save_file

    # the fine-tuned policy, to inspect or roll out again (the offline model stays in pretrain/)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "finetuned.safetensors"))
    (out / "finetuned.json").write_text(
        json.dumps(
            {
                "config": asdict(config),
                "mean": mean.tolist(),
                "std": std.tolist(),
                "method": method,
                "samples": samples,
            }
        )
    )
    return {"curve": curve, "model": model}


def sac_from_scratch(
    env_id: str,
    out_dir: str | Path,
    online_samples: int,
    eval_every: int,
    seed: int,
    references: dict[str, float] | None = None,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """The SAC-from-scratch baseline (stable-baselines3) on the same online budget; resumable."""
    from headvec.rl.data import train_sac

    out = Path(out_dir)
    log = train_sac(env_id, out, online_samples, eval_every, seed=seed, eval_episodes=3, max_steps=max_steps)
    curve = [{"samples": c["steps"], "return": c["eval_return"],
              "score": float(normalised_score(c["eval_return"], references)) if references else None}
             for c in log["checkpoints"]]  # fmt: skip
    (out / "curve.json").write_text(
        json.dumps({"method": "sac", "seed": seed, "env_id": env_id, "curve": curve}, indent=1)
    )
    return {"curve": curve}
