"""Prompt optimisers side by side at the same budget of task-LM evaluations (SmolLM2-135M-Instruct).

``python -m benchmarks.prompt_opt [--quick] [--out DIR] [--seeds N] [--evals B] [--initial K] [--tasks auto|a,b]
[--max-tasks N] [--methods m,n] [--fixed-split] [--model ID] [--device D] [--no-expo | --expo-only]``, or
``--combine JSON... --out DIR``

A spread stage first scores random exemplar sets and model-induced instructions on each candidate task (on a
split no reported seed uses) and, with ``--tasks auto``, keeps the tasks whose prompts differ beyond binomial
test noise. Validation and test examples are resampled per seed; each method is compared with random search
and with the seed prompt by paired differences with 95% t-intervals over the seeds.

For every task and seed, each method gets the same number of prompt evaluations on the validation split
(the seed prompt's evaluation included); the best prompt's test score is compared with the seed prompt's.
The embedded SmolLM2 is the task model and, where a method needs one, the proposer and judge. Every
(method, seed) run has its own call cache, so its calls and wall time do not depend on which runs came
before it (a prompt evaluated twice within a run costs once). Also measured: evaluator throughput (batched
label scoring) against naive per-example generation, and EXPO / EXPO-ES against the fixed meta-prompt on
the LLM-plays-a-bandit task.

Scaled down for 2 shared CPU cores (the papers use 165 evaluations, 40 initial, 20 validation and up to
100 test examples): see DEFAULTS / QUICK below; every reduction is written into the JSON.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import median_spread, paired_difference, parse_args, save_plot, t_975, write_result
from lmopt._report import chance_level, noise_level

# Each task: loader name + kwargs, split sizes (train, validation, test) and, for generation, new tokens.
TASKS: dict[str, dict[str, Any]] = {
    # instruction-induction tasks generated from the embedded word list (closed answer sets, label-scored)
    "first_letter": {"load": ("first_letter", {"size": 400, "seed": 0}), "split": (40, 40, 100)},
    "last_letter": {"load": ("last_letter", {"size": 400, "seed": 0}), "split": (40, 40, 100)},
    "second_letter": {"load": ("second_letter", {"size": 400, "seed": 0}), "split": (40, 40, 100)},
    "word_length": {"load": ("word_length", {"size": 400, "seed": 0}), "split": (40, 40, 100)},
    "larger_animal": {"load": ("larger_animal", {"size": 400, "seed": 0}), "split": (40, 40, 100)},
    # earlier benchmark tasks: SmolLM2-135M sits near chance (syllogism, ransom_note) or at 0 (gsm8k) on them
    "tweets": {"load": ("tweets", {"per_class": 40, "seed": 0}), "split": (20, 20, 60)},
    "syllogism": {"load": ("rg:syllogism", {"size": 400, "seed": 0, "labels": "auto", "per_class": 50}),
                  "split": (20, 20, 60)},
    "ransom_note": {"load": ("rg:ransom_note", {"size": 300, "seed": 0, "labels": "auto", "per_class": 50}),
                    "split": (20, 20, 60)},
    "gsm8k": {"load": ("gsm8k", {"limit": 200}), "split": (20, 6, 12), "max_new_tokens": 64},
}
SPREAD_TASKS = ["first_letter", "last_letter", "second_letter", "word_length"]
SPREAD_SPLIT_SEED = 1000  # the spread that picks the tasks is measured on a split no reported seed uses
POOL_METHODS, PROPOSER_METHODS = ("random", "ease", "ease_released", "instinct"), ("ape", "opro", "spo", "textgrad")
WHITE_BOX_METHODS = ("greater",)  # the task model optimises its own prompt from its gradients
POOL_STAGE_METHODS = ("random", "ease")  # the fixed-pool stage: methods that can search one shared pool
DEFAULTS = {"evals": 30, "seeds": 5, "n_initial": 8, "train_steps": 200, "tasks": "auto", "max_tasks": 1,
            "spread_tasks": SPREAD_TASKS, "spread_prompts": 8, "methods": ["random", "ape", "opro", "ease",
                                                                            "ease_released", "instinct", "spo"],
            "expo_horizon": 10, "throughput_n": 24, "embedder": "minilm", "split_override": None,
            "resample_splits": True, "pool_seeds": 10, "pool_candidates": 100, "pool_universe": (100, 200),
            "feedback_tokens": 96, "update_tokens": 96}
KNOWN_METHODS = DEFAULTS["methods"] + ["textgrad", "greater"]
QUICK = {**DEFAULTS, "evals": 3, "seeds": 1, "tasks": ["tweets"], "methods": ["random", "ease"], "n_initial": 1,
         "train_steps": 50, "expo_horizon": 0, "throughput_n": 8, "embedder": "hash", "split_override": (12, 4, 6),
         "spread_tasks": ["first_letter"], "spread_prompts": 2, "pool_seeds": 2, "pool_candidates": 4,
         "pool_universe": (6, 8)}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _task(name: str, cfg: dict[str, Any]):
    """The task and its split sizes (``--quick`` shrinks the splits)."""
    from lmopt.data import load_task

    spec = TASKS[name]
    loader, kwargs = spec["load"]
    t = load_task(loader, **kwargs)
    if "max_new_tokens" in spec:
        t.max_new_tokens = spec["max_new_tokens"]
    return t, tuple(cfg["split_override"] or spec["split"])


def _method(name: str, cfg: dict[str, Any]):
    from lmopt import prompt as P

    b, k, ts = cfg["evals"], cfg["n_initial"], cfg["train_steps"]
    return {
        "random": lambda: P.RandomSearch(n_shots=2),
        "ape": lambda: P.APE(n_subsamples=1, prompts_per_subsample=b, n_demos=3),
        "opro": lambda: P.OPRO(proposals_per_step=2, max_failed_steps=2),
        "ease": lambda: P.EASE(n_shots=2, n_candidates=200, n_initial=k, train_steps=ts, embedder=cfg["embedder"]),
        "ease_released": lambda: P.EASE(n_shots=2, search="released", n_initial=k, train_steps=ts,
                                        embedder=cfg["embedder"]),
        "instinct": lambda: P.INSTINCT(n_candidates=b + 2, n_initial=k, train_steps=ts, embedder=cfg["embedder"]),
        "spo": lambda: P.SPO(rounds=b, n_questions=3),
        # the released loop (3 epochs × 4 steps, minibatch 3, revert on validation); replies cut for a CPU
        "textgrad": lambda: P.TextGrad(feedback_tokens=cfg["feedback_tokens"], update_tokens=cfg["update_tokens"]),
        "greater": lambda: P.GReaTer(batch_size=8),
    }[name]()


def _run_one(opt: Any, task: Any, lm: Any, budget: int, seed: int, splits: Any, chat: bool,
             optimizer_lm: Any = None) -> dict[str, Any]:
    """One (method, seed) run and the numbers the report keeps of it."""
    t0 = time.perf_counter()
    res = opt.run(task, lm, budget=budget, seed=seed, splits=splits, chat=chat, optimizer_lm=optimizer_lm)
    u = res.usage.get("total", {})
    return {"seed": seed, "val": res.val_score, "test": res.test_score, "seed_val": res.seed_val_score,
            "seed_test": res.seed_test_score, "evaluations": res.n_evaluations, "calls": u.get("calls", 0),
            "cached_calls": u.get("cached_calls", 0), "tokens": u.get("total_tokens", 0), "usage": res.usage,
            "wall_s": time.perf_counter() - t0, "stop": res.stop_reason, "parse_failures": res.parse_failures,
            "best_prompt": res.best_prompt.to_dict(),
            # context growth: the prompt's length and the update prompt's length at every TextGrad step
            "prompt_chars": [h["prompt_chars"] for h in res.history if h["kind"] == "textgrad_step"],
            "update_prompt_chars": [h["update_prompt_chars"] for h in res.history if h["kind"] == "textgrad_step"],
            "steps": sum(h["kind"] in ("textgrad_step", "greater_step") for h in res.history)}


def _brief(run: dict[str, Any]) -> str:
    return (f"val {run['val']:.3f} test {run['test']} (seed prompt {run['seed_test']}) calls {run['calls']} "
            f"cached {run['cached_calls']} {run['wall_s']:.0f}s")


def pool_splits(task: Any, sizes: tuple[int, int, int], universe: tuple[int, int], seeds: int) -> dict[int, Any]:
    """One training split for every seed (so one candidate pool indexes the same exemplars) and per seed a
    validation / test sample from fixed universes of ``universe`` examples: a prompt scored on an example
    once is a cache hit for every later seed."""
    import random

    from lmopt.data.task import Splits

    n_train, n_val, n_test = sizes
    if n_val > universe[0] or n_test > universe[1]:
        raise ValueError(f"validation/test sizes {n_val}/{n_test} exceed the universes {universe}")
    base = task.split(0, n_train=n_train, n_val=universe[0], n_test=universe[1])
    out = {}
    for s in range(seeds):
        rng = random.Random(f"pool-stage:{s}")
        out[s] = Splits(base.train, rng.sample(base.validation, n_val), rng.sample(base.test, n_test))
    return out


def pool_stage(local: Any, cfg: dict[str, Any], tname: str, tmp: Path, out: str,
               results: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Random search and EASE over one fixed pool of ``pool_candidates`` exemplar sets (``pool_seed=0``) for
    ``pool_seeds`` seeds, one call cache shared by all runs: later seeds cost few fresh model calls."""
    from lmopt import prompt as P
    from lmopt.lm import LM, CallCache

    task, sizes = _task(tname, cfg)
    seeds, n_cand = cfg["pool_seeds"], cfg["pool_candidates"]
    split_of = pool_splits(task, sizes, tuple(cfg["pool_universe"]), seeds)
    chat = not task.is_classification
    key = f"{tname}, fixed pool"
    meta = {"n": list(sizes), "mode": "score" if task.is_classification else "generate (chat)",
            "evals": cfg["evals"], "resampled_splits": True, "fixed_pool": {
                "candidates": n_cand, "pool_seed": 0, "val_universe": cfg["pool_universe"][0],
                "test_universe": cfg["pool_universe"][1], "shared_cache": True},
            "chance": statistics.mean(chance_level(task, sp.test) or 0.0 for sp in split_of.values())
            if task.is_classification else None}
    make = {"random": lambda: P.RandomSearch(n_shots=2, n_candidates=n_cand, pool_seed=0),
            "ease": lambda: P.EASE(n_shots=2, n_candidates=n_cand, pool_seed=0, n_initial=cfg["n_initial"],
                                   train_steps=cfg["train_steps"], embedder=cfg["embedder"])}
    cache = CallCache(tmp / f"calls-{tname}-pool.sqlite")
    rows: dict[str, Any] = {}
    for m in POOL_STAGE_METHODS:
        runs = []
        for s in range(seeds):
            runs.append(_run_one(make[m](), task, LM(local, cache=cache), cfg["evals"], s, split_of[s], chat))
            _log(f"{key} {m} seed {s}: {_brief(runs[-1])}")
            _write_partial(out, results, key, meta, m, runs)
        rows[m] = _row(runs)
    cache.close()
    _vs_random(rows)
    return key, {**meta, "methods": rows}


def throughput(local: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """Examples/s of evaluate_prompt (batched label scoring) vs naive one-by-one greedy generation."""
    from lmopt.lm import LM, GenerationConfig
    from lmopt.prompt import Prompt, evaluate_prompt

    task, _ = _task("tweets", cfg)
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
            # the best arm moves with the seed: SmolLM2 answers "2" before seeing any reward, so a fixed best
            # arm at index 2 would hand every agent zero regret
            means = [0.2] * 4
            means[s % 4] = 0.8
            env = BernoulliBandit(tuple(means), seed=s)
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


def prompt_spread(local: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """Per task, on a split no reported seed uses: test accuracy of the seed prompt, of ``spread_prompts``
    random exemplar sets (the seed instruction with a random ordered 2-shot set, the pool-driven methods'
    space) and of as many instructions induced by the task model from 3 demonstrations (APE forward
    generation, the proposer-driven methods' space). ``signal`` is the standard deviation across one kind of
    prompt over the binomial standard deviation of one accuracy: near 1, such prompts differ no more than
    test noise, and optimisers searching them cannot be told apart on the task."""
    import random

    from lmopt.lm import LM
    from lmopt.prompt import APE, Prompt, evaluate_prompt

    out = {}
    for name in cfg["spread_tasks"]:
        t0 = time.perf_counter()
        task, (n_train, n_val, n_test) = _task(name, cfg)
        sp = task.split(SPREAD_SPLIT_SEED, n_train=n_train, n_val=n_val, n_test=n_test)
        chat = not task.is_classification
        k = cfg["spread_prompts"]

        def test_score(p: Any, task: Any = task, sp: Any = sp, chat: bool = chat) -> float:
            return evaluate_prompt(LM(local), task, p, list(sp.test), chat=chat).score

        rng = random.Random(f"spread:{name}")
        seed_score = test_score(Prompt(task.instruction))
        exemplar = [test_score(Prompt(task.instruction, tuple(rng.sample(list(sp.train), 2)))) for _ in range(k)]
        ape = APE(n_subsamples=1, prompts_per_subsample=k, n_demos=3).run(
            task, LM(local), budget=k + 1, splits=sp, evaluate_test=False, chat=chat)
        induced = [h["prompt"]["instruction"] for h in ape.history if h["kind"] == "eval" and h["source"] == "ape"]
        instruction = [test_score(Prompt(i)) for i in induced]
        axes = {}
        for axis, scores in (("exemplars", exemplar), ("instructions", instruction)):
            if len(scores) < 2:
                continue
            binom = noise_level(statistics.mean(scores), len(sp.test))
            sd = statistics.stdev(scores)
            axes[axis] = {"scores": scores, "sd": sd, "binomial_sd": binom, "signal": sd / binom,
                          "best_minus_seed": max(scores) - seed_score}
        out[name] = {"n_test": len(sp.test), "seed_prompt": seed_score, "axes": axes,
                     "signal": max((a["signal"] for a in axes.values()), default=0.0),
                     "chance": chance_level(task, sp.test), "wall_s": time.perf_counter() - t0}
        _log(f"  {name}: seed prompt {seed_score:.3f}; " + "; ".join(
            f"{ax} {min(a['scores']):.3f}-{max(a['scores']):.3f} (signal {a['signal']:.1f})" for ax, a in axes.items()))
    return out


def choose_tasks(spread: dict[str, Any], max_tasks: int) -> list[str]:
    """The tasks whose prompt spread is largest beyond noise (signal >= 2), at most ``max_tasks``."""
    ranked = sorted((t for t, d in spread.items() if d["signal"] >= 2.0), key=lambda t: -spread[t]["signal"])
    if not ranked:
        raise SystemExit(f"no task of the spread stage separates prompts beyond noise: {spread}")
    return ranked[:max_tasks]


def prior_mdd(p: float, n_test: int, seeds: int) -> float | None:
    """Before running: the smallest mean difference detectable over ``seeds`` paired runs if the only noise were
    the binomial test noise of two independent accuracies near ``p`` on ``n_test`` examples (None for 1 seed)."""
    if seeds < 2:
        return None
    return t_975(seeds - 1) * 2 ** 0.5 * noise_level(p, n_test) / seeds ** 0.5


def main(argv: list[str] | None = None) -> None:
    def extra(p):
        p.add_argument("--evals", type=int, default=None, help="evaluations per run (default 30, quick 3)")
        p.add_argument("--model", default=None,
                       help="task/proposer model: a Hugging Face id or folder (default: the embedded SmolLM2)")
        p.add_argument("--device", default="cpu", help="torch device of the model, e.g. cuda")
        p.add_argument("--initial", type=int, default=None,
                       help="random initial evaluations of EASE / INSTINCT before NeuralUCB (default 8, quick 1)")
        p.add_argument("--tasks", default=None,
                       help="comma-separated task names, or 'auto' (default): the tasks of the spread stage on which "
                            "random prompts differ most beyond binomial noise")
        p.add_argument("--max-tasks", type=int, default=None, help="tasks 'auto' keeps (default 1)")
        p.add_argument("--fixed-split", action="store_true",
                       help="one validation/test split for every seed (default: resampled per seed)")
        p.add_argument("--methods", default=None, help="comma-separated method names")
        p.add_argument("--pool-seeds", type=int, default=None,
                       help="seeds of the fixed-pool stage (random search and EASE over one pool, one shared call "
                            "cache; default 10, quick 2; 0 skips it)")
        p.add_argument("--optimizer-url", default=None,
                       help="an OpenAI-compatible server for the proposer / feedback / update calls (the task model "
                            "stays local; GReaTer has no optimiser model)")
        p.add_argument("--optimizer-model", default=None, help="the model name on --optimizer-url")
        p.add_argument("--no-spread", action="store_true",
                       help="skip the spread stage and the throughput part (needs --tasks with names)")
        p.add_argument("--no-expo", action="store_true", help="skip the EXPO bandit part")
        p.add_argument("--expo-only", action="store_true", help="only the EXPO bandit part")
        p.add_argument("--pool-only", action="store_true",
                       help="only the fixed-pool stage on --tasks (no spread stage, no other runs)")
        p.add_argument("--combine", nargs="+", default=None, metavar="JSON",
                       help="no new runs: one report from prompt_opt.json / prompt_opt.partial.json files")

    args = parse_args("prompt_opt", __doc__.splitlines()[0], default_seeds=DEFAULTS["seeds"], argv=argv,
                      extra=extra)
    cfg = dict(QUICK if args.quick else DEFAULTS)
    if args.max_tasks:
        cfg["max_tasks"] = args.max_tasks
    if args.fixed_split:
        cfg["resample_splits"] = False
    if args.evals:
        cfg["evals"] = args.evals
    if args.pool_seeds is not None:
        cfg["pool_seeds"] = args.pool_seeds
    if args.initial:
        cfg["n_initial"] = args.initial
    if args.tasks:
        cfg["tasks"] = "auto" if args.tasks == "auto" else args.tasks.split(",")
        if cfg["tasks"] != "auto" and set(cfg["tasks"]) - set(TASKS):
            raise SystemExit(f"unknown task(s) {sorted(set(cfg['tasks']) - set(TASKS))}; choose from {sorted(TASKS)}")
    if args.methods:
        cfg["methods"] = args.methods.split(",")
        unknown = sorted(set(cfg["methods"]) - set(KNOWN_METHODS))
        if unknown:
            raise SystemExit(f"unknown method(s) {unknown}; choose from {KNOWN_METHODS}")
    if (args.optimizer_url is None) != (args.optimizer_model is None):
        raise SystemExit("--optimizer-url and --optimizer-model go together (the server and its model name)")
    if args.pool_only and (cfg["tasks"] == "auto" or not cfg["pool_seeds"]):
        raise SystemExit("--pool-only needs --tasks (names, not auto) and --pool-seeds >= 1")
    if args.pool_only:
        cfg["methods"], cfg["spread_tasks"], cfg["expo_horizon"] = [], [], 0
    if args.expo_only:
        cfg["tasks"] = []
        cfg["expo_horizon"] = cfg["expo_horizon"] or DEFAULTS["expo_horizon"]
    seeds = args.seeds or cfg["seeds"]
    if args.combine:
        return _combine(args, args.combine)
    from lmopt.lm import LM, CallCache, LocalLM

    t_all = time.perf_counter()
    _log(f"loading {args.model or 'SmolLM2-135M-Instruct'} on {args.device} ...")
    local = LocalLM(args.model, device=args.device, batch_size=8)
    remote = None
    if args.optimizer_url:
        from lmopt.lm import OpenAICompatibleLM

        # split_n: llama.cpp servers refuse n above their slot count; n requests of one sample each instead
        remote = OpenAICompatibleLM(args.optimizer_model, args.optimizer_url, max_concurrency=4, timeout=300,
                                    split_n=True)
    tmp = tempfile.mkdtemp(prefix="lmopt-bench-")
    results: dict[str, Any] = {"config": {**cfg, "seeds": seeds, "model": args.model or "SmolLM2-135M-Instruct",
                                          "device": args.device, "optimizer_model": remote.name if remote else None},
                               "tasks": {}}
    if args.no_spread:
        if cfg["tasks"] == "auto":
            raise SystemExit("--no-spread needs --tasks with task names (the spread stage is what picks 'auto')")
        cfg["spread_tasks"] = []
    if cfg["tasks"] == "auto" or (cfg["spread_tasks"] and not args.expo_only):
        _log(f"spread of test accuracy across random prompts on {', '.join(cfg['spread_tasks'])} ...")
        results["spread"] = prompt_spread(local, cfg)
    if cfg["tasks"] == "auto":
        cfg["tasks"] = choose_tasks(results["spread"], cfg["max_tasks"])
        results["config"]["tasks"] = cfg["tasks"]
        _log(f"tasks chosen by spread: {cfg['tasks']}")
    for tname in cfg["tasks"] if cfg["methods"] else []:
        task, (n_train, n_val, n_test) = _task(tname, cfg)
        split_of = {s: task.split(s if cfg["resample_splits"] else 0, n_train=n_train, n_val=n_val, n_test=n_test)
                    for s in range(seeds)}
        splits = split_of[0]
        chat = not task.is_classification
        meta = {"n": [len(splits.train), len(splits.validation), len(splits.test)],
                "chance": statistics.mean(chance_level(task, sp.test) or 0.0 for sp in split_of.values())
                if task.is_classification else None,
                "resampled_splits": cfg["resample_splits"],
                "mode": "score" if task.is_classification else "generate (chat)", "evals": cfg["evals"]}
        rows: dict[str, Any] = {}
        for m in cfg["methods"]:
            runs = []
            for s in range(seeds):
                cache = CallCache(Path(tmp) / f"calls-{tname}-{m}-{s}.sqlite")  # own accounting per run
                opt_lm = LM(remote, cache=cache) if remote is not None else None
                runs.append(_run_one(_method(m, cfg), task, LM(local, cache=cache), cfg["evals"], s, split_of[s], chat,
                                     optimizer_lm=opt_lm))
                cache.close()
                _log(f"{tname} {m} seed {s}: {_brief(runs[-1])}")
                _write_partial(args.out, results, tname, meta, m, runs)
            rows[m] = _row(runs)
        _vs_random(rows)
        results["tasks"][tname] = {**meta, "methods": rows}
    for tname in list(cfg["tasks"]) if cfg["pool_seeds"] else []:
        key, entry = pool_stage(local, cfg, tname, Path(tmp), args.out, results)
        results["tasks"][key] = entry
    if not (args.expo_only or args.pool_only or args.no_spread):
        _log("evaluator throughput ...")
        results["throughput"] = throughput(local, cfg)
    if cfg["expo_horizon"] and not args.no_expo:
        _log("EXPO on the LLM bandit ...")
        results["expo"] = expo_bench(local, cfg, seeds)
    results["wall_time_s"] = time.perf_counter() - t_all
    results["note"] = ("Wall times depend on the machine and its load: compare ratios within one run only. "
                       "Budgets scaled down from the papers (165 evaluations, 40 initial).")
    _plots(results, args.out)
    (Path(args.out) / "prompt_opt.md").write_text(_markdown(results))
    beats = {t: [m for m, r in d["methods"].items() if m != "random" and r.get("test_minus_random", 0) > 0]
             for t, d in results["tasks"].items()}
    def _paired(r: dict[str, Any]) -> dict[str, Any]:
        return (r.get("vs_random_same_seed") or {}).get("paired") or {}

    # beyond noise *and* above random: an interval that excludes 0 from below is a loss, not a win
    beyond = {t: [m for m, r in d["methods"].items()
                  if m != "random" and _paired(r).get("beyond_noise") and _paired(r).get("mean", 0) > 0]
              for t, d in results["tasks"].items()}
    worse = {t: [m for m, r in d["methods"].items()
                 if m != "random" and _paired(r).get("beyond_noise") and _paired(r).get("mean", 0) < 0]
             for t, d in results["tasks"].items()}
    summary = {"tasks": list(results["tasks"]), "methods": cfg["methods"], "seeds": seeds, "evals": cfg["evals"],
               "median_test": {t: {m: round(r["test"]["median"], 3) for m, r in d["methods"].items()}
                               for t, d in results["tasks"].items()},
               "beat_random": beats, "beat_random_beyond_noise": beyond, "below_random_beyond_noise": worse,
               "spread_signal": {t: round(d["signal"], 2) for t, d in results.get("spread", {}).items()},
               "throughput_speedup": round(results["throughput"]["speedup"], 2) if "throughput" in results else None,
               "wall_time_s": round(results["wall_time_s"], 1)}
    write_result(args, results, summary)


def _row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("val", "test", "calls", "tokens", "wall_s")
    gains = [r["test"] - r["seed_test"] for r in runs]
    return {"runs": runs, **{k: median_spread([r[k] for r in runs]) for k in keys},
            "gain_vs_seed": {**median_spread(gains), "paired": paired_difference(gains)}}


def _vs_random(rows: dict[str, Any]) -> None:
    """Median gap to random search, wins/ties/losses against it on the same seed, and the wall-time ratio."""
    base = rows.get("random")
    if not base:
        return
    base_test = {r["seed"]: r["test"] for r in base["runs"]}
    for row in rows.values():
        row["test_minus_random"] = row["test"]["median"] - base["test"]["median"]
        row["wall_ratio_vs_random"] = row["wall_s"]["median"] / max(1e-9, base["wall_s"]["median"])
        diffs = [r["test"] - base_test[r["seed"]] for r in row["runs"] if r["seed"] in base_test]
        row["vs_random_same_seed"] = {"wins": sum(d > 1e-9 for d in diffs), "ties": sum(abs(d) <= 1e-9 for d in diffs),
                                      "losses": sum(d < -1e-9 for d in diffs), "paired": paired_difference(diffs)}


def _markdown(results: dict[str, Any]) -> str:
    """Result tables for docs/benchmarks: the spread stage, then per task one table (pool-driven methods first,
    then proposer-driven ones) and each method's best prompt on seed 0."""
    lines = []
    if results.get("spread"):
        k = results["config"].get("spread_prompts", "?")
        lines += ["### Which tasks can separate prompt optimisers (spread stage)", "",
                  f"On a split of seed {SPREAD_SPLIT_SEED} (not a reported seed): the seed prompt, {k} random 2-shot "
                  f"exemplar sets with the seed instruction, and {k} instructions the model induced from 3 "
                  "demonstrations (APE forward generation), each scored on the test split. signal = sd across "
                  "the prompts of one kind / binomial sd of one accuracy (≈1: prompts differ by test noise only); "
                  "best − seed: how far the best such prompt is above the seed prompt.", "",
                  "| task | n test | chance | seed prompt | kind | scores [min, max] | sd | binomial sd | signal "
                  "| best − seed |", "|---|---|---|---|---|---|---|---|---|---|"]
        for t, d in sorted(results["spread"].items(), key=lambda kv: -kv[1]["signal"]):
            ch = "–" if d.get("chance") is None else f"{d['chance']:.3f}"
            for axis, a in d.get("axes", {}).items():
                r = a["scores"]
                lines.append(f"| {t} | {d['n_test']} | {ch} | {d['seed_prompt']:.3f} | {axis} | "
                             f"{statistics.median(r):.3f} [{min(r):.3f}, {max(r):.3f}] | {a['sd']:.3f} | "
                             f"{a['binomial_sd']:.3f} | {a['signal']:.1f} | {a['best_minus_seed']:+.3f} |")
        lines.append("")
    for task, d in results["tasks"].items():
        n = d.get("n")
        head = f"### {task}" + (f" (train/val/test = {n[0]}/{n[1]}/{n[2]}, {d['mode']}" if n else " (")
        lines += [head + f"{', ' if n else ''}{d.get('evals', '?')} evaluations per run)", ""]
        if n and d.get("methods"):
            seeds = max(r["test"]["n"] for r in d["methods"].values())
            p = statistics.median(r["test"]["median"] for r in d["methods"].values())
            mdd = prior_mdd(p, n[2], seeds)
            lines += ["Before running, binomial test noise alone allows a smallest detectable mean difference of "
                      + (f"{mdd:.3f}" if mdd is not None else "n/a")
                      + f" over {seeds} paired seeds at 95% (accuracy ≈ {p:.2f}, {n[2]} test examples); the "
                      "columns `mean Δ vs random` and `vs seed prompt` give the measured mean paired difference ± "
                      "the half-width of its 95% t-interval over the seeds (✓: beyond it)."
                      + (" Validation and test examples are resampled per seed." if d.get("resampled_splits")
                         else ""), ""]
        if d.get("fixed_pool"):
            fp = d["fixed_pool"]
            calls = {m: [r["calls"] for r in row["runs"]] for m, row in d["methods"].items()}
            lines += [f"Fixed pool: every run searches the same {fp['candidates']} 2-shot exemplar sets (pool seed "
                      f"{fp['pool_seed']}) over one training split; validation and test examples are drawn per seed "
                      f"from fixed universes of {fp['val_universe']} and {fp['test_universe']} examples, and all "
                      "runs share one call cache, so a seed re-scores little: fresh LM calls per run, in seed order: "
                      + "; ".join(f"{m} {', '.join(str(c) for c in cs)}" for m, cs in calls.items()) + ".", ""]
        lines += ["| method | kind | seeds | test median [min, max] | seed-prompt test | mean Δ vs seed prompt "
                  "| mean Δ vs random | W/T/L vs random | val median | fresh LM calls | wall s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        order = sorted(d["methods"], key=lambda m: (m not in POOL_METHODS, m != "random"))
        for m in order:
            r = d["methods"][m]
            t, wtl = r["test"], r.get("vs_random_same_seed")
            seed_test = statistics.median(x["seed_test"] for x in r["runs"])
            kind = ("pool" if m in POOL_METHODS else "proposer" if m in PROPOSER_METHODS
                    else "white-box" if m in WHITE_BOX_METHODS else "–")
            lines.append(
                f"| {m} | {kind} | {t['n']} | {t['median']:.3f} [{t['min']:.3f}, {t['max']:.3f}] | {seed_test:.3f} | "
                f"{_pm(r['gain_vs_seed'].get('paired'))} | "
                + (_pm(wtl.get("paired")) if wtl and m != "random" else "–") + " | "
                + (f"{wtl['wins']}/{wtl['ties']}/{wtl['losses']}" if wtl and m != "random" else "–")
                + f" | {r['val']['median']:.3f} | {r['calls']['median']:.0f} | {r['wall_s']['median']:.0f} |")
        lines += ["", "Best prompt of seed 0 (instruction, number of exemplars):", ""]
        for m in order:
            bp = d["methods"][m]["runs"][0]["best_prompt"]
            instr = " ".join(bp["instruction"].split())
            instr = instr if len(instr) <= 140 else instr[:137] + "..."
            lines.append(f"- {m}: \"{instr}\" + {len(bp['exemplars'])} exemplars")
        lines.append("")
    return "\n".join(lines)


def _pm(paired: dict[str, Any] | None) -> str:
    """``+0.050 ± 0.031 ✓`` (mean paired difference, 95% half-width, beyond it) or the mean alone."""
    if not paired:
        return "–"
    if paired.get("ci95") is None:
        return f"{paired['mean']:+.3f}"
    return f"{paired['mean']:+.3f} ± {paired['ci95']:.3f}" + (" ✓" if paired["beyond_noise"] else "")


def _combine(args: Any, paths: list[str]) -> None:
    """One report (tables, plots, NAME.json) from several runs' outputs, nothing re-run: finished
    ``prompt_opt.json`` files and/or ``prompt_opt.partial.json`` files of interrupted runs."""
    from lmopt._io import read_json

    results: dict[str, Any] = {"tasks": {}, "combined_from": paths}
    for p in paths:
        data = read_json(p)
        if data is None:
            raise SystemExit(f"{p} does not exist")
        if "results" in data:  # a finished run
            res = data["results"]
            results["config"] = res["config"]
            results.update({k: res[k] for k in ("throughput", "expo", "spread") if k in res})
            tasks = {t: ({m: r["runs"] for m, r in d["methods"].items()},
                         {"evals": res["config"]["evals"],
                          **{k: d[k] for k in ("n", "mode", "evals", "chance", "resampled_splits", "fixed_pool")
                             if k in d}})
                     for t, d in res["tasks"].items()}
        else:  # per-run records of an interrupted run
            results["config"] = data["config"]
            results["partial"] = True
            if data.get("spread"):
                results["spread"] = data["spread"]
            metas = data.get("task_meta", {})
            tasks = {t: (ms, {"evals": data["config"]["evals"], **metas.get(t, {})}) for t, ms in data["runs"].items()}
        for task, (methods, meta) in tasks.items():  # runs of the same task from several files are merged
            entry = results["tasks"].setdefault(task, {**meta, "methods": {}})
            entry["methods"].update({m: _row(runs) for m, runs in methods.items() if runs})
    for entry in results["tasks"].values():
        _vs_random(entry["methods"])
    _plots(results, args.out)
    (Path(args.out) / "prompt_opt.md").write_text(_markdown(results))
    summary = {"combined": len(paths),
               "median_test": {t: {m: round(r["test"]["median"], 3) for m, r in d["methods"].items()}
                               for t, d in results["tasks"].items()},
               "seeds": {t: {m: len(r["runs"]) for m, r in d["methods"].items()} for t, d in results["tasks"].items()}}
    write_result(args, results, summary)


def _write_partial(out: str, results: dict[str, Any], task: str, meta: dict[str, Any], method: str,
                   runs: list[dict[str, Any]]) -> None:
    """Runs finished so far (a long run interrupted still leaves its numbers): OUT/prompt_opt.partial.json."""
    from lmopt._io import read_json, write_json_atomic

    path = Path(out) / "prompt_opt.partial.json"
    part = read_json(path, {"config": results["config"], "runs": {}})
    part["runs"].setdefault(task, {})[method] = runs
    part.setdefault("task_meta", {})[task] = meta
    if results.get("spread"):
        part["spread"] = results["spread"]
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
    for i, t in enumerate(tasks):  # chance (most common test label) across the task's group of bars
        chance = results["tasks"][t].get("chance")
        if chance is not None:
            ax.hlines(chance, x[i] - w / 2, x[i] + w * (len(methods) + 0.5), color="k", ls=":", lw=1,
                      label="chance" if i == 0 else None)
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
    budgets = ", ".join(f"{t} {results['tasks'][t].get('evals', '?')}" for t in tasks)
    ax.set_title(f"prompt optimisers at equal evaluation budgets ({budgets})", fontsize=9)
    save_plot(fig, out, "prompt_opt_test.png")


if __name__ == "__main__":
    main()
