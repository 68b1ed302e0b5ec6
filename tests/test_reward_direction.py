"""Every reward model and judge points the right way: on a planted cue, the right answer wins.

A tiny random model cannot judge anything, so the cue is planted in the model itself: hooks make the
language model answer the verdict's yes word (and then stop) whenever the cue word is in its input, and
its no word otherwise; the sequence classifier gets a large bonus on the cue. The right response carries
the cue. A reward read backwards (P(no) for P(yes), a flipped comparison, a swapped a/b) turns these red.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
import torch
from checks import TINY_RM_SETTINGS

from headvec import load
from headvec.harness.prompts import TEMPLATES, mrb_choice, vlrb_choice
from headvec.rewards import PreferencePair, Scorer, as_judge
from headvec.rewards.activation import ActivationRewardModel, Judgement, VerdictFormat, VerdictScorer
from headvec.rewards.baselines import (
    InContextJudge,
    SampledVotingJudge,
    SavVerdictJudge,
    TokenProbabilityJudge,
    ZeroShotJudge,
)
from headvec.rewards.best_of_n import best_of_n
from headvec.rewards.judges import TOY_JUDGE_TEMPLATE, LocalJudge, OpenAIJudge, YesNoTemplate
from headvec.rewards.runner import evaluate_pairs, run_pairs
from headvec.rewards.simple import FirstShownBaseline, LengthBaseline

torch.set_num_threads(1)

# The tiny models' vocabulary is small: verdict words and the cue are single tokens of it.
FORMAT = VerdictFormat(criterion="the animal is striped", yes="Yes", no="Could")
PROMPT = "which animal is striped ?"
RIGHT, WRONG = "Lions", "Ocean"


def _cue_id(tokenizer) -> int:
    ids = tokenizer(f" {RIGHT}", add_special_tokens=False)["input_ids"]
    wrong = set(tokenizer(f"{PROMPT} {WRONG}", add_special_tokens=False)["input_ids"])
    cue = ids[-1]
    assert cue not in wrong, "the cue token also occurs in the wrong answer: choose another cue word"
    return cue


def plant_cue(loaded, fmt: VerdictFormat) -> None:
    """The model answers fmt.yes (then end of text) when the cue is in its input, fmt.no otherwise."""
    scorer = VerdictScorer(loaded, fmt)
    yes_id, no_id = scorer.yes_id, scorer.no_id
    cue, eos = _cue_id(loaded.tokenizer), loaded.tokenizer.eos_token_id
    state: dict = {}

    def see_input(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        state["prefill"] = ids is not None and ids.shape[1] > 1
        if state["prefill"]:
            state["flags"] = (ids == cue).any(dim=1)

    def answer(module, args, output):
        output = output.clone()  # (batch, positions, vocab)
        if state["prefill"]:
            flags = state["flags"]
            output[flags, :, yes_id] += 30.0
            output[~flags, :, no_id] += 30.0
        else:
            output[:, :, eos] += 60.0
        return output

    loaded.model.register_forward_pre_hook(see_input, with_kwargs=True)
    loaded.model.get_output_embeddings().register_forward_hook(answer)


@pytest.fixture(scope="module")
def planted(tiny_model_dir):
    loaded = load(tiny_model_dir("llama"), device="cpu")
    plant_cue(loaded, FORMAT)
    return loaded


# The toy world's judge template (one yes/no prompt per response) with the generic yes/no words.
TOY_FMT = VerdictFormat(TOY_JUDGE_TEMPLATE.fmt.template, FORMAT.criterion, FORMAT.yes, FORMAT.no, True)
TOY = YesNoTemplate("toyworld", TOY_FMT)


@pytest.fixture(scope="module")
def planted_toy(tiny_model_dir):
    loaded = load(tiny_model_dir("llama"), device="cpu")
    plant_cue(loaded, TOY_FMT)
    return loaded


def plain_judgements() -> list[Judgement]:
    facts = [("sky", "blue", "green"), ("grass", "green", "red"), ("snow", "white", "black")]
    out = []
    for thing, right, wrong in facts:
        out += [
            Judgement(f"what color is {thing} ?", right, True),
            Judgement(f"what color is {thing} ?", wrong, False),
        ]
    return out * 2


def cue_judgements() -> list[Judgement]:
    prompts = ["which animal is striped ?", "name a striped animal", "what has stripes ?"]
    return [Judgement(p, RIGHT, True) for p in prompts] + [Judgement(p, WRONG, False) for p in prompts]


def _right_scores_higher(rm) -> tuple[float, float]:
    right, wrong = rm.rewards([PROMPT, PROMPT], [RIGHT, WRONG])
    assert right > wrong, f"{type(rm).__name__}: reward of the right answer {right} <= wrong {wrong}"
    return right, wrong


def test_the_planted_cue_works(planted):
    probabilities = TokenProbabilityJudge(planted, FORMAT).rewards([PROMPT, PROMPT], [RIGHT, WRONG])
    assert probabilities[0] > 0.99 and probabilities[1] < 0.01


def test_activation_rm_rewards_the_right_answer(planted):
    rm = ActivationRewardModel(planted, FORMAT, **TINY_RM_SETTINGS).fit(cue_judgements())
    right, wrong = _right_scores_higher(rm)
    assert right > 0.5 > wrong
    assert rm.score(cue_judgements()) == 1.0  # the sklearn metric: accuracy of reward > 0.5
    reward = rm.as_trl_reward_func()
    assert reward([PROMPT, PROMPT], [RIGHT, WRONG]) == [right, wrong]


@pytest.mark.parametrize("output", ["probability", "log_odds"])
def test_token_probability_judge_rewards_the_right_answer(planted, output):
    _right_scores_higher(TokenProbabilityJudge(planted, FORMAT, output=output))


@pytest.mark.parametrize("make", [ZeroShotJudge, lambda m, f: InContextJudge(m, f, k=2), SampledVotingJudge])
def test_generated_verdict_judges_reward_the_right_answer(planted, make):
    judge = make(planted, FORMAT).fit(plain_judgements())  # shots without the cue: only the query has it
    assert judge.rewards([PROMPT, PROMPT], [RIGHT, WRONG]) == [1.0, 0.0]
    assert judge.unparsed_ == 0


def test_sav_judge_rewards_the_right_answer(planted):
    _right_scores_higher(SavVerdictJudge(planted, FORMAT, n_heads=3).fit(cue_judgements()))


def test_local_yes_no_judge_prefers_the_right_answer(planted_toy):
    judge = LocalJudge(planted_toy, TOY)
    assert [p.choice for p in judge.compare_batch(_both_orders())] == ["a", "b"]


def _both_orders():
    from headvec.rewards import Comparison

    return [Comparison(PROMPT, RIGHT, WRONG), Comparison(PROMPT, WRONG, RIGHT)]


def test_published_pairwise_parsers_map_answer_numbers_to_slots():
    assert vlrb_choice("Overall Judgment: Answer 1 is better.") == "a"
    assert vlrb_choice("Overall Judgment: Answer 2 is better.") == "b"
    assert mrb_choice("[[A]]") == "a" and mrb_choice("[[B]]") == "b"
    assert (
        TEMPLATES["toyworld"].verdict(["yes", "no"]) == "a"
        and TEMPLATES["toyworld"].verdict(["no", "yes"]) == "b"
    )


def test_scorer_judge_and_length_floor_prefer_the_higher_reward():
    judge = as_judge(LengthBaseline())
    assert [p.choice for p in judge.compare_batch(_both_orders_long())] == ["a", "b", "tie"]
    assert [p.choice for p in FirstShownBaseline().compare_batch(_both_orders_long())] == ["a", "a", "a"]


def _both_orders_long():
    from headvec.rewards import Comparison

    return [
        Comparison("q", "two words", "one"),
        Comparison("q", "one", "two words"),
        Comparison("q", "x", "y"),
    ]


def test_runners_count_the_right_answer_as_agreement(planted, planted_toy):
    pairs = [PreferencePair.from_chosen(PROMPT, RIGHT, WRONG, "cue", id=str(i)) for i in range(3)]
    pairs += [
        PreferencePair(prompt=PROMPT, responses=(WRONG, RIGHT), better=1, category="cue", id="stored-second")
    ]
    scorer = TokenProbabilityJudge(planted, FORMAT)
    assert evaluate_pairs(scorer, pairs, progress=False)["overall"]["accuracy"] == 1.0
    records = run_pairs(pairs, scorer, k=3, seed=1)
    assert {s["outcome"] for r in records for s in r["samples"]} == {"agree"}
    assert {s["swap"] for r in records for s in r["samples"]} == {True, False}  # both display orders met
    judge = LocalJudge(planted_toy, TOY)
    assert evaluate_pairs(judge, pairs, progress=False)["overall"]["accuracy"] == 1.0


def test_best_of_n_picks_the_right_answer(planted, planted_toy):
    candidates = [WRONG, "a striped horse", RIGHT, "a donkey"]
    scorer = TokenProbabilityJudge(planted, FORMAT)
    assert isinstance(scorer, Scorer)
    assert best_of_n(scorer, PROMPT, candidates).index == 2
    knockout = best_of_n(LocalJudge(planted_toy, TOY), PROMPT, candidates)
    assert knockout.index == 2 and knockout.matches


def test_sequence_classifier_rewards_the_cue(tiny_model_dir, tmp_path):
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    from headvec.rewards.classifier import SequenceClassifierRewardModel

    source = tiny_model_dir("llama")
    torch.manual_seed(0)
    LlamaForSequenceClassification(AutoConfig.from_pretrained(source, num_labels=1)).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(source).save_pretrained(tmp_path)
    rm = SequenceClassifierRewardModel(tmp_path)
    cue, state = _cue_id(rm.tokenizer), {}
    rm.model.register_forward_pre_hook(
        lambda m, args, kwargs: state.update(flags=(kwargs["input_ids"] == cue).any(dim=1)), with_kwargs=True
    )

    def bonus(module, args, output):  # (batch, positions, labels)
        return output + 30.0 * state["flags"].float()[:, None, None]

    rm.model.score.register_forward_hook(bonus)
    _right_scores_higher(rm)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_served_reward_model_and_endpoint_judge_keep_the_direction(planted, planted_toy):
    import uvicorn
    from fastapi.testclient import TestClient

    from headvec.serving import chat, rm

    scorer = TokenProbabilityJudge(planted, FORMAT)
    with TestClient(rm.create_app(scorer)) as client:
        items = [{"prompt": PROMPT, "response": RIGHT}, {"prompt": PROMPT, "response": WRONG}]
        right, wrong = client.post("/score", json={"items": items}).json()["scores"]
    assert right > wrong
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            chat.create_app(planted_toy, "tiny", 2), host="127.0.0.1", port=port, log_level="error"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 200
        judge = OpenAIJudge(f"http://127.0.0.1:{port}/v1", "tiny", TOY, max_tokens=2, temperature=0.0)
        assert [p.choice for p in judge.compare_batch(_both_orders())] == ["a", "b"]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
