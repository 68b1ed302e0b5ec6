"""What every ``headvec`` command shares: one-line user errors, the model options, the console.

Commands parse their input, call the library and print its output; this module holds the pieces they
share. Every command that loads a model takes the same four options (``--dtype``, ``--device``,
``--threads``, ``--trust-remote-code``) with the same defaults, and loads through :func:`load_model`, so
the device rule is :func:`headvec.models.resolve_device`'s everywhere: ``auto`` is ``cuda`` when torch
sees a GPU, else ``cpu``. Nothing here imports torch or transformers at import time.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console

from headvec.errors import HeadvecError

if TYPE_CHECKING:
    from headvec.models import LoadedModel

console = Console()
error_console = Console(stderr=True)
F = TypeVar("F", bound=Callable)

DEBUG_ENV = "HEADVEC_DEBUG"  # set to 1 to see the traceback of a user error
DEFAULT_DEVICE = "auto"
DEFAULT_DTYPE = "float32"


def _quiet_transformers() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def user_errors(command: F) -> F:
    """Show a HeadvecError as one line on stderr and exit with code 2, instead of a traceback
    (``HEADVEC_DEBUG=1`` shows the traceback)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        _quiet_transformers()
        try:
            return command(*args, **kwargs)
        except HeadvecError as exc:
            if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise
            error_console.print(f"[bold red]error:[/] {exc}", soft_wrap=True, highlight=False)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def parse_ints(text: str | None, what: str) -> list[int] | None:
    """'0,3,-1' -> [0, 3, -1]; None or 'all' -> None."""
    if text is None or text == "all":
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise HeadvecError(f"--{what} must be comma-separated integers such as 0,-1, got {text!r}") from None


ModelArg = Annotated[str, typer.Argument(help="Hub id, local model directory, or alias (minilm, toy).")]
DtypeOpt = Annotated[str, typer.Option(help="float32, float16, bfloat16 or auto.")]
DeviceOpt = Annotated[
    str, typer.Option(help="cpu, cuda, cuda:N, or auto (cuda when a GPU is visible, else cpu).")
]
RemoteOpt = Annotated[bool, typer.Option(help="Run the model repository's own code (only if you trust it).")]
ThreadsOpt = Annotated[int, typer.Option(help="CPU threads for torch (0 = torch's default).")]


def set_threads(threads: int) -> None:
    """Limit torch's CPU threads (0 keeps torch's default): two busy processes on two cores crawl."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def load_model(
    name_or_path: str,
    *,
    dtype: str = DEFAULT_DTYPE,
    device: str = DEFAULT_DEVICE,
    threads: int = 0,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Apply the shared model options: set torch's threads, then :func:`headvec.models.load`."""
    from headvec.models import load

    set_threads(threads)
    return load(name_or_path, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
