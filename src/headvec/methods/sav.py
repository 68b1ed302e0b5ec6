"""Sparse Attention Vectors (SAV): a few-shot classifier from a handful of attention heads.

Mitra et al. (arXiv 2412.00142): read every head's output at the last token of a zero-shot chat prompt,
average it per class (one centroid per class and head), rank heads by how often the nearest centroid
(cosine) names the right class on the training examples, keep the top ``n_heads``, and let those heads
vote. Nothing is trained; fitting is one forward pass per example.

Head scoring runs over all heads at once (one einsum), never a Python loop per head. Two scoring rules:

- ``"leave_in"`` (the published one): an example counts towards its own class centroid. With few shots
  per class this is optimistic, and at one shot every head scores 100% (each example *is* its centroid).
- ``"leave_one_out"`` (default): each example is scored against centroids computed without itself, so
  the ranking measures generalisation; it needs at least two examples per class.
  ``docs/results/sav.md`` compares the two.

Ties in the head ranking are broken by the mean cosine margin between the right class and the best
other class, then by (layer, head); ties in the vote go to the class named by the best-ranked head.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions

from headvec.engine import HeadEngine
from headvec.errors import DataError, HeadvecError
from headvec.methods.artifacts import MODEL_KEY, check_same_model, load_artifact, save_artifact
from headvec.methods.base import MODEL_CONSTRAINT, ModelEstimator
from headvec.models import ImageLike, LoadedModel, load

Scoring = Literal["leave_one_out", "leave_in"]
ARTIFACT_KIND = "sparse_attention_vectors"
AUTO_HEAD_COUNTS = (1, 2, 3, 5, 10, 20, 40)


@dataclass
class ClassifierInput:
    """One thing to classify: a text and, for vision-language models, its images."""

    text: str
    images: Sequence[ImageLike] = ()


InputLike = str | ClassifierInput | tuple[str, ImageLike] | dict[str, Any]


def as_input(item: InputLike) -> ClassifierInput:
    """Accept a string, ``(text, image)``, ``{"text", "image"}`` or a :class:`ClassifierInput`."""
    if isinstance(item, ClassifierInput):
        return item
    if isinstance(item, str):
        return ClassifierInput(item)
    if isinstance(item, tuple) and len(item) == 2:
        return ClassifierInput(item[0], [item[1]] if item[1] is not None else [])
    if isinstance(item, dict) and "text" in item:
        image = item.get("image")
        return ClassifierInput(item["text"], [image] if image else [])
    raise DataError(f"cannot classify {item!r}: give a text, (text, image) or {{'text': ..., 'image': ...}}")


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def training_similarities(
    features: torch.Tensor, labels: torch.Tensor, n_classes: int, scoring: Scoring = "leave_one_out"
) -> torch.Tensor:
    """Cosine similarity of every training example to every class centroid, for all heads at once.

    ``features``: ``[n, heads, dim]`` (heads flattened over layers); ``labels``: ``[n]`` class indices.
    Returns ``[n, heads, classes]``; with ``leave_one_out`` an example's own class centroid excludes it.
    """
    x = features.float()
    onehot = torch.nn.functional.one_hot(labels, n_classes).float()  # [n, k]
    counts = onehot.sum(dim=0)  # [k]
    sums = torch.einsum("nk,nhd->khd", onehot, x)  # [k, heads, dim]
    unit_x = _unit(x)
    sims = torch.einsum("nhd,khd->nhk", unit_x, _unit(sums / counts[:, None, None]))
    if scoring == "leave_one_out":
        own_sum = sums[labels] - x  # [n, heads, dim]: own class centroid without the example
        own = (unit_x * _unit(own_sum)).sum(dim=-1)  # scaling a sum does not change its direction
        sims = sims.scatter(2, labels[:, None, None].expand(-1, x.shape[1], 1), own.unsqueeze(-1))
    elif scoring != "leave_in":
        raise HeadvecError(f"unknown scoring {scoring!r}; use 'leave_one_out' or 'leave_in'")
    return sims


def head_scores(
    features: torch.Tensor, labels: torch.Tensor, n_classes: int, scoring: Scoring = "leave_one_out"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-centroid (cosine) training accuracy and mean margin of every head, all heads at once.

    Returns ``(accuracy [heads], margin [heads])`` for ``[n, heads, dim]`` features.
    """
    sims = training_similarities(features, labels, n_classes, scoring)
    own = labels[:, None, None].expand(-1, sims.shape[1], 1)
    correct = sims.argmax(dim=-1) == labels[:, None]  # [n, heads]
    right = sims.gather(2, own).squeeze(-1)
    margin = right - sims.scatter(2, own, float("-inf")).max(dim=-1).values
    return correct.float().mean(dim=0), margin.mean(dim=0)


def choose_head_count(
    sims: torch.Tensor, labels: torch.Tensor, ranked: torch.Tensor, candidates: Sequence[int]
) -> int:
    """The number of top-ranked heads whose vote is most accurate on the training examples.

    ``sims`` are the training similarities (leave-one-out ones, to be honest about generalisation).
    Ties go to the smaller count (with one shot per class every count ties: then one head).
    """
    best, best_accuracy = candidates[0], -1.0
    for k in sorted(candidates):
        prediction, _ = vote(sims[:, ranked[:k]])
        accuracy = float((prediction == labels).float().mean())
        if accuracy > best_accuracy:
            best, best_accuracy = k, accuracy
    return best


def rank_heads(accuracy: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Head indices, best first: by accuracy, then margin, then lowest index (fully deterministic)."""
    order = torch.argsort(-margin, stable=True)
    return order[torch.argsort(-accuracy[order], stable=True)]


def vote(similarities: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Majority vote of ranked heads. ``similarities``: ``[n, heads (best first), k]``.

    Returns ``(prediction [n], vote counts [n, k])``; a tie goes to the tied class that the
    best-ranked head voted for.
    """
    choice = similarities.argmax(dim=-1)  # [n, heads]
    k = similarities.shape[-1]
    counts = torch.nn.functional.one_hot(choice, k).sum(dim=1)  # [n, k]
    tied = counts == counts.max(dim=-1, keepdim=True).values  # [n, k]
    tied_vote = tied.gather(1, choice)  # [n, heads]: did this head vote for a tied class?
    first = tied_vote.float().argmax(dim=1)  # best-ranked head among those
    return choice.gather(1, first[:, None]).squeeze(1), counts


def check_known_labels(labels: Sequence[Any], classes: Sequence[str]) -> None:
    """A label outside ``classes`` (never seen at fit time) is a one-line error, not a silent miss."""
    unseen = sorted({str(y) for y in labels} - set(classes))
    if unseen:
        raise DataError(
            f"labels {unseen} were not seen at fit time (known: {list(classes)}); fit with examples of "
            "them or drop those rows"
        )


def accuracy(predicted: Sequence[str], labels: Sequence[Any], classes: Sequence[str]) -> float:
    """Share of ``predicted`` equal to ``labels`` (compared as strings), after :func:`check_known_labels`."""
    if len(predicted) != len(labels):
        raise DataError(f"{len(predicted)} predictions but {len(labels)} labels; give one label per input")
    check_known_labels(labels, classes)
    return float(np.mean([p == str(y) for p, y in zip(predicted, labels, strict=True)]))


class SparseAttentionVectors(ModelEstimator):
    """Few-shot classifier from the class centroids of the best ``n_heads`` attention heads.

    A scikit-learn estimator: the constructor stores its parameters, ``fit`` checks and uses them, and
    fitted state ends with ``_``; ``clone`` shares the model (see :mod:`headvec.methods.base`).

    Parameters
    ----------
    model : LoadedModel or str
        The model whose heads vote, or a name for :func:`~headvec.models.load` (loaded at ``fit``).
    n_heads : int or "auto", default=20
        Heads that vote. ``"auto"`` picks the count among ``AUTO_HEAD_COUNTS`` whose vote is most
        accurate on the training examples under leave-one-out centroids (``n_heads_`` holds the choice).
    template : str, default="{text}"
        Formats each input's text (``{text}``) into the user message of the model's chat template.
    scoring : {"leave_one_out", "leave_in"}, default="leave_one_out"
        How heads are ranked (see the module docstring).
    system : str, optional
        A system message for the chat template.
    chat : bool, default=True
        Wrap prompts in the model's chat template.
    position : int, default=-1
        The token whose head outputs are read (``-1``: the last prompt token, after the generation prompt).
    batch_size : int, default=16
    progress : bool, default=False
        Show a progress bar while capturing.

    Attributes
    ----------
    loaded_ : LoadedModel
        The model used (``model`` itself, or what its name loaded).
    classes_ : list of str
        Class names, sorted; the columns of :meth:`predict_proba`.
    heads_ : torch.Tensor of shape (n_heads_, 2)
        The voting ``(layer, head)`` pairs, best first.
    centroids_ : torch.Tensor of shape (n_classes, n_heads_, head_dim)
    head_accuracy_ : torch.Tensor of shape (n_layers, n_heads)
        Every head's nearest-centroid training accuracy under ``scoring``.
    n_heads_ : int
    model_identity_ : dict
        The identity of the model it was fitted on (what artifacts check).
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "model": MODEL_CONSTRAINT,
        "n_heads": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "template": [str],
        "scoring": [StrOptions({"leave_one_out", "leave_in"})],
        "system": [str, None],
        "chat": ["boolean"],
        "position": [Integral],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "progress": ["boolean"],
    }
    _fitted_attribute = "centroids_"

    def __init__(
        self,
        model: LoadedModel | str,
        n_heads: int | Literal["auto"] = 20,
        template: str = "{text}",
        *,
        scoring: Scoring = "leave_one_out",
        system: str | None = None,
        chat: bool = True,
        position: int = -1,
        batch_size: int = 16,
        progress: bool = False,
    ) -> None:
        self.model = model
        self.n_heads = n_heads
        self.template = template
        self.scoring = scoring
        self.system = system
        self.chat = chat
        self.position = position
        self.batch_size = batch_size
        self.progress = progress

    # ------------------------------------------------------------------ features
    def features(self, inputs: Sequence[InputLike], layers: Sequence[int] | None = None) -> torch.Tensor:
        """Head outputs ``[n, layers, heads, head_dim]`` at ``position`` of each input's prompt."""
        loaded = self._model()
        if "{text}" not in self.template:
            raise HeadvecError(f"template {self.template!r} has no {{text}} placeholder; add one")
        prompts = []
        for item in map(as_input, inputs):
            prompts.append(
                loaded.build_prompt(
                    self.template.format(text=item.text), item.images, system=self.system, chat=self.chat
                )
            )
        capture = HeadEngine(loaded).capture(
            prompts, layers, self.position, batch_size=self.batch_size, progress=self.progress
        )
        return capture.heads

    # ------------------------------------------------------------------ fit
    def fit(self, X: Sequence[InputLike], y: Sequence[Any]) -> SparseAttentionVectors:
        """Capture every head for the inputs ``X``, score all heads, keep the best ``n_heads``."""
        self._validate()
        if len(X) != len(y):
            raise DataError(f"{len(X)} inputs but {len(y)} labels; give one label per input")
        self._check_labels(y)
        return self.fit_features(self.features(X), y)

    def _check_labels(self, labels: Sequence[Any]) -> None:
        classes, counts = np.unique(np.asarray([str(y) for y in labels]), return_counts=True)
        if len(classes) < 2:
            raise DataError(
                f"SAV needs at least two classes to tell apart, got only {classes.tolist()}; add examples "
                "of another class"
            )
        needed = 2 if self.scoring == "leave_one_out" else 1
        few = {str(c): int(n) for c, n in zip(classes, counts, strict=True) if n < needed}
        if few:
            raise DataError(
                f"too few examples per class for scoring={self.scoring!r}: {few} (needs >= {needed}); "
                "add examples or use scoring='leave_in'"
            )

    def fit_features(self, features: torch.Tensor, labels: Sequence[Any]) -> SparseAttentionVectors:
        """Fit from already captured ``[n, layers, heads, head_dim]`` features (all layers)."""
        self._validate()
        self._check_labels(labels)
        loaded = self._model()
        n_layers, n_heads, head_dim = loaded.arch.n_layers, loaded.arch.n_heads, loaded.arch.head_dim
        if tuple(features.shape[1:]) != (n_layers, n_heads, head_dim):
            raise HeadvecError(
                f"features of shape {tuple(features.shape)} are not all heads of this model "
                f"({n_layers} x {n_heads} x {head_dim})"
            )
        total = n_layers * n_heads
        if self.n_heads != "auto" and not 1 <= int(self.n_heads) <= total:
            raise HeadvecError(f"n_heads must be between 1 and {total} or 'auto', got {self.n_heads}")
        self.loaded_ = loaded
        self.classes_ = sorted({str(y) for y in labels})
        index = {c: i for i, c in enumerate(self.classes_)}
        y = torch.tensor([index[str(label)] for label in labels])
        flat = features.reshape(len(y), total, head_dim).float()
        accuracy, margin = head_scores(flat, y, len(self.classes_), self.scoring)
        ranked = rank_heads(accuracy, margin)
        if self.n_heads == "auto":
            honest = "leave_one_out" if int(torch.bincount(y).min()) >= 2 else "leave_in"
            sims = training_similarities(flat, y, len(self.classes_), honest)
            candidates = [k for k in AUTO_HEAD_COUNTS if k <= total]
            self.n_heads_ = choose_head_count(sims, y, ranked, candidates)
        else:
            self.n_heads_ = int(self.n_heads)
        ranked = ranked[: self.n_heads_]
        self.head_accuracy_ = accuracy.reshape(n_layers, n_heads)
        self.heads_ = torch.stack([ranked // n_heads, ranked % n_heads], dim=1)  # [k, 2] (layer, head)
        onehot = torch.nn.functional.one_hot(y, len(self.classes_)).float()
        sums = torch.einsum("nk,nhd->khd", onehot, flat[:, ranked])
        self.centroids_ = sums / onehot.sum(dim=0)[:, None, None]  # [classes, k, head_dim]
        self.model_identity_ = loaded.identity
        return self

    # ------------------------------------------------------------------ predict
    def _selected(self, features: torch.Tensor, layers: list[int]) -> torch.Tensor:
        position = {layer: i for i, layer in enumerate(layers)}
        rows = torch.tensor([position[int(layer)] for layer in self.heads_[:, 0]])
        return features[:, rows, self.heads_[:, 1]].float()  # [n, k, head_dim]

    def decision_votes(self, X: Sequence[InputLike]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prediction index [n], vote counts [n, classes])`` for the inputs ``X``."""
        self._check_fitted()
        layers = sorted({int(layer) for layer in self.heads_[:, 0]})
        return self.votes_from_features(self.features(X, layers), layers)

    def votes_from_features(
        self, features: torch.Tensor, layers: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Vote from captured features (``layers`` = which layers they hold; default all)."""
        self._check_fitted()
        chosen = list(range(features.shape[1])) if layers is None else list(layers)
        selected = _unit(self._selected(features, chosen))
        sims = torch.einsum("nhd,khd->nhk", selected, _unit(self.centroids_))
        return vote(sims)

    def predict_votes(self, X: Sequence[InputLike]) -> tuple[list[str], np.ndarray]:
        """Predicted class names and vote shares ``[n, classes]`` (columns follow ``classes_``), from one
        capture; a tie goes to the best-ranked head's class, so it can differ from the shares' argmax."""
        prediction, counts = self.decision_votes(X)
        shares = (counts.float() / counts.sum(dim=1, keepdim=True)).numpy()
        return [self.classes_[i] for i in prediction.tolist()], shares

    def predict(self, X: Sequence[InputLike]) -> list[str]:
        return self.predict_votes(X)[0]

    def predict_proba(self, X: Sequence[InputLike]) -> np.ndarray:
        """Share of the selected heads voting for each class (columns follow ``classes_``)."""
        return self.predict_votes(X)[1]

    def score(self, X: Sequence[InputLike], y: Sequence[Any]) -> float:
        """Accuracy on ``X``; labels never seen at fit time are an error, not a silent miss."""
        self._check_fitted()
        check_known_labels(y, self.classes_)  # before any forward pass
        return accuracy(self.predict(X), y, self.classes_)

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the fitted classifier as safetensors + JSON (with the model's identity)."""
        self._check_fitted()
        save_artifact(
            directory,
            ARTIFACT_KIND,
            {"params": self._artifact_params(), "classes": self.classes_, MODEL_KEY: self.model_identity_},
            {"heads": self.heads_, "centroids": self.centroids_, "head_accuracy": self.head_accuracy_},
        )

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, model: LoadedModel | str | None = None
    ) -> SparseAttentionVectors:
        """Load a saved classifier; ``model`` defaults to the one it was fitted on, and must match it."""
        config, tensors = load_artifact(directory, ARTIFACT_KIND)
        fitted_on = config[MODEL_KEY]
        loaded = model if isinstance(model, LoadedModel) else load(model or fitted_on["name_or_path"])
        check_same_model(loaded, fitted_on, "SAV classifier")
        sav = cls(loaded, **config["params"])
        sav.loaded_ = loaded
        sav.classes_ = config["classes"]
        sav.heads_ = tensors["heads"].long()
        sav.centroids_ = tensors["centroids"]
        sav.head_accuracy_ = tensors["head_accuracy"]
        sav.n_heads_ = len(sav.heads_)
        sav.model_identity_ = fitted_on
        return sav
