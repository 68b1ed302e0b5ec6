"""Internal consistency: hand-computed calibration, IC, votes and AUROC; end to end on tiny models."""

from __future__ import annotations

import numpy as np
import pytest

from headvec import load
from headvec.errors import HeadvecError
from headvec.methods.consistency import (
    ICQuestion,
    auroc,
    calibrate,
    confidence,
    evaluate_internal_consistency,
    internal_consistency,
    label_token_ids,
    stated_answer,
    truncate_path,
    vote_accuracy,
    weighted_vote,
)
from headvec.testing import TINY_ARCHITECTURES

# [paths, layers, labels]: 4 paths, 2 layers, 2 labels (each row sums to one)
TABLE = np.array(
    [
        [[0.9, 0.1], [0.7, 0.3]],
        [[0.6, 0.4], [0.7, 0.3]],
        [[0.4, 0.6], [0.3, 0.7]],
        [[0.2, 0.8], [0.7, 0.3]],
    ]
)


def test_quantile_calibration_by_hand():
    scores, quantiles = calibrate(TABLE)
    # K = 2: the median of each (layer, label) column; layer 0 medians interpolate (0.6+0.4)/2
    np.testing.assert_allclose(quantiles, [[0.5, 0.5], [0.7, 0.3]])
    # above the median 1, at it 1/2, below 0
    expected = np.array(
        [
            [[1, 0], [0.5, 0.5]],
            [[1, 0], [0.5, 0.5]],
            [[0, 1], [0, 1]],
            [[0, 1], [0.5, 0.5]],
        ]
    )
    np.testing.assert_allclose(scores, expected)


def test_internal_consistency_by_hand():
    scores, quantiles = calibrate(TABLE)
    prediction, ic = internal_consistency(scores)
    # last layer: ties go to the first label; path 2 is the only one above the median for label 1
    np.testing.assert_array_equal(prediction, [0, 0, 1, 0])
    # IC = layer 0's calibrated score of the prediction + layer 1's
    np.testing.assert_allclose(ic, [1.5, 1.5, 2.0, 0.5])
    np.testing.assert_allclose(confidence(TABLE, quantiles), [0.0, 0.0, 0.8, 0.0])


def test_calibration_is_per_label_not_shared():
    """A label the model always prefers a little (a bias) is not predicted everywhere after calibration."""
    biased = np.array([[[0.6, 0.4]], [[0.7, 0.3]], [[0.55, 0.45]], [[0.8, 0.2]]])
    scores, _ = calibrate(biased)
    prediction, _ = internal_consistency(scores)
    assert sorted(prediction.tolist()) == [0, 0, 1, 1]  # raw argmax would say label 0 four times


def test_weighted_vote_by_hand():
    rng = np.random.default_rng(0)
    answers = ["a", "b", "b", "a", "c"]
    assert weighted_vote(answers, [3, 1, 1, 0.5, 2], rng) == "a"  # a 3.5, b 2, c 2
    assert weighted_vote(answers, [0.5, 2, 2, 0.5, 1], rng) == "b"  # a 1, b 4, c 1
    # plain vote: a and b tie at 2, broken at random (seeded) and never c
    picks = {weighted_vote(answers, [1] * 5, rng) for _ in range(50)}
    assert picks == {"a", "b"}


def test_vote_curves_by_hand():
    """One question, paths x y y, gold x; IC weights 5 1 1.

    One vote: right when x comes first, 1/3 for both. Two votes: the pair holds x with probability 2/3;
    self-consistency then ties (half right), IC always picks x. Three votes: SC says y, IC says x.
    """
    accuracy = vote_accuracy(
        [["x", "y", "y"]],
        {"sc": np.ones((1, 3)), "ic": np.array([[5.0, 1.0, 1.0]])},
        ["x"],
        n_permutations=3000,
        seed=0,
    )
    np.testing.assert_allclose(accuracy["sc"][:, 0], [1 / 3, 1 / 3, 0.0], atol=0.03)
    np.testing.assert_allclose(accuracy["ic"][:, 0], [1 / 3, 2 / 3, 1.0], atol=0.03)


def test_auroc_by_hand():
    # pairs (positive, negative): (0.9, 0.8) (0.9, 0.1) (0.3, 0.8) (0.3, 0.1) -> 3 of 4 ordered right
    assert auroc(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 0, 1, 0])) == 0.75
    assert auroc(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5  # a tie counts half
    assert np.isnan(auroc(np.array([0.5, 0.6]), np.array([1, 1])))


def test_truncate_path_drops_the_answer_sentence():
    path = "there is a red square . red objects : square . so the answer is one ."
    assert (
        truncate_path(path, "so the answer is")
        == "there is a red square . red objects : square . so the answer is"
    )
    assert truncate_path("so the answer is two .", "so the answer is") == "so the answer is"


def test_stated_answer_is_what_the_path_wrote():
    labels = ("zero", "one", "two")
    assert (
        stated_answer("a . so the answer is one . so the answer is two .", "so the answer is", labels)
        == "two"
    )
    assert stated_answer("a . so the answer is seven .", "so the answer is", labels) is None
    assert stated_answer("no conclusion .", "so the answer is", labels) is None


def test_label_tokens_from_the_tokenizer(tiny_model_dir):
    toy = load("toy", device="cpu")
    (yes,), (no,) = label_token_ids(toy.tokenizer, ["yes", "no"])
    assert toy.tokenizer.convert_ids_to_tokens([yes, no]) == ["yes", "no"]
    with pytest.raises(HeadvecError, match="'frobnicate' is not a single token"):
        label_token_ids(toy.tokenizer, ["yes", "frobnicate"])
    # byte-level BPE: the leading-space spelling is its own token, and both are found
    tokenizer = load(tiny_model_dir("gpt2"), device="cpu").tokenizer
    (ids,) = label_token_ids(tokenizer, ["the"])
    single = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in ("the", " the")]
    assert ids == [s[0] for s in single if len(s) == 1]
    assert tokenizer(" the", add_special_tokens=False)["input_ids"][0] in ids


def test_gold_must_be_a_label():
    with pytest.raises(HeadvecError, match="not one of the labels"):
        ICQuestion(prompt=None, labels=("yes", "no"), gold="maybe")


@pytest.mark.parametrize("name", TINY_ARCHITECTURES)
def test_end_to_end_on_tiny_architectures(name, tiny_model_dir):
    loaded = load(tiny_model_dir(name), device="cpu")
    texts = ["Is the sky blue? Think step by step.", "Do dogs bark? Think step by step.", "Is water wet?"]
    questions = [ICQuestion(loaded.build_prompt(t), ("the", "and"), "the") for t in texts]
    result = evaluate_internal_consistency(
        loaded,
        questions,
        trigger="So the answer is",
        n_paths=3,
        max_new_tokens=6,
        n_permutations=5,
        batch_size=8,
        progress=False,
    )
    assert result.n_layers == loaded.arch.n_layers
    assert set(result.curves) == {
        "self_consistency",
        "confidence",
        "internal_consistency",
        "self_consistency_stated",
    }
    assert all(len(curve) == 3 and all(0 <= v <= 1 for v in curve) for curve in result.curves.values())
    assert result.ic_by_layer_agreement[-1] == 1.0  # the last layer always agrees with itself


def test_a_wrong_lens_is_refused_not_read(tiny_model_dir):
    from headvec.arch import LENS_OVERRIDES, register_lens
    from headvec.engine import HeadEngine
    from headvec.methods.consistency import read_label_probs

    loaded = load(tiny_model_dir("llama"), device="cpu")
    prompts = [loaded.build_prompt("Is the sky blue?")]
    ids = label_token_ids(loaded.tokenizer, ["the", "and"])
    assert read_label_probs(HeadEngine(loaded), prompts, ids, progress=False).shape == (
        1,
        loaded.arch.n_layers,
        2,
    )
    try:
        register_lens("llama", "", "lm_head")  # forgets the final norm
        with pytest.raises(HeadvecError, match="differs from"):
            read_label_probs(HeadEngine(loaded), prompts, ids, progress=False)
    finally:
        LENS_OVERRIDES.pop("llama", None)


def test_cached_paths_from_other_settings_are_refused(tmp_path):
    from headvec.engine import HeadEngine
    from headvec.methods.consistency import sample_paths

    toy = load("toy", device="cpu")
    questions = [
        ICQuestion(
            toy.build_prompt("how many objects are there ? think step by step ."), ("one", "two"), "one"
        )
    ]
    engine, cache = HeadEngine(toy), tmp_path / "paths.jsonl"
    first = sample_paths(engine, questions, 2, max_new_tokens=5, cache=cache, progress=False)
    assert (
        sample_paths(engine, questions, 2, max_new_tokens=5, cache=cache, progress=False) == first
    )  # resumed
    with pytest.raises(HeadvecError, match="other settings"):
        sample_paths(engine, questions, 2, max_new_tokens=5, temperature=1.0, cache=cache, progress=False)
