"""Exact optimal transport between an exemplar set and the validation set (EASE's pre-filter).

EASE (arXiv 2405.16122, §4.2) ranks candidate exemplar sets by the optimal-transport cost between the
embeddings of its exemplars and those of the validation examples, uniform weights on both sides, cost
``1 - cosine``. The problems are tiny (``k`` exemplars × ``m`` validation points) but there are many of
them (50,000 per round in the released configuration), so they are solved exactly as assignment problems:
with uniform marginals ``1/k`` and ``1/m`` and ``L = lcm(k, m)``, scaling the masses by ``L`` gives integer
supplies ``L/k`` and demands ``L/m``; a transportation problem with integer data has an integral optimal
vertex, so it equals the ``L × L`` assignment problem on the replicated cost matrix, divided by ``L``.
"""

from __future__ import annotations

import math

import numpy as np

from .._deps import require


def exact_ot_costs(costs: np.ndarray) -> np.ndarray:
    """Exact transport cost, uniform marginals, of each ``(k, m)`` cost matrix in ``costs`` (shape (N, k, m))."""
    linear_sum_assignment = require("scipy.optimize", "hf").linear_sum_assignment
    C = np.asarray(costs, dtype=np.float64)
    if C.ndim != 3 or C.shape[1] < 1 or C.shape[2] < 1:
        raise ValueError(f"costs must have shape (N, k, m) with k, m >= 1, got {C.shape}")
    if not np.isfinite(C).all():
        raise ValueError("costs contain NaN or inf")
    _, k, m = C.shape
    L = math.lcm(k, m)
    rows, cols = L // k, L // m
    out = np.empty(C.shape[0])
    for n in range(C.shape[0]):
        M = C[n]
        if rows > 1:
            M = np.repeat(M, rows, axis=0)
        if cols > 1:
            M = np.repeat(M, cols, axis=1)
        r, c = linear_sum_assignment(M)
        out[n] = M[r, c].sum() / L
    return out


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def exemplar_ot_costs(cand_idx: np.ndarray, pool_emb: np.ndarray, val_emb: np.ndarray) -> np.ndarray:
    """OT cost between each candidate's exemplars (rows of ``pool_emb`` picked by ``cand_idx``, shape
    (N, k)) and the validation embeddings, with cost ``1 - cosine`` (embeddings are L2-normalised here)."""
    idx = np.asarray(cand_idx)
    if idx.ndim != 2:
        raise ValueError(f"cand_idx must have shape (N, k), got {idx.shape}")
    C_all = 1.0 - unit_rows(pool_emb) @ unit_rows(val_emb).T  # (pool, m)
    return exact_ot_costs(C_all[idx])
