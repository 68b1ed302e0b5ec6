"""Shared fixtures: tiny random-init models built from configs (no hub), built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers.utils import logging

logging.set_verbosity_error()
logging.disable_progress_bar()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Return a function name -> directory of a tiny model of that architecture (built once)."""
    from headvec.testing import build_tiny_model

    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = build_tiny_model(name, tmp_path_factory.mktemp(name), seed=0)
        return built[name]

    return get
