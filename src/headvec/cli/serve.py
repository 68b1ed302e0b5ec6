"""``headvec serve``: serve a saved reward model over HTTP (dynamic batching, loopback by default)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Annotated

import typer

from headvec.cli.common import (
    DeviceOpt,
    DtypeOpt,
    RemoteOpt,
    ThreadsOpt,
    console,
    error_console,
    set_threads,
    user_errors,
)
from headvec.rewards.protocol import RewardModel
from headvec.rewards.server import DEFAULT_HOST

app = typer.Typer(help="Serve saved models over HTTP.", no_args_is_help=True)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_for_serving(
    artifact_dir: Path, model: str | None, dtype: str, device: str, trust_remote_code: bool
) -> RewardModel:
    """The reward model in ARTIFACT_DIR, on ``device``; ``model`` overrides the one it was fitted on."""
    from headvec.methods.artifacts import CONFIG_NAME
    from headvec.rewards.loading import load_reward_model

    is_artifact = (artifact_dir / CONFIG_NAME).is_file()
    if not is_artifact and (artifact_dir / "config.json").is_file():
        from headvec.rewards.classifier import SequenceClassifierRewardModel

        return SequenceClassifierRewardModel(
            model or artifact_dir, device=device, dtype=dtype, trust_remote_code=trust_remote_code
        )
    if not is_artifact or (model is None and device == "cpu" and dtype == "float32"):
        return load_reward_model(artifact_dir, model)  # also explains what is wrong with a bad directory
    from headvec.models import load

    fitted_on = json.loads((artifact_dir / CONFIG_NAME).read_text()).get("fitted_on", {})
    name = model or fitted_on.get("name_or_path")
    loaded = load(name, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    return load_reward_model(artifact_dir, loaded)


@app.command("rm")
@user_errors
def serve_rm(
    artifact_dir: Annotated[
        Path, typer.Argument(help="A saved activation reward model, or a HF sequence-classification model.")
    ],
    host: Annotated[
        str, typer.Option(help="Interface to bind; the server has no authentication, keep it on loopback.")
    ] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    max_batch_size: Annotated[int, typer.Option(min=1, help="Most items scored in one model call.")] = 32,
    max_wait_ms: Annotated[
        float, typer.Option(min=0, help="How long a batch waits for more concurrent requests.")
    ] = 5,
    max_items_per_request: Annotated[int, typer.Option(min=1, help="Larger requests get 413.")] = 64,
    max_text_chars: Annotated[int, typer.Option(min=1, help="Longer prompts/responses get 413.")] = 20_000,
    model: Annotated[
        str | None, typer.Option(help="Run on this model instead of the one the artifact was fitted on.")
    ] = None,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "cpu",
    trust_remote_code: RemoteOpt = False,
    threads: ThreadsOpt = 0,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve ARTIFACT_DIR: POST /score {"items": [{"prompt", "response", "image"?}]}, GET /health."""
    set_threads(threads)
    from headvec.rewards.server import serve

    reward_model = load_for_serving(artifact_dir, model, dtype, device, trust_remote_code)
    if not _is_loopback(host):
        error_console.print(
            f"[bold yellow]warning:[/] binding to {host}: the server has no authentication, anyone who can "
            "reach this address can use the model",
            highlight=False,
        )
    console.print(f"serving {type(reward_model).__name__} from {artifact_dir} on http://{host}:{port}")
    serve(
        reward_model,
        host=host,
        port=port,
        log_level=log_level,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        max_items_per_request=max_items_per_request,
        max_text_chars=max_text_chars,
    )
