"""DPO (Silkie's recipe through TRL): train on preference pairs, measure toy-world hallucination."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from headvec.cli.common import (
    DEFAULT_DEVICE,
    DeviceOpt,
    ModelArg,
    ThreadsOpt,
    console,
    set_threads,
    user_errors,
)
from headvec.errors import HeadvecError

app = typer.Typer(
    help="DPO (Silkie's recipe through TRL): train on preference pairs, measure toy-world hallucination.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
@user_errors
def train(
    model: ModelArg,
    pairs: Annotated[Path, typer.Argument(help="pairs.train.jsonl from `headvec feedback pairs`.")],
    out: Annotated[
        Path, typer.Argument(help="Run directory (checkpoints; rerun to resume; merged model in model/).")
    ],
    images: Annotated[
        Path | None,
        typer.Option(help="Image root of the pairs' img_path (default: the one `feedback pairs` recorded)."),
    ] = None,
    lr: Annotated[float, typer.Option(help="Learning rate (Silkie: 1e-5).")] = 1e-5,
    epochs: Annotated[float, typer.Option(help="Epochs (Silkie: 3).")] = 3.0,
    max_steps: Annotated[int, typer.Option(help="Stop after this many steps (-1: epochs decide).")] = -1,
    batch_size: Annotated[int, typer.Option(help="Pairs per device step.")] = 2,
    accumulation: Annotated[int, typer.Option(help="Gradient accumulation (Silkie: 8).")] = 8,
    beta: Annotated[float, typer.Option(help="DPO beta.")] = 0.1,
    lora: Annotated[
        bool, typer.Option(help="LoRA on the decoder's projections (--no-lora: full fine-tuning).")
    ] = True,
    lora_r: Annotated[int, typer.Option(help="LoRA rank (Silkie: 64).")] = 64,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha (Silkie: 16).")] = 16,
    save_steps: Annotated[int, typer.Option(help="Checkpoint every N steps.")] = 100,
    seed: Annotated[int, typer.Option()] = 0,
    device: DeviceOpt = DEFAULT_DEVICE,
    threads: ThreadsOpt = 1,
) -> None:
    """Train MODEL with DPO on preference pairs (Silkie's defaults), save the merged model in OUT/model."""
    from headvec.alignment.dpo import DPOSettings, PreferenceRow, train_dpo
    from headvec.data import iter_jsonl
    from headvec.feedback.schema import ImageStore
    from headvec.models import resolve_device

    set_threads(threads)
    stats = pairs.parent / "stats.json"
    recorded = json.loads(stats.read_text()).get("image_root") if stats.is_file() else None
    store = ImageStore(images or recorded or pairs.parent)
    rows = []
    for number, obj in iter_jsonl(pairs):
        missing = [k for k in ("prompt", "chosen", "rejected") if k not in obj]
        if missing:
            raise HeadvecError(
                f"{pairs} line {number}: a pair needs {missing[0]!r}; make them with `headvec feedback pairs`"
            )
        image = store.open(obj["img_path"], obj.get("id", "")) if obj.get("img_path") else None
        rows.append(PreferenceRow(obj["prompt"], obj["chosen"], obj["rejected"], image, obj.get("id", "")))
    settings = DPOSettings(
        beta=beta,
        lora=lora,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        learning_rate=lr,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        gradient_accumulation=accumulation,
        save_steps=save_steps,
        seed=seed,
    )
    result = train_dpo(model, rows, out, settings, device=resolve_device(device))
    losses, margins = result.metric("loss"), result.metric("rewards/margins")
    if losses:
        console.print(
            f"loss {losses[0]:.4f} -> {losses[-1]:.4f}; reward margin {margins[0]:.4f} -> {margins[-1]:.4f}"
        )
    console.print(f"{result.steps} steps -> {result.model_dir}")


@app.command(name="eval")
@user_errors
def evaluate(
    model: ModelArg,
    baseline: Annotated[
        str | None, typer.Option(help="Also evaluate this model (e.g. toy) and report the change.")
    ] = None,
    n: Annotated[int, typer.Option(help="Held-out items per metric.")] = 200,
    seed: Annotated[int, typer.Option()] = 1,
    out: Annotated[Path | None, typer.Option(help="Write the summary as JSON here.")] = None,
    threads: ThreadsOpt = 1,
) -> None:
    """Hallucination on held-out toy-world scenes (CHAIR, existence/attribute VQA, judge), with 95 % CIs."""
    from headvec.models import load
    from headvec.toyworld.feedback import METRICS, evaluate_hallucination, paired_change, summarise

    set_threads(threads)
    per_item = evaluate_hallucination(load(model, device="cpu"), n, seed)
    summary: dict = {"model": model, "metrics": summarise(per_item)}
    if baseline:
        before = evaluate_hallucination(load(baseline, device="cpu"), n, seed)
        summary |= {
            "baseline": baseline,
            "baseline_metrics": summarise(before),
            "change": paired_change(before, per_item),
        }
    for metric in METRICS:
        mean, low, high = summary["metrics"][metric]
        line = f"{metric:14s} {mean:.3f} [{low:.3f}, {high:.3f}]"
        if baseline:
            d, dl, dh = summary["change"][metric]
            line += f"   change {d:+.3f} [{dl:+.3f}, {dh:+.3f}]"
        console.print(line, highlight=False)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=1))
