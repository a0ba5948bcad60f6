"""PROMST on the embedded multi-step task, with and without its score model, at equal evaluation budgets.

    python -m benchmarks.promst [--quick] [--out DIR] [--seeds N] [--evals B] [--n-children K]
        [--optimizer-url URL --optimizer-model NAME]

The task model is the embedded SmolLM2-135M-Instruct (local); it plays ``number_walk`` (reach a target with
``add N`` / ``subtract N``, at most 6 actions). The optimiser (children, summaries) is the same local model,
or any OpenAI-compatible server with ``--optimizer-url``. For every seed PROMST runs twice on the same split
— score model on (ridge regression on hashed prompt embeddings, half of each later expansion evaluated) and
off — each with its own call cache. Reported: best validation and test score (mean episode score), the
seed prompt's, evaluations spent, children the score model skipped (evaluations saved), the rank
correlation between its predictions and the scores of the children it let through, and wall time.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import load_average, parse_args, write_result

DEFAULTS = {"evals": 12, "seeds": 3, "n_children": 8, "split": (10, 10, 20), "max_new_tokens": 200}
QUICK = {"evals": 2, "seeds": 1, "n_children": 2, "split": (4, 3, 3), "max_new_tokens": 32}


def _ranks(x: list[float]) -> list[float]:
    """Ranks with ties given their average rank."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    out = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2
        i = j + 1
    return out


def _spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation (None below 3 pairs or when a side is constant)."""
    if len(a) < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = statistics.mean(ra), statistics.mean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return None if va == 0 or vb == 0 else round(cov / (va * vb) ** 0.5, 3)


def run_one(task: Any, lm: Any, opt_lm: Any, splits: Any, seed: int, score_model: bool, cfg: dict[str, Any]
            ) -> dict[str, Any]:
    from lmopt.prompt import PROMST

    t0 = time.perf_counter()
    res = PROMST(n_children=cfg["n_children"], score_model=score_model, max_new_tokens=cfg["max_new_tokens"]).run(
        task, lm, budget=cfg["evals"], optimizer_lm=opt_lm, splits=splits, seed=seed)
    kids = [h for h in res.history if h["kind"] == "promst_child"]
    judged = [h for h in kids if h["predicted"] is not None]
    u = res.usage.get("total", {})
    return {"seed": seed, "score_model": score_model, "val": res.val_score, "test": res.test_score,
            "seed_val": res.seed_val_score, "seed_test": res.seed_test_score, "evaluations": res.n_evaluations,
            "children_scored": len(kids), "skipped": sum(h["kind"] == "promst_skipped" for h in res.history),
            "expansions": sum(h["kind"] == "promst_expand" for h in res.history),
            "prediction_spearman": _spearman([h["predicted"] for h in judged], [h["val_score"] for h in judged]),
            "parse_failures": res.parse_failures, "calls": u.get("calls", 0), "tokens": u.get("total_tokens", 0),
            "stop": res.stop_reason, "wall_s": round(time.perf_counter() - t0, 1),
            "best_prompt": res.best_prompt.instruction}


def main(argv: list[str] | None = None) -> None:
    def extra(p):
        p.add_argument("--evals", type=int, default=None, help="evaluations per run (default 12, quick 2)")
        p.add_argument("--n-children", type=int, default=None, help="children per expansion (default 8)")
        p.add_argument("--optimizer-url", default=None, help="an OpenAI-compatible server for the optimiser calls")
        p.add_argument("--optimizer-model", default=None, help="the model name on --optimizer-url")

    args = parse_args("promst", __doc__.splitlines()[0], default_seeds=DEFAULTS["seeds"], argv=argv, extra=extra)
    cfg = dict(QUICK if args.quick else DEFAULTS)
    cfg["evals"] = args.evals or cfg["evals"]
    cfg["n_children"] = args.n_children or cfg["n_children"]
    if (args.optimizer_url is None) != (args.optimizer_model is None):
        raise SystemExit("--optimizer-url and --optimizer-model go together")
    seeds = args.seeds or cfg["seeds"]
    from lmopt.data import number_walk
    from lmopt.lm import LM, CallCache, LocalLM, OpenAICompatibleLM

    local = LocalLM(batch_size=16)
    remote = (OpenAICompatibleLM(args.optimizer_model, args.optimizer_url, max_concurrency=4, timeout=300,
                                 split_n=True)
              if args.optimizer_url else None)
    task = number_walk(size=80, seed=0)
    tmp = tempfile.mkdtemp(prefix="lmopt-promst-")
    runs = []
    n_train, n_val, n_test = cfg["split"]
    for s in range(seeds):
        splits = task.split(s, n_train=n_train, n_val=n_val, n_test=n_test)
        for sm in (True, False):
            cache = CallCache(Path(tmp) / f"calls-{s}-{int(sm)}.sqlite")
            lm = LM(local, cache=cache)
            opt_lm = LM(remote, cache=cache) if remote is not None else None
            runs.append(run_one(task, lm, opt_lm, splits, s, sm, cfg))
            cache.close()
            r = runs[-1]
            print(f"[promst] seed {s} score_model={sm}: val {r['val']:.3f} test {r['test']:.3f} (seed prompt "
                  f"{r['seed_test']:.3f}) scored {r['children_scored']} skipped {r['skipped']} {r['wall_s']} s",
                  file=sys.stderr, flush=True)

    def agg(sm: bool) -> dict[str, Any]:
        rs = [r for r in runs if r["score_model"] is sm]
        return {"test_median": statistics.median(r["test"] for r in rs),
                "val_median": statistics.median(r["val"] for r in rs),
                "skipped_total": sum(r["skipped"] for r in rs), "scored_total": sum(r["children_scored"] for r in rs),
                "wall_s_median": statistics.median(r["wall_s"] for r in rs)}

    results = {"config": {**cfg, "seeds": seeds, "optimizer": remote.name if remote else local.name,
                          "task_model": local.name}, "runs": runs, "with_score_model": agg(True),
               "without_score_model": agg(False), "load_during": load_average()}
    summary = {"with": results["with_score_model"], "without": results["without_score_model"]}
    write_result(args, results, summary)


if __name__ == "__main__":
    main()
