"""LSAR: remove a low-rank language-specific subspace from multilingual sentence embeddings.

Xie et al., "Discovering Low-rank Subspaces for Language-agnostic Multilingual Representations" (EMNLP
2022; official code ``zhxieml/LSAR``, ``src/alignment/_low_rank.py`` and ``__init__.py``). Training-free:
from the mean sentence embedding of each language (monolingual text is enough), fit the best rank-k
approximation of the ``d x L`` matrix of language means around a shared component that is orthogonal to
it; the language-specific part spans a k-dimensional subspace, and projecting its top r directions out
of every embedding (whatever its language) makes the embeddings more language-agnostic. Baselines, as in
the official ``build_aligner``: ``none``, ``demean`` (subtract the sentence's own language mean) and
``lir`` (Yang et al. 2021: remove the top r singular directions of the sentence's own language).

:func:`sentence_embeddings` makes the embeddings: the mean over real tokens of one decoder layer's output.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from numbers import Integral
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils._param_validation import Interval, InvalidParameterError, StrOptions
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from headvec.errors import DataError, HeadvecError
from headvec.methods.base import NotFittedError, ParameterError
from headvec.stats import bootstrap_ci

METHODS = ("none", "demean", "lir", "lsar")


def lsar_subspace(means: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """The official ``lsar(W, k)``: ``means`` is ``d x L`` (one column per language).

    Returns the shared component ``mu`` (``d``; orthogonal to the language-specific part) and an
    orthonormal basis ``[d, rank]`` of the language-specific subspace, strongest direction first.
    """
    n_languages = means.shape[1]
    ones = np.ones(n_languages)
    center = means @ ones / n_languages
    u, s, vh = np.linalg.svd(means - np.outer(center, ones), full_matrices=False)
    specific, gamma = u[:, :rank], vh.T[:, :rank] @ np.diag(s[:rank])
    best_fit = np.outer(center, ones) + specific @ gamma.T  # rank-k approximation (+ the mean)
    shared = np.linalg.pinv(best_fit).T @ ones  # in span(best_fit), with best_fit[:, i] . shared = 1
    shared /= (
        shared**2
    ).sum()  # now best_fit[:, i] . shared = |shared|^2: each column minus it is orthogonal
    language_part = best_fit - np.outer(shared, ones)
    u, _, _ = np.linalg.svd(language_part, full_matrices=False)
    return shared, u[:, :rank]


def _project_out(x: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """``x - (x C) C^T`` for orthonormal columns ``C`` ``[d, r]`` (the official ``lir`` projection)."""
    return x - (x @ directions) @ directions.T


class LSAR(TransformerMixin, BaseEstimator):
    """Make sentence embeddings language-agnostic by projecting out a language subspace.

    Parameters
    ----------
    method : {"lsar", "demean", "lir", "none"}, default="lsar"
        ``lsar``: remove ``n_removed`` directions of the rank-``n_components`` language subspace, the same
        projection for every language. ``demean``: subtract the sentence's language mean. ``lir``:
        remove the top ``n_removed`` singular directions of the sentence's own language.
    n_components : int or None, default=None
        Rank k of the language subspace (``lsar``); at most (languages - 1), which is the default.
    n_removed : int or None, default=None
        Directions removed: r <= k for ``lsar`` (default k), per language for ``lir`` (default 1).

    Attributes
    ----------
    languages_ : list of str
        The languages seen in ``fit``, sorted.
    language_means_ : ndarray of shape (n_languages, n_features)
    shared_mean_ : ndarray of shape (n_features,)
        ``lsar`` only: the language-agnostic component, orthogonal to the subspace.
    components_ : ndarray of shape (n_removed, n_features)
        ``lsar`` only: the orthonormal directions projected out.
    language_directions_ : ndarray of shape (n_languages, n_removed, n_features)
        ``lir`` only.

    With one language there is no language subspace: ``lsar`` with the default rank fits k = 0 and its
    ``transform`` is the identity (with a warning), so it is a no-op rather than a silently odd result.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[3.0, 1.0, 0.0], [3.0, -1.0, 0.0]])
    >>> LSAR().fit(x, ["en", "xx"]).components_.round(6).tolist()
    [[0.0, 1.0, 0.0]]
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "method": [StrOptions(set(METHODS))],
        "n_components": [Interval(Integral, 0, None, closed="left"), None],
        "n_removed": [Interval(Integral, 0, None, closed="left"), None],
    }

    def __init__(self, method: str = "lsar", n_components: int | None = None, n_removed: int | None = None):
        self.method = method
        self.n_components = n_components
        self.n_removed = n_removed

    def fit(self, X: Any, languages: Sequence[str]) -> LSAR:
        """Fit on embeddings ``[n, d]`` (numpy or torch) and each row's language (monolingual text does)."""
        try:
            self._validate_params()
        except InvalidParameterError as exc:
            raise ParameterError(str(exc).replace("\n", " ")) from None
        x = _as_matrix(X)
        languages = [str(lang) for lang in languages]
        if len(languages) != len(x):
            raise DataError(f"{len(x)} embeddings but {len(languages)} languages; give one language per row")
        self.languages_ = sorted(set(languages))
        rows = {lang: x[[i for i, lg in enumerate(languages) if lg == lang]] for lang in self.languages_}
        self.language_means_ = np.stack([rows[lang].mean(axis=0) for lang in self.languages_])
        n_languages, dim = len(self.languages_), x.shape[1]
        if self.method == "lsar":
            limit = n_languages - 1
            rank = limit if self.n_components is None else self.n_components
            if rank > limit:
                raise ParameterError(
                    f"n_components={rank} but {n_languages} language(s) span a language subspace of rank at "
                    f"most {limit}; use n_components <= {limit}"
                )
            removed = rank if self.n_removed is None else self.n_removed
            if removed > rank:
                raise ParameterError(
                    f"n_removed={removed} > n_components={rank}; remove at most k directions"
                )
            if rank == 0:
                warnings.warn(
                    f"LSAR fitted on {n_languages} language(s): there is no language subspace, so transform "
                    "is the identity; fit on embeddings of two or more languages",
                    stacklevel=2,
                )
                self.shared_mean_ = self.language_means_.mean(axis=0)
                self.components_ = np.zeros((0, dim))
            else:
                shared, basis = lsar_subspace(self.language_means_.T, rank)
                self.shared_mean_ = shared
                self.components_ = basis[:, :removed].T
        elif self.method == "lir":
            removed = 1 if self.n_removed is None else self.n_removed
            short = [lang for lang in self.languages_ if min(rows[lang].shape) < removed]
            if short:
                raise ParameterError(f"n_removed={removed} is more than the rows/features of {short}")
            self.language_directions_ = np.stack(
                [
                    np.linalg.svd(rows[lang].T, full_matrices=False)[0][:, :removed].T
                    for lang in self.languages_
                ]
            )
        return self

    def _check(self) -> None:
        try:
            check_is_fitted(self, "language_means_")
        except Exception:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit() first") from None

    def transform(self, X: Any, languages: Sequence[str] | None = None) -> np.ndarray:
        """The language-agnostic embeddings; ``demean`` and ``lir`` need each row's language."""
        self._check()
        x = _as_matrix(X)
        if x.shape[1] != self.language_means_.shape[1]:
            fitted = self.language_means_.shape[1]
            raise DataError(f"embeddings have {x.shape[1]} features; this LSAR was fitted on {fitted}")
        if self.method == "none":
            return x.copy()
        if self.method == "lsar":
            return _project_out(x, self.components_.T)
        if languages is None:
            raise HeadvecError(f"method={self.method!r} needs each row's language: transform(X, languages)")
        index = self._language_index(languages, len(x))
        if self.method == "demean":
            return x - self.language_means_[index]
        out = np.empty_like(x)
        for k in np.unique(index):
            rows = index == k
            out[rows] = _project_out(x[rows], self.language_directions_[k].T)
        return out

    def fit_transform(self, X: Any, languages: Sequence[str], **_: Any) -> np.ndarray:
        return self.fit(X, languages).transform(X, languages)

    def _language_index(self, languages: Sequence[str], n: int) -> np.ndarray:
        if len(languages) != n:
            raise DataError(f"{n} embeddings but {len(languages)} languages; give one language per row")
        position = {lang: i for i, lang in enumerate(self.languages_)}
        unknown = sorted({str(lang) for lang in languages} - position.keys())
        if unknown:
            raise DataError(f"languages {unknown} were not seen in fit (fitted on {self.languages_})")
        return np.array([position[str(lang)] for lang in languages])


def _as_matrix(X: Any) -> np.ndarray:
    x = X.detach().cpu().numpy() if hasattr(X, "detach") else np.asarray(X)
    if x.ndim != 2 or len(x) == 0:
        raise DataError(f"embeddings must be a non-empty [n, d] matrix, got shape {tuple(x.shape)}")
    return x.astype(np.float64)


# ------------------------------------------------------------------------------------------ embeddings


def sentence_embeddings(
    loaded: Any,
    texts: Sequence[str],
    layer: int | Sequence[int],
    *,
    batch_size: int = 32,
    progress: bool = False,
) -> np.ndarray:
    """Mean over real tokens of decoder layer ``layer``'s output (``-1`` = last), raw text (no chat
    template): ``[len(texts), hidden]``, or ``[len(texts), len(layer), hidden]`` for a list of layers.

    Texts are batched with others of the same token count, so every position is a real token and the
    engine's residual capture (which stops after the deepest layer) reads them all in one pass per batch.
    """
    from headvec.engine import HeadEngine
    from headvec.models import Prompt

    n_layers = loaded.arch.n_layers
    wanted = [layer] if isinstance(layer, int) else list(layer)
    for value in wanted:
        if not -n_layers <= value < n_layers:
            raise HeadvecError(
                f"layer {value} does not exist; {loaded.name_or_path} has layers 0..{n_layers - 1} "
                "(or -1 for the last)"
            )
    chosen = sorted({value % n_layers for value in wanted})
    engine = HeadEngine(loaded)
    lengths = [len(ids) for ids in loaded.tokenizer(list(texts))["input_ids"]]
    by_length: dict[int, list[int]] = {}
    for i, length in enumerate(lengths):
        by_length.setdefault(length, []).append(i)
    batches = [
        members[start : start + batch_size]
        for members in by_length.values()
        for start in range(0, len(members), batch_size)
    ]
    out = np.zeros((len(texts), len(chosen), loaded.arch.hidden_size))
    for batch in tqdm(batches, desc="embed", disable=not progress):
        inputs = loaded.encode([Prompt(text=texts[i]) for i in batch])
        n_tokens = int(inputs["attention_mask"].sum(dim=1).max())
        capture = engine.capture_batch(inputs, chosen, list(range(n_tokens)), residual=True)
        out[batch] = capture.residual.double().mean(dim=1).numpy()  # [B, positions, layers, d] -> [B, L, d]
    order = [chosen.index(value % n_layers) for value in wanted]
    return out[:, order[0]] if isinstance(layer, int) else out[:, order]


# ---------------------------------------------------------------------------------------- evaluation


def retrieval_hits(queries: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Top-1 cosine retrieval over parallel rows: ``hits[i]`` is True when query i's nearest target is
    target i."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True).clip(1e-12)
    t = targets / np.linalg.norm(targets, axis=1, keepdims=True).clip(1e-12)
    return (q @ t.T).argmax(axis=1) == np.arange(len(q))


def method_grid(n_languages: int, max_lir: int = 3) -> list[tuple[str, int]]:
    """(method, removed rank) pairs to compare: none, demean, lir r = 1..max_lir, lsar r = k = 1..L-1."""
    grid = [("none", 0), ("demean", 0)]
    grid += [("lir", r) for r in range(1, max_lir + 1)]
    grid += [("lsar", r) for r in range(1, n_languages)]
    return grid


def evaluate_alignment(
    fit_embeddings: np.ndarray,
    fit_languages: Sequence[str],
    parallel: dict[str, np.ndarray],
    *,
    pivot: str = "en",
    probe_labels: np.ndarray | None = None,
    probe_train: np.ndarray | None = None,
    max_lir: int = 3,
) -> dict[str, Any]:
    """Retrieval between ``pivot`` and each other language, and zero-shot probe transfer, per method.

    ``parallel[lang]`` holds the same sentences (same row order) in each language. Each method is fitted on
    ``fit_embeddings`` (monolingual, any rows). Retrieval: top-1 cosine both ways over all parallel rows,
    per sentence the mean of the two directions. Probe: ``probe_labels`` ``[rows, tasks]`` (0/1), one
    logistic regression per task trained on the pivot language's ``probe_train`` rows and tested on the
    other rows in every language. Values are (mean, low, high) with 95% bootstrap CIs over sentences.
    """
    from sklearn.linear_model import LogisticRegression

    if pivot not in parallel:
        raise DataError(f"the pivot language {pivot!r} is not among the parallel sets {sorted(parallel)}")
    others = [lang for lang in parallel if lang != pivot]
    n_languages = len(set(fit_languages))
    results: dict[str, Any] = {}
    test = None if probe_train is None else ~probe_train
    for method, rank in method_grid(n_languages, max_lir):
        aligner = LSAR(method=method, n_removed=rank or None, n_components=rank or None)
        if method != "lsar":
            aligner.set_params(n_components=None)
        aligner.fit(fit_embeddings, fit_languages)
        moved = {lang: aligner.transform(e, [lang] * len(e)) for lang, e in parallel.items()}
        row: dict[str, Any] = {"method": method, "removed": rank, "retrieval": {}, "probe": {}}
        per_language = []
        for lang in others:
            hits = (
                retrieval_hits(moved[lang], moved[pivot]).astype(float)
                + retrieval_hits(moved[pivot], moved[lang]).astype(float)
            ) / 2
            per_language.append(hits)
            row["retrieval"][lang] = bootstrap_ci(hits)
        row["retrieval"]["mean"] = bootstrap_ci(np.mean(per_language, axis=0)) if others else None
        if probe_labels is not None and probe_train is not None:
            correct = {lang: np.zeros(int(test.sum())) for lang in parallel}
            for task in range(probe_labels.shape[1]):
                y = probe_labels[:, task]
                probe = LogisticRegression(max_iter=2000).fit(moved[pivot][probe_train], y[probe_train])
                for lang in parallel:
                    correct[lang] += probe.predict(moved[lang][test]) == y[test]
            scores = {lang: c / probe_labels.shape[1] for lang, c in correct.items()}
            row["probe"] = {lang: bootstrap_ci(s) for lang, s in scores.items()}
            row["probe"]["mean_other"] = (
                bootstrap_ci(np.mean([scores[lang] for lang in others], axis=0)) if others else None
            )
        results[f"{method}+{rank}" if rank else method] = row
    return results
