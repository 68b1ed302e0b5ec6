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
from numbers import Integral, Real
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from sklearn.utils._param_validation import Interval, StrOptions

from headvec.engine import HeadEngine, HeadPatch, iter_batches
from headvec.errors import DataError, HeadvecError
from headvec.methods.artifacts import check_same_model, fitted_model_name, load_artifact, save_artifact
from headvec.methods.base import MODEL_CONSTRAINT, ModelEstimator
from headvec.methods.mtv import IclEpisode, MultimodalTaskVector, first_answer_token
from headvec.models import Example, ImageLike, LoadedModel, Prompt, load, load_image
from headvec.rewards.verdicts import (
    GENERIC_TEMPLATE,
    TOY_FORMAT,
    TOY_TEMPLATE,
    Judgement,
    VerdictFormat,
)

__all__ = [
    "ARTIFACT_KIND",
    "GENERIC_TEMPLATE",
    "TOY_FORMAT",
    "TOY_TEMPLATE",
    "ActivationRewardModel",
    "Judgement",
    "VerdictFormat",
    "VerdictScorer",
    "trl_reward_func",
]

ARTIFACT_KIND = "activation_reward_model"


def verdict_prompt(loaded: LoadedModel, fmt: VerdictFormat, prompt: str, response: str, image=None) -> Prompt:
    images = [load_image(image)] if image is not None and loaded.is_multimodal else []
    return loaded.build_prompt(fmt.text(prompt, response), images)


class VerdictScorer:
    """Reads the verdict at the last prompt position, optionally under a head patch.

    ``output="probability"`` gives ``P(yes) / (P(yes) + P(no))``; ``"log_odds"`` gives
    ``log P(yes) - log P(no)`` (the same order, unbounded: what a pointwise judge's score is read as).
    ``padding_side`` only moves float rounding (about 1e-6); it is kept so that saved numbers reproduce.
    """

    def __init__(
        self, loaded: LoadedModel, fmt: VerdictFormat, batch_size: int = 16, padding_side: str = "right"
    ) -> None:
        self.loaded, self.fmt, self.batch_size = loaded, fmt, batch_size
        self.padding_side = padding_side
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
    def probabilities(
        self,
        prompts: Sequence[Prompt],
        patch: HeadPatch | None = None,
        output: Literal["probability", "log_odds"] = "probability",
    ) -> list[float]:
        scores: list[float] = []
        for batch in iter_batches(list(prompts), self.batch_size):
            inputs = self.loaded.encode(batch, padding_side=self.padding_side)
            if patch is None:
                logits = self.engine.capture_batch(inputs, [0], logits=True).logits
            else:
                with self.engine.patch(patch):
                    logits = self.engine.capture_batch(inputs, [0], logits=True).logits
            if output == "log_odds":  # log P(yes) - log P(no), both over the whole vocabulary
                logp = torch.log_softmax(logits.float(), dim=-1)  # type: ignore[union-attr]  # (B, V)
                scores += (logp[:, self.yes_id] - logp[:, self.no_id]).tolist()
            else:
                pair = logits[:, [self.yes_id, self.no_id]].float()  # type: ignore[index]  # (B, 2)
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


class ActivationRewardModel(ModelEstimator):
    """Few-shot reward model by activation steering (scikit-learn style: parameters in, ``*_`` fitted).

    ``n_shots`` verdict examples per mean prompt, ``n_prompts`` such prompts; REINFORCE head search
    (``steps``, ``samples_per_step``, ``lr``: MTV's defaults) on zero-shot verdict prompts of the
    examples; reward = P(yes) under the patch. ``mode="add"`` adds the means instead of replacing.

    ``rewards(prompts, responses, images)`` gives the per-response rewards (the :class:`Scorer`
    protocol); ``score(judgements)`` is the scikit-learn metric, the accuracy of ``reward > 0.5`` as a
    verdict.

    Attributes
    ----------
    loaded_ : LoadedModel
        The model the reward model runs on (``model`` itself, or ``load(model)`` for an id).
    task_vector_ : MultimodalTaskVector
        The means and the chosen heads.
    n_examples_ : int
        Labelled verdicts fitted on.
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
        self.n_shots = n_shots
        self.n_prompts = n_prompts
        self.steps = steps
        self.samples_per_step = samples_per_step
        self.lr = lr
        self.n_search_items = n_search_items
        self.n_selection_items = n_selection_items
        self.mode = mode
        self.min_examples_per_verdict = min_examples_per_verdict
        self.batch_size = batch_size
        self.seed = seed
        self.progress = progress

    _fitted_attribute = "task_vector_"
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "model": MODEL_CONSTRAINT,
        "fmt": [VerdictFormat],
        "n_shots": [Interval(Integral, 0, None, closed="left")],
        "n_prompts": [Interval(Integral, 1, None, closed="left")],
        "steps": [Interval(Integral, 0, None, closed="left")],
        "samples_per_step": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "n_search_items": [Interval(Integral, 1, None, closed="left")],
        "n_selection_items": [Interval(Integral, 1, None, closed="left")],
        "mode": [StrOptions({"replace", "add"})],
        "min_examples_per_verdict": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "seed": [Interval(Integral, 0, None, closed="left")],
        "progress": ["boolean"],
    }

    def _task_vector(self, loaded: LoadedModel) -> MultimodalTaskVector:
        return MultimodalTaskVector(
            loaded,
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

    def fit(self, judgements: Sequence[Judgement], y: None = None) -> ActivationRewardModel:
        """Means over few-shot verdict prompts, then the head search on zero-shot verdict prompts."""
        self._validate()
        check_judgements(judgements, self.min_examples_per_verdict)
        self.loaded_ = self._model()
        episodes = [IclEpisode((), example) for example in judgement_examples(self.fmt, judgements)]
        self.task_vector_ = self._task_vector(self.loaded_).fit(episodes)
        self.scorer_ = VerdictScorer(self.loaded_, self.fmt, self.batch_size)
        self.n_examples_ = len(judgements)
        return self

    @property
    def heads_(self) -> list[tuple[int, int]]:
        self._check_fitted()
        return self.task_vector_.heads_

    def _check_fitted(self, hint: str = "call fit(judgements) or from_pretrained") -> None:
        super()._check_fitted(hint)

    def rewards(
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

    def score(self, judgements: Sequence[Judgement], y: Sequence[bool] | None = None) -> float:
        """Accuracy of ``reward > 0.5`` as the verdict, against ``y`` or the judgements' own verdicts."""
        if not judgements:
            raise DataError("score needs at least one labelled judgement")
        truth = [j.verdict for j in judgements] if y is None else [bool(v) for v in y]
        if len(truth) != len(judgements):
            raise DataError(f"{len(judgements)} judgements but {len(truth)} labels; give one label each")
        rewards = self.rewards(
            [j.prompt for j in judgements], [j.response for j in judgements], [j.image for j in judgements]
        )
        return sum((r > 0.5) == t for r, t in zip(rewards, truth, strict=True)) / len(truth)

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
            "params": {k: v for k, v in self._artifact_params().items() if k != "fmt"},
            "format": self.fmt.to_dict(),
            "fitted_on": self.loaded_.identity,
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
        loaded = model if isinstance(model, LoadedModel) else load(model or fitted_model_name(directory))
        check_same_model(loaded, config["fitted_on"], "activation reward model")
        rm = cls(loaded, VerdictFormat(**config["format"]), **config["params"])
        rm.loaded_ = loaded
        rm.task_vector_ = MultimodalTaskVector.from_pretrained(Path(directory) / "task_vector", loaded)
        rm.scorer_ = VerdictScorer(loaded, rm.fmt, rm.batch_size)
        rm.n_examples_ = int(config["n_examples"])
        return rm


def trl_reward_func(
    rm: Any, prompt_key: str = "prompt", image_key: str = "image"
) -> Callable[..., list[float]]:
    """Wrap any :class:`~headvec.rewards.protocol.Scorer`'s ``rewards`` as a TRL reward function (named,
    as TRL logs it by name)."""

    def reward(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float]:
        images = columns.get(image_key)
        return rm.rewards([_as_text(p) for p in prompts], [_as_text(c) for c in completions], images)

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
