"""headvec: read, steer and judge (multimodal) language models through their attention heads."""

from headvec.arch import Architecture, discover_architecture, register_architecture
from headvec.engine import Capture, HeadEngine, HeadPatch
from headvec.errors import DataError, HeadvecError, UnknownArchitectureError
from headvec.models import Example, LoadedModel, Prompt, load

__version__ = "0.1.0"

__all__ = [
    "Architecture",
    "Capture",
    "DataError",
    "Example",
    "HeadEngine",
    "HeadPatch",
    "HeadvecError",
    "LoadedModel",
    "Prompt",
    "UnknownArchitectureError",
    "__version__",
    "discover_architecture",
    "load",
    "register_architecture",
]
