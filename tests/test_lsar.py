"""LSAR: hand-computed subspaces, a planted language offset, baselines, bad input, tiny architectures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone

from headvec import load
from headvec.errors import HeadvecError
from headvec.methods.base import NotFittedError, ParameterError
from headvec.methods.lsar import LSAR, evaluate_alignment, lsar_subspace, retrieval_hits, sentence_embeddings
from headvec.testing import TINY_ARCHITECTURES


def test_two_languages_by_hand():
    """Means (3, 1, 0) and (3, -1, 0): the shared component v solves m_i . v = |v|^2 in their span, so
    v = (3, 0, 0), and the language parts (0, +-1, 0) span the y axis."""
    shared, basis = lsar_subspace(np.array([[3.0, 3.0], [1.0, -1.0], [0.0, 0.0]]), 1)
    np.testing.assert_allclose(shared, [3, 0, 0], atol=1e-12)
    np.testing.assert_allclose(np.abs(basis[:, 0]), [0, 1, 0], atol=1e-12)
    fitted = LSAR().fit(np.array([[3.0, 1.0, 0.0], [3.0, -1.0, 0.0]]), ["en", "xx"])
    np.testing.assert_allclose(fitted.transform(np.array([[2.0, 5.0, 7.0]])), [[2.0, 0.0, 7.0]], atol=1e-12)


def planted(seed: int, n: int = 400, offset: float = 4.0) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Sentences = shared content (mean 5 e0) + a language offset: en none, xx along e8, yy along e9."""
    rng = np.random.default_rng(seed)
    content = rng.normal(size=(n, 12)) + 5.0 * np.eye(12)[0]
    offsets = {"en": np.zeros(12), "xx": offset * np.eye(12)[8], "yy": offset * np.eye(12)[9]}
    languages = ["en", "xx", "yy"] * (n // 3)
    x = content[: len(languages)] + np.stack([offsets[lang] for lang in languages])
    return x, languages, content


def test_planted_language_offset_is_recovered():
    """By hand (see planted): m_en = 5 e0, m_xx = 5 e0 + 4 e8, m_yy = 5 e0 + 4 e9, so the shared part
    v = (v0, 0, ...) with 5 v0 = v0^2 is 5 e0, and the language parts 0, 4 e8, 4 e9 span {e8, e9}."""
    x, languages, _ = planted(0)
    lsar = LSAR().fit(x, languages)
    assert lsar.components_.shape == (2, 12)
    projector = lsar.components_.T @ lsar.components_
    expected = np.zeros((12, 12))
    expected[8, 8] = expected[9, 9] = 1.0
    np.testing.assert_allclose(projector, expected, atol=0.08)  # the sample means carry a little noise
    np.testing.assert_allclose(lsar.shared_mean_, 5.0 * np.eye(12)[0], atol=0.25)
    # the same sentence in two languages lands (almost) on the same point once the offset is gone
    rng = np.random.default_rng(1)
    sentence = rng.normal(size=(50, 12)) + 5.0 * np.eye(12)[0]
    in_xx, in_yy = sentence + 4.0 * np.eye(12)[8], sentence + 4.0 * np.eye(12)[9]
    before = np.linalg.norm(in_xx - in_yy, axis=1).mean()
    after = np.linalg.norm(lsar.transform(in_xx) - lsar.transform(in_yy), axis=1).mean()
    assert before > 5 and after < 0.5


def test_projection_is_orthogonal_to_the_language_subspace():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(120, 16)) + np.repeat(rng.normal(size=(4, 16)) * 3, 30, axis=0)
    languages = np.repeat(["en", "xx", "yy", "zz"], 30).tolist()
    lsar = LSAR(n_components=3, n_removed=2).fit(x, languages)
    full = LSAR(n_components=3).fit(x, languages)
    np.testing.assert_allclose(lsar.components_ @ lsar.components_.T, np.eye(2), atol=1e-10)  # orthonormal
    np.testing.assert_allclose(lsar.components_, full.components_[:2])  # r of the same rank-k subspace
    moved = lsar.transform(x)
    np.testing.assert_allclose(moved @ lsar.components_.T, 0, atol=1e-10)
    np.testing.assert_allclose(lsar.transform(moved), moved, atol=1e-10)  # a projection: idempotent
    np.testing.assert_allclose(full.components_ @ full.shared_mean_, 0, atol=1e-8)  # mu _|_ subspace
    # the rest of the space is untouched: x - moved lies in the subspace
    residue = x - moved
    np.testing.assert_allclose(residue - residue @ lsar.components_.T @ lsar.components_, 0, atol=1e-10)


def test_baselines_by_hand():
    x = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, 1.0]])
    languages = ["en", "en", "xx", "xx"]
    demean = LSAR(method="demean").fit(x, languages)
    np.testing.assert_allclose(demean.transform(x, languages), [[1, -0.5], [-1, 0.5], [-1, 0], [1, 0]])
    # LIR: en's rows [[2, 0], [0, 1]] have top singular direction e0, so [1, 1] loses its e0 part
    lir = LSAR(method="lir").fit(x, languages)
    np.testing.assert_allclose(np.abs(lir.language_directions_[0]), [[1, 0]], atol=1e-12)
    np.testing.assert_allclose(lir.transform([[1.0, 1.0]], ["en"]), [[0.0, 1.0]], atol=1e-12)
    np.testing.assert_array_equal(LSAR(method="none").fit(x, languages).transform(x), x)


def test_one_language_is_a_documented_no_op():
    x = np.random.default_rng(3).normal(size=(10, 5))
    with pytest.warns(UserWarning, match="no language subspace"):
        lsar = LSAR().fit(x, ["en"] * 10)
    np.testing.assert_array_equal(lsar.transform(x), x)
    with pytest.raises(ParameterError, match="n_components=1 but 1 language"):
        LSAR(n_components=1).fit(x, ["en"] * 10)


def test_bad_input_is_one_line():
    x = np.random.default_rng(4).normal(size=(12, 5))
    languages = ["en", "xx", "yy"] * 4
    for estimator, message in [
        (LSAR(n_components=3), "at most 2"),
        (LSAR(n_components=1, n_removed=2), "n_removed=2 > n_components=1"),
        (LSAR(method="pca"), "method"),
    ]:
        with pytest.raises(ParameterError, match=message) as info:
            estimator.fit(x, languages)
        assert "\n" not in str(info.value)
    with pytest.raises(HeadvecError, match="one language per row"):
        LSAR().fit(x, languages[:-1])
    with pytest.raises(NotFittedError):
        LSAR().transform(x)
    demean = LSAR(method="demean").fit(x, languages)
    with pytest.raises(HeadvecError, match="needs each row's language"):
        demean.transform(x)
    with pytest.raises(HeadvecError, match=r"\['qq'\] were not seen"):
        demean.transform(x[:1], ["qq"])


def test_sklearn_contract():
    lsar = LSAR(method="lir", n_removed=2)
    copy = clone(lsar)
    assert copy.get_params() == {"method": "lir", "n_components": None, "n_removed": 2}
    assert not any(name.endswith("_") for name in vars(copy))
    x, languages, _ = planted(5, n=60)
    torch_x = torch.tensor(x, dtype=torch.float32)
    np.testing.assert_allclose(
        LSAR().fit(torch_x, languages).transform(torch_x), LSAR().fit_transform(x, languages), atol=1e-4
    )


def test_retrieval_hits_by_hand():
    queries = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    targets = np.array([[2.0, 0.1], [1.0, 1.2], [0.0, 3.0]])
    # cosine nearest: q0 -> t0, q1 -> t2 (wrong), q2 -> t1
    np.testing.assert_array_equal(retrieval_hits(queries, targets), [True, False, False])


def test_mean_pooled_embeddings_match_the_hidden_states(tiny_model_dir):
    loaded = load(tiny_model_dir("llama"), device="cpu")
    texts = ["The cat sleeps .", "A small red cat sleeps on the warm floor .", "The dog ."]
    mine = sentence_embeddings(loaded, texts, [0, -1], batch_size=2)  # layers 0 and 1 (the last)
    for i, text in enumerate(texts):
        inputs = loaded.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hidden = loaded.model(**inputs, output_hidden_states=True).hidden_states
        # hidden_states[1] is layer 0's output (the last entry is after the final norm, so not compared)
        np.testing.assert_allclose(mine[i, 0], hidden[1][0].mean(dim=0).numpy(), atol=1e-5)
    assert np.abs(mine[:, 1] - mine[:, 0]).max() > 1e-2
    with pytest.raises(HeadvecError, match="layer 9 does not exist"):
        sentence_embeddings(loaded, texts, 9)


def test_minilm_english_only_lsar_is_a_no_op():
    minilm = load("minilm", device="cpu")
    texts = ["a cat sleeps", "the dog runs in the park", "water boils at one hundred degrees", "good morning"]
    embeddings = sentence_embeddings(minilm, texts, 3)
    assert embeddings.shape == (4, minilm.arch.hidden_size)
    with pytest.warns(UserWarning):
        lsar = LSAR().fit(embeddings, ["en"] * 4)
    np.testing.assert_array_equal(lsar.transform(embeddings), embeddings)


@pytest.mark.parametrize("name", TINY_ARCHITECTURES)
def test_end_to_end_on_tiny_architectures(name, tiny_model_dir):
    from headvec.toyworld.tasks import make_caption

    loaded = load(tiny_model_dir(name), device="cpu")
    languages = ["en", "xx", "yy"]
    parallel_items = {lang: make_caption(0, 8, lang, split="test") for lang in languages}
    fit_texts = [item.answer for lang in languages for item in make_caption(1, 6, lang, split="train")]
    fit = sentence_embeddings(loaded, fit_texts, -1)
    parallel = {
        lang: sentence_embeddings(loaded, [i.answer for i in items], -1)
        for lang, items in parallel_items.items()
    }
    labels = np.array([[i % 2, (i // 2) % 2] for i in range(8)])
    results = evaluate_alignment(
        fit, np.repeat(languages, 6).tolist(), parallel, probe_labels=labels, probe_train=np.arange(8) < 4
    )
    assert list(results) == ["none", "demean", "lir+1", "lir+2", "lir+3", "lsar+1", "lsar+2"]
    for row in results.values():
        assert 0 <= row["retrieval"]["mean"][0] <= 1 and 0 <= row["probe"]["mean_other"][0] <= 1
