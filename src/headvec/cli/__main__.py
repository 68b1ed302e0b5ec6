"""``python -m headvec.cli``."""

from headvec.cli import app

app()
