"""The logit lens on every tiny architecture: at the last layer it is the model's own head."""

from __future__ import annotations

import pytest
import torch

from headvec import load
from headvec.arch import LENS_OVERRIDES, discover_lens, register_lens
from headvec.engine import HeadEngine
from headvec.errors import HeadvecError
from headvec.testing import TINY_ARCHITECTURES

TEXTS = ["The quick brown fox jumps over", "Water boils at one hundred degrees Celsius at sea level ."]


@pytest.fixture(scope="module", params=TINY_ARCHITECTURES)
def tiny(request, tiny_model_dir):
    return load(tiny_model_dir(request.param), device="cpu")


def test_lens_at_the_last_layer_is_the_models_logits(tiny):
    engine = HeadEngine(tiny)
    capture = engine.capture(TEXTS, positions=[-1, -2], residual=True, logits=True)
    lens = engine.logit_lens(capture.residual)  # [batch, positions, layers, vocab]
    assert lens.shape[:3] == (2, 2, tiny.arch.n_layers)
    torch.testing.assert_close(lens[:, :, -1], capture.logits, atol=1e-4, rtol=1e-4)
    # an earlier layer reads something else (the lens is not just returning the logits)
    assert (lens[:, :, 0] - capture.logits).abs().max() > 1e-3
    # a subset of the vocabulary is the same columns
    ids = [3, 7, 11]
    torch.testing.assert_close(engine.logit_lens(capture.residual, ids), lens[..., ids])


def test_lens_override_and_bad_override(tiny_model_dir):
    loaded = load(tiny_model_dir("llama"), device="cpu")
    found = discover_lens(loaded.model, loaded.arch)
    assert (found.final_norm, found.unembedding) == ("model.norm", "lm_head")
    try:
        register_lens("llama", "model.norm", "lm_head")
        assert discover_lens(loaded.model, loaded.arch).final_norm == "model.norm"
        register_lens("llama", "model.no_such_norm", "lm_head")
        with pytest.raises(HeadvecError, match="no_such_norm"):
            discover_lens(loaded.model, loaded.arch)
    finally:
        LENS_OVERRIDES.pop("llama", None)


def test_an_encoder_has_no_lens():
    minilm = load("minilm", device="cpu")
    with pytest.raises(HeadvecError, match="no language-model head"):
        HeadEngine(minilm).logit_lens(torch.zeros(1, minilm.arch.hidden_size))
