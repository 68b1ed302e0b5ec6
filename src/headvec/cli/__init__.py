"""The ``headvec`` command line: inspect models, extract head activations, fit and run methods."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from typer.core import TyperGroup

from headvec.cli.common import (
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DeviceOpt,
    DtypeOpt,
    ModelArg,
    RemoteOpt,
    ThreadsOpt,
    console,
    load_model,
    parse_ints,
    user_errors,
)

# Command groups imported only when used: name -> (module, Typer attribute, the short help `headvec
# --help` shows). `headvec --help` imports none of them, so it costs no torch, FastAPI or Ray; a test
# checks that each group's own help starts with its short help here.
LAZY_GROUPS: dict[str, tuple[str, str, str]] = {
    "sav": ("headvec.cli.sav", "app", "Sparse Attention Vectors: few-shot classifiers from a few heads."),
    "mtv": ("headvec.cli.mtv", "app", "Multimodal Task Vectors: many-shot ICL compressed into heads."),
    "rm": ("headvec.cli.rm", "app", "Activation reward models: few-shot reward models by steering heads."),
    "bench": (
        "headvec.cli.bench",
        "app",
        "Reward-model benchmarks: run any reward model or judge on VL-RewardBench, Multimodal RewardBench "
        "or RewardBench",
    ),
    "serve": ("headvec.cli.serve", "app", "Serve models over HTTP"),
    "toyworld": ("headvec.cli.toyworld", "app", "The toy world: data, and the small LLaVA trained on it."),
    "rl": ("headvec.cli.rl", "app", "Offline-RL pretraining: MuJoCo datasets, CurrMask, PDT."),
    "regap": ("headvec.cli.regap", "app", "Implicit rewards and the reward gap (ReGap) of an aligned model."),
    "remiss": (
        "headvec.cli.remiss",
        "app",
        "ReMiss: adversarial suffixes via the reward gap; baselines, backdoors.",
    ),
    "feedback": (
        "headvec.cli.feedback",
        "app",
        "AI feedback (VLFeedback): response pools, annotation, preference pairs, the whole toy-world loop.",
    ),
    "dpo": (
        "headvec.cli.dpo",
        "app",
        "DPO (Silkie's recipe through TRL): train on preference pairs, measure toy-world hallucination.",
    ),
    "ccot": ("headvec.cli.ccot", "app", "Compositional chain-of-thought: a scene graph, then the answer."),
    "ic": (
        "headvec.cli.ic",
        "app",
        "Internal consistency: vote over reasoning paths weighted by layer agreement.",
    ),
    "lsar": ("headvec.cli.lsar", "app", "LSAR: language-agnostic embeddings, a language subspace removed."),
}


class LazyGroup(TyperGroup):
    """A Typer group whose :data:`LAZY_GROUPS` are imported when resolved, not when help is listed."""

    _listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return [*super().list_commands(ctx), *(n for n in LAZY_GROUPS if n not in self.commands)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in LAZY_GROUPS or cmd_name in self.commands:
            return super().get_command(ctx, cmd_name)
        module, attribute, short_help = LAZY_GROUPS[cmd_name]
        if self._listing:  # the root's help: name and short help only, nothing imported
            return typer.core.TyperCommand(name=cmd_name, help=short_help)
        command = typer.main.get_command(getattr(importlib.import_module(module), attribute))
        command.name = cmd_name
        self.commands[cmd_name] = command
        return command

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(
    help=__doc__,
    cls=LazyGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
@user_errors
def info(
    model: ModelArg,
    dtype: DtypeOpt = DEFAULT_DTYPE,
    device: DeviceOpt = DEFAULT_DEVICE,
    threads: ThreadsOpt = 0,
    trust_remote_code: RemoteOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show a model's layers, heads, head_dim and the modules headvec hooks."""
    loaded = load_model(
        model, dtype=dtype, device=device, threads=threads, trust_remote_code=trust_remote_code
    )
    arch = loaded.arch
    facts = {
        "model": model,
        "class": type(loaded.model).__name__,
        "multimodal": loaded.is_multimodal,
        **arch.to_dict(),
        "hook_paths": arch.hook_paths,
    }
    if as_json:
        console.print_json(json.dumps(facts))
        return
    table = Table(title=f"headvec info: {model}", show_header=False)
    for key, value in facts.items():
        if key == "hook_paths":
            value = f"{arch.hook_path(0)} … {arch.hook_path(arch.n_layers - 1)} (input = heads)"
        table.add_row(key, str(value))
    console.print(table)


@app.command()
@user_errors
def extract(
    model: ModelArg,
    data: Annotated[Path, typer.Argument(help="JSONL rows with 'text' and optional 'image' path.")],
    out: Annotated[Path, typer.Option("--out", help="Cache directory (resumed if it holds a partial run).")],
    layers: Annotated[str, typer.Option(help="Comma-separated layers, or 'all'.")] = "all",
    positions: Annotated[
        str, typer.Option(help="Token positions over real tokens: -1 = last, 0 = first.")
    ] = "-1",
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    sort_window: Annotated[
        int,
        typer.Option(
            help="Rows per shard, batched by length inside it (less padding); 0: a shard per batch."
        ),
    ] = 0,
    residual: Annotated[bool, typer.Option(help="Also cache the residual stream (layer outputs).")] = False,
    chat: Annotated[bool, typer.Option(help="Wrap each text in the model's chat template.")] = True,
    backend: Annotated[str, typer.Option(help="local, or ray: shards computed by Ray actors.")] = "local",
    workers: Annotated[int, typer.Option(help="Ray actors, each with its own copy of the model.", min=1)] = 1,
    ray_address: Annotated[
        str | None, typer.Option(help="Existing Ray cluster (default: start one).")
    ] = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
    device: DeviceOpt = DEFAULT_DEVICE,
    threads: ThreadsOpt = 0,
    trust_remote_code: RemoteOpt = False,
) -> None:
    """Cache per-head activations of every row of DATA into OUT (safetensors shards + index.json)."""
    import functools

    from headvec.cache import engine_loader, extract_to_disk
    from headvec.data import read_text_image_rows
    from headvec.engine import HeadEngine

    rows = read_text_image_rows(data)
    loaded = load_model(
        model, dtype=dtype, device=device, threads=threads, trust_remote_code=trust_remote_code
    )
    prompts = [loaded.build_prompt(row.text, [row.image] if row.image else [], chat=chat) for row in rows]
    wanted = parse_ints(positions, "positions") or [-1]
    extract_to_disk(
        HeadEngine(loaded),
        prompts,
        out,
        layers=parse_ints(layers, "layers"),
        positions=wanted[0] if len(wanted) == 1 else wanted,
        batch_size=batch_size,
        residual=residual,
        sort_window=sort_window,
        backend=backend,
        workers=workers,
        engine_factory=functools.partial(
            engine_loader, model, dtype=dtype, device=device, trust_remote_code=trust_remote_code
        ),
        ray_address=ray_address,
    )
    console.print(
        f"cached {len(rows)} rows x {loaded.arch.n_layers} layers x {loaded.arch.n_heads} heads -> {out}"
    )


if __name__ == "__main__":
    app()
