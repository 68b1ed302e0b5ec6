"""The judge baselines activation reward models are compared with, all on the same model and verdict format.

Each is a :class:`~headvec.rewards.protocol.Scorer` (``rewards`` per response) with ``fit(judgements)``:

- :class:`ZeroShotJudge`: the model generates its verdict; reward 1 (yes), 0 (no), 0.5 (unparseable,
  counted in ``unparsed_``).
- :class:`InContextJudge`: the same with ``k`` labelled verdicts (balanced, seeded) as earlier turns.
- :class:`TokenProbabilityJudge`: the unsteered ``P(yes) / (P(yes) + P(no))`` (or its log-odds): the one
  P(yes) judge, also the harness's ``judge-score:``.
- :class:`SavVerdictJudge`: Sparse Attention Vectors fitted on the verdict prompts; reward = share of
  the selected heads voting "yes".
- :class:`SampledVotingJudge`: ``n`` sampled verdicts (temperature ``temperature``, seeded); reward =
  share of "yes".
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal

import torch

from headvec.engine import HeadEngine
from headvec.methods.sav import ClassifierInput, SparseAttentionVectors
from headvec.models import Example, ImageLike, LoadedModel, Prompt, load_image
from headvec.rewards.activation import VerdictScorer, check_judgements
from headvec.rewards.verdicts import Judgement, VerdictFormat, parse_yes_no


def parse_verdict(text: str, fmt: VerdictFormat) -> bool | None:
    """True for the format's yes word, False for its no word, else None (:func:`parse_yes_no`)."""
    return parse_yes_no(text, fmt.yes, fmt.no)


class GeneratedVerdictJudge:
    """Shared by the judges that read a generated verdict; ``unparsed_`` of ``judged_`` were unreadable."""

    shots: Sequence[Example] = ()

    def __init__(self, loaded: LoadedModel, fmt: VerdictFormat, batch_size: int = 16) -> None:
        self.loaded, self.fmt, self.batch_size = loaded, fmt, batch_size
        self.engine = HeadEngine(loaded)
        self.unparsed_ = 0
        self.judged_ = 0

    def prompts(self, prompts: Sequence[str], responses: Sequence[str], images=None) -> list[Prompt]:
        images = list(images) if images is not None else [None] * len(prompts)
        out = []
        for prompt, response, image in zip(prompts, responses, images, strict=True):
            pil = [load_image(image)] if image is not None and self.loaded.is_multimodal else []
            out.append(self.loaded.build_prompt(self.fmt.text(prompt, response), pil, examples=self.shots))
        return out

    def verdict_rewards(self, texts: Sequence[str]) -> list[float]:
        rewards = []
        for text in texts:
            verdict = parse_verdict(text, self.fmt)
            self.judged_ += 1
            if verdict is None:
                self.unparsed_ += 1
                rewards.append(0.5)
            else:
                rewards.append(1.0 if verdict else 0.0)
        return rewards

    def rewards(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        images: Sequence[ImageLike | None] | None = None,
    ) -> list[float]:
        texts = self.engine.generate(self.prompts(prompts, responses, images), 2, batch_size=self.batch_size)
        return self.verdict_rewards(texts)


class ZeroShotJudge(GeneratedVerdictJudge):
    """LLM-as-judge without examples."""

    def fit(self, judgements: Sequence[Judgement] = ()) -> ZeroShotJudge:
        return self


class InContextJudge(GeneratedVerdictJudge):
    """LLM-as-judge with ``k`` labelled verdicts (half yes, half no, seeded order) in the context."""

    def __init__(
        self, loaded: LoadedModel, fmt: VerdictFormat, k: int = 4, seed: int = 0, batch_size: int = 16
    ) -> None:
        super().__init__(loaded, fmt, batch_size)
        self.k, self.seed = k, seed

    def fit(self, judgements: Sequence[Judgement]) -> InContextJudge:
        check_judgements(judgements, (self.k + 1) // 2)
        rng = random.Random(self.seed)
        yes = [j for j in judgements if j.verdict]
        no = [j for j in judgements if not j.verdict]
        picked = rng.sample(yes, (self.k + 1) // 2) + rng.sample(no, self.k // 2)
        rng.shuffle(picked)
        self.shots = [
            Example(
                self.fmt.text(j.prompt, j.response),
                [j.image] if j.image is not None else [],
                self.fmt.yes if j.verdict else self.fmt.no,
            )
            for j in picked
        ]
        return self


class SampledVotingJudge(GeneratedVerdictJudge):
    """Majority voting over ``n_samples`` sampled verdicts; the reward is the share of yes votes."""

    def __init__(
        self,
        loaded: LoadedModel,
        fmt: VerdictFormat,
        n_samples: int = 5,
        temperature: float = 1.0,
        seed: int = 0,
        batch_size: int = 16,
    ) -> None:
        super().__init__(loaded, fmt, batch_size)
        self.n_samples, self.temperature, self.seed = n_samples, temperature, seed

    def fit(self, judgements: Sequence[Judgement] = ()) -> SampledVotingJudge:
        return self

    def rewards(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        images: Sequence[ImageLike | None] | None = None,
    ) -> list[float]:
        built = self.prompts(prompts, responses, images)
        repeated = [p for p in built for _ in range(self.n_samples)]
        torch.manual_seed(self.seed)
        texts = self.engine.generate(
            repeated, 2, batch_size=self.batch_size, do_sample=True, temperature=self.temperature, top_k=0
        )
        votes = self.verdict_rewards(texts)
        n = self.n_samples
        return [sum(votes[i * n : (i + 1) * n]) / n for i in range(len(built))]


class TokenProbabilityJudge:
    """The unsteered model's normalised probability of the yes word: what the activation RM steers.

    ``output="log_odds"`` reads ``log P(yes) - log P(no)`` instead (same order; the benchmark harness's
    ``judge-score:`` spec).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        fmt: VerdictFormat,
        batch_size: int = 16,
        output: Literal["probability", "log_odds"] = "probability",
        padding_side: str = "right",
    ) -> None:
        self.scorer = VerdictScorer(loaded, fmt, batch_size, padding_side)
        self.output = output

    def fit(self, judgements: Sequence[Judgement] = ()) -> TokenProbabilityJudge:
        return self

    def rewards(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        images: Sequence[ImageLike | None] | None = None,
    ) -> list[float]:
        return self.scorer.probabilities(self.scorer.prompts(prompts, responses, images), output=self.output)


class SavVerdictJudge:
    """Sparse Attention Vectors on the verdict prompt; reward = share of the chosen heads voting yes."""

    def __init__(
        self, loaded: LoadedModel, fmt: VerdictFormat, n_heads: int | str = 20, batch_size: int = 16
    ) -> None:
        self.loaded, self.fmt = loaded, fmt
        self.sav = SparseAttentionVectors(loaded, n_heads, batch_size=batch_size)

    def _inputs(self, prompts, responses, images) -> list[ClassifierInput]:
        images = list(images) if images is not None else [None] * len(prompts)
        return [
            ClassifierInput(self.fmt.text(p, r), [i] if i is not None and self.loaded.is_multimodal else [])
            for p, r, i in zip(prompts, responses, images, strict=True)
        ]

    def fit(self, judgements: Sequence[Judgement]) -> SavVerdictJudge:
        check_judgements(judgements, 2)
        inputs = self._inputs(
            [j.prompt for j in judgements], [j.response for j in judgements], [j.image for j in judgements]
        )
        self.sav.fit(inputs, ["yes" if j.verdict else "no" for j in judgements])
        return self

    def rewards(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        images: Sequence[ImageLike | None] | None = None,
    ) -> list[float]:
        shares = self.sav.predict_proba(self._inputs(prompts, responses, images))
        return shares[:, self.sav.classes_.index("yes")].tolist()
