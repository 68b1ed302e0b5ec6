"""headvec: read, steer and judge (multimodal) language models through their attention heads.

The package imports lazily, as transformers does: ``_import_structure`` maps each submodule to its
public names, and a name is imported on first use (``import headvec`` costs no torch). The
``TYPE_CHECKING`` block repeats the same imports for type checkers and IDEs; a test keeps the two equal.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from headvec.errors import DataError, HeadvecError, UnknownArchitectureError

__version__ = "0.1.0"

_import_structure: dict[str, list[str]] = {
    "_optional": ["MissingDependencyError"],
    "arch": ["Architecture", "discover_architecture", "register_architecture"],
    "engine": ["Capture", "HeadEngine", "HeadPatch"],
    "methods.mtv": ["MultimodalTaskVector"],
    "methods.sav": ["SparseAttentionVectors"],
    "models": ["Example", "LoadedModel", "Prompt", "load"],
}

if TYPE_CHECKING:
    from headvec._optional import MissingDependencyError
    from headvec.arch import Architecture, discover_architecture, register_architecture
    from headvec.engine import Capture, HeadEngine, HeadPatch
    from headvec.methods.mtv import MultimodalTaskVector
    from headvec.methods.sav import SparseAttentionVectors
    from headvec.models import Example, LoadedModel, Prompt, load

_module_of = {name: module for module, names in _import_structure.items() for name in names}

__all__ = [
    "Architecture",
    "Capture",
    "DataError",
    "Example",
    "HeadEngine",
    "HeadPatch",
    "HeadvecError",
    "LoadedModel",
    "MissingDependencyError",
    "MultimodalTaskVector",
    "Prompt",
    "SparseAttentionVectors",
    "UnknownArchitectureError",
    "__version__",
    "discover_architecture",
    "load",
    "register_architecture",
]


def __getattr__(name: str) -> Any:
    if name not in _module_of:
        raise AttributeError(f"module 'headvec' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"headvec.{_module_of[name]}"), name)
    globals()[name] = value  # the next access skips __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_module_of))
