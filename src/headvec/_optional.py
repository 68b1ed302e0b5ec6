"""Optional dependencies: imported where they are used, with one install message per missing extra.

The core (models, engine, methods, CLI) needs only torch, transformers and a few small packages; serving,
Ray, TRL, plots and the OpenAI client come with extras. :func:`require` imports one of them or raises a
one-line :class:`MissingDependencyError` naming the ``pip install 'headvec[extra]'`` to run::

    fastapi = require("fastapi", extra="serve")
    if is_available("ray"): ...
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from types import ModuleType

from headvec.errors import HeadvecError

# Top-level module -> (the extra that installs it, its PyPI name).
EXTRAS: dict[str, tuple[str, str]] = {
    "fastapi": ("serve", "fastapi"),
    "uvicorn": ("serve", "uvicorn"),
    "httpx": ("serve", "httpx"),
    "ray": ("ray", "ray"),
    "trl": ("trl", "trl"),
    "matplotlib": ("plot", "matplotlib"),
    "openai": ("openai", "openai"),
    "peft": ("trl", "peft"),
    "datasets": ("trl", "datasets"),
    "gymnasium": ("rl", "gymnasium"),
    "mujoco": ("rl", "mujoco"),
    "dm_control": ("rl", "dm-control"),
    "stable_baselines3": ("rl", "stable-baselines3"),
    "minari": ("rl", "minari"),
    "psutil": ("bench", "psutil"),
    "nnsight": ("bench", "nnsight"),
    "transformer_lens": ("bench", "transformer-lens"),
}


class MissingDependencyError(HeadvecError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


@functools.cache
def is_available(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (``find_spec`` on its top level)."""
    return importlib.util.find_spec(module.split(".")[0]) is not None


def require(module: str, *, extra: str | None = None, feature: str | None = None) -> ModuleType:
    """Import ``module`` (``"fastapi"``, ``"matplotlib.pyplot"``...) or raise a one-line install hint.

    ``extra`` defaults to the one :data:`EXTRAS` lists for the top-level package; ``feature`` names what
    needs it in the message (default: the module). An ImportError raised *inside* an installed package
    (a broken install, not a missing one) is re-raised unchanged.
    """
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != top:
            raise
        known_extra, package = EXTRAS.get(top, (None, top))
        extra = extra or known_extra
        hint = f"pip install 'headvec[{extra}]'" if extra else f"pip install {package}"
        raise MissingDependencyError(
            f"{feature or module} needs the optional package {package!r}, which is not installed; run: {hint}"
        ) from exc
