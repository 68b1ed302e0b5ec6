"""Offline test fixtures: tiny random-init models of real Hugging Face architectures."""

from headvec.testing.tiny import TEXT_ONLY, TINY_ARCHITECTURES, build_tiny_model

__all__ = ["TEXT_ONLY", "TINY_ARCHITECTURES", "build_tiny_model"]
