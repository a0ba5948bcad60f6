"""Exact OT for EASE's pre-filter, checked against an independent LP solver; the released EASE loop; the fixed
candidate pool that random search and EASE share."""

from __future__ import annotations

import numpy as np
import pytest

from lmopt.lm import LM
from lmopt.prompt import EASE, RandomSearch
from lmopt.prompt import methods as M
from lmopt.prompt.transport import exact_ot_costs, exemplar_ot_costs

from .conftest import ToyLM

SPLIT = {"seed": 0, "n_train": 30, "n_val": 12, "n_test": 20}


def _lp_cost(C: np.ndarray) -> float:
    """Transport LP solved directly: min <P, C> s.t. rows sum to 1/k, columns to 1/m, P >= 0."""
    from scipy.optimize import linprog

    k, m = C.shape
    A = np.zeros((k + m, k * m))
    for i in range(k):
        A[i, i * m:(i + 1) * m] = 1.0
    for j in range(m):
        A[k + j, j::m] = 1.0
    b = np.concatenate([np.full(k, 1.0 / k), np.full(m, 1.0 / m)])
    res = linprog(C.ravel(), A_eq=A, b_eq=b, bounds=(0, None), method="highs")
    assert res.status == 0
    return float(res.fun)


@pytest.mark.parametrize("k,m", [(5, 40), (3, 7), (2, 3), (4, 6), (1, 5), (6, 4)])
def test_exact_ot_equals_the_transport_lp(k, m):
    rng = np.random.default_rng(k * 100 + m)
    C = rng.random((6, k, m))
    got = exact_ot_costs(C)
    want = [_lp_cost(c) for c in C]
    np.testing.assert_allclose(got, want, atol=1e-9)
    # and it is not simply the cheapest column per row (the unconstrained relaxation)
    assert (got > C.min(axis=2).mean(axis=1) + 1e-6).any()


def test_exemplar_ot_costs_use_cosine_cost_on_normalised_rows():
    rng = np.random.default_rng(0)
    pool, val = rng.normal(size=(10, 8)), rng.normal(size=(6, 8))
    idx = np.array([[0, 1, 2], [3, 4, 5]])
    pn = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    vn = val / np.linalg.norm(val, axis=1, keepdims=True)
    want = [_lp_cost(1 - pn[r] @ vn.T) for r in idx]
    np.testing.assert_allclose(exemplar_ot_costs(idx, 3.0 * pool, val), want, atol=1e-9)
    # a candidate made of copies of validation points costs (almost) nothing
    close = exemplar_ot_costs(np.array([[0, 1, 2]]), np.vstack([val[:3], val[3:]]), val)
    assert close[0] < want[0]


def test_bad_cost_shapes_are_refused():
    with pytest.raises(ValueError, match=r"shape \(N, k, m\)"):
        exact_ot_costs(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        exact_ot_costs(np.full((1, 2, 2), np.nan))


def test_released_search_evaluates_only_ot_kept_candidates(toy_task, monkeypatch):
    calls = []

    def spy(idx, one, val):
        d = exemplar_ot_costs(idx, one, val)
        calls.append((np.array(idx), d))
        return d

    monkeypatch.setattr(M, "exemplar_ot_costs", spy)
    ease = EASE(n_shots=3, search="released", pool_batches=2, pool_batch_size=40, batch_keep=4, n_initial=2,
                embedder="hash", train_steps=20)
    split = toy_task.split(**SPLIT)
    res = ease.run(toy_task, LM(ToyLM(toy_task).backend), budget=7, split=SPLIT)
    ucb = [h for h in res.history if h["kind"] == "eval" and h["source"] == "ucb"]
    assert ucb and len(calls) == 2 * len(ucb)
    pos = {e.input: i for i, e in enumerate(split.train)}
    for r, h in enumerate(ucb):
        chosen = tuple(pos[e["input"]] for e in h["prompt"]["exemplars"])
        kept = set()
        for idx, d in calls[2 * r: 2 * r + 2]:
            kept |= {tuple(int(i) for i in idx[j]) for j in np.argsort(d, kind="stable")[:4]}
        assert chosen in kept  # the evaluated set passed its round's OT pre-filter
    assert res.n_evaluations <= 7


def test_released_search_stops_at_a_perfect_validation_score(toy_task):
    class Perfect(ToyLM):
        def _answer(self, prompt):
            inp = prompt.rsplit("Input:", 1)[1].split("\nOutput:")[0].strip()
            return self.targets.get(inp, "yes")

    res = EASE(n_shots=2, search="released", pool_batches=1, pool_batch_size=20, batch_keep=3, n_initial=3,
               embedder="hash", train_steps=5).run(toy_task, LM(Perfect(toy_task).backend), budget=9, split=SPLIT)
    assert res.val_score == 1.0
    assert res.n_evaluations == 2  # the seed prompt, then the first initial candidate: both perfect, so stop


def test_a_fixed_pool_is_shared_by_random_search_and_ease_across_seeds(toy_task):
    def evaluated(res):
        return {tuple(e["input"] for e in h["prompt"]["exemplars"]) for h in res.history
                if h["kind"] == "eval" and h["prompt"]["exemplars"]}

    lm = LM(ToyLM(toy_task).backend)
    r0 = RandomSearch(n_shots=2, n_candidates=6, pool_seed=3).run(toy_task, lm, budget=10, split=SPLIT, seed=0)
    r1 = RandomSearch(n_shots=2, n_candidates=6, pool_seed=3).run(toy_task, lm, budget=10, split=SPLIT, seed=1)
    pool = evaluated(r0)
    assert len(pool) == 6 and evaluated(r1) == pool  # the whole pool, whatever the seed
    order = [[h["prompt"] for h in r.history if h["kind"] == "eval"] for r in (r0, r1)]
    assert order[0] != order[1]  # ... in another order
    for seed in (0, 1):
        e = EASE(n_shots=2, n_candidates=6, pool_seed=3, n_initial=2, embedder="hash", train_steps=5).run(
            toy_task, lm, budget=5, split=SPLIT, seed=seed)
        assert evaluated(e) <= pool
    other = RandomSearch(n_shots=2, n_candidates=6, pool_seed=4).run(toy_task, lm, budget=10, split=SPLIT)
    assert evaluated(other) != pool
