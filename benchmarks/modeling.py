"""Optimisation modelling with a language model: execution rate and accuracy per strategy, with and without
self-debug and self-consistency, and the sandbox's overhead per run.

    python -m benchmarks.modeling [--quick] [--out DIR] [--source PATH] [--base-url URL --model NAME]

Problems: the 30 embedded word problems (``lmopt.modeling.problems``), or ``--source`` (a public benchmark in a
format ``lmopt.modeling.data.load_benchmark`` reads). Model: the embedded SmolLM2-135M-Instruct by default
(it scores low: a 135M model rarely writes a valid model), or any OpenAI-compatible server with
``--base-url`` and ``--model``. Each configuration is a strategy (``formulation``, ``code``, ``expert``) with
``debug_rounds`` 0 or 3 and 1 or ``--samples`` samples (self-consistency at temperature 0.7); greedy
otherwise. Reported per configuration: execution rate (some attempt reached a solver status), accuracy
(objective within the benchmark's tolerance), mean rounds, LM calls and tokens, seconds. The sandbox's
overhead is the wall time of a trivial program and of one that imports highspy, each run 10 times.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from benchmarks._common import load_average, parse_args, write_result

QUICK = {"problems": 2, "configs": [("formulation", 0, 1)], "max_new_tokens": 96, "overhead_runs": 3}
FULL = {"problems": 30, "configs": [(s, d, 1) for s in ("formulation", "code", "expert") for d in (0, 3)]
        + [("formulation", 3, "samples"), ("code", 3, "samples")], "max_new_tokens": 512, "overhead_runs": 10}


def sandbox_overhead(runs: int) -> dict[str, Any]:
    from lmopt.modeling import SandboxLimits, run_sandboxed

    out = {}
    for name, code in (("trivial", "result = 1"), ("import_highspy", "import highspy\nresult = 1")):
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            r = run_sandboxed(code, SandboxLimits(timeout_s=60))
            times.append(time.perf_counter() - t0)
            if not r.ok:
                raise RuntimeError(f"the sandbox failed on {name!r}: {r.error_summary()}")
        out[name] = {"median_s": round(statistics.median(times), 4), "max_s": round(max(times), 4), "runs": runs,
                     "isolation": r.isolation}
    return out


def make_lm(args: Any):
    from lmopt.lm import LM, CallCache, LocalLM, OpenAICompatibleLM

    cache = CallCache(f"{args.out}/modeling-calls.sqlite")
    if args.base_url:
        if not args.model:
            raise SystemExit("--base-url needs --model (the server's model name)")
        return LM(OpenAICompatibleLM(args.model, args.base_url, max_concurrency=4, timeout=300), cache=cache)
    return LM(LocalLM(args.model, device=args.device), cache=cache)


def run_config(lm: Any, problems: list[Any], strategy: str, debug: int, samples: int, max_new_tokens: int,
               seed: int) -> dict[str, Any]:
    from lmopt.modeling import OptimizationModeler

    modeler = OptimizationModeler(lm, strategy, debug_rounds=debug, samples=samples,
                                  temperature=0.7 if samples > 1 else 0.0, max_new_tokens=max_new_tokens,
                                  seed=seed)
    before = lm.usage()["total"]
    t0 = time.perf_counter()
    rows = []
    for p in problems:
        res = modeler.solve(p.text)
        rows.append({"id": p.id, "objective": res.objective, "answer": p.answer, "correct": p.correct(res.objective),
                     "executed": res.executed, "rounds": res.rounds,
                     "stages": [[a.stage for a in s] for s in res.samples]})
        print(f"[modeling] {strategy} debug={debug} samples={samples} {p.id}: {res.objective} "
              f"(answer {p.answer}) {'ok' if rows[-1]['correct'] else '-'}", file=sys.stderr, flush=True)
    after = lm.usage()["total"]
    n = len(rows)
    return {"strategy": strategy, "debug_rounds": debug, "samples": samples,
            "execution_rate": sum(r["executed"] for r in rows) / n, "accuracy": sum(r["correct"] for r in rows) / n,
            "mean_rounds": statistics.mean(r["rounds"] for r in rows), "n": n,
            "lm_calls": after["calls"] - before["calls"], "tokens": after["total_tokens"] - before["total_tokens"],
            "seconds": round(time.perf_counter() - t0, 1), "problems": rows}


def _config(text: str) -> tuple[str, int, int | str]:
    from lmopt.modeling import STRATEGIES

    try:
        strategy, debug, samples = text.split(":")
        if strategy not in STRATEGIES:
            raise ValueError
        return strategy, int(debug), samples if samples == "samples" else int(samples)
    except ValueError:
        raise SystemExit(f"--configs entry {text!r}: write STRATEGY:DEBUG_ROUNDS:SAMPLES with STRATEGY in "
                         f"{STRATEGIES}, e.g. formulation:3:1 or code:3:samples") from None


def main(argv: list[str] | None = None) -> None:
    def extra(p):
        p.add_argument("--source", default=None, help="a public benchmark (file, folder or HF id) instead of the "
                                                      "embedded problems")
        p.add_argument("--base-url", default=None, help="an OpenAI-compatible server (e.g. http://127.0.0.1:8080/v1)")
        p.add_argument("--model", default=None, help="the server's model name, or a local HF id/folder")
        p.add_argument("--device", default="cpu")
        p.add_argument("--samples", type=int, default=3, help="samples of the self-consistency configurations")
        p.add_argument("--limit", type=int, default=None, help="at most this many problems")
        p.add_argument("--configs", default=None, help="comma-separated STRATEGY:DEBUG_ROUNDS:SAMPLES (SAMPLES a "
                                                       "number or 'samples' for --samples), default all")
        p.add_argument("--max-new-tokens", type=int, default=None, help="per reply (full: 512)")

    args = parse_args("modeling", __doc__.splitlines()[0], default_seeds=1, argv=argv, extra=extra)
    cfg = dict(QUICK if args.quick else FULL)
    if args.configs:
        cfg["configs"] = [_config(c) for c in args.configs.split(",")]
    if args.max_new_tokens:
        cfg["max_new_tokens"] = args.max_new_tokens
    if args.source:
        from lmopt.modeling.data import load_benchmark

        problems = load_benchmark(args.source, limit=args.limit)
    else:
        from lmopt.modeling.problems import load_problems

        problems = load_problems()[: args.limit or cfg["problems"]]
    if args.quick:
        problems = problems[: cfg["problems"]]
    lm = make_lm(args)
    t0 = time.perf_counter()
    overhead = sandbox_overhead(cfg["overhead_runs"])
    rows = [run_config(lm, problems, s, d, args.samples if n == "samples" else n, cfg["max_new_tokens"], seed=0)
            for s, d, n in cfg["configs"]]
    results = {"config": {**cfg, "samples": args.samples, "model": lm.name, "source": args.source or "embedded",
                          "n_problems": len(problems)},
               "sandbox_overhead": overhead, "configs": rows, "load_during": load_average(),
               "seconds": round(time.perf_counter() - t0, 1)}
    summary = {"model": lm.name, "n": len(problems),
               "sandbox_trivial_s": overhead["trivial"]["median_s"],
               **{f"{r['strategy']}_d{r['debug_rounds']}_s{r['samples']}": {"exec": round(r["execution_rate"], 3),
                                                                            "acc": round(r["accuracy"], 3)}
                  for r in rows}}
    write_result(args, results, summary)


if __name__ == "__main__":
    main()
