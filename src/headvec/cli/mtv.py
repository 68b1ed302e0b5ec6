"""``headvec mtv``: Multimodal Task Vectors."""

from __future__ import annotations

import typer

app = typer.Typer(help="Multimodal Task Vectors: many-shot ICL compressed into heads.", no_args_is_help=True)
