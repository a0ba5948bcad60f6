"""Tasks, splits and the embedded loaders."""

import pytest

from lmopt.data import Example, Task, available_tasks, load_task, parse_last_number


def test_tweets_task_labels_and_balanced_sampling():
    t = load_task("tweets", per_class=20, seed=1)
    assert t.labels == ("negative", "neutral", "positive")
    assert len(t.examples) == 60
    assert {e.target for e in t.examples} == set(t.labels)
    assert load_task("tweets", per_class=20, seed=1).examples == t.examples
    assert load_task("tweets", per_class=20, seed=2).examples != t.examples


def test_split_is_deterministic_disjoint_and_stratified():
    t = load_task("tweets", per_class=40, seed=0)
    s1, s2 = t.split(seed=3, n_train=30, n_val=30, n_test=60), t.split(seed=3, n_train=30, n_val=30, n_test=60)
    assert s1 == s2
    ids = [e.input for e in s1.train + s1.validation + s1.test]
    assert len(ids) == len(set(ids)) == 120
    for part in (s1.train, s1.validation):
        assert {lab: sum(e.target == lab for e in part) for lab in t.labels} == {lab: 10 for lab in t.labels}
    assert t.split(seed=4, n_train=30).train != s1.train
    with pytest.raises(ValueError, match="cannot split"):
        t.split(n_train=100, n_test=100)


def test_gsm8k_and_number_parsing():
    g = load_task("gsm8k", limit=5)
    assert len(g.examples) == 5 and g.examples[0].target == "18"
    assert g.score("so she makes 9 * 2 = $18.", g.examples[0]) == 1.0
    assert g.score("the answer is 17", g.examples[0]) == 0.0
    assert parse_last_number("1,234.50 and then 7,000") == "7000"
    assert parse_last_number("x = 2.50") == "2.5"
    assert parse_last_number("none") == ""


def test_reasoning_gym_task_scores_with_its_generator():
    t = load_task("arithmetic", size=10, seed=3)
    e = t.examples[0]
    assert t.score(f"Answer: {e.target}", e) == 1.0
    assert t.score("Answer: definitely not", e) == 0.0
    assert t.name == "rg:basic_arithmetic"


def test_reasoning_gym_closed_answers_become_a_balanced_classification_task():
    t = load_task("rg:syllogism", size=120, seed=0, labels="auto", per_class=20)
    assert t.labels == ("No", "Yes") and t.is_classification
    assert [e.target for e in t.examples].count("Yes") == 20 == [e.target for e in t.examples].count("No")
    assert "one of: No, Yes" in t.instruction
    assert t.score("Yes", t.examples[-1]) == 1.0 and t.score("No", t.examples[-1]) == 0.0
    again = load_task("rg:syllogism", size=120, seed=0, labels="auto", per_class=20)
    assert [e.input for e in again.examples] == [e.input for e in t.examples]
    with pytest.raises(ValueError, match="raise size"):
        load_task("rg:syllogism", size=30, seed=0, labels="auto", per_class=20)
    with pytest.raises(ValueError, match="labels='auto' is for closed answer sets"):
        load_task("arithmetic", size=60, labels="auto")
    with pytest.raises(ValueError, match="pass labels='auto'"):
        load_task("rg:syllogism", size=60, per_class=5)
    with pytest.raises(ValueError, match="not among labels"):
        load_task("rg:syllogism", size=60, labels=("Yes", "Maybe"), per_class=5)


def test_prompt_formatting_keeps_exemplar_order():
    t = load_task("tweets", per_class=5)
    a, b = t.examples[0], t.examples[6]
    text = t.format_prompt("Classify.", [a, b], "I love it")
    assert text.index(a.input) < text.index(b.input) < text.index("I love it")
    assert text.endswith("Tweet: I love it\nSentiment:")


def test_bad_tasks_give_clear_errors():
    with pytest.raises(ValueError, match="unknown task 'sst2'"):
        load_task("sst2")
    with pytest.raises(ValueError, match="has no examples"):
        Task(name="empty", examples=[])
    with pytest.raises(ValueError, match="template must contain"):
        Task(name="t", examples=[Example("a", "b")], template="{input}")
    with pytest.raises(ValueError, match="not among labels"):
        Task(name="t", examples=[Example("a", "maybe")], labels=("yes", "no"))
    with pytest.raises(ValueError, match="per_class"):
        load_task("tweets", per_class=0)
    assert {"tweets", "gsm8k", "arithmetic"} <= set(available_tasks())


def test_hugging_face_datasets_loader_on_local_json(tmp_path):
    import json

    from lmopt.data import load_hf_task

    rows = [{"text": f"item {i}", "label": ["no", "yes"][i % 2]} for i in range(10)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    t = load_hf_task("json", "text", "label", data_files=str(tmp_path / "d.jsonl"), labels=("no", "yes"), limit=6)
    assert len(t.examples) == 6 and t.examples[1].target == "yes" and t.is_classification
    with pytest.raises(ValueError, match="has no column 'sentence'"):
        load_hf_task("json", "sentence", "label", data_files=str(tmp_path / "d.jsonl"))


def test_induction_tasks_are_correct_and_seeded():
    from lmopt.data import load_induction_task, load_task
    from lmopt.data.induction import ANIMALS

    t = load_task("second_letter", size=50, seed=1)
    assert t.is_classification and all(e.target == e.input[1] for e in t.examples)
    assert [e.input for e in t.examples] == [e.input for e in load_task("second_letter", size=50, seed=1).examples]
    assert [e.input for e in t.examples] != [e.input for e in load_task("second_letter", size=50, seed=2).examples]
    wl = load_induction_task("word_length", size=70)
    assert all(e.target == str(len(e.input)) for e in wl.examples)
    counts = {n: sum(e.target == n for e in wl.examples) for n in wl.labels}
    assert set(counts.values()) == {10}  # balanced: a constant answer scores 1/7
    sp = load_induction_task("spell", size=20)
    assert all(e.target == " ".join(e.input) for e in sp.examples)
    assert sp.score("T-i-d-e.\nmore", type(sp.examples[0])("tide", "t i d e")) == 1.0
    la = load_induction_task("larger_animal", size=40)
    for e in la.examples:
        a, b = e.input.split(", ")
        assert e.target == max(a, b, key=ANIMALS.index)
    assert la.score("Horse is larger", type(la.examples[0])("cat, horse", "horse")) == 1.0
    with pytest.raises(ValueError, match="unknown induction task"):
        load_induction_task("antonym")
