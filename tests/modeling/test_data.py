"""Benchmark loaders on small local files in each supported layout."""

from __future__ import annotations

import json

import pytest

from lmopt.modeling.data import load_benchmark, parse_answer


def test_records_in_jsonl_with_orlm_fields(tmp_path):
    p = tmp_path / "industryor.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        {"en_question": "Maximise 3x...", "en_answer": "3050.0", "difficulty": "Easy"},
        {"en_question": "A farm...", "en_answer": "No Best Solution"}]))
    a, b = load_benchmark(p)
    assert (a.id, a.text, a.answer) == ("0", "Maximise 3x...", 3050.0)
    assert b.answer is None and b.answer_text == "No Best Solution"
    assert a.correct(3050.2) and not a.correct(3051) and b.correct(None) and not b.correct(10.0)


def test_orthought_folders_use_its_absolute_tolerance(tmp_path):
    answers = {"prob_001": {"status": "optimal", "obj": 700}, "prob_002": {"status": "infeasible", "obj": None}}
    for name, ans in answers.items():
        d = tmp_path / name
        d.mkdir()
        (d / "question.txt").write_text(f"Problem {name}\n")
        (d / "answer.json").write_text(json.dumps(ans))
    a, b = load_benchmark(tmp_path)
    assert (a.id, a.text, a.answer, a.abs_tol) == ("prob_001", "Problem prob_001", 700.0, 0.01)
    assert a.correct(700.009) and not a.correct(700.02)
    assert b.answer is None and b.answer_text == "infeasible"


def test_csv_and_json_records_and_limit(tmp_path):
    c = tmp_path / "nl4opt.csv"
    c.write_text("question,answer\nQ1,\"1,200\"\nQ2,5\n")
    assert [p.answer for p in load_benchmark(c)] == [1200.0, 5.0]
    j = tmp_path / "mamo.json"
    j.write_text(json.dumps([{"Question": "Q", "Answer": 2.5}] * 3))
    assert len(load_benchmark(j, limit=2)) == 2 and load_benchmark(j)[0].answer == 2.5


def test_bad_sources_say_what_to_fix(tmp_path):
    (tmp_path / "x.jsonl").write_text(json.dumps({"text": "q", "label": 1}))
    with pytest.raises(ValueError, match="no question/answer fields"):
        load_benchmark(tmp_path / "x.jsonl")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_benchmark(tmp_path / "missing.jsonl")
    (tmp_path / "d" / "p1").mkdir(parents=True)
    (tmp_path / "d" / "p1" / "question.txt").write_text("q")
    with pytest.raises(ValueError, match="no answer.json"):
        load_benchmark(tmp_path / "d")
    with pytest.raises(ValueError, match="fmt must be"):
        load_benchmark(tmp_path, fmt="parquet")


def test_parse_answer():
    assert parse_answer("  -12.5 ") == -12.5 and parse_answer(3) == 3.0 and parse_answer("infeasible") is None
    assert parse_answer(float("nan")) is None
