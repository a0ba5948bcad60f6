"""Structured formulations: validation, linearisation, and the same optimum from HiGHS, SCIP and Pyomo."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from lmopt.modeling.formulation import linearize, parse_formulation
from lmopt.modeling.solvers import SOLVERS, solve

# 45 per chair, 80 per table; wood 5/20 of 400, labour 10/15 of 450: the integer optimum is 24 chairs and
# 14 tables (both resources used up exactly), profit 2200.
FURNITURE = {
    "sets": [{"name": "P", "elements": ["chairs", "tables"]}, {"name": "R", "elements": ["wood", "labour"]}],
    "parameters": [
        {"name": "profit", "indices": ["P"], "values": {"chairs": 45, "tables": 80}},
        {"name": "use", "indices": ["R", "P"],
         "values": {"wood,chairs": 5, "wood,tables": 20, "labour,chairs": 10, "labour,tables": 15}},
        {"name": "cap", "indices": ["R"], "values": {"wood": 400, "labour": 450}}],
    "variables": [{"name": "x", "indices": ["P"], "type": "integer"}],
    "objective": {"sense": "max", "expression": "sum(profit[p] * x[p] for p in P)"},
    "constraints": [{"name": "capacity", "expression": "sum(use[r, p] * x[p] for p in P) <= cap[r]",
                     "for_all": {"r": "R"}}],
}


def model(**changes):
    d = json.loads(json.dumps(FURNITURE))
    d.update(changes)
    return d


@pytest.mark.parametrize("solver", SOLVERS)
def test_every_solver_finds_the_known_optimum(solver):
    sol = solve(parse_formulation(FURNITURE), solver)
    assert sol.optimal and sol.objective == pytest.approx(2200)
    assert sol.values == pytest.approx({"x[chairs]": 24, "x[tables]": 14})


def test_linearisation_rows_and_columns():
    lm = linearize(parse_formulation(FURNITURE))
    assert [lm.var_name(k) for k in lm.variables] == ["x[chairs]", "x[tables]"]
    assert [(r.name, r.upper) for r in lm.rows] == [("capacity[wood]", 400), ("capacity[labour]", 450)]
    assert lm.rows[1].coef == {("x", ("chairs",)): 10, ("x", ("tables",)): 15}
    assert lm.objective == {("x", ("chairs",)): 45, ("x", ("tables",)): 80}


@pytest.mark.parametrize("solver", ["highs", "scip"])
def test_continuous_relaxation_equality_and_filters(solver):
    # min cost transport: 2 sources x 2 sinks, supply == demand, no shipping from a source to itself
    f = {"sets": [{"name": "S", "elements": [1, 2, 3]}],
         "parameters": [{"name": "cost", "indices": ["S", "S"],
                         "values": {f"{a},{b}": abs(a - b) * 1.5 for a in (1, 2, 3) for b in (1, 2, 3)}},
                        {"name": "net", "indices": ["S"], "values": {"1": 4, "2": -1, "3": -3}}],
         "variables": [{"name": "y", "indices": ["S", "S"]}],
         "objective": {"sense": "min", "expression": "sum(cost[a, b] * y[a, b] for a in S for b in S if a != b)"},
         "constraints": [{"name": "balance", "for_all": {"s": "S"},
                          "expression": "sum(y[s, b] for b in S if b != s) - sum(y[a, s] for a in S if a != s)"
                                        " == net[s]"},
                         {"name": "no_self", "for_all": {"s": "S"}, "expression": "y[s, s] == 0"}]}
    sol = solve(parse_formulation(f), solver)
    assert sol.optimal and sol.objective == pytest.approx(1.5 * 1 + 3.0 * 3)  # 1 unit to 2, 3 units to 3


@pytest.mark.parametrize("solver", ["highs", "scip", "pyomo"])
def test_infeasible_and_unbounded_are_reported(solver):
    infeasible = model(constraints=[*FURNITURE["constraints"],
                                    {"name": "too_many", "expression": "x['chairs'] >= 100"}])
    assert solve(parse_formulation(infeasible), solver).status == "infeasible"
    unbounded = model(constraints=[])
    assert solve(parse_formulation(unbounded), solver).status in ("unbounded", "infeasible_or_unbounded")


@pytest.mark.parametrize("change, msg", [
    ({"objective": {"sense": "max", "expression": "sum(x[p] * x[p] for p in P)"}}, "multiplies two variable terms"),
    ({"objective": {"sense": "max", "expression": "sum(profit[p] / x[p] for p in P)"}}, "divides by a variable"),
    ({"objective": {"sense": "max", "expression": "sum(profit[p] * z[p] for p in P)"}}, "'z' is not a defined"),
    ({"objective": {"sense": "max", "expression": "x['sofas']"}}, "'sofas' is not an element of P"),
    ({"objective": {"sense": "max", "expression": "x"}}, "x takes 1 index"),
    ({"objective": {"sense": "max", "expression": "sum(x[p] for p in Q)"}}, "sums range over a defined set"),
    ({"objective": {"sense": "max", "expression": "__import__('os')"}}, "is not a linear expression"),
    ({"objective": {"sense": "max", "expression": "sum(x[p] for p in"}}, "cannot parse"),
    ({"constraints": [{"name": "c", "expression": "x['chairs'] < 3"}]}, "one comparison with <=, >= or =="),
    ({"constraints": [{"name": "c", "expression": "1 >= 2"}]}, "false statement"),
    ({"parameters": [{"name": "profit", "indices": ["P"], "values": {"chairs": 45}}]}, "missing values"),
    ({"variables": [{"name": "x", "indices": ["Q"]}]}, "undefined set"),
    ({"variables": [{"name": "x", "indices": ["P"], "lower": 5, "upper": 1}]}, "exceeds upper bound"),
    ({"variables": [{"name": "P"}]}, "names must be unique"),
])
def test_bad_formulations_are_rejected_with_the_reason(change, msg):
    with pytest.raises(ValidationError, match=msg):
        parse_formulation(model(**change))


def test_json_input_and_unknown_keys():
    assert parse_formulation(json.dumps(FURNITURE)).objective.sense == "max"
    with pytest.raises(ValidationError, match="Extra inputs"):
        parse_formulation(model(solver="cplex"))
    with pytest.raises(ValueError, match="unknown solver"):
        solve(parse_formulation(FURNITURE), "gurobi")
