"""The toy world: data, and the small LLaVA trained on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from headvec.cli.common import (
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DeviceOpt,
    DtypeOpt,
    ThreadsOpt,
    console,
    load_model,
    set_threads,
    user_errors,
)

app = typer.Typer(help=__doc__, no_args_is_help=True)

ToyModelArg = Annotated[str, typer.Argument(help="A toy model directory, or 'toy' for the shipped one.")]


@app.command("export")
@user_errors
def export(
    out: Annotated[Path, typer.Argument(help="Directory for JSONL files and PNG images.")],
    seed: int = 0,
    n_train: Annotated[int, typer.Option(help="Items per task in the train split.")] = 5000,
    n_test: Annotated[int, typer.Option(help="Items per task in the test split.")] = 500,
) -> None:
    """Write every toy-world task (every language) as JSONL + PNG; preferences in VL-RewardBench layout."""
    from headvec.toyworld import export as export_data

    written = export_data(out, seed, {"train": n_train, "test": n_test})
    console.print(f"wrote {len(written)} files, {sum(written.values())} rows -> {out}")


@app.command("train")
@user_errors
def train(
    out: Annotated[Path, typer.Option("--out", help="Run directory (resumed if it holds a checkpoint).")],
    steps: Annotated[
        int | None,
        typer.Option(help="Steps before the verify phase (default: the recipe's); more extends a run."),
    ] = None,
    seed: int = 0,
    threads: ThreadsOpt = 0,
    device: DeviceOpt = "cpu",
) -> None:
    """Train the toy model from freshly generated data; kill and rerun the same command to resume.

    The recipe's 120-minute budget is measured on a 2-core CPU; ``--device cuda`` only trains faster."""
    from headvec.models import resolve_device
    from headvec.toyworld.train import TrainConfig
    from headvec.toyworld.train import train as run_training

    set_threads(threads)
    config = TrainConfig(seed=seed) if steps is None else TrainConfig(seed=seed, steps=steps)
    model_dir = run_training(out, config, device=resolve_device(device))
    console.print(f"model saved to {model_dir}; training log in {out / 'train_log.json'}")


def _print_table(title: str, results: dict[str, dict[str, float]]) -> None:
    table = Table(title=title)
    table.add_column("metric")
    for column in results:
        table.add_column(column)
    for metric in results[next(iter(results))]:
        table.add_row(metric, *(f"{results[c].get(metric, float('nan')):.3f}" for c in results))
    console.print(table)


@app.command("eval")
@user_errors
def evaluate(
    model: ToyModelArg = "toy",
    n: Annotated[int, typer.Option(help="Held-out items per task and language.")] = 200,
    seed: int = 1,
    out: Annotated[Path | None, typer.Option(help="Write the scores as JSON here.")] = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
    device: DeviceOpt = DEFAULT_DEVICE,
    threads: ThreadsOpt = 0,
) -> None:
    """Measure the toy model's capabilities on held-out scenes, in every language."""
    from headvec.toyworld.evaluate import evaluate_toy_model

    loaded = load_model(model, dtype=dtype, device=device, threads=threads)
    results = evaluate_toy_model(loaded, n=n, seed=seed)
    _print_table(f"toy model capabilities ({n} held-out items per task)", results)
    if out is not None:
        out.write_text(json.dumps(results, indent=1))


@app.command("diagnose")
@user_errors
def diagnose(
    model: ToyModelArg = "toy",
    n: Annotated[int, typer.Option(help="Held-out colour questions (1-4 objects, equal shares).")] = 800,
    seed: int = 1,
    out: Annotated[Path | None, typer.Option(help="Write the full diagnosis as JSON here.")] = None,
    device: DeviceOpt = DEFAULT_DEVICE,
    threads: ThreadsOpt = 0,
) -> None:
    """Where the model binds an attribute to the named object: probes by layer, attention to the cell."""
    from headvec.toyworld.diagnose import binding_diagnosis

    loaded = load_model(model, device=device, threads=threads)
    report = binding_diagnosis(loaded, n=n, seed=seed)
    layers = range(len(report["residual_probe_by_layer"]))
    _print_table(
        "binding of the asked object's colour, by decoder layer",
        {
            "residual probe": dict(zip(map(str, layers), report["residual_probe_by_layer"], strict=True)),
            "max attention to cell": dict(
                zip(map(str, layers), report["attention_to_cell_max_by_layer"], strict=True)
            ),
        },
    )
    console.print(f"vision probe per image token: {report['vision_probe']}")
    console.print(f"colour accuracy by number of objects: {report['accuracy_by_objects']}")
    if out is not None:
        out.write_text(json.dumps(report, indent=1))
