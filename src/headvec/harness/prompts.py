"""The benchmarks' published judge prompts and answer parsers, as judge templates.

VL-RewardBench's prompt and ``cal.py`` parser, Multimodal RewardBench's GPT-4o judge prompt and scorer,
RewardBench's system and user messages,
verbatim; the toy world's yes/no template comes from :mod:`headvec.rewards.judges`. The judges that use
them (local model, OpenAI-compatible endpoint) live in :mod:`headvec.rewards.judges`; a judge reports
output it cannot parse as ``choice=None`` so the harness counts it instead of silently dropping it
(VL-RewardBench's ``cal.py``) or guessing (Multimodal RewardBench's scorer, lmms-eval).
"""

from __future__ import annotations

import re

from headvec.rewards.judges import TOY_JUDGE_TEMPLATE, JudgeTemplate, PairwiseTemplate
from headvec.rewards.loading import get_template as _lookup
from headvec.rewards.protocol import Choice
from headvec.rewards.verdicts import strip_image_markers

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

# RewardBench rewardbench/generative.py ``prompt_v2`` (the system message) and ``MTBENCH_V2``'s
# ``prompt_template`` (the user message), verbatim.
RB_SYSTEM_PROMPT = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI "
    "assistants to the user question displayed below. You should choose the assistant that follows the "
    "user's instructions and answers the user's question better. Your evaluation should consider factors "
    "such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of their "
    "responses. Begin your evaluation by comparing the two responses and provide a short explanation. "
    "Avoid any position biases and ensure that the order in which the responses were presented does not "
    "influence your decision. Do not allow the length of the responses to influence your evaluation. Do "
    "not favor certain names of the assistants. Be as objective as possible. After providing your "
    'explanation, output your final verdict by strictly following this format: "[[A]]" if assistant A is '
    'better, "[[B]]" if assistant B is better.'
)
RB_USER_TEMPLATE = (
    "[User Question]\n{question}\n\n[The Start of Assistant A's Answer]\n{answer_a}\n[The End of "
    "Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant "
    "B's Answer]"
)

# Multimodal RewardBench scripts/1_run_model_as_judge_gpt4o.py ``judge_prompt``, verbatim: a plain
# triple-quoted string, so every "\n" in its source is a real newline in what GPT-4o was sent. It is
# RewardBench's system prompt and user template word for word, in one message.
MRB_JUDGE_PROMPT = RB_SYSTEM_PROMPT + "\n\n" + RB_USER_TEMPLATE


def vlrb_answer_number(judgement: str) -> int | None:
    """Any answer number VL-RewardBench's regex finds (``cal.py`` scores every number but the rejected
    answer's as agreement, so ``Answer 3`` counts)."""
    match = VLRB_VERDICT.search(judgement.replace("\n", "").replace("*", ""))
    return None if match is None else int(match.group(1))


def parse_vlrb_verdict(judgement: str) -> int | None:
    """The answer number the official VL-RewardBench parser finds, when it names a shown answer (1 or 2)."""
    number = vlrb_answer_number(judgement)
    return number if number in (1, 2) else None


def parse_mrb_verdict(judgement: str) -> str | None:
    """'A' or 'B' as Multimodal RewardBench's scorer reads it ([[A]] first); None where it flips a coin."""
    if "[[A]]" in judgement:
        return "A"
    if "[[B]]" in judgement:
        return "B"
    return None


def vlrb_request(prompt: str, a: str, b: str) -> str:
    """VL-RewardBench's judge prompt; ``<image>`` markers are dropped (the image goes separately)."""
    return strip_image_markers(VLRB_JUDGE_PROMPT.format(query=prompt, answer_1=a, answer_2=b))


def vlrb_choice(output: str) -> Choice:
    number = parse_vlrb_verdict(output)
    return None if number is None else "a" if number == 1 else "b"


def mrb_request(prompt: str, a: str, b: str) -> str:
    """Multimodal RewardBench's judge prompt, all in the one user message as its script sends it."""
    return MRB_JUDGE_PROMPT.format(question=strip_image_markers(prompt), answer_a=a, answer_b=b)


def rb_request(prompt: str, a: str, b: str) -> str:
    """RewardBench's user message (its judge instructions go in the system message)."""
    return RB_USER_TEMPLATE.format(question=prompt, answer_a=a, answer_b=b)


def mrb_choice(output: str) -> Choice:
    letter = parse_mrb_verdict(output)
    return None if letter is None else "a" if letter == "A" else "b"


TEMPLATES: dict[str, JudgeTemplate] = {
    "vlrewardbench": PairwiseTemplate(
        "vlrewardbench", vlrb_request, vlrb_choice, default_max_new_tokens=2048
    ),
    "mtbench": PairwiseTemplate("mtbench", mrb_request, mrb_choice, default_max_new_tokens=1024),
    "rewardbench": PairwiseTemplate(
        "rewardbench", rb_request, mrb_choice, default_max_new_tokens=2048, system=RB_SYSTEM_PROMPT
    ),
    TOY_JUDGE_TEMPLATE.name: TOY_JUDGE_TEMPLATE,
}
DEFAULT_TEMPLATE = {
    "vlrewardbench": "vlrewardbench",
    "multimodal-rewardbench": "mtbench",
    "rewardbench": "rewardbench",
}


def get_template(name: str) -> JudgeTemplate:
    """A judge template by name: a benchmark's published prompt, or ``toyworld``."""
    return _lookup(name, TEMPLATES)
