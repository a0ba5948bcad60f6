"""The embedded word problems: 30 of them, each stated optimum confirmed by HiGHS and SCIP."""

from __future__ import annotations

import pytest

from lmopt.modeling import parse_formulation, solve
from lmopt.modeling.problems import load_problems

PROBLEMS = load_problems()


def test_thirty_distinct_problems_of_both_kinds():
    assert len(PROBLEMS) >= 30 and len({p.id for p in PROBLEMS}) == len(PROBLEMS)
    assert {p.kind for p in PROBLEMS} == {"LP", "MILP"} and len({p.text for p in PROBLEMS}) == len(PROBLEMS)


@pytest.mark.parametrize("problem", PROBLEMS, ids=[p.id for p in PROBLEMS])
def test_the_stated_optimum_is_what_two_solvers_find(problem):
    f = parse_formulation(problem.formulation)
    highs, scip = solve(f, "highs"), solve(f, "scip")
    assert highs.optimal and scip.optimal
    assert problem.correct(highs.objective) and problem.correct(scip.objective)
    if problem.kind == "LP":
        assert all(v["type"] == "continuous" for v in f.model_dump()["variables"])


def test_every_number_of_the_formulation_is_in_the_text():
    import re

    for p in PROBLEMS:
        numbers = {float(x) for x in re.findall(r"\d+(?:\.\d+)?", p.text)}
        stated = re.findall(r"\d+(?:\.\d+)?", str([*p.formulation["parameters"], p.formulation["objective"],
                                                   p.formulation["constraints"], p.formulation["variables"]]))
        missing = {float(x) for x in stated} - numbers - {0.0, 1.0, 100.0}
        assert not missing, (p.id, missing)


def test_correct_uses_a_relative_tolerance():
    p = PROBLEMS[0]
    assert p.correct(p.answer * (1 + 1e-6)) and not p.correct(p.answer * 1.01) and not p.correct(None)
