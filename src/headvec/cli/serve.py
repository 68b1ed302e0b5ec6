"""``headvec serve``: serve a reward model or a chat model over HTTP (loopback by default)."""

from __future__ import annotations

import ipaddress
import os
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
from headvec.errors import HeadvecError
from headvec.serving import DEFAULT_HOST
from headvec.serving.core import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_REQUEST_PIXELS

app = typer.Typer(
    help="Serve models over HTTP: a reward model (rm) or an OpenAI-compatible chat model (chat).",
    no_args_is_help=True,
)

HostOpt = Annotated[
    str,
    typer.Option(help="Interface to bind; without --api-key-env anyone who can reach it can use the model."),
]
ApiKeyEnvOpt = Annotated[
    str | None,
    typer.Option(
        help="Require 'Authorization: Bearer <key>' on every request, the key read from this environment "
        "variable (off by default)."
    ),
]
MaxImagePixelsOpt = Annotated[
    int, typer.Option(min=1, help="Larger images get 413 (checked from the header, before decoding).")
]
MaxRequestPixelsOpt = Annotated[int, typer.Option(min=1, help="Requests with more image pixels get 413.")]
MaxBodyBytesOpt = Annotated[int, typer.Option(min=1, help="Larger request bodies get 413.")]
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
PortOpt = Annotated[int, typer.Option(min=0, max=65535)]
LogLevelOpt = Annotated[str, typer.Option(help="uvicorn log level.")]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _warn_if_exposed(host: str, api_key: str | None = None) -> None:
    if not _is_loopback(host) and api_key is None:
        error_console.print(
            f"[bold yellow]warning:[/] binding to {host} without --api-key-env: anyone who can reach this "
            "address can use the model",
            highlight=False,
        )


def _api_key(env_name: str | None) -> str | None:
    """The key from the named environment variable; unset or empty is an error, not silently no auth."""
    if env_name is None:
        return None
    key = os.environ.get(env_name, "")
    if not key.strip():
        raise HeadvecError(f"--api-key-env {env_name}: the environment variable {env_name} is unset or empty")
    return key


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
    max_image_pixels: MaxImagePixelsOpt = DEFAULT_MAX_IMAGE_PIXELS,
    max_request_pixels: MaxRequestPixelsOpt = DEFAULT_MAX_REQUEST_PIXELS,
    max_body_bytes: MaxBodyBytesOpt = DEFAULT_MAX_BODY_BYTES,
    api_key_env: ApiKeyEnvOpt = None,
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
    api_key = _api_key(api_key_env)
    reward_model = load_reward_model(
        artifact_dir, model, device=device, dtype=dtype, trust_remote_code=trust_remote_code
    )
    app = create_app(
        reward_model,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        max_items_per_request=max_items_per_request,
        max_text_chars=max_text_chars,
        max_image_pixels=max_image_pixels,
        max_request_pixels=max_request_pixels,
        max_body_bytes=max_body_bytes,
        api_key=api_key,
    )
    _warn_if_exposed(host, api_key)
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
    max_tokens_limit: Annotated[
        int | None,
        typer.Option(min=1, help="Requests asking for more get 400 (always capped by the context)."),
    ] = None,
    max_n: Annotated[int, typer.Option(min=1, help="Most choices (n) per request.")] = 8,
    timeout: Annotated[
        float, typer.Option(min=0.001, help="Seconds a request may wait for its answer (504 after).")
    ] = 600,
    max_image_pixels: MaxImagePixelsOpt = DEFAULT_MAX_IMAGE_PIXELS,
    max_request_pixels: MaxRequestPixelsOpt = DEFAULT_MAX_REQUEST_PIXELS,
    max_body_bytes: MaxBodyBytesOpt = DEFAULT_MAX_BODY_BYTES,
    api_key_env: ApiKeyEnvOpt = None,
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
    api_key = _api_key(api_key_env)
    loaded = load(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    app = create_app(
        loaded,
        name or model,
        max_tokens,
        max_batch_size=max_batch_size,
        max_image_pixels=max_image_pixels,
        max_request_pixels=max_request_pixels,
        max_body_bytes=max_body_bytes,
        max_n=max_n,
        max_tokens_limit=max_tokens_limit,
        request_timeout_s=timeout,
        api_key=api_key,
    )
    _warn_if_exposed(host, api_key)
    console.print(f"serving {model} at http://{host}:{port}/v1 (Ctrl-C to stop)")
    run_server(app, host, port, log_level)
