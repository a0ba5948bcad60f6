"""Throughput of prompt evaluation with the embedded SmolLM2 on the tweets task.

Compares, on the same examples and in the same process: label scoring (batched ``score``, one forward
pass per example shared by the three labels), naive per-example greedy generation (batch size 1, parse
the first word), batched generation, and the call cache's hit path (the same scoring again, served from
SQLite). Reports examples/s and speed-ups relative to per-example generation measured in the same run.

Then prefix reuse: 0-, 3- and 6-shot prompts evaluated by label scoring and by batched generation, once
with ``LocalLM(prefix_reuse=False)`` (every prompt computed in full) and once with the shared prefix
(instruction + exemplars) computed once per call, same examples and process; reports examples/s, the
speed-up, the largest log-prob difference between the two paths and whether every prediction agrees.

    python -m benchmarks.lm_throughput [--quick] [--out DIR] [--seeds N]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks._common import median_spread, parse_args, save_plot, write_result


def main(argv=None) -> None:
    args = parse_args("lm_throughput", __doc__.splitlines()[0], default_seeds=3, argv=argv)
    from rich.progress import Progress

    from lmopt.data import load_task
    from lmopt.lm import LM, LocalLM
    from lmopt.lm.cache import CallCache
    from lmopt.prompt import Prompt, evaluate_prompt

    n = 8 if args.quick else 64
    seeds = args.seeds or (1 if args.quick else args.default_seeds)
    task = load_task("tweets", per_class=200, seed=0)
    backend = LocalLM(batch_size=8)
    methods = ("score_batched", "generate_per_example", "generate_batched", "score_cache_hit")
    rates: dict[str, list[float]] = {m: [] for m in methods}
    accs: dict[str, list[float]] = {m: [] for m in methods}
    with Progress() as prog, tempfile.TemporaryDirectory() as tmp:
        bar = prog.add_task("lm_throughput", total=seeds * len(methods))
        for seed in range(seeds):
            examples = task.split(seed=seed, n_train=0, n_val=0, n_test=n).test
            prompt = Prompt(task.instruction)
            # warm-up (first-call allocations) outside the timed region
            evaluate_prompt(LM(backend), task, prompt, examples[:2], mode="score")

            cache = CallCache(Path(tmp) / f"calls-{seed}.sqlite")
            for m in methods:  # score_batched fills the cache that score_cache_hit then reads
                t0 = time.perf_counter()
                acc = _run_method(m, backend, task, prompt, examples, cache)
                rates[m].append(n / (time.perf_counter() - t0))
                accs[m].append(acc)
                prog.advance(bar)
        prefix = _prefix_rows(backend, task, n, seeds, prog)
    base = median_spread(rates["generate_per_example"])["median"]
    results = {
        "n_examples": n, "seeds": seeds, "model": backend.name, "batch_size": backend.batch_size,
        "examples_per_s": {m: median_spread(v) for m, v in rates.items()},
        "accuracy": {m: median_spread(v) for m, v in accs.items()},
        "speedup_vs_generate_per_example": {m: median_spread(rates[m])["median"] / base for m in methods},
        "note": "generation parses the first word of a 4-token greedy continuation; scoring compares the "
                "log-probabilities of ' negative', ' neutral', ' positive'",
        "prefix_reuse": prefix,
    }
    _plot(results, args.out)
    sp = results["speedup_vs_generate_per_example"]
    write_result(args, results, {
        "score_ex_per_s": round(results["examples_per_s"]["score_batched"]["median"], 2),
        "gen_per_example_ex_per_s": round(base, 2),
        "score_speedup": round(sp["score_batched"], 2), "cache_hit_speedup": round(sp["score_cache_hit"], 1),
        **{f"prefix_{r['shots']}shot_{r['mode']}_speedup": round(r["speedup"]["median"], 2) for r in prefix},
    })


SHOTS = (0, 3, 6)


def _prefix_rows(backend, task, n, seeds, prog) -> list[dict]:
    """Full computation vs prefix reuse for 0/3/6-shot prompts, by scoring and by generation."""
    from lmopt.lm import LM
    from lmopt.prompt import Prompt, evaluate_prompt

    rows = []
    bar = prog.add_task("prefix reuse", total=len(SHOTS) * 2 * seeds)
    for shots in SHOTS:
        for mode in ("score", "generate"):
            rate = {False: [], True: []}
            max_diff, agree, prompt_tokens = 0.0, True, []
            for seed in range(seeds):
                sp = task.split(seed=100 + seed, n_train=max(shots, 1), n_val=0, n_test=n)
                prompt = Prompt(task.instruction, tuple(sp.train[:shots]))
                texts = [prompt.render(task, e) for e in sp.test]
                prompt_tokens.append(sum(backend.count_tokens(t) for t in texts) / len(texts))
                out = {}
                for reuse in (False, True):
                    backend.prefix_reuse = reuse
                    try:
                        evaluate_prompt(LM(backend), task, prompt, sp.test[:2], mode=mode)  # warm-up
                        t0 = time.perf_counter()
                        preds = evaluate_prompt(LM(backend), task, prompt, sp.test, mode=mode).predictions
                        rate[reuse].append(n / (time.perf_counter() - t0))
                        if mode == "score":  # the raw log-probs, for the parity figure (not timed)
                            conts = [" " + lab for lab in task.labels]
                            out[reuse] = [s.logprob for s in backend.score([t for t in texts for _ in conts],
                                                                            conts * len(texts))]
                    finally:
                        backend.prefix_reuse = True
                    out[(reuse, "pred")] = preds
                if mode == "score":
                    max_diff = max(max_diff, max(abs(a - b) for a, b in zip(out[False], out[True])))
                agree = agree and out[(False, "pred")] == out[(True, "pred")]
                prog.advance(bar)
            speed = [b / a for a, b in zip(rate[False], rate[True])]
            rows.append({"shots": shots, "mode": mode, "mean_prompt_tokens": sum(prompt_tokens) / len(prompt_tokens),
                         "full_examples_per_s": median_spread(rate[False]),
                         "reuse_examples_per_s": median_spread(rate[True]), "speedup": median_spread(speed),
                         "max_abs_logprob_diff": max_diff if mode == "score" else None,
                         "predictions_identical": agree})
    return rows


def _run_method(method, backend, task, prompt, examples, cache) -> float:
    """Evaluate ``prompt`` on ``examples`` one way; returns accuracy."""
    from lmopt.lm import LM
    from lmopt.prompt import evaluate_prompt

    if method in ("score_batched", "score_cache_hit"):
        return evaluate_prompt(LM(backend, cache=cache), task, prompt, examples, mode="score").score
    if method == "generate_batched":
        return evaluate_prompt(LM(backend), task, prompt, examples, mode="generate").score
    lm = LM(backend)  # per example: one generate call of batch size 1 each
    scores = [evaluate_prompt(lm, task, prompt, [e], mode="generate").score for e in examples]
    return sum(scores) / len(scores)


def _plot(results, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = results["examples_per_s"]
    names = list(eps)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(names, [eps[m]["median"] for m in names], yerr=[[eps[m]["median"] - eps[m]["min"] for m in names],
                                                           [eps[m]["max"] - eps[m]["median"] for m in names]],
           color=["#4472c4", "#a5a5a5", "#7f7f7f", "#70ad47"])
    ax.set_yscale("log")
    ax.set_ylabel("examples / s (log)")
    ax.set_title(f"tweets evaluation throughput, {results['model']}", fontsize=9)
    ax.tick_params(axis="x", rotation=15)
    save_plot(fig, out, "lm_throughput.png")


if __name__ == "__main__":
    main()
