"""The comparisons in docs/offline-rl.md: CurrMask vs its baselines, PDT vs ODT/DT/SAC, at CPU scale.

Each run (method x seed) writes into its own directory and is skipped when its result file exists, so a
killed comparison resumes where it stopped. Summaries are mean and 95 % bootstrap CI over seeds
(:func:`headvec.stats.bootstrap_ci`), written as JSON + a markdown table + PNG plots.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headvec._optional import require
from headvec.errors import HeadvecError
from headvec.rl.data import TrajectoryDataset, concat
from headvec.stats import bootstrap_ci


@dataclass
class CurrMaskPreset:
    horizon: int
    d_model: int
    steps: int
    batch_size: int
    interval: int
    context: int
    prompt_horizon: int
    n_prompts: int
    n_goals: int
    goal_gap: int
    n_goal_trials: int


CURRMASK_PRESETS = {
    # seconds on the point mass (tests, CI)
    "tiny": CurrMaskPreset(8, 32, 60, 16, 5, 3, 10, 3, 3, 2, 3),
    # the documented CPU default (dm_control walker): T = 16 steps (32 tokens), d 64, 2+1 layers
    "cpu": CurrMaskPreset(16, 64, 1000, 64, 20, 8, 60, 10, 5, 3, 20),
    # the point-mass substitute (a competent scripted expert; 50-step episodes)
    "pointmass": CurrMaskPreset(16, 64, 500, 64, 10, 8, 30, 10, 5, 3, 20),
}


def _summary(values: list[float]) -> dict[str, float]:
    mean, low, high = bootstrap_ci(values)
    return {"mean": mean, "low": low, "high": high, "n": len(values)}


def currmask_compare(
    data_dir: str | Path,
    out_dir: str | Path,
    methods: list[str],
    seeds: list[int],
    preset: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Pretrain each method on ``replay.npz`` (+ ``random.npz``), then evaluate zero-shot skill prompting
    and goal planning with prompts/goals from ``expert.npz`` (other seeds than the pretraining data)."""
    from headvec.rl.currmask import (
        MaskedModelConfig,
        Planner,
        PretrainConfig,
        goal_planning,
        load_pretrained,
        pretrain,
        skill_prompting,
    )
    from headvec.rl.envs import make_env

    if preset not in CURRMASK_PRESETS:
        raise HeadvecError(f"unknown preset {preset!r}; use one of {', '.join(CURRMASK_PRESETS)}")
    p = CURRMASK_PRESETS[preset]
    data_dir, out = Path(data_dir), Path(out_dir)
    train = concat(
        [TrajectoryDataset.load(data_dir / "replay.npz"), TrajectoryDataset.load(data_dir / "random.npz")]
    )
    expert = TrajectoryDataset.load(data_dir / "expert.npz")
    env_id = train.meta["env_id"]
    s_dim, a_dim = train.episodes[0].observations.shape[1], train.episodes[0].actions.shape[1]
    for method in methods:
        for seed in seeds:
            run_dir = out / method / f"seed{seed}"
            result_path = run_dir / "result.json"
            if result_path.exists():
                continue
            started = time.perf_counter()
            if method == "random":  # the floor: uniform random actions from the same states and prompts
                planner, meta = RandomActions(a_dim, p.horizon, seed), {"log": {"probe": []}}
            else:
                model_config = MaskedModelConfig(s_dim, a_dim, horizon=p.horizon, d_model=p.d_model)
                config = PretrainConfig(
                    curriculum=method, steps=p.steps, batch_size=p.batch_size, interval=p.interval, seed=seed
                )
                pretrain(train, run_dir, config, model_config, progress=progress)
                model, meta = load_pretrained(run_dir)
                planner = Planner(model, meta["state_mean"], meta["state_std"])
            env = make_env(env_id, seed=seed, max_steps=train.meta.get("max_steps"))
            prompts = skill_prompting(
                planner,
                env,
                expert,
                context=p.context,
                horizon=p.prompt_horizon,
                n_prompts=p.n_prompts,
                seed=1000 + seed,
            )
            goals = goal_planning(
                planner,
                env,
                expert,
                n_goals=p.n_goals,
                gap=p.goal_gap,
                n_trials=p.n_goal_trials,
                seed=2000 + seed,
            )
            result = _currmask_result(method, seed, env_id, preset, prompts, goals, meta, started)
            result_path.parent.mkdir(parents=True, exist_ok=True)
            result_path.write_text(json.dumps(result, indent=1))
    return summarise_currmask(out, methods, seeds)


class RandomActions:
    """Stands in for a planner: uniform random actions (the floor of both evaluations)."""

    def __init__(self, action_dim: int, horizon: int, seed: int) -> None:
        from types import SimpleNamespace

        self.rng, self.action_dim, self.horizon = np.random.default_rng(seed), action_dim, horizon
        self.model = SimpleNamespace(config=SimpleNamespace(causal=False))

    def act(self, history: list, observation: np.ndarray) -> np.ndarray:
        return self.rng.uniform(-1, 1, self.action_dim).astype(np.float32)

    def infill(self, states: list, actions: list) -> np.ndarray:
        return self.rng.uniform(-1, 1, (self.horizon, self.action_dim)).astype(np.float32)


def _currmask_result(
    method: str, seed: int, env_id: str, preset: str, prompts: list, goals: list, meta: dict, started: float
) -> dict[str, Any]:
    return {
        "method": method,
        "seed": seed,
        "env_id": env_id,
        "preset": preset,
        "skill_return": float(np.mean([r["return"] for r in prompts])),
        "source_return": float(np.mean([r["source_return"] for r in prompts])),
        "goal_distance": float(np.mean([g["distance"] for g in goals])),
        "final_probe_loss": meta["log"]["probe"][-1][1] if meta["log"]["probe"] else None,
        "pretrain_seconds": meta["log"].get("seconds"),
        "seconds": time.perf_counter() - started,
        "prompts": prompts,
        "goals": goals,
    }


def summarise_currmask(out_dir: str | Path, methods: list[str], seeds: list[int]) -> dict[str, Any]:
    out = Path(out_dir)
    rows: dict[str, Any] = {}
    for method in methods:
        results = [
            json.loads((out / method / f"seed{s}" / "result.json").read_text())
            for s in seeds
            if (out / method / f"seed{s}" / "result.json").exists()
        ]
        if not results:
            continue
        rows[method] = {
            "skill_return": _summary([r["skill_return"] for r in results]),
            "goal_distance": _summary([r["goal_distance"] for r in results]),
            "source_return": float(np.mean([r["source_return"] for r in results])),
            "minutes": float(np.mean([r["seconds"] for r in results]) / 60),
            "seeds": [r["seed"] for r in results],
        }
    # paired differences against CurrMask (same seeds = same prompts and goals)
    if "currmask" in rows:
        base = {
            s: json.loads((out / "currmask" / f"seed{s}" / "result.json").read_text())
            for s in rows["currmask"]["seeds"]
        }
        for method, row in rows.items():
            if method == "currmask":
                continue
            pairs = [
                (base[s], json.loads((out / method / f"seed{s}" / "result.json").read_text()))
                for s in row["seeds"]
                if s in base
            ]
            row["currmask_minus_this_skill"] = _summary(
                [a["skill_return"] - b["skill_return"] for a, b in pairs]
            )
            row["currmask_minus_this_goal"] = _summary(
                [a["goal_distance"] - b["goal_distance"] for a, b in pairs]
            )
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    (out / "summary.md").write_text(currmask_table(rows))
    _plot_currmask(out, rows, seeds)
    return rows


def _fmt(s: dict[str, float], digits: int = 2) -> str:
    return f"{s['mean']:.{digits}f} [{s['low']:.{digits}f}, {s['high']:.{digits}f}]"


def currmask_table(rows: dict[str, Any]) -> str:
    lines = [
        "| method | skill-prompting return (higher is better) | goal distance (lower is better) | "
        "CurrMask - method, return | CurrMask - method, distance | minutes / run |",
        "|---|---|---|---|---|---|",
    ]
    for method, row in rows.items():
        diff_s = _fmt(row["currmask_minus_this_skill"]) if "currmask_minus_this_skill" in row else "-"
        diff_g = _fmt(row["currmask_minus_this_goal"], 3) if "currmask_minus_this_goal" in row else "-"
        lines.append(
            f"| {method} | {_fmt(row['skill_return'])} | {_fmt(row['goal_distance'], 3)} | {diff_s} | "
            f"{diff_g} | {row['minutes']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _plot_currmask(out: Path, rows: dict[str, Any], seeds: list[int]) -> None:
    plt = require("matplotlib.pyplot", feature="plots")
    if not rows:
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    names = list(rows)
    for ax, key, label in (
        (axes[0], "skill_return", "skill-prompting return"),
        (axes[1], "goal_distance", "goal distance"),
    ):
        means = [rows[m][key]["mean"] for m in names]
        errs = np.array(
            [
                [rows[m][key]["mean"] - rows[m][key]["low"], rows[m][key]["high"] - rows[m][key]["mean"]]
                for m in names
            ]
        ).T
        ax.bar(names, means, yerr=errs, capsize=4, color="#4c72b0")
        ax.set_title(label + " (mean, 95% CI)")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(out / "currmask_downstream.png", dpi=120)
    plt.close(fig)
    trace_path = out / "currmask" / f"seed{seeds[0]}" / "state.json"
    if trace_path.exists():
        trace = json.loads(trace_path.read_text())["curriculum"]["trace"]
        if trace:
            probs = np.array([t["probabilities"] for t in trace])  # [rounds, arms]
            steps = [t["step"] for t in trace]
            n_ratios = 5
            by_block = probs.reshape(len(trace), -1, n_ratios).sum(-1)  # arms are block-major
            by_ratio = probs.reshape(len(trace), -1, n_ratios).sum(1)
            fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
            im = axes[0].imshow(
                by_block.T,
                aspect="auto",
                origin="lower",
                cmap="viridis",
                extent=[steps[0], steps[-1], 0.5, by_block.shape[1] + 0.5],
            )
            axes[0].set_xlabel("pretraining step")
            axes[0].set_ylabel("block size (tokens)")
            axes[0].set_title("P(block size), EXP3 teacher")
            fig.colorbar(im, ax=axes[0])
            for j, ratio in enumerate((0.15, 0.35, 0.55, 0.75, 0.95)):
                axes[1].plot(steps, by_ratio[:, j], label=f"ratio {ratio}")
            axes[1].set_xlabel("pretraining step")
            axes[1].set_title("P(mask ratio)")
            axes[1].legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(out / "currmask_arm_probabilities.png", dpi=120)
            plt.close(fig)


# ----------------------------------------------------------------------------------------------------
# PDT vs ODT vs DT (offline only) vs SAC from scratch


@dataclass
class PDTPreset:
    pretrain_steps: int
    online_samples: int
    warmup_samples: int
    updates_per_iter: int
    eval_every: int
    eval_episodes: int
    n_z_samples: int
    return_warmup: int
    context: int
    future_len: int
    d_model: int
    batch_size: int

    def train_config(self, seed: int) -> Any:
        """The :class:`headvec.rl.pdt.TrainConfig` of this preset."""
        from headvec.rl.pdt import TrainConfig

        return TrainConfig(
            pretrain_steps=self.pretrain_steps,
            batch_size=self.batch_size,
            online_samples=self.online_samples,
            online_warmup_samples=self.warmup_samples,
            updates_per_iter=self.updates_per_iter,
            eval_every_samples=self.eval_every,
            eval_episodes=self.eval_episodes,
            n_z_samples=self.n_z_samples,
            return_warmup_updates=self.return_warmup,
            seed=seed,
        )

    def model_options(self, future_alignment: str = "repo") -> dict[str, Any]:
        return {
            "context": self.context,
            "future_len": self.future_len,
            "d_model": self.d_model,
            "future_alignment": future_alignment,
        }


def pdt_preset(name: str) -> PDTPreset:
    if name not in PDT_PRESETS:
        raise HeadvecError(f"unknown preset {name!r}; use one of {', '.join(PDT_PRESETS)}")
    return PDT_PRESETS[name]


PDT_PRESETS = {
    "tiny": PDTPreset(30, 200, 60, 3, 60, 1, 8, 3, 4, 4, 16, 16),
    # the documented CPU default (gymnasium Hopper-v5)
    "cpu": PDTPreset(400, 3000, 1000, 20, 500, 3, 64, 100, 10, 10, 64, 32),
}


def pdt_compare(
    data_dir: str | Path,
    out_dir: str | Path,
    methods: list[str],
    seeds: list[int],
    preset: str = "cpu",
    dataset: str = "replay",
    progress: bool = True,
    future_alignment: str = "repo",
) -> dict[str, Any]:
    """Pretrain on ``{dataset}.npz`` (rewards unused by PDT), fine-tune online; SAC learns from scratch.
    ``future_alignment``: PDT's index alignment ("repo" or "per-step", see :mod:`headvec.rl.pdt`)."""
    from headvec.rl.pdt import run, sac_from_scratch

    p = pdt_preset(preset)
    data_dir, out = Path(data_dir), Path(out_dir)
    data = TrajectoryDataset.load(data_dir / f"{dataset}.npz")
    references = json.loads((data_dir / "references.json").read_text())
    for method in methods:
        for seed in seeds:
            run_dir = out / method / f"seed{seed}"
            if (run_dir / "done.json").exists():
                continue
            started = time.perf_counter()
            if method == "sac":
                sac_from_scratch(
                    data.meta["env_id"],
                    run_dir,
                    p.online_samples,
                    p.eval_every,
                    seed,
                    references,
                    max_steps=data.meta.get("max_steps"),
                )
            else:
                cfg, model = p.train_config(seed), p.model_options(future_alignment)
                run(method, data, run_dir, cfg, model, references, progress=progress)
            (run_dir / "done.json").write_text(json.dumps({"seconds": time.perf_counter() - started}))
    return summarise_pdt(out, methods, seeds)


def summarise_pdt(out_dir: str | Path, methods: list[str], seeds: list[int]) -> dict[str, Any]:
    out = Path(out_dir)
    rows: dict[str, Any] = {}
    curves: dict[str, list[list[dict]]] = {}
    for method in methods:
        runs = [
            json.loads((out / method / f"seed{s}" / "curve.json").read_text())
            for s in seeds
            if (out / method / f"seed{s}" / "done.json").exists()
        ]
        if not runs:
            continue
        curves[method] = [r["curve"] for r in runs]
        seconds = [
            json.loads((out / method / f"seed{s}" / "done.json").read_text())["seconds"]
            for s in seeds
            if (out / method / f"seed{s}" / "done.json").exists()
        ]
        rows[method] = {
            "final_score": _summary([c[-1]["score"] for c in curves[method]]),
            "final_samples": int(np.mean([c[-1]["samples"] for c in curves[method]])),
            "minutes": float(np.mean(seconds) / 60),
            "n": len(runs),
        }
        if method == "odt":  # ODT's offline model before any online sample = the offline-only DT
            rows["dt (offline only)"] = {
                "final_score": _summary([c[0]["score"] for c in curves[method]]),
                "final_samples": 0,
                "minutes": float("nan"),
                "n": len(runs),
            }
        if method == "pdt":
            rows["pdt (pretrained, before fine-tuning)"] = {
                "final_score": _summary([c[0]["score"] for c in curves[method]]),
                "final_samples": 0,
                "minutes": float("nan"),
                "n": len(runs),
            }
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "| method | normalised score (mean [95% CI]) | online samples | minutes / run | seeds |",
        "|---|---|---|---|---|",
    ]
    for method, row in rows.items():
        minutes = "-" if np.isnan(row["minutes"]) else f"{row['minutes']:.1f}"
        lines.append(
            f"| {method} | {_fmt(row['final_score'], 1)} | {row['final_samples']} | {minutes} | {row['n']} |"
        )
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    _plot_pdt(out, curves)
    return rows


def _plot_pdt(out: Path, curves: dict[str, list[list[dict]]]) -> None:
    plt = require("matplotlib.pyplot", feature="plots")
    if not curves:
        return
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for method, runs in curves.items():
        grid = sorted({c["samples"] for run in runs for c in run})
        xs, means, lows, highs = [], [], [], []
        for x in grid:  # the last evaluation at or before x, per seed
            values = []
            for run in runs:
                before = [c["score"] for c in run if c["samples"] <= x]
                if before:
                    values.append(before[-1])
            if len(values) == len(runs):
                m, lo, hi = bootstrap_ci(values)
                xs.append(x)
                means.append(m)
                lows.append(lo)
                highs.append(hi)
        ax.plot(xs, means, label=method, marker="o", markersize=3)
        ax.fill_between(xs, lows, highs, alpha=0.2)
    ax.axhline(0, color="grey", lw=0.5)
    ax.axhline(100, color="grey", lw=0.5, ls="--")
    ax.set_xlabel("online environment samples")
    ax.set_ylabel("normalised score")
    ax.set_title("random policy = 0, best SAC behaviour policy = 100", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "pdt_online.png", dpi=120)
    plt.close(fig)


def describe_data(data_dir: str | Path) -> str:
    """A markdown table of the datasets in ``data_dir`` (and, if present, the SAC run that made them)."""
    data_dir = Path(data_dir)
    lines = [
        "| dataset | episodes | steps | mean return | max return | source |",
        "|---|---|---|---|---|---|",
    ]
    for kind in ("random", "replay", "medium", "expert"):
        path = data_dir / f"{kind}.npz"
        if not path.exists():
            continue
        d = TrajectoryDataset.load(path)
        source = d.meta.get("checkpoint") or d.meta.get("behaviour", "")
        if kind == "random":
            source = "uniform random"
        lines.append(
            f"| {d.meta.get('env_id')} {kind} | {len(d)} | {d.n_steps} | {d.returns.mean():.1f} | "
            f"{d.returns.max():.1f} | {source} |"
        )
    sac_log = data_dir / "sac" / "sac_log.json"
    if sac_log.exists():
        log = json.loads(sac_log.read_text())
        lines.append("")
        lines.append("| SAC steps | eval return (3 episodes) | wall seconds for the chunk |")
        lines.append("|---|---|---|")
        lines += [
            f"| {c['steps']} | {c['eval_return']:.1f} | {c['seconds']:.0f} |" for c in log["checkpoints"]
        ]
    return "\n".join(lines) + "\n"
