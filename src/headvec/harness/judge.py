"""Generative judges: the published judge prompts and answer parsers, run on a local model or an endpoint.

A judge sees the two responses in the order the runner gives it (``a`` first) and returns a
:class:`~headvec.rewards.protocol.Preference` whose ``choice`` is ``None`` when its output could not be
parsed, so the harness can report and count those instead of silently dropping them (VL-RewardBench's
``cal.py``) or guessing (Multimodal RewardBench's scorer, lmms-eval).
"""

from __future__ import annotations

import base64
import io
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from PIL import Image

from headvec.errors import HeadvecError
from headvec.rewards.protocol import Preference, ScoreBasedComparison, preference_from_scores

Choice = Literal["a", "b", "tie"] | None

# VL-RewardBench prompt.py, verbatim (note the leading space).
VLRB_JUDGE_PROMPT = (
    " You are a highly capable multimodal AI assistant tasked with evaluating answers to visual questions. "
    "Please analyze the following image and question, then determine which of the two provided answers is "
    "better.\n\nQuestion: {query}\n\nAnswer 1: {answer_1}\n\nAnswer 2: {answer_2}\n\nPlease evaluate both "
    "answers based on the following criteria:\n1. Accuracy: How well does the answer align with the visual "
    "information in the image?\n2. Completeness: Does the answer fully address all aspects of the question?"
    "\n3. Clarity: Is the answer easy to understand and well-articulated?\n4. Relevance: Does the answer "
    "directly relate to the question and the image?\n\nAfter your evaluation, please:\n1. Explain your "
    "reasoning for each criterion.\n2. Provide an overall judgment on which answer is better (Answer 1 or "
    "Answer 2). For example: Overall Judgment: Answer X is better.\n\nYour response should be structured "
    "and detailed, demonstrating your understanding of both the visual and textual elements of the task."
)
# VL-RewardBench cal.py, applied after removing newlines and '*', case-insensitive.
VLRB_VERDICT = re.compile(
    r"(?:Overall Judgment|Therefore)\s*.*\s*-*\s*Answer\s*(\d+)\s*is\s*(?:the\s*)?(?:slightly\s*)?better",
    re.IGNORECASE,
)

# Multimodal RewardBench scripts/1_run_model_as_judge_gpt4o.py, verbatim: the "\\n" in its source are
# literal backslash-n characters in what GPT-4o was sent, and are kept so scores stay comparable.
MRB_JUDGE_PROMPT = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI "
    "assistants to the user question displayed below. You should choose the assistant that follows the "
    "user's instructions and answers the user's question better. Your evaluation should consider factors "
    "such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of their "
    "responses. Begin your evaluation by comparing the two responses and provide a short explanation. "
    "Avoid any position biases and ensure that the order in which the responses were presented does not "
    "influence your decision. Do not allow the length of the responses to influence your evaluation. Do "
    "not favor certain names of the assistants. Be as objective as possible. After providing your "
    'explanation, output your final verdict by strictly following this format: "[[A]]" if assistant A is '
    'better, "[[B]]" if assistant B is better.\n\n[User Question]\\n{question}\\n\\n[The Start of '
    "Assistant A's Answer]\\n{answer_a}\\n[The End of Assistant A's Answer]\\n\\n[The Start of Assistant B's "
    "Answer]\\n{answer_b}\\n[The End of Assistant B's Answer]"
)

# headvec's toy world: the yes/no judge task the toy model is trained on (toyworld.tasks.judge_prompt).
TOY_JUDGE_PROMPT = "question : {question} answer : {answer} . is the answer correct ?"


def parse_vlrb_verdict(judgement: str) -> int | None:
    """The answer number the official VL-RewardBench parser finds (1 or 2), or None."""
    match = VLRB_VERDICT.search(judgement.replace("\n", "").replace("*", ""))
    if match is None:
        return None
    number = int(match.group(1))
    return number if number in (1, 2) else None


def parse_mrb_verdict(judgement: str) -> str | None:
    """'A' or 'B' as Multimodal RewardBench's scorer reads it ([[A]] first); None where it flips a coin."""
    if "[[A]]" in judgement:
        return "A"
    if "[[B]]" in judgement:
        return "B"
    return None


def parse_yes_no(output: str) -> bool | None:
    words = output.strip().lower().split()
    if not words:
        return None
    return {"yes": True, "no": False}.get(words[0].strip(".,!"))


@dataclass(frozen=True)
class JudgeTemplate:
    """How a judge is asked (one pairwise prompt, or one yes/no prompt per response) and how it answers."""

    name: str
    pointwise: bool
    default_max_new_tokens: int

    def requests(self, prompt: str, a: str, b: str) -> list[str]:
        """The judge prompts; the image goes separately, so ``<image>`` markers in queries are dropped
        (VL-RewardBench strips ``<image>\\n``; a stray marker would also break processors)."""
        if self.name == "vlrewardbench":
            text = VLRB_JUDGE_PROMPT.format(query=prompt, answer_1=a, answer_2=b)
            return [text.replace("<image>\n", "").replace("<image>", "")]
        prompt = prompt.replace("<image>\n", "").replace("<image>", "")
        if self.name == "mtbench":
            return [MRB_JUDGE_PROMPT.format(question=prompt, answer_a=a, answer_b=b)]
        if self.name == "toyworld":
            return [TOY_JUDGE_PROMPT.format(question=prompt, answer=_strip_stop(x)) for x in (a, b)]
        raise HeadvecError(f"unknown judge template {self.name!r}; choose one of {', '.join(TEMPLATES)}")

    def verdict(self, outputs: Sequence[str]) -> Choice:
        if self.name == "vlrewardbench":
            number = parse_vlrb_verdict(outputs[0])
            return None if number is None else "a" if number == 1 else "b"
        if self.name == "mtbench":
            letter = parse_mrb_verdict(outputs[0])
            return None if letter is None else "a" if letter == "A" else "b"
        yes_a, yes_b = (parse_yes_no(o) for o in outputs)
        if yes_a is None or yes_b is None:
            return None
        return "tie" if yes_a == yes_b else "a" if yes_a else "b"


def _strip_stop(answer: str) -> str:
    answer = answer.strip()
    return answer[:-2].rstrip() if answer.endswith(" .") else answer


TEMPLATES = {
    "vlrewardbench": JudgeTemplate("vlrewardbench", pointwise=False, default_max_new_tokens=512),
    "mtbench": JudgeTemplate("mtbench", pointwise=False, default_max_new_tokens=512),
    "toyworld": JudgeTemplate("toyworld", pointwise=True, default_max_new_tokens=2),
}
DEFAULT_TEMPLATE = {
    "vlrewardbench": "vlrewardbench",
    "multimodal-rewardbench": "mtbench",
    "rewardbench": "mtbench",
}


def get_template(name: str) -> JudgeTemplate:
    if name not in TEMPLATES:
        raise HeadvecError(f"unknown judge template {name!r}; choose one of {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


@dataclass
class CompareRequest:
    """One judge call: responses in display order (``a`` first) and the seed of this sample."""

    prompt: str
    a: str
    b: str
    image: Image.Image | None = None
    seed: int = 0


class _JudgeBase:
    """What both judges share: the RewardModel protocol on top of ``compare_batch``."""

    template: JudgeTemplate

    def score(self, prompts, responses, images=None) -> list[float]:
        raise HeadvecError(
            "a generative judge compares two responses and has no scalar score; use compare, or a "
            "score-based reward model for best-of-N scoring"
        )

    def compare(self, prompt: str, a: str, b: str, image=None) -> Preference:
        from headvec.models import load_image

        pil = None if image is None else load_image(image)
        return self.compare_batch([CompareRequest(prompt, a, b, pil)])[0]

    def compare_batch(self, requests: Sequence[CompareRequest]) -> list[Preference]:
        raise NotImplementedError

    def _preference(self, outputs: list[str]) -> Preference:
        raw = outputs[0] if len(outputs) == 1 else "\n---\n".join(outputs)
        return Preference(choice=self.template.verdict(outputs), raw=raw)


class LocalJudge(_JudgeBase):
    """A headvec-loaded model as a generative judge (greedy by default, batched when greedy)."""

    def __init__(
        self,
        loaded,
        template: JudgeTemplate,
        *,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        batch_size: int = 8,
    ):
        from headvec.engine import HeadEngine

        self.loaded, self.template, self.engine = loaded, template, HeadEngine(loaded)
        self.max_new_tokens = max_new_tokens or template.default_max_new_tokens
        self.temperature, self.top_p, self.batch_size = temperature, top_p, batch_size

    def _prompt(self, text: str, image: Image.Image | None):
        images = [image] if image is not None and self.loaded.is_multimodal else []
        return self.loaded.build_prompt(text, images)

    def compare_batch(self, requests: Sequence[CompareRequest]) -> list[Preference]:
        per_request = [self.template.requests(r.prompt, r.a, r.b) for r in requests]
        prompts = [
            self._prompt(text, r.image)
            for r, texts in zip(requests, per_request, strict=True)
            for text in texts
        ]
        if self.temperature > 0:
            import torch

            outputs = []
            seeds = [r.seed for r, texts in zip(requests, per_request, strict=True) for _ in texts]
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
            preferences.append(self._preference(outputs[start : start + len(texts)]))
            start += len(texts)
        return preferences


def image_data_url(image: Image.Image) -> str:
    """A PNG data URL, the way VL-RewardBench's inference script sends images."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class OpenAIJudge(_JudgeBase):
    """A judge behind any OpenAI-compatible chat endpoint (vLLM, GPT-4o, Reka, ``headvec bench serve``).

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
    ):
        import openai

        self.base_url, self.model, self.template = base_url, model, template
        self.client = openai.OpenAI(
            base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout, max_retries=0
        )
        self.max_retries, self.concurrency, self.backoff = max_retries, max(1, concurrency), backoff
        self.temperature, self.top_p, self.max_tokens = temperature, top_p, max_tokens
        self.calls = 0

    def _chat(self, text: str, image: Image.Image | None, seed: int) -> str:
        import openai

        content: list[dict] = [{"type": "text", "text": text}]
        if image is not None:
            content.append({"type": "image_url", "image_url": {"url": image_data_url(image)}})
        last_error: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            self.calls += 1
            try:
                completion = self.client.chat.completions.create(
                    model=self.model,
                    messages=[{"role": "user", "content": content}],
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

    def compare_batch(self, requests: Sequence[CompareRequest]) -> list[Preference]:
        jobs = [
            (text, r.image, r.seed) for r in requests for text in self.template.requests(r.prompt, r.a, r.b)
        ]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            outputs = list(pool.map(lambda job: self._chat(*job), jobs))
        preferences, start = [], 0
        for r in requests:
            n = len(self.template.requests(r.prompt, r.a, r.b))
            preferences.append(self._preference(outputs[start : start + n]))
            start += n
        return preferences


def _short(exc: Exception | None) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("error") or body.get("message")
        detail = detail.get("message") if isinstance(detail, dict) else detail
        if detail:
            return str(detail).splitlines()[0][:200]
    text = str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else "no detail"
    return text[:200]


class YesNoScoreJudge(ScoreBasedComparison):
    """A judge read as a reward model: reward = log P(yes) - log P(no) for the first answer token of the
    pointwise "is the answer correct ?" prompt. Unlike the generated yes/no it never ties on a judge that
    answers "yes" to everything, and it gives Best-of-N a score to rank by."""

    def __init__(self, loaded, template: JudgeTemplate, batch_size: int = 8):
        if not template.pointwise:
            raise HeadvecError("judge-score needs a pointwise (yes/no) template; use --template toyworld")
        self.loaded, self.template, self.batch_size = loaded, template, batch_size
        tokenizer = loaded.tokenizer
        self.yes_id, self.no_id = (
            tokenizer.encode(word, add_special_tokens=False)[0] for word in ("yes", "no")
        )

    def score(self, prompts, responses, images=None) -> list[float]:
        import torch

        from headvec.engine import iter_batches
        from headvec.models import load_image

        images = list(images) if images is not None else [None] * len(prompts)
        built = []
        for prompt, response, image in zip(prompts, responses, images, strict=True):
            text = self.template.requests(prompt, response, response)[0]
            pil = [load_image(image)] if image is not None and self.loaded.is_multimodal else []
            built.append(self.loaded.build_prompt(text, pil))
        scores: list[float] = []
        with torch.no_grad():
            for batch in iter_batches(built, self.batch_size):
                logits = self.loaded.model(**self.loaded.encode(batch, padding_side="left")).logits[:, -1]
                logp = torch.log_softmax(logits.float(), dim=-1)
                scores += (logp[:, self.yes_id] - logp[:, self.no_id]).tolist()
        return scores

    def compare_batch(self, requests: Sequence[CompareRequest]) -> list[Preference]:
        prompts = [r.prompt for r in requests for _ in (0, 1)]
        responses = [x for r in requests for x in (r.a, r.b)]
        scores = self.score(prompts, responses, [r.image for r in requests for _ in (0, 1)])
        return [preference_from_scores(scores[2 * i], scores[2 * i + 1]) for i in range(len(requests))]
