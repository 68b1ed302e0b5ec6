"""The toy world's data: determinism, closed vocabulary, answers re-derived from scenes, splits, languages."""

from __future__ import annotations

import io
import json
import random
import re
from collections import Counter

import pytest

from headvec.toyworld import (
    BIASES,
    CATEGORIES,
    COLORS,
    ICL_TASKS,
    LANGUAGES,
    QTYPES,
    SHAPES,
    SIZES,
    TASKS,
    Scene,
    export,
    generate,
    language_of,
    lexicon,
    make_caption,
    make_cot,
    make_icl,
    make_judge,
    make_preference,
    make_scene_graph,
    make_vqa,
    parse_final_answer,
    render,
    sample_scene,
    tokenize_words,
    translate,
    vocabulary,
)
from headvec.toyworld.export import VLRB_FIELDS, VLRB_PREFIX
from headvec.toyworld.scenes import COLUMNS, RGB, ROWS, Obj
from headvec.toyworld.tasks import Question, chain_of_thought, make_positions

N = 360  # items per task in the in-memory checks
NUMBERS = ("zero", "one", "two", "three", "four")
PLURAL = {"squares": "square", "circles": "circle", "triangles": "triangle", "crosses": "cross"}


@pytest.fixture(scope="module")
def data() -> dict[str, list]:
    makers = {
        "caption": make_caption,
        "vqa": make_vqa,
        "scene_graph": make_scene_graph,
        "cot": make_cot,
        "judge": make_judge,
        "preference": make_preference,
        "icl": make_icl,
    }
    return {task: make(random.Random(7), N) for task, make in makers.items()}


def texts_of(item) -> list[str]:
    if item.task == "icl":
        return [item.prompt, item.query.answer, *(s.answer for s in item.shots)]
    return [getattr(item, f) for f in item.text_fields]


# ------------------------------------------------------------------ an independent oracle for questions


def rel_of(a: Obj, b: Obj) -> str | None:
    """Re-derived from the cells: same row -> left/right of, same column -> above/below, else nothing."""
    if a.row == b.row:
        return "left of" if a.col < b.col else "right of"
    if a.col == b.col:
        return "above" if a.row < b.row else "below"
    return None


def resolve(scene: Scene, ref: str) -> Obj:
    """``the square`` / ``the red square`` -> the one object it names."""
    words = ref.split()
    assert words[0] == "the"
    hits = [o for o in scene.objects if o.shape == words[-1] and (len(words) == 2 or o.color == words[1])]
    assert len(hits) == 1, (ref, scene)
    return hits[0]


def oracle(scene: Scene, question: str) -> str:
    """The answer to an English question, computed from the scene alone."""
    objs = scene.objects
    yes_no = {True: "yes", False: "no"}
    if m := re.fullmatch(r"what color is (the \w+) \?", question):
        return resolve(scene, m[1]).color
    if m := re.fullmatch(r"what shape is the (\w+) object \?", question):
        (o,) = [o for o in objs if o.color == m[1]]
        return o.shape
    if m := re.fullmatch(r"what size is (the .+) \?", question):
        return resolve(scene, m[1]).size
    if question == "how many objects are there ?":
        return NUMBERS[len(objs)]
    if m := re.fullmatch(r"how many (\w+) objects are there \?", question):
        return NUMBERS[sum(o.color == m[1] for o in objs)]
    if m := re.fullmatch(r"how many (\w+) are there \?", question):
        return NUMBERS[sum(o.shape == PLURAL[m[1]] for o in objs)]
    if m := re.fullmatch(r"is there a (\w+) (\w+) \?", question):
        return yes_no[any(o.color == m[1] and o.shape == m[2] for o in objs)]
    if m := re.fullmatch(r"what is (left of|right of|above|below) (the .+) \?", question):
        anchor = resolve(scene, m[2])
        (hit,) = [o for o in objs if o != anchor and rel_of(o, anchor) == m[1]]
        return f"the {hit.color} {hit.shape}"
    if m := re.fullmatch(r"is (the .+?) (left of|right of|above|below) (the .+) \?", question):
        return yes_no[rel_of(resolve(scene, m[1]), resolve(scene, m[3])) == m[2]]
    raise AssertionError(f"unknown question {question!r}")


def caption_triples(text: str) -> list[tuple[str, str, str]]:
    """``a small red square and a large blue circle .`` -> [(small, red, square), (large, blue, circle)]."""
    return [tuple(m) for m in re.findall(r"a (small|large) (\w+) (\w+)", text)]


BIAS_PATTERNS = {
    "length": r"looking at the image carefully , i can see that the answer is (.+) \.",
    "confidence": r"(?:definitely|certainly) (.+) !",
    "format": r"- \*\* answer \*\* : (.+) \.",
}


def strip_bias(text: str) -> tuple[str, str]:
    """(bias, bare answer); bias ``none`` if the text carries none."""
    for bias, pattern in BIAS_PATTERNS.items():
        if m := re.fullmatch(pattern, text):
            return bias, m[1]
    return "none", text


def _png(scene: Scene) -> bytes:
    buffer = io.BytesIO()
    render(scene, 48).save(buffer, format="PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------- tests


def test_export_is_byte_identical_for_a_seed(tmp_path):
    counts = {"train": 8, "test": 4}
    files_a = export(tmp_path / "a", seed=3, n_per_task=counts)
    files_b = export(tmp_path / "b", seed=3, n_per_task=counts)
    assert files_a == files_b
    paths_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    paths_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert paths_a == paths_b
    assert sum(p.suffix == ".png" for p in paths_a) > 20
    for rel in paths_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    for task in TASKS:
        for lang in LANGUAGES:
            rows = [json.loads(line) for line in (tmp_path / "a" / f"{task}.train.{lang}.jsonl").open()]
            assert [r["id"] for r in rows] == [f"{task}-train-{i:05d}" for i in range(8)]
            for r in rows:  # the row's scene graph is the one drawn in its image
                scene_row = r["query"] if task == "icl" else r
                scene = Scene.from_dict(scene_row["scene"])
                assert scene_row["image"] == f"images/{scene.digest}.png"
                assert (tmp_path / "a" / scene_row["image"]).read_bytes() == _png(scene)
    # another seed, other data
    export(tmp_path / "c", seed=4, n_per_task=counts)
    assert (tmp_path / "a/vqa.train.en.jsonl").read_bytes() != (
        tmp_path / "c/vqa.train.en.jsonl"
    ).read_bytes()


def test_vocabulary_is_closed_small_and_sorted(data):
    vocab = {lang: set(vocabulary(lang)) for lang in LANGUAGES}
    total = vocabulary()
    assert total == sorted(set(total)) and set(total) == set().union(*vocab.values())
    assert len(total) < 300
    for lang in LANGUAGES:
        for task, items in data.items():
            for item in items:
                local = item if lang == "en" else item.translate(lang)
                for text in texts_of(local):
                    unknown = set(tokenize_words(text)) - vocab[lang]
                    assert not unknown, (task, lang, text, unknown)


def test_tokenizer_splits_punctuation_and_json():
    assert tokenize_words("what color is the square ?") == ["what", "color", "is", "the", "square", "?"]
    assert tokenize_words('{"id":0,"relation":"left of"}') == [
        *("{", '"', "id", '"', ":", "0", ",", '"', "relation", '"', ":", '"', "left", "of", '"', "}"),
    ]
    assert tokenize_words("- ** answer ** : red .") == ["-", "**", "answer", "**", ":", "red", "."]


def test_scene_sampling_and_relations_follow_the_cells():
    rng = random.Random(0)
    for _ in range(300):
        scene = sample_scene(rng)
        cells = [(o.row, o.col) for o in scene.objects]
        assert 1 <= len(cells) <= 4 and cells == sorted(set(cells))
        assert len({(o.color, o.shape) for o in scene.objects}) == len(cells)
        expected = {
            (i, rel_of(a, b), j)
            for i, a in enumerate(scene.objects)
            for j, b in enumerate(scene.objects)
            if i != j and rel_of(a, b)
        }
        assert set(scene.relations()) == expected
    with pytest.raises(ValueError):
        Scene((Obj("square", "red", "small", 0, 0), Obj("circle", "red", "small", 0, 0)))


def test_scene_graph_json_matches_the_scene(data):
    for item in data["scene_graph"]:
        graph = json.loads(item.answer)
        assert list(graph) == ["objects", "relations"]
        objs = item.scene.objects
        assert graph["objects"] == [
            {"id": i, "shape": o.shape, "color": o.color, "size": o.size} for i, o in enumerate(objs)
        ]
        for r in graph["relations"]:
            assert list(r) == ["subject", "relation", "object"]
            assert r["relation"] in ("left of", "above")
            assert rel_of(objs[r["subject"]], objs[r["object"]]) == r["relation"]
        related = {
            (i, j) for i in range(len(objs)) for j in range(i + 1, len(objs)) if rel_of(objs[i], objs[j])
        }
        assert {(r["subject"], r["object"]) for r in graph["relations"]} == related


def test_render_draws_each_object_in_its_color():
    scene = Scene((Obj("square", "red", "large", 0, 0), Obj("circle", "blue", "small", 2, 2)))
    image = render(scene, 48)
    assert image.size == (48, 48) and image.mode == "RGB"
    assert image.getpixel((7, 7)) == RGB["red"] and image.getpixel((40, 40)) == RGB["blue"]
    assert image.getpixel((24, 24)) == (0, 0, 0)
    masks = {s: render(Scene((Obj(s, "red", "small", 1, 1),)), 48).tobytes() for s in SHAPES}
    assert len(set(masks.values())) == len(SHAPES)  # the shapes differ even when small
    assert render(scene, 32).size == (32, 32)


def test_vqa_answers_follow_from_the_scene_and_are_balanced(data):
    items = data["vqa"]
    qtypes = Counter(item.meta["qtype"] for item in items)
    assert set(qtypes) == set(QTYPES) and max(qtypes.values()) - min(qtypes.values()) <= 1
    for item in items:
        assert item.answer == item.meta["label"] == oracle(item.scene, item.prompt), item
    for qtype in ("exist", "relation_yesno"):
        answers = Counter(item.answer for item in items if item.meta["qtype"] == qtype)
        assert abs(answers["yes"] - answers["no"]) <= 1
    counts = Counter(item.answer for item in items if item.meta["qtype"] in ("count_color", "count_shape"))
    assert set(counts) == {"zero", "one", "two", "three"}
    colors = Counter(item.answer for item in items if item.meta["qtype"] == "color")
    assert set(colors) == set(COLORS)


def test_captions_list_every_object(data):
    for item in data["caption"]:
        objs = item.scene.objects
        assert caption_triples(item.answer) == [(o.size, o.color, o.shape) for o in objs]
        assert item.prompt == "describe the image ." and item.answer.endswith(" .")


def test_chain_of_thought_ends_in_the_gold_answer(data):
    for item in data["cot"]:
        assert item.prompt.endswith(" think step by step .")
        question = item.prompt.removesuffix(" think step by step .")
        gold = oracle(item.scene, question)
        assert parse_final_answer(item.answer) == gold == item.meta["label"]
        xx = item.translate("xx")
        assert parse_final_answer(xx.answer, "xx") == translate(gold, "xx")
    assert parse_final_answer("no conclusion here .") is None


def test_relation_steps_write_both_positions_then_the_relation():
    cross, circle = Obj("cross", "red", "small", 0, 0), Obj("circle", "green", "large", 0, 2)
    scene = Scene(objects=(cross, circle))

    def chain(qtype: str, question: str, answer: str, focus: tuple[int, int], **kwargs) -> str:
        q = Question(scene=scene, qtype=qtype, question=question, answer=answer, focus=focus)
        return chain_of_thought(q, **kwargs)

    assert chain(
        "relation_yesno", "is the circle left of the cross ?", "no", (1, 0), steps_for_relations=True
    ) == (
        "the green circle is at top right . the red cross is at top left . "
        "the green circle is right of the red cross . so the answer is no ."
    )
    open_question = ("relation", "what is left of the circle ?", "the red cross", (0, 1))
    assert chain(*open_question, steps_for_relations=True) == (  # the named object first
        "the green circle is at top right . the red cross is at top left . "
        "the red cross is left of the green circle . so the answer is the red cross ."
    )
    assert chain(*open_question) == (  # the default lists every object in reading order
        "the red cross is at top left . the green circle is at top right . so the answer is the red cross ."
    )


def test_step_chains_end_in_the_gold_answer():
    items = make_cot(random.Random(3), 60, steps_for_relations=True)
    assert {item.meta["qtype"] for item in items} >= {"relation", "relation_yesno"}
    for item in items:
        question = item.prompt.removesuffix(" think step by step .")
        assert parse_final_answer(item.answer) == oracle(item.scene, question)


def test_judge_labels_are_balanced_and_true(data):
    items = data["judge"]
    labels = Counter(item.answer for item in items)
    assert labels["yes"] == labels["no"] == N // 2
    for item in items:
        gold = oracle(item.scene, item.question)
        assert item.answer == ("yes" if item.candidate == gold else "no")
        assert (
            item.prompt == f"question : {item.question} answer : {item.candidate} . is the answer correct ?"
        )
        if item.answer == "no":  # plausible: an answer of the same kind
            kind = item.meta["qtype"]
            pool = {
                "color": COLORS,
                "shape": SHAPES,
                "size": SIZES,
                "exist": ("yes", "no"),
                "relation_yesno": ("yes", "no"),
            }.get(kind, NUMBERS)
            if kind != "relation":
                assert item.candidate in pool
            else:
                assert re.fullmatch(r"the \w+ \w+", item.candidate)


def test_tasks_keep_their_difficulty(data):
    """Wrong judge candidates come from the scene; absent objects share a colour or shape with one there."""
    in_scene, attribute_items = 0, 0
    for item in data["judge"]:
        objects = item.scene.objects
        kind = item.meta["qtype"]
        if item.answer == "no" and kind in ("color", "shape"):
            attribute_items += 1
            in_scene += item.candidate in {getattr(o, kind) for o in objects}
        if item.answer == "no" and kind == "relation" and len(objects) > 2:
            assert item.candidate in {f"the {o.color} {o.shape}" for o in objects}
    assert attribute_items > 20 and in_scene / attribute_items > 0.5
    absent = [i for i in data["vqa"] if i.meta["qtype"] == "exist" and i.answer == "no"]
    assert len(absent) > 10
    for item in absent:
        color, shape = re.fullmatch(r"is there a (\w+) (\w+) \?", item.prompt).groups()
        present = {(o.color, o.shape) for o in item.scene.objects}
        assert (color, shape) not in present
        assert any(color == c or shape == s for c, s in present)


def test_yes_no_questions_carry_the_fact_they_turn_on(data):
    """The training hints: the size of the object an existence question names, the pair's true relation."""
    from headvec.toyworld.scenes import relation

    existence = [i for i in data["vqa"] if i.meta["qtype"] == "exist"]
    relations = [i for i in data["vqa"] if i.meta["qtype"] == "relation_yesno"]
    assert len(existence) > 10 and len(relations) > 10
    for item in existence:
        color, shape = re.fullmatch(r"is there a (\w+) (\w+) \?", item.prompt).groups()
        sizes = {o.size for o in item.scene.objects if (o.color, o.shape) == (color, shape)}
        assert item.meta.get("hint") in (sizes if item.answer == "yes" else {None})
    for item in relations:
        asked = next(r for r in ("left of", "right of", "above", "below") if f" {r} " in item.prompt)
        true = {relation(a, b) for a in item.scene.objects for b in item.scene.objects if a != b} - {None}
        assert item.meta["hint"] in true
        assert (item.meta["hint"] == asked) == (item.answer == "yes")


def test_preference_pairs(data):
    pairs = data["preference"]
    categories = Counter(p.category for p in pairs)
    assert set(categories) == set(CATEGORIES) and max(categories.values()) - min(categories.values()) <= 1
    for category in ("reward_hacking", "flipped"):
        biases = Counter(p.bias for p in pairs if p.category == category)
        assert set(biases) == set(BIASES) and max(biases.values()) - min(biases.values()) <= 1
    for p in pairs:
        present = {(o.size, o.color, o.shape) for o in p.scene.objects}
        if p.category == "hallucination":
            assert p.bias == "none" and p.query == "describe the image ."
            assert set(caption_triples(p.chosen)) == present
            assert len(set(caption_triples(p.rejected)) - present) == 1
            assert len(p.chosen.split()) == len(p.rejected.split())  # no length cue
        elif p.category == "reasoning":
            gold = oracle(p.scene, p.query.removesuffix(" think step by step ."))
            assert parse_final_answer(p.chosen) == gold != parse_final_answer(p.rejected)
            if m := re.search(r" : (.+) \. so the answer is (\w+) \.$", p.rejected):  # a miscounted list
                listed = [] if m[1] == "none" else m[1].split(" , ")
                assert NUMBERS[len(listed)] == m[2]
        else:
            gold = oracle(p.scene, p.query)
            chosen_bias, chosen = strip_bias(p.chosen)
            rejected_bias, rejected = strip_bias(p.rejected)
            assert chosen == gold != rejected
            if p.category == "reward_hacking":
                assert (chosen_bias, rejected_bias) == ("none", p.bias)
                assert len(p.rejected.split()) > len(p.chosen.split())
            else:
                assert (chosen_bias, rejected_bias) == (p.bias, "none")
        assert p.ground_truth == p.meta["label"]


def test_icl_episodes_share_one_hidden_task(data):
    episodes = data["icl"]
    assert Counter(e.icl_task for e in episodes) == dict.fromkeys(ICL_TASKS, N // 4)
    assert {e.prompt for e in episodes} == {"what is it ?"}  # the task is never named
    values = {"color": COLORS, "shape": SHAPES, "size": SIZES, "count": NUMBERS[1:]}
    for e in episodes:
        assert len(e.shots) == 4
        for shot in (*e.shots, e.query):
            objs = shot.scene.objects
            assert len({(o.shape, o.color, o.size) for o in objs}) == 1  # a group of identical objects
            o = objs[0]
            assert shot.labels == {
                "color": o.color,
                "shape": o.shape,
                "size": o.size,
                "count": NUMBERS[len(objs)],
            }
            assert shot.answer == shot.labels[e.icl_task] and shot.answer in values[e.icl_task]
    # the images alone do not tell the task: the same scene distribution under every task
    sizes = {
        task: Counter(len(s.scene.objects) for e in episodes if e.icl_task == task for s in e.shots)
        for task in ICL_TASKS
    }
    assert all(set(c) == {1, 2, 3, 4} for c in sizes.values())


def test_train_and_test_share_no_scene():
    for task in ("vqa", "icl", "preference"):
        keys = {}
        for split in ("train", "test"):
            items = generate(task, seed=0, n=120, split=split)
            scenes = (
                [s.scene for e in items for s in (*e.shots, e.query)]
                if task == "icl"
                else [i.scene for i in items]
            )
            assert {s.split for s in scenes} == {split}
            keys[split] = {s.key for s in scenes}
        assert not keys["train"] & keys["test"]


def test_vlrewardbench_rows(tmp_path):
    export(tmp_path, seed=1, n_per_task={"train": 40}, splits=("train",), tasks=("preference",))
    pairs = [json.loads(line) for line in (tmp_path / "preference.train.en.jsonl").open()]
    rows = [json.loads(line) for line in (tmp_path / "vlrewardbench.train.en.jsonl").open()]
    assert len(rows) == len(pairs) == 40
    firsts = Counter()
    for k, (row, pair) in enumerate(zip(rows, pairs, strict=True)):
        assert tuple(row) == VLRB_FIELDS
        assert row["id"] == f"{VLRB_PREFIX[pair['category']]}-train-{k:05d}"
        assert row["category"] == pair["category"] and row["query"] == pair["query"]
        assert row["human_ranking"] in ([0, 1], [1, 0])
        best = row["human_ranking"].index(0)
        assert row["response"][best] == pair["chosen"] and row["response"][1 - best] == pair["rejected"]
        assert row["models"] == ["toyworld", "toyworld"] and row["query_source"] == "toyworld"
        assert row["ground_truth"] == pair["ground_truth"] and (tmp_path / row["image"]).is_file()
        firsts[best] += 1
    assert firsts[0] > 5 and firsts[1] > 5  # the order is shuffled
    assert rows[0]["id"].split("-")[0] in VLRB_PREFIX.values()


@pytest.mark.parametrize("language", [lang for lang in LANGUAGES if lang != "en"])
def test_each_synthetic_language_is_a_parallel_bijection(data, language):
    words = lexicon(language)
    assert len(set(words.values())) == len(words)  # injective
    assert not set(words.values()) & set(vocabulary("en"))  # no invented word is an English one
    for task, items in data.items():
        for item in items[:120]:
            local = item.translate(language)
            for en_text, local_text in zip(texts_of(item), texts_of(local), strict=True):
                assert translate(local_text, "en") == en_text  # round trip
                if not en_text.startswith("{"):  # same words, mapped, possibly reordered
                    mapped = [words.get(t, t) for t in tokenize_words(en_text)]
                    assert sorted(tokenize_words(local_text)) == sorted(mapped)
                    assert local_text != en_text or not any(t in words for t in tokenize_words(en_text))
            if task != "icl":
                assert local.scene == item.scene and local.meta == item.meta


def test_languages_have_their_own_words_and_word_orders():
    lexicons = {lang: set(lexicon(lang).values()) for lang in LANGUAGES}
    for a in LANGUAGES:
        for b in LANGUAGES:
            assert a == b or not lexicons[a] & lexicons[b]
    question, phrase = "what color is the square ?", "a small red square ."
    orders = {}
    for lang in LANGUAGES:
        back = {v: k for k, v in lexicon(lang).items()}
        orders[lang] = tuple(
            " ".join(back.get(t, t) for t in translate(text, lang).split()) for text in (question, phrase)
        )
        assert language_of(translate(question, lang)) == lang
        for other in LANGUAGES:  # any language to any other, and back
            assert translate(translate(translate(question, lang), other), "en") == question
    assert orders["en"] == (question, phrase)
    assert orders["xx"] == ("is the square what color ?", "a square small red .")
    assert orders["yy"] == ("what color is the square ?", "a square small red .")
    assert orders["zz"] == ("is the square what color ?", phrase)
    assert len(set(orders.values())) == len(LANGUAGES)


def test_second_language_keeps_its_surface_rules(data):
    words = lexicon("xx")
    # generating in xx gives the parallel items of the same seed
    assert make_vqa(random.Random(5), 50, "xx") == [i.translate("xx") for i in make_vqa(random.Random(5), 50)]
    assert translate("what color is the square ?", "xx").split()[-3:-1] == [words["what"], words["color"]]
    assert translate("a small red square .", "xx").split()[:4] == [
        words[w] for w in ("a", "square", "small", "red")
    ]
    sg = make_scene_graph(random.Random(1), 1, "xx")[0].answer
    assert list(json.loads(sg)["objects"][0]) == ["id", "shape", "color", "size"]  # JSON keys stay English


def test_position_items_say_where_each_object_is_and_translate_back():
    items = make_positions(random.Random(3), 400, split="train")
    listings = [i for i in items if i.prompt == "describe the scene ."]
    lookups = [i for i in items if i.prompt.startswith("what is at ")]
    assert len(listings) == len(lookups) == 200
    for item in listings:
        assert item.answer == " ".join(
            f"the {o.color} {o.shape} is at {ROWS[o.row]} {COLUMNS[o.col]} ." for o in item.scene.objects
        )
    for item in lookups:
        row, col = item.prompt.removeprefix("what is at ").removesuffix(" ?").split()
        there = [o for o in item.scene.objects if (ROWS[o.row], COLUMNS[o.col]) == (row, col)]
        assert item.answer == (f"the {there[0].color} {there[0].shape}" if there else "none")
    empty = sum(i.answer == "none" for i in lookups) / len(lookups)
    assert 0.15 < empty < 0.35  # one in four asks about an empty cell
    for item in items[:40]:
        for language in ("xx", "yy", "zz"):
            moved = item.translate(language)
            assert moved.prompt != item.prompt
            back = (translate(moved.prompt, "en"), translate(moved.answer, "en"))
            assert back == (item.prompt, item.answer)
    assert all(i.scene.split == "train" for i in items)
