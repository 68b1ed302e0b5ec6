"""SAV and MTV follow the scikit-learn estimator contract; artifacts carry a format version."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.utils.estimator_checks import (
    check_do_not_raise_errors_in_init_or_set_params,
    check_estimator_cloneable,
    check_estimator_repr,
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
)
from sklearn.utils.validation import check_is_fitted

from headvec import HeadvecError, load
from headvec.methods.artifacts import CONFIG_NAME, FORMAT_VERSION, MODEL_KEY, fitted_model_name
from headvec.methods.base import NotFittedError, ParameterError
from headvec.methods.mtv import IclEpisode, MultimodalTaskVector
from headvec.methods.sav import SparseAttentionVectors
from headvec.models import Example, LoadedModel

TEXTS = ["red apple", "green leaf", "blue sky", "red fire", "green grass", "blue sea"]
LABELS = ["r", "g", "b", "r", "g", "b"]
SMALL_MTV = {"n_prompts": 3, "n_shots": 2, "steps": 2, "samples_per_step": 4, "n_search_items": 4}
SKLEARN_CHECKS = [
    check_estimator_cloneable,
    check_estimator_repr,
    check_get_params_invariance,
    check_set_params,
    check_parameters_default_constructible,
    check_no_attributes_set_in_init,
    check_do_not_raise_errors_in_init_or_set_params,
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def llama_dir(tiny_model_dir):
    return tiny_model_dir("llama")


@pytest.fixture(scope="module")
def llama(llama_dir):
    return load(llama_dir, device="cpu")


def episodes() -> list[IclEpisode]:
    words = ["one", "two", "three", "four", "five", "six"]
    turns = [Example(f"the number {w}", (), ["red", "blue"][i % 2]) for i, w in enumerate(words)]
    return [IclEpisode(tuple(turns[i : i + 2]), turns[(i + 2) % 6]) for i in range(6)]


def estimators(llama: LoadedModel) -> list:
    return [
        SparseAttentionVectors(llama, n_heads=3),
        SparseAttentionVectors("some/model", n_heads="auto", scoring="leave_in", template="Q: {text}"),
        MultimodalTaskVector(llama, **SMALL_MTV),
        MultimodalTaskVector("some/model", mode="add", threshold=0.5),
    ]


@pytest.mark.parametrize("check", SKLEARN_CHECKS, ids=lambda check: check.__name__)
@pytest.mark.parametrize("index", range(4))
def test_sklearn_parameter_checks(check, index, llama):
    estimator = estimators(llama)[index]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # check_set_params only warns when set_params validates
        check(type(estimator).__name__, estimator)


def test_clone_of_an_unfitted_estimator_has_equal_params_and_shares_the_model(llama):
    for estimator in estimators(llama):
        copy = clone(estimator)
        assert type(copy) is type(estimator) and copy is not estimator
        assert copy.get_params() == estimator.get_params()
        assert copy.model is estimator.model  # a LoadedModel is shared, never deep-copied


def test_clone_of_a_fitted_sav_is_unfitted_with_equal_params(llama):
    sav = SparseAttentionVectors(llama, n_heads=3).fit(TEXTS, LABELS)
    check_is_fitted(sav)
    copy = clone(sav)
    assert copy.get_params() == sav.get_params()
    assert not [name for name in vars(copy) if name.endswith("_")]
    with pytest.raises(SklearnNotFittedError):
        check_is_fitted(copy)
    assert torch.equal(copy.fit(TEXTS, LABELS).heads_, sav.heads_)


def test_clone_of_a_fitted_mtv_is_unfitted_with_equal_params(llama):
    mtv = MultimodalTaskVector(llama, **SMALL_MTV).fit(episodes())
    copy = clone(mtv)
    assert copy.get_params() == mtv.get_params()
    assert not [name for name in vars(copy) if name.endswith("_")]
    with pytest.raises(NotFittedError, match="not fitted"):
        copy.generate(episodes()[:1])


def test_a_model_name_is_loaded_at_fit_and_never_written_back(llama_dir):
    sav = SparseAttentionVectors(str(llama_dir), n_heads=2)
    assert not hasattr(sav, "loaded_")
    sav.fit(TEXTS, LABELS)
    assert sav.model == str(llama_dir)
    assert isinstance(sav.loaded_, LoadedModel) and sav.get_params()["model"] == str(llama_dir)
    mtv = MultimodalTaskVector(str(llama_dir), **SMALL_MTV).fit(episodes())
    assert mtv.model == str(llama_dir) and isinstance(mtv.loaded_, LoadedModel)


def test_parameters_are_validated_in_fit_not_in_the_constructor(llama):
    sav = SparseAttentionVectors(llama, n_heads=0, scoring="nearest")
    assert sav.n_heads == 0 and sav.scoring == "nearest"
    with pytest.raises(ParameterError, match="'n_heads' parameter of SparseAttentionVectors") as info:
        sav.fit(TEXTS, LABELS)
    assert "\n" not in str(info.value) and isinstance(info.value, HeadvecError)
    with pytest.raises(ParameterError, match="'scoring' parameter"):
        sav.set_params(n_heads=2).fit(TEXTS, LABELS)
    with pytest.raises(ParameterError, match="'lr' parameter of MultimodalTaskVector"):
        MultimodalTaskVector(llama, **SMALL_MTV, lr=0.0).fit(episodes())


def test_set_params_changes_what_fit_does(llama):
    sav = SparseAttentionVectors(llama, n_heads=2).fit(TEXTS, LABELS)
    assert sav.set_params(n_heads=4) is sav
    assert len(sav.fit(TEXTS, LABELS).heads_) == 4
    with pytest.raises(ValueError, match="Invalid parameter 'heads'"):
        sav.set_params(heads=3)


def test_unfitted_methods_raise_sklearns_not_fitted_error(llama):
    with pytest.raises(SklearnNotFittedError, match="SparseAttentionVectors is not fitted"):
        SparseAttentionVectors(llama).predict(TEXTS)
    with pytest.raises(HeadvecError, match="MultimodalTaskVector is not fitted"):
        MultimodalTaskVector(llama).patch()


def test_score_is_accuracy_for_sav_and_mtv(llama):
    sav = SparseAttentionVectors(llama, n_heads=3).fit(TEXTS, LABELS)
    predicted = sav.predict(TEXTS)
    flipped = ["r" if y != "r" else "g" for y in LABELS]
    assert sav.score(TEXTS, LABELS) == sum(p == y for p, y in zip(predicted, LABELS, strict=True)) / 6
    assert sav.score(TEXTS, flipped) == sum(p == y for p, y in zip(predicted, flipped, strict=True)) / 6
    mtv = MultimodalTaskVector(llama, **SMALL_MTV).fit(episodes())
    answers = mtv.generate(episodes(), n_shots=0)
    assert mtv.score(episodes(), answers, n_shots=0) == 1.0  # its own answers as targets
    assert mtv.score(episodes(), ["never said"] * 6, n_shots=0) == 0.0
    expected = mtv.correct(episodes(), n_shots=0)
    assert mtv.score(episodes(), n_shots=0) == sum(expected) / len(expected)


# -------------------------------------------------------------------------------------- artifacts
def test_artifacts_record_the_format_and_one_model_key(llama, tmp_path):
    SparseAttentionVectors(llama, n_heads=2).fit(TEXTS, LABELS).save_pretrained(tmp_path / "sav")
    MultimodalTaskVector(llama, **SMALL_MTV).fit(episodes()).save_pretrained(tmp_path / "mtv")
    for name in ("sav", "mtv"):
        config = json.loads((tmp_path / name / CONFIG_NAME).read_text())
        assert config["format_version"] == FORMAT_VERSION
        assert config[MODEL_KEY]["weights_fingerprint"] == llama.identity["weights_fingerprint"]
        assert "model" not in config and "model" not in config["params"]
        assert fitted_model_name(tmp_path / name) == llama.name_or_path


def test_a_version_0_sav_artifact_is_migrated(llama, tmp_path):
    sav = SparseAttentionVectors(llama, n_heads=2).fit(TEXTS, LABELS)
    sav.save_pretrained(tmp_path / "old")
    path = tmp_path / "old" / CONFIG_NAME
    config = json.loads(path.read_text())
    del config["format_version"]
    config["model"] = config.pop(MODEL_KEY)  # the layout SAV wrote before format 1
    path.write_text(json.dumps(config))
    again = SparseAttentionVectors.from_pretrained(tmp_path / "old", llama)
    assert again.predict_proba(TEXTS).tolist() == sav.predict_proba(TEXTS).tolist()
    assert again.model_identity_ == sav.model_identity_


@pytest.mark.parametrize(("version", "needle"), [(FORMAT_VERSION + 1, "upgrade headvec"), ("2", "unknown")])
def test_an_unreadable_format_version_is_a_one_line_error(version, needle, llama, tmp_path):
    SparseAttentionVectors(llama, n_heads=2).fit(TEXTS, LABELS).save_pretrained(tmp_path / "new")
    path = tmp_path / "new" / CONFIG_NAME
    path.write_text(json.dumps(json.loads(path.read_text()) | {"format_version": version}))
    with pytest.raises(HeadvecError, match=needle) as info:
        SparseAttentionVectors.from_pretrained(tmp_path / "new", llama)
    assert "\n" not in str(info.value)
