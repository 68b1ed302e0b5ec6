"""Yes/no verdicts: how a (prompt, response) is put to a model as a question, and how its answer is read.

One verdict format (:class:`VerdictFormat`) and one parser (:func:`parse_yes_no`) serve every judge that
asks "does this response meet the criterion?": the activation reward model, the verdict baselines, and the
benchmark harness's pointwise judges. The toy world's judge prompt is written here once
(:data:`TOY_TEMPLATE`); the toy model was trained on exactly this text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

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
    image: Any = None


def strip_image_markers(prompt: str) -> str:
    """Benchmarks put ``<image>`` markers in queries; the image goes separately, so they are dropped."""
    return prompt.replace("<image>\n", "").replace("<image>", "")


def strip_final_stop(answer: str) -> str:
    """``"two ."`` -> ``"two"``: the toy template writes the full stop after the answer itself."""
    answer = answer.strip()
    return answer[:-2].rstrip() if answer.endswith(" .") else answer


@dataclass(frozen=True)
class VerdictFormat:
    """How a (prompt, response) pair is put to the model as a yes/no question, and the two answer words.

    ``benchmark_text`` drops ``<image>`` markers from the prompt and a final `` .`` from the response,
    as the harness's pointwise judge has always done with benchmark rows.
    """

    template: str = GENERIC_TEMPLATE
    criterion: str = "the answer is correct"
    yes: str = "Yes"
    no: str = "No"
    benchmark_text: bool = False

    def text(self, prompt: str, response: str) -> str:
        if self.benchmark_text:
            prompt, response = strip_image_markers(prompt), strip_final_stop(response)
        return self.template.format(prompt=prompt, response=response.strip(), criterion=self.criterion)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


TOY_FORMAT = VerdictFormat(TOY_TEMPLATE, "the answer is correct", "yes", "no")
TOY_JUDGE_FORMAT = VerdictFormat(TOY_TEMPLATE, "the answer is correct", "yes", "no", benchmark_text=True)


def parse_yes_no(text: str, yes: str = "yes", no: str = "no") -> bool | None:
    """True if the first word is ``yes``, False if it is ``no`` (case-insensitive, punctuation after the
    word ignored), else None: a verdict that cannot be read is reported, never guessed."""
    words = text.strip().lower().replace(".", " ").replace(",", " ").split()
    if not words:
        return None
    first = words[0].strip("!")
    if first == yes.lower():
        return True
    if first == no.lower():
        return False
    return None
