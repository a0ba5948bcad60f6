"""LLAMBO against optuna's Random, TPE and GP samplers on an offline Bayesmark-style grid.

    python -m benchmarks.bo [--quick] [--out DIR] [--seeds N] [--tasks breast:RF,wine:SVM,...]
                            [--samplers llambo,random,tpe,gp] [--trials 25] [--base-url URL --model NAME]

Tasks: scikit-learn's bundled data sets (breast, wine, digits, iris: 5-fold cross-validated accuracy on a
fixed 70% split, maximised; diabetes: cross-validated mean squared error of the standardised target,
minimised) × RandomForest, SVM, DecisionTree, AdaBoost and an SGD-trained MLP, with the search spaces of the
Bayesmark configuration LLAMBO's paper uses (its "logit" scale read as linear). Each seed's 5 initial random
points are the same for every sampler (as in the paper); then ``--trials`` more. Reported per task and
sampler: the normalised regret per trial, ``(f* − best so far) / (f* − f_rand)`` with ``f*`` the best value
any run of this benchmark found and ``f_rand`` the median value of the random sampler's points (lower is
better; 0 = as good as the best found), the test score of the final best configuration, LM calls, LM tokens
and wall time per trial. LLAMBO uses the embedded SmolLM2-135M-Instruct by default, with completion prompts (it does not
follow LLAMBO's chat instructions), or a server (``--base-url``, chat prompts). Cells finished earlier in
``--out`` are read back, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

from benchmarks._common import load_average, parse_args, save_plot, write_result

DATASETS = {"breast": ("classification", "load_breast_cancer"), "wine": ("classification", "load_wine"),
            "digits": ("classification", "load_digits"), "iris": ("classification", "load_iris"),
            "diabetes": ("regression", "load_diabetes")}
MODELS = ("RF", "SVM", "DT", "AdaBoost", "MLP")
SAMPLERS = ("llambo", "random", "tpe", "gp")
QUICK = {"tasks": ["iris:AdaBoost"], "seeds": 1, "trials": 1, "initial": 3, "samplers": ["llambo", "random", "tpe"],
         "n_candidates": 2, "n_surrogate_samples": 3, "candidate_max_tokens": 40, "min_candidates": 1}
FULL = {"tasks": ["breast:RF", "wine:SVM", "digits:DT", "iris:AdaBoost", "diabetes:MLP"], "seeds": 5, "trials": 25,
        "initial": 5, "samplers": list(SAMPLERS), "n_candidates": 10, "n_surrogate_samples": 10,
        "candidate_max_tokens": 500, "min_candidates": 5}


def search_space(model: str) -> dict[str, Any]:
    from optuna.distributions import FloatDistribution as F
    from optuna.distributions import IntDistribution as I

    tree = {"max_depth": I(1, 15), "max_features": F(0.01, 0.99), "min_impurity_decrease": F(0.0, 0.5),
            "min_samples_leaf": F(0.01, 0.49), "min_samples_split": F(0.01, 0.99),
            "min_weight_fraction_leaf": F(0.01, 0.49)}
    return {"RF": tree, "DT": dict(tree),
            "SVM": {"C": F(1.0, 1e3, log=True), "gamma": F(1e-4, 1e-3, log=True), "tol": F(1e-5, 1e-1, log=True)},
            "AdaBoost": {"n_estimators": I(10, 100), "learning_rate": F(1e-4, 10.0, log=True)},
            "MLP": {"hidden_layer_sizes": I(50, 200), "alpha": F(1e-5, 10.0, log=True), "batch_size": I(10, 250),
                    "learning_rate_init": F(1e-5, 1e-1, log=True), "power_t": F(0.1, 0.9),
                    "momentum": F(0.001, 0.999)}}[model]


def estimator(model: str, task: str, params: dict[str, Any], seed: int) -> Any:
    from sklearn import ensemble, neural_network, svm, tree

    cls = task == "classification"
    if model == "RF":
        make = ensemble.RandomForestClassifier if cls else ensemble.RandomForestRegressor
        return make(n_estimators=10, random_state=seed, **params)
    if model == "DT":
        make = tree.DecisionTreeClassifier if cls else tree.DecisionTreeRegressor
        return make(random_state=seed, **params)
    if model == "SVM":
        return svm.SVC(kernel="rbf", **params) if cls else svm.SVR(kernel="rbf", **params)
    if model == "AdaBoost":
        make = ensemble.AdaBoostClassifier if cls else ensemble.AdaBoostRegressor
        return make(random_state=seed, **params)
    make = neural_network.MLPClassifier if cls else neural_network.MLPRegressor
    return make(solver="sgd", early_stopping=True, learning_rate="invscaling", nesterovs_momentum=True,
                max_iter=40, random_state=seed, **params)


class Task:
    def __init__(self, spec: str) -> None:
        from sklearn import datasets
        from sklearn.model_selection import train_test_split

        try:
            data, model = spec.split(":")
            kind, loader = DATASETS[data]
        except (ValueError, KeyError):
            raise SystemExit(f"task {spec!r}: write DATASET:MODEL with DATASET in {sorted(DATASETS)} and MODEL in "
                             f"{MODELS}") from None
        if model not in MODELS:
            raise SystemExit(f"task {spec!r}: unknown model {model!r}; choose one of {MODELS}")
        X, y = getattr(datasets, loader)(return_X_y=True)
        X = X.astype(float)
        strat = y if kind == "classification" else None
        self.X, self.Xt, self.y, self.yt = train_test_split(X, y, test_size=0.3, random_state=0, stratify=strat)
        if kind == "regression":
            mu, sd = self.y.mean(), self.y.std()
            self.y, self.yt = (self.y - mu) / sd, (self.yt - mu) / sd
        mean, std = self.X.mean(0), self.X.std(0) + 1e-12
        self.X, self.Xt = (self.X - mean) / std, (self.Xt - mean) / std
        self.spec, self.data, self.model, self.kind = spec, data, model, kind
        self.maximize = kind == "classification"
        self.space = search_space(model)
        self.metric = "accuracy" if self.maximize else "mean squared error"
        self.bounds = (0.0, 1.0) if self.maximize else (0.0, None)

    def context(self) -> Any:
        from lmopt.bo import TaskContext

        return TaskContext.from_data(self.model, self.metric, self.X, self.y, task=self.kind)

    def _fit_params(self, params: dict[str, Any]) -> dict[str, Any]:
        p = dict(params)
        if "hidden_layer_sizes" in p:
            p["hidden_layer_sizes"] = (int(p["hidden_layer_sizes"]),)
        return p

    def cv_score(self, params: dict[str, Any], seed: int) -> float:
        import numpy as np
        from sklearn.model_selection import cross_val_score

        scoring = "accuracy" if self.maximize else "neg_mean_squared_error"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = cross_val_score(estimator(self.model, self.kind, self._fit_params(params), seed), self.X, self.y,
                                scoring=scoring, cv=5)
        v = float(np.mean(s))
        return v if self.maximize else -v

    def test_score(self, params: dict[str, Any], seed: int) -> float:
        from sklearn.metrics import accuracy_score, mean_squared_error

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est = estimator(self.model, self.kind, self._fit_params(params), seed).fit(self.X, self.y)
        pred = est.predict(self.Xt)
        return float(accuracy_score(self.yt, pred) if self.maximize else mean_squared_error(self.yt, pred))


def make_sampler(name: str, task: Task, seed: int, cfg: dict[str, Any], lm: Any) -> Any:
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg["initial"])
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=cfg["initial"])
    from lmopt.bo import LLAMBOSampler

    return LLAMBOSampler(lm, task.context(), task.space, n_initial=cfg["initial"], warm_start=False,
                         n_candidates=cfg["n_candidates"], n_surrogate_samples=cfg["n_surrogate_samples"],
                         candidate_max_tokens=cfg["candidate_max_tokens"], score_bounds=task.bounds,
                         min_candidates=cfg["min_candidates"], prompt_format=cfg["prompt_format"], seed=seed)


def initial_points(task: Task, seed: int, n: int) -> list[dict[str, Any]]:
    """The seed's shared initial design: independent uniform draws from the space (a seeded RandomSampler)."""
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=10_000 + seed))
    points = []
    for _ in range(n):
        t = study.ask(task.space)
        points.append(t.params)
        study.tell(t, 0.0)
    return points


def run_cell(task: Task, sampler_name: str, seed: int, cfg: dict[str, Any], lm: Any) -> dict[str, Any]:
    import optuna

    sampler = make_sampler(sampler_name, task, seed, cfg, lm)
    study = optuna.create_study(direction="maximize" if task.maximize else "minimize", sampler=sampler)
    for p in initial_points(task, seed, cfg["initial"]):
        study.enqueue_trial(p)
    values, seconds, calls, tokens, phases = [], [], [], [], []
    usage0 = lm.meter.usage("optimizer") if lm is not None else None
    for _ in range(cfg["initial"] + cfg["trials"]):
        t0 = time.perf_counter()
        trial = study.ask(task.space)
        proposed = time.perf_counter() - t0
        value = task.cv_score(trial.params, seed)
        study.tell(trial, value)
        values.append(value)
        seconds.append(round(proposed, 4))
        stats = study.trials[-1].system_attrs.get("llambo", {})
        phases.append(stats.get("phase", "optuna"))
        calls.append(stats.get("lm_calls", 0))
        if lm is not None:
            u = lm.meter.usage("optimizer")
            tokens.append(u.total_tokens - usage0.total_tokens - sum(tokens))
        else:
            tokens.append(0)
    best = study.best_trial
    out = {"values": values, "propose_seconds": seconds, "lm_calls": calls, "lm_tokens": tokens, "phases": phases,
           "best_value": best.value, "best_params": best.params, "test_score": task.test_score(best.params, seed)}
    if sampler_name == "llambo":
        out["counts"] = dict(sampler.counts)
        out["trial_stats"] = [t.system_attrs.get("llambo", {}) for t in study.trials]
    return out


def regret_curves(task: Task, cells: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    import numpy as np

    allv = [v for per_seed in cells.values() for c in per_seed.values() for v in c["values"]]
    f_star = max(allv) if task.maximize else min(allv)
    rand = [v for c in cells.get("random", {}).values() for v in c["values"]] or allv
    f_rand = statistics.median(rand)
    scale = abs(f_star - f_rand) or 1.0
    out = {"f_star": f_star, "f_rand": f_rand}
    for name, per_seed in cells.items():
        curves = []
        for c in per_seed.values():
            best = np.maximum.accumulate(c["values"]) if task.maximize else np.minimum.accumulate(c["values"])
            gap = (f_star - best) if task.maximize else (best - f_star)
            curves.append(np.maximum(gap, 0.0) / scale)
        arr = np.array(curves)
        out[name] = {"median": np.median(arr, 0).round(4).tolist(), "q25": np.quantile(arr, 0.25, 0).round(4).tolist(),
                     "q75": np.quantile(arr, 0.75, 0).round(4).tolist(),
                     "final": [float(x) for x in arr[:, -1].round(4)],
                     "test_score": [c["test_score"] for c in per_seed.values()]}
    return out


def make_lm(args: Any) -> Any:
    from lmopt.lm import LM, CallCache, LocalLM, OpenAICompatibleLM

    cache = CallCache(f"{args.out}/bo-calls.sqlite")
    if args.base_url:
        if not args.model:
            raise SystemExit("--base-url needs --model (the server's model name)")
        return LM(OpenAICompatibleLM(args.model, args.base_url, max_concurrency=4, timeout=300), cache=cache)
    # a decoding step costs about the same for 1 or 16 rows on CPU: batch every call's rows together
    return LM(LocalLM(args.model, device=args.device, batch_size=16), cache=cache)


def plot(curves: dict[str, Any], out: str, cfg: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(curves)
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3), squeeze=False)
    for ax, spec in zip(axes[0], tasks):
        for name in cfg["samplers"]:
            c = curves[spec].get(name)
            if c is None:
                continue
            x = range(1, len(c["median"]) + 1)
            ax.plot(x, c["median"], label=name)
            ax.fill_between(x, c["q25"], c["q75"], alpha=0.2)
        ax.axvline(cfg["initial"] + 0.5, color="grey", lw=0.5)
        ax.set_title(spec)
        ax.set_xlabel("trial")
    axes[0][0].set_ylabel("normalised regret (median, IQR)")
    axes[0][0].legend()
    fig.tight_layout()
    save_plot(fig, out, "bo_regret.png")


def main(argv: list[str] | None = None) -> None:
    def extra(p: Any) -> None:
        p.add_argument("--tasks", default=None, help="comma-separated DATASET:MODEL cells")
        p.add_argument("--samplers", default=None, help=f"comma-separated, from {SAMPLERS}")
        p.add_argument("--trials", type=int, default=None, help="trials after the initial design")
        p.add_argument("--n-candidates", type=int, default=None, help="LLAMBO suggestions per round (10)")
        p.add_argument("--surrogate-samples", type=int, default=None,
                       help="LLAMBO's discriminative answers per candidate and template (10)")
        p.add_argument("--candidate-max-tokens", type=int, default=None, help="new tokens per suggestion (500)")
        p.add_argument("--prompt-format", choices=("chat", "completion"), default=None,
                       help="LLAMBO's prompts (default: completion for the embedded model, chat for a server)")
        p.add_argument("--base-url", default=None, help="an OpenAI-compatible server for LLAMBO")
        p.add_argument("--model", default=None, help="the server's model name, or a local HF id/folder")
        p.add_argument("--device", default="cpu")

    args = parse_args("bo", __doc__.splitlines()[0], default_seeds=FULL["seeds"], argv=argv, extra=extra)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = dict(QUICK if args.quick else FULL)
    if args.tasks:
        cfg["tasks"] = args.tasks.split(",")
    if args.samplers:
        cfg["samplers"] = args.samplers.split(",")
        bad = [s for s in cfg["samplers"] if s not in SAMPLERS]
        if bad:
            raise SystemExit(f"unknown samplers {bad}; choose from {SAMPLERS}")
    for key, flag in (("trials", "trials"), ("n_candidates", "n_candidates"),
                      ("n_surrogate_samples", "surrogate_samples"), ("candidate_max_tokens", "candidate_max_tokens")):
        if getattr(args, flag) is not None:
            cfg[key] = getattr(args, flag)
    cfg["prompt_format"] = args.prompt_format or ("chat" if args.base_url else "completion")
    seeds = list(range(args.seeds if args.seeds is not None else cfg["seeds"]))
    tasks = [Task(s) for s in cfg["tasks"]]
    lm = make_lm(args) if "llambo" in cfg["samplers"] else None
    Path(args.out).mkdir(parents=True, exist_ok=True)
    done_path = Path(args.out) / ("bo-cells-quick.jsonl" if args.quick else "bo-cells.jsonl")
    done: dict[tuple[str, str, int], dict[str, Any]] = {}
    if done_path.exists():
        for line in done_path.read_text().splitlines():
            rec = json.loads(line)
            if rec["config"] == cfg:
                done[(rec["task"], rec["sampler"], rec["seed"])] = rec["result"]
    t_start = time.perf_counter()
    cells: dict[str, dict[str, dict[int, dict[str, Any]]]] = {t.spec: {} for t in tasks}
    for task in tasks:
        for seed in seeds:
            for name in cfg["samplers"]:
                key = (task.spec, name, seed)
                if key not in done:
                    t0 = time.perf_counter()
                    res = run_cell(task, name, seed, cfg, lm if name == "llambo" else None)
                    res["wall_s"] = round(time.perf_counter() - t0, 2)
                    res["load_after"] = load_average()
                    done[key] = res
                    with done_path.open("a") as f:
                        f.write(json.dumps({"task": task.spec, "sampler": name, "seed": seed, "config": cfg,
                                            "result": res}, default=float) + "\n")
                    print(f"{task.spec} {name} seed {seed}: best {res['best_value']:.4f} in {res['wall_s']} s",
                          flush=True)
                cells[task.spec].setdefault(name, {})[seed] = done[key]
    curves = {t.spec: regret_curves(t, cells[t.spec]) for t in tasks}
    per_sampler = {}
    for name in cfg["samplers"]:
        finals = [statistics.median(curves[t.spec][name]["final"]) for t in tasks]
        runs = [c for t in tasks for c in cells[t.spec][name].values()]
        n_after = cfg["trials"]
        per_sampler[name] = {
            "final_regret_median_per_task": finals, "final_regret_mean_over_tasks": statistics.fmean(finals),
            "propose_seconds_per_trial": statistics.fmean(
                s for c in runs for s in c["propose_seconds"][cfg["initial"]:]) if n_after else 0.0,
            "lm_calls_per_trial": statistics.fmean(
                x for c in runs for x in c["lm_calls"][cfg["initial"]:]) if n_after else 0.0,
            "lm_tokens_per_trial": statistics.fmean(
                x for c in runs for x in c["lm_tokens"][cfg["initial"]:]) if n_after else 0.0}
    results = {"config": cfg, "seeds": seeds, "curves": curves, "per_sampler": per_sampler,
               "cells": {t.spec: {n: {str(s): c for s, c in v.items()} for n, v in cells[t.spec].items()}
                         for t in tasks},
               "lm": getattr(lm, "name", None), "lm_usage": lm.usage() if lm is not None else None,
               "wall_s": round(time.perf_counter() - t_start, 1)}
    plot(curves, args.out, cfg)
    summary = {"tasks": len(tasks), "seeds": len(seeds),
               **{f"{n}_final_regret": round(per_sampler[n]["final_regret_mean_over_tasks"], 4)
                  for n in cfg["samplers"]}}
    write_result(args, results, summary)


if __name__ == "__main__":
    main()
