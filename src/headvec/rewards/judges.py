"""Generative judges: a model asked which response is better, on a local model or behind an endpoint.

A judge template says how a comparison is put to the model and how its output is read:
:class:`PairwiseTemplate` asks once with both responses (the benchmarks' published prompts live in
:mod:`headvec.harness.prompts`), :class:`YesNoTemplate` asks a yes/no verdict per response (the toy
world's judge prompt, :data:`TOY_JUDGE_TEMPLATE`). A judge returns ``choice=None`` when it cannot read the
output, so runners count those instead of silently dropping them or flipping a coin.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from PIL import Image

from headvec.errors import HeadvecError
from headvec.rewards.protocol import BaseJudge, Choice, Comparison, Preference
from headvec.rewards.verdicts import TOY_JUDGE_FORMAT, VerdictFormat, parse_yes_no


@dataclass(frozen=True)
class PairwiseTemplate:
    """One prompt showing both responses (``build(prompt, a, b)``); ``parse(output)`` gives a / b / None.
    ``system`` is sent as the system message where the benchmark's script sends one (RewardBench)."""

    name: str
    build: Callable[[str, str, str], str]
    parse: Callable[[str], Choice]
    default_max_new_tokens: int = 512
    system: str | None = None
    pointwise = False

    def requests(self, prompt: str, a: str, b: str) -> list[str]:
        return [self.build(prompt, a, b)]

    def verdict(self, outputs: Sequence[str]) -> Choice:
        return self.parse(outputs[0])


@dataclass(frozen=True)
class YesNoTemplate:
    """One yes/no verdict prompt per response; a yes to one and a no to the other decides, the same word
    twice is a tie, an unreadable word is None."""

    name: str
    fmt: VerdictFormat
    default_max_new_tokens: int = 2
    system: str | None = None
    pointwise = True

    def requests(self, prompt: str, a: str, b: str) -> list[str]:
        return [self.fmt.text(prompt, x) for x in (a, b)]

    def verdict(self, outputs: Sequence[str]) -> Choice:
        yes_a, yes_b = (parse_yes_no(o, self.fmt.yes, self.fmt.no) for o in outputs)
        if yes_a is None or yes_b is None:
            return None
        return "tie" if yes_a == yes_b else "a" if yes_a else "b"


JudgeTemplate = PairwiseTemplate | YesNoTemplate
TOY_JUDGE_TEMPLATE = YesNoTemplate("toyworld", TOY_JUDGE_FORMAT)


def _preference(template: JudgeTemplate, outputs: list[str]) -> Preference:
    raw = outputs[0] if len(outputs) == 1 else "\n---\n".join(outputs)
    return Preference(choice=template.verdict(outputs), raw=raw)


class LocalJudge(BaseJudge):
    """A headvec-loaded model as a generative judge (greedy by default, batched when greedy)."""

    def __init__(
        self,
        loaded: Any,
        template: JudgeTemplate,
        *,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        batch_size: int = 8,
    ) -> None:
        from headvec.engine import HeadEngine

        self.loaded, self.template, self.engine = loaded, template, HeadEngine(loaded)
        self.max_new_tokens = max_new_tokens or template.default_max_new_tokens
        self.temperature, self.top_p, self.batch_size = temperature, top_p, batch_size

    def _prompt(self, text: str, image: Any):
        from headvec.models import load_image

        images = [load_image(image)] if image is not None and self.loaded.is_multimodal else []
        return self.loaded.build_prompt(text, images, system=self.template.system)

    def compare_batch(self, comparisons: Sequence[Comparison]) -> list[Preference]:
        per_request = [self.template.requests(c.prompt, c.a, c.b) for c in comparisons]
        prompts = [
            self._prompt(text, c.image)
            for c, texts in zip(comparisons, per_request, strict=True)
            for text in texts
        ]
        if self.temperature > 0:
            import torch

            outputs = []
            seeds = [c.seed for c, texts in zip(comparisons, per_request, strict=True) for _ in texts]
            for prompt, seed in zip(prompts, seeds, strict=True):  # one at a time: same seed, same text
                torch.manual_seed(seed)
                outputs += self.engine.generate(
                    [prompt],
                    self.max_new_tokens,
                    batch_size=1,
                    do_sample=True,
                    temperature=self.temperature,
                    top_p=self.top_p,
                )
        else:
            outputs = self.engine.generate(prompts, self.max_new_tokens, batch_size=self.batch_size)
        preferences, start = [], 0
        for texts in per_request:
            preferences.append(_preference(self.template, outputs[start : start + len(texts)]))
            start += len(texts)
        return preferences


def image_data_url(image: Image.Image) -> str:
    """A PNG data URL, the way VL-RewardBench's inference script sends images."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class OpenAIJudge(BaseJudge):
    """A judge behind any OpenAI-compatible chat endpoint (vLLM, GPT-4o, Reka, ``headvec serve chat``).

    Each call has a timeout; connection errors, timeouts, 429 and 5xx are retried with exponential backoff
    up to ``max_retries`` times, then stop the run with a one-line error (finished items are already on
    disk). At most ``concurrency`` requests are in flight.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        template: JudgeTemplate,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        concurrency: int = 8,
        temperature: float = 0.2,
        top_p: float = 0.2,
        max_tokens: int = 2048,
        backoff: float = 1.0,
    ) -> None:
        try:
            import openai
        except ImportError:
            raise HeadvecError(
                "openai: judges need the OpenAI client: pip install 'headvec[openai]'"
            ) from None

        self.base_url, self.model, self.template = base_url, model, template
        self.client = openai.OpenAI(
            base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout, max_retries=0
        )
        self.max_retries, self.concurrency, self.backoff = max_retries, max(1, concurrency), backoff
        self.temperature, self.top_p, self.max_tokens = temperature, top_p, max_tokens
        self.calls = 0

    def _chat(self, text: str, image: Any, seed: int) -> str:
        import openai

        from headvec.models import load_image

        content: list[dict] = [{"type": "text", "text": text}]
        if image is not None:
            content.append({"type": "image_url", "image_url": {"url": image_data_url(load_image(image))}})
        last_error: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            self.calls += 1
            try:
                completion = self.client.chat.completions.create(
                    model=self.model,
                    messages=[
                        *(
                            [{"role": "system", "content": self.template.system}]
                            if self.template.system
                            else []
                        ),
                        {"role": "user", "content": content},
                    ],
                    temperature=self.temperature,
                    top_p=self.top_p,
                    max_tokens=self.max_tokens,
                    seed=seed,
                )
                return completion.choices[0].message.content or ""
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as exc:
                last_error = exc
            except openai.APIStatusError as exc:
                if exc.status_code < 500:
                    hint = {401: "check the API key", 403: "check the API key", 404: "check the model name"}
                    raise HeadvecError(
                        f"endpoint {self.base_url} refused the request for model {self.model!r} "
                        f"(HTTP {exc.status_code}: {_short(exc)}); "
                        f"{hint.get(exc.status_code, 'fix the request (prompt length, image, options)')}"
                    ) from None
                last_error = exc
        raise HeadvecError(
            f"endpoint {self.base_url} failed {self.max_retries + 1} times for model {self.model!r} "
            f"({type(last_error).__name__}: {_short(last_error)}); check that the server is up, or raise "
            "--timeout / --retries (finished items are saved; rerun to resume)"
        )

    def chat(self, text: str, image: Any = None, seed: int = 0) -> str:
        """One user message (and image) -> the reply, with this judge's retries and backoff: for callers
        that bring their own prompt and parser (the VLFeedback annotator, response pools)."""
        return self._chat(text, image, seed)

    def compare_batch(self, comparisons: Sequence[Comparison]) -> list[Preference]:
        per_request = [self.template.requests(c.prompt, c.a, c.b) for c in comparisons]
        jobs = [
            (text, c.image, c.seed)
            for c, texts in zip(comparisons, per_request, strict=True)
            for text in texts
        ]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            outputs = list(pool.map(lambda job: self._chat(*job), jobs))
        preferences, start = [], 0
        for texts in per_request:
            preferences.append(_preference(self.template, outputs[start : start + len(texts)]))
            start += len(texts)
        return preferences


def _short(exc: Exception | None) -> str:
    """The first line of an endpoint's error message (the serving error envelope, or the exception)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("error") or body.get("message")
        detail = detail.get("message") if isinstance(detail, dict) else detail
        if detail:
            return str(detail).splitlines()[0][:200]
    text = str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else "no detail"
    return text[:200]
