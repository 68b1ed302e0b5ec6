"""``headvec serve``: serve a reward model or a chat model over HTTP (loopback by default)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import typer

from headvec.cli.common import (
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DeviceOpt,
    DtypeOpt,
    RemoteOpt,
    ThreadsOpt,
    console,
    error_console,
    set_threads,
    user_errors,
)
from headvec.serving import DEFAULT_HOST

app = typer.Typer(
    help="Serve models over HTTP: a reward model (rm) or an OpenAI-compatible chat model (chat).",
    no_args_is_help=True,
)

HostOpt = Annotated[
    str, typer.Option(help="Interface to bind; the server has no authentication, keep it on loopback.")
]
PortOpt = Annotated[int, typer.Option(min=0, max=65535)]
LogLevelOpt = Annotated[str, typer.Option(help="uvicorn log level.")]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _warn_if_exposed(host: str) -> None:
    if not _is_loopback(host):
        error_console.print(
            f"[bold yellow]warning:[/] binding to {host}: the server has no authentication, anyone who can "
            "reach this address can use the model",
            highlight=False,
        )


@app.command("rm")
@user_errors
def serve_rm(
    artifact_dir: Annotated[
        Path, typer.Argument(help="A saved activation reward model, or a HF sequence-classification model.")
    ],
    host: HostOpt = DEFAULT_HOST,
    port: PortOpt = 8000,
    max_batch_size: Annotated[int, typer.Option(min=1, help="Most items scored in one model call.")] = 32,
    max_wait_ms: Annotated[
        float, typer.Option(min=0, help="How long a batch waits for more concurrent requests.")
    ] = 5,
    max_items_per_request: Annotated[int, typer.Option(min=1, help="Larger requests get 413.")] = 64,
    max_text_chars: Annotated[int, typer.Option(min=1, help="Longer prompts/responses get 413.")] = 20_000,
    model: Annotated[
        str | None, typer.Option(help="Run on this model instead of the one the artifact was fitted on.")
    ] = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
    device: DeviceOpt = DEFAULT_DEVICE,
    trust_remote_code: RemoteOpt = False,
    threads: ThreadsOpt = 0,
    log_level: LogLevelOpt = "info",
) -> None:
    """Serve ARTIFACT_DIR: POST /score {"items": [{"prompt", "response", "image"?}]}, GET /health."""
    from headvec.rewards.loading import load_reward_model
    from headvec.serving.core import run_server
    from headvec.serving.rm import create_app

    set_threads(threads)
    reward_model = load_reward_model(
        artifact_dir, model, device=device, dtype=dtype, trust_remote_code=trust_remote_code
    )
    app = create_app(
        reward_model,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        max_items_per_request=max_items_per_request,
        max_text_chars=max_text_chars,
    )
    _warn_if_exposed(host)
    console.print(f"serving {type(reward_model).__name__} from {artifact_dir} on http://{host}:{port}")
    run_server(app, host, port, log_level)


@app.command("chat")
@user_errors
def serve_chat(
    model: Annotated[str, typer.Argument(help="Hub id, local model directory, or alias (toy).")],
    host: HostOpt = DEFAULT_HOST,
    port: PortOpt = 8000,
    name: Annotated[str | None, typer.Option(help="Model name clients ask for (default: MODEL).")] = None,
    max_batch_size: Annotated[
        int, typer.Option(min=1, help="Greedy requests generated together (1 = one at a time).")
    ] = 1,
    max_tokens: Annotated[
        int, typer.Option(min=1, help="Default max_tokens when a request sets none.")
    ] = 256,
    dtype: DtypeOpt = DEFAULT_DTYPE,
    device: DeviceOpt = DEFAULT_DEVICE,
    trust_remote_code: RemoteOpt = False,
    threads: ThreadsOpt = 0,
    log_level: LogLevelOpt = "warning",
) -> None:
    """Serve MODEL as an OpenAI-compatible chat endpoint (POST /v1/chat/completions, GET /v1/models)."""
    from headvec.models import load
    from headvec.serving.chat import create_app
    from headvec.serving.core import run_server

    set_threads(threads)
    loaded = load(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    app = create_app(loaded, name or model, max_tokens, max_batch_size=max_batch_size)
    _warn_if_exposed(host)
    console.print(f"serving {model} at http://{host}:{port}/v1 (Ctrl-C to stop)")
    run_server(app, host, port, log_level)
