"""Small LP/MILP word problems written for lmopt, each with its reference formulation and optimal value.

Ten families (production mix, diet, transportation, assignment, knapsack, blending, shift staffing,
investment, facility location, two-period planning), three sets of numbers each: 30 problems. Every stated
optimum was found by solving the reference formulation with HiGHS and with SCIP, which agree
(``tests/modeling/test_problems.py`` re-solves all of them). They are for tests, demos and the
``benchmarks.modeling`` benchmark; the text is what a model sees, the formulation is never shown to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .data import objective_matches


@dataclass(frozen=True)
class Problem:
    id: str
    text: str
    formulation: dict[str, Any]
    answer: float
    kind: str  # "LP" or "MILP"

    def correct(self, objective: float | None, rel_tol: float = 1e-4) -> bool:
        """Whether ``objective`` matches the optimum (relative tolerance, as NL4OPT-style benchmarks use)."""
        return objective_matches(objective, self.answer, rel_tol=rel_tol)


def _table(keys1: list[str], keys2: list[str], rows: list[list[float]]) -> dict[str, float]:
    return {f"{a},{b}": v for a, row in zip(keys1, rows) for b, v in zip(keys2, row)}


def _production(p1: float, p2: float, use: list[list[float]], cap: list[float]) -> tuple[str, dict]:
    text = (f"A workshop makes chairs and tables. Each chair earns a profit of {p1} dollars and each table "
            f"{p2} dollars. A chair needs {use[0][0]} units of wood and {use[1][0]} hours of labour; a table "
            f"needs {use[0][1]} units of wood and {use[1][1]} hours of labour. There are {cap[0]} units of wood "
            f"and {cap[1]} hours of labour available. Only whole chairs and tables can be made. How many of "
            "each should be made to maximise the total profit? Give the maximum profit.")
    f = {"sets": [{"name": "P", "elements": ["chair", "table"]}, {"name": "R", "elements": ["wood", "labour"]}],
         "parameters": [{"name": "profit", "indices": ["P"], "values": {"chair": p1, "table": p2}},
                        {"name": "use", "indices": ["R", "P"],
                         "values": _table(["wood", "labour"], ["chair", "table"], use)},
                        {"name": "cap", "indices": ["R"], "values": {"wood": cap[0], "labour": cap[1]}}],
         "variables": [{"name": "x", "indices": ["P"], "type": "integer"}],
         "objective": {"sense": "max", "expression": "sum(profit[p] * x[p] for p in P)"},
         "constraints": [{"name": "cap", "expression": "sum(use[r, p] * x[p] for p in P) <= cap[r]",
                          "for_all": {"r": "R"}}]}
    return text, f


def _diet(cost: list[float], protein: list[float], fibre: list[float], need: list[float]) -> tuple[str, dict]:
    foods = ["oats", "beans", "rice"]
    text = ("A canteen plans a daily mix of oats, beans and rice (any non-negative amount, in kilograms). "
            + " ".join(f"One kilogram of {f} costs {c} dollars and gives {p} units of protein and {b} units of "
                       "fibre." for f, c, p, b in zip(foods, cost, protein, fibre))
            + f" The mix must give at least {need[0]} units of protein and at least {need[1]} units of fibre. "
            "What is the minimum daily cost?")
    f = {"sets": [{"name": "F", "elements": foods}],
         "parameters": [{"name": "cost", "indices": ["F"], "values": dict(zip(foods, cost))},
                        {"name": "protein", "indices": ["F"], "values": dict(zip(foods, protein))},
                        {"name": "fibre", "indices": ["F"], "values": dict(zip(foods, fibre))}],
         "variables": [{"name": "kg", "indices": ["F"]}],
         "objective": {"sense": "min", "expression": "sum(cost[f] * kg[f] for f in F)"},
         "constraints": [{"name": "protein", "expression": f"sum(protein[f] * kg[f] for f in F) >= {need[0]}"},
                         {"name": "fibre", "expression": f"sum(fibre[f] * kg[f] for f in F) >= {need[1]}"}]}
    return text, f


def _transport(supply: list[float], demand: list[float], cost: list[list[float]]) -> tuple[str, dict]:
    ws, st = ["north", "south"], ["A", "B", "C"]
    text = (f"Two warehouses, north and south, hold {supply[0]} and {supply[1]} crates. Stores A, B and C need "
            f"{demand[0]}, {demand[1]} and {demand[2]} crates, and every store must get exactly what it needs. "
            "Shipping one crate costs, from north to A, B, C: " + ", ".join(str(c) for c in cost[0])
            + "; from south to A, B, C: " + ", ".join(str(c) for c in cost[1])
            + " dollars. A warehouse cannot ship more than it holds. What is the minimum total shipping cost?")
    f = {"sets": [{"name": "W", "elements": ws}, {"name": "S", "elements": st}],
         "parameters": [{"name": "supply", "indices": ["W"], "values": dict(zip(ws, supply))},
                        {"name": "demand", "indices": ["S"], "values": dict(zip(st, demand))},
                        {"name": "cost", "indices": ["W", "S"], "values": _table(ws, st, cost)}],
         "variables": [{"name": "ship", "indices": ["W", "S"]}],
         "objective": {"sense": "min", "expression": "sum(cost[w, s] * ship[w, s] for w in W for s in S)"},
         "constraints": [{"name": "supply", "expression": "sum(ship[w, s] for s in S) <= supply[w]",
                          "for_all": {"w": "W"}},
                         {"name": "demand", "expression": "sum(ship[w, s] for w in W) == demand[s]",
                          "for_all": {"s": "S"}}]}
    return text, f


def _assignment(cost: list[list[float]]) -> tuple[str, dict]:
    people, jobs = ["Ana", "Ben", "Cai"], ["painting", "wiring", "plumbing"]
    text = ("Three workers, Ana, Ben and Cai, must each take exactly one of three jobs (painting, wiring, "
            "plumbing), and every job needs exactly one worker. The hours each worker needs for painting, "
            "wiring and plumbing are: " + "; ".join(f"{p}: {', '.join(str(c) for c in row)}"
                                                      for p, row in zip(people, cost))
            + ". What is the minimum total number of hours?")
    f = {"sets": [{"name": "W", "elements": people}, {"name": "J", "elements": jobs}],
         "parameters": [{"name": "hours", "indices": ["W", "J"], "values": _table(people, jobs, cost)}],
         "variables": [{"name": "a", "indices": ["W", "J"], "type": "binary"}],
         "objective": {"sense": "min", "expression": "sum(hours[w, j] * a[w, j] for w in W for j in J)"},
         "constraints": [{"name": "one_job", "expression": "sum(a[w, j] for j in J) == 1", "for_all": {"w": "W"}},
                         {"name": "one_worker", "expression": "sum(a[w, j] for w in W) == 1", "for_all": {"j": "J"}}]}
    return text, f


def _knapsack(weight: list[float], value: list[float], cap: float) -> tuple[str, dict]:
    items = ["tent", "stove", "camera", "books", "rope"]
    text = (f"A hiker can carry at most {cap} kilograms. The items available, each taken whole or not at all, "
            "are: " + "; ".join(f"{i} ({w} kg, value {v})" for i, w, v in zip(items, weight, value))
            + ". Which items maximise the total value carried? Give the maximum total value.")
    f = {"sets": [{"name": "I", "elements": items}],
         "parameters": [{"name": "weight", "indices": ["I"], "values": dict(zip(items, weight))},
                        {"name": "value", "indices": ["I"], "values": dict(zip(items, value))}],
         "variables": [{"name": "take", "indices": ["I"], "type": "binary"}],
         "objective": {"sense": "max", "expression": "sum(value[i] * take[i] for i in I)"},
         "constraints": [{"name": "weight", "expression": f"sum(weight[i] * take[i] for i in I) <= {cap}"}]}
    return text, f


def _blending(c1: float, c2: float, s1: float, s2: float, max_s: float, total: float) -> tuple[str, dict]:
    text = (f"A refinery blends two crude oils into {total} barrels of fuel. Crude X costs {c1} dollars per "
            f"barrel and contains {s1} percent sulphur; crude Y costs {c2} dollars per barrel and contains {s2} "
            f"percent sulphur. The blend may contain at most {max_s} percent sulphur. What is the minimum cost "
            "of the blend?")
    f = {"sets": [], "parameters": [],
         "variables": [{"name": "x"}, {"name": "y"}],
         "objective": {"sense": "min", "expression": f"{c1} * x + {c2} * y"},
         "constraints": [{"name": "volume", "expression": f"x + y == {total}"},
                         {"name": "sulphur", "expression": f"{s1} * x + {s2} * y <= {max_s} * {total}"}]}
    return text, f


def _staffing(need: list[int]) -> tuple[str, dict]:
    periods = ["p1", "p2", "p3", "p4"]
    text = ("A help desk is open in four periods of four hours. Each agent works two consecutive periods "
            "(starting in period 1, 2 or 3; an agent starting in period 4 works periods 4 and 1 of the next "
            f"day's cycle). At least {need[0]}, {need[1]}, {need[2]} and {need[3]} agents are needed in periods "
            "1 to 4. What is the smallest number of agents?")
    starts = {"p1": ["p1", "p4"], "p2": ["p2", "p1"], "p3": ["p3", "p2"], "p4": ["p4", "p3"]}
    f = {"sets": [{"name": "T", "elements": periods}],
         "parameters": [{"name": "need", "indices": ["T"], "values": dict(zip(periods, need))}],
         "variables": [{"name": "start", "indices": ["T"], "type": "integer"}],
         "objective": {"sense": "min", "expression": "sum(start[t] for t in T)"},
         "constraints": [{"name": f"cover_{t}", "expression": f"start['{a}'] + start['{b}'] >= need['{t}']"}
                         for t, (a, b) in starts.items()]}
    return text, f


def _investment(budget: float, rates: list[float], caps: list[float], min_bonds: float) -> tuple[str, dict]:
    opts = ["bonds", "stocks", "property"]
    text = (f"An investor has {budget} dollars for one year. Bonds return {rates[0]} percent, stocks {rates[1]} "
            f"percent and property {rates[2]} percent. At most {caps[1]} dollars may go into stocks and at most "
            f"{caps[2]} dollars into property, and at least {min_bonds} dollars must go into bonds. Money need "
            "not all be invested. What is the largest total return in dollars?")
    f = {"sets": [{"name": "O", "elements": opts}],
         "parameters": [{"name": "rate", "indices": ["O"], "values": dict(zip(opts, rates))}],
         "variables": [{"name": "inv", "indices": ["O"]}],
         "objective": {"sense": "max", "expression": "sum(rate[o] / 100 * inv[o] for o in O)"},
         "constraints": [{"name": "budget", "expression": f"sum(inv[o] for o in O) <= {budget}"},
                         {"name": "stocks", "expression": f"inv['stocks'] <= {caps[1]}"},
                         {"name": "property", "expression": f"inv['property'] <= {caps[2]}"},
                         {"name": "bonds", "expression": f"inv['bonds'] >= {min_bonds}"}]}
    return text, f


def _facility(fixed: list[float], cap: list[float], demand: list[float], cost: list[list[float]]) -> tuple[str, dict]:
    sites, towns = ["east", "west"], ["T1", "T2", "T3"]
    text = (f"A company may open depots at east (fixed cost {fixed[0]}, capacity {cap[0]} tonnes) and west "
            f"(fixed cost {fixed[1]}, capacity {cap[1]} tonnes). Towns T1, T2 and T3 need {demand[0]}, "
            f"{demand[1]} and {demand[2]} tonnes, which may be split between depots. Delivering one tonne "
            "costs, from east to T1, T2, T3: " + ", ".join(str(c) for c in cost[0]) + "; from west: "
            + ", ".join(str(c) for c in cost[1]) + ". Only an open depot can deliver. What is the minimum "
            "total cost of opening depots and delivering?")
    f = {"sets": [{"name": "D", "elements": sites}, {"name": "C", "elements": towns}],
         "parameters": [{"name": "fixed", "indices": ["D"], "values": dict(zip(sites, fixed))},
                        {"name": "cap", "indices": ["D"], "values": dict(zip(sites, cap))},
                        {"name": "demand", "indices": ["C"], "values": dict(zip(towns, demand))},
                        {"name": "cost", "indices": ["D", "C"], "values": _table(sites, towns, cost)}],
         "variables": [{"name": "open", "indices": ["D"], "type": "binary"}, {"name": "ship", "indices": ["D", "C"]}],
         "objective": {"sense": "min", "expression": "sum(fixed[d] * open[d] for d in D) + "
                                                     "sum(cost[d, c] * ship[d, c] for d in D for c in C)"},
         "constraints": [{"name": "demand", "expression": "sum(ship[d, c] for d in D) == demand[c]",
                          "for_all": {"c": "C"}},
                         {"name": "capacity", "expression": "sum(ship[d, c] for c in C) <= cap[d] * open[d]",
                          "for_all": {"d": "D"}}]}
    return text, f


def _planning(demand: list[float], cost: list[float], cap: float, hold: float) -> tuple[str, dict]:
    months = ["m1", "m2"]
    text = (f"A bakery must deliver {demand[0]} cakes in month 1 and {demand[1]} in month 2. It can bake at most "
            f"{cap} cakes a month, at {cost[0]} dollars each in month 1 and {cost[1]} dollars each in month 2. "
            f"Cakes baked in month 1 may be stored for month 2 at {hold} dollars each. What is the minimum total "
            "cost of baking and storage?")
    f = {"sets": [{"name": "M", "elements": months}],
         "parameters": [{"name": "demand", "indices": ["M"], "values": dict(zip(months, demand))},
                        {"name": "cost", "indices": ["M"], "values": dict(zip(months, cost))}],
         "variables": [{"name": "bake", "indices": ["M"], "upper": cap}, {"name": "store"}],
         "objective": {"sense": "min", "expression": f"sum(cost[m] * bake[m] for m in M) + {hold} * store"},
         "constraints": [{"name": "month1", "expression": "bake['m1'] == demand['m1'] + store"},
                         {"name": "month2", "expression": "bake['m2'] + store == demand['m2']"}]}
    return text, f


# (family, kind, builder arguments, the optimum found by HiGHS and SCIP)
_SPECS: list[tuple[str, str, Callable[..., tuple[str, dict]], tuple, float]] = [
    ("production", "MILP", _production, (45, 80, [[5, 20], [10, 15]], [400, 450]), 2200.0),
    ("production", "MILP", _production, (30, 50, [[4, 6], [3, 8]], [120, 150]), 980.0),
    ("production", "MILP", _production, (12, 17, [[2, 3], [4, 3]], [35, 50]), 203.0),
    ("diet", "LP", _diet, ([2.0, 3.5, 1.0], [10, 25, 6], [8, 12, 2], [60, 40]), 10.5),
    ("diet", "LP", _diet, ([1.5, 4.0, 0.8], [12, 30, 5], [10, 6, 1], [90, 50]), 11.25),
    ("diet", "LP", _diet, ([3.0, 2.0, 1.2], [15, 20, 4], [6, 9, 3], [100, 45]), 10.0),
    ("transport", "LP", _transport, ([50, 60], [30, 40, 40], [[4, 6, 9], [5, 3, 7]]), 560.0),
    ("transport", "LP", _transport, ([70, 40], [20, 50, 30], [[2, 4, 5], [3, 1, 8]]), 270.0),
    ("transport", "LP", _transport, ([45, 45], [25, 35, 30], [[6, 5, 3], [4, 7, 6]]), 405.0),
    ("assignment", "MILP", _assignment, ([[9, 2, 7], [6, 4, 3], [5, 8, 1]],), 9.0),
    ("assignment", "MILP", _assignment, ([[4, 7, 3], [2, 6, 5], [8, 3, 9]],), 8.0),
    ("assignment", "MILP", _assignment, ([[10, 12, 8], [7, 9, 11], [6, 14, 10]],), 23.0),
    ("knapsack", "MILP", _knapsack, ([5, 3, 1, 4, 2], [10, 7, 4, 6, 3], 9), 21.0),
    ("knapsack", "MILP", _knapsack, ([6, 2, 3, 5, 1], [12, 5, 6, 9, 2], 10), 20.0),
    ("knapsack", "MILP", _knapsack, ([4, 4, 2, 6, 3], [8, 9, 3, 13, 5], 12), 25.0),
    ("blending", "LP", _blending, (60, 45, 1.0, 3.0, 2.0, 100), 5250.0),
    ("blending", "LP", _blending, (70, 50, 0.5, 2.5, 1.0, 200), 13000.0),
    ("blending", "LP", _blending, (80, 55, 0.8, 2.0, 1.5, 150), 9812.5),
    ("staffing", "MILP", _staffing, ([4, 6, 5, 3],), 9.0),
    ("staffing", "MILP", _staffing, ([2, 7, 3, 6],), 13.0),
    ("staffing", "MILP", _staffing, ([5, 5, 5, 5],), 10.0),
    ("investment", "LP", _investment, (10000, [4, 9, 6], [0, 3000, 4000], 2000), 630.0),
    ("investment", "LP", _investment, (50000, [3, 8, 5], [0, 20000, 10000], 15000), 2700.0),
    ("investment", "LP", _investment, (20000, [5, 7, 6], [0, 5000, 5000], 8000), 1150.0),
    ("facility", "MILP", _facility, ([100, 120], [80, 80], [30, 25, 20], [[2, 3, 6], [5, 4, 2]]), 355.0),
    ("facility", "MILP", _facility, ([300, 200], [100, 60], [20, 20, 20], [[1, 2, 3], [3, 2, 1]]), 320.0),
    ("facility", "MILP", _facility, ([50, 60], [40, 40], [25, 20, 15], [[3, 4, 8], [7, 5, 2]]), 300.0),
    ("planning", "LP", _planning, ([80, 120], [5, 7], 100, 1), 1220.0),
    ("planning", "LP", _planning, ([50, 150], [4, 6], 120, 1.5), 1065.0),
    ("planning", "LP", _planning, ([100, 100], [3, 3], 150, 0.5), 600.0),
]


def load_problems() -> list[Problem]:
    """The 30 embedded problems, ids ``<family>-<n>``."""
    out, seen = [], {}
    for family, kind, build, args, answer in _SPECS:
        seen[family] = seen.get(family, 0) + 1
        text, formulation = build(*args)
        out.append(Problem(f"{family}-{seen[family]}", text, formulation, answer, kind))
    return out
