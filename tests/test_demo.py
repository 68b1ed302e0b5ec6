"""``make demo``: SAV on the shipped toy model finds heads that read the image, and beats chance."""

from __future__ import annotations

import sys

import pytest
import torch

from headvec import MissingDependencyError
from headvec.demo import main, save_heat_map


def test_demo_on_the_toy_model_classifies_held_out_images(tmp_path):
    results = main(str(tmp_path))
    assert results["model"] == "toy"
    assert results["sav_accuracy"] > results["chance"] + 0.2
    assert results["generated_answer_accuracy"] > results["chance"] + 0.2
    assert (tmp_path / "head_accuracy.png").stat().st_size > 1000


def test_demo_on_real_minilm_finds_topic_heads(tmp_path):
    results = main(str(tmp_path), model="minilm", shots=5)
    assert results["best_heads"][0]["accuracy"] > results["chance"] + 0.3
    assert results["sav_accuracy"] > results["chance"] + 0.3
    assert results["generated_answer_accuracy"] is None


def test_the_heat_map_without_matplotlib_names_the_plot_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'headvec\[plot\]'"):
        save_heat_map(torch.zeros(2, 3), tmp_path / "map.png", "title")
    assert not (tmp_path / "map.png").exists()
