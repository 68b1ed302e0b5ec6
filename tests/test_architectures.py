"""The engine on tiny random-init instances of every supported architecture (built from configs)."""

from __future__ import annotations

import pytest
from checks import (
    check_batched_equals_single,
    check_patch_every_generate_step,
    check_patching,
    check_reconstruction,
)

from headvec import load
from headvec.testing import TINY_ARCHITECTURES

POSITIONS = [-1, -3]  # the last real token, and one two steps earlier


# head_dim != hidden_size / n_heads on purpose in these: it must come from the projection's shape
DECOUPLED_HEAD_DIM = {"qwen3", "gemma2", "gemma3_text", "deepseek_v3"}


@pytest.fixture(scope="module", params=TINY_ARCHITECTURES)
def tiny(request, tiny_model_dir):
    return load(tiny_model_dir(request.param), device="cpu")


def test_geometry_read_from_the_projection(tiny):
    arch = tiny.arch
    config = tiny.model.config.get_text_config(decoder=True)
    assert arch.n_heads == getattr(config, "num_attention_heads", getattr(config, "n_head", None))
    assert arch.n_layers == getattr(config, "num_hidden_layers", getattr(config, "n_layer", None))
    declared = getattr(config, "v_head_dim", None) or getattr(config, "head_dim", None)
    assert arch.head_dim == (declared or arch.hidden_size // arch.n_heads)
    if arch.model_type in DECOUPLED_HEAD_DIM:
        assert arch.head_dim * arch.n_heads != arch.hidden_size
    # the hooked stack is the language model, never the vision tower
    assert not any(marker in arch.layers_path for marker in ("vision", "visual"))
    assert tiny.model.get_submodule(arch.layers_path)[0].get_submodule(arch.attn_out_name) is arch.attn_out(
        tiny.model, 0
    )


def test_reconstruction(tiny):
    check_reconstruction(tiny, POSITIONS)


def test_patch_own_value_is_exact_and_zeroing_changes(tiny):
    check_patching(tiny, POSITIONS)


def test_batched_equals_single(tiny):
    check_batched_equals_single(tiny, POSITIONS)


def test_patch_applies_at_every_generate_step(tiny):
    check_patch_every_generate_step(tiny)
