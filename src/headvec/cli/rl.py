"""Offline-RL pretraining: MuJoCo datasets, CurrMask, PDT. Make data, pretrain, fine-tune, compare."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from headvec.cli.common import console, user_errors
from headvec.errors import HeadvecError

app = typer.Typer(help=__doc__, no_args_is_help=True)

CURRMASK_METHODS = "currmask,maskdp,mixed-prog,gpt"
PDT_METHODS = "pdt,odt,sac"


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise HeadvecError(f"--seeds must be comma-separated integers such as 0,1,2, got {text!r}") from None


def _names(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise HeadvecError(f"unknown {what} {unknown}; use some of {', '.join(allowed)}")
    return names


@app.command("data")
@user_errors
def data(
    env_id: Annotated[
        str, typer.Argument(help="pointmass, Hopper-v5, HalfCheetah-v5, Walker2d-v5, walker-walk...")
    ],
    out: Annotated[Path, typer.Option("--out", help="Dataset directory (rerun to resume).")],
    behaviour: Annotated[str, typer.Option(help="sac, or scripted (point mass only).")] = "sac",
    sac_steps: Annotated[int, typer.Option(help="SAC environment steps for the behaviour policy.")] = 15_000,
    checkpoint_every: Annotated[
        int, typer.Option(help="SAC checkpoint (and resume point) interval.")
    ] = 2_500,
    random_episodes: int = 20,
    rollout_episodes: Annotated[int, typer.Option(help="Episodes in medium.npz and expert.npz.")] = 20,
    noise: Annotated[float, typer.Option(help="Gaussian action noise of the checkpoint rollouts.")] = 0.1,
    max_steps: Annotated[int | None, typer.Option(help="Episode length cap (default: the env's).")] = None,
    seed: int = 0,
) -> None:
    """Make random / replay / medium / expert datasets (+ references.json) with a real simulator."""
    from headvec.rl.data import generate

    _one_thread()
    result = generate(
        env_id,
        out,
        behaviour=behaviour,
        sac_steps=sac_steps,
        checkpoint_every=checkpoint_every,
        random_episodes=random_episodes,
        rollout_episodes=rollout_episodes,
        noise=noise,
        seed=seed,
        max_steps=max_steps,
    )
    console.print_json(json.dumps(result["references"]))


@app.command("describe")
@user_errors
def describe(data_dir: Annotated[Path, typer.Argument(help="Directory from `headvec rl data`.")]) -> None:
    """Print a markdown table of a data directory: episodes, steps, returns, the SAC run behind it."""
    from headvec.rl.experiments import describe_data

    print(describe_data(data_dir))


@app.command("export-minari")
@user_errors
def export_minari(
    dataset: Annotated[Path, typer.Argument(help="A dataset .npz written by `headvec rl data`.")],
    dataset_id: Annotated[str, typer.Argument(help="Minari id, e.g. headvec/hopper-replay-v0.")],
    root: Annotated[Path | None, typer.Option(help="Minari root (default: MINARI_DATASETS_PATH).")] = None,
) -> None:
    """Write a dataset in Minari's local format (no download, no jax)."""
    from headvec.rl.data import TrajectoryDataset
    from headvec.rl.data import export_minari as export

    export(TrajectoryDataset.load(dataset), dataset_id, root)
    console.print(f"wrote Minari dataset {dataset_id}")


@app.command("pretrain")
@user_errors
def pretrain(
    dataset: Annotated[Path, typer.Argument(help="A dataset .npz.")],
    out: Annotated[Path, typer.Option("--out", help="Run directory (rerun to resume).")],
    curriculum: Annotated[
        str, typer.Option(help="currmask, maskdp, mixed, mixed-prog, mixed-inv or gpt.")
    ] = "currmask",
    steps: int = 1000,
    horizon: Annotated[int, typer.Option(help="Timesteps per window (2x tokens).")] = 16,
    d_model: int = 64,
    batch_size: int = 64,
    interval: Annotated[int, typer.Option(help="Steps per bandit round / probe.")] = 20,
    probe_on_train: Annotated[
        bool, typer.Option(help="Probe on the training data, as the official code.")
    ] = False,
    save_every: Annotated[int, typer.Option(help="Checkpoint interval in steps (the resume point).")] = 500,
    seed: int = 0,
) -> None:
    """Pretrain one masked trajectory model (CurrMask or a baseline curriculum)."""
    from headvec.rl.currmask import MaskedModelConfig, PretrainConfig
    from headvec.rl.currmask import pretrain as run
    from headvec.rl.data import TrajectoryDataset

    data = TrajectoryDataset.load(dataset)
    s_dim, a_dim = data.episodes[0].observations.shape[1], data.episodes[0].actions.shape[1]
    config = PretrainConfig(
        curriculum=curriculum,
        steps=steps,
        batch_size=batch_size,
        interval=interval,
        probe_on_train=probe_on_train,
        save_every=save_every,
        seed=seed,
    )
    result = run(data, out, config, MaskedModelConfig(s_dim, a_dim, horizon=horizon, d_model=d_model))
    probe = result["log"]["probe"]
    console.print(
        f"done: probe loss {probe[0][1]:.4f} -> {probe[-1][1]:.4f}; saved in {out}" if probe else "done"
    )


@app.command("eval")
@user_errors
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A `headvec rl pretrain` run directory.")],
    prompts: Annotated[Path, typer.Option(help="Dataset of prompts and goals (e.g. expert.npz).")],
    context: int = 8,
    horizon: Annotated[int, typer.Option(help="Skill-prompting rollout length.")] = 60,
    n_prompts: int = 10,
    n_goals: int = 5,
    goal_gap: int = 3,
    n_trials: int = 20,
    seed: int = 0,
) -> None:
    """Zero-shot skill prompting and goal-conditioned planning with a pretrained masked model."""
    import numpy as np

    from headvec.rl.currmask import Planner, goal_planning, load_pretrained, skill_prompting
    from headvec.rl.data import TrajectoryDataset
    from headvec.rl.envs import make_env

    _one_thread()
    model, meta = load_pretrained(run_dir)
    data = TrajectoryDataset.load(prompts)
    env = make_env(meta["env_id"], max_steps=data.meta.get("max_steps"))
    planner = Planner(model, meta["state_mean"], meta["state_std"])
    sp = skill_prompting(planner, env, data, context=context, horizon=horizon, n_prompts=n_prompts, seed=seed)
    gp = goal_planning(planner, env, data, n_goals=n_goals, gap=goal_gap, n_trials=n_trials, seed=seed)
    result = {
        "skill_return": float(np.mean([r["return"] for r in sp])),
        "source_return": float(np.mean([r["source_return"] for r in sp])),
        "goal_distance": float(np.mean([g["distance"] for g in gp])),
    }
    console.print_json(json.dumps(result))


@app.command("finetune")
@user_errors
def finetune(
    dataset: Annotated[Path, typer.Argument(help="Offline dataset .npz (its folder has references.json).")],
    out: Annotated[Path, typer.Option("--out", help="Run directory.")],
    method: Annotated[str, typer.Option(help="pdt, odt or dt (offline only).")] = "pdt",
    preset: Annotated[str, typer.Option(help="tiny or cpu (sizes in headvec.rl.experiments).")] = "cpu",
    seed: int = 0,
) -> None:
    """Pretrain offline, then fine-tune online (PDT: reward-free pretraining, return head online)."""
    from headvec.rl.data import TrajectoryDataset
    from headvec.rl.experiments import pdt_preset
    from headvec.rl.pdt import run

    p = pdt_preset(preset)
    refs_path = dataset.parent / "references.json"
    references = json.loads(refs_path.read_text()) if refs_path.exists() else None
    cfg, model = p.train_config(seed), p.model_options()
    result = run(method, TrajectoryDataset.load(dataset), out, cfg, model, references)
    for row in result["curve"]:
        console.print(f"samples {row['samples']:>7}  return {row['return']:9.1f}  score {row['score']}")


@app.command("compare-currmask")
@user_errors
def compare_currmask(
    data_dir: Annotated[
        Path, typer.Argument(help="Directory from `headvec rl data` (replay, random, expert).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Results directory (finished runs are skipped).")],
    methods: Annotated[
        str, typer.Option(help="Comma-separated curricula; 'random' = random actions (the floor).")
    ] = CURRMASK_METHODS,
    seeds: str = "0,1,2",
    preset: Annotated[
        str, typer.Option(help="tiny (seconds), cpu (the documented default) or pointmass.")
    ] = "cpu",
) -> None:
    """CurrMask vs baselines on zero-shot skill prompting and goal planning; table + plots + CIs."""
    from headvec.rl.experiments import currmask_compare, currmask_table
    from headvec.rl.masking import CURRICULA

    _one_thread()
    rows = currmask_compare(
        data_dir, out, _names(methods, (*CURRICULA, "random"), "curricula"), _seeds(seeds), preset
    )
    console.print(currmask_table(rows))


@app.command("compare-pdt")
@user_errors
def compare_pdt(
    data_dir: Annotated[Path, typer.Argument(help="Directory from `headvec rl data`.")],
    out: Annotated[Path, typer.Option("--out", help="Results directory (finished runs are skipped).")],
    methods: Annotated[str, typer.Option(help="Comma-separated: pdt, odt, sac.")] = PDT_METHODS,
    seeds: str = "0,1,2",
    preset: Annotated[str, typer.Option(help="tiny or cpu.")] = "cpu",
    dataset: Annotated[str, typer.Option(help="Which offline dataset to pretrain on.")] = "replay",
    future_alignment: Annotated[
        str, typer.Option(help="PDT index alignment: repo (the official code) or per-step (the paper).")
    ] = "repo",
) -> None:
    """PDT vs ODT (and its offline-only DT) vs SAC from scratch: normalised score against online samples."""
    from headvec.rl.experiments import pdt_compare

    _one_thread()
    pdt_compare(
        data_dir,
        out,
        _names(methods, ("pdt", "odt", "sac"), "methods"),
        _seeds(seeds),
        preset,
        dataset,
        future_alignment=future_alignment,
    )
    console.print((out / "summary.md").read_text())
