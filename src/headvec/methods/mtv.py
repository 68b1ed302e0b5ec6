"""Multimodal Task Vectors (Huang et al., NeurIPS 2024): many-shot in-context learning stored in heads.

Fitting averages every head's last-token output over ``n_prompts`` prompts of ``n_shots`` shots each
(so ``n_prompts x n_shots`` shots in all, far more than fit in the context), then learns with REINFORCE
(:mod:`headvec.methods.head_search`) which heads to overwrite with those means so that a *zero-shot*
prompt produces the right first answer token. At inference the chosen heads are overwritten at the last
position on every decoding step, so the model answers as if it had seen all the shots.

    mtv = MultimodalTaskVector(loaded, n_prompts=100, n_shots=4).fit(episodes)
    mtv.generate([Example("what is it ?", [image])])
    mtv.score(test_episodes)  # exact-match accuracy against each query's answer
    mtv.save_pretrained("runs/mtv"); MultimodalTaskVector.from_pretrained("runs/mtv", loaded)
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, ValidationError
from sklearn.utils._param_validation import Interval, StrOptions

from headvec.data import iter_jsonl
from headvec.engine import HeadEngine, HeadPatch
from headvec.errors import DataError, HeadvecError
from headvec.methods.artifacts import MODEL_KEY, check_same_model, load_artifact, save_artifact
from headvec.methods.base import MODEL_CONSTRAINT, ModelEstimator
from headvec.methods.head_search import HeadSearchResult, ReinforceHeadSearch
from headvec.models import Example, LoadedModel, Prompt, load

ARTIFACT_KIND = "mtv"


# ----------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class IclEpisode:
    """In-context shots (``Example`` with an answer each) and a query (its answer is the target)."""

    shots: tuple[Example, ...]
    query: Example
    task: str | None = None

    @property
    def examples(self) -> list[Example]:
        """Every answered example of the episode (the pool MTV draws its many shots from)."""
        return [*self.shots, self.query]


class _TurnRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    image: str | None = None
    images: list[str] = []
    answer: str | None = None


class _EpisodeRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shots: list[_TurnRow] = []
    query: _TurnRow
    task: str | None = None


def read_episodes_jsonl(path: str | os.PathLike) -> list[IclEpisode]:
    """Episodes from JSONL (format in docs/guide/mtv.md); image paths are relative to the file.

    A row is either an episode ``{"shots": [turn, ...], "query": turn, "task": optional}`` or a single
    turn ``{"text", "image"/"images", "answer"}`` (an episode without shots). A turn is
    ``{"text": str, "image": path, "images": [paths], "answer": str}``.
    """
    path = Path(path)
    episodes = []

    def turn(row: _TurnRow, number: int) -> Example:
        paths = ([row.image] if row.image else []) + row.images
        resolved = []
        for image in paths:
            file = Path(image) if Path(image).is_absolute() else path.parent / image
            if not file.is_file():
                raise DataError(f"{path} line {number}: image file not found: {file}")
            resolved.append(str(file))
        return Example(row.text, resolved, row.answer)

    for number, obj in iter_jsonl(path):
        try:
            row = _EpisodeRow.model_validate(obj if "query" in obj else {"query": obj})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "row"
            raise DataError(f"{path} line {number}: field {where!r}: {first['msg']}") from None
        shots = tuple(turn(s, number) for s in row.shots)
        episodes.append(IclEpisode(shots, turn(row.query, number), row.task))
    if not episodes:
        raise DataError(f"{path} holds no episodes")
    return episodes


def normalize_answer(text: str, match: str = "exact") -> str:
    """The first line, stripped, without a final period, lower-cased (the paper's post-processing).

    ``match="first_word"`` keeps only the first word: the token REINFORCE optimised, separated from
    whether the patched model then stops (patching every decoding step can make it repeat the answer).
    """
    lines = text.strip().splitlines()
    answer = (lines[0] if lines else "").strip().rstrip(".").strip().lower()
    if match == "first_word":
        return answer.split()[0] if answer.split() else ""
    if match != "exact":
        raise HeadvecError(f"unknown answer match {match!r}; use 'exact' or 'first_word'")
    return answer


def answers_match(answers: Sequence[str], targets: Sequence[str], match: str = "exact") -> list[bool]:
    """Whether each generated answer equals its target after :func:`normalize_answer`."""
    if len(answers) != len(targets):
        raise DataError(f"{len(answers)} answers but {len(targets)} targets; give one target per query")
    return [
        normalize_answer(a, match) == normalize_answer(t, match)
        for a, t in zip(answers, targets, strict=True)
    ]


def episode_prompt(
    loaded: LoadedModel, query: IclEpisode | Example, n_shots: int, chat: bool = True
) -> Prompt:
    """The query with the first ``n_shots`` of its episode's shots in the context."""
    episode = query if isinstance(query, IclEpisode) else IclEpisode((), query)
    if n_shots > len(episode.shots):
        raise DataError(
            f"{n_shots} in-context shots were asked for but an episode has only {len(episode.shots)}; "
            "give episodes with enough shots or lower the shot count"
        )
    shots = list(episode.shots[:n_shots])
    return loaded.build_prompt(episode.query.text, episode.query.images, examples=shots, chat=chat)


def first_answer_token(loaded: LoadedModel, prompt: Prompt, answer: str) -> int:
    """The first token the model must produce after ``prompt`` to start ``answer``.

    Tokenizes the prompt and prompt + answer the way :meth:`LoadedModel.encode` does and takes the first
    token that differs, so BOS/EOS that the tokenizer adds and the leading space that word-initial tokens
    carry are handled; whitespace-only tokens (a lone SentencePiece ``▁``) are skipped.
    """
    tokenizer = loaded.tokenizer
    separator = "" if prompt.text[-1:].isspace() or not prompt.text else " "
    special = not prompt.templated
    before = tokenizer(prompt.text, add_special_tokens=special)["input_ids"]
    after = tokenizer(prompt.text + separator + answer, add_special_tokens=special)["input_ids"]
    start = next((i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b), len(before))
    special_ids = set(tokenizer.all_special_ids)
    for token in after[start:]:
        if token not in special_ids and tokenizer.decode([token]).strip():
            return int(token)
    raise DataError(f"the answer {answer!r} adds no token after the prompt; give a non-empty answer")


# ------------------------------------------------------------------------------------ estimator
@dataclass
class _Target:
    """A search item: its encoded zero-shot (or k-shot) prompt and the answer's first token."""

    inputs: dict[str, torch.Tensor]
    token: int


_COUNT = Interval(Integral, 0, None, closed="left")
_POSITIVE = Interval(Integral, 1, None, closed="left")


class MultimodalTaskVector(ModelEstimator):
    """Mean head activations of many-shot prompts, written into REINFORCE-chosen heads at inference.

    A scikit-learn estimator: the constructor stores its parameters, ``fit`` checks and uses them, and
    fitted state ends with ``_``; ``clone`` shares the model (see :mod:`headvec.methods.base`). The
    defaults are the published ones: ``n_prompts`` T=100 prompts of ``n_shots`` N=4 shots for the means;
    ``steps`` 600 REINFORCE steps of ``samples_per_step`` 32 masks, ``lr`` 0.1, logits initialised to
    ``init_logit`` -1, on ``n_search_items`` 100 prompts in the downstream format (``search_shots``
    shots, 0 = zero-shot); best of ``n_candidates`` 10 masks on the first ``n_selection_items`` 50 of
    them. ``threshold`` drops heads below that probability before the final sampling. ``mode``
    ``replace`` (the paper) or ``add``; ``inference_shots`` k > 0 gives "MTV + k-shot" (the first k shots
    of each query's episode). ``share_prefix`` runs each search prompt's prefix once per step (exact; see
    :meth:`mask_losses`). ``model`` is a LoadedModel, or a name loaded at ``fit``.

    Fitted attributes: ``loaded_`` (the model used), ``engine_``, ``means_`` ``[layers, heads, dim]``,
    ``mask_`` bool ``[layers, heads]`` (and the chosen ``heads_``), ``theta_`` and ``theta_history_`` (the
    search's logits), ``loss_curve_``, ``expected_heads_``, ``candidate_losses_``, ``n_examples_``,
    ``search_result_``, and ``prefix_verified_`` (whether the shared-prefix forward was exact here).
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "model": MODEL_CONSTRAINT,
        "n_prompts": [_POSITIVE],
        "n_shots": [_COUNT],
        "steps": [_COUNT],
        "samples_per_step": [Interval(Integral, 2, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "init_logit": [Real],
        "n_search_items": [_POSITIVE],
        "search_shots": [_COUNT],
        "n_candidates": [_POSITIVE],
        "n_selection_items": [_POSITIVE],
        "threshold": [Interval(Real, 0, 1, closed="both"), None],
        "mode": [StrOptions({"replace", "add"})],
        "inference_shots": [_COUNT],
        "max_new_tokens": [_POSITIVE],
        "batch_size": [_POSITIVE],
        "chat": ["boolean"],
        "seed": [Integral],
        "progress": ["boolean"],
        "share_prefix": ["boolean"],
    }
    _fitted_attribute = "mask_"

    def __init__(
        self,
        model: LoadedModel | str,
        n_prompts: int = 100,
        n_shots: int = 4,
        steps: int = 600,
        samples_per_step: int = 32,
        lr: float = 0.1,
        init_logit: float = -1.0,
        n_search_items: int = 100,
        search_shots: int = 0,
        n_candidates: int = 10,
        n_selection_items: int = 50,
        threshold: float | None = None,
        mode: Literal["replace", "add"] = "replace",
        inference_shots: int = 0,
        max_new_tokens: int = 10,
        batch_size: int = 8,
        chat: bool = True,
        seed: int = 0,
        progress: bool = False,
        share_prefix: bool = True,
    ) -> None:
        self.model = model
        self.n_prompts = n_prompts
        self.n_shots = n_shots
        self.steps = steps
        self.samples_per_step = samples_per_step
        self.lr = lr
        self.init_logit = init_logit
        self.n_search_items = n_search_items
        self.search_shots = search_shots
        self.n_candidates = n_candidates
        self.n_selection_items = n_selection_items
        self.threshold = threshold
        self.mode = mode
        self.inference_shots = inference_shots
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.chat = chat
        self.seed = seed
        self.progress = progress
        self.share_prefix = share_prefix

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "means_") and hasattr(self, "mask_")

    def _prepare(self) -> LoadedModel:
        """Validate the parameters and set ``loaded_`` and ``engine_`` (the start of every fit)."""
        self._validate()
        loaded = self._model()
        if loaded.arch.is_encoder:
            raise HeadvecError(f"MTV needs a model that generates text; {loaded.name_or_path} is an encoder")
        if getattr(self, "loaded_", None) is not loaded:
            self.loaded_ = loaded
            self.engine_ = HeadEngine(loaded)
        return loaded

    @property
    def heads_(self) -> list[tuple[int, int]]:
        """The chosen ``(layer, head)`` pairs."""
        self._check_fitted()
        return [tuple(x) for x in self.mask_.nonzero().tolist()]  # type: ignore[union-attr,misc]

    # ----------------------------------------------------------------------------------- fit
    def fit(self, episodes: Sequence[IclEpisode]) -> MultimodalTaskVector:
        """Mean activations from ``n_prompts`` many-shot prompts, then the REINFORCE head search."""
        self.fit_means(episodes)
        return self.fit_heads(episodes)

    def fit_heads(self, episodes: Sequence[IclEpisode]) -> MultimodalTaskVector:
        """Only the REINFORCE head search, with the current ``means_`` (e.g. to search again in another
        prompt format, ``search_shots``, without recomputing the means)."""
        self._prepare()
        if not hasattr(self, "means_"):
            raise HeadvecError("fit_heads needs the mean activations; call fit or fit_means first")
        pool = self._answered_pool(episodes)
        items = self._search_items(episodes, pool, random.Random(f"mtv-search/{self.seed}"))
        self.search_result_ = self.search_heads(items)
        return self

    def fit_means(self, episodes: Sequence[IclEpisode]) -> list[Example]:
        """Only the mean activations (``means_``); returns the pool of answered examples they came from."""
        self._prepare()
        pool = self._answered_pool(episodes)
        self.means_ = self.mean_activations(pool, random.Random(f"mtv-means/{self.seed}"))
        return pool

    def _answered_pool(self, episodes: Sequence[IclEpisode]) -> list[Example]:
        if not episodes:
            raise DataError("MTV.fit got no episodes; give at least n_shots + 1 answered examples")
        for number, episode in enumerate(episodes):
            for example in episode.examples:
                if example.answer is None or not example.answer.strip():
                    raise DataError(
                        f"episode {number} has an example with an empty answer (text {example.text!r}); "
                        "every shot and query MTV learns from needs a non-empty answer"
                    )
        pool = [example for episode in episodes for example in episode.examples]
        if len(pool) < self.n_shots + 1:
            raise DataError(
                f"MTV needs at least n_shots + 1 = {self.n_shots + 1} answered examples, got {len(pool)}; "
                "give more episodes or lower n_shots"
            )
        self.n_examples_ = len(pool)
        return pool

    def mean_prompts(self, pool: Sequence[Example], rng: random.Random) -> list[Prompt]:
        """``n_prompts`` prompts of ``n_shots`` random shots and a random (unanswered) query."""
        prompts = []
        for _ in range(self.n_prompts):
            picked = rng.sample(list(pool), self.n_shots + 1)
            query = picked[-1]
            prompts.append(
                self.loaded_.build_prompt(query.text, query.images, examples=picked[:-1], chat=self.chat)
            )
        return prompts

    def mean_activations(self, pool: Sequence[Example], rng: random.Random) -> torch.Tensor:
        """Every head's last-token output averaged over the many-shot prompts: ``[layers, heads, dim]``."""
        prompts = self.mean_prompts(pool, rng)
        self._check_context(prompts)
        capture = self.engine_.capture(
            prompts, positions=-1, batch_size=self.batch_size, progress=self.progress
        )
        return capture.heads.float().mean(dim=0)

    def _check_context(self, prompts: Sequence[Prompt]) -> None:
        """A one-line MTV error naming the context limit, before any forward pass."""
        limit = self.loaded_.arch.max_positions
        if limit is None:
            return
        longest = max(token_count(self.loaded_, p) for p in prompts)
        if longest > limit:
            per_shot = longest / (self.n_shots + 1)
            fits = max(int(limit / per_shot) - 1, 0)
            raise DataError(
                f"MTV mean-activation prompts of {self.n_shots} shots + a query take up to {longest} tokens "
                f"but {self.loaded_.name_or_path} takes at most {limit}; use n_shots <= {fits} and raise "
                "n_prompts instead (the total number of shots is n_prompts x n_shots)"
            )

    def _search_items(
        self, episodes: Sequence[IclEpisode], pool: Sequence[Example], rng: random.Random
    ) -> list[_Target]:
        """Prompts in the downstream format (``search_shots`` shots) with their answers' first tokens."""
        if self.search_shots == 0:
            chosen: list[IclEpisode] = [IclEpisode((), ex) for ex in pool]
        else:
            chosen = [e for e in episodes if len(e.shots) >= self.search_shots]
            if not chosen:
                raise DataError(f"no episode has the search_shots={self.search_shots} shots the search needs")
        chosen = rng.sample(chosen, min(self.n_search_items, len(chosen)))
        targets = []
        for episode in chosen:
            prompt = episode_prompt(self.loaded_, episode, self.search_shots, self.chat)
            token = first_answer_token(self.loaded_, prompt, episode.query.answer or "")
            targets.append(_Target(dict(self.loaded_.encode([prompt])), token))
        return targets

    def search_heads(self, items: Sequence[_Target]) -> HeadSearchResult:
        """REINFORCE over the heads with the first-answer-token cross-entropy as the loss."""
        arch = self.loaded_.arch
        search = ReinforceHeadSearch(
            arch.n_layers,
            arch.n_heads,
            steps=self.steps,
            samples_per_step=self.samples_per_step,
            lr=self.lr,
            init_logit=self.init_logit,
            n_candidates=self.n_candidates,
            threshold=self.threshold,
            seed=self.seed,
            progress=self.progress,
        )
        result = search.run(self.mask_losses, items, items[: self.n_selection_items])
        self.mask_ = result.mask
        self.theta_ = result.theta
        self.theta_history_ = result.theta_history
        self.loss_curve_ = result.loss_curve
        self.expected_heads_ = result.expected_heads
        self.candidate_losses_ = result.candidate_losses
        return result

    @torch.no_grad()
    def mask_losses(self, masks: torch.Tensor, items: Sequence[_Target]) -> torch.Tensor:
        """Mean first-answer-token cross-entropy of each mask ``[S]``; one batched forward per item.

        With ``share_prefix`` the prompt minus its last token runs once and only the last token runs
        for the ``S`` masks (patching touches only that position, so this is exact); it is verified
        against the full batched forward on first use and switched off where the two disagree.
        """
        if not hasattr(self, "means_"):
            raise HeadvecError("MTV mask losses need the mean activations; call fit first")
        if not hasattr(self, "engine_"):  # means_ set by hand (a shared fit): the model is not set up yet
            self._prepare()
        n_masks = masks.shape[0]
        values = self.means_.unsqueeze(0).expand(n_masks, -1, -1, -1)
        patch = HeadPatch(values, masks, mode=self.mode)
        total = torch.zeros(n_masks)
        for item in items:
            if self.share_prefix and getattr(self, "prefix_verified_", None) is None:
                self.prefix_verified_ = self._prefix_matches(item, patch)
            if self.share_prefix and self.prefix_verified_:
                logits = self._prefix_shared_logits(item.inputs, patch)
            else:
                logits = self._full_logits(item.inputs, patch)
            target = torch.full((n_masks,), item.token, dtype=torch.long)
            total += F.cross_entropy(logits.float(), target, reduction="none")
        return total / len(items)

    def _full_logits(self, inputs: dict[str, torch.Tensor], patch: HeadPatch) -> torch.Tensor:
        """The whole prompt repeated once per mask, in one batched forward."""
        with self.engine_.patch(patch):
            return self.engine_.capture_batch(
                repeat_inputs(inputs, patch.mask.shape[0]), layers=[0], logits=True
            ).logits  # type: ignore[return-value]

    def _prefix_shared_logits(self, inputs: dict[str, torch.Tensor], patch: HeadPatch) -> torch.Tensor:
        """Prefix once (KV cache, unpatched), then the last token for every mask in one batch."""
        n_masks = patch.mask.shape[0]
        length = inputs["input_ids"].shape[1]
        per_token = {k for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.shape == (1, length)}
        prefix = {k: (v[:, :-1] if k in per_token else v) for k, v in inputs.items()}
        output = self.loaded_.model(**prefix, use_cache=True)
        cache = output.past_key_values
        cache.batch_repeat_interleave(n_masks)
        last = {k: inputs[k][:, -1:].repeat(n_masks, 1) for k in per_token if k != "attention_mask"}
        last["attention_mask"] = torch.ones(n_masks, length, dtype=torch.long, device=self.loaded_.device)
        with self.engine_.patch(patch), self.engine_._tracking():
            output = self.loaded_.model(**last, past_key_values=cache, use_cache=True)
        return output.logits[:, -1].float().cpu()

    def _prefix_matches(self, item: _Target, patch: HeadPatch) -> bool:
        """Does the prefix-shared forward give the full forward's logits on this model? (checked once)"""
        try:
            shared = self._prefix_shared_logits(item.inputs, patch)
        except Exception:  # an architecture whose cache or inputs do not split this way
            return False
        full = self._full_logits(item.inputs, patch)
        return bool(torch.allclose(shared, full, atol=1e-4, rtol=1e-4))

    # ----------------------------------------------------------------------------- inference
    def patch(self) -> HeadPatch:
        """The fitted task vector as an engine patch: chosen heads, last position, every step."""
        self._check_fitted()
        return HeadPatch(values=self.means_, mask=self.mask_, mode=self.mode, positions=-1)  # type: ignore[arg-type]

    def prompts(self, queries: Sequence[IclEpisode | Example], n_shots: int | None = None) -> list[Prompt]:
        shots = self.inference_shots if n_shots is None else n_shots
        loaded = self.loaded_ if hasattr(self, "loaded_") else self._model()
        return [episode_prompt(loaded, q, shots, self.chat) for q in queries]

    def generate(
        self,
        queries: Sequence[IclEpisode | Example],
        *,
        n_shots: int | None = None,
        max_new_tokens: int | None = None,
    ) -> list[str]:
        """Greedy answers with the task vector active on every decoding step (``n_shots`` overrides
        ``inference_shots``: shots taken from each query's episode)."""
        self._check_fitted()
        prompts = self.prompts(queries, n_shots)
        with self.engine_.patch(self.patch()):
            texts = self.engine_.generate(
                prompts, max_new_tokens=max_new_tokens or self.max_new_tokens, batch_size=self.batch_size
            )
        return [text.strip() for text in texts]

    def score(
        self,
        X: Sequence[IclEpisode | Example],
        y: Sequence[str] | None = None,
        *,
        n_shots: int | None = None,
        match: str = "exact",
    ) -> float:
        """Exact-match accuracy (after :func:`normalize_answer`) of the generated answers.

        ``y`` holds the target answers; by default each query's own ``answer``.
        """
        hits = self.correct(X, y, n_shots=n_shots, match=match)
        return sum(hits) / len(hits) if hits else float("nan")

    def correct(
        self,
        X: Sequence[IclEpisode | Example],
        y: Sequence[str] | None = None,
        *,
        n_shots: int | None = None,
        match: str = "exact",
    ) -> list[bool]:
        """Per query: does the generated answer match the target (``y``, default the query's answer)?"""
        targets = list(y) if y is not None else query_answers(X)
        return answers_match(self.generate(X, n_shots=n_shots), targets, match)

    def _check_fitted(self, hint: str = "call fit(episodes) or from_pretrained") -> None:
        super()._check_fitted(hint)

    # ----------------------------------------------------------------------------- save/load
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """safetensors (means, mask, logits and their history) + JSON (parameters, curves, model identity)."""
        self._check_fitted()
        config = {
            "params": self._artifact_params(),
            MODEL_KEY: self.loaded_.identity,
            "loss_curve": self.loss_curve_,
            "expected_heads": self.expected_heads_,
            "candidate_losses": self.candidate_losses_,
            "n_examples": self.n_examples_,
            "heads": self.heads_,
        }
        tensors = {"means": self.means_, "mask": self.mask_}
        if getattr(self, "theta_", None) is not None and getattr(self, "theta_history_", None) is not None:
            tensors |= {"theta": self.theta_, "theta_history": self.theta_history_}
        return save_artifact(directory, ARTIFACT_KIND, config, tensors)  # type: ignore[arg-type]

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, model: LoadedModel | str | None = None, **overrides: Any
    ) -> MultimodalTaskVector:
        """Load a saved task vector; ``model`` defaults to the one it was fitted on, and must match it.

        ``overrides`` replace saved parameters (``max_new_tokens=20``, ``inference_shots=1``...).
        """
        config, tensors = load_artifact(directory, ARTIFACT_KIND)
        fitted_on = config[MODEL_KEY]
        loaded = model if isinstance(model, LoadedModel) else load(model or fitted_on["name_or_path"])
        check_same_model(loaded, fitted_on, "task vector")
        names = set(cls._get_param_names()) - {"model"}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise HeadvecError(f"unknown MTV parameter(s) {unknown}; choose from {', '.join(sorted(names))}")
        params = {k: v for k, v in config["params"].items() if k in names}
        mtv = cls(loaded, **(params | overrides))
        mtv._prepare()
        mtv.means_ = tensors["means"].float()
        mtv.mask_ = tensors["mask"].bool()
        mtv.theta_ = tensors.get("theta")
        mtv.theta_history_ = tensors.get("theta_history")
        mtv.loss_curve_ = list(config.get("loss_curve", []))
        mtv.expected_heads_ = list(config.get("expected_heads", []))
        mtv.candidate_losses_ = list(config.get("candidate_losses", []))
        mtv.n_examples_ = int(config.get("n_examples", 0))
        return mtv


# ------------------------------------------------------------------------------------- helpers
def query_answers(queries: Sequence[IclEpisode | Example]) -> list[str]:
    """The target answer of each query (an episode's query, or the example itself); one line if missing."""
    targets = []
    for number, item in enumerate(queries):
        answer = (item.query if isinstance(item, IclEpisode) else item).answer
        if answer is None:
            raise DataError(f"query {number} has no answer to score against; give answers or targets")
        targets.append(answer)
    return targets


def repeat_inputs(inputs: dict[str, torch.Tensor], times: int) -> dict[str, torch.Tensor]:
    """One encoded prompt as a batch of ``times`` copies (every processor output is batch- or
    image-major, so repeating along the first dimension is what encoding the copies would give)."""
    return {
        key: value.repeat(times, *([1] * (value.dim() - 1))) if isinstance(value, torch.Tensor) else value
        for key, value in inputs.items()
    }


def token_count(loaded: LoadedModel, prompt: Prompt) -> int:
    """Tokens of one prompt as the model sees them (image tokens expanded), without the length check."""
    return loaded.token_count(prompt)


def prompt_tokens(loaded: LoadedModel, prompts: Sequence[Prompt]) -> list[int]:
    """Tokens per prompt (what a query costs in context), even for prompts longer than the context."""
    return [token_count(loaded, p) for p in prompts]
