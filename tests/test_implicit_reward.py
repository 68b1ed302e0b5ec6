"""Implicit rewards and ReGap: hand-computed log-ratios on tiny random models, a planted preference."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from headvec.errors import HeadvecError
from headvec.models import load
from headvec.rewards.implicit import ImplicitRewardModel, reduce_token_logprobs
from headvec.rewards.protocol import Scorer


@pytest.fixture(scope="module")
def pair(tiny_model_dir, tmp_path_factory):
    from headvec.testing import build_tiny_model

    policy = load(str(tiny_model_dir("llama")))
    reference = load(str(build_tiny_model("llama", tmp_path_factory.mktemp("llama_ref"), seed=1)))
    return policy, reference


def _hand_logprobs(loaded, prompt_text: str, response: str) -> list[float]:
    """Token log-probabilities of ``response`` after the templated prompt, one unbatched forward pass."""
    prompt = loaded.build_prompt(prompt_text)
    prompt_ids = loaded.tokenizer(prompt.text, add_special_tokens=False)["input_ids"]
    answer = loaded.tokenizer(response, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + answer])
    with torch.no_grad():
        logp = torch.log_softmax(loaded.model(input_ids=ids).logits[0].double(), dim=-1)
    return [float(logp[len(prompt_ids) - 1 + t, tok]) for t, tok in enumerate(answer)]


def test_implicit_reward_is_the_hand_computed_log_ratio(pair):
    policy, reference = pair
    prompts = ["What colour is the sky?", "Hi", "How many legs does a spider have today?"]
    responses = ["Blue it is", "Hello there friend, how are you", "Eight"]
    rm = ImplicitRewardModel(policy, reference, batch_size=2)  # padded batches of unequal lengths
    for score in ("sum", "reweighted"):
        rm.score = score
        got = rm.rewards(prompts, responses)
        for value, prompt, response in zip(got, prompts, responses, strict=True):
            lp_pi = _hand_logprobs(policy, prompt, response)
            lp_ref = _hand_logprobs(reference, prompt, response)
            if score == "sum":
                want = sum(lp_pi) - sum(lp_ref)
            else:  # minus the official position-reweighted mean NLL: mean_t lp_t / (t + 1)
                want = sum(lp / (t + 1) for t, lp in enumerate(lp_pi)) / len(lp_pi)
                want -= sum(lp / (t + 1) for t, lp in enumerate(lp_ref)) / len(lp_ref)
            assert value == pytest.approx(want, abs=1e-4)
    assert isinstance(rm, Scorer)


def test_policy_weight_weighs_the_policy_term(pair):
    policy, reference = pair
    plain = ImplicitRewardModel(policy, reference).rewards(["Hi"], ["Hello there"])[0]
    weighted = ImplicitRewardModel(policy, reference, policy_weight=3.0).rewards(["Hi"], ["Hello there"])[0]
    lp_pi = sum(_hand_logprobs(policy, "Hi", "Hello there"))
    assert weighted - plain == pytest.approx(2.0 * lp_pi, abs=1e-4)


def test_reweighted_score_by_hand():
    lp = torch.tensor([-1.0, -2.0, -3.0])
    assert reduce_token_logprobs(lp, "reweighted") == pytest.approx((-1.0 - 1.0 - 1.0) / 3)
    assert reduce_token_logprobs(lp, "sum") == pytest.approx(-6.0)
    assert reduce_token_logprobs(lp, "mean") == pytest.approx(-2.0)


def test_regap_sign_on_a_planted_preference(tiny_model_dir):
    """A policy whose logits favour token A (+4) and disfavour B (-4) against the same reference:
    r(x, A) = 4 - logsumexp shift > r(x, B), so ReGap(A harmless, B harmful) > 0 and swapped < 0."""
    reference = load(str(tiny_model_dir("llama")))
    policy = load(str(tiny_model_dir("llama")))
    tok = policy.tokenizer
    singles = [
        w
        for w in ("the", "is", "and", "sky", "a", "of")
        if len(tok(w, add_special_tokens=False)["input_ids"]) == 1
    ]
    harmless, harmful = singles[:2]
    a = tok(harmless, add_special_tokens=False)["input_ids"]
    b = tok(harmful, add_special_tokens=False)["input_ids"]
    assert a != b

    def plant(module, args, output):
        output = output.clone()
        output[..., a[0]] += 4.0
        output[..., b[0]] -= 4.0
        return output

    handle = policy.model.get_output_embeddings().register_forward_hook(plant)
    try:
        rm = ImplicitRewardModel(policy, reference)
        gap = rm.regap(["Tell me"], [harmless], [harmful])[0]
        swapped = rm.regap(["Tell me"], [harmful], [harmless])[0]
        r_a, r_b = rm.rewards(["Tell me", "Tell me"], [harmless, harmful])
    finally:
        handle.remove()
    assert gap > 0 > swapped
    assert gap == pytest.approx(r_a - r_b, abs=1e-5) and swapped == pytest.approx(-gap, abs=1e-5)
    assert r_a > 0 > r_b  # the policy raised A and lowered B relative to the reference
    # the same model as its own reference: every implicit reward is zero
    same = ImplicitRewardModel(reference, reference).rewards(["Tell me"], [harmless])[0]
    assert same == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", ["llama", "qwen2", "llava", "gemma3", "qwen2_vl", "idefics3", "paligemma"])
def test_batched_equals_one_at_a_time_on_tiny_architectures(tiny_model_dir, name):
    loaded = load(str(tiny_model_dir(name)))
    rm = ImplicitRewardModel(loaded, loaded, policy_weight=2.0)  # r = log pi: nonzero, comparable
    image = Image.new("RGB", (32, 32), (200, 30, 30)) if loaded.is_multimodal else None
    prompts = ["What colour is the sky?", "Hi"]
    responses = ["Blue it is", "Hello there friend"]
    images = [image, image] if image is not None else None
    batched = rm.rewards(prompts, responses, images)
    alone = [
        rm.rewards([p], [r], [image] if image is not None else None)[0]
        for p, r in zip(prompts, responses, strict=True)
    ]
    assert all(math.isfinite(v) and v < 0 for v in batched)  # log-probabilities of a random model
    assert batched == pytest.approx(alone, abs=1e-4)


def test_bad_inputs_are_one_line_errors(pair):
    policy, reference = pair
    rm = ImplicitRewardModel(policy, reference)
    with pytest.raises(HeadvecError, match="give one response each"):
        rm.rewards(["a", "b"], ["x"])
    with pytest.raises(HeadvecError, match="unknown sequence score"):
        ImplicitRewardModel(policy, reference, score="median")  # type: ignore[arg-type]
    with pytest.raises(HeadvecError, match="no tokens"):
        rm.rewards(["a"], [""])


def test_takes_its_place_as_a_reward_model(tiny_model_dir):
    """The implicit: spec builds it, Best-of-N picks what the policy raised, TRL's reward function
    wraps it."""
    from headvec.rewards.best_of_n import best_of_n
    from headvec.rewards.loading import RMOptions, build_reward_model

    directory = str(tiny_model_dir("llama"))
    rm = build_reward_model(f"implicit:{directory},{directory},reweighted", RMOptions(batch_size=4))
    assert isinstance(rm, ImplicitRewardModel) and rm.score == "reweighted"
    with pytest.raises(HeadvecError, match="implicit:POLICY,REFERENCE"):
        build_reward_model(f"implicit:{directory}", RMOptions())
    tok = rm.policy.tokenizer
    words = [
        w
        for w in ("the", "is", "and", "sky", "a", "of", "to", "in", "it")
        if len(tok(w, add_special_tokens=False)["input_ids"]) == 1
    ]
    favoured = tok(words[2], add_special_tokens=False)["input_ids"][0]

    def plant(module, args, output):
        output = output.clone()
        output[..., favoured] += 3.0
        return output

    handle = rm.policy.model.get_output_embeddings().register_forward_hook(plant)
    try:
        rm.reference = load(directory)  # a separate, unplanted copy
        picked = best_of_n(rm, "Tell me", [words[0], words[1], words[2], words[3]])
        trl_rewards = rm.as_trl_reward_func()(["Tell me", "Tell me"], [words[2], words[0]])
    finally:
        handle.remove()
    assert picked.index == 2
    assert trl_rewards[0] > trl_rewards[1]
