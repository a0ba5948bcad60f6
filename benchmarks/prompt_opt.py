"""Prompt optimisers side by side at the same budget of task-LM evaluations (SmolLM2-135M-Instruct).

``python -m benchmarks.prompt_opt [--quick] [--out DIR] [--seeds N] [--evals B] [--tasks a,b] [--no-expo]``

For every task and seed, each method gets the same number of prompt evaluations on the validation split
(the seed prompt's evaluation included); the best prompt's test score is compared with the seed prompt's.
The embedded SmolLM2 is the task model and, where a method needs one, the proposer and judge. LM calls are
shared through one in-memory-per-run call cache (a prompt evaluated twice costs once), so calls are
reported as fresh and cached. Also measured: evaluator throughput (batched label scoring) against naive
per-example generation, and EXPO / EXPO-ES against the fixed meta-prompt on the LLM-plays-a-bandit task.

Scaled down for 2 shared CPU cores (the papers use 165 evaluations, 40 initial, 20 validation and up to
100 test examples): see DEFAULTS / QUICK below; every reduction is written into the JSON.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import median_spread, parse_args, save_plot, write_result

DEFAULTS = {"evals": 4, "n_train": 30, "n_val": 6, "n_test": 10, "seeds": 3, "n_initial": 1, "train_steps": 200,
            "tasks": ["tweets", "arithmetic", "letter_counting", "gsm8k"],
            "methods": ["random", "ease", "opro", "instinct", "spo", "ape"], "max_new_tokens": 24,
            "gsm8k_max_new_tokens": 64, "expo_horizon": 10, "throughput_n": 24, "embedder": "minilm"}
QUICK = {**DEFAULTS, "evals": 3, "n_train": 12, "n_val": 4, "n_test": 6, "seeds": 1, "tasks": ["tweets"],
         "methods": ["random", "ease"], "train_steps": 50, "expo_horizon": 0, "throughput_n": 8,
         "embedder": "hash"}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _task(name: str, cfg: dict[str, Any]):
    from lmopt.data import load_task

    if name == "tweets":
        t = load_task("tweets", per_class=60, seed=0)
    elif name == "gsm8k":
        t = load_task("gsm8k", limit=200)
        t.max_new_tokens = cfg["gsm8k_max_new_tokens"]
    else:
        t = load_task(name, size=200, seed=0)
        t.max_new_tokens = cfg["max_new_tokens"]
    return t


def _method(name: str, cfg: dict[str, Any]):
    from lmopt import prompt as P

    b, k, ts = cfg["evals"], cfg["n_initial"], cfg["train_steps"]
    return {
        "random": lambda: P.RandomSearch(n_shots=2),
        "ape": lambda: P.APE(n_subsamples=1, prompts_per_subsample=b, n_demos=3),
        "opro": lambda: P.OPRO(proposals_per_step=2, max_failed_steps=2),
        "ease": lambda: P.EASE(n_shots=2, n_candidates=200, n_initial=k, train_steps=ts, embedder=cfg["embedder"]),
        "instinct": lambda: P.INSTINCT(n_candidates=b + 2, n_initial=k, train_steps=ts, embedder=cfg["embedder"]),
        "spo": lambda: P.SPO(rounds=b, n_questions=3),
    }[name]()


def throughput(local: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """Examples/s of evaluate_prompt (batched label scoring) vs naive one-by-one greedy generation."""
    from lmopt.lm import LM, GenerationConfig
    from lmopt.prompt import Prompt, evaluate_prompt

    task = _task("tweets", cfg)
    ex = task.split(1, n_train=0, n_val=0, n_test=cfg["throughput_n"]).test
    p = Prompt(task.instruction)
    t0 = time.perf_counter()
    res = evaluate_prompt(LM(local), task, p, ex, mode="score")
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    lm = LM(local)
    naive_correct = 0
    for e in ex:
        out = lm.generate(p.render(task, e), GenerationConfig(max_new_tokens=task.max_new_tokens))[0][0].text
        naive_correct += task.score(out, e)
    t_naive = time.perf_counter() - t0
    return {"n": len(ex), "batched_score_examples_per_s": len(ex) / t_batched,
            "naive_generate_examples_per_s": len(ex) / t_naive, "speedup": t_naive / t_batched,
            "batched_accuracy": res.score, "naive_accuracy": naive_correct / len(ex)}


def expo_bench(local: Any, cfg: dict[str, Any], seeds: int) -> dict[str, Any]:
    from lmopt.lm import LM
    from lmopt.prompt.expo import EXPO, BernoulliBandit

    out: dict[str, Any] = {}
    for variant, kw in (("fixed", {"optimize": False}), ("expo", {}),
                        ("expo-es", {"exemplar_search": True, "exemplar_size": 4, "n_exemplar_sets": 4})):
        runs = []
        for s in range(seeds):
            env = BernoulliBandit((0.2, 0.2, 0.8, 0.2), seed=s)
            r = EXPO(n_descriptions=2, n_instructions=2, seed=s, train_steps=cfg["train_steps"],
                     embedder=cfg["embedder"], **kw).run(
                env, LM(local), horizon=cfg["expo_horizon"])
            runs.append({"reward": r.total_reward, "regret": r.cumulative_regret[-1] if r.arms else None,
                         "parse_failures": r.parse_failures, "calls": r.usage.get("total", {}).get("calls"),
                         "wall_s": r.wall_time_s, "arms": r.arms})
            _log(f"  expo {variant} seed {s}: reward {r.total_reward} regret {runs[-1]['regret']}")
        out[variant] = {"runs": runs, "reward": median_spread([x["reward"] for x in runs]),
                        "regret": median_spread([x["regret"] for x in runs if x["regret"] is not None] or [0])}
    return out


def main(argv: list[str] | None = None) -> None:
    def extra(p):
        p.add_argument("--evals", type=int, default=None, help="evaluations per run (default 6, quick 3)")
        p.add_argument("--tasks", default=None, help="comma-separated task names")
        p.add_argument("--methods", default=None, help="comma-separated method names")
        p.add_argument("--no-expo", action="store_true", help="skip the EXPO bandit part")
        p.add_argument("--expo-only", action="store_true", help="only the EXPO bandit part")
        p.add_argument("--from-partial", nargs="+", default=None, metavar="PARTIAL_JSON",
                       help="no new runs: summarise prompt_opt.partial.json files of interrupted runs")

    args = parse_args("prompt_opt", __doc__.splitlines()[0], default_seeds=3, argv=argv, extra=extra)
    cfg = dict(QUICK if args.quick else DEFAULTS)
    if args.evals:
        cfg["evals"] = args.evals
    if args.tasks:
        cfg["tasks"] = args.tasks.split(",")
    if args.methods:
        cfg["methods"] = args.methods.split(",")
    if args.expo_only:
        cfg["tasks"] = []
        cfg["expo_horizon"] = cfg["expo_horizon"] or DEFAULTS["expo_horizon"]
    seeds = args.seeds or cfg["seeds"]
    if args.from_partial:
        return _from_partial(args, args.from_partial)
    from lmopt.lm import LM, CallCache, LocalLM

    t_all = time.perf_counter()
    _log("loading SmolLM2-135M-Instruct ...")
    local = LocalLM(batch_size=8)
    tmp = tempfile.mkdtemp(prefix="lmopt-bench-")
    cache = CallCache(Path(tmp) / "calls.sqlite")
    results: dict[str, Any] = {"config": {**cfg, "seeds": seeds}, "tasks": {}}
    for tname in cfg["tasks"]:
        task = _task(tname, cfg)
        splits = task.split(0, n_train=cfg["n_train"], n_val=cfg["n_val"], n_test=cfg["n_test"])
        chat = not task.is_classification
        rows: dict[str, Any] = {}
        for m in cfg["methods"]:
            runs = []
            for s in range(seeds):
                t0 = time.perf_counter()
                res = _method(m, cfg).run(task, LM(local, cache=cache), budget=cfg["evals"], seed=s, splits=splits,
                                          chat=chat)
                u = res.usage.get("total", {})
                runs.append({"seed": s, "val": res.val_score, "test": res.test_score, "seed_val": res.seed_val_score,
                             "seed_test": res.seed_test_score, "evaluations": res.n_evaluations,
                             "calls": u.get("calls", 0), "cached_calls": u.get("cached_calls", 0),
                             "tokens": u.get("total_tokens", 0), "usage": res.usage, "wall_s": time.perf_counter() - t0,
                             "stop": res.stop_reason, "parse_failures": res.parse_failures,
                             "best_prompt": res.best_prompt.to_dict()})
                _log(f"{tname} {m} seed {s}: val {res.val_score:.3f} test {res.test_score} (seed prompt "
                     f"{res.seed_test_score}) calls {runs[-1]['calls']} {runs[-1]['wall_s']:.0f}s")
                _write_partial(args.out, results, tname, m, runs)
            rows[m] = _row(runs)
        _vs_random(rows)
        results["tasks"][tname] = {"n": [len(splits.train), len(splits.validation), len(splits.test)],
                                   "mode": "score" if task.is_classification else "generate (chat)", "methods": rows}
    if not args.expo_only:
        _log("evaluator throughput ...")
        results["throughput"] = throughput(local, cfg)
    if cfg["expo_horizon"] and not args.no_expo:
        _log("EXPO on the LLM bandit ...")
        results["expo"] = expo_bench(local, cfg, seeds)
    results["wall_time_s"] = time.perf_counter() - t_all
    results["note"] = ("2 shared CPU cores under heavy load from other jobs: wall times are noisy; compare ratios "
                       "within this run only. Budgets scaled down from the papers (165 evaluations, 40 initial).")
    _plots(results, args.out)
    beats = {t: [m for m, r in d["methods"].items() if m != "random" and r.get("test_minus_random", 0) > 0]
             for t, d in results["tasks"].items()}
    summary = {"tasks": list(results["tasks"]), "methods": cfg["methods"], "seeds": seeds, "evals": cfg["evals"],
               "median_test": {t: {m: round(r["test"]["median"], 3) for m, r in d["methods"].items()}
                               for t, d in results["tasks"].items()},
               "beat_random": beats,
               "throughput_speedup": round(results["throughput"]["speedup"], 2) if "throughput" in results else None,
               "wall_time_s": round(results["wall_time_s"], 1)}
    write_result(args, results, summary)


def _row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("val", "test", "calls", "tokens", "wall_s")
    return {"runs": runs, **{k: median_spread([r[k] for r in runs]) for k in keys},
            "gain_vs_seed": median_spread([r["test"] - r["seed_test"] for r in runs])}


def _vs_random(rows: dict[str, Any]) -> None:
    base = rows.get("random")
    for row in rows.values():
        if base:
            row["test_minus_random"] = row["test"]["median"] - base["test"]["median"]
            row["wall_ratio_vs_random"] = row["wall_s"]["median"] / max(1e-9, base["wall_s"]["median"])


def _from_partial(args: Any, paths: list[str]) -> None:
    """Summaries, plots and NAME.json from the per-run records of interrupted runs (nothing re-run)."""
    from lmopt._io import read_json

    results: dict[str, Any] = {"tasks": {}, "partial": True, "sources": paths}
    for p in paths:
        part = read_json(p)
        if part is None:
            raise SystemExit(f"{p} does not exist")
        results["config"] = part["config"]
        for task, methods in part["runs"].items():
            rows = {m: _row(runs) for m, runs in methods.items() if runs}
            _vs_random(rows)
            results["tasks"][task] = {"methods": rows}
    _plots(results, args.out)
    summary = {"partial": True, "median_test": {t: {m: round(r["test"]["median"], 3) for m, r in d["methods"].items()}
                                                for t, d in results["tasks"].items()},
               "seeds": {t: {m: len(r["runs"]) for m, r in d["methods"].items()} for t, d in results["tasks"].items()}}
    write_result(args, results, summary)


def _write_partial(out: str, results: dict[str, Any], task: str, method: str, runs: list[dict[str, Any]]) -> None:
    """Runs finished so far (a long run interrupted still leaves its numbers): OUT/prompt_opt.partial.json."""
    from lmopt._io import read_json, write_json_atomic

    path = Path(out) / "prompt_opt.partial.json"
    part = read_json(path, {"config": results["config"], "runs": {}})
    part["runs"].setdefault(task, {})[method] = runs
    write_json_atomic(path, part)


def _plots(results: dict[str, Any], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results["tasks"])
    methods = list(dict.fromkeys(m for d in results["tasks"].values() for m in d["methods"]))
    if tasks:
        _task_plot(results, out, tasks, methods)
    if "expo" in results:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        names = list(results["expo"])
        med = [results["expo"][n]["reward"]["median"] for n in names]
        ax.bar(names, med, color=["#a5a5a5", "#4472c4", "#ed7d31"])
        ax.set_ylabel(f"total reward over {results['config']['expo_horizon']} pulls (median)")
        ax.set_title("LLM plays a 4-armed bandit", fontsize=9)
        save_plot(fig, out, "prompt_opt_expo.png")


def _task_plot(results: dict[str, Any], out: str, tasks: list[str], methods: list[str]) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(tasks) * max(1, len(methods)) / 3), 3.6))
    w = 0.8 / (len(methods) + 1)
    x = np.arange(len(tasks))
    seed_med = [np.median([r["seed_test"] for r in next(iter(results["tasks"][t]["methods"].values()))["runs"]])
                for t in tasks]
    ax.bar(x, seed_med, w, color="#a5a5a5", label="seed prompt")
    nan = {"median": float("nan"), "min": float("nan"), "max": float("nan")}
    for j, m in enumerate(methods):  # a method missing on a task (interrupted run) is left blank
        d = [results["tasks"][t]["methods"].get(m, {}).get("test", nan) for t in tasks]
        med = [v["median"] for v in d]
        err = [[v["median"] - v["min"] for v in d], [v["max"] - v["median"] for v in d]]
        ax.bar(x + (j + 1) * w, med, w, yerr=err, capsize=2, label=m)
    ax.set_xticks(x + w * len(methods) / 2, tasks)
    ax.set_ylabel("test score of best prompt (median, min–max)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=4)
    ax.set_title(f"prompt optimisers, {results['config']['evals']} evaluations each", fontsize=9)
    save_plot(fig, out, "prompt_opt_test.png")


if __name__ == "__main__":
    main()
