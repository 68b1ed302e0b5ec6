"""Sparse Attention Vectors: vectorised head scoring, determinism, save/load, errors, real MiniLM."""

from __future__ import annotations

import json

import pytest
import torch
from checks import random_image
from typer.testing import CliRunner

from headvec import load
from headvec.cli import app
from headvec.errors import DataError, HeadvecError
from headvec.evaluation.classification import evaluate_classification, results_markdown
from headvec.evaluation.classification_tasks import topics_task
from headvec.methods.sav import ClassifierInput, SparseAttentionVectors, head_scores, rank_heads, vote
from headvec.testing import TINY_ARCHITECTURES


def _loop_head_scores(x: torch.Tensor, y: torch.Tensor, k: int, leave_one_out: bool) -> torch.Tensor:
    """The obvious per-head, per-example loop the vectorised version must equal."""
    accuracy = torch.zeros(x.shape[1])
    for head in range(x.shape[1]):
        hits = 0
        for i in range(len(y)):
            keep = torch.ones(len(y), dtype=torch.bool)
            if leave_one_out:
                keep[i] = False
            sims = []
            for c in range(k):
                members = x[(y == c) & keep, head]
                centroid = members.mean(dim=0)
                sims.append(torch.nn.functional.cosine_similarity(x[i, head], centroid, dim=0))
            hits += int(torch.stack(sims).argmax() == y[i])
        accuracy[head] = hits / len(y)
    return accuracy


@pytest.mark.parametrize("scoring", ["leave_in", "leave_one_out"])
def test_vectorised_head_scores_equal_a_per_head_loop(scoring):
    generator = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    x = torch.randn(9, 6, 4, generator=generator) + torch.randn(3, 6, 4, generator=generator)[y] * 0.8
    accuracy, _ = head_scores(x, y, 3, scoring)
    expected = _loop_head_scores(x, y, 3, scoring == "leave_one_out")
    assert torch.allclose(accuracy, expected)
    # leave-in is never more pessimistic than leave-one-out
    if scoring == "leave_one_out":
        assert bool((head_scores(x, y, 3, "leave_in")[0] >= accuracy - 1e-6).all())


def test_ranking_and_vote_break_ties_deterministically():
    accuracy = torch.tensor([0.5, 0.9, 0.9, 0.1])
    margin = torch.tensor([0.0, 0.1, 0.3, 0.0])
    assert rank_heads(accuracy, margin).tolist() == [2, 1, 0, 3]
    # heads (best first) vote 1, 0, 0, 1: a 2-2 tie goes to the best-ranked head's class (1)
    sims = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    prediction, counts = vote(sims)
    assert prediction.tolist() == [1] and counts.tolist() == [[2, 2]]


@pytest.fixture(scope="module")
def minilm():
    return load("minilm", device="cpu")


@pytest.fixture(scope="module")
def topics():
    return topics_task(seed=0, n_pool=6, n_test=10)


def test_fit_is_deterministic_and_round_trips(minilm, topics, tmp_path):
    def fitted():
        return SparseAttentionVectors(minilm, n_heads=8, chat=False).fit(topics.pool, topics.pool_labels)

    first, second = fitted(), fitted()
    assert torch.equal(first.heads_, second.heads_)
    assert first.predict(topics.test) == second.predict(topics.test)
    first.save_pretrained(tmp_path / "sav")
    assert not list(tmp_path.glob("sav/*.pkl")) and not list(tmp_path.glob("sav/*.bin"))
    loaded = SparseAttentionVectors.from_pretrained(tmp_path / "sav", minilm)
    assert loaded.predict(topics.test) == first.predict(topics.test)
    assert (loaded.predict_proba(topics.test) == first.predict_proba(topics.test)).all()
    # the vote shares sum to one and the prediction is among the most voted classes
    shares = first.predict_proba(topics.test)
    assert abs(shares.sum(axis=1) - 1).max() < 1e-6
    for row, label in zip(shares, first.predict(topics.test), strict=True):
        assert row[first.classes_.index(label)] == row.max()


def test_auto_head_count_is_chosen_by_leave_one_out_votes(minilm, topics, tmp_path):
    sav = SparseAttentionVectors(minilm, n_heads="auto", chat=False).fit(topics.pool, topics.pool_labels)
    assert sav.n_heads_ in (1, 2, 3, 5, 10, 20, 40) and len(sav.heads_) == sav.n_heads_
    sav.save_pretrained(tmp_path / "auto")
    again = SparseAttentionVectors.from_pretrained(tmp_path / "auto", minilm)
    assert again.n_heads_ == sav.n_heads_ and again.predict(topics.test) == sav.predict(topics.test)


def test_sav_classifies_real_minilm_topics_better_than_chance(minilm):
    task = topics_task(seed=1, n_pool=10, n_test=20)
    results = evaluate_classification(
        minilm, task, shots=[5], n_heads=10, head_counts=[1, 10], n_draws=1, progress=False
    )
    sav = results["by_shots"]["5"]["sav"]["accuracy"]
    probe = results["by_shots"]["5"]["probe_last_layer"]["accuracy"]
    assert sav >= 0.6, sav  # chance is 0.2
    assert 0 <= probe <= 1 and "icl" not in results["by_shots"]["5"]  # an encoder cannot generate
    labels = task.test_labels
    assert results["majority"] == max(labels.count(c) for c in set(labels)) / len(labels)
    assert "(always the majority class)" in results_markdown(results)


def test_errors_name_the_problem(minilm, topics, tiny_model_dir, tmp_path):
    sav = SparseAttentionVectors(minilm, n_heads=4, chat=False)
    with pytest.raises(DataError, match="at least two classes"):
        sav.fit(topics.pool[:3], ["a", "a", "a"])
    with pytest.raises(DataError, match="too few examples per class"):
        sav.fit(topics.pool[:3], ["a", "a", "b"])
    sav.fit(topics.pool[:4], ["a", "a", "b", "b"])
    with pytest.raises(DataError, match="not seen at fit time"):
        sav.score(topics.pool[:2], ["a", "zebra"])
    with pytest.raises(HeadvecError, match="not fitted"):
        SparseAttentionVectors(minilm).predict(["x"])
    sav.save_pretrained(tmp_path / "sav")
    other = load(tiny_model_dir("llama"), device="cpu")
    with pytest.raises(HeadvecError, match="fitted on"):
        SparseAttentionVectors.from_pretrained(tmp_path / "sav", other)


@pytest.mark.parametrize("name", TINY_ARCHITECTURES)
def test_sav_runs_unchanged_on_every_tiny_architecture(name, tiny_model_dir):
    loaded = load(tiny_model_dir(name), device="cpu")
    texts = ["red apple", "green leaf", "blue sky", "red fire", "green grass", "blue sea"]
    labels = ["r", "g", "b", "r", "g", "b"]
    if loaded.is_multimodal:
        inputs = [ClassifierInput(t, [random_image(32, 32, seed=i)]) for i, t in enumerate(texts)]
    else:
        inputs = [ClassifierInput(t) for t in texts]
    sav = SparseAttentionVectors(loaded, n_heads=3).fit(inputs, labels)
    predicted = sav.predict(inputs)
    assert len(predicted) == 6 and set(predicted) <= {"r", "g", "b"}
    assert sav.heads_.shape == (3, 2)
    assert bool((sav.heads_[:, 0] < loaded.arch.n_layers).all())


def test_cli_fit_predict_and_bad_rows(tmp_path):
    task = topics_task(seed=2, n_pool=4, n_test=4)
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    for path, items, labels in ((train, task.pool, task.pool_labels), (test, task.test, task.test_labels)):
        path.write_text(
            "".join(
                json.dumps({"text": i.text, "label": y}) + "\n" for i, y in zip(items, labels, strict=True)
            )
        )
    runner = CliRunner()
    result = runner.invoke(
        app, ["sav", "fit", "minilm", str(train), "--out", str(tmp_path / "c"), "--no-chat"]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["sav", "predict", str(tmp_path / "c"), str(test), "--out", str(tmp_path / "p")]
    )
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output
    rows = [json.loads(line) for line in (tmp_path / "p").read_text().splitlines()]
    assert len(rows) == len(task.test) and all(r["prediction"] in task.classes for r in rows)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "x"}\n{"text": "b"}\n')
    result = runner.invoke(app, ["sav", "fit", "minilm", str(bad), "--out", str(tmp_path / "d")])
    assert result.exit_code == 2 and "line 2" in result.output and "label" in result.output
