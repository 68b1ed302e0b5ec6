"""Activation reward models: a few labelled verdicts steer the policy model into a reward model.

Chai, Mitra et al. (arXiv 2507.01368): format each labelled example as a yes/no verdict prompt ("does
this response meet the criterion?") *with the correct verdict*, average every head's last-token output
over many few-shot verdict prompts, choose by REINFORCE the heads into which writing those means makes
the model give the right verdict on zero-shot prompts, and read the reward as P(yes) with the means
patched in. This is a Multimodal Task Vector whose task is judging, so the estimator is a thin layer over
:class:`~headvec.methods.mtv.MultimodalTaskVector` (means, head search, patching) plus the verdict
format and the probability read-out.

The reward is ``P(yes) / (P(yes) + P(no))`` at the first answer position (normalised over the two
verdict words, so it is comparable across prompts). Pairwise preference: the higher reward wins.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from headvec.engine import HeadEngine, HeadPatch, iter_batches
from headvec.errors import DataError, HeadvecError
from headvec.methods.artifacts import check_same_model, load_artifact, save_artifact
from headvec.methods.mtv import IclEpisode, MultimodalTaskVector, first_answer_token
from headvec.models import Example, ImageLike, LoadedModel, Prompt, load, load_image
from headvec.rewards.protocol import ScoreBasedComparison

ARTIFACT_KIND = "activation_reward_model"
GENERIC_TEMPLATE = (
    "{prompt}\n\nResponse: {response}\n\nDoes this response meet the criterion: {criterion}? "
    "Answer yes or no."
)
TOY_TEMPLATE = "question : {prompt} answer : {response} . is the answer correct ?"


@dataclass
class Judgement:
    """A labelled example of the criterion: does ``response`` to ``prompt`` (and image) meet it?"""

    prompt: str
    response: str
    verdict: bool
    image: ImageLike | None = None


@dataclass(frozen=True)
class VerdictFormat:
    """How a (prompt, response) pair is put to the model as a yes/no question, and the two answer words."""

    template: str = GENERIC_TEMPLATE
    criterion: str = "the answer is correct"
    yes: str = "Yes"
    no: str = "No"

    def text(self, prompt: str, response: str) -> str:
        return self.template.format(prompt=prompt, response=response.strip(), criterion=self.criterion)

    def to_dict(self) -> dict[str, str]:
        return {"template": self.template, "criterion": self.criterion, "yes": self.yes, "no": self.no}


TOY_FORMAT = VerdictFormat(TOY_TEMPLATE, "the answer is correct", "yes", "no")


def verdict_prompt(loaded: LoadedModel, fmt: VerdictFormat, prompt: str, response: str, image=None) -> Prompt:
    images = [load_image(image)] if image is not None and loaded.is_multimodal else []
    return loaded.build_prompt(fmt.text(prompt, response), images)


class VerdictScorer:
    """Reads ``P(yes) / (P(yes) + P(no))`` at the last prompt position, optionally under a head patch."""

    def __init__(self, loaded: LoadedModel, fmt: VerdictFormat, batch_size: int = 16) -> None:
        self.loaded, self.fmt, self.batch_size = loaded, fmt, batch_size
        self.engine = HeadEngine(loaded)
        probe = loaded.build_prompt(fmt.text("q", "r"))
        self.yes_id = first_answer_token(loaded, probe, fmt.yes)
        self.no_id = first_answer_token(loaded, probe, fmt.no)
        if self.yes_id == self.no_id:
            raise HeadvecError(f"the verdict words {fmt.yes!r} and {fmt.no!r} start with the same token")

    def prompts(self, prompts: Sequence[str], responses: Sequence[str], images=None) -> list[Prompt]:
        if len(prompts) != len(responses):
            raise DataError(f"{len(prompts)} prompts but {len(responses)} responses; give one response each")
        images = list(images) if images is not None else [None] * len(prompts)
        return [
            verdict_prompt(self.loaded, self.fmt, p, r, i)
            for p, r, i in zip(prompts, responses, images, strict=True)
        ]

    @torch.no_grad()
    def probabilities(self, prompts: Sequence[Prompt], patch: HeadPatch | None = None) -> list[float]:
        scores: list[float] = []
        for batch in iter_batches(list(prompts), self.batch_size):
            inputs = self.loaded.encode(batch)
            if patch is None:
                logits = self.engine.capture_batch(inputs, [0], logits=True).logits
            else:
                with self.engine.patch(patch):
                    logits = self.engine.capture_batch(inputs, [0], logits=True).logits
            pair = logits[:, [self.yes_id, self.no_id]].float()  # type: ignore[index]
            scores += torch.softmax(pair, dim=-1)[:, 0].tolist()
        return scores


def judgement_examples(fmt: VerdictFormat, judgements: Sequence[Judgement]) -> list[Example]:
    """Verdict prompts with the correct verdict as the answer (what the means are taken over)."""
    return [
        Example(
            fmt.text(j.prompt, j.response),
            [j.image] if j.image is not None else [],
            fmt.yes if j.verdict else fmt.no,
        )
        for j in judgements
    ]


def check_judgements(judgements: Sequence[Judgement], minimum_per_verdict: int) -> None:
    yes = sum(bool(j.verdict) for j in judgements)
    no = len(judgements) - yes
    if min(yes, no) < minimum_per_verdict:
        raise DataError(
            f"too few examples for the criterion: {yes} meet it and {no} do not (needs >= "
            f"{minimum_per_verdict} of each); add labelled examples of the rarer verdict"
        )


class ActivationRewardModel(ScoreBasedComparison):
    """Few-shot reward model by activation steering (scikit-learn style: params in, ``*_`` fitted).

    ``n_shots`` verdict examples per mean prompt, ``n_prompts`` such prompts; REINFORCE head search
    (``steps``, ``samples_per_step``, ``lr``: MTV's defaults) on zero-shot verdict prompts of the
    examples; reward = P(yes) under the patch. ``mode="add"`` adds the means instead of replacing.
    """

    def __init__(
        self,
        model: LoadedModel | str,
        fmt: VerdictFormat = VerdictFormat(),
        *,
        n_shots: int = 4,
        n_prompts: int = 100,
        steps: int = 600,
        samples_per_step: int = 32,
        lr: float = 0.1,
        n_search_items: int = 100,
        n_selection_items: int = 50,
        mode: str = "replace",
        min_examples_per_verdict: int = 4,
        batch_size: int = 16,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        self.model = model
        self.fmt = fmt
        self.n_shots, self.n_prompts, self.steps = n_shots, n_prompts, steps
        self.samples_per_step, self.lr = samples_per_step, lr
        self.n_search_items, self.n_selection_items = n_search_items, n_selection_items
        self.mode, self.min_examples_per_verdict = mode, min_examples_per_verdict
        self.batch_size, self.seed, self.progress = batch_size, seed, progress

    PARAMS = (
        "n_shots",
        "n_prompts",
        "steps",
        "samples_per_step",
        "lr",
        "n_search_items",
        "n_selection_items",
        "mode",
        "min_examples_per_verdict",
        "batch_size",
        "seed",
    )

    @property
    def loaded(self) -> LoadedModel:
        if isinstance(self.model, str):
            self.model = load(self.model)
        return self.model

    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.PARAMS}

    def _task_vector(self) -> MultimodalTaskVector:
        return MultimodalTaskVector(
            self.loaded,
            n_prompts=self.n_prompts,
            n_shots=self.n_shots,
            steps=self.steps,
            samples_per_step=self.samples_per_step,
            lr=self.lr,
            n_search_items=self.n_search_items,
            n_selection_items=self.n_selection_items,
            mode=self.mode,  # type: ignore[arg-type]
            max_new_tokens=2,
            batch_size=self.batch_size,
            seed=self.seed,
            progress=self.progress,
        )

    def fit(self, judgements: Sequence[Judgement]) -> ActivationRewardModel:
        """Means over few-shot verdict prompts, then the head search on zero-shot verdict prompts."""
        check_judgements(judgements, self.min_examples_per_verdict)
        episodes = [IclEpisode((), example) for example in judgement_examples(self.fmt, judgements)]
        self.task_vector_ = self._task_vector().fit(episodes)
        self.scorer_ = VerdictScorer(self.loaded, self.fmt, self.batch_size)
        self.n_examples_ = len(judgements)
        return self

    @property
    def heads_(self) -> list[tuple[int, int]]:
        self._check_fitted()
        return self.task_vector_.heads_

    def _check_fitted(self) -> None:
        if not hasattr(self, "task_vector_"):
            raise HeadvecError(
                "this ActivationRewardModel is not fitted; call fit(judgements) or from_pretrained"
            )

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        images: Sequence[ImageLike | None] | None = None,
    ) -> list[float]:
        """P(yes) for each (prompt, response[, image]) with the steering heads patched in."""
        self._check_fitted()
        return self.scorer_.probabilities(
            self.scorer_.prompts(prompts, responses, images), self.task_vector_.patch()
        )

    def as_trl_reward_func(
        self, prompt_key: str = "prompt", image_key: str = "image"
    ) -> Callable[..., list[float]]:
        """A ``reward_funcs`` entry for TRL's ``GRPOTrainer``: ``f(prompts, completions, **columns)``."""
        return trl_reward_func(self, prompt_key, image_key)

    # ----------------------------------------------------------------------------- save/load
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        self._check_fitted()
        out = Path(directory)
        self.task_vector_.save_pretrained(out / "task_vector")
        config = {
            "params": self.get_params(),
            "format": self.fmt.to_dict(),
            "fitted_on": self.loaded.identity,
            "n_examples": self.n_examples_,
            "heads": self.heads_,
        }
        return save_artifact(out, ARTIFACT_KIND, config, {"mask": self.task_vector_.mask_})  # type: ignore[dict-item]

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, model: LoadedModel | str | None = None
    ) -> ActivationRewardModel:
        """Load a saved reward model (with the model it was fitted on by default; another one is refused)."""
        config, _ = load_artifact(directory, ARTIFACT_KIND)
        loaded = (
            model if isinstance(model, LoadedModel) else load(model or config["fitted_on"]["name_or_path"])
        )
        check_same_model(loaded, config["fitted_on"], "activation reward model")
        rm = cls(loaded, VerdictFormat(**config["format"]), **config["params"])
        rm.task_vector_ = MultimodalTaskVector.from_pretrained(Path(directory) / "task_vector", loaded)
        rm.scorer_ = VerdictScorer(loaded, rm.fmt, rm.batch_size)
        rm.n_examples_ = int(config["n_examples"])
        return rm


def trl_reward_func(
    rm: Any, prompt_key: str = "prompt", image_key: str = "image"
) -> Callable[..., list[float]]:
    """Wrap any reward model's ``score`` as a TRL reward function (named, as TRL logs it by name)."""

    def reward(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float]:
        images = columns.get(image_key)
        return rm.score([_as_text(p) for p in prompts], [_as_text(c) for c in completions], images)

    reward.__name__ = f"{type(rm).__name__}_reward"
    return reward


def _as_text(value: Any) -> str:
    """TRL passes plain strings, or chat messages ``[{"role", "content"}]`` for conversational data."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        content = value[-1].get("content", "")
        if isinstance(content, list):
            return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
        return str(content)
    return str(value)
