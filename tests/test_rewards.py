"""Activation reward models, the judge baselines and the paired-preference benchmark (tiny models)."""

from __future__ import annotations

import json

import pytest
from checks import TINY_RM_SETTINGS, random_image
from typer.testing import CliRunner

from headvec import load
from headvec.cli import app
from headvec.errors import DataError, HeadvecError
from headvec.rewards import Judge, PreferencePair, Scorer
from headvec.rewards.activation import ActivationRewardModel, Judgement, VerdictFormat
from headvec.rewards.baselines import (
    InContextJudge,
    SampledVotingJudge,
    SavVerdictJudge,
    TokenProbabilityJudge,
    ZeroShotJudge,
    parse_verdict,
)
from headvec.rewards.loading import load_reward_model
from headvec.rewards.pairs import judgements_from_pairs, read_preference_pairs
from headvec.rewards.protocol import as_judge
from headvec.rewards.runner import evaluate_pairs

FORMAT = VerdictFormat(criterion="the answer is right")


def judgements(multimodal: bool = False) -> list[Judgement]:
    facts = [
        ("sky", "blue", "green"),
        ("grass", "green", "red"),
        ("snow", "white", "black"),
        ("coal", "black", "pink"),
    ]
    out = []
    for i, (thing, right, wrong) in enumerate(facts):
        image = random_image(32, 32, seed=i) if multimodal else None
        out.append(Judgement(f"what color is {thing} ?", right, True, image))
        out.append(Judgement(f"what color is {thing} ?", wrong, False, image))
    return out


@pytest.fixture(scope="module")
def llama(tiny_model_dir):
    return load(tiny_model_dir("llama"), device="cpu")


@pytest.fixture(scope="module")
def fitted(llama):
    return ActivationRewardModel(llama, FORMAT, **TINY_RM_SETTINGS).fit(judgements())


def test_activation_rm_rewards_are_probabilities_and_round_trip(llama, fitted, tmp_path, tiny_model_dir):
    assert isinstance(fitted, Scorer) and not isinstance(fitted, Judge)
    prompts, responses = ["what color is sky ?"] * 2, ["blue", "green"]
    scores = fitted.rewards(prompts, responses)
    assert len(scores) == 2 and all(0.0 < s < 1.0 for s in scores)
    # steering changes the reward: the patched P(yes) differs from the unsteered one
    assert fitted.heads_, "the tiny search chose no head; the steering check below would be vacuous"
    plain = TokenProbabilityJudge(llama, FORMAT).rewards(prompts, responses)
    assert max(abs(a - b) for a, b in zip(scores, plain, strict=True)) > 1e-6
    preference = as_judge(fitted).compare(prompts[0], *responses)
    assert preference.scores == pytest.approx(tuple(scores))
    assert preference.choice == ("a" if scores[0] > scores[1] else "b" if scores[1] > scores[0] else "tie")
    fitted.save_pretrained(tmp_path / "rm")
    assert not list(tmp_path.rglob("*.pkl"))
    again = load_reward_model(tmp_path / "rm", llama)
    assert again.rewards(prompts, responses) == scores
    other = load(tiny_model_dir("qwen2"), device="cpu")
    with pytest.raises(HeadvecError, match="fitted on"):
        ActivationRewardModel.from_pretrained(tmp_path / "rm", other)


def test_same_seed_same_heads(llama, fitted):
    again = ActivationRewardModel(llama, FORMAT, **TINY_RM_SETTINGS).fit(judgements())
    assert again.heads_ == fitted.heads_


def test_too_few_examples_for_the_criterion(llama):
    with pytest.raises(DataError, match="too few examples for the criterion"):
        ActivationRewardModel(llama, FORMAT, **{**TINY_RM_SETTINGS, "min_examples_per_verdict": 4}).fit(
            judgements()[:3]
        )


def test_activation_rm_on_a_vision_language_model(tiny_model_dir):
    loaded = load(tiny_model_dir("llava"), device="cpu")
    rm = ActivationRewardModel(loaded, FORMAT, **TINY_RM_SETTINGS).fit(judgements(True))
    scores = rm.rewards(["what color is sky ?"], ["blue"], [random_image(32, 32, seed=0)])
    assert 0.0 < scores[0] < 1.0


def test_verdict_parsing_reports_what_it_cannot_read():
    assert parse_verdict(" Yes.", FORMAT) is True
    assert parse_verdict("yes!", FORMAT) is True
    assert parse_verdict("no, because", FORMAT) is False
    assert parse_verdict("maybe", FORMAT) is None
    assert parse_verdict("", FORMAT) is None


def test_every_baseline_scores_pairs(llama):
    data = judgements()
    baselines = [
        ZeroShotJudge(llama, FORMAT),
        InContextJudge(llama, FORMAT, k=2),
        TokenProbabilityJudge(llama, FORMAT),
        SavVerdictJudge(llama, FORMAT, n_heads=3),
        SampledVotingJudge(llama, FORMAT, n_samples=3),
    ]
    for judge in baselines:
        judge.fit(data)
        assert isinstance(judge, Scorer)
        scores = judge.rewards(["what color is sky ?"] * 2, ["blue", "green"])
        assert len(scores) == 2
        assert all(0.0 <= s <= 1.0 for s in scores)
    generating = baselines[0]
    # a random tiny model rarely says yes or no: those verdicts are counted, not hidden
    assert generating.judged_ == 2 and 0 <= generating.unparsed_ <= 2
    # sampled voting is seeded: the same call gives the same shares
    assert baselines[-1].rewards(["q"], ["a"]) == baselines[-1].rewards(["q"], ["a"])


class _LengthRM:
    """Prefers longer responses: wins when the bias sits on the right answer, loses when it does not."""

    def rewards(self, prompts, responses, images=None):
        return [float(len(r)) for r in responses]


def _pair(prompt, chosen, rejected, category, id):
    return PreferencePair.from_chosen(prompt, chosen, rejected, category, None, id)


def test_benchmark_accuracy_ties_and_resume(tmp_path):
    pairs = [_pair("q", "long right answer", "short", "flipped", str(i)) for i in range(6)]
    pairs += [_pair("q", "ok", "a long wrong answer", "reward_hacking", str(i)) for i in range(4)]
    pairs += [_pair("q", "same", "size", "tie", "t")]
    result = evaluate_pairs(_LengthRM(), pairs, tmp_path / "run", batch_size=4, progress=False)
    assert result["flipped"]["accuracy"] == 1.0 and result["reward_hacking"]["accuracy"] == 0.0
    assert result["tie"]["ties"] == 1 and result["tie"]["accuracy"] == 0.0
    assert result["overall"]["n"] == 11
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 11
    # a run killed mid-write: the cut line is dropped and redone, nothing is duplicated
    (tmp_path / "run" / "results.jsonl").write_text("\n".join(lines[:5]) + '\n{"uid": "cut')
    again = evaluate_pairs(_LengthRM(), pairs, tmp_path / "run", batch_size=4, progress=False)
    assert again == result
    uids = [json.loads(line)["uid"] for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert sorted(uids) == sorted(p.uid for p in pairs)


def test_pairs_file_errors_name_the_line(tmp_path):
    good = {"question": "q", "chosen": "a", "rejected": "b", "category": "length"}
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({"prompt": "q", "chosen": "a"}) + "\n")
    with pytest.raises(DataError, match=r"line 2.*rejected"):
        read_preference_pairs(path)
    path.write_text(json.dumps(good | {"image": "missing.png"}) + "\n")
    with pytest.raises(DataError, match="image file not found"):
        read_preference_pairs(path)
    path.write_text(json.dumps(good) + "\n")
    pair = read_preference_pairs(path)[0]
    assert (pair.prompt, pair.category, pair.chosen, pair.rejected) == ("q", "length", "a", "b")
    assert [j.verdict for j in judgements_from_pairs([pair])] == [True, False]


def test_cli_fit_and_score(tmp_path, tiny_model_dir):
    data = tmp_path / "verdicts.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": j.prompt, "response": j.response, "verdict": "yes" if j.verdict else "no"})
            + "\n"
            for j in judgements()
        )
    )
    model = str(tiny_model_dir("llama"))
    runner = CliRunner()
    args = ["rm", "fit", model, str(data), "--out", str(tmp_path / "rm"), "--steps", "2", "--n-prompts", "4"]
    result = runner.invoke(app, args)
    # the default needs 4 verdicts of each kind: this data has exactly 4
    assert result.exit_code == 0, result.output
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps({"prompt": "what color is sky ?", "chosen": "blue", "rejected": "green"}) + "\n"
    )
    result = runner.invoke(
        app, ["rm", "score", str(tmp_path / "rm"), str(pairs), "--out", str(tmp_path / "s")]
    )
    assert result.exit_code == 0, result.output
    assert "overall" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "response": "r", "verdict": "perhaps"}\n')
    result = runner.invoke(app, ["rm", "fit", model, str(bad), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "line 1" in result.output


def test_no_pickle_in_the_saved_reward_model(fitted, tmp_path):
    fitted.save_pretrained(tmp_path / "rm")
    names = {p.suffix for p in (tmp_path / "rm").rglob("*") if p.is_file()}
    assert names <= {".json", ".safetensors"}, names


def test_activation_rm_is_a_scikit_learn_estimator(llama, fitted):
    from sklearn.base import clone

    copy = clone(fitted)
    assert copy.get_params(deep=False) == fitted.get_params(deep=False)
    assert copy.model is llama  # the model is shared, never deep-copied
    assert not hasattr(copy, "task_vector_")
    with pytest.raises(HeadvecError, match="not fitted"):
        copy.rewards(["q"], ["a"])
    with pytest.raises(HeadvecError, match="mode"):
        ActivationRewardModel(llama, FORMAT, **{**TINY_RM_SETTINGS, "mode": "sideways"}).fit(judgements())
    # score is the scikit-learn metric: accuracy of reward > 0.5 as the verdict
    rewards = fitted.rewards([j.prompt for j in judgements()], [j.response for j in judgements()])
    expected = sum((r > 0.5) == j.verdict for r, j in zip(rewards, judgements(), strict=True)) / 8
    assert fitted.score(judgements()) == expected
    flipped = [not j.verdict for j in judgements()]
    assert fitted.score(judgements(), flipped) == 1 - expected
