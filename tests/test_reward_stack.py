"""The reward stack's bridges to the toy world (its layering is checked with the whole package graph in
test_architecture.py)."""

from __future__ import annotations


def test_the_toyworld_adapters_are_the_only_bridge():
    from headvec.rewards.verdicts import TOY_FORMAT, TOY_JUDGE_FORMAT
    from headvec.toyworld.tasks import judge_prompt

    # The toy judge prompt is written once in the reward stack; it must be what the toy model learnt.
    assert TOY_FORMAT.text("how many red objects ?", "two") == judge_prompt("how many red objects ?", "two")
    assert TOY_JUDGE_FORMAT.text("<image>\nhow many ?", "two .") == judge_prompt("how many ?", "two")


def test_toy_preferences_convert_to_pairs_with_the_same_image():
    from headvec.toyworld.adapters import pairs_from_toy, preference_pair
    from headvec.toyworld.export import generate

    toy = generate("preference", 0, 8, "test")
    pairs = pairs_from_toy(None, 0, 8, "test")
    assert [(p.prompt, p.chosen, p.rejected, p.category) for p in pairs] == [
        (t.query, t.chosen, t.rejected, t.category) for t in toy
    ]
    assert list(pairs[0].image().getdata()) == list(toy[0].image().convert("RGB").getdata())
    assert len({p.uid for p in pairs}) == 8
    assert pairs_from_toy("flipped", 0, 8, "test") == [p for p in pairs if p.category == "flipped"]
    assert preference_pair(toy[0], "x").id == "x"


def test_the_toy_judge_template_of_each_language_is_what_the_model_was_trained_on():
    """``toyworld-xx``: the judge prompt of a translated row is exactly the translated training prompt,
    and its verdict is read in that language (an English parser called ``ludi`` unparseable)."""
    import random

    from headvec.toyworld import LANGUAGES, make_judge
    from headvec.toyworld.adapters import toy_judge_template, toy_judge_templates
    from headvec.toyworld.language import translate

    assert set(toy_judge_templates()) == {"toyworld"} | {f"toyworld-{x}" for x in LANGUAGES if x != "en"}
    for language in LANGUAGES:
        template = toy_judge_template(language)
        items = make_judge(random.Random(5), 12, language)
        for item in items:
            assert template.fmt.text(item.question, item.candidate) == item.prompt
        yes, no = translate("yes", language), translate("no", language)
        assert template.verdict([yes, no]) == "a" and template.verdict([no, yes]) == "b"
        assert template.verdict([yes, yes]) == "tie"
        if language != "en":
            assert template.fmt.yes != "yes" and toy_judge_template("en").verdict([yes, no]) is None
