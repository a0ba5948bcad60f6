"""Prompt evaluation by label scoring and by generation, on a scripted model."""

import pytest

from lmopt.data import Example, Task, load_task
from lmopt.lm import LM, ScriptedBackend
from lmopt.prompt import Prompt, evaluate_prompt


def sentiment_scorer(prompt, cont):
    # Likes the label that appears in the last tweet's text.
    last = prompt.rsplit("Tweet:", 1)[-1]
    return 0.0 if cont.strip() in last else -5.0


def test_label_scoring_picks_the_most_likely_label():
    t = Task(name="s", examples=[Example("so positive", "positive"), Example("very negative", "negative"),
                                 Example("neutral", "positive")], labels=("negative", "neutral", "positive"),
             template="{instruction}{exemplars}Tweet: {input}\nSentiment:")
    b = ScriptedBackend(lambda p, c, j: "", score_fn=sentiment_scorer)
    r = evaluate_prompt(LM(b), t, Prompt("Classify."), t.examples)
    assert r.mode == "score"
    assert r.predictions == ["positive", "negative", "neutral"]
    assert r.per_example == [1.0, 1.0, 0.0] and r.score == pytest.approx(2 / 3)
    assert r.details["prediction_counts"] == {"negative": 1, "neutral": 1, "positive": 1}
    assert b.calls == 9  # 3 examples x 3 labels


def test_generation_mode_parses_and_applies_metric():
    t = load_task("gsm8k", limit=3)
    answers = {e.input: e.target for e in t.examples}

    def respond(prompt, cfg, j):
        q = prompt.rsplit("Question: ", 1)[-1].split("\nAnswer:")[0]
        return f"The result is {answers[q]}." if q == t.examples[0].input else "I think 0"

    r = evaluate_prompt(LM(ScriptedBackend(respond)), t, "Solve.", t.examples)
    assert r.mode == "generate" and r.per_example == [1.0, 0.0, 0.0]
    assert r.predictions[0] == t.examples[0].target


def test_evaluator_errors():
    t = load_task("gsm8k", limit=2)
    lm = LM(ScriptedBackend(lambda p, c, j: "1"))
    with pytest.raises(ValueError, match="at least one example"):
        evaluate_prompt(lm, t, "x", [])
    with pytest.raises(ValueError, match="needs a classification task"):
        evaluate_prompt(lm, t, "x", t.examples, mode="score")
    with pytest.raises(ValueError, match="mode must be one of"):
        evaluate_prompt(lm, t, "x", t.examples, mode="fast")


def test_prompt_round_trips_through_dict():
    p = Prompt("Do it.", (Example("a", "b"), Example("c", "d")))
    assert Prompt.from_dict(p.to_dict()) == p
