"""One small interface over open LP/MILP solvers: HiGHS (``highspy``, the default), SCIP (``pyscipopt``) and
Pyomo (with its HiGHS interface). ``pip install -e '.[modeling]'`` installs all three.

:func:`solve` takes a :class:`~lmopt.modeling.formulation.Formulation` (or its linearised form) and returns a
:class:`Solution` with a status normalised across solvers (``optimal``, ``infeasible``, ``unbounded``,
``infeasible_or_unbounded``, ``limit``, ``error``), the objective and the variable values by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .._deps import require
from .formulation import Formulation, LinearModel, linearize

SOLVERS = ("highs", "scip", "pyomo")


@dataclass
class Solution:
    status: str
    objective: float | None = None
    values: dict[str, float] = field(default_factory=dict)
    solver: str = ""
    message: str = ""

    @property
    def optimal(self) -> bool:
        return self.status == "optimal"


def solve(model: Formulation | LinearModel, solver: str = "highs", *, time_limit_s: float = 60.0) -> Solution:
    """Solve ``model`` with ``solver`` (one of :data:`SOLVERS`) within ``time_limit_s`` seconds."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    if not time_limit_s > 0:
        raise ValueError(f"time_limit_s must be positive, got {time_limit_s!r}")
    lm = linearize(model) if isinstance(model, Formulation) else model
    return {"highs": _highs, "scip": _scip, "pyomo": _pyomo}[solver](lm, time_limit_s)


def _highs(m: LinearModel, time_limit_s: float) -> Solution:
    highspy = require("highspy", "modeling")
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", float(time_limit_s))
    inf = highspy.kHighsInf
    index = {k: j for j, k in enumerate(m.variables)}
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = len(m.variables), len(m.rows)
    lp.col_cost_ = [m.objective.get(k, 0.0) for k in m.variables]
    lp.col_lower_ = [_finite(lo, inf) for lo, _ in m.bounds]
    lp.col_upper_ = [_finite(hi, inf) for _, hi in m.bounds]
    lp.row_lower_ = [_finite(r.lower, inf) for r in m.rows]
    lp.row_upper_ = [_finite(r.upper, inf) for r in m.rows]
    lp.offset_ = m.objective_const
    lp.sense_ = highspy.ObjSense.kMaximize if m.sense == "max" else highspy.ObjSense.kMinimize
    starts, idx, vals = [0], [], []
    for r in m.rows:  # row-wise sparse matrix
        for k, c in r.coef.items():
            idx.append(index[k])
            vals.append(c)
        starts.append(len(idx))
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = starts, idx, vals
    if any(t != "continuous" for t in m.types):
        lp.integrality_ = [highspy.HighsVarType.kContinuous if t == "continuous" else highspy.HighsVarType.kInteger
                           for t in m.types]
    h.passModel(lp)
    h.run()
    status = h.getModelStatus()
    text = h.modelStatusToString(status).lower()
    names = {highspy.HighsModelStatus.kOptimal: "optimal", highspy.HighsModelStatus.kInfeasible: "infeasible",
             highspy.HighsModelStatus.kUnbounded: "unbounded",
             highspy.HighsModelStatus.kUnboundedOrInfeasible: "infeasible_or_unbounded",
             highspy.HighsModelStatus.kTimeLimit: "limit"}
    norm = names.get(status, "error")
    if norm != "optimal":
        return Solution(norm, solver="highs", message=text)
    x = list(h.getSolution().col_value)
    return Solution("optimal", float(h.getInfo().objective_function_value),
                    {m.var_name(k): float(v) for k, v in zip(m.variables, x)}, "highs", text)


def _scip(m: LinearModel, time_limit_s: float) -> Solution:
    scip = require("pyscipopt", "modeling")
    model = scip.Model()
    model.hideOutput()
    model.setParam("limits/time", float(time_limit_s))
    vt = {"continuous": "C", "integer": "I", "binary": "B"}
    xs = {k: model.addVar(name=m.var_name(k), vtype=vt[t], lb=None if math.isinf(lo) else lo,
                          ub=None if math.isinf(hi) else hi)
          for k, t, (lo, hi) in zip(m.variables, m.types, m.bounds)}
    for r in m.rows:
        expr = scip.quicksum(c * xs[k] for k, c in r.coef.items())
        if r.lower == r.upper:
            model.addCons(expr == r.upper, name=r.name)
        else:
            if not math.isinf(r.upper):
                model.addCons(expr <= r.upper, name=r.name)
            if not math.isinf(r.lower):
                model.addCons(expr >= r.lower, name=r.name)
    obj = scip.quicksum(c * xs[k] for k, c in m.objective.items()) + m.objective_const
    model.setObjective(obj, "maximize" if m.sense == "max" else "minimize")
    model.optimize()
    st = model.getStatus()
    norm = {"optimal": "optimal", "infeasible": "infeasible", "unbounded": "unbounded",
            "inforunbd": "infeasible_or_unbounded", "timelimit": "limit"}.get(st, "error")
    if norm != "optimal":
        return Solution(norm, solver="scip", message=st)
    return Solution("optimal", float(model.getObjVal()), {m.var_name(k): float(model.getVal(v)) for k, v in xs.items()},
                    "scip", st)


def _pyomo(m: LinearModel, time_limit_s: float) -> Solution:
    pyo = require("pyomo.environ", "modeling")
    from pyomo.contrib.appsi.solvers import Highs  # the HiGHS interface through highspy

    model = pyo.ConcreteModel()
    domain = {"continuous": pyo.Reals, "integer": pyo.Integers, "binary": pyo.Binary}
    model.x = pyo.Var(range(len(m.variables)), within=pyo.Reals)
    index = {k: j for j, k in enumerate(m.variables)}
    for j, (t, (lo, hi)) in enumerate(zip(m.types, m.bounds)):
        model.x[j].domain = domain[t]
        model.x[j].setlb(None if math.isinf(lo) else lo)
        model.x[j].setub(None if math.isinf(hi) else hi)
    model.rows = pyo.ConstraintList()
    for r in m.rows:
        expr = sum(c * model.x[index[k]] for k, c in r.coef.items())
        model.rows.add(pyo.inequality(None if math.isinf(r.lower) else r.lower, expr,
                                      None if math.isinf(r.upper) else r.upper)
                       if r.lower != r.upper else expr == r.upper)
    sense = pyo.maximize if m.sense == "max" else pyo.minimize
    model.obj = pyo.Objective(expr=sum(c * model.x[index[k]] for k, c in m.objective.items()) + m.objective_const,
                              sense=sense)
    opt = Highs()
    opt.config.time_limit = float(time_limit_s)
    opt.config.load_solution = False
    res = opt.solve(model)
    tc = str(res.termination_condition).split(".")[-1].lower()
    norm = {"optimal": "optimal", "infeasible": "infeasible", "unbounded": "unbounded",
            "infeasibleorunbounded": "infeasible_or_unbounded", "maxtimelimit": "limit"}.get(tc, "error")
    if norm != "optimal":
        return Solution(norm, solver="pyomo", message=tc)
    res.solution_loader.load_vars()
    return Solution("optimal", float(pyo.value(model.obj)),
                    {m.var_name(k): float(pyo.value(model.x[j])) for j, k in enumerate(m.variables)}, "pyomo", tc)


def _finite(v: float, inf: float) -> float:
    return inf if v == math.inf else -inf if v == -math.inf else float(v)
