"""``headvec sav``: Sparse Attention Vector classifiers."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Sparse Attention Vectors: few-shot classifiers from a few heads.", no_args_is_help=True
)
